//! Tool calls from outside through the session's call spawner (`docs/spawner.md`): the
//! daemon opens the call's cgroup dir and two pipes, hands them with the call's typed
//! [`ExecRequest`] (the same document `agentd-sandbox exec --request-fd 3` reads) to the
//! spawner already inside the session (`<state>/spawner.sock`, SCM_RIGHTS), which forks the
//! tool straight into `calls/<n>` with the agent's confinement: one exec per call, the
//! tool's, instead of `agentd-sandbox exec` (an exec of the runtime, its namespace joins and
//! its seccomp compile) plus the tool's. Sessions whose runtime has no spawner socket
//! (started by an older runtime and re-adopted) keep the old path (`calls::run_in_sandbox`).
//! The call ends, as every call does, through `calls::finish` (`apply::finish_call`).

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use agentd_sandbox::launch::ExecRequest;
use agentd_sandbox::spawner::client;
use tokio::io::unix::AsyncFd;

use super::calls::{Events, Outcome, pump};
use super::sessions::Live;

/// Whether the session's runtime started a spawner.
pub(super) fn available(live: &Live) -> bool {
    client::available(&live.sandbox_state)
}

/// Runs `req` (its cgroup set) through the session's spawner; like `calls::run_in_sandbox`:
/// output pumped to `events`, the timeout enforced by killing the call's cgroup.
pub(super) async fn run(
    req: &ExecRequest,
    timeout_s: u64,
    events: Events,
) -> Result<Outcome, String> {
    let cgroup = req
        .cgroup
        .clone()
        .ok_or("the call has no cgroup to start in")?;
    let sreq = req.clone();
    let cg_path = cgroup.clone();
    // connect/sendmsg/recvmsg of the start are short blocking syscalls; off the runtime.
    let started = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let cg = std::fs::File::open(&cg_path)
            .map_err(|e| format!("open {}: {e}", cg_path.display()))?;
        let null = client::dev_null().map_err(|e| e.to_string())?;
        let (out_r, out_w) = client::pipe().map_err(|e| e.to_string())?;
        let (err_r, err_w) = client::pipe().map_err(|e| e.to_string())?;
        let s = client::start(
            &sreq,
            [cg.as_fd(), null.as_fd(), out_w.as_fd(), err_w.as_fd()],
        )
        .map_err(|e| e.to_string())?;
        // Our copies of the write ends go now: the pipes end when the call's do.
        Ok((s, out_r, err_r))
    })
    .await
    .map_err(|e| format!("the spawner request: {e}"))??;
    let (started, out_r, err_r) = started;
    let rx = |fd: OwnedFd| tokio::net::unix::pipe::Receiver::from_owned_fd(fd).ok();
    let (stdout, stderr) = (rx(out_r), rx(err_r));
    let exit = async {
        // Readiness on a duplicate of the connection; the packet is read through `started`.
        let conn = started
            .conn
            .try_clone()
            .map_err(|e| format!("dup the spawner connection: {e}"))?;
        // SAFETY: the AsyncFd owns `conn` (an OwnedFd), so the descriptor stays open and the
        // same for the AsyncFd's whole life.
        let afd = unsafe { AsyncFd::register_with_interest(conn, tokio::io::Interest::READABLE) }
            .map_err(|e| format!("watching the spawner connection: {e}"))?;
        loop {
            let mut guard = afd
                .readable()
                .await
                .map_err(|e| format!("watching the spawner connection: {e}"))?;
            match client::try_recv_exit(&started) {
                Ok(Some(code)) => return Ok::<i32, String>(code),
                Ok(None) => guard.clear_ready(),
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    let waiting = async { (pump(stdout, stderr, events).await, exit.await) };
    tokio::pin!(waiting);
    let timeout = Duration::from_secs(timeout_s.max(1));
    let ((kept, code), timed_out) = tokio::select! {
        o = &mut waiting => (o, false),
        () = tokio::time::sleep(timeout) => {
            // The timeout kills the call's cgroup (everything the call started); the
            // spawner then reports the signal.
            let _ = cgctl::Cgroup::open(&cgroup).and_then(|c| c.kill());
            ((&mut waiting).await, true)
        }
    };
    let code = code?;
    Ok(Outcome {
        code: Some(code),
        timed_out,
        stdout: String::from_utf8_lossy(&kept[0]).into_owned(),
        stderr: String::from_utf8_lossy(&kept[1]).into_owned(),
    })
}
