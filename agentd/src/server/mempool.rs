//! The call path's side of the memory pool (`crate::mem`): a session joins the pool when it
//! starts (its agent leaf reserved and protected), each call waits for admission before its
//! cgroup exists and is created with `memory.high` = its admitted grant and `memory.max`
//! bounded by the pool's limit (loans move memory.high between the two), and its end returns
//! the memory and records what the pool did to it (a last-resort kill's reason) in the call's
//! report. `GET /v1/pool` shows the pool (grants, loans, queue, frozen calls, pressure).
//! Without `[resources.pool] enabled = true` in the host policy every function here is a
//! no-op and calls keep memory.max = their intent.

use std::sync::Arc;

use axum::Json;
use axum::extract::State as AxState;
use axum::extract::connect_info::ConnectInfo;
use serde::{Deserialize, Serialize};

use super::sessions::Live;
use super::{ApiError, Daemon, Peer, State};
use crate::api::CallInfo;
use crate::mem::{CallKey, MemPool, PoolSettings, PoolStatus, Priority};

/// The pool the host policy asks for, started under the daemon's root; `None` when off.
pub fn start(
    cfg: &super::Config,
) -> Result<Option<Arc<MemPool>>, Box<dyn std::error::Error + Send + Sync>> {
    let plan = super::sessions::resolve_policy(cfg.host_policy.as_deref(), None)
        .map_err(|e| e.to_string())?;
    let Some(p) = plan.pool else {
        return Ok(None);
    };
    let settings = PoolSettings {
        limit: p.limit,
        reserve: p.reserve,
        loan_step: p.loan_step,
        pressure_stall_ms: p.pressure_stall_ms.map(u64::from),
    };
    Ok(Some(MemPool::start(&cfg.cgroup_root, &settings)?))
}

/// The session's priority (`[resources] priority`), also its scheduler weight.
pub fn priority(live: &Live) -> Priority {
    match live.plan.session.priority.as_ref().map(|l| l.value) {
        Some(agentd_policy::Priority::High) => Priority::High,
        Some(agentd_policy::Priority::Low) => Priority::Low,
        _ => Priority::Normal,
    }
}

/// A session started (or was re-adopted): its agent joins the pool.
pub fn session_started(d: &Daemon, live: &Live) {
    if let Some(p) = &d.mem {
        p.add_session(&live.id, priority(live), live.cg.cgroup().clone());
    }
}

/// A session ended: its agent and any call left leave the pool.
pub fn session_ended(d: &Daemon, id: &str) {
    if let Some(p) = &d.mem {
        p.remove_session(id);
    }
}

/// A call's admission: hold it until the call has ended.
#[derive(Debug)]
pub struct Grant {
    pool: Arc<MemPool>,
    key: CallKey,
    /// memory.high the call was created with.
    pub high: u64,
    /// memory.max: the policy's allowed memory for the call, bounded by the pool's limit.
    pub max: u64,
}

/// Waits until the call's grant (its resolved memory) fits the pool, then rewrites `limits`:
/// memory.high = the admitted grant, memory.max = the policy's allowed memory bounded by
/// the pool's limit (what loans may reach). `None` without a pool (limits untouched).
pub async fn admit(
    d: &Daemon,
    live: &Live,
    n: u64,
    plan: &agentd_policy::CallPlan,
    limits: &mut cgctl::Limits,
) -> Option<Grant> {
    let pool = d.mem.clone()?;
    let key = CallKey {
        session: live.id.clone(),
        n,
    };
    let grant = plan.memory.value.0;
    let high = pool.admit(key.clone(), grant).await.unwrap_or(grant);
    let cfg_limit = pool.status().view.limit;
    let max = plan.memory.allowed.0.min(cfg_limit).max(high);
    limits.memory_high = Some(cgctl::Max::Limit(high));
    limits.memory_max = Some(cgctl::Max::Limit(max));
    Some(Grant {
        pool,
        key,
        high,
        max,
    })
}

/// The call's cgroup exists: the pool may lend to it, freeze or thaw it.
pub fn attach(g: &Option<Grant>, cg: &cgctl::Cgroup) {
    if let Some(g) = g {
        g.pool.attach(&g.key, cg.clone(), g.high);
    }
}

/// The call ended (or failed to start): its memory returns to the pool. What the pool did
/// goes into the call's `memory_pool` and a kill's reason into its error.
pub fn finish(g: Option<Grant>, info: &mut CallInfo) {
    let Some(g) = g else { return };
    let killed = g.pool.finish(&g.key);
    if let Some(r) = &killed {
        info.error = Some(match info.error.take() {
            Some(e) => format!("{e}; {r}"),
            None => r.clone(),
        });
    }
    info.memory_pool = Some(crate::api::PoolOutcome {
        grant: g.high,
        memory_max: g.max,
        killed,
    });
}

/// The answer of `GET /v1/pool`: `enabled: false` alone when the host policy has no pool.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolAnswer {
    pub enabled: bool,
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolStatus>,
}

/// `GET /v1/pool`: the memory pool (root only: it names every session's calls).
pub async fn status(
    AxState(d): AxState<State>,
    ConnectInfo(peer): ConnectInfo<Peer>,
) -> Result<Json<PoolAnswer>, ApiError> {
    if !peer.is_root() {
        return Err(ApiError::RootOnly {
            what: "the memory pool shows every session's calls",
        });
    }
    let pool = d.mem.as_ref().map(|p| p.status());
    Ok(Json(PoolAnswer {
        enabled: pool.is_some(),
        pool,
    }))
}
