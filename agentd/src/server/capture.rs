//! Exec capture, the daemon's side (docs/capture.md): a session with `session.capture =
//! "exec"` has every exec of a process in its agent leaf held in the kernel by the
//! session's spawner, which sends it here over `<state>/capture.sock` with a pidfd. Each
//! becomes a call exactly as a shim request does ([`super::shim::place_new_call`]: intent
//! rules by argv, `AGENTD_INTENT`, limits, pool admission, checkpoint, journal row); the
//! spawner lets the exec go on once the answer says the task is in `calls/<n>`. The call
//! ends when its cgroup is empty; its exit status is the exec'd process's, read from its
//! pidfd (`PIDFD_INFO_EXIT`, Linux 6.15+; unknown on older kernels, said in the row).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use agentd_sandbox::capture::{Answer, Event};

use super::apply::Exit;
use super::sessions::Live;
use super::shim::{cgroup_of, place_new_call, session_cgroup_name};
use super::{ApiError, Daemon};
use crate::api::CallVia;

/// Shells whose `-c SCRIPT` forms are recorded as the script's words.
const SHELLS: &[&str] = &[
    "sh",
    "bash",
    "dash",
    "zsh",
    "ash",
    "ksh",
    "mksh",
    "busybox",
    "agentd-shim",
];

/// The words a call is recorded (and its intent matched) by: a shell's `-c SCRIPT` (also
/// `-lc`, `-l -c`, `-ic`, `-i -c`, `-ec`…) is the script's words, as the shim records
/// them; any other argv is itself.
pub fn command_words(argv: &[String]) -> Vec<String> {
    let is_shell = argv
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a))
        .is_some_and(|b| SHELLS.contains(&b));
    if is_shell {
        let mut i = 1;
        // `busybox sh -c …`
        if argv.get(1).is_some_and(|a| SHELLS.contains(&a.as_str())) {
            i = 2;
        }
        while let Some(a) = argv.get(i) {
            if !a.starts_with('-') || a.starts_with("--") || a == "-" {
                break;
            }
            if a[1..].contains('c') {
                if let Some(script) = argv.get(i + 1) {
                    let words: Vec<String> =
                        script.split_whitespace().map(str::to_string).collect();
                    if !words.is_empty() {
                        return words;
                    }
                }
                break;
            }
            i += 1;
        }
    }
    argv.to_vec()
}

/// Connects to the session's capture socket and serves it on a thread of its own until the
/// spawner closes it (the session ended). Called at the start and at re-adoption.
pub fn start(d: &Arc<Daemon>, live: &Arc<Live>) -> Result<(), ApiError> {
    let conn = agentd_sandbox::capture::connect(&live.sandbox_state)
        .map_err(|source| ApiError::Capture { source })?;
    let conn = Arc::new(conn);
    let rt = tokio::runtime::Handle::current();
    let (d, live) = (d.clone(), live.clone());
    std::thread::Builder::new()
        .name("agentd-capture".into())
        .spawn(move || {
            loop {
                match agentd_sandbox::capture::read_event(conn.as_fd()) {
                    Ok(Some((ev, pidfd))) => {
                        let (d, live, conn) = (d.clone(), live.clone(), conn.clone());
                        rt.spawn(async move {
                            let a = place(&d, &live, ev, pidfd).await;
                            if let Err(e) = agentd_sandbox::capture::answer(conn.as_fd(), &a) {
                                super::log::warn(&format!("session {}: {e}", live.id));
                            }
                        });
                    }
                    Ok(None) => break,
                    Err(e) => {
                        super::log::warn(&format!("session {}: capture: {e}", live.id));
                        break;
                    }
                }
            }
        })
        .map_err(|e| ApiError::Capture {
            source: agentd_sandbox::Error::Sys {
                what: "start the capture thread".into(),
                source: e,
            },
        })?;
    Ok(())
}

