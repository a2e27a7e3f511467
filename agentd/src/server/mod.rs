//! `agentd serve`: the daemon. axum on tokio over a Unix socket; the caller's identity is the
//! socket's peer credentials (SO_PEERCRED), never anything the client says. Root may do
//! anything; any other uid sees and steers only the sessions it created (403 otherwise).
//!
//! Submodules: [`sessions`] (create/list/kill/remove: policy → cgroups → container),
//! [`calls`] (tool calls from outside into `calls/<n>`).

pub mod adopt;
mod api_error;
pub mod apply;
pub mod approvals;
pub mod calls;
pub mod capture;
pub mod conn;
mod errors;
pub mod ids;
pub mod leaf;
pub mod log;
pub mod mempool;
pub mod net;
pub mod require;
pub mod retention;
pub mod sessions;
pub mod shim;
pub mod spawn;
pub mod stats;
pub mod stream;
pub mod systemd;
pub mod undo;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use tokio::net::UnixListener;

use crate::api::Health;
use crate::journal::{Journal, JournalError};
pub use api_error::ApiError;

/// Daemon configuration (`agentd serve` flags).
#[derive(Debug, Clone)]
pub struct Config {
    /// The API socket.
    pub socket: PathBuf,
    /// Mode of the socket file (0660 by default: root and the socket's group).
    pub socket_mode: u32,
    /// Journal, session logs and session state dirs live here.
    pub state_dir: PathBuf,
    /// The cgroup the daemon owns (created if missing).
    pub cgroup_root: PathBuf,
    /// Host policy (default /etc/agentd/policy.toml; missing = built-in host defaults).
    pub host_policy: Option<PathBuf>,
    /// The `agentd-sandbox` binary.
    pub sandbox_bin: PathBuf,
    /// The `agentd-shim` binary (the agents' $SHELL), a path visible inside containers.
    pub shim_bin: PathBuf,
    /// The host ids sessions' container roots map to, one each ([`ids`]).
    pub container_ids: ids::IdRange,
}

/// Errors of the daemon outside a request (startup).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cgroup root {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: cgctl::Error,
    },
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The container id range overlaps the host's ids, or is malformed.
    #[error(transparent)]
    ContainerIds(#[from] ids::IdError),
    /// The host policy's memory pool could not start.
    #[error("{0}")]
    MemPool(Box<dyn std::error::Error + Send + Sync>),
}

/// The caller, from SO_PEERCRED.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

/// uid used when the kernel would not tell us who is calling: owns nothing, may do nothing.
const UNKNOWN_UID: u32 = u32::MAX;

impl Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        Peer::of(stream.io())
    }
}

impl Peer {
    /// The connected process as the kernel names it (SO_PEERCRED); an unknown uid that owns
    /// nothing when the kernel would not say.
    pub fn of(stream: &tokio::net::UnixStream) -> Self {
        match stream.peer_cred() {
            Ok(c) => Peer {
                uid: c.uid(),
                gid: c.gid(),
                pid: c.pid(),
            },
            Err(_) => Peer {
                uid: UNKNOWN_UID,
                gid: UNKNOWN_UID,
                pid: None,
            },
        }
    }
}

impl Peer {
    /// Root may act on anything.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// 403 unless the caller is root or `owner`.
    pub fn may_steer(&self, what: &str, owner: u32) -> Result<(), ApiError> {
        if self.is_root() || self.uid == owner {
            Ok(())
        } else {
            Err(ApiError::NotOwner {
                what: what.to_owned(),
                owner,
                caller: self.uid,
            })
        }
    }
}

/// Shared daemon state.
#[derive(Debug)]
pub struct Daemon {
    pub cfg: Config,
    pub journal: Mutex<Journal>,
    pub root: cgctl::Root,
    /// Sessions whose container this daemon started and still runs.
    pub live: Mutex<HashMap<String, Arc<sessions::Live>>>,
    /// The host's memory pool (`[resources.pool]` of the host policy), if enabled.
    pub mem: Option<Arc<crate::mem::MemPool>>,
    /// agentd's sched_ext scheduler and the per-call CPU accounting (docs/scheduler.md).
    pub sched: crate::sched::Sched,
    /// Capability tables and the approval queue.
    pub caps: approvals::Broker,
    /// Container uids picked for sessions not yet in the journal ([`ids`]).
    pub ids_in_flight: Mutex<std::collections::BTreeSet<u32>>,
}

/// Handler state.
pub type State = Arc<Daemon>;

impl Daemon {
    /// Runs `f` on the journal. A poisoned lock is recovered: the connection itself is fine.
    ///
    /// SQLite blocks (fsync, a lock held by another handler), so on the daemon's
    /// multi-threaded runtime the wait and the write are `block_in_place`: this worker hands
    /// its other tasks to the rest and no request, shim or stream waits behind a journal
    /// write (issue 18). Elsewhere (a current-thread test runtime, a plain thread) it runs
    /// inline.
    pub fn journal<T>(
        &self,
        f: impl FnOnce(&Journal) -> Result<T, JournalError>,
    ) -> Result<T, ApiError> {
        let run = || {
            let j = self.journal.lock().unwrap_or_else(|p| p.into_inner());
            f(&j)
        };
        let multi = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        Ok(if multi {
            tokio::task::block_in_place(run)?
        } else {
            run()?
        })
    }

