//! THE enforcement table: which policy keys this build actually enforces.
//!
//! Meaning of the table:
//! - Every key a policy file can contain is covered by exactly one entry (an entry covers its
//!   key and everything below it, e.g. `filesystem` covers `filesystem.read_only`). A test
//!   walks the JSON Schema and fails if a key has no entry.
//! - `Enforced { by }`: the key is accepted, resolved into the `Plan`, and `by` names the
//!   mechanism (crate) that applies it.
//! - `NotEnforced { lands_with, default }`: the key is parsed and validated (types, globs,
//!   contradictions), but any present value other than the inert default (`default`, also
//!   written in the message) is rejected with "not enforced by this build". Fail closed: a
//!   policy never silently loses a rule the user wrote. An empty list/table or the stated
//!   default is accepted because it asks for nothing.
//! - When a mechanism lands, its issue flips the entry to `Enforced` here and adds the value
//!   to the `Plan` (`plan.rs`); nothing else in the validator needs to change.

use serde::Serialize;

/// Whether a key is enforced by this build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Status {
    Enforced {
        /// The mechanism that applies it.
        by: &'static str,
    },
    NotEnforced {
        /// The mechanism whose arrival will enforce it.
        lands_with: &'static str,
        /// The inert value that is accepted today.
        default: &'static str,
    },
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Dotted key (covers sub-keys).
    pub key: &'static str,
    #[serde(flatten)]
    pub status: Status,
}

const fn on(key: &'static str, by: &'static str) -> Entry {
    Entry {
        key,
        status: Status::Enforced { by },
    }
}

const fn off(key: &'static str, lands_with: &'static str, default: &'static str) -> Entry {
    Entry {
        key,
        status: Status::NotEnforced {
            lands_with,
            default,
        },
    }
}

/// The table. Keep it sorted by section; flip entries as mechanisms land.
pub const TABLE: &[Entry] = &[
    on("version", "agentd-policy (format version)"),
    on("extends", "agentd-policy (layering)"),
    on(
        "require",
        "agentd session start (refused when a mechanism is missing)",
    ),
    on(
        "example",
        "agentd-policy (checked by `policy check` and tests)",
    ),
    on("session.env", "sandbox (environment of the session)"),
    on("session.env_deny", "sandbox (environment of the session)"),
    on("session.timeout", "agentd session manager"),
    on(
        "session.capture",
        "sandbox exec capture (seccomp user notification)",
    ),
    off(
        "session.workspace",
        "sandbox workspace modes",
        "\"overlay\"",
    ),
    off("session.root", "sandbox OCI bundle roots", "\"host\""),
    on("resources.memory", "cgctl (session memory.max)"),
    on("resources.cpu", "cgctl (session cpu.max)"),
    on("resources.pids", "cgctl (session pids.max)"),
    on(
        "resources.disk",
        "agentd-sandbox (size of the session layer's disk image)",
    ),
    on("resources.call", "cgctl (calls/<n> cgroup limits)"),
    on(
        "resources.priority",
        "agentd memory pool (admission, loans, freeze order)",
    ),
    on(
        "resources.pool",
        "agentd memory pool (memory.high grants, loans, PSI freeze)",
    ),
    on("resources.max.memory", "agentd-policy (host cap)"),
    on("resources.max.cpu", "agentd-policy (host cap)"),
    on("resources.max.pids", "agentd-policy (host cap)"),
    on("resources.max.call_memory", "agentd-policy (host cap)"),
    on("resources.max.call_timeout", "agentd-policy (host cap)"),
    on("resources.max.session_timeout", "agentd-policy (host cap)"),
    on("resources.max.priority", "agentd-policy (host cap)"),
    on("resources.max.disk", "agentd-policy (host cap)"),
    on("intent", "cgctl via the tool-call runner (per-call limits)"),
    off("filesystem", "Landlock filesystem rules", "empty lists"),
    on(
        "network.enabled",
        "agentd egress proxy (session network namespace)",
    ),
    on("network.allow", "agentd egress proxy (per connection)"),
    on("network.deny", "agentd egress proxy (per connection)"),
    on(
        "network.ask",
        "agentd egress proxy + approval queue (the connection waits for an answer)",
    ),
    on(
        "network.grant",
        "agentd egress proxy (per tool call, by cgroup)",
    ),
    on(
        "network.idle_timeout",
        "agentd egress proxy (closes an idle relay)",
    ),
    on("network.max", "agentd-policy (host cap)"),
    off(
        "exec",
        "exec rules (seccomp user notification / BPF LSM)",
        "empty lists",
    ),
    // `[capabilities]` keys are resources; each kind has its own row (validate.rs looks up
    // `capabilities.<kind>`). Only `net:` rules (deny or ask) have a mechanism today.
    on("capabilities", "agentd capability table (per kind below)"),
    on(
        "capabilities.net",
        "agentd egress proxy + approval queue (`net:` deny and ask rules)",
    ),
    off(
        "capabilities.fs",
        "seccomp user notification / BPF LSM (docs/capabilities.md)",
        "no fs: rules",
    ),
    off(
        "capabilities.exec",
        "seccomp user notification / BPF LSM (docs/capabilities.md)",
        "no exec: rules",
    ),
    off(
        "capabilities.secret",
        "the secret broker (docs/capabilities.md)",
        "no secret: rules",
    ),
    off(
        "capabilities.one_shot",
        "per-rule grant lifetimes (the approver's --scope decides today)",
        "unset",
    ),
    off(
        "capabilities.ttl",
        "per-rule grant lifetimes (the approver's --scope decides today)",
        "unset",
    ),
    on(
        "approvals",
        "agentd approval queue (unanswered requests deny)",
    ),
    off("secrets", "the secret broker", "empty table"),
    on("undo.checkpoint", "agentd checkpoints (docs/undo.md)"),
    on("undo.retention", "agentd checkpoint pruning (docs/undo.md)"),
    on("undo.keep", "agentd checkpoint pruning (docs/undo.md)"),
];

