//! Validation of one policy file: TOML → `PolicyFile` (unknown keys, types) → `Layer`
//! (meaning). Owns every per-file check: sizes, globs, names, contradictions inside one file,
//! host-only keys, intent-rule examples, and the "not enforced by this build" refusals driven
//! by `enforcement.rs`. Cross-layer checks (host caps) live in `plan.rs`.

use std::ops::Range;

use globset::Glob;

use crate::enforcement;
use crate::error::{Diagnostic, DiagnosticKind as K, Source, closest};
use crate::layer::{ArgvPattern, CallLayer, Caps, CompiledPattern, Layer, LayerKind, Mechanism};
use crate::layer::{Origin, Rule, Val};
use crate::schema::{self, CpuClass, Effect, L, PolicyFile};
use crate::sections::{check_capability, check_filesystem, check_network, check_secret};
use crate::units::{Duration, Size};

/// A top-level `[[example]]`: a command and what the resolved plan must say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExampleSpec {
    pub argv: Vec<String>,
    pub line: usize,
    pub column: usize,
    /// Expected rule name; `Some("none")` means no rule may match.
    pub intent: Option<String>,
    pub memory: Option<Size>,
    pub cpu_class: Option<CpuClass>,
    pub timeout: Option<Duration>,
    pub pids: Option<u32>,
    pub decision: Option<Effect>,
}

/// The result of validating one file.
#[derive(Debug, Clone)]
pub struct Validated {
    pub layer: Layer,
    /// `extends` value and its span.
    pub extends: Option<(String, Range<usize>)>,
    pub examples: Vec<ExampleSpec>,
}

pub(crate) struct Cx<'a> {
    pub(crate) src: Source<'a>,
    pub(crate) kind: LayerKind,
    pub(crate) diags: Vec<Diagnostic>,
}

impl Cx<'_> {
    pub(crate) fn origin(&self, span: &Range<usize>, key: &str) -> Origin {
        let (line, column) = self.src.position(span.start);
        Origin {
            layer: self.kind,
            file: self.src.name.to_string(),
            line,
            column,
            key: key.to_string(),
        }
    }

    pub(crate) fn val<T: Clone>(&self, l: &L<T>, key: &str) -> Val<T> {
        Val {
            value: l.get().clone(),
            origin: self.origin(&l.span(), key),
        }
    }

    pub(crate) fn opt<T: Clone>(&self, l: &Option<L<T>>, key: &str) -> Option<Val<T>> {
        l.as_ref().map(|l| self.val(l, key))
    }

    pub(crate) fn err(
        &mut self,
        kind: K,
        span: Range<usize>,
        key: &str,
        msg: String,
        hint: Option<String>,
    ) {
        let d = self.src.diag(kind, Some(span), Some(key), msg, hint);
        self.diags.push(d);
    }

    /// Refuse a present, non-inert value whose mechanism this build does not enforce.
    pub(crate) fn not_enforced(&mut self, span: Range<usize>, key: &str) {
        if let Some((msg, hint)) = enforcement::refusal(key) {
            self.err(K::NotEnforced, span, key, msg, Some(hint));
        }
    }

    pub(crate) fn host_only(&mut self, span: Range<usize>, key: &str) {
        if !matches!(self.kind, LayerKind::Host | LayerKind::Builtin) {
            self.err(
                K::HostOnly,
                span,
                key,
                format!("`{key}` may only be set by the host policy"),
                Some("caps come from /etc/agentd/policy.toml; remove this key".into()),
            );
        }
    }

    pub(crate) fn positive_pids(&mut self, l: &Option<L<u32>>, key: &str) -> Option<Val<u32>> {
        let l = l.as_ref()?;
        if *l.get() == 0 {
            self.err(
                K::Invalid,
                l.span(),
                key,
                format!("`{key}` must be at least 1"),
                None,
            );
            return None;
        }
        Some(self.val(l, key))
    }

    pub(crate) fn globs(
        &mut self,
        list: &Option<L<Vec<L<String>>>>,
        key: &str,
    ) -> Vec<Val<String>> {
        let mut out = Vec::new();
        for item in list.iter().flat_map(|l| l.get()) {
            match Glob::new(item.get()) {
                Ok(_) if !item.get().trim().is_empty() => out.push(self.val(item, key)),
                Ok(_) => self.err(K::Invalid, item.span(), key, "empty pattern".into(), None),
                Err(e) => self.err(
                    K::Invalid,
                    item.span(),
                    key,
                    format!("bad glob `{}`: {}", item.get(), e.kind()),
                    Some(
                        "globs use `*`, `?`, `[abc]` and `{a,b}`; escape literals with `[` `]`"
                            .into(),
                    ),
                ),
            }
        }
        out
    }

    pub(crate) fn patterns(
        &mut self,
        list: &L<Vec<L<String>>>,
        key: &str,
    ) -> Vec<(Val<String>, CompiledPattern)> {
        let mut out = Vec::new();
        if list.get().is_empty() {
            self.err(
                K::Invalid,
                list.span(),
                key,
                format!("`{key}` is empty"),
                Some("list at least one command, like \"cargo test\"".into()),
            );
        }
        for item in list.get() {
            match ArgvPattern::compile(item.get()) {
                Ok(c) => out.push((self.val(item, key), c)),
                Err(e) => self.err(K::Invalid, item.span(), key, e, Some("a pattern is argv words separated by spaces, each a glob: \"cargo test\", \"python* -m pytest\"".into())),
            }
        }
        out
    }

    pub(crate) fn domains(
        &mut self,
        list: &Option<L<Vec<L<String>>>>,
        key: &str,
    ) -> Vec<Val<String>> {
        let mut out = Vec::new();
        for item in list.iter().flat_map(|l| l.get()) {
            match crate::sections::check_domain(item.get()) {
                Ok(()) => out.push(self.val(item, key)),
                Err(e) => self.err(
                    K::Invalid,
                    item.span(),
                    key,
                    e,
                    Some("use `domain`, `domain:port` or `*.domain:port`".into()),
                ),
            }
        }
        out
    }
}

