//! Validated policy layers and how they stack. A `Layer` is one file's meaning (only the keys
//! this build enforces; everything else was refused or is inert) with the origin of every
//! value. `merge` stacks layers: later layers override scalars and allowlists, deny lists and
//! required mechanisms accumulate (deny beats allow), intent rules of later layers are tried
//! first. `merge` is associative (a proptest law) so a stack can be folded in any grouping.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};

use globset::{Glob, GlobMatcher};
use serde::Serialize;

use crate::schema::{CheckpointMode, CpuClass, Priority};
use crate::units::{Cpu, Duration, Size};

/// Where a layer sits in the stack (host → profile → repo → command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayerKind {
    /// Built-in host defaults, used under (or instead of) the host policy file.
    Builtin,
    /// The host policy (`/etc/agentd/policy.toml`): its `max` caps bind every other layer.
    Host,
    /// A shipped profile.
    Profile,
    /// The repo policy and any file it extends.
    Repo,
    /// `--set` overrides on the command line.
    Cli,
}

impl LayerKind {
    /// Layers whose explicit values must stay within the host caps (refused otherwise);
    /// profile values above a cap are clamped instead, so shipped profiles work on small
    /// hosts.
    pub fn bound_by_host(self) -> bool {
        matches!(self, LayerKind::Repo | LayerKind::Cli)
    }
}

impl fmt::Display for LayerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LayerKind::Builtin => "built-in host defaults",
            LayerKind::Host => "host policy",
            LayerKind::Profile => "profile",
            LayerKind::Repo => "repo policy",
            LayerKind::Cli => "command line",
        })
    }
}

/// Where a value came from: layer, file, position and dotted key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Origin {
    pub layer: LayerKind,
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub key: String,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.layer != LayerKind::Builtin {
            write!(f, "{} ", self.layer)?;
        }
        if self.line > 0 {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.key
            )
        } else {
            write!(f, "{}: {}", self.file, self.key)
        }
    }
}

/// A value with its origin.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Val<T> {
    pub value: T,
    pub origin: Origin,
}

/// Kernel mechanisms a policy may require.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mechanism {
    Cgroup2,
    Landlock,
    Seccomp,
    SchedExt,
    BpfLsm,
    Overlayfs,
    Userns,
}

impl Mechanism {
    pub const ALL: [(&'static str, Mechanism); 7] = [
        ("cgroup2", Mechanism::Cgroup2),
        ("landlock", Mechanism::Landlock),
        ("seccomp", Mechanism::Seccomp),
        ("sched_ext", Mechanism::SchedExt),
        ("bpf_lsm", Mechanism::BpfLsm),
        ("overlayfs", Mechanism::Overlayfs),
        ("userns", Mechanism::Userns),
    ];

    pub fn parse(name: &str) -> Option<Mechanism> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, m)| *m)
    }
}

/// An argv prefix pattern: whitespace-separated globs, one per argv word.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ArgvPattern {
    pub text: String,
}

impl ArgvPattern {
    /// Compile, or explain why the pattern is invalid. Memoised (bounded): the same profile
    /// patterns are compiled on every load, and glob compilation dominates that work.
    pub fn compile(text: &str) -> Result<CompiledPattern, String> {
        type Memo = Mutex<HashMap<String, Result<CompiledPattern, String>>>;
        static MEMO: OnceLock<Memo> = OnceLock::new();
        let memo = MEMO.get_or_init(Memo::default);
        if let Some(hit) = memo.lock().ok().and_then(|m| m.get(text).cloned()) {
            return hit;
        }
        let out = Self::compile_uncached(text);
        if let Ok(mut m) = memo.lock() {
            if m.len() >= 4096 {
                m.clear();
            }
            m.insert(text.to_string(), out.clone());
        }
        out
    }

    fn compile_uncached(text: &str) -> Result<CompiledPattern, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        if words.is_empty() {
            return Err("empty command pattern".into());
        }
        let mut globs = Vec::with_capacity(words.len());
        for w in &words {
            globs.push(matcher(w)?);
        }
        Ok(CompiledPattern {
            first_is_path: words[0].contains('/'),
            globs,
        })
    }
}

/// Compile one glob, memoised (bounded): the same profile and host globs are compiled on
/// every load, and regex compilation dominates loading time.
pub fn matcher(glob: &str) -> Result<GlobMatcher, String> {
    type Memo = Mutex<HashMap<String, Result<GlobMatcher, String>>>;
    static MEMO: OnceLock<Memo> = OnceLock::new();
    let memo = MEMO.get_or_init(Memo::default);
    if let Some(hit) = memo.lock().ok().and_then(|m| m.get(glob).cloned()) {
        return hit;
    }
    let out = Glob::new(glob)
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("bad glob `{glob}`: {}", e.kind()));
    if let Ok(mut m) = memo.lock() {
        if m.len() >= 4096 {
            m.clear();
        }
        m.insert(glob.to_string(), out.clone());
    }
    out
}

