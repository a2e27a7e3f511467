//! What the CLI shows: one row per cgroup of interest (sessions, agent leaves, calls) with
//! live figures, gathered from the tree and rendered as text or serialised as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use cgctl::limits::format_bytes;
use cgctl::stats::Stats;
use cgctl::{Cgroup, Result, Root};
use serde::Serialize;

/// Live figures of one cgroup.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Path relative to the root (`session-x/calls/3`).
    pub path: String,
    /// `session`, `agent` or `call`.
    pub kind: &'static str,
    /// memory.current.
    pub memory_current: Option<u64>,
    /// memory.peak.
    pub memory_peak: Option<u64>,
    /// cpu.stat usage_usec.
    pub cpu_usage_usec: u64,
    /// CPU use over the last interval in percent of one CPU (`top` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    /// pids.current.
    pub pids_current: Option<u64>,
    /// memory.events high.
    pub memory_high_events: u64,
    /// memory.events oom_kill.
    pub oom_kills: u64,
    /// Whether any process is in it.
    pub populated: bool,
}

fn row(cg: &Cgroup, path: String, kind: &'static str) -> Result<Row> {
    let s: Stats = cg.stats()?;
    Ok(Row {
        path,
        kind,
        memory_current: s.memory.map(|m| m.current),
        memory_peak: s.memory.and_then(|m| m.peak),
        cpu_usage_usec: s.cpu.usage_usec,
        cpu_percent: None,
        pids_current: s.pids.map(|p| p.current),
        memory_high_events: s.memory.map_or(0, |m| m.events.high),
        oom_kills: s.memory.map_or(0, |m| m.events.oom_kill),
        populated: cg.populated()?,
    })
}

/// One session in `cgctl tree`.
#[derive(Debug, Serialize)]
pub struct SessionView {
    /// Session id.
    pub id: String,
    /// The session cgroup's figures.
    pub session: Row,
    /// The agent leaf.
    pub agent: Option<Row>,
    /// The calls, by number.
    pub calls: Vec<Row>,
}

/// `cgctl tree`.
#[derive(Debug, Serialize)]
pub struct TreeView {
    /// The root path.
    pub root: String,
    /// Sessions.
    pub sessions: Vec<SessionView>,
}

/// Reads the tree. Sessions and calls may disappear while we read: those are skipped.
pub fn tree(root: &Root) -> Result<TreeView> {
    let mut sessions = Vec::new();
    for id in root.session_ids()? {
        let name = format!("session-{id}");
        let Ok(scg) = root.cgroup().child(&name) else {
            continue;
        };
        let Ok(session) = row(&scg, name.clone(), "session") else {
            continue;
        };
        let agent = scg
            .child("agent")
            .ok()
            .and_then(|a| row(&a, format!("{name}/agent"), "agent").ok());
        let mut calls = Vec::new();
        if let Ok(calls_cg) = scg.child("calls") {
            let mut numbers: Vec<u64> = calls_cg
                .children()
                .unwrap_or_default()
                .iter()
                .filter_map(|n| cgctl::tree::parse_call_dir(n))
                .collect();
            numbers.sort_unstable();
            for n in numbers {
                if let Ok(c) = calls_cg.child(&n.to_string())
                    && let Ok(r) = row(&c, format!("{name}/calls/{n}"), "call")
                {
                    calls.push(r);
                }
            }
        }
        sessions.push(SessionView {
            id,
            session,
            agent,
            calls,
        });
    }
    Ok(TreeView {
        root: root.cgroup().path().display().to_string(),
        sessions,
    })
}

/// Every leaf of interest (agent leaves and calls) by path, for `top`.
pub fn sample(root: &Root) -> Result<BTreeMap<String, Row>> {
    let t = tree(root)?;
    let mut out = BTreeMap::new();
    for s in t.sessions {
        for r in s.agent.into_iter().chain(s.calls) {
            out.insert(r.path.clone(), r);
        }
    }
    Ok(out)
}

/// Rows for one `top` refresh: CPU% from the usage delta, sorted by memory (desc).
pub fn top_rows(
    prev: &BTreeMap<String, Row>,
    now: &BTreeMap<String, Row>,
    elapsed: Duration,
) -> Vec<Row> {
    let secs = elapsed.as_secs_f64().max(1e-6);
    let mut rows: Vec<Row> = now
        .values()
        .map(|r| {
            let mut r = r.clone();
            r.cpu_percent = prev.get(&r.path).map(|p| {
                let d = r.cpu_usage_usec.saturating_sub(p.cpu_usage_usec) as f64;
                d / 1e6 / secs * 100.0
            });
            r
        })
        .collect();
    rows.sort_by(|a, b| {
        b.memory_current
            .cmp(&a.memory_current)
            .then_with(|| a.path.cmp(&b.path))
    });
    rows
}