/// Places one held exec in a call of its own.
async fn place(d: &Arc<Daemon>, live: &Arc<Live>, ev: Event, pidfd: OwnedFd) -> Answer {
    let Event::Exec {
        id,
        pid,
        argv,
        intent,
    } = ev;
    let sess = session_cgroup_name(live);
    let cg = cgroup_of(pid);
    // A previous daemon may have moved it before dying: the call is re-adopted, the exec
    // goes on.
    if let Some(n) = cg
        .strip_prefix(&format!("{sess}/calls/"))
        .and_then(|r| r.split('/').next())
        .and_then(|n| n.parse().ok())
    {
        return Answer::Placed { id, n };
    }
    if cg != format!("{sess}/agent") {
        return Answer::Refused {
            id,
            error: format!(
                "process {pid} is in {cg:?}, not the agent leaf of {}",
                live.id
            ),
        };
    }
    let declared = match crate::ctl::parse_intent(intent.as_deref().unwrap_or("")) {
        Ok(i) => i,
        Err(e) => {
            // A bad AGENTD_INTENT must not stop every exec of the session: the policy's
            // limits for the command apply, as if it declared nothing.
            super::log::warn(&format!(
                "session {}: AGENTD_INTENT of {:?} ignored: {e}",
                live.id,
                argv.first()
            ));
            Default::default()
        }
    };
    let words = command_words(&argv);
    match place_new_call(d, live, pid, &words, declared, CallVia::Exec).await {
        Ok(p) => {
            let n = p.info.n;
            live.inflight.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(watch(d.clone(), live.clone(), p, pidfd));
            Answer::Placed { id, n }
        }
        Err(e) => Answer::Refused {
            id,
            error: e.to_string(),
        },
    }
}

/// Waits until the call's cgroup is empty (or its timeout kills it), then records it with
/// the exec'd process's exit status.
async fn watch(d: Arc<Daemon>, live: Arc<Live>, p: super::shim::Placed, pidfd: OwnedFd) {
    let deadline = p.info.started_at + p.info.limits.timeout_s;
    let timed_out = super::calls::wait_empty(&p.call, deadline, Duration::from_millis(50)).await;
    let mut code = None;
    // The status is published when the process is reaped (by its parent in the session),
    // which may come a little after its cgroup is empty.
    for _ in 0..40 {
        match exit_status(&pidfd) {
            Status::Exited(c) => {
                code = Some(c);
                break;
            }
            Status::NotYet => tokio::time::sleep(Duration::from_millis(25)).await,
            Status::Unsupported => break,
        }
    }
    let end = Exit::Reported(code.or_else(|| live.take_shim_exit(p.info.n)));
    let _ = super::calls::finish(&d, Some(p.call), p.info, end, timed_out, p.grant).await;
    live.inflight.fetch_sub(1, Ordering::SeqCst);
}

enum Status {
    Exited(i32),
    NotYet,
    /// The kernel has no `PIDFD_INFO_EXIT` (before 6.15).
    Unsupported,
}

/// The exit status of the process behind `pidfd`, shell-style (128+signal).
fn exit_status(pidfd: &OwnedFd) -> Status {
    // SAFETY: pidfd_info is plain data; zeroed is valid.
    let mut info: libc::pidfd_info = unsafe { std::mem::zeroed() };
    info.mask = u64::from(libc::PIDFD_INFO_EXIT);
    // SAFETY: PIDFD_GET_INFO fills a live pidfd_info of the size the request encodes.
    let r = unsafe { libc::ioctl(pidfd.as_raw_fd(), libc::PIDFD_GET_INFO, &mut info) };
    if r < 0 {
        let e = std::io::Error::last_os_error().raw_os_error();
        // ESRCH: gone and reaped before 6.15's pidfs kept its info; ENOTTY/EINVAL: no ioctl.
        return if e == Some(libc::ESRCH) {
            Status::NotYet
        } else {
            Status::Unsupported
        };
    }
    if info.mask & u64::from(libc::PIDFD_INFO_EXIT) == 0 {
        return Status::NotYet;
    }
    let w = info.exit_code;
    if libc::WIFEXITED(w) {
        Status::Exited(libc::WEXITSTATUS(w))
    } else if libc::WIFSIGNALED(w) {
        Status::Exited(128 + libc::WTERMSIG(w))
    } else {
        Status::NotYet
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn shell_scripts_are_recorded_as_their_words_in_every_c_form() {
        for argv in [
            v(&["/bin/sh", "-c", "cargo test -q"]),
            v(&["bash", "-lc", "cargo test -q"]),
            v(&["/usr/bin/bash", "-l", "-c", "cargo test -q"]),
            v(&["zsh", "-ic", "cargo test -q"]),
            v(&["bash", "-i", "-c", "cargo test -q"]),
            v(&["/run/agentd/bin/agentd-shim", "-c", "cargo test -q"]),
            v(&["busybox", "sh", "-c", "cargo test -q"]),
        ] {
            assert_eq!(
                command_words(&argv),
                v(&["cargo", "test", "-q"]),
                "{argv:?}"
            );
        }
        // Not a `-c` form, or not a shell: the argv itself.
        for argv in [
            v(&["bash", "script.sh", "-c"]),
            v(&["bash", "--norc"]),
            v(&["python3", "-c", "print(1)"]),
            v(&["sh", "-c", "   "]),
        ] {
            assert_eq!(command_words(&argv), argv);
        }
    }
}
