//! [`ApiError`]: every way a request can fail, one variant per cause, each carrying the
//! ids, paths and values it is about (never a bare message), and the HTTP status it maps
//! to. The answer's body is always an [`ErrorBody`] whose text is the variant's Display.

use std::path::PathBuf;

use agentd_sandbox::layer::LayerError;
use agentd_sandbox::layer::commit::Conflict;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::api::ErrorBody;
use crate::journal::JournalError;

/// A request's error: a status and a reason, sent as [`ErrorBody`]. Never a panic.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    // 400: the request itself is wrong.
    #[error("the policy is refused:\n{diagnostics}")]
    PolicyRefused {
        /// The policy loader's diagnostics, rendered with file:line:column.
        diagnostics: String,
    },
    #[error("workspace {} must be an absolute path", path.display())]
    WorkspaceNotAbsolute { path: PathBuf },
    #[error("workspace {}: {source}", path.display())]
    Workspace {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("workspace {} is not a directory", path.display())]
    WorkspaceNotDir { path: PathBuf },
    #[error(
        "workspace {} contains {ch:?}, which the session's overlay mount cannot carry in its \
         options; rename the directory or start the session on a path without it",
        path.display()
    )]
    WorkspaceUnsafeName { path: PathBuf, ch: char },
    #[error(
        "workspace {} is owned by root, and the agent runs as the workspace's owner, never \
         root. Either run the agent as an unprivileged uid: `agentctl run --user UID …` \
         (as root; files that uid may not write stay read-only to the agent), or give the \
         repo to a user: `chown -R UID {}`",
        path.display(),
        path.display()
    )]
    WorkspaceOwnedByRoot { path: PathBuf },
    #[error(
        "user 0: the agent never runs as root on the host; name an unprivileged uid \
         (e.g. --user 1000)"
    )]
    RootAgent,
    #[error("{why}")]
    BadArgv { why: &'static str },
    #[error("{source}")]
    BadExec {
        #[source]
        source: agentd_sandbox::Error,
    },
    #[error("environment variable {name} is not allowed into the session by its policy")]
    EnvNotAllowed { name: String },
    #[error("AGENTD_INTENT: {source}")]
    Intent {
        #[source]
        source: agentd_policy::intent::IntentError,
    },
    #[error("{what} is not implemented yet")]
    NotImplemented { what: &'static str },
    #[error("{source}")]
    Caps {
        #[source]
        source: crate::caps::CapsError,
    },
    #[error("{field}: {why}")]
    BadQuery {
        field: &'static str,
        why: &'static str,
    },
    #[error("{what} body: {source}")]
    Body {
        what: &'static str,
        #[source]
        source: axum::Error,
    },

    // 403: the caller may not.
    #[error("only root may run an agent as another uid (uid {caller} asked for uid {asked})")]
    OtherUid { caller: u32, asked: u32 },
    #[error(
        "workspace {} belongs to uid {owner}, not to the caller (uid {caller})",
        path.display()
    )]
    WorkspaceNotOwned {
        path: PathBuf,
        owner: u32,
        caller: u32,
    },
    #[error("{what} belongs to uid {owner}; uid {caller} may only see and steer its own sessions")]
    NotOwner {
        what: String,
        owner: u32,
        caller: u32,
    },
    #[error("{what}: root only")]
    RootOnly { what: &'static str },
    #[error("the kernel did not name the calling process")]
    UnnamedPeer,
    #[error(
        "process {pid} is not in session {session} (cgroup {cgroup:?}): a session's socket acts \
         only for its own processes"
    )]
    NotInSession {
        pid: i32,
        session: String,
        cgroup: String,
    },
    #[error("process {pid} is not in call {n} of session {session}")]
    NotInCall { pid: i32, n: u64, session: String },
    #[error(
        "process {pid} runs inside a session: approval {id} can only be answered from outside \
         every sandbox"
    )]
    AnswerFromInside { pid: i32, id: u64 },

    // 404: no such thing.
    #[error("no session {id}")]
    NoSession { id: String },
    #[error("no approval request {id}")]
    NoApproval { id: u64 },
    #[error("session {session} has no checkpoint {id}")]
    NoCheckpoint { session: String, id: u64 },
    #[error("session {session} has no checkpoint before call {call} (no such call, or pruned)")]
    NoCheckpointBefore { session: String, call: u64 },

    // 409: not in this state.
    #[error("session {id} is not running (state {state})")]
    NotRunning { id: String, state: &'static str },
    #[error("session {id} is not running")]
    NotLive { id: String },
    #[error("approval {id} is not pending (it is {state})")]
    NotPending { id: u64, state: &'static str },
    #[error("session {id} is not running: its layer is its last checkpoint")]
    LayerNotLive { id: String },
    #[error("call {n} of session {id} is not running: {source}")]
    CallNotRunning {
        id: String,
        n: u64,
        #[source]
        source: cgctl::Error,
    },
    #[error("session {id} has no stdin to feed (not started with stdin, or already fed)")]
    NoStdin { id: String },
    #[error(
        "session {id} has {changes} uncommitted change(s): commit or discard them, or remove \
         with force (agentctl rm --force)"
    )]
    Uncommitted { id: String, changes: usize },
    #[error("commit refused, {} conflicting path(s) (nothing was written): {}",
        conflicts.len(), conflict_list(conflicts))]
    CommitConflicts { conflicts: Vec<Conflict> },
    #[error(
        "the policy requires mechanisms this host lacks (see `agentd doctor`):\n{}",
        unmet.join("\n")
    )]
    RequireUnmet {
        /// One line per unmet mechanism: its name, who required it, why it is missing.
        unmet: Vec<String>,
    },

    // 503: the host has no room for it now.
    #[error("{source}")]
    ContainerIds {
        #[source]
        source: super::ids::IdError,
    },

    // 410: existed once.
    #[error("checkpoint {id} of session {session} was pruned ({retention})")]
    Pruned {
        session: String,
        id: u64,
        /// The session's retention, as a phrase ("retention keeps the last 1000").
        retention: String,
    },

    // 500: the daemon or the host failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error("cannot read the host policy {}: {source}", path.display())]
    HostPolicy {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the sandbox record: {source}")]
    Record {
        #[source]
        source: agentd_sandbox::Error,
    },
    #[error("the sandbox request: {source}")]
    Launch {
        #[source]
        source: agentd_sandbox::Error,
    },
    #[error("call {n}: cgroup: {source}")]
    CallCgroup {
        n: u64,
        #[source]
        source: cgctl::Error,
    },
    #[error("exec capture: {source}")]
    Capture {
        #[source]
        source: agentd_sandbox::Error,
    },
    #[error(
        "the policy captures execs (session.capture = \"exec\", from {origin}) but this kernel's seccomp has no user notification (user_notif in /proc/sys/kernel/seccomp/actions_avail, Linux 5.0+; see `agentd doctor`)"
    )]
    CaptureUnavailable { origin: String },
    #[error("call {n}: moving pid {pid}: {source}")]
    MovePid {
        n: u64,
        pid: i32,
        #[source]
        source: cgctl::Error,
    },
    #[error("{what}: {source}")]
    Cgroup {
        what: String,
        #[source]
        source: cgctl::Error,
    },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("the session container did not start ({how}): {stderr}")]
    ContainerStart { how: String, stderr: String },
    #[error("the session container went away before its agent started: {source}")]
    ContainerGone {
        #[source]
        source: std::io::Error,
    },
    #[error("the network of session {session} could not be set up: {source}")]
    Egress {
        session: String,
        #[source]
        source: crate::egress::EgressError,
    },
    #[error("the session's store has no checkpoint")]
    NoCheckpointYet,
    #[error("checkpoint {id} vanished")]
    CheckpointVanished { id: u64 },
    #[error("the {what} thread failed")]
    Thread { what: &'static str },
    #[error("a blocking task: {source}")]
    Join {
        #[source]
        source: tokio::task::JoinError,
    },
}

