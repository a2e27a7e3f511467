//! Sessions: `POST /v1/sessions` resolves the policy (agentd-policy), creates
//! `session-<id>/{agent,calls}` with the session caps (cgctl), builds the session's sandbox
//! plan ([`super::apply::sandbox_plan`]) and starts the container by running the
//! `agentd-sandbox` runtime with that plan ([`agentd_sandbox::launch`]) as a child of the
//! daemon, in the agent leaf.
//!
//! Why the sandbox binary and not its library: the container runtime re-executes
//! `/proc/self/exe` as the container init, and `exec` must join a user namespace, which a
//! multi-threaded process (this tokio daemon) cannot do. Both need their own process; the
//! binary is that process. Start handshake: the runtime says ready once the container is
//! built and its `session.json` record (what `exec` needs) is written; the daemon then
//! binds the shim socket inside and says go, and only then does the agent start.

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

use agentd_sandbox::launch::{self, RunRequest, Sandbox};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::systemd::RemoveSystemdEnv as _;
use super::{ApiError, Daemon, Peer, State, apply};
use crate::api::{CreateSession, Logs, PolicySource, SessionInfo, SessionState, StreamQuery, now};

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
    /// The session's egress proxy (network sessions, once started).
    pub egress: Mutex<Option<Arc<crate::egress::SessionEgress>>>,
    /// The last frozen checkpoint walk, for checkpoints of an unchanged layer.
    pub quiet: Mutex<Option<super::undo::QuietRef>>,
}

/// What [`Live::new`] needs: everything of a live session that is not its runtime state.
#[derive(Debug)]
pub struct NewLive {
    pub id: String,
    pub owner: u32,
    pub agent_uid: u32,
    pub plan: Plan,
    pub cg: cgctl::Session,
    pub sandbox_state: PathBuf,
    pub info: SessionInfo,
    /// The highest call number used so far.
    pub last_call: u64,
    pub stdin: Option<tokio::net::unix::pipe::Sender>,
}

impl Live {
    /// The one constructor of a live session (a new one, or one re-adopted after a
    /// restart); the sender marks it done.
    pub fn new(n: NewLive) -> (Arc<Live>, watch::Sender<bool>) {
        let (done_tx, done_rx) = watch::channel(false);
        let live = Arc::new(Live {
            id: n.id,
            owner: n.owner,
            agent_uid: n.agent_uid,
            plan: n.plan,
            cg: n.cg,
            sandbox_state: n.sandbox_state,
            next_call: AtomicU64::new(n.last_call),
            inflight: AtomicU64::new(0),
            killed: AtomicBool::new(false),
            info: Mutex::new(n.info),
            shim_exits: Mutex::new(HashMap::new()),
            done: done_rx,
            stdin: Mutex::new(n.stdin),
            egress: Mutex::new(None),
            quiet: Mutex::new(None),
        });
        (live, done_tx)
    }

    /// The exit status a shim reported for call `n`, taken (once).
    pub fn take_shim_exit(&self, n: u64) -> Option<i32> {
        self.shim_exits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&n)
    }

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

    /// Journals call `info` as started and raises the session's call count to it, in one
    /// journal transaction (the hot path of every call).
    pub fn start_call(&self, d: &Daemon, info: &crate::api::CallInfo) -> Result<(), ApiError> {
        let row = {
            let mut i = self.info.lock().unwrap_or_else(|p| p.into_inner());
            i.calls = i.calls.max(info.n);
            i.clone()
        };
        d.journal(|j| j.start_call(info, &row))
    }
}

/// Policy files for a request: the host policy text (read by the daemon from its own
/// file, or from the journal on re-adoption), everything else only from what the client
/// sent, so the daemon never reads a user-chosen path as root.
struct RequestFiles {
    host: PathBuf,
    host_text: Option<String>,
}

impl agentd_policy::load::Files for RequestFiles {
    fn read(&self, path: &Path) -> std::io::Result<String> {
        match &self.host_text {
            Some(t) if path == self.host => Ok(t.clone()),
            _ if path == self.host => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no host policy",
            )),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the daemon reads only the policy text sent with the request",
            )),
        }
    }
}

