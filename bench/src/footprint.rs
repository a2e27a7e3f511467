//! Benchmark 4, daemon footprint: RSS and PSS of `agentd serve` idle, then with K idle
//! sessions: the daemon again, each session's processes (its `agentd-sandbox run` runtime,
//! a child of the daemon, plus every process in the session's cgroups: the container init
//! and the agent) and the session cgroup's memory.current (which also counts kernel memory
//! and the state tmpfs).

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;

use crate::fixture::{Cgroup, Daemon, Scratch};
use crate::report::{Section, Table};

/// Rss and Pss of one process in KiB, from /proc/<pid>/smaps_rollup.
fn rss_pss(pid: u32) -> Result<(u64, u64)> {
    let p = format!("/proc/{pid}/smaps_rollup");
    let text = fs::read_to_string(&p).with_context(|| format!("reading {p}"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .with_context(|| format!("{p} has no {name}"))
    };
    Ok((field("Rss:")?, field("Pss:")?))
}

/// Every pid in a cgroup subtree.
fn cgroup_pids(dir: &Path, out: &mut Vec<u32>) {
    if let Ok(t) = fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(t.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                cgroup_pids(&e.path(), out);
            }
        }
    }
}

/// Children of `parent` (from /proc/<pid>/stat's ppid).
fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name, which is in parentheses and may hold spaces.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

fn sum(pids: &[u32]) -> (u64, u64) {
    pids.iter()
        .filter_map(|&p| rss_pss(p).ok())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

pub fn run(quick: bool) -> Result<Section> {
    let started = Instant::now();
    let k = if quick { 3 } else { 10 };
    let scratch = Scratch::new("agentd-bench-footprint-")?;
    let base = Cgroup::create(
        &format!("agentd-bench-footprint-{}", std::process::id()),
        &["memory", "pids", "cpu"],
    )?;
    let daemon = Daemon::start(&scratch, &base.path.join("agentd"))?;
    let dpid = daemon.pid().context("the daemon has no pid")?;
    std::thread::sleep(Duration::from_secs(1));
    let idle = rss_pss(dpid)?;
    let mut ids = Vec::new();
    for _ in 0..k {
        ids.push(daemon.session(&scratch.repo(), &["sleep", "1000000"])?.id);
    }
    std::thread::sleep(Duration::from_secs(1));
    let busy = rss_pss(dpid)?;
    let runtimes = children_of(dpid);
    let mut session_pids = Vec::new();
    let mut cg_bytes = 0u64;
    for id in &ids {
        let dir = daemon.cgroup_root.join(format!("session-{id}"));
        cgroup_pids(&dir, &mut session_pids);
        cg_bytes += fs::read_to_string(dir.join("memory.current"))
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    let rt = sum(&runtimes);
    let sp = sum(&session_pids);
    drop(daemon);

    let kk = k as u64;
    let mut t = Table::new(
        &format!("MiB; {k} idle sessions (`sleep`), each with its runtime, init and agent."),
        &["what", "RSS", "PSS"],
    );
    t.row(vec!["agentd idle".into(), mib(idle.0), mib(idle.1)]);
    t.row(vec![
        format!("agentd with {k} sessions"),
        mib(busy.0),
        mib(busy.1),
    ]);
    t.row(vec![
        "agentd growth per session".into(),
        mib(busy.0.saturating_sub(idle.0) / kk),
        mib(busy.1.saturating_sub(idle.1) / kk),
    ]);
    t.row(vec![
        format!(
            "per session: `agentd-sandbox run` runtime ({} processes in all)",
            runtimes.len()
        ),
        mib(rt.0 / kk),
        mib(rt.1 / kk),
    ]);
    t.row(vec![
        format!(
            "per session: processes in the session cgroup ({} in all)",
            session_pids.len()
        ),
        mib(sp.0 / kk),
        mib(sp.1 / kk),
    ]);
    t.row(vec![
        "per session: session cgroup memory.current (incl. kernel, tmpfs)".into(),
        format!("{:.1}", cg_bytes as f64 / kk as f64 / 1048576.0),
        "–".into(),
    ]);
    Ok(Section {
        name: "footprint".into(),
        title: "Daemon footprint".into(),
        tables: vec![t],
        targets: vec![],
        notes: vec![
            "RSS counts shared pages (the binaries, libc) in full for every process; PSS \
             divides them among the processes sharing them, so PSS is what a session adds."
                .into(),
        ],
        files: vec![],
        data: json!({
            "sessions": k,
            "daemon_idle_kib": {"rss": idle.0, "pss": idle.1},
            "daemon_busy_kib": {"rss": busy.0, "pss": busy.1},
            "runtimes_kib": {"rss": rt.0, "pss": rt.1, "processes": runtimes.len()},
            "session_processes_kib": {"rss": sp.0, "pss": sp.1, "processes": session_pids.len()},
            "session_cgroups_bytes": cg_bytes,
        }),
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}
