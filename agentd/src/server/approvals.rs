//! The approval queue and the daemon's side of capabilities (docs/capabilities.md).
//!
//! [`Broker`] holds each session's capability table (`crate::caps::Table`, loaded from the
//! journal on first use) and the requests waiting for a person. An enforcement point that
//! meets an `ask` rule calls [`gate`]: a grant from an earlier approval answers at once;
//! otherwise a request is filed (journal + audit), the caller waits on a oneshot channel
//! for the answer, and an unanswered request is denied at the policy's `approvals.timeout`.
//! Answers come only through the daemon's API socket ([`approve`], [`deny`]) from the
//! session's owner or root, from a process outside every session's cgroup; the session's
//! own socket serves [`shim_request`] (a request from inside) and nothing that answers.
//!
//! Every request, answer, grant, revocation, denial, call end and session start/stop is
//! appended to the session's hash-chained audit trail ([`audit`]); an answer's record is on
//! disk before the parked operation is released.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentd_policy::capability::{Kind, Request};
use agentd_policy::{Dest, NetEffect};
use axum::Json;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Path as UrlPath, Query, State as AxState};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use super::{ApiError, Daemon, Peer, State};
use crate::caps::audit::{Record, Verified, verify};
use crate::caps::{ApprovalInfo, ApprovalState, Grant, NewGrant, Scope, Table, now_ms};

/// What a waiting request is told.
#[derive(Debug, Clone)]
struct Answer {
    approved: bool,
    grant: Option<u64>,
    why: String,
}

#[derive(Debug)]
struct Pending {
    info: ApprovalInfo,
    owner: u32,
    tx: oneshot::Sender<Answer>,
}

/// Capability tables and pending requests of every session (the daemon's `caps`).
#[derive(Debug)]
pub struct Broker {
    tables: Mutex<HashMap<String, Table>>,
    pending: Mutex<HashMap<u64, Pending>>,
    /// Bumped whenever a request is filed or answered (long-poll listeners wait on it).
    version: watch::Sender<u64>,
}

impl Default for Broker {
    fn default() -> Broker {
        Broker {
            tables: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            version: watch::channel(0).0,
        }
    }
}

impl Broker {
    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }
}

/// Runs `f` on session `id`'s table (loaded from the journal on first use).
fn with_table<T>(d: &Daemon, id: &str, f: impl FnOnce(&mut Table) -> T) -> Result<T, ApiError> {
    let mut tables = d.caps.tables.lock().unwrap_or_else(|p| p.into_inner());
    if !tables.contains_key(id) {
        let rows = d.journal(|j| j.grants(id))?;
        tables.insert(id.to_string(), Table::from_rows(rows));
    }
    let t = tables
        .get_mut(id)
        .ok_or_else(|| ApiError::NoSession { id: id.to_string() })?;
    Ok(f(t))
}

/// Appends an audit record for session `id` (durable when this returns).
pub fn audit(
    d: &Daemon,
    id: &str,
    kind: &str,
    body: serde_json::Value,
) -> Result<Record, ApiError> {
    let text = body.to_string();
    d.journal(|j| j.append_audit(id, now_ms(), kind, text))
}

/// [`audit`] where a failure can only be logged (the event already happened).
pub fn audit_logged(d: &Daemon, id: &str, kind: &str, body: serde_json::Value) {
    if let Err(e) = audit(d, id, kind, body) {
        super::log::error(&format!("audit {kind} of session {id}: {e}"));
    }
}

/// A call ended: its `call`-scoped grants end with it.
pub fn call_ended(d: &Daemon, info: &crate::api::CallInfo) {
    let id = &info.session;
    if let Ok(revoked) = with_table(d, id, |t| {
        let ids = t.end_call(info.n);
        ids.iter()
            .filter_map(|g| t.get(*g).cloned())
            .collect::<Vec<Grant>>()
    }) {
        for g in revoked {
            let _ = d.journal(|j| j.put_grant(&g));
        }
    }
    audit_logged(
        d,
        id,
        "call",
        serde_json::json!({"n": info.n, "argv": info.argv, "state": info.state.as_str(),
            "exit_code": info.exit_code}),
    );
}