/// The host policy's path (the daemon's flag, else the default).
fn host_path(host: Option<&Path>) -> PathBuf {
    host.map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(agentd_policy::HOST_POLICY))
}

/// Reads the host policy text now in force (`None`: no file, the built-in caps alone).
pub fn read_host_policy(host: Option<&Path>) -> Result<Option<String>, ApiError> {
    let path = host_path(host);
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ApiError::HostPolicy { path, source }),
    }
}

/// Resolves the session's policy: host policy + the sent repo policy (or the default
/// profile when none was sent).
pub fn resolve_policy(
    host: Option<&Path>,
    policy: Option<&PolicySource>,
) -> Result<Plan, ApiError> {
    resolve_with(host, read_host_policy(host)?, policy)
}

/// Like [`resolve_policy`], with the host policy text given (`host` names it).
pub fn resolve_with(
    host: Option<&Path>,
    host_text: Option<String>,
    policy: Option<&PolicySource>,
) -> Result<Plan, ApiError> {
    let host = host_path(host);
    let opts = LoadOptions {
        host: Some(host.clone()),
        ..LoadOptions::default()
    };
    // A repo policy of just `version = 1` stands on the `default` profile.
    let (name, text) = match policy {
        Some(p) => (p.name.as_str(), p.text.as_str()),
        None => ("<default>", "version = 1\n"),
    };
    let files = RequestFiles { host, host_text };
    agentd_policy::load(&files, &opts, Some((name, text))).map_err(|e| ApiError::PolicyRefused {
        diagnostics: agentd_policy::error::render(e.diagnostics()),
    })
}

/// The sandbox's record of a session (`session.json` in its state dir), typed.
pub fn read_record(state: &Path) -> Result<agentd_sandbox::exec::SessionRecord, ApiError> {
    agentd_sandbox::exec::read_record(state).map_err(|source| ApiError::Record { source })
}

/// A fresh session id: 12 hex digits from the kernel's CSPRNG.
fn new_id() -> Result<String, ApiError> {
    let mut b = [0u8; 6];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        return Err(ApiError::Sys {
            what: "getrandom",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Checks the workspace and decides the agent's host uid: the workspace's owner, or
/// `user` when a root caller names one (never 0: the agent never runs as root on the host).
fn check_workspace(peer: &Peer, ws: &Path, user: Option<u32>) -> Result<(PathBuf, u32), ApiError> {
    if !ws.is_absolute() {
        return Err(ApiError::WorkspaceNotAbsolute {
            path: ws.to_path_buf(),
        });
    }
    let canon = ws.canonicalize().map_err(|source| ApiError::Workspace {
        path: ws.to_path_buf(),
        source,
    })?;
    let md = std::fs::metadata(&canon).map_err(|source| ApiError::Workspace {
        path: canon.clone(),
        source,
    })?;
    if !md.is_dir() {
        return Err(ApiError::WorkspaceNotDir { path: canon });
    }
    if let Some(ch) = agentd_sandbox::plan::overlay_special_char(&canon) {
        return Err(ApiError::WorkspaceUnsafeName { path: canon, ch });
    }
    agent_uid(peer, &canon, md.uid(), user).map(|uid| (canon, uid))
}

/// The agent's host uid for a workspace owned by `owner` (pure: unit-tested).
pub fn agent_uid(peer: &Peer, ws: &Path, owner: u32, user: Option<u32>) -> Result<u32, ApiError> {
    match user {
        Some(0) => Err(ApiError::RootAgent),
        Some(u) if !peer.is_root() && u != peer.uid => Err(ApiError::OtherUid {
            caller: peer.uid,
            asked: u,
        }),
        Some(u) => Ok(u),
        // The agent runs as the workspace's owner: a user may only start agents on its own repos.
        None if !peer.is_root() && owner != peer.uid => Err(ApiError::WorkspaceNotOwned {
            path: ws.to_path_buf(),
            owner,
            caller: peer.uid,
        }),
        None if owner == 0 => Err(ApiError::WorkspaceOwnedByRoot {
            path: ws.to_path_buf(),
        }),
        None => Ok(owner),
    }
}

/// A container uid picked for a session, held against other starts until the session is
/// in the journal (then the journal holds it).
struct IdClaim<'a> {
    d: &'a Daemon,
    uid: u32,
}

impl Drop for IdClaim<'_> {
    fn drop(&mut self) {
        let mut f = self
            .d
            .ids_in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        f.remove(&self.uid);
    }
}

/// The lowest container uid of the daemon's range that no session holds: none in the
/// journal (running, ended or kept — a kept state dir is its root's until `rm`) and none
/// being started.
fn claim_container_uid(d: &Daemon) -> Result<IdClaim<'_>, ApiError> {
    let mut flight = d.ids_in_flight.lock().unwrap_or_else(|p| p.into_inner());
    let mut taken: std::collections::BTreeSet<u32> = d
        .journal(|j| j.sessions(None))?
        .iter()
        .filter_map(|s| s.container_uid)
        .collect();
    taken.extend(flight.iter().copied());
    let uid = d
        .cfg
        .container_ids
        .pick(&taken)
        .map_err(|source| ApiError::ContainerIds { source })?;
    flight.insert(uid);
    Ok(IdClaim { d, uid })
}

