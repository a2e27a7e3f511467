//! Tool calls from inside a session, for unmodified agents: the agent's `$SHELL` is
//! `agentd-shim`, which, run as `-c CMD`, asks the daemon over the session's own socket for a
//! call cgroup. The socket lives INSIDE the container, at [`SOCKET_IN_CONTAINER`] on the
//! container's private /run tmpfs: the daemon binds it through `/proc/<init>/root`, so no
//! other session can even see it, and Landlock (which grants connecting to pathname sockets
//! only under the session's writable trees, ABI 9 `RESOLVE_UNIX`) lets the agent reach it.
//! It belongs to the agent's host uid, mode 0600. The daemon also checks through
//! SO_PEERCRED + /proc that the caller is a process of THIS session, then creates `calls/<n>` with the limits policy resolves for the
//! command and `AGENTD_INTENT`, moves the caller into it, and records the report once the
//! cgroup is empty. The shim then runs the real shell as its child (so everything the
//! command forks stays in the call) and reports the exit status before exiting with it.
//! A shim run from inside a call (a nested `bash -c`) gets no new call: it stays where it is.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Path as UrlPath, State as AxState};
use axum::routing::post;
use axum::{Json, Router};

use super::apply::{Exit, SOCKET_IN_CONTAINER, call_limits};
use super::sessions::Live;
use super::{ApiError, Daemon, Peer};
use crate::api::{CallInfo, CallVia, SessionState, ShimAnswer, ShimCall, ShimExit};

#[derive(Debug, Clone)]
struct ShimState {
    d: Arc<Daemon>,
    live: Arc<Live>,
}

/// Where the caller's process is in the session.
enum Place {
    Agent,
    /// Inside `calls/<n>` (the number when the path names one).
    Call(Option<u64>),
}

/// The session cgroup as /proc/<pid>/cgroup spells it (relative to the cgroup2 mount).
pub(super) fn session_cgroup_name(live: &Live) -> String {
    cgctl::discover::as_proc_path(
        live.cg.cgroup().path(),
        std::path::Path::new(cgctl::discover::UNIFIED_MOUNT),
    )
}

/// Where process `pid` is, as `/proc/<pid>/cgroup` says (empty when it is gone).
pub(super) fn cgroup_of(pid: i32) -> String {
    cgctl::discover::cgroup_of(&pid.to_string()).unwrap_or_default()
}

fn place(live: &Live, peer: &Peer) -> Result<Place, ApiError> {
    let pid = peer.pid.ok_or(ApiError::UnnamedPeer)?;
    let cg = cgroup_of(pid);
    let cg = cg.as_str();
    let sess = session_cgroup_name(live);
    if cg == format!("{sess}/agent") {
        Ok(Place::Agent)
    } else if let Some(rest) = cg.strip_prefix(&format!("{sess}/calls/")) {
        Ok(Place::Call(
            rest.split('/').next().and_then(|n| n.parse().ok()),
        ))
    } else {
        Err(ApiError::NotInSession {
            pid,
            session: live.id.clone(),
            cgroup: cg.to_owned(),
        })
    }
}

async fn shim_call(
    AxState(s): AxState<ShimState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Json(req): Json<ShimCall>,
) -> Result<Json<ShimAnswer>, ApiError> {
    let live = &s.live;
    if live.info().state != SessionState::Running {
        return Err(ApiError::NotLive {
            id: live.id.clone(),
        });
    }
    if let Place::Call(n) = place(live, &peer)? {
        return Ok(Json(ShimAnswer {
            // The call it is in: a shim whose first request was cut by a daemon restart
            // (after the move, before the answer) learns its call number from this.
            n,
            nested: true,
            limits: None,
        }));
    }
    let intent =
        crate::ctl::parse_intent(&req.intent).map_err(|source| ApiError::Intent { source })?;
    let pid = peer.pid.unwrap_or_default();
    let p = place_new_call(&s.d, live, pid, &req.argv, intent, CallVia::Shim).await?;
    let view = p.info.limits.clone();
    let n = p.info.n;
    live.inflight.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(watch_call(
        s.d.clone(),
        live.clone(),
        p.call,
        p.info,
        p.grant,
    ));
    Ok(Json(ShimAnswer {
        n: Some(n),
        nested: false,
        limits: Some(view),
    }))
}