/// A compiled `ArgvPattern`.
#[derive(Debug, Clone)]
pub struct CompiledPattern {
    first_is_path: bool,
    globs: Vec<GlobMatcher>,
}

impl CompiledPattern {
    /// Whether `argv` starts with words matching every glob. A first glob without `/`
    /// matches the program's basename, so `cargo` matches `/usr/bin/cargo`.
    pub fn matches<S: AsRef<str>>(&self, argv: &[S]) -> bool {
        if argv.len() < self.globs.len() {
            return false;
        }
        self.globs.iter().zip(argv).enumerate().all(|(i, (g, a))| {
            let a = a.as_ref();
            if i == 0 && !self.first_is_path {
                g.is_match(a.rsplit('/').next().unwrap_or(a))
            } else {
                g.is_match(a)
            }
        })
    }
}

/// Per-call limits as a layer states them (all optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct CallLayer {
    pub memory: Option<Val<Size>>,
    pub cpu_class: Option<Val<CpuClass>>,
    pub timeout: Option<Val<Duration>>,
    pub pids: Option<Val<u32>>,
}

/// Host caps (`resources.max.*`, `network.max.*`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Caps {
    pub memory: Option<Val<Size>>,
    pub cpu: Option<Val<Cpu>>,
    pub pids: Option<Val<u32>>,
    pub call_memory: Option<Val<Size>>,
    pub call_timeout: Option<Val<Duration>>,
    pub session_timeout: Option<Val<Duration>>,
    pub disk: Option<Val<Size>>,
    pub network_enabled: Option<Val<bool>>,
    pub network_allow: Option<Val<Vec<String>>>,
    pub priority: Option<Val<Priority>>,
}

/// `[resources.pool]` as the host states it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct PoolLayer {
    pub enabled: Option<Val<bool>>,
    pub limit: Option<Val<Size>>,
    pub reserve: Option<Val<Size>>,
    pub loan_step: Option<Val<Size>>,
    pub pressure_stall_ms: Option<Val<u32>>,
}

/// An intent rule: commands → intent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Rule {
    pub name: String,
    pub patterns: Vec<ArgvPattern>,
    pub limits: CallLayer,
    pub origin: Origin,
}

/// One layer's meaning.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Layer {
    pub require: Vec<Val<Mechanism>>,
    pub env: Option<Val<Vec<String>>>,
    pub env_deny: Vec<Val<String>>,
    pub session_timeout: Option<Val<Duration>>,
    pub memory: Option<Val<Size>>,
    pub cpu: Option<Val<Cpu>>,
    pub pids: Option<Val<u32>>,
    /// The session layer's disk quota (`resources.disk`).
    pub disk: Option<Val<Size>>,
    pub call: CallLayer,
    pub priority: Option<Val<Priority>>,
    pub pool: PoolLayer,
    pub caps: Caps,
    pub intents: Vec<Rule>,
    /// `network.enabled` as this layer states it.
    pub network_enabled: Option<Val<bool>>,
    /// `network.allow`: an allowlist, so the later layer's list wins as a whole.
    pub network_allow: Option<Vec<Val<String>>>,
    /// `network.deny` and `net:` deny capabilities: accumulate (deny beats allow).
    pub network_deny: Vec<Val<String>>,
    /// `network.ask` and `net:` ask capabilities: accumulate (ask beats allow).
    pub network_ask: Vec<Val<String>>,
    /// `approvals.timeout`.
    pub approval_timeout: Option<Val<Duration>>,
    /// `network.idle_timeout`.
    pub network_idle_timeout: Option<Val<Duration>>,
    /// `network.grant`: later layers' grants first.
    pub network_grants: Vec<NetGrant>,
    /// `undo.checkpoint`, `undo.keep`, `undo.retention`.
    pub undo_checkpoint: Option<Val<CheckpointMode>>,
    /// `session.capture`.
    pub capture: Option<Val<crate::schema::CaptureMode>>,
    pub undo_keep: Option<Val<u32>>,
    pub undo_retention: Option<Val<Duration>>,
}

/// A `[[network.grant]]`: calls matching `patterns` may also reach `allow`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct NetGrant {
    pub patterns: Vec<ArgvPattern>,
    pub allow: Vec<Val<String>>,
    pub origin: Origin,
}

fn over<T: Clone>(a: &Option<T>, b: &Option<T>) -> Option<T> {
    b.clone().or_else(|| a.clone())
}