/// `POST /v1/sessions`.
pub async fn create(
    AxState(d): AxState<State>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Json(req): Json<CreateSession>,
) -> Result<Json<SessionInfo>, ApiError> {
    if req.argv.is_empty() || req.argv[0].contains('=') {
        return Err(ApiError::BadArgv {
            why: "argv is empty or its program contains `=`: give a command",
        });
    }
    let (workspace, agent_uid) = check_workspace(&peer, &req.workspace, req.user)?;
    let host_text = read_host_policy(d.cfg.host_policy.as_deref())?;
    let plan = resolve_with(
        d.cfg.host_policy.as_deref(),
        host_text.clone(),
        req.policy.as_ref(),
    )?;
    // Fail closed on `require`: a mechanism the policy requires that this host lacks (or
    // runs degraded) refuses the session, naming it.
    if !plan.require.is_empty()
        && let Some(unmet) = super::require::unmet(&plan, super::require::host_probe())
    {
        return Err(ApiError::RequireUnmet { unmet });
    }
    // Fail closed: exec capture needs seccomp user notification.
    if plan.session.capture == agentd_policy::CaptureMode::Exec && !super::require::user_notif() {
        return Err(ApiError::CaptureUnavailable {
            origin: "the session's policy".into(),
        });
    }
    let id = new_id()?;
    let claim = claim_container_uid(&d)?;
    let (limits, cg_limits) = apply::session_limits(&plan);
    let cg = d
        .root
        .create_session(&id, &cg_limits)
        .map_err(|source| ApiError::Cgroup {
            what: "session cgroup".into(),
            source,
        })?;
    // Fail closed: an agent leaf without its limits would let the agent skip the shim.
    let agent = apply::agent_limits(&plan, limits.cpu_millis);
    if let Err(e) = cg.agent().set_limits(&agent.cgroup) {
        let _ = d.root.remove_session(&id, Duration::from_secs(5));
        return Err(ApiError::Cgroup {
            what: "limits of the agent leaf".into(),
            source: e,
        });
    }
    let sessions = d.cfg.state_dir.join("sessions");
    let sandbox_state = sessions.join(&id);
    let resolv_conf = if plan.session.network.enabled {
        match super::net::resolv_conf(&d, &id) {
            Ok(f) => Some(f),
            Err(e) => {
                let _ = d.root.remove_session(&id, Duration::from_secs(5));
                return Err(e);
            }
        }
    } else {
        None
    };
    let run = RunRequest {
        plan: apply::sandbox_plan(
            &plan,
            &apply::SessionContext {
                workspace: workspace.clone(),
                state: sandbox_state.clone(),
                agent_uid,
                root_uid: claim.uid,
                shim_bin: d.cfg.shim_bin.clone(),
                resolv_conf,
                sched_ext: d.sched.kernel_ext(),
            },
        ),
        argv: req.argv.clone(),
        cgroup: Some(cg.agent().path().to_path_buf()),
        // The layer outlives the agent until the final checkpoint (undo::session_ended).
        keep_state: true,
    };
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
        container_uid: Some(claim.uid),
    };
    let plan_row = crate::journal::PlanRow {
        host_policy: host_text,
        plan: serde_json::to_value(&plan).map_err(|source| ApiError::Json {
            what: "the resolved plan",
            source,
        })?,
        sandbox: run.plan.clone(),
    };
    d.journal(|j| {
        j.put_session(&info)?;
        j.put_policy(&id, req.policy.as_ref())?;
        j.put_plan(&id, &plan_row)
    })?;
    drop(claim);
    let logs = d.cfg.state_dir.join("logs");
    let (agent_stdin, stdin_writer) = if req.stdin {
        match super::stream::stdin_pipe(&logs, &id) {
            Ok((r, w)) => (Stdio::from(r), Some(w)),
            Err(e) => {
                let _ = d.root.remove_session(&id, Duration::from_secs(5));
                return Err(ApiError::Sys {
                    what: "the agent's stdin pipe",
                    source: e,
                });
            }
        }
    } else {
        (Stdio::null(), None)
    };
    let (live, done_tx) = Live::new(NewLive {
        id: id.clone(),
        owner: peer.uid,
        agent_uid,
        plan,
        cg,
        sandbox_state: sandbox_state.clone(),
        info,
        last_call: 0,
        stdin: stdin_writer,
    });
    let child = match start_container(&d, &live, &run, &logs, agent_stdin).await {
        Ok(c) => c,
        Err(e) => {
            fail(&d, &live, &e.to_string()).await;
            let _ = done_tx.send(true);
            return Err(e);
        }
    };
    let (mut child, mut sync) = child;
    // The runtime says ready once the container is built and recorded (or closes the
    // socket: it failed, and its stderr says why).
    let ready = tokio::time::timeout(START_TIMEOUT, sync.read_u8()).await;
    // How the start failed, when it did: `timed out`, else the runtime's exit status (or,
    // when that cannot be read, what went wrong reading the ready byte or the record).
    let record = match ready {
        Ok(Ok(launch::READY)) => read_record(&sandbox_state).map_err(|e| (false, e.to_string())),
        Ok(_) => Err((false, "the runtime exited".to_owned())),
        Err(_) => Err((true, "timed out".to_owned())),
    };
    let record = match record {
        Ok(r) => r,
        Err((timed_out, what)) => {
            let _ = child.start_kill();
            let status = child.wait().await;
            let err = d.cfg.state_dir.join("logs").join(format!("{id}.err"));
            let why = std::fs::read_to_string(&err).unwrap_or_default();
            let how = match status {
                Ok(s) if !timed_out => s.to_string(),
                _ => what,
            };
            let e = ApiError::ContainerStart {
                how,
                stderr: why.trim().to_owned(),
            };
            fail(&d, &live, &e.to_string()).await;
            let _ = done_tx.send(true);
            return Err(e);
        }
    };
    // Egress before the shim socket and GO: the agent's first connection finds the
    // proxy. Fail closed: a network session without its proxy does not start.
    if let Err(e) = super::net::start(&d, &live, record.init_pid) {
        let _ = child.start_kill();
        let _ = live.cg.cgroup().kill();
        let _ = child.wait().await;
        fail(&d, &live, &e.to_string()).await;
        let _ = done_tx.send(true);
        return Err(e);
    }
    // The container's /run is mounted now and the agent not started: bind its shim socket.
    if let Err(e) = super::shim::listen(&d, &live, record.init_pid) {
        // Calls from inside then run in the agent's leaf; said in the session row.
        live.update(&d, |i| i.error = Some(format!("no shim socket: {e}")))?;
    }
    // Exec capture: the spawner holds the agent's execs until this daemon places them, so
    // it must be connected before GO. Fail closed.
    if live.plan.session.capture == agentd_policy::CaptureMode::Exec
        && let Err(e) = super::capture::start(&d, &live)
    {
        let _ = child.start_kill();
        let _ = live.cg.cgroup().kill();
        let _ = child.wait().await;
        fail(&d, &live, &e.to_string()).await;
        let _ = done_tx.send(true);
        return Err(e);
    }
    // Before the agent starts: its leaf is the session's latency work.
    d.sched.session_started(
        &live.id,
        live.cg.agent().path(),
        super::mempool::priority(&live),
    );
    if let Err(source) = sync.write_all(&[launch::GO]).await {
        let _ = child.start_kill();
        let _ = child.wait().await;
        let e = ApiError::ContainerGone { source };
        fail(&d, &live, &e.to_string()).await;
        let _ = done_tx.send(true);
        return Err(e);
    }
    live.update(&d, |i| i.state = SessionState::Running)?;
    super::approvals::audit_logged(
        &d,
        &id,
        "session-start",
        serde_json::json!({"owner": peer.uid, "agent_uid": agent_uid, "argv": req.argv,
            "workspace": workspace}),
    );
    d.live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, live.clone());
    super::mempool::session_started(&d, &live);
    tokio::spawn(monitor(d.clone(), live.clone(), child, done_tx));
    Ok(Json(live.info()))
}