fn mem(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), format_bytes)
}

fn line(out: &mut String, label: &str, r: &Row) {
    let _ = writeln!(
        out,
        "{label:<40} {:>8} {:>8} {:>10.2}s {:>6} {:>6} {:>4}",
        mem(r.memory_current),
        mem(r.memory_peak),
        r.cpu_usage_usec as f64 / 1e6,
        r.pids_current.map_or_else(|| "-".into(), |p| p.to_string()),
        r.memory_high_events,
        r.oom_kills,
    );
}

/// Text of `cgctl tree`.
pub fn render_tree(t: &TreeView) -> String {
    let mut out = format!("{}\n", t.root);
    let _ = writeln!(
        out,
        "{:<40} {:>8} {:>8} {:>11} {:>6} {:>6} {:>4}",
        "CGROUP", "MEM", "PEAK", "CPU", "PIDS", "HIGH", "OOMK"
    );
    for s in &t.sessions {
        line(&mut out, &s.session.path, &s.session);
        if let Some(a) = &s.agent {
            line(&mut out, "  agent", a);
        }
        for c in &s.calls {
            let n = c.path.rsplit('/').next().unwrap_or_default();
            line(&mut out, &format!("  calls/{n}"), c);
        }
    }
    if t.sessions.is_empty() {
        out.push_str("(no sessions)\n");
    }
    out
}

/// Text of one `cgctl top` refresh.
pub fn render_top(root: &Path, rows: &[Row]) -> String {
    let mut out = format!("{}  ({} cgroups)\n", root.display(), rows.len());
    let _ = writeln!(
        out,
        "{:<40} {:>8} {:>8} {:>7} {:>6} {:>6} {:>4}",
        "CGROUP", "MEM", "PEAK", "CPU%", "PIDS", "HIGH", "OOMK"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<40} {:>8} {:>8} {:>7} {:>6} {:>6} {:>4}",
            r.path,
            mem(r.memory_current),
            mem(r.memory_peak),
            r.cpu_percent
                .map_or_else(|| "-".into(), |p| format!("{p:.1}")),
            r.pids_current.map_or_else(|| "-".into(), |p| p.to_string()),
            r.memory_high_events,
            r.oom_kills,
        );
    }
    out
}

/// Text of `cgctl stat`.
pub fn render_stat(path: &Path, populated: bool, s: &Stats) -> String {
    let mut out = format!("{}\npopulated {}\n", path.display(), u8::from(populated));
    if let Some(m) = &s.memory {
        let _ = writeln!(
            out,
            "memory.current {} ({})\nmemory.peak {}\nmemory.events high={} max={} oom={} oom_kill={}",
            m.current,
            format_bytes(m.current),
            m.peak
                .map_or_else(|| "-".into(), |p| format!("{p} ({})", format_bytes(p))),
            m.events.high,
            m.events.max,
            m.events.oom,
            m.events.oom_kill
        );
        let st = &m.stat;
        let _ = writeln!(
            out,
            "memory.stat anon={} file={} kernel={} sock={} shmem={} pgfault={} pgmajfault={}",
            st.anon, st.file, st.kernel, st.sock, st.shmem, st.pgfault, st.pgmajfault
        );
    }
    let c = &s.cpu;
    let _ = writeln!(
        out,
        "cpu.stat usage_usec={} user_usec={} system_usec={} nr_throttled={} throttled_usec={}",
        c.usage_usec, c.user_usec, c.system_usec, c.nr_throttled, c.throttled_usec
    );
    if let Some(p) = &s.pids {
        let _ = writeln!(
            out,
            "pids.current {} pids.peak {}",
            p.current,
            p.peak.map_or_else(|| "-".into(), |v| v.to_string())
        );
    }
    if let Some(io) = &s.io {
        let _ = writeln!(out, "io.stat rbytes={} wbytes={}", io.rbytes, io.wbytes);
    }
    for (name, psi) in [
        ("memory", &s.pressure.memory),
        ("cpu", &s.pressure.cpu),
        ("io", &s.pressure.io),
    ] {
        if let Some(p) = psi {
            let full = p.full.map_or_else(
                || "-".into(),
                |f| format!("avg10={:.2} total={}", f.avg10, f.total_usec),
            );
            let _ = writeln!(
                out,
                "{name}.pressure some avg10={:.2} total={} full {full}",
                p.some.avg10, p.some.total_usec
            );
        }
    }
    out
}
