//! Loading a layer stack: built-in host defaults → host policy file → profile(s) → repo
//! policy (and files it extends) → command-line overrides. Owns `extends` resolution (shipped
//! profiles embedded with `include_str!`, or a profile directory, or paths relative to the
//! extending file), cycle detection, profile-example checking, and the one entry point that
//! turns all of it into a `Plan` or the complete list of problems. The only I/O is reading
//! files, through the `Files` trait so tests run on in-memory files.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::error::{Diagnostic, DiagnosticKind as K, PolicyError, closest};
use crate::layer::{Layer, LayerKind};
use crate::plan::{DeclaredIntent, LayerInfo, Plan, StackLayer, resolve_layers};
use crate::validate::{ExampleSpec, Validated, validate};

/// Default location of the host policy.
pub const HOST_POLICY: &str = "/etc/agentd/policy.toml";
/// Default location of the repo policy, relative to the repo root.
pub const REPO_POLICY: &str = ".agentd/policy.toml";
/// Display name of the built-in host defaults.
pub const BUILTIN_NAME: &str = "built-in host defaults";
/// The built-in host defaults (used under the host file, or alone when it is missing).
pub const BUILTIN_HOST: &str = include_str!("builtin_host.toml");

/// Shipped profiles, embedded in the binary.
pub const PROFILES: [(&str, &str); 4] = [
    ("default", include_str!("../profiles/default.toml")),
    ("strict", include_str!("../profiles/strict.toml")),
    ("build", include_str!("../profiles/build.toml")),
    ("ci", include_str!("../profiles/ci.toml")),
];

const MAX_DEPTH: usize = 8;

/// Validate, memoising the built-in texts (host defaults and embedded profiles): they never
/// change and their globs are the bulk of the work of every load.
fn validate_cached(
    name: &str,
    text: &str,
    kind: LayerKind,
) -> (Option<Validated>, Vec<Diagnostic>) {
    type Memo = Mutex<HashMap<(String, LayerKind), (Option<Validated>, Vec<Diagnostic>)>>;
    static MEMO: OnceLock<Memo> = OnceLock::new();
    let builtin = (name == BUILTIN_NAME && text == BUILTIN_HOST)
        || PROFILES
            .iter()
            .any(|(n, t)| name.strip_prefix("profile:") == Some(n) && *t == text);
    if !builtin {
        return validate(name, text, kind);
    }
    let memo = MEMO.get_or_init(Memo::default);
    let key = (name.to_string(), kind);
    if let Some(v) = memo.lock().ok().and_then(|m| m.get(&key).cloned()) {
        return v;
    }
    let v = validate(name, text, kind);
    if let Ok(mut m) = memo.lock() {
        m.insert(key, v.clone());
    }
    v
}

/// Read access to policy files.
pub trait Files {
    fn read(&self, path: &Path) -> io::Result<String>;
}

/// The real filesystem.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealFs;

impl Files for RealFs {
    fn read(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// In-memory files (tests, fuzzing, agentd receiving policy text over its API).
#[derive(Debug, Clone, Default)]
pub struct MemFs(pub BTreeMap<PathBuf, String>);

impl Files for MemFs {
    fn read(&self, path: &Path) -> io::Result<String> {
        self.0
            .get(path)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
    }
}

/// Where the stack's files come from.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Host policy path; `None` means `/etc/agentd/policy.toml`. A missing file means the
    /// built-in host defaults alone (stated in `Stack::host_note`).
    pub host: Option<PathBuf>,
    /// Load profiles from this directory instead of the embedded copies.
    pub profile_dir: Option<PathBuf>,
    /// `--set key=value` overrides, each one TOML line.
    pub overrides: Vec<String>,
    /// What the checked file is (`policy check --as host|profile|repo`).
    pub file_kind: FileKind,
}

/// The role of the file handed to `load`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FileKind {
    /// A repo policy (`.agentd/policy.toml`): bound by the host caps; without `extends` it
    /// stands on the `default` profile.
    #[default]
    Repo,
    /// A profile file: its values above a host cap are clamped, nothing is implied below it.
    Profile,
    /// A host policy: it replaces /etc/agentd/policy.toml and may set `max` caps.
    Host,
}

/// One loaded layer.
#[derive(Debug, Clone)]
pub struct LoadedLayer {
    pub info: LayerInfo,
    pub layer: Layer,
    pub examples: Vec<ExampleSpec>,
}

/// A loaded stack, bottom first.
#[derive(Debug, Clone)]
pub struct Stack {
    pub layers: Vec<LoadedLayer>,
    /// Which host policy is in force, in words.
    pub host_note: String,
}

impl Stack {
    fn view(&self, pick: impl Fn(usize, &LoadedLayer) -> bool) -> Vec<StackLayer<'_>> {
        self.layers
            .iter()
            .enumerate()
            .filter(|(i, l)| pick(*i, l))
            .map(|(_, l)| StackLayer {
                info: l.info.clone(),
                layer: &l.layer,
            })
            .collect()
    }
}

