//! The policy file format as serde structs: exactly what may appear in a `policy.toml`
//! (repo policy, profile, host policy or command-line override), with byte spans on every
//! value so that validation can report file:line:column. Unknown keys are refused here
//! (`deny_unknown_fields`); meaning is checked in `validate.rs`. The JSON Schema printed by
//! `policy schema` is generated from these same structs, so editor completion never drifts.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

use crate::units::{Cpu, Duration, Size};

/// A value with the byte span it came from. A newtype over `toml::Spanned` so that it can
/// carry a JSON Schema (the schema is the inner value's).
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
pub struct L<T>(pub toml::Spanned<T>);

impl<T> L<T> {
    pub fn span(&self) -> Range<usize> {
        self.0.span()
    }
    pub fn get(&self) -> &T {
        self.0.get_ref()
    }
}

impl<T: JsonSchema> JsonSchema for L<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }
    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }
    fn schema_id() -> Cow<'static, str> {
        T::schema_id()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
}

/// A whole policy file.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "agentd policy",
    description = "agentd policy file (.agentd/policy.toml, a profile, or /etc/agentd/policy.toml)"
)]
pub struct PolicyFile {
    /// Format version; must be 1.
    pub version: Option<L<i64>>,
    /// A shipped profile (`default`, `strict`, `build`, `ci`) or a path relative to this file.
    pub extends: Option<L<String>>,
    /// Mechanisms that must be present or the session is refused.
    pub require: Option<L<Vec<L<String>>>>,
    pub session: Option<L<Session>>,
    pub resources: Option<L<Resources>>,
    /// Intent rules: commands matched by argv prefix (each word a glob) → intent.
    pub intent: Option<Vec<L<IntentRule>>>,
    pub filesystem: Option<L<Filesystem>>,
    pub network: Option<L<Network>>,
    pub exec: Option<L<Exec>>,
    /// Resource pattern (`fs:/srv/**:write`, `net:host:443`, `exec:/usr/bin/git`,
    /// `secret:NAME`) → decision.
    pub capabilities: Option<L<BTreeMap<String, L<Capability>>>>,
    /// Secret name → where it comes from and who may receive it.
    pub secrets: Option<L<BTreeMap<String, L<Secret>>>>,
    /// How requests for a person's approval (`ask` rules) are handled.
    pub approvals: Option<L<Approvals>>,
    pub undo: Option<L<Undo>>,
    /// Examples checked by `policy check` and the tests: a command → its expected intent.
    pub example: Option<Vec<L<Example>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum WorkspaceMode {
    /// Overlay: the repo is the read-only lower layer, writes go to a session layer.
    Overlay,
    /// Copy of the repo (for kernels without overlayfs).
    Copy,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Session {
    /// How the workspace is presented (default `overlay`).
    pub workspace: Option<L<WorkspaceMode>>,
    /// `host` (the host root, read-only) or `oci:/path/to/bundle`.
    pub root: Option<L<String>>,
    /// Environment variables passed into the session (globs, e.g. `LC_*`).
    pub env: Option<L<Vec<L<String>>>>,
    /// Environment variables never passed, whatever any layer allows (deny beats allow).
    pub env_deny: Option<L<Vec<L<String>>>>,
    /// Wall-clock limit of the whole session.
    pub timeout: Option<L<Duration>>,
    /// Which of the agent's commands are tool calls: `shim` (its `$SHELL -c` commands,
    /// the default) or `exec` (every program its processes exec, docs/capture.md).
    pub capture: Option<L<CaptureMode>>,
}

/// `session.capture`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CaptureMode {
    /// Calls from the shim (`$SHELL -c`) and from outside only.
    #[default]
    Shim,
    /// Every exec of a process in the agent's leaf is a call (seccomp user notification).
    Exec,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum CpuClass {
    /// Throughput work (builds, tests, installs): lower scheduling priority.
    Batch,
    /// Interactive work and the agent loop: scheduled first.
    Latency,
}

impl std::fmt::Display for CpuClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CpuClass::Batch => "batch",
            CpuClass::Latency => "latency",
        })
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Session memory cap (memory.max of the session cgroup).
    pub memory: Option<L<Size>>,
    /// Session CPU cap in cores (cpu.max).
    pub cpu: Option<L<Cpu>>,
    /// Session pids cap (pids.max).
    pub pids: Option<L<u32>>,
    /// Workspace disk quota.
    pub disk: Option<L<Size>>,
    /// Default per-call limits, used when no intent rule matches.
    pub call: Option<L<CallLimits>>,
    /// The session's claim on the host's memory pool (`low`, `normal`, `high`): served
    /// first when the pool is short, frozen last.
    pub priority: Option<L<Priority>>,
    /// Host policy only: the memory pool shared by every session (docs/memory.md).
    pub pool: Option<L<Pool>>,
    /// Host policy only: caps no lower layer may exceed.
    pub max: Option<L<Max>>,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Priority {
    Low,
    Normal,
    High,
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
        })
    }
}