/// A session ended: its pending requests are cancelled (denied).
pub fn session_ended(d: &Daemon, id: &str, state: &str) {
    let mine: Vec<u64> = d
        .caps
        .pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|(_, p)| p.info.session == id)
        .map(|(k, _)| *k)
        .collect();
    for a in mine {
        finish(
            d,
            a,
            ApprovalState::Cancelled,
            None,
            None,
            "the session ended".into(),
        );
    }
    audit_logged(d, id, "session-end", serde_json::json!({"state": state}));
    d.caps
        .tables
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(id);
}

/// What an enforcement point asks.
#[derive(Debug, Clone)]
pub struct GateRequest {
    pub session: String,
    pub owner: u32,
    pub call: Option<u64>,
    pub request: Request,
    /// The policy rule that put it under ask.
    pub rule: String,
    pub reason: String,
    /// `egress` or `agentd-cap`.
    pub via: &'static str,
    pub timeout_s: u64,
}

/// The outcome: `Ok(why)` proceeds (the grant or approval that allowed it), `Err(why)` is
/// refused (denied, expired or cancelled, naming the approval).
pub type GateResult = Result<String, String>;

/// Decides an `ask`: a live grant answers at once (a `once` grant is used up); otherwise a
/// request is filed and this waits for its answer or its deadline.
pub async fn gate(d: &Arc<Daemon>, g: GateRequest) -> GateResult {
    let now = now_ms();
    let hit = with_table(d, &g.session, |t| {
        let dec = t.decide(g.call, &g.request, now)?;
        let grant = t.get(dec.grant).cloned();
        Some((dec, grant))
    })
    .map_err(|e| format!("agentd: capability table: {e}"))?;
    if let Some((dec, grant)) = hit {
        if let Some(grant) = &grant {
            let _ = d.journal(|j| j.put_grant(grant));
        }
        let body = serde_json::json!({"resource": g.request.to_string(), "call": g.call,
            "grant": dec.grant, "effect": dec.effect});
        match dec.effect {
            crate::caps::Effect::Allow => {
                audit(d, &g.session, "use", body).map_err(|e| e.to_string())?;
                return Ok(format!("allowed by grant {}", dec.grant));
            }
            crate::caps::Effect::Deny => {
                audit_logged(d, &g.session, "denial", body);
                return Err(format!(
                    "agentd policy: {} denied by grant {}",
                    g.request, dec.grant
                ));
            }
            crate::caps::Effect::Ask => {}
        }
    }
    let mut info = ApprovalInfo::pending(
        &g.session,
        g.call,
        &g.request.to_string(),
        &g.reason,
        g.via,
        &g.rule,
        now,
        g.timeout_s * 1000,
    );
    info.id = d
        .journal(|j| j.new_approval(&info))
        .map_err(|e| format!("agentd: filing the request: {e}"))?;
    let id = info.id;
    audit(
        d,
        &g.session,
        "request",
        serde_json::to_value(&info).unwrap_or_default(),
    )
    .map_err(|e| e.to_string())?;
    let (tx, rx) = oneshot::channel();
    d.caps
        .pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(
            id,
            Pending {
                info,
                owner: g.owner,
                tx,
            },
        );
    d.caps.bump();
    super::log::info(&format!(
        "session {}: approval {id} pending: {} ({})",
        g.session, g.request, g.rule
    ));
    // A requester that goes away (its connection dropped) cancels its request.
    let _guard = Cancel { d: d.clone(), id };
    let answer = match tokio::time::timeout(Duration::from_secs(g.timeout_s), rx).await {
        Ok(Ok(a)) => a,
        Ok(Err(_)) => Answer {
            approved: false,
            grant: None,
            why: "the daemon dropped the request".into(),
        },
        Err(_) => {
            let why = format!("not answered within {}s (approvals.timeout)", g.timeout_s);
            finish(d, id, ApprovalState::Expired, None, None, why.clone());
            Answer {
                approved: false,
                grant: None,
                why,
            }
        }
    };
    if answer.approved {
        Ok(format!(
            "approved (approval {id}{})",
            answer
                .grant
                .map_or(String::new(), |g| format!(", grant {g}"))
        ))
    } else {
        Err(format!(
            "agentd policy: {} denied by approval {id}: {}",
            g.request, answer.why
        ))
    }
}

