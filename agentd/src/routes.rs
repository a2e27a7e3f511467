//! The API's routes, one table: the daemon's router registers exactly [`DAEMON`] (a host
//! test checks every path answers exactly its methods), the session socket's router exactly
//! [`SHIM`]; the clients (agentctl, the shim, the benchmarks) build their paths with
//! [`Route::at`]; the API conformance test (tests/tests/api.rs) compares the table with
//! `docs/api.yaml`. A new route is one entry here, one `.route` line, one document entry.

use crate::api::PREFIX;

/// One route: its path below [`PREFIX`] (axum's `{param}` syntax, as in the document) and
/// its methods (lowercase, as in the document).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub path: &'static str,
    pub methods: &'static [&'static str],
}

impl Route {
    /// The full path as the router registers it (`/v1/sessions/{id}`).
    pub fn template(&self) -> String {
        format!("{PREFIX}{}", self.path)
    }

    /// The full path with its `{…}` parameters filled in order
    /// (`SESSION.at(&["abc"])` = `/v1/sessions/abc`).
    pub fn at(&self, params: &[&str]) -> String {
        let mut out = String::from(PREFIX);
        let mut rest = self.path;
        let mut params = params.iter();
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let close = rest[open..].find('}').map_or(rest.len(), |c| open + c + 1);
            out.push_str(params.next().copied().unwrap_or_default());
            rest = &rest[close..];
        }
        out.push_str(rest);
        out
    }
}

pub const HEALTH: Route = Route {
    path: "/health",
    methods: &["get"],
};
pub const SESSIONS: Route = Route {
    path: "/sessions",
    methods: &["get", "post"],
};
pub const SESSION: Route = Route {
    path: "/sessions/{id}",
    methods: &["get", "delete"],
};
pub const SESSION_KILL: Route = Route {
    path: "/sessions/{id}/kill",
    methods: &["post"],
};
pub const SESSION_WAIT: Route = Route {
    path: "/sessions/{id}/wait",
    methods: &["post"],
};
pub const SESSION_LOGS: Route = Route {
    path: "/sessions/{id}/logs",
    methods: &["get"],
};
pub const SESSION_STDIN: Route = Route {
    path: "/sessions/{id}/stdin",
    methods: &["post"],
};
pub const SESSION_STATS: Route = Route {
    path: "/sessions/{id}/stats",
    methods: &["get"],
};
pub const SESSION_NET: Route = Route {
    path: "/sessions/{id}/net",
    methods: &["get"],
};
pub const STATS: Route = Route {
    path: "/stats",
    methods: &["get"],
};
pub const POOL: Route = Route {
    path: "/pool",
    methods: &["get"],
};
pub const CALLS: Route = Route {
    path: "/sessions/{id}/calls",
    methods: &["get", "post"],
};

pub const CALL_KILL: Route = Route {
    path: "/sessions/{id}/calls/{n}/kill",
    methods: &["post"],
};

pub const CHECKPOINTS: Route = Route {
    path: "/sessions/{id}/checkpoints",
    methods: &["get", "post"],
};
pub const DIFF: Route = Route {
    path: "/sessions/{id}/diff",
    methods: &["get"],
};
pub const UNDO: Route = Route {
    path: "/sessions/{id}/undo",
    methods: &["post"],
};
pub const COMMIT: Route = Route {
    path: "/sessions/{id}/commit",
    methods: &["post"],
};
pub const DISCARD: Route = Route {
    path: "/sessions/{id}/discard",
    methods: &["post"],
};

pub const APPROVALS: Route = Route {
    path: "/approvals",
    methods: &["get"],
};
pub const APPROVE: Route = Route {
    path: "/approvals/{aid}/approve",
    methods: &["post"],
};
pub const DENY: Route = Route {
    path: "/approvals/{aid}/deny",
    methods: &["post"],
};
pub const GRANTS: Route = Route {
    path: "/sessions/{id}/grants",
    methods: &["get"],
};
pub const GRANT: Route = Route {
    path: "/sessions/{id}/grants/{g}",
    methods: &["delete"],
};
pub const AUDIT: Route = Route {
    path: "/sessions/{id}/audit",
    methods: &["get"],
};

/// Every route of the daemon's socket.
pub const DAEMON: &[Route] = &[
    HEALTH,
    SESSIONS,
    SESSION,
    SESSION_KILL,
    SESSION_WAIT,
    SESSION_LOGS,
    SESSION_STDIN,
    SESSION_STATS,
    SESSION_NET,
    STATS,
    POOL,
    CALLS,
    CALL_KILL,
    CHECKPOINTS,
    DIFF,
    UNDO,
    COMMIT,
    DISCARD,
    APPROVALS,
    APPROVE,
    DENY,
    GRANTS,
    GRANT,
    AUDIT,
];

/// The shim asks for a call cgroup (`api::ShimCall` → `api::ShimAnswer`).
pub const SHIM_CALLS: Route = Route {
    path: "/shim/calls",
    methods: &["post"],
};
/// The shim reports its call's exit status (`api::ShimExit`).
pub const SHIM_EXIT: Route = Route {
    path: "/shim/calls/{n}/exit",
    methods: &["post"],
};

/// A request from inside (`agentd-cap request`): blocks until it is answered
/// (`approvals::CapRequest` → `approvals::CapAnswer`). The session socket has no route
/// that answers a request.
pub const SHIM_REQUESTS: Route = Route {
    path: "/shim/requests",
    methods: &["post"],
};

/// Every route of a session's own socket (inside its container).
pub const SHIM: &[Route] = &[SHIM_CALLS, SHIM_EXIT, SHIM_REQUESTS];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_fill_their_parameters_in_order() {
        assert_eq!(SESSION.at(&["abc"]), "/v1/sessions/abc");
        assert_eq!(CALLS.at(&["x"]), "/v1/sessions/x/calls");
        assert_eq!(SHIM_EXIT.at(&["7"]), "/v1/shim/calls/7/exit");
        assert_eq!(HEALTH.at(&[]), "/v1/health");
        assert_eq!(SESSION.template(), "/v1/sessions/{id}");
    }

    #[test]
    fn no_route_is_listed_twice() {
        let mut all: Vec<&str> = DAEMON.iter().chain(SHIM).map(|r| r.path).collect();
        all.sort_unstable();
        let n = all.len();
        all.dedup();
        assert_eq!(all.len(), n);
    }
}
