//! Re-adoption after a daemon restart (systemctl restart, kill -9): sessions outlive the
//! daemon (the `agentd-sandbox run` runtime is not killed with it), so a new daemon finds the
//! journal's live sessions again through the sandbox's `session.json` (init pid), opens the
//! init's pidfd (checking through /proc that the pid is still this session's init, in its
//! `agent` leaf, and not a reused pid), re-resolves the session's policy from the journal,
//! and watches the init's exit through the pidfd. Calls that were running when the old
//! daemon died are finished when their cgroup empties: their report is recorded, their exit
//! status is unknown (the process that waited for them died with the old daemon).

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use super::sessions::{self, Live};
use super::{Daemon, ServeError};
use crate::api::{CallInfo, CallState, SessionInfo, now};

/// Why a session could not be re-adopted.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error("no sandbox record {path}: {detail}")]
    Record { path: String, detail: String },
    #[error("init pid {pid}: {detail}")]
    Init { pid: i32, detail: String },
    #[error("policy: {0}")]
    Policy(String),
    #[error("cgroup: {0}")]
    Cgroup(#[from] cgctl::Error),
}

fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

/// Opens the init's pidfd and checks it is still in the session's agent leaf (so a reused
/// pid is never adopted). The pidfd is opened first: after that the pid cannot be reused.
fn open_init(d: &Daemon, s: &SessionInfo) -> Result<(i32, OwnedFd), AdoptError> {
    let state = d.cfg.state_dir.join("sessions").join(&s.id);
    let pid = sessions::read_init_pid(&state).map_err(|e| AdoptError::Record {
        path: state.display().to_string(),
        detail: e.to_string(),
    })?;
    let fd = pidfd_open(pid).map_err(|e| AdoptError::Init {
        pid,
        detail: e.to_string(),
    })?;
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let leaf = format!("/session-{}/agent", s.id);
    if !cg
        .lines()
        .any(|l| l.starts_with("0::") && l.ends_with(&leaf))
    {
        return Err(AdoptError::Init {
            pid,
            detail: format!("not in {leaf} (cgroup {:?})", cg.trim()),
        });
    }
    Ok((pid, fd))
}

fn adopt_one(d: &Arc<Daemon>, s: &SessionInfo) -> Result<(), AdoptError> {
    let (pid, fd) = open_init(d, s)?;
    let policy = d
        .journal(|j| j.policy(&s.id))
        .map_err(|e| AdoptError::Policy(e.to_string()))?;
    let plan = sessions::resolve_policy(d.cfg.host_policy.as_deref(), policy.as_ref())
        .map_err(|e| AdoptError::Policy(e.to_string()))?;
    let cg = d.root.session(&s.id)?;
    let calls = d
        .journal(|j| j.calls(&s.id))
        .map_err(|e| AdoptError::Policy(e.to_string()))?;
    let (done_tx, done_rx) = watch::channel(false);
    let live = Arc::new(Live {
        id: s.id.clone(),
        owner: s.owner_uid,
        // The uid the runtime mapped the agent to (`--user` may differ from the owner's).
        agent_uid: agentd_sandbox::exec::read_record(&d.cfg.state_dir.join("sessions").join(&s.id))
            .map(|r| r.plan.ids.agent_host_id)
            .or_else(|_| {
                std::fs::metadata(&s.workspace).map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            })
            .unwrap_or(s.owner_uid),
        plan,
        cg,
        sandbox_state: d.cfg.state_dir.join("sessions").join(&s.id),
        next_call: AtomicU64::new(calls.iter().map(|c| c.n).max().unwrap_or(0)),
        inflight: AtomicU64::new(0),
        killed: AtomicBool::new(false),
        info: Mutex::new(s.clone()),
        shim_exits: Mutex::new(std::collections::HashMap::new()),
        done: done_rx,
        // The previous daemon held the stdin pipe's write end: the agent has read its end.
        stdin: Mutex::new(None),
        egress: Mutex::new(None),
    });
    d.live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(s.id.clone(), live.clone());
    // The shim socket is rebound at the same path (the agent's environment names it).
    if let Err(e) = super::shim::listen(d, &live, pid) {
        super::log::warn(&format!("session {}: {e}", s.id));
    }
    // Egress died with the previous daemon; the session gets it back (listeners rebound).
    if let Err(e) = super::net::start(d, &live, pid) {
        super::log::warn(&format!(
            "session {}: no egress after the restart: {e}",
            s.id
        ));
    }
    for c in calls.into_iter().filter(|c| c.state == CallState::Running) {
        live.inflight.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(resume_call(d.clone(), live.clone(), c));
    }
    tokio::spawn(watch_init(d.clone(), live, pid, fd, done_tx));
    Ok(())
}