/// Concatenate, keeping the first occurrence of each value (associative).
fn union<T: Clone, K: PartialEq>(a: &[T], b: &[T], key: impl Fn(&T) -> K) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(a.len() + b.len());
    for v in a.iter().chain(b) {
        if !out.iter().any(|o| key(o) == key(v)) {
            out.push(v.clone());
        }
    }
    out
}

fn merge_call(a: &CallLayer, b: &CallLayer) -> CallLayer {
    CallLayer {
        memory: over(&a.memory, &b.memory),
        cpu_class: over(&a.cpu_class, &b.cpu_class),
        timeout: over(&a.timeout, &b.timeout),
        pids: over(&a.pids, &b.pids),
    }
}

/// Stack `b` on top of `a`.
pub fn merge(a: &Layer, b: &Layer) -> Layer {
    Layer {
        require: union(&a.require, &b.require, |v| v.value),
        env: over(&a.env, &b.env),
        env_deny: union(&a.env_deny, &b.env_deny, |v| v.value.clone()),
        session_timeout: over(&a.session_timeout, &b.session_timeout),
        memory: over(&a.memory, &b.memory),
        cpu: over(&a.cpu, &b.cpu),
        pids: over(&a.pids, &b.pids),
        disk: over(&a.disk, &b.disk),
        undo_checkpoint: over(&a.undo_checkpoint, &b.undo_checkpoint),
        capture: over(&a.capture, &b.capture),
        undo_keep: over(&a.undo_keep, &b.undo_keep),
        undo_retention: over(&a.undo_retention, &b.undo_retention),
        call: merge_call(&a.call, &b.call),
        priority: over(&a.priority, &b.priority),
        pool: PoolLayer {
            enabled: over(&a.pool.enabled, &b.pool.enabled),
            limit: over(&a.pool.limit, &b.pool.limit),
            reserve: over(&a.pool.reserve, &b.pool.reserve),
            loan_step: over(&a.pool.loan_step, &b.pool.loan_step),
            pressure_stall_ms: over(&a.pool.pressure_stall_ms, &b.pool.pressure_stall_ms),
        },
        caps: Caps {
            memory: over(&a.caps.memory, &b.caps.memory),
            cpu: over(&a.caps.cpu, &b.caps.cpu),
            pids: over(&a.caps.pids, &b.caps.pids),
            call_memory: over(&a.caps.call_memory, &b.caps.call_memory),
            call_timeout: over(&a.caps.call_timeout, &b.caps.call_timeout),
            session_timeout: over(&a.caps.session_timeout, &b.caps.session_timeout),
            disk: over(&a.caps.disk, &b.caps.disk),
            network_enabled: over(&a.caps.network_enabled, &b.caps.network_enabled),
            network_allow: over(&a.caps.network_allow, &b.caps.network_allow),
            priority: over(&a.caps.priority, &b.caps.priority),
        },
        // Later layers' rules are tried first, so a repo can refine a profile's rule.
        intents: b.intents.iter().chain(&a.intents).cloned().collect(),
        network_enabled: over(&a.network_enabled, &b.network_enabled),
        network_allow: over(&a.network_allow, &b.network_allow),
        network_deny: union(&a.network_deny, &b.network_deny, |v| v.value.clone()),
        network_ask: union(&a.network_ask, &b.network_ask, |v| v.value.clone()),
        approval_timeout: over(&a.approval_timeout, &b.approval_timeout),
        network_idle_timeout: over(&a.network_idle_timeout, &b.network_idle_timeout),
        network_grants: b
            .network_grants
            .iter()
            .chain(&a.network_grants)
            .cloned()
            .collect(),
    }
}

/// Fold a stack of layers, bottom first.
pub fn merge_all<'a>(layers: impl IntoIterator<Item = &'a Layer>) -> Layer {
    layers
        .into_iter()
        .fold(Layer::default(), |acc, l| merge(&acc, l))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_patterns_match_prefixes_and_basenames() {
        let p = ArgvPattern::compile("cargo test").unwrap();
        assert!(p.matches(&["cargo", "test", "--all"]));
        assert!(p.matches(&["/usr/bin/cargo", "test"]));
        assert!(!p.matches(&["cargo"]));
        assert!(!p.matches(&["cargo", "fmt"]));
        let p = ArgvPattern::compile("python* -m pytest").unwrap();
        assert!(p.matches(&["python3.12", "-m", "pytest", "-x"]));
        let p = ArgvPattern::compile("/opt/*/bin/tool").unwrap();
        assert!(p.matches(&["/opt/x/bin/tool"]));
        assert!(!p.matches(&["tool"]));
        assert!(ArgvPattern::compile("cargo [test").is_err());
        assert!(ArgvPattern::compile("   ").is_err());
    }
}