/// `[resources.pool]`: headroom sharing, admission, freeze instead of kill.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// Turn the pool on (default off).
    pub enabled: Option<L<bool>>,
    /// Hard limit the pool lives under (default: the lowest memory.max above the daemon's
    /// cgroup, else the host's memory).
    pub limit: Option<L<Size>>,
    /// Kept back from the limit for the kernel, the daemon and overshoot (default 1/16).
    pub reserve: Option<L<Size>>,
    /// One loan to a call at its memory.high (default 1/32 of the limit, 4 MiB–256 MiB).
    pub loan_step: Option<L<Size>>,
    /// PSI trigger: milliseconds of memory stall per 1 s window that freeze the newest
    /// borrower (default 100; 1 to 1000).
    pub pressure_stall_ms: Option<L<u32>>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallLimits {
    pub memory: Option<L<Size>>,
    pub cpu_class: Option<L<CpuClass>>,
    pub timeout: Option<L<Duration>>,
    pub pids: Option<L<u32>>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Max {
    pub memory: Option<L<Size>>,
    pub cpu: Option<L<Cpu>>,
    pub pids: Option<L<u32>>,
    pub disk: Option<L<Size>>,
    pub call_memory: Option<L<Size>>,
    pub call_timeout: Option<L<Duration>>,
    pub session_timeout: Option<L<Duration>>,
    /// The highest memory-pool priority a lower layer may give its session.
    pub priority: Option<L<Priority>>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IntentRule {
    /// Name shown by `policy explain` and in examples.
    pub name: L<String>,
    /// Commands this rule matches: each entry is an argv prefix whose words are globs
    /// (`"cargo test"`, `"python* -m pytest"`). A first word without `/` matches the basename.
    #[serde(rename = "match")]
    pub patterns: L<Vec<L<String>>>,
    pub memory: Option<L<Size>>,
    pub cpu_class: Option<L<CpuClass>>,
    pub timeout: Option<L<Duration>>,
    pub pids: Option<L<u32>>,
    /// Commands that must match this rule (checked on load).
    pub examples: Option<L<Vec<L<String>>>>,
    /// Commands that must not match this rule (checked on load).
    pub counter_examples: Option<L<Vec<L<String>>>>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Filesystem {
    pub read_only: Option<L<Vec<L<String>>>>,
    pub read_write: Option<L<Vec<L<String>>>>,
    pub hidden: Option<L<Vec<L<String>>>>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Off by default: the session has an empty network namespace.
    pub enabled: Option<L<bool>>,
    /// Reachable destinations: `domain`, `domain:port`, `*.suffix[:port|:*]`, an IPv4
    /// address or CIDR (`10.77.0.0/24[:port]`), or `@registry`. Without a port: 80 and 443.
    pub allow: Option<L<Vec<L<String>>>>,
    /// Destinations never reached (deny beats ask beats allow); same syntax as `allow`.
    pub deny: Option<L<Vec<L<String>>>>,
    /// Destinations that need a person's approval (the approval queue: the connection waits
    /// for `agentctl approve`/`deny`, denied at `approvals.timeout`); same syntax as `allow`.
    pub ask: Option<L<Vec<L<String>>>>,
    /// Per-command grants.
    pub grant: Option<Vec<L<NetworkGrant>>>,
    /// A relayed connection that moves no byte either way for this long is closed
    /// (default 15m; 1s to 24h).
    pub idle_timeout: Option<L<Duration>>,
    /// Host policy only: what lower layers may enable.
    pub max: Option<L<NetworkMax>>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkGrant {
    #[serde(rename = "match")]
    pub patterns: L<Vec<L<String>>>,
    pub allow: L<Vec<L<String>>>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkMax {
    /// Whether lower layers may turn the network on at all.
    pub enabled: Option<L<bool>>,
    /// Destinations lower layers may allow (globs); empty means none.
    pub allow: Option<L<Vec<L<String>>>>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Exec {
    /// Commands (argv prefixes, globs) that may run.
    pub allow: Option<L<Vec<L<String>>>>,
    /// Commands that never run (deny beats allow).
    pub deny: Option<L<Vec<L<String>>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Effect {
    Allow,
    Ask,
    Deny,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Capability {
    pub effect: L<Effect>,
    /// The grant is consumed by its first use.
    pub one_shot: Option<L<bool>>,
    /// The grant expires after this long.
    pub ttl: Option<L<Duration>>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    /// `env:NAME` (from agentctl's environment) or `file:/path`.
    pub source: L<String>,
    /// Commands (argv prefixes, globs) that may receive it.
    pub commands: Option<L<Vec<L<String>>>>,
    /// Domains it may be sent to.
    pub domains: Option<L<Vec<L<String>>>>,
}

/// `[approvals]`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Approvals {
    /// An unanswered request is denied after this long (default 120s; 1s to 1h).
    pub timeout: Option<L<Duration>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CheckpointMode {
    /// No checkpoint before each tool call (on demand, at the session's end and around
    /// undo and commit they are still taken).
    Off,
    /// A checkpoint before every tool call (the default).
    PerCall,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Undo {
    pub checkpoint: Option<L<CheckpointMode>>,
    /// How long checkpoints are kept (older ones are pruned; the session's start and its
    /// newest checkpoint never are).
    pub retention: Option<L<Duration>>,
    /// How many checkpoints are kept besides the session's start (default 1000).
    pub keep: Option<L<u32>>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Example {
    /// The command, split on whitespace.
    pub command: L<String>,
    /// Expected intent rule name, or `"none"` when no rule should match.
    pub intent: Option<L<String>>,
    pub memory: Option<L<Size>>,
    pub cpu_class: Option<L<CpuClass>>,
    pub timeout: Option<L<Duration>>,
    pub pids: Option<L<u32>>,
    /// Expected exec decision.
    pub decision: Option<L<Effect>>,
}

/// The JSON Schema of a policy file (`policy schema`).
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(PolicyFile);
    schema.to_value()
}
