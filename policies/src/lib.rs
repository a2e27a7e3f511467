//! agentd policy files: schema, validation with file:line:column errors, profile layering,
//! host caps, and resolution to a pure [`Plan`].
//!
//! Pipeline: text → [`validate`] (per file) → [`load_stack`] (host → profile → repo → command
//! line) → [`resolve_stack`] → [`Plan`]; [`Plan::call`] turns a command and a declared intent
//! into the call's limits and decisions. [`load`] does all of it. Which keys this build
//! enforces is decided by ONE table, [`enforcement::TABLE`]; everything else is refused.
//!
//! Modules: `units` (sizes, durations, CPU), `error` (diagnostics), `schema` (file format),
//! `enforcement` (the table), `validate` (one file), `layer` (layers and merging), `plan`
//! (resolution), `network` (network rules and decisions), `load` (files, extends, examples),
//! `intent` (`memory=64M,cpu=batch` declarations), `cli` (the `policy` commands).

pub mod capability;
pub mod cli;
pub mod enforcement;
pub mod error;
pub mod intent;
pub mod layer;
pub mod load;
pub mod network;
pub mod plan;
pub mod schema;
pub mod sections;
pub mod units;
pub mod validate;

pub use error::{Diagnostic, DiagnosticKind, PolicyError};
pub use layer::{Layer, LayerKind, Mechanism, Origin, merge, merge_all};
pub use load::{
    FileKind, Files, HOST_POLICY, LoadOptions, MemFs, PROFILES, REPO_POLICY, RealFs, Stack, load,
    load_stack, resolve_stack,
};
pub use network::{Dest, NetDecision, NetEffect, NetworkPlan};
pub use plan::{
    ApprovalsPlan, CallLimit, CallPlan, CapRef, Decider, DeclaredIntent, Limit, Plan, PoolPlan,
    UndoPlan,
};
pub use schema::{CaptureMode, CpuClass, Effect, Priority, json_schema};
pub use units::{Cpu, Duration, Size};
pub use validate::validate;

/// Parse and validate one file on its own (no layering): the fuzz target's entry point.
/// Never panics; returns the diagnostics.
pub fn check_text(name: &str, text: &str) -> Vec<Diagnostic> {
    validate(name, text, LayerKind::Repo).1
}