/// Starts the runtime for `run` (its stdio: `stdin`, the session's log files) and hands
/// back the daemon's end of the start handshake.
async fn start_container(
    d: &Daemon,
    live: &Live,
    run: &RunRequest,
    logs: &Path,
    stdin: Stdio,
) -> Result<(tokio::process::Child, tokio::net::UnixStream), ApiError> {
    let open = |ext: &str| {
        let p = logs.join(format!("{}.{ext}", live.id));
        std::fs::File::create(&p).map_err(|source| ApiError::Io {
            what: "create",
            path: p,
            source,
        })
    };
    let (out, err) = (open("out")?, open("err")?);
    let ierr = |source| ApiError::Sys {
        what: "the start handshake socket",
        source,
    };
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(ierr)?;
    let cmd = Sandbox::new(&d.cfg.sandbox_bin)
        .run(run, Some(theirs.into()))
        .map_err(|source| ApiError::Launch { source })?;
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.envs_remove_systemd()
        .stdin(stdin)
        .stdout(out)
        .stderr(err)
        // The runtime outlives the daemon (restart, crash): the next daemon re-adopts the
        // session through the init's pidfd (see `adopt`).
        .kill_on_drop(false);
    let child = cmd.spawn().map_err(|source| ApiError::Io {
        what: "cannot start",
        path: d.cfg.sandbox_bin.clone(),
        source,
    })?;
    // Our copy of the runtime's handshake end closes with the command: EOF then means the
    // runtime is gone.
    drop(cmd);
    ours.set_nonblocking(true).map_err(ierr)?;
    let sync = tokio::net::UnixStream::from_std(ours).map_err(ierr)?;
    Ok((child, sync))
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
    let keep = super::undo::Retention::of(live.plan.session.undo.as_ref());
    let _ =
        tokio::task::spawn_blocking(move || super::undo::session_ended(&sd, &id, &ws, keep)).await;
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
    super::mempool::session_ended(d, &live.id);
    d.sched.session_ended(&live.id);
    super::approvals::session_ended(d, &live.id, live.info().state.as_str());
    super::net::stop(live);
    remove_cgroups(d, &live.id).await;
    let (sd, id, ws) = (
        d.cfg.state_dir.clone(),
        live.id.clone(),
        live.info().workspace,
    );
    let keep = super::undo::Retention::of(live.plan.session.undo.as_ref());
    let _ =
        tokio::task::spawn_blocking(move || super::undo::session_ended(&sd, &id, &ws, keep)).await;
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
        .ok_or_else(|| ApiError::NoSession { id: id.to_owned() })?;
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
    live.cg.cgroup().kill().map_err(|source| ApiError::Cgroup {
        what: format!("killing session {}", live.id),
        source,
    })
}

/// `POST /v1/sessions/{id}/kill`: kills the session and waits (up to 30 s) for its end.
pub async fn kill(
    AxState(d): AxState<State>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<SessionInfo>, ApiError> {
    let s = visible(&d, &peer, &id)?;
    let Some(live) = d.live(&id) else {
        return Err(ApiError::NotRunning {
            id,
            state: s.state.as_str(),
        });
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
            Err(ApiError::OtherUid {
                caller: 1000,
                asked: 1001
            })
        ));
        assert_eq!(agent_uid(&peer(1000), ws, 1000, None).unwrap(), 1000);
        assert!(matches!(
            agent_uid(&peer(1000), ws, 1001, None),
            Err(ApiError::WorkspaceNotOwned { owner: 1001, .. })
        ));
    }
}