/// Cancels a still-pending request when its waiter is dropped.
struct Cancel {
    d: Arc<Daemon>,
    id: u64,
}

impl Drop for Cancel {
    fn drop(&mut self) {
        finish(
            &self.d,
            self.id,
            ApprovalState::Cancelled,
            None,
            None,
            "the requester went away".into(),
        );
    }
}

/// Ends pending request `id` (if still pending): journal, audit (durable), then the
/// waiter is released. Returns the final row.
fn finish(
    d: &Daemon,
    id: u64,
    state: ApprovalState,
    by: Option<u32>,
    grant_scope: Option<Scope>,
    why: String,
) -> Option<ApprovalInfo> {
    let p = d
        .caps
        .pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id)?;
    let mut info = p.info;
    let approved = state == ApprovalState::Approved;
    if let (true, Some(scope)) = (approved, grant_scope) {
        let origin = format!("approval {id} by uid {}", by.unwrap_or(0));
        let made = match Request::parse(&info.resource) {
            Ok(req) => with_table(d, &info.session, |t| {
                t.add(
                    &info.session,
                    NewGrant::approval(&req, info.call, scope, origin),
                    now_ms(),
                )
                .ok()
            })
            .ok()
            .flatten(),
            Err(_) => None,
        };
        if let Some(g) = &made {
            let _ = d.journal(|j| j.put_grant(g));
            audit_logged(
                d,
                &info.session,
                "grant",
                serde_json::to_value(g).unwrap_or_default(),
            );
            info.grant = Some(g.id);
        }
        info.scope = Some(scope);
    }
    info.state = state;
    info.answered_at_ms = Some(now_ms());
    info.answered_by = by;
    info.why = Some(why.clone());
    let _ = d.journal(|j| j.put_approval(&info));
    // The decision is on disk before the operation it authorizes is released.
    audit_logged(
        d,
        &info.session,
        "decision",
        serde_json::to_value(&info).unwrap_or_default(),
    );
    let _ = p.tx.send(Answer {
        approved,
        grant: info.grant,
        why,
    });
    d.caps.bump();
    Some(info)
}

/// `GET /v1/approvals`: the pending requests the caller may answer (its sessions'; root:
/// all). `?wait=SECS&after=VERSION`: long-poll until the queue's version passes `after`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    pub wait: Option<u64>,
    #[serde(default)]
    pub after: Option<u64>,
}

/// The pending requests and the queue's version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Queue {
    pub version: u64,
    pub requests: Vec<ApprovalInfo>,
}

