//! The `policy` commands as library functions returning text and an exit code, so that the
//! small `agentd-policy` binary and, later, `agentctl policy …` share them: `check`,
//! `explain`, `schema`, `profiles`. Exit codes: 0 ok, 1 the policy is refused, 2 usage or I/O.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::json;

use crate::enforcement;
use crate::error::{Diagnostic, DiagnosticKind, render};
use crate::load::{Files, LoadOptions, PROFILES, Stack, load_stack, resolve_stack};
use crate::plan::{CallLimit, Decider, DeclaredIntent, Plan};

/// What a command prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

impl Output {
    fn ok(stdout: String) -> Self {
        Output {
            stdout,
            stderr: String::new(),
            code: 0,
        }
    }
}

fn read_policy(files: &dyn Files, path: &Path) -> Result<String, Diagnostic> {
    files.read(path).map_err(|e| Diagnostic {
        kind: DiagnosticKind::Io,
        file: path.display().to_string(),
        line: 0,
        column: 0,
        key: None,
        message: format!("cannot read policy: {e}"),
        hint: (e.kind() == std::io::ErrorKind::NotFound).then(|| {
            "create .agentd/policy.toml starting with `version = 1`, or pass a file".into()
        }),
    })
}

fn refused(diags: &[Diagnostic], json_out: bool, code: i32) -> Output {
    if json_out {
        let v = json!({ "ok": false, "errors": diags });
        return Output {
            stdout: format!("{v:#}\n"),
            stderr: String::new(),
            code,
        };
    }
    let n = diags.len();
    Output {
        stdout: String::new(),
        stderr: format!(
            "{}\n{n} error{} — the policy is refused\n",
            render(diags),
            if n == 1 { "" } else { "s" }
        ),
        code,
    }
}

fn layers_line(plan: &Plan) -> String {
    plan.layers
        .iter()
        .map(|l| {
            let implied = if l.implied { " (implied)" } else { "" };
            format!("{}{implied}", l.file)
        })
        .collect::<Vec<_>>()
        .join(" → ")
}

fn load_file(
    files: &dyn Files,
    opts: &LoadOptions,
    path: &Path,
) -> Result<(Stack, Plan), (Vec<Diagnostic>, i32)> {
    let text = read_policy(files, path).map_err(|d| (vec![d], 2))?;
    let name = path.display().to_string();
    let (stack, diags) = load_stack(files, opts, Some((&name, &text)));
    match resolve_stack(&stack, diags) {
        Ok(plan) => Ok((stack, plan)),
        Err(e) => Err((e.diagnostics().to_vec(), 1)),
    }
}

/// `policy check [FILE]`: validate and resolve; print a summary or every problem.
pub fn check(files: &dyn Files, opts: &LoadOptions, path: &Path, json_out: bool) -> Output {
    let (stack, plan) = match load_file(files, opts, path) {
        Ok(v) => v,
        Err((d, code)) => return refused(&d, json_out, code),
    };
    if json_out {
        let v = json!({ "ok": true, "host": stack.host_note, "plan": plan });
        return Output::ok(format!("{v:#}\n"));
    }
    let s = &plan.session;
    let mut out = String::new();
    let _ = writeln!(out, "{}: ok", path.display());
    let _ = writeln!(out, "  host:     {}", stack.host_note);
    let _ = writeln!(out, "  layers:   {}", layers_line(&plan));
    let _ = writeln!(
        out,
        "  session:  memory {}, cpu {}, pids {}, timeout {}, network {}",
        s.memory.value, s.cpu.value, s.pids.value, s.timeout.value, s.network
    );
    let req: Vec<String> = plan
        .require
        .iter()
        .map(|m| format!("{:?}", m.value).to_lowercase())
        .collect();
    if !req.is_empty() {
        let _ = writeln!(out, "  require:  {}", req.join(", "));
    }
    let names: Vec<&str> = plan.intents.iter().map(|r| r.name.as_str()).collect();
    let _ = writeln!(out, "  intents:  {}", names.join(", "));
    Output::ok(out)
}

