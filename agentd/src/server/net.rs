//! The daemon's side of egress (see `crate::egress`): per session with the network on, the
//! resolv.conf pointing at the stub (the sandbox plan binds it and sets the proxy
//! variables: `apply::sandbox_plan`), starting the session's listeners between the
//! runtime's READY and the agent's GO, the journal sink for audit records, the per-call
//! byte totals in the call row (`CallInfo::net`), and
//! `GET /v1/sessions/{id}/net` (the audited connections, grouped by `agentctl net`).

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::Json;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Path as UrlPath, State as AxState};

use super::sessions::{Live, visible};
use super::{ApiError, Daemon, Peer, State};
use crate::api::{CallInfo, CallNet};
use crate::egress::{self, ConnRecord, EgressConfig, SessionEgress};

/// Rows returned by the route at most.
const LIST_LIMIT: u32 = 100_000;

/// The resolv.conf file for session `id` (readable by the container's root uid).
pub fn resolv_conf(d: &Daemon, id: &str) -> Result<PathBuf, ApiError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = d.cfg.state_dir.join("egress");
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)))
        .map_err(|source| ApiError::Io {
            what: "the egress dir",
            path: dir.clone(),
            source,
        })?;
    let f = dir.join(format!("{id}.resolv.conf"));
    std::fs::write(&f, egress::RESOLV_CONF)
        .and_then(|()| std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)))
        .map_err(|source| ApiError::Io {
            what: "the session's resolv.conf",
            path: f.clone(),
            source,
        })?;
    Ok(f)
}

/// Starts the session's egress inside the netns of `init_pid` (network sessions only).
/// Fail closed: an error here fails the session start.
pub fn start(d: &Arc<Daemon>, live: &Arc<Live>, init_pid: i32) -> Result<(), ApiError> {
    let plan = live.plan.session.network.clone();
    if !plan.enabled {
        return Ok(());
    }
    let egress_err = |source| ApiError::Egress {
        session: live.id.clone(),
        source,
    };
    let cfg = EgressConfig::from_env().map_err(egress_err)?;
    let weak: Weak<Daemon> = Arc::downgrade(d);
    let session = live.id.clone();
    let argv_of: egress::ArgvOf = {
        let weak = weak.clone();
        let session = session.clone();
        Arc::new(move |n| {
            let d = weak.upgrade()?;
            let calls: Vec<CallInfo> = d.journal(|j| j.calls(&session)).ok()?;
            calls.into_iter().find(|c| c.n == n).map(|c| c.argv)
        })
    };
    // Audit rows go to a writer thread that commits them in batches: the proxy's tasks never
    // wait on SQLite. The channel is bounded: a full queue makes the proxy wait (never drops).
    let (tx, rx) = std::sync::mpsc::sync_channel::<ConnRecord>(4096);
    std::thread::Builder::new()
        .name(format!("egress-audit-{session}"))
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                while batch.len() < 512 {
                    match rx.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                let Some(d) = weak.upgrade() else { return };
                if let Err(e) = d.journal(|j| j.put_connections(&batch)) {
                    super::log::error(&format!("audit of {} connection(s): {e}", batch.len()));
                }
            }
        })
        .map_err(|_| ApiError::Thread {
            what: "egress audit writer",
        })?;
    let audit: egress::AuditSink = Arc::new(move |r: &ConnRecord| {
        if tx.send(r.clone()).is_err() {
            super::log::error(&format!(
                "audit writer gone; connection of session {} unrecorded",
                r.session
            ));
        }
    });
    let asker = asker(d, live);
    let eg = SessionEgress::start(
        &session,
        init_pid,
        plan,
        live.cg.calls().path().to_path_buf(),
        cfg,
        egress::Hooks {
            argv_of,
            audit,
            asker,
        },
    )
    .map_err(egress_err)?;
    *live.egress.lock().unwrap_or_else(|p| p.into_inner()) = Some(eg);
    Ok(())
}

/// The egress proxy's way to the approval queue: a connection under an `ask` rule becomes
/// a request for `net:HOST:PORT` from its call (`server::approvals::gate`).
fn asker(d: &Arc<Daemon>, live: &Arc<Live>) -> egress::Asker {
    let weak: Weak<Daemon> = Arc::downgrade(d);
    let (session, owner, timeout_s) = (live.id.clone(), live.owner, live.plan.approvals.timeout_s);
    Arc::new(move |a: egress::AskFor| {
        let weak = weak.clone();
        let session = session.clone();
        Box::pin(async move {
            let d = weak
                .upgrade()
                .ok_or_else(|| "agentd: the daemon is stopping".to_string())?;
            let text = format!("net:{}:{}", a.host, a.port);
            let request = agentd_policy::capability::Request::parse(&text)
                .map_err(|e| format!("agentd policy: {e}"))?;
            let g = super::approvals::GateRequest {
                session,
                owner,
                call: a.call,
                request,
                reason: format!("{} connection to {}:{}", a.via, a.host, a.port),
                rule: a.rule,
                via: "egress",
                timeout_s,
            };
            super::approvals::gate(&d, g).await
        })
    })
}

/// Stops the session's egress (its end).
pub fn stop(live: &Live) {
    if let Some(eg) = live.egress.lock().unwrap_or_else(|p| p.into_inner()).take() {
        eg.stop();
    }
}

/// Sets a finished call's `net` (connections, bytes each way) from the proxy's own
/// per-call totals, after the call's own last connections ended (bounded wait: 500 ms;
/// the agent's long-lived connections, e.g. to its model's API, never delay a call's
/// row). Sessions with the network off (or already gone) leave it unset.
pub async fn annotate_call(d: &Daemon, info: &mut CallInfo) {
    let live = d
        .live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&info.session)
        .cloned();
    let Some(live) = live else { return };
    let eg = live
        .egress
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let Some(eg) = eg else { return };
    for _ in 0..20 {
        if eg.call_active(info.n) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (bytes_up, bytes_down, connections) = eg.call_totals(info.n);
    info.net = Some(CallNet {
        connections,
        bytes_up,
        bytes_down,
    });
}

/// `GET /v1/sessions/{id}/net`: the session's audited connections, oldest first.
pub async fn list(
    AxState(d): AxState<State>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Vec<ConnRecord>>, ApiError> {
    visible(&d, &peer, &id)?;
    Ok(Json(d.journal(|j| j.connections(&id, LIST_LIMIT))?))
}