pub async fn list(
    AxState(d): AxState<State>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Queue>, ApiError> {
    let mut rx = d.caps.version.subscribe();
    if let (Some(wait), Some(after)) = (q.wait, q.after) {
        let wait = Duration::from_secs(wait.min(300));
        let _ = tokio::time::timeout(wait, rx.wait_for(|v| *v > after)).await;
    }
    let version = *rx.borrow();
    let mut requests: Vec<ApprovalInfo> = d
        .caps
        .pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .filter(|p| peer.is_root() || p.owner == peer.uid)
        .map(|p| p.info.clone())
        .collect();
    requests.sort_by_key(|a| a.id);
    Ok(Json(Queue { version, requests }))
}

/// Body of approve and deny.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AnswerRequest {
    /// approve: `once` (default), `call` or `session`; deny with `session`: later requests
    /// for the same resource are denied at once (a deny grant).
    #[serde(default)]
    pub scope: Option<Scope>,
    /// deny: the reason given to the requester.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Only the session's owner or root, from outside every session (a process inside a
/// sandbox never answers, even when its uid is the owner's).
fn may_answer(d: &Daemon, peer: &Peer, id: u64) -> Result<(), ApiError> {
    let owner = {
        let p = d.caps.pending.lock().unwrap_or_else(|p| p.into_inner());
        match p.get(&id) {
            Some(p) => p.owner,
            None => {
                let row = d.journal(|j| j.approval(id))?;
                return Err(match row {
                    Some(a) => ApiError::NotPending {
                        id,
                        state: a.state.as_str(),
                    },
                    None => ApiError::NoApproval { id },
                });
            }
        }
    };
    peer.may_steer(&format!("approval {id}"), owner)?;
    let pid = peer.pid.ok_or(ApiError::UnnamedPeer)?;
    let root = cgctl::discover::as_proc_path(
        &d.cfg.cgroup_root,
        std::path::Path::new(cgctl::discover::UNIFIED_MOUNT),
    );
    let cg = cgctl::discover::cgroup_of(&pid.to_string()).unwrap_or_default();
    if cg == root || cg.starts_with(&format!("{root}/")) {
        return Err(ApiError::AnswerFromInside { pid, id });
    }
    Ok(())
}

/// `POST /v1/approvals/{aid}/approve`.
pub async fn approve(
    AxState(d): AxState<State>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    UrlPath(id): UrlPath<u64>,
    Json(req): Json<AnswerRequest>,
) -> Result<Json<ApprovalInfo>, ApiError> {
    may_answer(&d, &peer, id)?;
    let scope = req.scope.unwrap_or(Scope::Once);
    let why = format!("approved by uid {} (scope {scope})", peer.uid);
    finish(
        &d,
        id,
        ApprovalState::Approved,
        Some(peer.uid),
        Some(scope),
        why,
    )
    .map(Json)
    .ok_or(ApiError::NotPending {
        id,
        state: "answered",
    })
}

/// `POST /v1/approvals/{aid}/deny`.
pub async fn deny(
    AxState(d): AxState<State>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    UrlPath(id): UrlPath<u64>,
    Json(req): Json<AnswerRequest>,
) -> Result<Json<ApprovalInfo>, ApiError> {
    may_answer(&d, &peer, id)?;
    let why = match &req.reason {
        Some(r) => format!(
            "denied by uid {}: {}",
            peer.uid,
            r.chars().take(500).collect::<String>()
        ),
        None => format!("denied by uid {}", peer.uid),
    };
    // deny --scope session: remember it (a deny grant for the session).
    let pending = d
        .caps
        .pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&id)
        .map(|p| (p.info.session.clone(), p.info.resource.clone()));
    if let (Some(Scope::Session), Some((session, resource))) = (req.scope, pending) {
        let g = with_table(&d, &session, |t| {
            t.add(
                &session,
                NewGrant {
                    subject: crate::caps::Subject::Session,
                    resource,
                    effect: crate::caps::Effect::Deny,
                    scope: Scope::Session,
                    uses: None,
                    expires_at_ms: None,
                    origin: format!("approval {id} denied by uid {}", peer.uid),
                },
                now_ms(),
            )
            .ok()
        })?;
        if let Some(g) = g {
            d.journal(|j| j.put_grant(&g))?;
            audit(
                &d,
                &session,
                "grant",
                serde_json::to_value(&g).unwrap_or_default(),
            )?;
        }
    }
    finish(&d, id, ApprovalState::Denied, Some(peer.uid), None, why)
        .map(Json)
        .ok_or(ApiError::NotPending {
            id,
            state: "answered",
        })
}

/// `GET /v1/sessions/{id}/grants`.
pub async fn grants(
    AxState(d): AxState<State>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Vec<Grant>>, ApiError> {
    super::sessions::visible(&d, &peer, &id)?;
    Ok(Json(with_table(&d, &id, |t| t.list())?))
}

/// `DELETE /v1/sessions/{id}/grants/{g}`: revokes the grant and every grant delegated
/// from it; the next access asks (or is refused) again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Revoked {
    pub revoked: Vec<u64>,
}

pub async fn revoke(
    AxState(d): AxState<State>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    UrlPath((id, g)): UrlPath<(String, u64)>,
) -> Result<Json<Revoked>, ApiError> {
    super::sessions::visible(&d, &peer, &id)?;
    let (ids, rows) = with_table(&d, &id, |t| {
        t.revoke(&id, g).map(|ids| {
            let rows: Vec<Grant> = ids.iter().filter_map(|x| t.get(*x).cloned()).collect();
            (ids, rows)
        })
    })?
    .map_err(|e| ApiError::Caps { source: e })?;
    for r in &rows {
        d.journal(|j| j.put_grant(r))?;
    }
    audit(
        &d,
        &id,
        "revoke",
        serde_json::json!({"grants": ids, "by": peer.uid}),
    )?;
    Ok(Json(Revoked { revoked: ids }))
}