/// Turn a TOML/serde error into a diagnostic with a hint.
fn parse_diag(src: &Source, e: &toml::de::Error) -> Diagnostic {
    let msg = e.message().trim().to_string();
    let ticked: Vec<&str> = msg.split('`').skip(1).step_by(2).collect();
    let hint = if msg.starts_with("unknown field") {
        match ticked.split_first() {
            Some((bad, known)) => match closest(bad, known.iter().copied()) {
                Some(c) => Some(format!("did you mean `{c}`?")),
                None => Some(format!("known keys here: {}", known.join(", "))),
            },
            None => None,
        }
    } else if msg.starts_with("unknown variant") {
        ticked.get(1..).map(|v| format!("one of: {}", v.join(", ")))
    } else if msg.starts_with("invalid type") {
        Some("see `agentd-policy schema` for each key's type".into())
    } else if msg.starts_with("missing field") {
        Some("add the missing key".into())
    } else {
        None
    };
    src.diag(K::Parse, e.span(), None, msg, hint)
}

/// Validate one file's text as a layer of `kind`.
pub fn validate(name: &str, text: &str, kind: LayerKind) -> (Option<Validated>, Vec<Diagnostic>) {
    let src = Source { name, text };
    let file: PolicyFile = match toml::from_str(text) {
        Ok(f) => f,
        Err(e) => return (None, vec![parse_diag(&src, &e)]),
    };
    let mut cx = Cx {
        src,
        kind,
        diags: Vec::new(),
    };
    let v = check_file(&mut cx, &file);
    (Some(v), cx.diags)
}

