//! Resolution: a stack of validated layers → a pure `Plan`, and `Plan::call` (command argv +
//! declared intent → the call's limits and decisions). Owns the host-cap rules: repo and
//! command-line values above a host cap are refused (the error names the cap), profile values
//! are clamped (so shipped profiles work on small hosts), and every clamp is recorded with the
//! cap that caused it. A declared intent may lower a limit, never raise it.

use std::fmt;

use globset::GlobMatcher;
use serde::{Deserialize, Serialize};

use crate::error::{Diagnostic, DiagnosticKind};
use crate::layer::{ArgvPattern, CompiledPattern, Layer, LayerKind, Mechanism, Origin, Val};
use crate::layer::{matcher, merge_all};
use crate::network::{GrantPlan, NetRule, NetworkPlan};
use crate::schema::{CheckpointMode, CpuClass, Effect, Priority, WorkspaceMode};
use crate::units::{Cpu, Duration, Size};

/// A cap that lowered a value: where it is set and its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CapRef {
    pub origin: Origin,
    pub value: String,
}

impl fmt::Display for CapRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.origin.layer == LayerKind::Builtin {
            write!(
                f,
                "{}: {} = {}",
                self.origin.file, self.origin.key, self.value
            )
        } else {
            write!(
                f,
                "{} {}: {} = {}",
                self.origin.layer, self.origin.file, self.origin.key, self.value
            )
        }
    }
}

/// A resolved value: where it came from and, if it was lowered, by which cap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Limit<T> {
    pub value: T,
    pub from: Origin,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capped_by: Option<CapRef>,
}

/// A layer of the resolved stack, bottom first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerInfo {
    pub kind: LayerKind,
    pub file: String,
    /// True for the `default` profile a repo policy gets when it has no `extends`.
    pub implied: bool,
}

/// Environment passed into the session: allowed globs minus denied globs (deny wins).
#[derive(Debug, Clone, Serialize)]
pub struct EnvPlan {
    pub allow: Vec<String>,
    pub allow_from: Origin,
    pub deny: Vec<Val<String>>,
    #[serde(skip)]
    allow_m: Vec<GlobMatcher>,
    #[serde(skip)]
    deny_m: Vec<GlobMatcher>,
}

/// The session disk quota when no layer sets `resources.disk` (and no host cap is lower).
pub const DEFAULT_DISK_BYTES: u64 = 256 << 20;

/// Session-wide part of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct SessionPlan {
    pub memory: Limit<Size>,
    pub cpu: Limit<Cpu>,
    pub pids: Limit<u32>,
    pub timeout: Limit<Duration>,
    /// The session layer's disk quota, when a layer set one (the daemon's default
    /// otherwise: docs/layer.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<Limit<Size>>,
    pub env: EnvPlan,
    /// Only the overlay workspace exists in this build.
    pub workspace: WorkspaceMode,
    /// Only the host root (read-only) exists in this build.
    pub root: String,
    /// Which of the agent's commands are tool calls (`session.capture`, docs/capture.md).
    #[serde(default, skip_serializing_if = "is_shim")]
    pub capture: crate::schema::CaptureMode,
    /// The `[network]` rules the egress proxy enforces (`enabled = false`: loopback only).
    pub network: NetworkPlan,
    /// The session's memory-pool priority (`resources.priority`), when a layer set one
    /// (the pool treats an unset one as `normal`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<Limit<Priority>>,
    /// `[undo]`, when a layer set any of it (the daemon's defaults otherwise: a checkpoint
    /// per call, the last 1000 kept, no age limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undo: Option<UndoPlan>,
}

/// `[undo]` as resolved (each key from the topmost layer that set it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndoPlan {
    /// A checkpoint before every tool call (`checkpoint = "per-call"`, the default).
    pub per_call: bool,
    /// Checkpoints kept besides the session's start (None: the daemon's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep: Option<u32>,
    /// Seconds a checkpoint is kept (None: no age limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_s: Option<u64>,
}

