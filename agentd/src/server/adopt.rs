//! Re-adoption after a daemon restart (systemctl restart, kill -9): sessions outlive the
//! daemon (the `agentd-sandbox run` runtime is not killed with it), so a new daemon finds the
//! journal's live sessions again through the sandbox's `session.json` (init pid), opens the
//! init's pidfd (checking through /proc that the pid is still this session's init, in its
//! `agent` leaf, and not a reused pid), takes the session's resolved plan from the journal
//! (re-resolved from the texts journalled at its start and checked equal),
//! and watches the init's exit through the pidfd. Calls that were running when the old
//! daemon died are finished when their cgroup empties: their report is recorded, their exit
//! status is unknown (the process that waited for them died with the old daemon).

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use super::apply::Exit;
use super::sessions::{self, Live};
use super::{ApiError, Daemon, ServeError};
use crate::api::{CallInfo, CallState, SessionInfo};

/// Why a session could not be re-adopted.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error("no sandbox record {path}: {detail}")]
    Record { path: String, detail: String },
    #[error("init pid {pid}: {detail}")]
    Init { pid: i32, detail: String },
    /// The journalled policy could not be read or resolved.
    #[error("policy: {0}")]
    Policy(#[source] Box<ApiError>),
    #[error(
        "policy: resolving the journalled policy texts no longer gives the plan the session \
         started with (were the shipped profiles changed by an upgrade?)"
    )]
    PlanChanged,
    #[error("cgroup: {0}")]
    Cgroup(#[from] cgctl::Error),
}

/// Opens the init's pidfd and checks it is still in the session's agent leaf (so a reused
/// pid is never adopted). The pidfd is opened first: after that the pid cannot be reused.
fn open_init(
    d: &Daemon,
    s: &SessionInfo,
) -> Result<(agentd_sandbox::exec::SessionRecord, OwnedFd), AdoptError> {
    let state = d.cfg.state_dir.join("sessions").join(&s.id);
    let rec = sessions::read_record(&state).map_err(|e| AdoptError::Record {
        path: state.display().to_string(),
        detail: e.to_string(),
    })?;
    let pid = rec.init_pid;
    let fd = agentd_sandbox::exec::pidfd_open(pid).map_err(|e| AdoptError::Init {
        pid,
        detail: e.to_string(),
    })?;
    let cg = cgctl::discover::cgroup_of(&pid.to_string()).unwrap_or_default();
    let leaf = format!("/session-{}/agent", s.id);
    if !cg.ends_with(&leaf) {
        return Err(AdoptError::Init {
            pid,
            detail: format!("not in {leaf} (cgroup {cg:?})"),
        });
    }
    Ok((rec, fd))
}

fn adopt_one(d: &Arc<Daemon>, s: &SessionInfo) -> Result<(), AdoptError> {
    let (rec, fd) = open_init(d, s)?;
    let pid = rec.init_pid;
    let policy = d
        .journal(|j| j.policy(&s.id))
        .map_err(|e| AdoptError::Policy(Box::new(e)))?;
    let plan = resolve_journalled(d, &s.id, policy.as_ref())?;
    let cg = d.root.session(&s.id)?;
    // A daemon killed during a checkpoint, undo or commit left the session frozen
    // (cgroup.freeze of `session-<id>`; the memory pool freezes calls one level down).
    cg.cgroup().thaw(Duration::from_secs(10))?;
    let calls = d
        .journal(|j| j.calls(&s.id))
        .map_err(|e| AdoptError::Policy(Box::new(e)))?;
    let (live, done_tx) = Live::new(sessions::NewLive {
        id: s.id.clone(),
        owner: s.owner_uid,
        // The uid the runtime mapped the agent to (`--user` may differ from the owner's).
        agent_uid: rec.plan.ids.agent_host_id,
        plan,
        cg,
        sandbox_state: d.cfg.state_dir.join("sessions").join(&s.id),
        info: s.clone(),
        last_call: calls.iter().map(|c| c.n).max().unwrap_or(0),
        // The previous daemon held the stdin pipe's write end: the agent has read its end.
        stdin: None,
    });
    d.live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(s.id.clone(), live.clone());
    super::mempool::session_started(d, &live);
    d.sched.session_started(
        &live.id,
        live.cg.agent().path(),
        super::mempool::priority(&live),
    );
    // The shim socket is rebound at the same path (the agent's environment names it).
    if let Err(e) = super::shim::listen(d, &live, pid) {
        super::log::warn(&format!("session {}: {e}", s.id));
    }
    // The held execs wait for a daemon: this one takes them over.
    if live.plan.session.capture == agentd_policy::CaptureMode::Exec
        && let Err(e) = super::capture::start(d, &live)
    {
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

/// The plan a session started with: resolved again from the host policy text and repo
/// policy journalled at its start (not from today's host file), and checked against the
/// resolved plan journalled then, so a re-adopted session keeps exactly its limits and
/// intent rules. A session from before the plan was journalled resolves against today's
/// host policy, as it always did.
fn resolve_journalled(
    d: &Daemon,
    id: &str,
    policy: Option<&crate::api::PolicySource>,
) -> Result<agentd_policy::Plan, AdoptError> {
    let perr = |e: ApiError| AdoptError::Policy(Box::new(e));
    let host = d.cfg.host_policy.as_deref();
    let Some(row) = d.journal(|j| j.plan(id)).map_err(perr)? else {
        return sessions::resolve_policy(host, policy).map_err(perr);
    };
    let plan = sessions::resolve_with(host, row.host_policy, policy).map_err(perr)?;
    let now = serde_json::to_value(&plan).map_err(|source| {
        perr(ApiError::Json {
            what: "the resolved plan",
            source,
        })
    })?;
    if now != row.plan {
        return Err(AdoptError::PlanChanged);
    }
    Ok(plan)
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
                // Its layer image still in its state dir: the agent's work is kept (the
                // final checkpoint is taken from it next, undo::recover_all), so the
                // session is `stopped`, not failed.
                let kept =
                    agentd_sandbox::disk::image_path(&d.cfg.state_dir.join("sessions").join(&s.id))
                        .is_file();
                let j = d.journal.lock().unwrap_or_else(|p| p.into_inner());
                if kept {
                    let why = format!(
                        "stopped: its processes are gone ({e}); the session layer was kept"
                    );
                    super::log::warn(&format!("session {}: {why}", s.id));
                    j.mark_stopped(s, &why)?;
                } else {
                    let why = format!("lost across a daemon restart: {e}");
                    super::log::warn(&format!("session {}: {why}", s.id));
                    j.mark_lost(s, &why)?;
                }
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
/// is empty (or its timeout), then records its report. A shim call's shim reports its
/// status to the new daemon (it retries while the socket is down); a call from outside
/// lost the process that waited for it.
async fn resume_call(d: Arc<Daemon>, live: Arc<Live>, c: CallInfo) {
    let deadline = c.started_at + c.limits.timeout_s;
    match live.cg.call(c.n) {
        Ok(call) => {
            let timed_out =
                super::calls::wait_empty(&call, deadline, Duration::from_millis(250)).await;
            let code = live.take_shim_exit(c.n);
            let exit = Exit::Orphaned(code);
            let _ = super::calls::finish(&d, Some(call), c, exit, timed_out, None).await;
        }
        Err(e) => {
            let why = format!("call cgroup gone across a daemon restart: {e}");
            let _ = super::calls::finish(&d, None, c, Exit::Failed(why), false, None).await;
        }
    }
    live.inflight.fetch_sub(1, Ordering::SeqCst);
}