fn conflict_list(c: &[Conflict]) -> String {
    let list: Vec<String> = c
        .iter()
        .map(|c| format!("{}: {}", c.path, c.reason))
        .collect();
    list.join("; ")
}

impl ApiError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            PolicyRefused { .. }
            | WorkspaceNotAbsolute { .. }
            | Workspace { .. }
            | WorkspaceNotDir { .. }
            | WorkspaceUnsafeName { .. }
            | WorkspaceOwnedByRoot { .. }
            | RootAgent
            | BadArgv { .. }
            | BadExec { .. }
            | EnvNotAllowed { .. }
            | Intent { .. }
            | NotImplemented { .. }
            | Caps { .. }
            | BadQuery { .. }
            | Body { .. } => StatusCode::BAD_REQUEST,
            OtherUid { .. }
            | WorkspaceNotOwned { .. }
            | NotOwner { .. }
            | RootOnly { .. }
            | UnnamedPeer
            | NotInSession { .. }
            | NotInCall { .. }
            | AnswerFromInside { .. } => StatusCode::FORBIDDEN,
            NoSession { .. }
            | NoApproval { .. }
            | NoCheckpoint { .. }
            | NoCheckpointBefore { .. } => StatusCode::NOT_FOUND,
            NotPending { .. }
            | NotRunning { .. }
            | NotLive { .. }
            | LayerNotLive { .. }
            | CallNotRunning { .. }
            | NoStdin { .. }
            | Uncommitted { .. }
            | CommitConflicts { .. }
            | RequireUnmet { .. }
            | CaptureUnavailable { .. } => StatusCode::CONFLICT,
            Pruned { .. } => StatusCode::GONE,
            Journal(_)
            | Layer(_)
            | HostPolicy { .. }
            | Record { .. }
            | Launch { .. }
            | CallCgroup { .. }
            | Capture { .. }
            | MovePid { .. }
            | Cgroup { .. }
            | Io { .. }
            | Sys { .. }
            | Json { .. }
            | ContainerStart { .. }
            | ContainerGone { .. }
            | Egress { .. }
            | NoCheckpointYet
            | CheckpointVanished { .. }
            | Thread { .. }
            | Join { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            ContainerIds { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status(),
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
    use super::*;

    #[test]
    fn each_cause_answers_with_its_status_and_names_its_values() {
        let cases = [
            (
                ApiError::NoSession { id: "ab12".into() },
                StatusCode::NOT_FOUND,
                "no session ab12",
            ),
            (
                ApiError::NotRunning {
                    id: "ab12".into(),
                    state: "exited",
                },
                StatusCode::CONFLICT,
                "session ab12 is not running (state exited)",
            ),
            (
                ApiError::EnvNotAllowed {
                    name: "AWS_SECRET".into(),
                },
                StatusCode::BAD_REQUEST,
                "environment variable AWS_SECRET is not allowed",
            ),
            (
                ApiError::NotOwner {
                    what: "session ab12".into(),
                    owner: 1000,
                    caller: 1001,
                },
                StatusCode::FORBIDDEN,
                "session ab12 belongs to uid 1000; uid 1001",
            ),
            (
                ApiError::Pruned {
                    session: "ab12".into(),
                    id: 3,
                    retention: "retention keeps the last 100".into(),
                },
                StatusCode::GONE,
                "checkpoint 3 of session ab12 was pruned",
            ),
            (
                ApiError::RequireUnmet {
                    unmet: vec!["sched_ext (required by repo policy): missing".into()],
                },
                StatusCode::CONFLICT,
                "lacks (see `agentd doctor`):\nsched_ext (required",
            ),
            (
                ApiError::CommitConflicts {
                    conflicts: vec![Conflict {
                        path: "src/a.rs".into(),
                        reason: "changed in the repo".into(),
                    }],
                },
                StatusCode::CONFLICT,
                "1 conflicting path(s) (nothing was written): src/a.rs: changed in the repo",
            ),
            (
                ApiError::Io {
                    what: "create",
                    path: "/var/lib/agentd/logs/x.out".into(),
                    source: std::io::Error::from_raw_os_error(libc::ENOSPC),
                },
                StatusCode::INTERNAL_SERVER_ERROR,
                "create /var/lib/agentd/logs/x.out: No space left on device",
            ),
        ];
        for (e, status, text) in cases {
            assert_eq!(e.status(), status, "{e}");
            assert!(e.to_string().contains(text), "{e:?} → {e}");
        }
    }
}