    /// The live session `id`, if this daemon runs it.
    pub fn live(&self, id: &str) -> Option<Arc<sessions::Live>> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }
}

async fn health(
    axum::extract::State(d): axum::extract::State<State>,
    ConnectInfo(peer): ConnectInfo<Peer>,
) -> Json<Health> {
    Json(Health {
        version: env!("CARGO_PKG_VERSION").to_string(),
        caller_uid: peer.uid,
        cgroup_root: d.cfg.cgroup_root.display().to_string(),
    })
}

/// The API routes (see [`crate::api`]).
pub fn router(state: State) -> Router {
    use crate::routes as r;
    // Exactly the table's routes and methods (host-tested: `routes_answer_exactly_their_methods`).
    Router::new()
        .route(&r::HEALTH.template(), get(health))
        .route(
            &r::SESSIONS.template(),
            get(sessions::list).post(sessions::create),
        )
        .route(
            &r::SESSION.template(),
            get(sessions::inspect).delete(sessions::remove),
        )
        .route(&r::SESSION_KILL.template(), post(sessions::kill))
        .route(&r::SESSION_WAIT.template(), post(sessions::wait))
        .route(&r::SESSION_LOGS.template(), get(sessions::logs))
        .route(&r::SESSION_STDIN.template(), post(stream::stdin))
        .route(&r::SESSION_STATS.template(), get(stats::one))
        .route(&r::SESSION_NET.template(), get(net::list))
        .route(&r::STATS.template(), get(stats::all))
        .route(&r::POOL.template(), get(mempool::status))
        .route(&r::CALLS.template(), get(calls::list).post(calls::create))
        .route(&r::CALL_KILL.template(), post(calls::kill))
        .merge(undo_routes())
        .merge(caps_routes())
        .with_state(state)
        .layer(axum::middleware::map_response(errors::json_errors))
}

/// The undo routes ([`undo`]).
fn undo_routes() -> Router<State> {
    use crate::routes as r;
    Router::new()
        .route(
            &r::CHECKPOINTS.template(),
            get(undo::list).post(undo::create),
        )
        .route(&r::DIFF.template(), get(undo::diff))
        .route(&r::UNDO.template(), post(undo::undo_route))
        .route(&r::COMMIT.template(), post(undo::commit_route))
        .route(&r::DISCARD.template(), post(undo::discard))
}

/// The approval queue and capability routes ([`approvals`]).
fn caps_routes() -> Router<State> {
    use crate::routes as r;
    Router::new()
        .route(&r::APPROVALS.template(), get(approvals::list))
        .route(&r::APPROVE.template(), post(approvals::approve))
        .route(&r::DENY.template(), post(approvals::deny))
        .route(&r::GRANTS.template(), get(approvals::grants))
        .route(
            &r::GRANT.template(),
            axum::routing::delete(approvals::revoke),
        )
        .route(&r::AUDIT.template(), get(approvals::audit_route))
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ServeError {
    let path = path.to_path_buf();
    move |source| ServeError::Io { what, path, source }
}

/// Sets up the state dir, journal and cgroup root; re-adopts the sessions a previous daemon
/// left running (see [`adopt`]) and sweeps every other session cgroup.
pub fn open(mut cfg: Config) -> Result<State, ServeError> {
    // Fail closed: without the shim, agents' shell commands would get no call cgroups.
    cfg.shim_bin = resolve_bin(&cfg.shim_bin).map_err(io_err("the shim binary", &cfg.shim_bin))?;
    // Fail closed: a container root sharing a uid with a user's subordinate ids (or a user)
    // would let that user into every session's state.
    cfg.container_ids.check_host()?;
    // 0711: the container's root (an unprivileged host uid) must traverse to its session's
    // state dir under `sessions/` to mount the overlay, but nobody may list them. Logs and
    // the journal are root's alone.
    for (dir, mode) in [
        (cfg.state_dir.clone(), 0o711),
        (cfg.state_dir.join("sessions"), 0o711),
        (cfg.state_dir.join("logs"), 0o700),
    ] {
        std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
            .map_err(io_err("chmod", &dir))?;
    }
    let db = cfg.state_dir.join("journal.db");
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Created 0600 before SQLite opens it; its -wal/-shm files copy this mode.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&db)
            .map_err(io_err("create", &db))?;
    }
    let journal = Journal::open(&db)?;
    // Before enabling controllers under our own cgroup (a systemd-delegated subtree).
    match leaf::move_self_if_needed(&cfg.cgroup_root) {
        Ok(Some(l)) => log::info(&format!("moved into its own leaf {}", l.display())),
        Ok(None) => {}
        Err(source) => {
            return Err(ServeError::Io {
                what: "moving the daemon into its own leaf cgroup under the parent of",
                path: cfg.cgroup_root.clone(),
                source,
            });
        }
    }
    let backend: Arc<dyn cgctl::fs::Backend> = Arc::new(cgctl::fs::Kernel);
    let cg_err = |source| ServeError::Cgroup {
        path: cfg.cgroup_root.clone(),
        source,
    };
    let root = cgctl::Root::create(&cfg.cgroup_root, backend).map_err(cg_err)?;
    // Fail closed: a host policy that asks for the pool gets it or no daemon.
    let mem = mempool::start(&cfg).map_err(ServeError::MemPool)?;
    let d = Arc::new(Daemon {
        cfg,
        journal: Mutex::new(journal),
        root,
        live: Mutex::new(HashMap::new()),
        mem,
        sched: crate::sched::Sched::start(),
        caps: approvals::Broker::default(),
        ids_in_flight: Mutex::default(),
    });
    approvals::cancel_stale(&d);
    let adopted = adopt::readopt(&d)?;
    undo::recover_all(&d, &adopted);
    d.root
        .sweep(
            |id| !adopted.iter().any(|a| a == id),
            Duration::from_secs(10),
        )
        .map_err(|source| ServeError::Cgroup {
            path: d.cfg.cgroup_root.clone(),
            source,
        })?;
    Ok(d)
}

