//! Serving the daemon's Unix sockets with bounds a client cannot push past (issue 18). The
//! per-session shim socket is reachable by the agent, the API socket by every local user in
//! the socket's group: without bounds one of them can hold thousands of half-open
//! connections, drive the daemon to EMFILE and stop it serving everyone else.
//!
//! - At most [`Bounds::max_connections`] connections are open per socket: at the limit the
//!   daemon stops accepting, so further clients wait in (and then overflow) the kernel's
//!   listen backlog instead of costing the daemon descriptors and memory.
//! - A connection must send a request's headers within [`Bounds::header_timeout`] (hyper's
//!   header read timeout, which also closes idle keep-alive connections): a slowloris client
//!   loses its slot.
//! - A shim connection lives at most [`Bounds::lifetime`] (its requests are short).
//! - EMFILE/ENFILE on accept pauses accepting briefly instead of ending the server.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::UnixListener;
use tokio::sync::Semaphore;

use super::Peer;

/// Limits of one listening socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Connections open at once.
    pub max_connections: u32,
    /// Time to send a request's headers (and the longest idle keep-alive wait).
    pub header_timeout: Duration,
    /// Longest life of one connection (None: as long as it streams, e.g. `logs -f`).
    pub lifetime: Option<Duration>,
}

/// The API socket: long-lived streams (`logs -f`, `?stream=true`, approvals) are normal.
pub const API: Bounds = Bounds {
    max_connections: 1024,
    header_timeout: Duration::from_secs(10),
    lifetime: None,
};

/// A session's shim socket: one agent, short request/answer exchanges, except
/// `agentd-cap request`, which waits for a person up to the longest `approvals.timeout`
/// (1 h, policies' validation) — the connection's bound is that plus a minute.
pub const SHIM: Bounds = Bounds {
    max_connections: 64,
    header_timeout: Duration::from_secs(5),
    lifetime: Some(Duration::from_secs(3660)),
};

/// How long a shut-down server waits for its open connections to finish.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves `app` on `listener` within `bounds` until `shutdown` resolves; each request sees
/// its connection's [`Peer`] (SO_PEERCRED) as `ConnectInfo<Peer>`.
pub async fn serve(
    listener: UnixListener,
    app: Router,
    bounds: Bounds,
    shutdown: impl Future<Output = ()> + Send,
) {
    let slots = Arc::new(Semaphore::new(bounds.max_connections as usize));
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break, // closed: never happens, the semaphore is ours
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                        super::log::warn(&format!("accept: {e}: pausing 100 ms"));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    // ECONNABORTED and the like concern one client only.
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let svc = app
            .clone()
            .layer(axum::Extension(ConnectInfo(Peer::of(&stream))));
        tokio::spawn(async move {
            let _slot = slot;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(bounds.header_timeout)
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
            match bounds.lifetime {
                Some(t) => {
                    let _ = tokio::time::timeout(t, conn).await;
                }
                None => {
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    // Let answers in flight go out (bounded: a `logs -f` stream may never end by itself).
    let _ = tokio::time::timeout(DRAIN, slots.acquire_many(bounds.max_connections)).await;
}