fn io_diag(file: &str, msg: String) -> Diagnostic {
    Diagnostic {
        kind: K::Io,
        file: file.to_string(),
        line: 0,
        column: 0,
        key: None,
        message: msg,
        hint: None,
    }
}

struct Loader<'a> {
    files: &'a dyn Files,
    opts: &'a LoadOptions,
    diags: Vec<Diagnostic>,
    layers: Vec<LoadedLayer>,
}

impl Loader<'_> {
    fn push(
        &mut self,
        name: &str,
        text: &str,
        kind: LayerKind,
        implied: bool,
    ) -> Option<(String, std::ops::Range<usize>)> {
        let (v, diags) = validate_cached(name, text, kind);
        self.push_validated(name, kind, implied, v, diags)
    }

    fn push_validated(
        &mut self,
        name: &str,
        kind: LayerKind,
        implied: bool,
        v: Option<Validated>,
        diags: Vec<Diagnostic>,
    ) -> Option<(String, std::ops::Range<usize>)> {
        self.diags.extend(diags);
        let v = v?;
        self.layers.push(LoadedLayer {
            info: LayerInfo {
                kind,
                file: name.to_string(),
                implied,
            },
            layer: v.layer,
            examples: v.examples,
        });
        v.extends
    }

    fn profile_text(&self, name: &str) -> Result<(String, String), String> {
        if let Some(dir) = &self.opts.profile_dir {
            let p = dir.join(format!("{name}.toml"));
            return self
                .files
                .read(&p)
                .map(|t| (p.display().to_string(), t))
                .map_err(|e| format!("cannot read profile {}: {e}", p.display()));
        }
        PROFILES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(n, t)| (format!("profile:{n}"), t.to_string()))
            .ok_or_else(|| {
                let names = PROFILES.map(|(n, _)| n);
                let hint = closest(name, names)
                    .map_or_else(String::new, |c| format!(" (did you mean `{c}`?)"));
                format!(
                    "unknown profile `{name}`{hint}; shipped profiles: {}",
                    names.join(", ")
                )
            })
    }

    /// Load `name`/`text` and, first, whatever it extends (so layers end up bottom first).
    fn chain(
        &mut self,
        name: String,
        text: String,
        kind: LayerKind,
        dir: Option<PathBuf>,
        seen: &mut Vec<String>,
        implied: bool,
    ) {
        if seen.contains(&name) || seen.len() >= MAX_DEPTH {
            let what = if seen.contains(&name) {
                "`extends` cycle"
            } else {
                "`extends` chain too deep"
            };
            let mut d = io_diag(&name, format!("{what}: {} → {name}", seen.join(" → ")));
            d.kind = K::Extends;
            self.diags.push(d);
            return;
        }
        seen.push(name.clone());
        // Layers are pushed after their base, so hold this one's result until then.
        let (v, own_diags) = validate_cached(&name, &text, kind);
        let ext = v.as_ref().and_then(|v| v.extends.clone());
        let base = match (&ext, kind) {
            (Some((e, _)), _) if e == "none" => None,
            (Some((e, span)), _) => Some((e.clone(), Some(span.clone()))),
            // A repo policy without `extends` stands on the default profile.
            (None, LayerKind::Repo) if seen.len() == 1 => Some(("default".to_string(), None)),
            _ => None,
        };
        if let Some((target, span)) = base {
            let is_path = target.contains('/') || target.ends_with(".toml");
            let loaded = if is_path {
                let p = dir
                    .as_deref()
                    .map_or_else(|| PathBuf::from(&target), |d| d.join(&target));
                self.files
                    .read(&p)
                    .map(|t| {
                        (
                            p.display().to_string(),
                            t,
                            kind,
                            p.parent().map(Path::to_path_buf),
                        )
                    })
                    .map_err(|e| format!("cannot read `{}` (extended by {name}): {e}", p.display()))
            } else {
                self.profile_text(&target)
                    .map(|(n, t)| (n, t, LayerKind::Profile, self.opts.profile_dir.clone()))
            };
            match loaded {
                Ok((n, t, k, d)) => self.chain(n, t, k, d, seen, span.is_none()),
                Err(msg) => {
                    let src = crate::error::Source {
                        name: &name,
                        text: &text,
                    };
                    self.diags.push(src.diag(
                        K::Extends,
                        span,
                        Some("extends"),
                        msg,
                        Some("use a shipped profile name or a path relative to this file".into()),
                    ));
                }
            }
        }
        self.push_validated(&name, kind, implied, v, own_diags);
        seen.pop();
    }
}