/// The API listener: the one systemd passed (socket activation; its path and mode are the
/// unit's business), else a fresh bind (replacing a stale socket) with the configured mode.
/// Returns whether it was passed in.
pub fn bind(cfg: &Config) -> Result<(UnixListener, bool), ServeError> {
    if let Some(l) = systemd::listener() {
        let l = l
            .set_nonblocking(true)
            .and_then(|()| UnixListener::from_std(l))
            .map_err(io_err("use the socket systemd passed for", &cfg.socket))?;
        return Ok((l, true));
    }
    if let Some(dir) = cfg.socket.parent() {
        std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    }
    match std::fs::remove_file(&cfg.socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove stale socket", &cfg.socket)(e)),
    }
    let l = UnixListener::bind(&cfg.socket).map_err(io_err("bind", &cfg.socket))?;
    std::fs::set_permissions(
        &cfg.socket,
        std::fs::Permissions::from_mode(cfg.socket_mode),
    )
    .map_err(io_err("chmod", &cfg.socket))?;
    Ok((l, false))
}

/// Serves until SIGINT/SIGTERM. Sessions keep running (the next daemon re-adopts them);
/// requests still pending after a short grace period are dropped.
pub async fn serve(cfg: Config) -> Result<(), ServeError> {
    serve_until(cfg, shutdown_signal()).await
}

/// `given`, else `name` next to the running binary, else `name` (looked up on PATH).
pub fn sibling_bin(given: Option<PathBuf>, name: &str) -> PathBuf {
    if let Some(p) = given {
        return p;
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(name)));
    match sibling {
        Some(p) if p.exists() => p,
        _ => PathBuf::from(name),
    }
}

/// `bin` as an absolute path with its symlinks resolved (a bare name is looked up on PATH):
/// the sandbox binds it into containers by its host path.
pub fn resolve_bin(bin: &Path) -> std::io::Result<PathBuf> {
    if bin.components().count() > 1 || bin.is_absolute() {
        return bin.canonicalize();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "not found next to agentd or on PATH",
            )
        })?
        .canonicalize()
}

/// Serves until `stop` completes (see [`serve`]).
pub async fn serve_until(
    cfg: Config,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let state = open(cfg.clone())?;
    let (listener, activated) = bind(&cfg)?;
    let status = format!(
        "listening on {}{} (cgroup root {}, state {}, {} session(s) re-adopted)",
        cfg.socket.display(),
        if activated { " (socket-activated)" } else { "" },
        cfg.cgroup_root.display(),
        cfg.state_dir.display(),
        state.live.lock().map(|l| l.len()).unwrap_or(0)
    );
    log::info(&status);
    systemd::notify(&format!("READY=1\nSTATUS={status}"));
    tokio::spawn(stream::bound_logs_forever(state.clone()));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(conn::serve(
        listener,
        router(state),
        conn::API,
        async move {
            let _ = stop_rx.await;
        },
    ));
    tokio::select! {
        () = stop => {}
        r = &mut server => {
            if !activated {
                let _ = std::fs::remove_file(&cfg.socket);
            }
            return r.map_err(|e| io_err("serve", &cfg.socket)(std::io::Error::other(e)));
        }
    }
    systemd::notify("STOPPING=1");
    let _ = stop_tx.send(());
    // A socket systemd made stays: it keeps queueing connections for the next daemon.
    if !activated {
        let _ = std::fs::remove_file(&cfg.socket);
    }
    // Long requests (a session wait, a running call) would hold a graceful drain forever.
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers we can still serve; stop only when killed.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    log::info("shutting down");
}

#[cfg(test)]
mod tests;