fn check_file(cx: &mut Cx, f: &PolicyFile) -> Validated {
    match (&f.version, cx.kind) {
        (None, LayerKind::Cli) => {}
        (None, _) => cx.diags.push(cx.src.diag(
            K::Invalid,
            Some(0..0),
            Some("version"),
            "missing `version`",
            Some("add `version = 1` at the top of the file".into()),
        )),
        (Some(v), _) if *v.get() != 1 => cx.err(
            K::Invalid,
            v.span(),
            "version",
            format!("unsupported policy version {}", v.get()),
            Some("this build reads `version = 1`".into()),
        ),
        _ => {}
    }
    let extends = f.extends.as_ref().and_then(|e| {
        if matches!(cx.kind, LayerKind::Profile | LayerKind::Repo) {
            Some((e.get().clone(), e.span()))
        } else {
            cx.err(
                K::Invalid,
                e.span(),
                "extends",
                format!("the {} cannot extend another policy", cx.kind),
                Some("only profiles and repo policies use `extends`".into()),
            );
            None
        }
    });
    let mut layer = Layer::default();
    for m in f.require.iter().flat_map(|l| l.get()) {
        match Mechanism::parse(m.get()) {
            Some(mech) => layer.require.push(Val {
                value: mech,
                origin: cx.origin(&m.span(), "require"),
            }),
            None => {
                let names = Mechanism::ALL.map(|(n, _)| n);
                let hint = closest(m.get(), names).map_or_else(
                    || format!("known mechanisms: {}", names.join(", ")),
                    |c| format!("did you mean `{c}`?"),
                );
                cx.err(
                    K::Invalid,
                    m.span(),
                    "require",
                    format!("unknown mechanism `{}`", m.get()),
                    Some(hint),
                );
            }
        }
    }
    if let Some(s) = &f.session {
        check_session(cx, s.get(), &mut layer);
    }
    if let Some(r) = &f.resources {
        check_resources(cx, r.get(), &mut layer);
    }
    for rule in f.intent.iter().flatten() {
        if let Some(r) = check_rule(cx, rule) {
            layer.intents.push(r);
        }
    }
    check_rule_conflicts(cx, f);
    if let Some(fs) = &f.filesystem {
        check_filesystem(cx, fs.get());
    }
    if let Some(n) = &f.network {
        check_network(cx, n.get(), &mut layer);
    }
    if let Some(e) = &f.exec {
        let e = e.get();
        let mut lists = Vec::new();
        for (list, key) in [(&e.allow, "exec.allow"), (&e.deny, "exec.deny")] {
            let pats: Vec<String> = match list {
                Some(l) => cx
                    .patterns(l, key)
                    .into_iter()
                    .map(|(v, _)| v.value)
                    .collect(),
                None => Vec::new(),
            };
            if let Some(l) = list.as_ref().filter(|l| !l.get().is_empty()) {
                cx.not_enforced(l.span(), key);
            }
            lists.push((pats, list));
        }
        if let (Some(allow), Some(Some(deny))) = (lists.first(), lists.get(1).map(|l| l.1)) {
            for d in deny.get() {
                if allow.0.contains(d.get()) {
                    cx.err(
                        K::Contradiction,
                        d.span(),
                        "exec.deny",
                        format!("`{}` is both allowed and denied", d.get()),
                        Some("deny beats allow; remove it from `exec.allow`".into()),
                    );
                }
            }
        }
    }
    if let Some(caps) = &f.capabilities {
        for (res, cap) in caps.get() {
            check_capability(cx, res, cap, &mut layer);
            let c = cap.get();
            if let (Effect::Deny, Some(o)) = (c.effect.get(), &c.one_shot)
                && *o.get()
            {
                cx.err(
                    K::Contradiction,
                    o.span(),
                    "capabilities.one_shot",
                    format!("`{res}` is a one-shot deny"),
                    Some("one_shot only makes sense for allow or ask".into()),
                );
            }
        }
    }
    if let Some(a) = &f.approvals
        && let Some(t) = &a.get().timeout
    {
        let secs = t.get().0;
        if !(1..=3600).contains(&secs) {
            cx.err(
                K::Invalid,
                t.span(),
                "approvals.timeout",
                format!("`approvals.timeout = {}` is outside 1s to 1h", t.get()),
                Some("an unanswered request is denied at the timeout; pick e.g. \"2m\"".into()),
            );
        } else {
            layer.approval_timeout = Some(cx.val(t, "approvals.timeout"));
        }
    }
    if let Some(secrets) = &f.secrets {
        for (name, s) in secrets.get() {
            check_secret(cx, name, s);
            cx.not_enforced(s.span(), "secrets");
        }
    }
    if let Some(u) = &f.undo {
        check_undo(cx, u.get(), &mut layer);
    }
    let examples = f
        .example
        .iter()
        .flatten()
        .filter_map(|e| check_example(cx, e))
        .collect();
    Validated {
        layer,
        extends,
        examples,
    }
}

