//! Sessions: `POST /v1/sessions` resolves the policy (agentd-policy), creates
//! `session-<id>/{agent,calls}` with the session caps (cgctl), then starts the container by
//! running `agentd-sandbox run --cgroup <agent leaf>` as a child of the daemon.
//!
//! Why the sandbox binary and not its library: the container runtime re-executes
//! `/proc/self/exe` as the container init, and `exec` must join a user namespace, which a
//! multi-threaded process (this tokio daemon) cannot do. Both need their own process; the
//! binary is that process. The session is "running" once the runtime has written its
//! `session.json` record (what `exec` needs).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentd_policy::{LoadOptions, Plan};
use axum::Json;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Path as UrlPath, Query, State as AxState};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;

use super::systemd::RemoveSystemdEnv as _;
use super::{ApiError, Daemon, Peer, State};
use crate::api::{
    CreateSession, Logs, PolicySource, SessionInfo, SessionLimits, SessionState, StreamQuery, now,
};

/// How long a container may take to come up (TCG VMs are slow: several seconds).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// A session this daemon runs.
#[derive(Debug)]
pub struct Live {
    pub id: String,
    pub owner: u32,
    /// The agent's host uid (the workspace's owner): owns the shim socket.
    pub agent_uid: u32,
    pub plan: Plan,
    pub cg: cgctl::Session,
    /// The sandbox state dir (`agentd-sandbox exec --state`).
    pub sandbox_state: PathBuf,
    pub next_call: AtomicU64,
    /// Calls running now (the session's cgroups are removed only when this is 0).
    pub inflight: AtomicU64,
    /// Set by kill, so the exit is recorded as killed.
    pub killed: AtomicBool,
    pub info: Mutex<SessionInfo>,
    /// Exit statuses shims reported, by call number, until the call's report is written.
    pub shim_exits: Mutex<HashMap<u64, i32>>,
    /// Becomes true when the agent has exited and the row is final.
    pub done: watch::Receiver<bool>,
    /// The write end of the agent's stdin, until `POST …/stdin` takes it (attached runs).
    pub stdin: Mutex<Option<tokio::net::unix::pipe::Sender>>,
}

impl Live {
    /// A copy of the current row.
    pub fn info(&self) -> SessionInfo {
        self.info.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Changes the row and writes it to the journal.
    pub fn update(&self, d: &Daemon, f: impl FnOnce(&mut SessionInfo)) -> Result<(), ApiError> {
        let row = {
            let mut i = self.info.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut i);
            i.clone()
        };
        d.journal(|j| j.put_session(&row))
    }
}

/// Policy files for a request: the host policy from disk (root's file), everything else
/// only from what the client sent, so the daemon never reads a user-chosen path as root.
struct RequestFiles {
    host: PathBuf,
}

impl agentd_policy::load::Files for RequestFiles {
    fn read(&self, path: &Path) -> std::io::Result<String> {
        if path == self.host {
            std::fs::read_to_string(path)
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the daemon reads only the policy text sent with the request",
            ))
        }
    }
}

/// Resolves the session's policy: host policy + the sent repo policy (or the default
/// profile when none was sent).
pub fn resolve_policy(
    host: Option<&Path>,
    policy: Option<&PolicySource>,
) -> Result<Plan, ApiError> {
    let host = host
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(agentd_policy::HOST_POLICY));
    let opts = LoadOptions {
        host: Some(host.clone()),
        ..LoadOptions::default()
    };
    // A repo policy of just `version = 1` stands on the `default` profile.
    let (name, text) = match policy {
        Some(p) => (p.name.as_str(), p.text.as_str()),
        None => ("<default>", "version = 1\n"),
    };
    agentd_policy::load(&RequestFiles { host }, &opts, Some((name, text))).map_err(|e| {
        ApiError::BadRequest(format!(
            "the policy is refused:\n{}",
            agentd_policy::error::render(e.diagnostics())
        ))
    })
}

