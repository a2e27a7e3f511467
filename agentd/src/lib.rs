//! agentd: the daemon that runs AI-agent sessions in containers with a cgroup per tool call.
//!
//! Today the crate holds `doctor`, which says which of DESIGN.md's mechanisms run in which
//! mode on this host; the daemon, API and `agentctl` arrive with the agentd issue.

pub mod doctor;