/// Re-adopts every journal-live session it can; marks the others failed with the reason.
/// Returns the ids adopted (their cgroups must survive the sweep).
pub fn readopt(d: &Arc<Daemon>) -> Result<Vec<String>, ServeError> {
    let rows = {
        let j = d.journal.lock().unwrap_or_else(|p| p.into_inner());
        j.live_sessions()?
    };
    let mut adopted = Vec::new();
    for s in rows {
        match adopt_one(d, &s) {
            Ok(()) => {
                super::log::info(&format!("re-adopted session {}", s.id));
                adopted.push(s.id);
            }
            Err(e) => {
                let why = format!("lost across a daemon restart: {e}");
                super::log::warn(&format!("session {}: {why}", s.id));
                let j = d.journal.lock().unwrap_or_else(|p| p.into_inner());
                j.mark_lost(s, &why)?;
            }
        }
    }
    Ok(adopted)
}

/// Waits for the adopted init to exit (pidfd readable), or the session timeout.
async fn watch_init(
    d: Arc<Daemon>,
    live: Arc<Live>,
    pid: i32,
    fd: OwnedFd,
    done: watch::Sender<bool>,
) {
    let timeout = sessions::remaining(&live.info());
    let exited = async {
        // SAFETY: the OwnedFd is a valid pidfd moved into the AsyncFd, which alone closes it
        // (on drop, after deregistering); nothing else replaces or closes it meanwhile.
        let registered = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) };
        match registered {
            Ok(a) => {
                let _ = a.readable().await;
            }
            // Without epoll on the pidfd, poll /proc (the pidfd kept the pid from reuse
            // only while open, so this is best effort).
            Err(_) => {
                while std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    };
    let mut timed_out = false;
    tokio::select! {
        () = exited => {}
        () = tokio::time::sleep(timeout) => {
            timed_out = true;
            let _ = live.cg.cgroup().kill();
        }
    }
    // The agent's exit status went to the old daemon's child (the runtime): unknown here.
    sessions::finish(&d, &live, None, timed_out, done).await;
}

/// Finishes a call that was running when the previous daemon died: waits until its cgroup
/// is empty (or its timeout), then records its report.
async fn resume_call(d: Arc<Daemon>, live: Arc<Live>, mut c: CallInfo) {
    let deadline = c.started_at + c.limits.timeout_s;
    let call = match live.cg.call(c.n) {
        Ok(call) => Some(call),
        Err(e) => {
            c.error = Some(format!("call cgroup gone across a daemon restart: {e}"));
            None
        }
    };
    if let Some(call) = call {
        loop {
            let populated = call.cgroup().populated().unwrap_or(false);
            if !populated {
                break;
            }
            if now() >= deadline {
                c.state = CallState::TimedOut;
                let _ = call.cgroup().kill();
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        match tokio::task::spawn_blocking(move || call.finish(Duration::from_secs(10))).await {
            Ok(Ok(r)) => {
                c.oom_killed = r
                    .stats
                    .memory
                    .is_some_and(|m| m.events.oom_kill > 0 || m.events.oom_group_kill > 0);
                c.report = serde_json::to_value(&r).ok();
            }
            Ok(Err(e)) => c.error = Some(format!("report: {e}")),
            Err(e) => c.error = Some(format!("report: {e}")),
        }
        if c.state == CallState::Running {
            c.state = CallState::Exited;
        }
        // A shim call's shim reports its status to the new daemon (it retries while the
        // socket is down); a call from outside lost the process that waited for it.
        c.exit_code = live
            .shim_exits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&c.n);
        if c.exit_code.is_none() && c.oom_killed {
            c.exit_code = Some(137);
        }
        if c.exit_code.is_none() && c.error.is_none() {
            c.error =
                Some("the daemon restarted during the call: its exit status is unknown".into());
        }
    } else {
        c.state = CallState::Failed;
    }
    c.ended_at = Some(now());
    let _ = d.journal(|j| j.put_call(&c));
    live.inflight.fetch_sub(1, Ordering::SeqCst);
}