fn check_session(cx: &mut Cx, s: &schema::Session, layer: &mut Layer) {
    if let Some(w) = &s.workspace
        && *w.get() != schema::WorkspaceMode::Overlay
    {
        cx.not_enforced(w.span(), "session.workspace");
    }
    if let Some(r) = &s.root {
        let root = r.get();
        if root == "host" {
        } else if let Some(path) = root.strip_prefix("oci:") {
            if path.starts_with('/') {
                cx.not_enforced(r.span(), "session.root");
            } else {
                cx.err(
                    K::Invalid,
                    r.span(),
                    "session.root",
                    format!("OCI bundle path `{path}` is not absolute"),
                    Some("write `oci:/absolute/path/to/bundle`".into()),
                );
            }
        } else {
            cx.err(
                K::Invalid,
                r.span(),
                "session.root",
                format!("unknown root `{root}`"),
                Some("use \"host\" (host root, read-only) or \"oci:/path/to/bundle\"".into()),
            );
        }
    }
    let allow = cx.globs(&s.env, "session.env");
    let deny = cx.globs(&s.env_deny, "session.env_deny");
    for d in &deny {
        if allow.iter().any(|a| a.value == d.value) {
            let d2 = d.clone();
            cx.diags.push(Diagnostic {
                kind: K::Contradiction,
                file: d2.origin.file,
                line: d2.origin.line,
                column: d2.origin.column,
                key: Some("session.env_deny".into()),
                message: format!("`{}` is both allowed and denied", d.value),
                hint: Some("deny beats allow; remove it from `session.env`".into()),
            });
        }
    }
    if let Some(e) = &s.env {
        layer.env = Some(Val {
            value: allow.into_iter().map(|v| v.value).collect(),
            origin: cx.origin(&e.span(), "session.env"),
        });
    }
    layer.env_deny = deny;
    layer.session_timeout = cx.opt(&s.timeout, "session.timeout");
    layer.capture = cx.opt(&s.capture, "session.capture");
}

fn check_call(cx: &mut Cx, c: &schema::CallLimits, prefix: &str) -> CallLayer {
    CallLayer {
        memory: cx.opt(&c.memory, &format!("{prefix}.memory")),
        cpu_class: cx.opt(&c.cpu_class, &format!("{prefix}.cpu_class")),
        timeout: cx.opt(&c.timeout, &format!("{prefix}.timeout")),
        pids: cx.positive_pids(&c.pids, &format!("{prefix}.pids")),
    }
}