/// Load the whole stack. `file` is the repo policy (or a profile or host policy, per `opts.file_kind`).
pub fn load_stack(
    files: &dyn Files,
    opts: &LoadOptions,
    file: Option<(&str, &str)>,
) -> (Stack, Vec<Diagnostic>) {
    let mut l = Loader {
        files,
        opts,
        diags: Vec::new(),
        layers: Vec::new(),
    };
    l.push(BUILTIN_NAME, BUILTIN_HOST, LayerKind::Builtin, false);
    let host_path = opts
        .host
        .clone()
        .unwrap_or_else(|| PathBuf::from(HOST_POLICY));
    let host_name = host_path.display().to_string();
    let host_note = if opts.file_kind == FileKind::Host {
        match file {
            Some((name, text)) => {
                l.push(name, text, LayerKind::Host, false);
                format!("host policy {name}")
            }
            None => format!("{BUILTIN_NAME} (no host policy given)"),
        }
    } else {
        match files.read(&host_path) {
            Ok(text) => {
                l.push(&host_name, &text, LayerKind::Host, false);
                format!("host policy {host_name}")
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                format!("{BUILTIN_NAME} ({host_name} not found)")
            }
            Err(e) => {
                l.diags.push(io_diag(
                    &host_name,
                    format!("cannot read the host policy: {e}"),
                ));
                format!("host policy {host_name} (unreadable)")
            }
        }
    };
    let kind = match opts.file_kind {
        FileKind::Repo => Some(LayerKind::Repo),
        FileKind::Profile => Some(LayerKind::Profile),
        FileKind::Host => None,
    };
    if let (Some((name, text)), Some(kind)) = (file, kind) {
        let dir = Path::new(name).parent().map(Path::to_path_buf);
        l.chain(
            name.to_string(),
            text.to_string(),
            kind,
            dir,
            &mut Vec::new(),
            false,
        );
    }
    if !opts.overrides.is_empty() {
        let text = opts.overrides.join("\n");
        l.push("<command line>", &text, LayerKind::Cli, false);
    }
    (
        Stack {
            layers: l.layers,
            host_note,
        },
        l.diags,
    )
}

/// Check each layer's `[[example]]`s against the plan of the stack up to that layer, resolved
/// on the built-in host defaults (so examples do not depend on the machine's host policy).
pub fn check_examples(stack: &Stack) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for (i, layer) in stack.layers.iter().enumerate() {
        if layer.examples.is_empty() {
            continue;
        }
        let view =
            stack.view(|j, l| j <= i && !matches!(l.info.kind, LayerKind::Host | LayerKind::Cli));
        let (Some(plan), _) = resolve_layers(&view) else {
            continue;
        };
        for ex in &layer.examples {
            out.extend(check_example(&plan, ex, &layer.info.file));
        }
    }
    out
}

fn check_example(plan: &Plan, ex: &ExampleSpec, file: &str) -> Vec<Diagnostic> {
    let call = plan.call(&ex.argv, &DeclaredIntent::default());
    let mut wrong = Vec::new();
    if let Some(want) = &ex.intent {
        let got = call.rule.clone().unwrap_or_else(|| "none".into());
        if *want != got {
            wrong.push(format!("intent `{got}`, expected `{want}`"));
        }
    }
    let mut cmp = |what: &str, got: String, want: Option<String>| {
        if let Some(w) = want.filter(|w| *w != got) {
            wrong.push(format!("{what} {got}, expected {w}"));
        }
    };
    cmp(
        "memory",
        call.memory.value.to_string(),
        ex.memory.map(|v| v.to_string()),
    );
    cmp(
        "cpu_class",
        call.cpu_class.value.to_string(),
        ex.cpu_class.map(|v| v.to_string()),
    );
    cmp(
        "timeout",
        call.timeout.value.to_string(),
        ex.timeout.map(|v| v.to_string()),
    );
    cmp(
        "pids",
        call.pids.value.to_string(),
        ex.pids.map(|v| v.to_string()),
    );
    cmp(
        "decision",
        format!("{:?}", call.exec.effect),
        ex.decision.map(|v| format!("{v:?}")),
    );
    wrong
        .into_iter()
        .map(|w| Diagnostic {
            kind: K::Example,
            file: file.to_string(),
            line: ex.line,
            column: ex.column,
            key: Some("example".into()),
            message: format!("example `{}`: got {w}", ex.argv.join(" ")),
            hint: Some("fix the intent rules or the example".into()),
        })
        .collect()
}

/// Resolve a loaded stack to a plan, or every problem (loading, caps, examples).
pub fn resolve_stack(stack: &Stack, mut diags: Vec<Diagnostic>) -> Result<Plan, PolicyError> {
    let (plan, more) = resolve_layers(&stack.view(|_, _| true));
    diags.extend(more);
    diags.extend(check_examples(stack));
    let mut seen = Vec::new();
    diags.retain(|d| {
        let dup = seen.contains(d);
        seen.push(d.clone());
        !dup
    });
    match plan {
        Some(p) if diags.is_empty() => Ok(p),
        _ => Err(PolicyError::Invalid(diags)),
    }
}

/// Load and resolve: host policy (per `opts`) + `file` (name, text) as repo policy.
pub fn load(
    files: &dyn Files,
    opts: &LoadOptions,
    file: Option<(&str, &str)>,
) -> Result<Plan, PolicyError> {
    let (stack, diags) = load_stack(files, opts, file);
    resolve_stack(&stack, diags)
}