/// A call made for a process of the agent leaf, which is in it now.
pub(super) struct Placed {
    pub call: cgctl::Call,
    pub info: CallInfo,
    pub grant: Option<super::mempool::Grant>,
}

/// Makes a call for `argv` (the shim's command words or a captured exec's argv) with its
/// intent and moves process `pid` into it: the one way a process of the agent leaf
/// becomes a call (the shim's request, exec capture: docs/capture.md).
pub(super) async fn place_new_call(
    d: &Arc<Daemon>,
    live: &Arc<Live>,
    pid: i32,
    argv: &[String],
    intent: agentd_policy::DeclaredIntent,
    via: CallVia,
) -> Result<Placed, ApiError> {
    if argv.is_empty() {
        return Err(ApiError::BadArgv {
            why: "argv is empty",
        });
    }
    let plan = live.plan.call(argv, &intent);
    let (view, mut cg_limits) = call_limits(&plan);
    let n = live.next_call.fetch_add(1, Ordering::SeqCst) + 1;
    super::undo::before_call(d, live, n).await;
    let mut info = CallInfo::running(&live.id, n, argv, intent, view.clone());
    info.via = Some(via);
    live.start_call(d, &info)?;
    // The memory pool's admission: the shim (and so the agent's command) waits here while
    // the call's grant does not fit.
    let grant = super::mempool::admit(d, live, n, &plan, &mut cg_limits).await;
    let call = match live.cg.create_call(n, &cg_limits) {
        Ok(c) => c,
        Err(source) => {
            let e = ApiError::CallCgroup { n, source };
            let fail = Exit::Failed(e.to_string());
            let _ = super::calls::finish(d, None, info, fail, false, grant).await;
            return Err(e);
        }
    };
    super::mempool::attach(&grant, call.cgroup());
    // Before the agent's command moves in: the scheduler's class and the accounting watch.
    d.sched.call_starting(
        &live.id,
        call.cgroup().path(),
        view.cpu_class,
        view.cpu_weight,
    );
    if let Err(source) = call.cgroup().add_pid(pid as u32) {
        let e = ApiError::MovePid { n, pid, source };
        let fail = Exit::Failed(e.to_string());
        let _ = super::calls::finish(d, Some(call), info, fail, false, grant).await;
        return Err(e);
    }
    Ok(Placed { call, info, grant })
}

/// Waits until the call's cgroup is empty (or its timeout kills it), then records it with
/// the status its shim reported.
async fn watch_call(
    d: Arc<Daemon>,
    live: Arc<Live>,
    call: cgctl::Call,
    info: CallInfo,
    grant: Option<super::mempool::Grant>,
) {
    let deadline = info.started_at + info.limits.timeout_s;
    let timed_out = super::calls::wait_empty(&call, deadline, Duration::from_millis(100)).await;
    let code = live.take_shim_exit(info.n);
    let end = Exit::Reported(code);
    let _ = super::calls::finish(&d, Some(call), info, end, timed_out, grant).await;
    live.inflight.fetch_sub(1, Ordering::SeqCst);
}

/// `agentd-cap request`: files the request for this session (and the caller's call) and
/// answers once it is decided. Nothing on this socket answers a request.
async fn shim_request(
    AxState(s): AxState<ShimState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Json(req): Json<super::approvals::CapRequest>,
) -> Result<Json<super::approvals::CapAnswer>, ApiError> {
    let call = match place(&s.live, &peer)? {
        Place::Agent => None,
        Place::Call(n) => n,
    };
    super::approvals::shim_request(s.d.clone(), s.live.clone(), call, req).await
}

async fn shim_exit(
    AxState(s): AxState<ShimState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    UrlPath(n): UrlPath<u64>,
    Json(req): Json<ShimExit>,
) -> Result<Json<ShimExit>, ApiError> {
    // Only the call's own processes report its status.
    let pid = peer.pid.unwrap_or_default();
    let want = format!("{}/calls/{n}", session_cgroup_name(&s.live));
    if cgroup_of(pid) != want {
        return Err(ApiError::NotInCall {
            pid,
            n,
            session: s.live.id.clone(),
        });
    }
    s.live
        .shim_exits
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(n, req.code);
    Ok(Json(req))
}

/// The same socket as the daemon reaches it: through the container init's root.
pub fn socket_path(init_pid: i32) -> PathBuf {
    PathBuf::from(format!("/proc/{init_pid}/root{SOCKET_IN_CONTAINER}"))
}