fn check_resources(cx: &mut Cx, r: &schema::Resources, layer: &mut Layer) {
    layer.memory = cx.opt(&r.memory, "resources.memory");
    layer.cpu = cx.opt(&r.cpu, "resources.cpu");
    layer.pids = cx.positive_pids(&r.pids, "resources.pids");
    layer.disk = check_disk(cx, &r.disk, "resources.disk");
    if let Some(c) = &r.call {
        layer.call = check_call(cx, c.get(), "resources.call");
    }
    layer.priority = cx.opt(&r.priority, "resources.priority");
    if let Some(p) = &r.pool {
        cx.host_only(p.span(), "resources.pool");
        layer.pool = check_pool(cx, p.get());
    }
    // Inside one file, a per-call default above the session cap is a contradiction.
    let pairs = [
        (
            layer.call.memory.as_ref().map(|v| (v.value.0, &v.origin)),
            layer
                .memory
                .as_ref()
                .map(|v| (v.value.0, v.value.to_string())),
        ),
        (
            layer
                .call
                .pids
                .as_ref()
                .map(|v| (u64::from(v.value), &v.origin)),
            layer
                .pids
                .as_ref()
                .map(|v| (u64::from(v.value), v.value.to_string())),
        ),
        (
            layer.call.timeout.as_ref().map(|v| (v.value.0, &v.origin)),
            layer
                .session_timeout
                .as_ref()
                .map(|v| (v.value.0, v.value.to_string())),
        ),
    ];
    let mut found = Vec::new();
    for (call, session) in pairs {
        if let (Some((c, origin)), Some((s, shown))) = (call, session)
            && c > s
        {
            {
                found.push(Diagnostic {
                    kind: K::Contradiction,
                    file: origin.file.clone(),
                    line: origin.line,
                    column: origin.column,
                    key: Some(origin.key.clone()),
                    message: format!(
                        "`{}` is larger than the session's own limit ({shown})",
                        origin.key
                    ),
                    hint: Some(
                        "a call can never get more than its session; lower one of them".into(),
                    ),
                });
            }
        }
    }
    cx.diags.extend(found);
    if let Some(m) = &r.max {
        cx.host_only(m.span(), "resources.max");
        let m = m.get();
        layer.caps = Caps {
            memory: cx.opt(&m.memory, "resources.max.memory"),
            cpu: cx.opt(&m.cpu, "resources.max.cpu"),
            pids: cx.positive_pids(&m.pids, "resources.max.pids"),
            call_memory: cx.opt(&m.call_memory, "resources.max.call_memory"),
            call_timeout: cx.opt(&m.call_timeout, "resources.max.call_timeout"),
            session_timeout: cx.opt(&m.session_timeout, "resources.max.session_timeout"),
            priority: cx.opt(&m.priority, "resources.max.priority"),
            disk: check_disk(cx, &m.disk, "resources.max.disk"),
            ..layer.caps.clone()
        };
    }
}

/// The most checkpoints `undo.keep` may ask for (each is a manifest file on the daemon's
/// state dir; the daemon's default is 1000).
pub const UNDO_KEEP_MAX: u32 = 100_000;

/// `[undo]`: the checkpoint mode, how many checkpoints are kept and for how long.
fn check_undo(cx: &mut Cx, u: &schema::Undo, layer: &mut Layer) {
    let off = matches!(
        u.checkpoint.as_ref().map(|c| *c.get()),
        Some(schema::CheckpointMode::Off)
    );
    layer.undo_checkpoint = cx.opt(&u.checkpoint, "undo.checkpoint");
    for (span, key) in [
        (u.retention.as_ref().map(|r| r.span()), "undo.retention"),
        (u.keep.as_ref().map(|k| k.span()), "undo.keep"),
    ] {
        if let Some(span) = span.filter(|_| off) {
            cx.err(
                K::Contradiction,
                span,
                key,
                format!("`{key}` is set but checkpoints are off"),
                Some(format!(
                    "set `checkpoint = \"per-call\"` or drop `{}`",
                    key.trim_start_matches("undo.")
                )),
            );
        }
    }
    layer.undo_retention = cx.opt(&u.retention, "undo.retention");
    if let Some(k) = &u.keep {
        if *k.get() == 0 || *k.get() > UNDO_KEEP_MAX {
            cx.err(
                K::Invalid,
                k.span(),
                "undo.keep",
                format!(
                    "`undo.keep = {}` is out of range (1 to {UNDO_KEEP_MAX} checkpoints)",
                    k.get()
                ),
                Some("the default keeps the last 1000".into()),
            );
        } else {
            layer.undo_keep = cx.opt(&u.keep, "undo.keep");
        }
    }
}

/// A disk size: at least what the session layer's image needs for its own filesystem.
fn check_disk(cx: &mut Cx, v: &Option<L<Size>>, key: &str) -> Option<Val<Size>> {
    if let Some(d) = v
        && d.get().0 < DISK_MIN_BYTES
    {
        cx.err(
            K::Invalid,
            d.span(),
            key,
            format!(
                "`{key} = {}` is below the minimum of 1 MiB (the session layer is a \
                 filesystem image)",
                d.get()
            ),
            Some("give a size like \"2GiB\"".into()),
        );
        return None;
    }
    cx.opt(v, key)
}