fn describe<T: std::fmt::Display>(what: &str, l: &CallLimit<T>, out: &mut String) {
    let by = match &l.decided_by {
        Decider::Declared => format!("declared intent (policy allows {})", l.allowed),
        Decider::Rule { name, origin } => format!("intent rule `{name}` ({origin})"),
        Decider::Default { origin } => format!("default ({origin})"),
    };
    let _ = writeln!(out, "  {what:<10} {:<8} {by}", l.value.to_string());
    if let Some(cap) = &l.capped_by {
        let _ = writeln!(out, "  {:<19} capped by {cap}", "");
    }
    if let Some(d) = &l.declared_clamped {
        let _ = writeln!(
            out,
            "  {:<19} declared {d} lowered to the policy limit {}",
            "", l.allowed
        );
    }
}

/// `policy explain FILE -- CMD…`: the resolved intent and limits for one command, saying
/// which layer or cap decided each.
pub fn explain(
    files: &dyn Files,
    opts: &LoadOptions,
    path: &Path,
    argv: &[String],
    declared: &DeclaredIntent,
    json_out: bool,
) -> Output {
    if argv.is_empty() {
        return Output {
            stdout: String::new(),
            stderr: "explain needs a command after `--`\n".into(),
            code: 2,
        };
    }
    let (stack, plan) = match load_file(files, opts, path) {
        Ok(v) => v,
        Err((d, code)) => return refused(&d, json_out, code),
    };
    let call = plan.call(argv, declared);
    if json_out {
        let v = json!({ "host": stack.host_note, "layers": plan.layers, "call": call });
        return Output::ok(format!("{v:#}\n"));
    }
    let mut out = String::new();
    let _ = writeln!(out, "command: {}", argv.join(" "));
    let _ = writeln!(out, "host:    {}", stack.host_note);
    let _ = writeln!(out, "layers:  {}", layers_line(&plan));
    match plan.rule_for(argv) {
        Some(r) => {
            let _ = writeln!(out, "intent:  rule `{}` ({})", r.name, r.origin);
        }
        None => {
            let _ = writeln!(
                out,
                "intent:  no rule matches; resources.call defaults apply"
            );
        }
    }
    describe("memory", &call.memory, &mut out);
    describe("cpu_class", &call.cpu_class, &mut out);
    describe("timeout", &call.timeout, &mut out);
    describe("pids", &call.pids, &mut out);
    let _ = writeln!(out, "  {:<10} {:<8} {}", "exec", "allow", call.exec.reason);
    let _ = writeln!(
        out,
        "  {:<10} {:<8} {}",
        "network",
        call.network,
        plan.session.network.describe_for(&call.argv)
    );
    if !plan.session.network.ask.is_empty() {
        let a = &plan.approvals;
        let from = a
            .from
            .as_ref()
            .map_or("built-in default".to_string(), |o| o.to_string());
        let _ = writeln!(
            out,
            "  {:<10} {:<8} unanswered requests are denied after {}s ({from})",
            "approvals", "ask", a.timeout_s
        );
    }
    Output::ok(out)
}

/// `policy schema`: the JSON Schema of policy files.
pub fn schema() -> Output {
    Output::ok(format!("{:#}\n", crate::schema::json_schema()))
}

/// `policy profiles`: shipped profiles (first comment line) and the enforcement table.
pub fn profiles(json_out: bool) -> Output {
    if json_out {
        let names: Vec<&str> = PROFILES.iter().map(|(n, _)| *n).collect();
        let v = json!({ "profiles": names, "enforcement": enforcement::TABLE });
        return Output::ok(format!("{v:#}\n"));
    }
    let mut out = String::from("shipped profiles:\n");
    for (name, text) in PROFILES {
        let first = text
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches('#')
            .trim();
        let _ = writeln!(out, "  {name:<8} {first}");
    }
    out.push_str("\nenforcement in this build:\n");
    for e in enforcement::TABLE {
        let status = match e.status {
            enforcement::Status::Enforced { by } => format!("enforced by {by}"),
            enforcement::Status::NotEnforced {
                lands_with,
                default,
            } => {
                format!("NOT enforced (only {default} accepted; lands with {lands_with})")
            }
        };
        let _ = writeln!(out, "  {:<32} {status}", e.key);
    }
    Output::ok(out)
}