/// Runs `f` with the path of the container's /run on a short-lived thread whose filesystem
/// ids are those of /run's owner (container root). A new inode on that tmpfs (the bind), or
/// a rename there, needs ids mapped in the container's user namespace (host root is not:
/// EOVERFLOW); fsuid/fsgid are per thread, so the rest of the daemon keeps root's. The
/// directory is opened as root first and reached through our own /proc/self/fd, so the
/// switched ids need no access to the init's /proc entry.
fn as_run_owner<T: Send + 'static>(
    init_pid: i32,
    f: impl FnOnce(&str) -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let dir = std::fs::File::open(format!("/proc/{init_pid}/root/run"))?;
    let md = dir.metadata()?;
    let (uid, gid) = (md.uid(), md.gid());
    let path = format!("/proc/self/fd/{}", dir.as_raw_fd());
    std::thread::spawn(move || {
        // SAFETY: setfsgid/setfsuid change only this thread's filesystem ids; they cannot
        // fail in a way that matters here (`f` reports any access problem).
        unsafe {
            libc::setfsgid(gid);
            libc::setfsuid(uid);
        }
        let r = f(&path);
        // SAFETY: as above, back to root's ids (restores the fs capabilities) before exit.
        unsafe {
            libc::setfsuid(0);
            libc::setfsgid(0);
        }
        drop(dir);
        r
    })
    .join()
    .map_err(|_| std::io::Error::other("the container /run thread panicked"))?
}

/// Binds the session's shim socket inside its container (owned by the agent's host uid,
/// 0600) and serves it until the session ends.
pub fn listen(d: &Arc<Daemon>, live: &Arc<Live>, init_pid: i32) -> Result<PathBuf, ApiError> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(init_pid);
    let ierr = |what: &'static str, source| ApiError::Io {
        what,
        path: path.clone(),
        source,
    };
    // Bound at a temporary name, given to the agent, then renamed over the path the agent
    // knows: a shim retrying while a new daemon rebinds (re-adoption) finds either the old,
    // refusing socket (it retries) or the finished one, never a missing or root-owned one
    // (ENOENT or EACCES, which it takes for a refusal and runs outside any call cgroup).
    let tmp_name = "agentd-shim.sock.new";
    let tmp = path.with_file_name(tmp_name);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(ApiError::Io {
                what: "shim socket: remove stale",
                path: tmp.clone(),
                source: e,
            });
        }
    }
    let terr = |what: &'static str, source| ApiError::Io {
        what,
        path: tmp.clone(),
        source,
    };
    let l = as_run_owner(init_pid, move |run| {
        std::os::unix::net::UnixListener::bind(format!("{run}/{tmp_name}"))
    })
    .map_err(|e| terr("shim socket: bind", e))?;
    l.set_nonblocking(true)
        .map_err(|e| terr("shim socket: set_nonblocking", e))?;
    let l = tokio::net::UnixListener::from_std(l).map_err(|e| terr("shim socket: register", e))?;
    std::os::unix::fs::chown(&tmp, Some(live.agent_uid), Some(live.agent_uid))
        .map_err(|e| terr("shim socket: chown", e))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| terr("shim socket: chmod", e))?;
    let final_name = "agentd-shim.sock";
    debug_assert!(SOCKET_IN_CONTAINER.ends_with(final_name));
    as_run_owner(init_pid, move |run| {
        std::fs::rename(format!("{run}/{tmp_name}"), format!("{run}/{final_name}"))
    })
    .map_err(|e| ierr("shim socket: rename into place", e))?;
    let app = Router::new()
        .route(&crate::routes::SHIM_CALLS.template(), post(shim_call))
        .route(&crate::routes::SHIM_EXIT.template(), post(shim_exit))
        .route(&crate::routes::SHIM_REQUESTS.template(), post(shim_request))
        .with_state(ShimState {
            d: d.clone(),
            live: live.clone(),
        });
    let mut done = live.done.clone();
    // The socket file dies with the container's /run; nothing to remove afterwards. The
    // agent reaches this socket: it is served within the shim bounds (connections, header
    // and lifetime timeouts), so it cannot exhaust the daemon's descriptors.
    tokio::spawn(super::conn::serve(l, app, super::conn::SHIM, async move {
        let _ = done.wait_for(|v| *v).await;
    }));
    Ok(path)
}
