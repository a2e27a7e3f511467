//! agentd: the daemon that runs AI-agent sessions in containers with a cgroup per tool call,
//! and the library behind `agentctl`.
//!
//! Modules: [`doctor`] (which mechanisms run in which mode on this host), [`api`] (the
//! HTTP/JSON types shared by daemon and client), [`journal`] (SQLite), [`server`]
//! (`agentd serve`: sessions and tool calls), [`routes`] (the one route table),
//! [`client`] (HTTP over the Unix socket),
//! [`ctl`] (`agentctl`'s commands and their output), [`attach`] (its live commands and
//! the in-process daemon), [`term`] (sandbox-originated text escaped before a terminal),
//! [`top`] (`agentctl top`'s live view), [`caps`] (capability grants and the audit hash chain).

pub mod api;
pub mod attach;
pub mod caps;
pub mod client;
pub mod ctl;
pub mod doctor;
pub mod egress;
pub mod journal;
pub mod mcp;
pub mod mem;
pub mod routes;
pub mod sched;
pub mod server;
pub mod term;
pub mod top;
pub mod undo_cli;