/// The smallest session disk (agentd_sandbox::disk::MIN_BYTES).
pub const DISK_MIN_BYTES: u64 = 1 << 20;

fn check_pool(cx: &mut Cx, p: &schema::Pool) -> crate::layer::PoolLayer {
    let out = crate::layer::PoolLayer {
        enabled: cx.opt(&p.enabled, "resources.pool.enabled"),
        limit: cx.opt(&p.limit, "resources.pool.limit"),
        reserve: cx.opt(&p.reserve, "resources.pool.reserve"),
        loan_step: cx.opt(&p.loan_step, "resources.pool.loan_step"),
        pressure_stall_ms: cx.opt(&p.pressure_stall_ms, "resources.pool.pressure_stall_ms"),
    };
    if let Some(l) = &p.pressure_stall_ms
        && !(1..=1000).contains(l.get())
    {
        cx.err(
            K::Invalid,
            l.span(),
            "resources.pool.pressure_stall_ms",
            format!(
                "`resources.pool.pressure_stall_ms = {}` is outside 1 to 1000",
                l.get()
            ),
            Some("the PSI trigger counts stall within a 1 s window".into()),
        );
    }
    for (v, key) in [
        (&p.loan_step, "resources.pool.loan_step"),
        (&p.limit, "resources.pool.limit"),
    ] {
        if let Some(l) = v
            && l.get().0 == 0
        {
            cx.err(
                K::Invalid,
                l.span(),
                key,
                format!("`{key}` must be above 0"),
                None,
            );
        }
    }
    if let (Some(r), Some(l)) = (&p.reserve, &p.limit)
        && r.get().0 >= l.get().0
    {
        cx.err(
            K::Contradiction,
            r.span(),
            "resources.pool.reserve",
            format!(
                "`resources.pool.reserve = {}` leaves nothing of `resources.pool.limit = {}`",
                r.get(),
                l.get()
            ),
            Some("the reserve is kept back from the limit; make it smaller".into()),
        );
    }
    out
}

fn check_rule(cx: &mut Cx, rule: &L<schema::IntentRule>) -> Option<Rule> {
    let r = rule.get();
    let name = r.name.get().trim();
    if name.is_empty() || name == "none" {
        cx.err(
            K::Invalid,
            r.name.span(),
            "intent.name",
            format!("bad rule name `{name}`"),
            Some("name rules with a word like \"test-runner\" (\"none\" is reserved)".into()),
        );
    }
    let compiled = cx.patterns(&r.patterns, "intent.match");
    let limits = check_call(
        cx,
        &schema::CallLimits {
            memory: r.memory.clone(),
            cpu_class: r.cpu_class.clone(),
            timeout: r.timeout.clone(),
            pids: r.pids.clone(),
        },
        "intent",
    );
    // Judge the raw fields so a rejected value (e.g. `pids = 0`) does not also report this.
    if r.memory.is_none() && r.cpu_class.is_none() && r.timeout.is_none() && r.pids.is_none() {
        cx.err(
            K::Invalid,
            rule.span(),
            "intent",
            format!("intent rule `{name}` sets nothing"),
            Some("set at least one of memory, cpu_class, timeout, pids".into()),
        );
    }
    for (list, must) in [(&r.examples, true), (&r.counter_examples, false)] {
        for ex in list.iter().flat_map(|l| l.get()) {
            let argv: Vec<&str> = ex.get().split_whitespace().collect();
            if compiled.iter().any(|(_, c)| c.matches(&argv)) != must {
                let (msg, hint) = if must {
                    (
                        format!("example `{}` does not match intent rule `{name}`", ex.get()),
                        "fix the rule's `match` patterns or the example",
                    )
                } else {
                    (
                        format!(
                            "counter-example `{}` matches intent rule `{name}`",
                            ex.get()
                        ),
                        "narrow the rule's `match` patterns",
                    )
                };
                cx.err(
                    K::Example,
                    ex.span(),
                    "intent.examples",
                    msg,
                    Some(hint.into()),
                );
            }
        }
    }
    Some(Rule {
        name: name.to_string(),
        patterns: compiled
            .into_iter()
            .map(|(v, _)| ArgvPattern {
                text: v.value.split_whitespace().collect::<Vec<_>>().join(" "),
            })
            .collect(),
        limits,
        origin: cx.origin(&rule.span(), "intent"),
    })
}