/// The entry covering `key` (the longest entry that is `key` or a dotted prefix of it).
pub fn lookup(key: &str) -> Option<&'static Entry> {
    TABLE
        .iter()
        .filter(|e| {
            key == e.key
                || (key.starts_with(e.key) && key.as_bytes().get(e.key.len()) == Some(&b'.'))
        })
        .max_by_key(|e| e.key.len())
}

/// Whether `key` is enforced by this build. Unknown keys are not (fail closed).
pub fn is_enforced(key: &str) -> bool {
    matches!(
        lookup(key),
        Some(Entry {
            status: Status::Enforced { .. },
            ..
        })
    )
}

/// The "not enforced" message and hint for `key`, or `None` when it is enforced.
pub fn refusal(key: &str) -> Option<(String, String)> {
    match lookup(key).map(|e| e.status) {
        Some(Status::Enforced { .. }) => None,
        Some(Status::NotEnforced {
            lands_with,
            default,
        }) => Some((
            format!("`{key}` is not enforced by this build"),
            format!(
                "it lands with {lands_with}; remove it or set it to {default} (a rule this build cannot enforce is refused, never ignored)"
            ),
        )),
        None => Some((
            format!("`{key}` is not enforced by this build"),
            "remove it".to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_takes_longest_prefix() {
        assert!(is_enforced("resources.max.memory"));
        assert!(is_enforced("resources.max.disk"));
        assert!(is_enforced("resources.call.memory"));
        assert!(!is_enforced("filesystem.read_only"));
        assert!(!is_enforced("filesystemx"));
        assert!(!is_enforced("nonsense"));
        assert!(is_enforced("network.ask"));
        assert!(is_enforced("capabilities.net"));
        assert!(!is_enforced("capabilities.fs"));
        assert!(!is_enforced("capabilities.exec"));
        assert_eq!(lookup("intent.memory").map(|e| e.key), Some("intent"));
    }
}