/// `[resources.pool]` of the host policy, when enabled (sizes unset = derived by the
/// daemon from the limit it finds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolPlan {
    pub limit: Option<u64>,
    pub reserve: Option<u64>,
    pub loan_step: Option<u64>,
    pub pressure_stall_ms: Option<u32>,
    pub from: Origin,
}

/// Default limits of a call that no intent rule matches.
#[derive(Debug, Clone, Serialize)]
pub struct CallDefaults {
    pub memory: Limit<Size>,
    pub cpu_class: Limit<CpuClass>,
    pub timeout: Limit<Duration>,
    pub pids: Limit<u32>,
}

/// An intent rule as resolved (its limits already within the caps).
#[derive(Debug, Clone, Serialize)]
pub struct RulePlan {
    pub name: String,
    #[serde(rename = "match")]
    pub patterns: Vec<ArgvPattern>,
    pub origin: Origin,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Limit<Size>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_class: Option<Limit<CpuClass>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Limit<Duration>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids: Option<Limit<u32>>,
    #[serde(skip)]
    compiled: Vec<CompiledPattern>,
}

/// The resolved policy: pure data, applied by agentd through the kernel-facing crates.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub layers: Vec<LayerInfo>,
    /// Mechanisms that must be present or the session is refused.
    pub require: Vec<Val<Mechanism>>,
    pub session: SessionPlan,
    pub call_defaults: CallDefaults,
    /// Tried in order; the first match decides the call's intent.
    pub intents: Vec<RulePlan>,
    /// The host's memory pool, when `[resources.pool] enabled = true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolPlan>,
    /// How requests for approval are handled (`[approvals]`).
    pub approvals: ApprovalsPlan,
}

/// The approval timeout when no layer sets `approvals.timeout`.
pub const DEFAULT_APPROVAL_TIMEOUT_S: u64 = 120;

/// `[approvals]` as resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApprovalsPlan {
    /// An unanswered request is denied after this many seconds.
    pub timeout_s: u64,
    /// Where the timeout was set (`None`: the built-in default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Origin>,
}

/// What a caller declares about a tool call. Every field may only lower a limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeclaredIntent {
    pub memory: Option<Size>,
    pub cpu_class: Option<CpuClass>,
    pub timeout: Option<Duration>,
    pub pids: Option<u32>,
}

/// Who decided a call's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "by", rename_all = "kebab-case")]
pub enum Decider {
    /// The caller's declared intent (lower than what policy allows).
    Declared,
    /// An intent rule.
    Rule { name: String, origin: Origin },
    /// `resources.call` defaults (no rule set this value).
    Default { origin: Origin },
}

/// One limit of a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallLimit<T> {
    pub value: T,
    pub decided_by: Decider,
    /// The most policy allows for this call.
    pub allowed: T,
    /// The cap that lowered `allowed` below what the rule or default asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capped_by: Option<CapRef>,
    /// A declared value above `allowed`, lowered to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub declared_clamped: Option<T>,
}

/// The exec decision for a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub effect: Effect,
    pub reason: String,
}

/// Everything policy decides about one call.
#[derive(Debug, Clone, Serialize)]
pub struct CallPlan {
    pub argv: Vec<String>,
    /// The matching intent rule, if any.
    pub rule: Option<String>,
    pub memory: CallLimit<Size>,
    pub cpu_class: CallLimit<CpuClass>,
    pub timeout: CallLimit<Duration>,
    pub pids: CallLimit<u32>,
    pub exec: Decision,
    /// `off`, or `proxy` (each connection decided by the session's network rules).
    pub network: String,
}

/// A resolved layer stack entry, as `resolve_layers` needs it.
#[derive(Debug, Clone)]
pub struct StackLayer<'a> {
    pub info: LayerInfo,
    pub layer: &'a Layer,
}

