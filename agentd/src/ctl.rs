//! `agentctl`'s commands as library code: the tables (`ps`, `calls`), the
//! per-call report summary, and the `policy` commands wrapping agentd-policy's CLI functions.
//! The binary (`src/bin/agentctl.rs`) only parses arguments and calls these.

use std::fmt::Write as _;
use std::path::Path;

use agentd_policy::{DeclaredIntent, LoadOptions, RealFs};

use crate::api::{CallInfo, SessionInfo, SessionStats, Usage, now};

pub use agentd_policy::intent::{IntentError, parse_intent};

/// Bytes as `512M`-style text.
pub fn bytes(n: u64) -> String {
    cgctl::limits::format_bytes(n)
}

fn age(from: u64) -> String {
    let s = now().saturating_sub(from);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

/// `agentctl ps`.
pub fn sessions_table(list: &[SessionInfo]) -> String {
    let mut out = format!(
        "{:<14} {:<6} {:<8} {:>5} {:>5} {:>5}  {}\n",
        "SESSION", "OWNER", "STATE", "EXIT", "CALLS", "AGE", "COMMAND"
    );
    for s in list {
        let exit = s.exit_code.map_or("-".to_string(), |c| c.to_string());
        let _ = writeln!(
            out,
            "{:<14} {:<6} {:<8} {:>5} {:>5} {:>5}  {}",
            s.id,
            s.owner_uid,
            s.state.as_str(),
            exit,
            s.calls,
            age(s.created_at),
            s.argv.join(" ")
        );
    }
    out
}

/// The figures of a report the tables show: (wall ms, cpu ms, memory peak, oom kills).
fn figures(c: &CallInfo) -> (String, String, String, String) {
    let Some(r) = &c.report else {
        return ("-".into(), "-".into(), "-".into(), "-".into());
    };
    let wall = format!("{}ms", r.wall_ms);
    let cpu = format!("{}ms", r.stats.cpu.usage_usec / 1000);
    let mem = r.stats.memory.as_ref();
    let peak = mem.and_then(|m| m.peak).map_or("-".into(), bytes);
    let oom = mem.map_or("-".into(), |m| m.events.oom_kill.to_string());
    (wall, cpu, peak, oom)
}

/// `agentctl calls SESSION`.
pub fn calls_table(list: &[CallInfo]) -> String {
    let mut out = format!(
        "{:>4} {:<9} {:>5} {:>9} {:<8} {:>9} {:>9} {:>9} {:>4} {:<4}  {}\n",
        "CALL",
        "STATE",
        "EXIT",
        "MEM.MAX",
        "CPU",
        "WALL",
        "CPU.TIME",
        "MEM.PEAK",
        "OOM",
        "VIA",
        "COMMAND"
    );
    for c in list {
        let (wall, cpu, peak, oom) = figures(c);
        let exit = c.exit_code.map_or("-".to_string(), |e| e.to_string());
        let _ = writeln!(
            out,
            "{:>4} {:<9} {:>5} {:>9} {:<8} {:>9} {:>9} {:>9} {:>4} {:<4}  {}",
            c.n,
            c.state.as_str(),
            exit,
            bytes(c.limits.memory),
            c.limits.cpu_class.to_string(),
            wall,
            cpu,
            peak,
            oom,
            c.via.map_or("-", |v| v.as_str()),
            c.argv.join(" ")
        );
    }
    out
}

/// The report `agentctl exec` prints after the call's output.
pub fn call_report(c: &CallInfo) -> String {
    let (wall, cpu, peak, oom) = figures(c);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "call {}/{}: {}{} — limits memory.max {} cpu {} (weight {}) timeout {}s pids {}{}",
        c.session,
        c.n,
        c.state.as_str(),
        c.exit_code
            .map_or(String::new(), |e| format!(" (exit {e})")),
        bytes(c.limits.memory),
        c.limits.cpu_class,
        c.limits.cpu_weight,
        c.limits.timeout_s,
        c.limits.pids,
        c.limits
            .rule
            .as_ref()
            .map_or(String::new(), |r| format!(", rule `{r}`")),
    );
    let _ = writeln!(
        out,
        "report: wall {wall}, cpu {cpu}, memory peak {peak}, oom kills {oom}{}",
        if c.oom_killed { " — OOM-killed" } else { "" }
    );
    if let Some(net) = &c.net {
        let _ = writeln!(
            out,
            "network: {} connections, {} out, {} in",
            net.connections,
            bytes(net.bytes_up),
            bytes(net.bytes_down)
        );
    }
    for n in &c.limits.notes {
        let _ = writeln!(out, "note: {n}");
    }
    if let Some(e) = &c.error {
        let _ = writeln!(out, "error: {e}");
    }
    out
}