/// Duplicate names, identical patterns with different intents, and examples shadowed by an
/// earlier rule of the same file.
fn check_rule_conflicts(cx: &mut Cx, f: &PolicyFile) {
    let rules: Vec<&schema::IntentRule> = f.intent.iter().flatten().map(|r| r.get()).collect();
    // Compile once: glob compilation dominates validation time.
    let compiled: Vec<Vec<CompiledPattern>> = rules
        .iter()
        .map(|r| {
            r.patterns
                .get()
                .iter()
                .filter_map(|q| ArgvPattern::compile(q.get()).ok())
                .collect()
        })
        .collect();
    for (i, r) in rules.iter().enumerate() {
        for (j, earlier) in rules[..i].iter().enumerate() {
            if earlier.name.get().trim() == r.name.get().trim() {
                cx.err(
                    K::Invalid,
                    r.name.span(),
                    "intent.name",
                    format!("duplicate intent rule name `{}`", r.name.get()),
                    Some("rule names must be unique within a file".into()),
                );
            }
            let same_intent = earlier.memory.as_ref().map(|v| *v.get())
                == r.memory.as_ref().map(|v| *v.get())
                && earlier.cpu_class.as_ref().map(|v| *v.get())
                    == r.cpu_class.as_ref().map(|v| *v.get())
                && earlier.timeout.as_ref().map(|v| *v.get())
                    == r.timeout.as_ref().map(|v| *v.get())
                && earlier.pids.as_ref().map(|v| *v.get()) == r.pids.as_ref().map(|v| *v.get());
            for p in r.patterns.get() {
                let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
                if !same_intent
                    && earlier
                        .patterns
                        .get()
                        .iter()
                        .any(|q| norm(q.get()) == norm(p.get()))
                {
                    cx.err(
                        K::Contradiction,
                        p.span(),
                        "intent.match",
                        format!(
                            "`{}` is also matched by rule `{}` with a different intent",
                            p.get(),
                            earlier.name.get()
                        ),
                        Some(
                            "the first matching rule wins, so this entry never applies; remove one"
                                .into(),
                        ),
                    );
                }
            }
            for ex in r.examples.iter().flat_map(|l| l.get()) {
                let argv: Vec<&str> = ex.get().split_whitespace().collect();
                let shadowed = compiled[j].iter().any(|c| c.matches(&argv));
                if shadowed {
                    cx.err(
                        K::Example,
                        ex.span(),
                        "intent.examples",
                        format!(
                            "example `{}` of rule `{}` is taken by the earlier rule `{}`",
                            ex.get(),
                            r.name.get(),
                            earlier.name.get()
                        ),
                        Some("rules are tried in order; move the more specific rule first".into()),
                    );
                }
            }
        }
    }
}

fn check_example(cx: &mut Cx, e: &L<schema::Example>) -> Option<ExampleSpec> {
    let e_ref = e.get();
    let argv: Vec<String> = e_ref
        .command
        .get()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if argv.is_empty() {
        cx.err(
            K::Invalid,
            e_ref.command.span(),
            "example.command",
            "empty example command".into(),
            None,
        );
        return None;
    }
    let (line, column) = cx.src.position(e.span().start);
    Some(ExampleSpec {
        argv,
        line,
        column,
        intent: e_ref.intent.as_ref().map(|i| i.get().clone()),
        memory: e_ref.memory.as_ref().map(|v| *v.get()),
        cpu_class: e_ref.cpu_class.as_ref().map(|v| *v.get()),
        timeout: e_ref.timeout.as_ref().map(|v| *v.get()),
        pids: e_ref.pids.as_ref().map(|v| *v.get()),
        decision: e_ref.decision.as_ref().map(|v| *v.get()),
    })
}