fn cap_ref<T: fmt::Display>(v: &Val<T>) -> CapRef {
    CapRef {
        origin: v.origin.clone(),
        value: v.value.to_string(),
    }
}

/// Lower `v` to the smallest cap below it; report refusals for host-bound layers.
fn clamp<T: Ord + Copy + fmt::Display>(
    v: &Val<T>,
    caps: &[Option<CapVal<T>>],
    diags: &mut Vec<Diagnostic>,
) -> Limit<T> {
    let mut out = Limit {
        value: v.value,
        from: v.origin.clone(),
        capped_by: None,
    };
    // Report only the tightest host cap a value exceeds (one error per value).
    let mut refused = None;
    for cap in caps.iter().flatten() {
        if out.value > cap.value {
            if v.origin.layer.bound_by_host() && cap.host {
                refused = Some(cap.r.clone());
            }
            out.value = cap.value;
            out.capped_by = Some(cap.r.clone());
        }
    }
    if let Some(cap) = refused {
        diags.push(exceeds(&v.origin, &v.value.to_string(), &cap));
    }
    out
}

/// A cap value: `host` caps refuse repo/CLI values; session caps only clamp.
#[derive(Debug, Clone)]
struct CapVal<T> {
    value: T,
    r: CapRef,
    host: bool,
}

fn host_cap<T: Copy + fmt::Display>(v: &Option<Val<T>>) -> Option<CapVal<T>> {
    v.as_ref().map(|v| CapVal {
        value: v.value,
        r: cap_ref(v),
        host: true,
    })
}

fn limit_cap<T: Copy + fmt::Display>(l: &Limit<T>) -> Option<CapVal<T>> {
    Some(CapVal {
        value: l.value,
        r: CapRef {
            origin: l.from.clone(),
            value: l.value.to_string(),
        },
        host: false,
    })
}

fn exceeds(origin: &Origin, value: &str, cap: &CapRef) -> Diagnostic {
    Diagnostic {
        kind: DiagnosticKind::ExceedsHostCap,
        file: origin.file.clone(),
        line: origin.line,
        column: origin.column,
        key: Some(origin.key.clone()),
        message: format!("`{} = {value}` exceeds the host cap: {cap}", origin.key),
        hint: Some(format!(
            "a {} may tighten but never exceed the host policy; lower it to at most {}",
            origin.layer, cap.value
        )),
    }
}

fn builtin_missing(key: &str) -> Diagnostic {
    Diagnostic {
        kind: DiagnosticKind::Invalid,
        file: "built-in host defaults".into(),
        line: 0,
        column: 0,
        key: Some(key.into()),
        message: format!("no layer sets `{key}`"),
        hint: None,
    }
}

fn req<'a, T>(v: &'a Option<Val<T>>, key: &str, d: &mut Vec<Diagnostic>) -> Option<&'a Val<T>> {
    if v.is_none() {
        d.push(builtin_missing(key));
    }
    v.as_ref()
}

fn compile_globs(list: &[String]) -> Vec<GlobMatcher> {
    list.iter().filter_map(|g| matcher(g).ok()).collect()
}

