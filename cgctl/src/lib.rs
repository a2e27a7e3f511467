//! cgroup v2 tree for agentd sessions and tool calls.
//!
//! This crate will own the agentd hierarchy (`session-<id>/{agent,calls/<n>}`), typed limits,
//! placement (cgroup fds for clone3), freeze/kill/cleanup, per-call reports and event
//! streams, plus the `cgctl` CLI. Nothing is implemented yet (see the cgctl issue).
