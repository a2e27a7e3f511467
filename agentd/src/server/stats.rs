//! Live usage (`GET /v1/stats`, `GET /v1/sessions/{id}/stats`): memory, CPU, pids and IO of
//! running sessions, their agent leaf and each running call, read from cgroupfs (cgctl's
//! statistics) at the moment of the request.

use axum::Json;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Path as UrlPath, State as AxState};

use super::sessions::{Live, visible};
use super::{ApiError, Peer, State};
use crate::api::{CallStats, SessionStats, Usage};

/// The usage figures of one cgroup.
pub fn usage(cg: &cgctl::Cgroup) -> Result<Usage, cgctl::Error> {
    let s = cg.stats()?;
    Ok(Usage {
        cgroup: cg.path().display().to_string(),
        memory_current: s.memory.as_ref().map(|m| m.current),
        memory_peak: s.memory.as_ref().and_then(|m| m.peak),
        cpu_usage_usec: s.cpu.usage_usec,
        cpu_user_usec: s.cpu.user_usec,
        cpu_system_usec: s.cpu.system_usec,
        pids_current: s.pids.as_ref().map(|p| p.current),
        io_read_bytes: s.io.as_ref().map(|i| i.rbytes),
        io_write_bytes: s.io.as_ref().map(|i| i.wbytes),
        oom_kills: s.memory.as_ref().map_or(0, |m| m.events.oom_kill),
    })
}

fn session_stats(d: &super::Daemon, live: &Live) -> Result<SessionStats, ApiError> {
    let bad = |source: cgctl::Error| ApiError::Cgroup {
        what: format!("session {}", live.id),
        source,
    };
    let mut calls = Vec::new();
    // A call may end between the listing and the read: skip it, it is no longer running.
    for n in live.cg.call_numbers().map_err(bad)? {
        let Ok(call) = live.cg.call(n) else { continue };
        let Ok(u) = usage(call.cgroup()) else {
            continue;
        };
        let argv = d
            .journal(|j| j.calls(&live.id))
            .ok()
            .and_then(|cs| cs.into_iter().find(|c| c.n == n))
            .map(|c| c.argv)
            .unwrap_or_default();
        calls.push(CallStats { n, argv, usage: u });
    }
    Ok(SessionStats {
        id: live.id.clone(),
        owner_uid: live.owner,
        usage: usage(live.cg.cgroup()).map_err(bad)?,
        agent: usage(live.cg.agent()).map_err(bad)?,
        calls,
    })
}

/// `GET /v1/sessions/{id}/stats`.
pub async fn one(
    AxState(d): AxState<State>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<SessionStats>, ApiError> {
    let s = visible(&d, &peer, &id)?;
    let live = d.live(&id).ok_or_else(|| ApiError::NotRunning {
        id: id.clone(),
        state: s.state.as_str(),
    })?;
    Ok(Json(session_stats(&d, &live)?))
}

/// `GET /v1/stats`: every running session the caller may see (root: all).
pub async fn all(
    AxState(d): AxState<State>,
    ConnectInfo(peer): ConnectInfo<Peer>,
) -> Result<Json<Vec<SessionStats>>, ApiError> {
    let mut lives: Vec<_> = d
        .live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .filter(|l| peer.is_root() || l.owner == peer.uid)
        .cloned()
        .collect();
    lives.sort_by(|a, b| a.id.cmp(&b.id));
    let mut out = Vec::new();
    for l in lives {
        // A session that ends meanwhile has no cgroup to read: not running any more.
        if let Ok(s) = session_stats(&d, &l) {
            out.push(s);
        }
    }
    Ok(Json(out))
}