/// `GET /v1/sessions/{id}/audit`: the chain and its verification.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditAnswer {
    pub session: String,
    pub verified: Verified,
    pub records: Vec<Record>,
}

pub async fn audit_route(
    AxState(d): AxState<State>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<AuditAnswer>, ApiError> {
    super::sessions::visible(&d, &peer, &id)?;
    let (records, head) = d.journal(|j| Ok((j.audit(&id)?, j.audit_head(&id)?)))?;
    let verified = verify(&id, &records, head.as_ref().map(|(s, h)| (*s, h.as_str())));
    Ok(Json(AuditAnswer {
        session: id,
        verified,
        records,
    }))
}

/// `POST /v1/shim/requests` on a session's own socket: `agentd-cap request`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CapRequest {
    pub resource: String,
    #[serde(default)]
    pub reason: String,
}

/// The answer `agentd-cap` gets once the request is decided.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CapAnswer {
    pub approved: bool,
    pub why: String,
}

/// What policy says of a request from inside, before anyone is asked.
pub fn policy_says(
    plan: &agentd_policy::Plan,
    req: &Request,
    argv: Option<&[String]>,
) -> (NetEffect, String) {
    match req {
        Request::Net { host, port } => {
            let dest = match host.parse() {
                Ok(a) => Dest::Addr(a),
                Err(_) => Dest::Name(host),
            };
            let dec = plan.session.network.decide(dest, *port, argv);
            (dec.effect, dec.rule)
        }
        other => (
            NetEffect::Deny,
            format!(
                "no mechanism enforces `{}` capabilities in this build, so nothing can grant one \
                 (docs/capabilities.md)",
                match other.kind() {
                    Kind::Fs => "fs",
                    Kind::Exec => "exec",
                    Kind::Secret => "secret",
                    Kind::Net => "net",
                }
            ),
        ),
    }
}

pub(crate) async fn shim_request(
    d: Arc<Daemon>,
    live: Arc<super::sessions::Live>,
    call: Option<u64>,
    req: CapRequest,
) -> Result<Json<CapAnswer>, ApiError> {
    let r = Request::parse(&req.resource).map_err(|e| ApiError::Caps {
        source: crate::caps::CapsError::Resource(e),
    })?;
    let argv = match call {
        Some(n) => d
            .journal(|j| j.calls(&live.id))?
            .into_iter()
            .find(|c| c.n == n)
            .map(|c| c.argv),
        None => None,
    };
    let (effect, rule) = policy_says(&live.plan, &r, argv.as_deref());
    let answer = match effect {
        NetEffect::Allow => CapAnswer {
            approved: true,
            why: format!("already allowed: {rule}"),
        },
        NetEffect::Deny => {
            audit_logged(
                &d,
                &live.id,
                "denial",
                serde_json::json!({"resource": r.to_string(), "call": call, "why": rule}),
            );
            CapAnswer {
                approved: false,
                why: format!("denied by policy: {rule}"),
            }
        }
        NetEffect::Ask => {
            let g = GateRequest {
                session: live.id.clone(),
                owner: live.owner,
                call,
                request: r,
                rule,
                reason: req.reason,
                via: "agentd-cap",
                timeout_s: live.plan.approvals.timeout_s,
            };
            match gate(&d, g).await {
                Ok(why) => CapAnswer {
                    approved: true,
                    why,
                },
                Err(why) => CapAnswer {
                    approved: false,
                    why,
                },
            }
        }
    };
    Ok(Json(answer))
}

/// At daemon start: requests a previous daemon left pending were never answered; their
/// waiters are gone. Marked cancelled (denied).
pub fn cancel_stale(d: &Daemon) {
    let stale = d.journal(|j| j.pending_approvals()).unwrap_or_default();
    for mut a in stale {
        a.state = ApprovalState::Cancelled;
        a.why = Some("the daemon restarted before an answer".into());
        a.answered_at_ms = Some(now_ms());
        let _ = d.journal(|j| j.put_approval(&a));
        audit_logged(
            d,
            &a.session,
            "decision",
            serde_json::to_value(&a).unwrap_or_default(),
        );
    }
}