/// Resolve a stack (bottom first). Always returns the diagnostics found (host-cap refusals);
/// returns a plan only when every required value is set (the built-in host layer sets all).
pub fn resolve_layers(stack: &[StackLayer<'_>]) -> (Option<Plan>, Vec<Diagnostic>) {
    let mut d = Vec::new();
    let host = merge_all(
        stack
            .iter()
            .filter(|s| matches!(s.info.kind, LayerKind::Builtin | LayerKind::Host))
            .map(|s| s.layer),
    );
    let caps = &host.caps;
    let all = merge_all(stack.iter().map(|s| s.layer));

    // Network: only the host may allow lower layers to turn it on.
    if let Some(on) = all.network_enabled.as_ref().filter(|v| v.value) {
        let denied = caps.network_enabled.as_ref().filter(|c| !c.value);
        if let (Some(cap), true) = (denied, on.origin.layer.bound_by_host()) {
            let mut e = exceeds(&on.origin, "true", &cap_ref(cap));
            e.hint = Some(format!(
                "the host does not let a {} turn the network on; remove `network.enabled`",
                on.origin.layer
            ));
            d.push(e);
        }
    }

    let (Some(mem), Some(cpu), Some(pids), Some(timeout)) = (
        req(&all.memory, "resources.memory", &mut d),
        req(&all.cpu, "resources.cpu", &mut d),
        req(&all.pids, "resources.pids", &mut d),
        req(&all.session_timeout, "session.timeout", &mut d),
    ) else {
        return (None, d);
    };
    let (Some(c_mem), Some(c_class), Some(c_timeout), Some(c_pids), Some(env)) = (
        req(&all.call.memory, "resources.call.memory", &mut d),
        req(&all.call.cpu_class, "resources.call.cpu_class", &mut d),
        req(&all.call.timeout, "resources.call.timeout", &mut d),
        req(&all.call.pids, "resources.call.pids", &mut d),
        req(&all.env, "session.env", &mut d),
    ) else {
        return (None, d);
    };

    let s_mem = clamp(mem, &[host_cap(&caps.memory)], &mut d);
    let s_cpu = clamp(cpu, &[host_cap(&caps.cpu)], &mut d);
    let s_pids = clamp(pids, &[host_cap(&caps.pids)], &mut d);
    let s_timeout = clamp(timeout, &[host_cap(&caps.session_timeout)], &mut d);
    // No layer sets a disk: the default, unless the host caps it lower (then the cap).
    let s_disk = match (&all.disk, &caps.disk) {
        (Some(v), _) => Some(clamp(v, &[host_cap(&caps.disk)], &mut d)),
        (None, Some(cap)) if cap.value.0 < DEFAULT_DISK_BYTES => Some(Limit {
            value: cap.value,
            from: cap.origin.clone(),
            capped_by: None,
        }),
        (None, _) => None,
    };

    let mem_caps = [
        host_cap(&caps.call_memory),
        host_cap(&caps.memory),
        limit_cap(&s_mem),
    ];
    let timeout_caps = [
        host_cap(&caps.call_timeout),
        host_cap(&caps.session_timeout),
        limit_cap(&s_timeout),
    ];
    let pids_caps = [host_cap(&caps.pids), limit_cap(&s_pids)];

    let call_defaults = CallDefaults {
        memory: clamp(c_mem, &mem_caps, &mut d),
        cpu_class: clamp(c_class, &[], &mut d),
        timeout: clamp(c_timeout, &timeout_caps, &mut d),
        pids: clamp(c_pids, &pids_caps, &mut d),
    };

    let intents = all
        .intents
        .iter()
        .map(|r| RulePlan {
            name: r.name.clone(),
            patterns: r.patterns.clone(),
            origin: r.origin.clone(),
            memory: r
                .limits
                .memory
                .as_ref()
                .map(|v| clamp(v, &mem_caps, &mut d)),
            cpu_class: r.limits.cpu_class.as_ref().map(|v| clamp(v, &[], &mut d)),
            timeout: r
                .limits
                .timeout
                .as_ref()
                .map(|v| clamp(v, &timeout_caps, &mut d)),
            pids: r.limits.pids.as_ref().map(|v| clamp(v, &pids_caps, &mut d)),
            compiled: r
                .patterns
                .iter()
                .filter_map(|p| ArgvPattern::compile(&p.text).ok())
                .collect(),
        })
        .collect();

    let network = resolve_network(&all, caps, &mut d);
    let deny: Vec<String> = all.env_deny.iter().map(|v| v.value.clone()).collect();
    let plan = Plan {
        layers: stack.iter().map(|s| s.info.clone()).collect(),
        require: all.require.clone(),
        session: SessionPlan {
            memory: s_mem,
            cpu: s_cpu,
            pids: s_pids,
            timeout: s_timeout,
            disk: s_disk,
            env: EnvPlan {
                allow_m: compile_globs(&env.value),
                deny_m: compile_globs(&deny),
                allow: env.value.clone(),
                allow_from: env.origin.clone(),
                deny: all.env_deny.clone(),
            },
            workspace: WorkspaceMode::Overlay,
            root: "host".into(),
            capture: all.capture.as_ref().map(|v| v.value).unwrap_or_default(),
            network,
            priority: all
                .priority
                .as_ref()
                .map(|v| clamp(v, &[host_cap(&caps.priority)], &mut d)),
            undo: (all.undo_checkpoint.is_some()
                || all.undo_keep.is_some()
                || all.undo_retention.is_some())
            .then(|| UndoPlan {
                per_call: all
                    .undo_checkpoint
                    .as_ref()
                    .is_none_or(|v| v.value == CheckpointMode::PerCall),
                keep: all.undo_keep.as_ref().map(|v| v.value),
                retention_s: all.undo_retention.as_ref().map(|v| v.value.0),
            }),
        },
        pool: host
            .pool
            .enabled
            .as_ref()
            .filter(|e| e.value)
            .map(|e| PoolPlan {
                limit: host.pool.limit.as_ref().map(|v| v.value.0),
                reserve: host.pool.reserve.as_ref().map(|v| v.value.0),
                loan_step: host.pool.loan_step.as_ref().map(|v| v.value.0),
                pressure_stall_ms: host.pool.pressure_stall_ms.as_ref().map(|v| v.value),
                from: e.origin.clone(),
            }),
        call_defaults,
        intents,
        approvals: ApprovalsPlan {
            timeout_s: all
                .approval_timeout
                .as_ref()
                .map_or(DEFAULT_APPROVAL_TIMEOUT_S, |v| v.value.0),
            from: all.approval_timeout.as_ref().map(|v| v.origin.clone()),
        },
    };
    (Some(plan), d)
}

fn net_rules(list: &[Val<String>]) -> Vec<NetRule> {
    // Validation already parsed every rule; a rule failing here cannot occur.
    list.iter()
        .filter_map(|v| NetRule::new(&v.value, v.origin.clone()).ok())
        .collect()
}

/// The `[network]` plan. Host caps: `network.max.enabled = false` turns the network off (a
/// repo or command line asking for it was refused above); `network.max.allow` (globs) bounds
/// allow rules: a repo/CLI rule outside it is refused, a profile rule outside it dropped.
fn resolve_network(all: &Layer, caps: &crate::layer::Caps, d: &mut Vec<Diagnostic>) -> NetworkPlan {
    let on = all.network_enabled.as_ref().is_some_and(|v| v.value);
    let host_off = caps.network_enabled.as_ref().is_some_and(|c| !c.value);
    if !on || host_off {
        return NetworkPlan::off();
    }
    let mut within = |v: &Val<String>| -> bool {
        let Some(cap) = &caps.network_allow else {
            return true;
        };
        if cap
            .value
            .iter()
            .any(|g| matcher(g).is_ok_and(|m| m.is_match(&v.value)))
        {
            return true;
        }
        if v.origin.layer.bound_by_host() {
            d.push(exceeds(
                &v.origin,
                &format!("\"{}\"", v.value),
                &cap_ref(&Val {
                    value: format!("{:?}", cap.value),
                    origin: cap.origin.clone(),
                }),
            ));
        }
        false
    };
    let allow: Vec<Val<String>> = all
        .network_allow
        .iter()
        .flatten()
        .filter(|v| within(v))
        .cloned()
        .collect();
    let ask: Vec<Val<String>> = all
        .network_ask
        .iter()
        .filter(|v| within(v))
        .cloned()
        .collect();
    let mut grant_allow = Vec::new();
    for g in &all.network_grants {
        let ok: Vec<Val<String>> = g.allow.iter().filter(|v| within(v)).cloned().collect();
        grant_allow.push(ok);
    }
    let grants = all
        .network_grants
        .iter()
        .zip(grant_allow)
        .map(|(g, ok)| GrantPlan {
            patterns: g.patterns.clone(),
            allow: net_rules(&ok),
            origin: g.origin.clone(),
            compiled: g
                .patterns
                .iter()
                .filter_map(|p| ArgvPattern::compile(&p.text).ok())
                .collect(),
        })
        .collect();
    NetworkPlan {
        enabled: true,
        allow: net_rules(&allow),
        deny: net_rules(&all.network_deny),
        ask: net_rules(&ask),
        grants,
        idle_timeout_s: all
            .network_idle_timeout
            .as_ref()
            .map_or(crate::network::DEFAULT_IDLE_TIMEOUT_S, |v| v.value.0),
    }
}

fn call_limit<T: Ord + Copy>(
    rule: Option<(&RulePlan, &Limit<T>)>,
    default: &Limit<T>,
    declared: Option<T>,
) -> CallLimit<T> {
    let (policy, decided_by) = match rule {
        Some((r, l)) => (
            l,
            Decider::Rule {
                name: r.name.clone(),
                origin: l.from.clone(),
            },
        ),
        None => (
            default,
            Decider::Default {
                origin: default.from.clone(),
            },
        ),
    };
    let mut out = CallLimit {
        value: policy.value,
        decided_by,
        allowed: policy.value,
        capped_by: policy.capped_by.clone(),
        declared_clamped: None,
    };
    match declared {
        Some(v) if v < policy.value => {
            out.value = v;
            out.decided_by = Decider::Declared;
        }
        Some(v) if v > policy.value => out.declared_clamped = Some(v),
        _ => {}
    }
    out
}

impl Plan {
    /// The first intent rule matching `argv`.
    pub fn rule_for<S: AsRef<str>>(&self, argv: &[S]) -> Option<&RulePlan> {
        self.intents
            .iter()
            .find(|r| r.compiled.iter().any(|c| c.matches(argv)))
    }

    /// Limits and decisions for one call. Declared values only ever lower the limits.
    pub fn call<S: AsRef<str>>(&self, argv: &[S], declared: &DeclaredIntent) -> CallPlan {
        let rule = self.rule_for(argv);
        let d = &self.call_defaults;
        let pick =
            |f: fn(&RulePlan) -> Option<&Limit<Size>>| rule.and_then(|r| f(r).map(|l| (r, l)));
        let memory = call_limit(pick(|r| r.memory.as_ref()), &d.memory, declared.memory);
        let cpu_class = call_limit(
            rule.and_then(|r| r.cpu_class.as_ref().map(|l| (r, l))),
            &d.cpu_class,
            declared.cpu_class,
        );
        let timeout = call_limit(
            rule.and_then(|r| r.timeout.as_ref().map(|l| (r, l))),
            &d.timeout,
            declared.timeout,
        );
        let pids = call_limit(
            rule.and_then(|r| r.pids.as_ref().map(|l| (r, l))),
            &d.pids,
            declared.pids,
        );
        CallPlan {
            argv: argv.iter().map(|a| a.as_ref().to_string()).collect(),
            rule: rule.map(|r| r.name.clone()),
            memory,
            cpu_class,
            timeout,
            pids,
            exec: Decision {
                effect: Effect::Allow,
                reason: "no exec rules ([exec] is not enforced by this build)".into(),
            },
            network: if self.session.network.enabled {
                "proxy".into()
            } else {
                "off".into()
            },
        }
    }

    /// Whether an environment variable passes into the session (deny beats allow).
    pub fn env_allowed(&self, name: &str) -> bool {
        let e = &self.session.env;
        e.allow_m.iter().any(|g| g.is_match(name)) && !e.deny_m.iter().any(|g| g.is_match(name))
    }
}

fn is_shim(m: &crate::schema::CaptureMode) -> bool {
    *m == crate::schema::CaptureMode::Shim
}