/// The container init's pid from the sandbox's `session.json`.
pub fn read_init_pid(state: &Path) -> Result<i32, ApiError> {
    let rec = state.join("session.json");
    let bad = |detail: String| ApiError::Internal(format!("{}: {detail}", rec.display()));
    let text = std::fs::read_to_string(&rec).map_err(|e| bad(e.to_string()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    v["init_pid"]
        .as_i64()
        .and_then(|p| i32::try_from(p).ok())
        .ok_or_else(|| bad("no init_pid".into()))
}

/// Waits (bounded) until the container init has forked the agent: by then its mounts and
/// pivot_root are done, so a socket bound under `/proc/<init>/root/run` lands on the
/// container's own /run (bound earlier, it would be hidden under that tmpfs).
async fn wait_agent_forked(init_pid: i32) {
    let children = format!("/proc/{init_pid}/task/{init_pid}/children");
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        match std::fs::read_to_string(&children) {
            Ok(c) if !c.trim().is_empty() => return,
            Ok(_) => {}
            // The init is gone: the session is ending; nothing to wait for.
            Err(_) => return,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fresh session id: 12 hex digits from the kernel's CSPRNG.
fn new_id() -> Result<String, ApiError> {
    let mut b = [0u8; 6];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        return Err(ApiError::Internal(format!(
            "getrandom: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The agent leaf's CPU bandwidth: at most one CPU (and never more than the session's).
const AGENT_CPU_MILLIS: u64 = 1000;

/// The limits of the agent's own leaf (`session-<id>/agent`): what the agent forks without
/// the shim stays there, so it gets no more than a call with the policy's defaults would
/// (memory.max and pids.max of `resources.call`), the batch CPU weight (never the latency
/// class's priority) and at most one CPU. So skipping the shim gains nothing.
pub fn agent_limits(plan: &Plan, session_cpu_millis: u64) -> (u64, u32, u64, cgctl::Limits) {
    let memory = plan.call_defaults.memory.value.0;
    let pids = plan.call_defaults.pids.value;
    let cpu = AGENT_CPU_MILLIS.min(session_cpu_millis);
    let cg = cgctl::Limits {
        memory_max: Some(cgctl::Max::Limit(memory)),
        pids_max: Some(cgctl::Max::Limit(u64::from(pids))),
        cpu_weight: Some(super::calls::cpu_weight(agentd_policy::CpuClass::Batch)),
        cpu_max: Some(cgctl::CpuMax::cpus(cpu as f64 / 1000.0)),
        ..cgctl::Limits::default()
    };
    (memory, pids, cpu, cg)
}

fn session_limits(plan: &Plan) -> (SessionLimits, cgctl::Limits) {
    let s = &plan.session;
    let (agent_memory, agent_pids, agent_cpu_millis, _) = agent_limits(plan, s.cpu.value.0);
    let lim = SessionLimits {
        memory: s.memory.value.0,
        cpu_millis: s.cpu.value.0,
        pids: s.pids.value,
        timeout_s: s.timeout.value.0,
        agent_memory,
        agent_cpu_millis,
        agent_pids,
    };
    let cg = cgctl::Limits {
        memory_max: Some(cgctl::Max::Limit(lim.memory)),
        cpu_max: Some(cgctl::CpuMax::cpus(lim.cpu_millis as f64 / 1000.0)),
        pids_max: Some(cgctl::Max::Limit(u64::from(lim.pids))),
        ..cgctl::Limits::default()
    };
    (lim, cg)
}

/// Checks the workspace and decides the agent's host uid: the workspace's owner, or
/// `user` when a root caller names one (never 0: the agent never runs as root on the host).
fn check_workspace(peer: &Peer, ws: &Path, user: Option<u32>) -> Result<(PathBuf, u32), ApiError> {
    if !ws.is_absolute() {
        return Err(ApiError::BadRequest(format!(
            "workspace {} must be an absolute path",
            ws.display()
        )));
    }
    let canon = ws
        .canonicalize()
        .map_err(|e| ApiError::BadRequest(format!("workspace {}: {e}", ws.display())))?;
    let md = std::fs::metadata(&canon)
        .map_err(|e| ApiError::BadRequest(format!("workspace {}: {e}", canon.display())))?;
    if !md.is_dir() {
        return Err(ApiError::BadRequest(format!(
            "workspace {} is not a directory",
            canon.display()
        )));
    }
    agent_uid(peer, &canon, md.uid(), user).map(|uid| (canon, uid))
}

/// The agent's host uid for a workspace owned by `owner` (pure: unit-tested).
pub fn agent_uid(peer: &Peer, ws: &Path, owner: u32, user: Option<u32>) -> Result<u32, ApiError> {
    match user {
        Some(0) => Err(ApiError::BadRequest(
            "user 0: the agent never runs as root on the host; name an unprivileged uid \
             (e.g. --user 1000)"
                .into(),
        )),
        Some(u) if !peer.is_root() && u != peer.uid => Err(ApiError::Forbidden(format!(
            "only root may run an agent as another uid (uid {} asked for uid {u})",
            peer.uid
        ))),
        Some(u) => Ok(u),
        // The agent runs as the workspace's owner: a user may only start agents on its own repos.
        None if !peer.is_root() && owner != peer.uid => Err(ApiError::Forbidden(format!(
            "workspace {} belongs to uid {owner}, not to the caller (uid {})",
            ws.display(),
            peer.uid
        ))),
        None if owner == 0 => Err(ApiError::BadRequest(format!(
            "workspace {} is owned by root, and the agent runs as the workspace's owner, never \
             root. Either run the agent as an unprivileged uid: `agentctl run --user UID …` \
             (as root; files that uid may not write stay read-only to the agent), or give the \
             repo to a user: `chown -R UID {}`",
            ws.display(),
            ws.display()
        ))),
        None => Ok(owner),
    }
}

/// `POST /v1/sessions`.
pub async fn create(
    AxState(d): AxState<State>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Json(req): Json<CreateSession>,
) -> Result<Json<SessionInfo>, ApiError> {
    if req.argv.is_empty() || req.argv[0].contains('=') {
        return Err(ApiError::BadRequest(
            "argv is empty or its program contains `=`: give a command".into(),
        ));
    }
    let (workspace, agent_uid) = check_workspace(&peer, &req.workspace, req.user)?;
    let plan = resolve_policy(d.cfg.host_policy.as_deref(), req.policy.as_ref())?;
    let id = new_id()?;
    let (limits, cg_limits) = session_limits(&plan);
    let cg = d
        .root
        .create_session(&id, &cg_limits)
        .map_err(|e| ApiError::Internal(format!("session cgroup: {e}")))?;
    // Fail closed: an agent leaf without its limits would let the agent skip the shim.
    let (.., agent_cg) = agent_limits(&plan, limits.cpu_millis);
    if let Err(e) = cg.agent().set_limits(&agent_cg) {
        let _ = d.root.remove_session(&id, Duration::from_secs(5));
        return Err(ApiError::Internal(format!("limits of the agent leaf: {e}")));
    }
    let sessions = d.cfg.state_dir.join("sessions");
    let sandbox_state = sessions.join(&id);
    let info = SessionInfo {
        id: id.clone(),
        owner_uid: peer.uid,
        workspace: workspace.clone(),
        argv: req.argv.clone(),
        state: SessionState::Starting,
        exit_code: None,
        created_at: now(),
        ended_at: None,
        cgroup: cg.cgroup().path().display().to_string(),
        limits,
        calls: 0,
        error: None,
    };
    d.journal(|j| {
        j.put_session(&info)?;
        j.put_policy(&id, req.policy.as_ref())
    })?;
    let logs = d.cfg.state_dir.join("logs");
    let (agent_stdin, stdin_writer) = if req.stdin {
        match super::stream::stdin_pipe(&logs, &id) {
            Ok((r, w)) => (Stdio::from(r), Some(w)),
            Err(e) => {
                let _ = d.root.remove_session(&id, Duration::from_secs(5));
                return Err(ApiError::Internal(format!("the agent's stdin pipe: {e}")));
            }
        }
    } else {
        (Stdio::null(), None)
    };
    let (done_tx, done_rx) = watch::channel(false);
    let live = Arc::new(Live {
        id: id.clone(),
        owner: peer.uid,
        agent_uid,
        plan,
        cg,
        sandbox_state: sandbox_state.clone(),
        next_call: AtomicU64::new(0),
        inflight: AtomicU64::new(0),
        killed: AtomicBool::new(false),
        info: Mutex::new(info),
        shim_exits: Mutex::new(HashMap::new()),
        done: done_rx,
        stdin: Mutex::new(stdin_writer),
    });
    // The agent's $SHELL is the shim; it reaches the daemon through a socket the daemon binds
    // inside the container once it is up, so the agent first waits (bounded) for it.
    let mut argv = vec![
        "/usr/bin/env".to_string(),
        "--".to_string(),
        format!("SHELL={}", super::shim::SHIM_IN_CONTAINER),
        format!("AGENTD_SHIM_SOCKET={}", super::shim::SOCKET_IN_CONTAINER),
        "/bin/sh".to_string(),
        "-c".to_string(),
        "i=0; while [ ! -S \"$AGENTD_SHIM_SOCKET\" ] && [ $i -lt 600 ]; do sleep 0.05; \
         i=$((i+1)); done; exec \"$@\""
            .to_string(),
        "agentd-agent".to_string(),
    ];
    argv.extend(req.argv.iter().cloned());
    let started = start_container(&d, &live, &workspace, &argv, &logs, agent_stdin).await;
    let mut child = match started {
        Ok(c) => c,
        Err(e) => {
            fail(&d, &live, &e.to_string()).await;
            let _ = done_tx.send(true);
            return Err(e);
        }
    };
    // Ready when the runtime wrote the record `exec` needs, or failed when it exited first.
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    let record = sandbox_state.join("session.json");
    loop {
        if record.exists() {
            break;
        }
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || tokio::time::Instant::now() > deadline {
            let _ = child.start_kill();
            let _ = child.wait().await;
            let err = d.cfg.state_dir.join("logs").join(format!("{id}.err"));
            let why = std::fs::read_to_string(&err).unwrap_or_default();
            let msg = format!(
                "the session container did not start ({}): {}",
                exited.map_or("timed out".to_string(), |s| s.to_string()),
                why.trim()
            );
            fail(&d, &live, &msg).await;
            let _ = done_tx.send(true);
            return Err(ApiError::Internal(msg));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let init = read_init_pid(&sandbox_state);
    if let Ok(pid) = &init {
        wait_agent_forked(*pid).await;
    }
    match init.and_then(|pid| super::shim::listen(&d, &live, pid)) {
        Ok(_) => {}
        // Calls from inside then run in the agent's leaf; said in the session row.
        Err(e) => live.update(&d, |i| i.error = Some(format!("no shim socket: {e}")))?,
    }
    live.update(&d, |i| i.state = SessionState::Running)?;
    d.live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, live.clone());
    tokio::spawn(monitor(d.clone(), live.clone(), child, done_tx));
    Ok(Json(live.info()))
}

async fn start_container(
    d: &Daemon,
    live: &Live,
    workspace: &Path,
    argv: &[String],
    logs: &Path,
    stdin: Stdio,
) -> Result<tokio::process::Child, ApiError> {
    let open = |ext: &str| {
        let p = logs.join(format!("{}.{ext}", live.id));
        std::fs::File::create(&p)
            .map_err(|e| ApiError::Internal(format!("create {}: {e}", p.display())))
    };
    let (out, err) = (open("out")?, open("err")?);
    tokio::process::Command::new(&d.cfg.sandbox_bin)
        .arg("run")
        .arg("--workspace")
        .arg(workspace)
        .arg("--state")
        .arg(&live.sandbox_state)
        .arg("--cgroup")
        .arg(live.cg.agent().path())
        // The layer outlives the agent until the final checkpoint (undo::session_ended).
        .arg("--keep-state")
        // The agent's host uid: the workspace's owner, or the root caller's `--user`.
        .arg("--owner-uid")
        .arg(live.agent_uid.to_string())
        // The shim at one fixed path in every container: a host path under /tmp, /run or a
        // home would be invisible inside (the session has its own).
        .arg("--bind-ro")
        .arg(format!(
            "{}:{}",
            d.cfg.shim_bin.display(),
            super::shim::SHIM_IN_CONTAINER
        ))
        .arg("--")
        .args(argv)
        .envs_remove_systemd()
        .stdin(stdin)
        .stdout(out)
        .stderr(err)
        // The runtime outlives the daemon (restart, crash): the next daemon re-adopts the
        // session through the init's pidfd (see `adopt`).
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| {
            ApiError::Internal(format!("cannot start {}: {e}", d.cfg.sandbox_bin.display()))
        })
}

async fn fail(d: &Arc<Daemon>, live: &Live, why: &str) {
    let _ = live.update(d, |i| {
        i.state = SessionState::Failed;
        i.error = Some(why.to_string());
        i.ended_at = Some(now());
    });
    remove_cgroups(d, &live.id).await;
    let (sd, id, ws) = (
        d.cfg.state_dir.clone(),
        live.id.clone(),
        live.info().workspace,
    );
    let _ = tokio::task::spawn_blocking(move || super::undo::session_ended(&sd, &id, &ws)).await;
}

async fn remove_cgroups(d: &Arc<Daemon>, id: &str) {
    let d2 = d.clone();
    let id2 = id.to_string();
    let r =
        tokio::task::spawn_blocking(move || d2.root.remove_session(&id2, Duration::from_secs(10)))
            .await;
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => super::log::error(&format!("removing the cgroups of session {id}: {e}")),
        Err(e) => super::log::error(&format!("removing the cgroups of session {id}: {e}")),
    }
}

/// Time left before the session timeout.
pub fn remaining(i: &SessionInfo) -> Duration {
    Duration::from_secs((i.created_at + i.limits.timeout_s).saturating_sub(now()))
}

/// Waits for the agent (or the session timeout), records the end, removes the cgroups.
async fn monitor(
    d: Arc<Daemon>,
    live: Arc<Live>,
    mut child: tokio::process::Child,
    done: watch::Sender<bool>,
) {
    let timeout = remaining(&live.info());
    let mut timed_out = false;
    let status = tokio::select! {
        s = child.wait() => s,
        () = tokio::time::sleep(timeout) => {
            timed_out = true;
            let _ = live.cg.cgroup().kill();
            child.wait().await
        }
    };
    let code = status.ok().and_then(|s| {
        use std::os::unix::process::ExitStatusExt;
        s.code().or_else(|| s.signal().map(|n| 128 + n))
    });
    finish(&d, &live, code, timed_out, done).await;
}

/// Records the end of a session, waits for its calls' reports, removes its cgroups.
pub async fn finish(
    d: &Arc<Daemon>,
    live: &Live,
    code: Option<i32>,
    timed_out: bool,
    done: watch::Sender<bool>,
) {
    let killed = live.killed.load(Ordering::SeqCst);
    let _ = live.update(d, |i| {
        i.state = if killed || timed_out {
            SessionState::Killed
        } else {
            SessionState::Exited
        };
        if timed_out {
            i.error = Some(format!("session timeout ({}s) expired", i.limits.timeout_s));
        }
        i.exit_code = code;
        i.ended_at = Some(now());
    });
    // Calls die with the container; let their runners write their reports first.
    for _ in 0..300 {
        if live.inflight.load(Ordering::SeqCst) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    remove_cgroups(d, &live.id).await;
    let (sd, id, ws) = (
        d.cfg.state_dir.clone(),
        live.id.clone(),
        live.info().workspace,
    );
    let _ = tokio::task::spawn_blocking(move || super::undo::session_ended(&sd, &id, &ws)).await;
    d.live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&live.id);
    let _ = done.send(true);
}

/// The journal row of `id`, if the caller may see it.
pub fn visible(d: &Daemon, peer: &Peer, id: &str) -> Result<SessionInfo, ApiError> {
    let s = d
        .journal(|j| j.session(id))?
        .ok_or_else(|| ApiError::NotFound(format!("no session {id}")))?;
    peer.may_steer(&format!("session {id}"), s.owner_uid)?;
    Ok(s)
}

/// `GET /v1/sessions`: the caller's sessions (root: all).
pub async fn list(
    AxState(d): AxState<State>,
    ConnectInfo(peer): ConnectInfo<Peer>,
) -> Result<Json<Vec<SessionInfo>>, ApiError> {
    let owner = (!peer.is_root()).then_some(peer.uid);
    Ok(Json(d.journal(|j| j.sessions(owner))?))
}

/// `GET /v1/sessions/{id}`.
pub async fn inspect(
    AxState(d): AxState<State>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<SessionInfo>, ApiError> {
    Ok(Json(visible(&d, &peer, &id)?))
}

async fn wait_done(d: &Daemon, id: &str, limit: Option<Duration>) {
    if let Some(live) = d.live(id) {
        let mut rx = live.done.clone();
        let fut = rx.wait_for(|v| *v);
        match limit {
            Some(t) => {
                let _ = tokio::time::timeout(t, fut).await;
            }
            None => {
                let _ = fut.await;
            }
        }
    }
}

/// `POST /v1/sessions/{id}/wait`: answers when the agent has exited.
pub async fn wait(
    AxState(d): AxState<State>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<SessionInfo>, ApiError> {
    visible(&d, &peer, &id)?;
    wait_done(&d, &id, None).await;
    Ok(Json(visible(&d, &peer, &id)?))
}

/// `GET /v1/sessions/{id}/logs`: the kept output (the last `LOG_KEEP` bytes of each
/// stream); with `?follow=true` an NDJSON stream (see [`super::stream::follow`]).
pub async fn logs(
    AxState(d): AxState<State>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<StreamQuery>,
) -> Result<Response, ApiError> {
    visible(&d, &peer, &id)?;
    if q.follow {
        return Ok(super::stream::follow(d, id, peer));
    }
    let read = |ext: &str| super::stream::read_kept(&super::stream::log_path(&d, &id, ext));
    Ok(Json(Logs {
        stdout: read("out"),
        stderr: read("err"),
    })
    .into_response())
}

pub fn kill_live(live: &Live) -> Result<(), ApiError> {
    live.killed.store(true, Ordering::SeqCst);
    // cgroup.kill on session-<id> kills the agent and every call; the runtime (outside
    // the cgroup) then sees its init die and tears the container down.
    live.cg
        .cgroup()
        .kill()
        .map_err(|e| ApiError::Internal(format!("killing session {}: {e}", live.id)))
}

/// `POST /v1/sessions/{id}/kill`: kills the session and waits (up to 30 s) for its end.
pub async fn kill(
    AxState(d): AxState<State>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<SessionInfo>, ApiError> {
    let s = visible(&d, &peer, &id)?;
    let Some(live) = d.live(&id) else {
        return Err(ApiError::Conflict(format!(
            "session {id} is not running (state {})",
            s.state.as_str()
        )));
    };
    kill_live(&live)?;
    wait_done(&d, &id, Some(Duration::from_secs(30))).await;
    Ok(Json(visible(&d, &peer, &id)?))
}

/// `DELETE /v1/sessions/{id}`: kills it if it runs, then hides it from listings (the
/// journal rows stay).
pub async fn remove(
    AxState(d): AxState<State>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    UrlPath(id): UrlPath<String>,
    axum::extract::Query(q): axum::extract::Query<super::undo::RemoveQuery>,
) -> Result<Json<SessionInfo>, ApiError> {
    let row = visible(&d, &peer, &id)?;
    super::undo::check_removable(&d, &row, q.force).await?;
    if let Some(live) = d.live(&id) {
        kill_live(&live)?;
        wait_done(&d, &id, Some(Duration::from_secs(30))).await;
    }
    let s = visible(&d, &peer, &id)?;
    d.journal(|j| j.remove_session(&id))?;
    for ext in ["out", "err"] {
        let _ = std::fs::remove_file(d.cfg.state_dir.join("logs").join(format!("{id}.{ext}")));
    }
    Ok(Json(s))
}

#[cfg(test)]
mod agent_uid_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
    use super::*;

    fn peer(uid: u32) -> Peer {
        Peer {
            uid,
            gid: uid,
            pid: None,
        }
    }

    #[test]
    fn a_root_owned_workspace_names_the_way_forward_and_user_never_maps_to_root() {
        let ws = Path::new("/srv/repo");
        let e = agent_uid(&peer(0), ws, 0, None).unwrap_err().to_string();
        assert!(
            e.contains("--user UID") && e.contains("chown -R UID /srv/repo"),
            "{e}"
        );
        assert_eq!(agent_uid(&peer(0), ws, 0, Some(1000)).unwrap(), 1000);
        let e = agent_uid(&peer(0), ws, 0, Some(0)).unwrap_err().to_string();
        assert!(e.contains("never runs as root"), "{e}");
        // Not root: only itself, and only on its own workspace.
        assert!(matches!(
            agent_uid(&peer(1000), ws, 0, Some(1001)),
            Err(ApiError::Forbidden(_))
        ));
        assert_eq!(agent_uid(&peer(1000), ws, 1000, None).unwrap(), 1000);
        assert!(matches!(
            agent_uid(&peer(1000), ws, 1001, None),
            Err(ApiError::Forbidden(_))
        ));
    }
}