/// `agentctl net SESSION`: connections grouped by call (the agent itself first), each with
/// destination, decision, bytes and the rule that decided.
pub fn net_table(list: &[crate::egress::ConnRecord]) -> String {
    let mut out = String::new();
    let mut calls: Vec<Option<u64>> = list.iter().map(|r| r.call).collect();
    calls.sort();
    calls.dedup();
    for call in calls {
        let rows: Vec<_> = list.iter().filter(|r| r.call == call).collect();
        let allowed = rows.iter().filter(|r| r.decision == "allow").count();
        let (up, down) = rows
            .iter()
            .fold((0, 0), |(u, d), r| (u + r.bytes_up, d + r.bytes_down));
        let _ = writeln!(
            out,
            "{}: {} connections ({allowed} allowed, {} denied), {} out, {} in",
            call.map_or("agent".to_string(), |n| format!("call {n}")),
            rows.len(),
            rows.len() - allowed,
            bytes(up),
            bytes(down)
        );
        for r in rows {
            let _ = writeln!(
                out,
                "  {:<5} {:<12} {}:{} {} out {} in — {}",
                r.decision,
                r.via,
                r.dest,
                r.port,
                bytes(r.bytes_up),
                bytes(r.bytes_down),
                r.rule
            );
        }
    }
    if list.is_empty() {
        out.push_str("no connections\n");
    }
    out
}

/// `agentctl stats`: one line per session, its agent leaf and each running call.
pub fn stats_table(list: &[SessionStats]) -> String {
    let mut out = format!(
        "{:<14} {:<10} {:>9} {:>9} {:>10} {:>6} {:>9} {:>9}  {}\n",
        "SESSION", "WHAT", "MEM", "MEM.PEAK", "CPU.TIME", "PIDS", "IO.READ", "IO.WRITE", "COMMAND"
    );
    let opt = |v: Option<u64>| v.map_or("-".to_string(), bytes);
    let mut line = |id: &str, what: &str, u: &Usage, cmd: &str| {
        let _ = writeln!(
            out,
            "{:<14} {:<10} {:>9} {:>9} {:>10} {:>6} {:>9} {:>9}  {}",
            id,
            what,
            opt(u.memory_current),
            opt(u.memory_peak),
            format!("{}ms", u.cpu_usage_usec / 1000),
            u.pids_current.map_or("-".to_string(), |p| p.to_string()),
            opt(u.io_read_bytes),
            opt(u.io_write_bytes),
            cmd
        );
    };
    for s in list {
        line(&s.id, "session", &s.usage, "");
        line(&s.id, "agent", &s.agent, "");
        for c in &s.calls {
            line(&s.id, &format!("call {}", c.n), &c.usage, &c.argv.join(" "));
        }
    }
    out
}

/// `agentctl man DIR` / `agentd man DIR`: one roff page per command and subcommand
/// (`agentctl.1`, `agentctl-run.1`, …); returns the files written.
pub fn write_man_pages(cmd: clap::Command, dir: &Path) -> Result<Vec<std::path::PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut written = Vec::new();
    let mut todo = vec![(cmd.get_name().to_string(), cmd)];
    while let Some((name, cmd)) = todo.pop() {
        for sub in cmd.get_subcommands() {
            if sub.get_name() != "help" {
                todo.push((format!("{name}-{}", sub.get_name()), sub.clone()));
            }
        }
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd)
            .title(name.clone())
            .render(&mut buf)
            .map_err(|e| format!("man page {name}: {e}"))?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, buf).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path);
    }
    written.sort();
    Ok(written)
}

/// Options of the `policy` commands.
#[derive(Debug, Clone, Default)]
pub struct PolicyOpts {
    pub host: Option<std::path::PathBuf>,
    pub json: bool,
}

fn load_opts(o: &PolicyOpts) -> LoadOptions {
    LoadOptions {
        host: o.host.clone(),
        ..LoadOptions::default()
    }
}

/// `agentctl policy check FILE`.
pub fn policy_check(o: &PolicyOpts, file: &Path) -> agentd_policy::cli::Output {
    agentd_policy::cli::check(&RealFs, &load_opts(o), file, o.json)
}

/// `agentctl policy explain FILE [--intent …] -- CMD`.
pub fn policy_explain(
    o: &PolicyOpts,
    file: &Path,
    argv: &[String],
    intent: &DeclaredIntent,
) -> agentd_policy::cli::Output {
    agentd_policy::cli::explain(&RealFs, &load_opts(o), file, argv, intent, o.json)
}

/// `agentctl policy schema`.
pub fn policy_schema() -> agentd_policy::cli::Output {
    agentd_policy::cli::schema()
}
