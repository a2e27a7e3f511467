//! Benchmark 3, multi-tenant replay: N recorded agent tasks replayed at once (time and
//! memory scaled, seeded choice and start offsets) under ONE shared memory cap (a parent
//! cgroup's memory.max), in three arms:
//! (a) no per-call limits: each session is one cgroup without limits;
//! (b) static per-session memory.max sized to the task's recorded peak;
//! (c) agentd: real sessions through the daemon, each tool call through agentd-shim with
//!     its recorded peak as declared intent (its own `calls/<n>` with memory.max).
//! Per run: sessions completed, OOM kills (the cap's hierarchical memory.events), calls
//! killed, allocation latency, completion time, memory utilisation; the largest N without
//! a kill per arm. The plot shows the cap's memory.current over time.

pub mod agent;
pub mod plan;
mod svg;

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::json;

use self::agent::AgentOut;
use self::plan::{Plan, Scale};
use crate::fixture::{self, Cgroup, Daemon, Scratch};
use crate::report::{Section, Table};
use crate::stats;

/// Seed of every choice (tasks, start offsets): runs are repeatable.
const SEED: u64 = 7;
/// Slack on static limits and intents for the worker's own pages, MiB (same in b and c).
pub(crate) const SLACK_MIB: u32 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
enum Arm {
    NoLimits,
    Static,
    Agentd,
}

impl Arm {
    const ALL: [Arm; 3] = [Arm::NoLimits, Arm::Static, Arm::Agentd];
    fn name(self) -> &'static str {
        match self {
            Arm::NoLimits => "a: no per-call limits",
            Arm::Static => "b: static per-session memory.max = task peak",
            Arm::Agentd => "c: agentd per-call intent (shim)",
        }
    }
    fn short(self) -> &'static str {
        match self {
            Arm::NoLimits => "a",
            Arm::Static => "b",
            Arm::Agentd => "c",
        }
    }
}

/// Settings of one benchmark run.
#[derive(Debug, Clone, Serialize)]
struct Config {
    scale: Scale,
    cap_mib: u32,
    sessions: Vec<usize>,
    /// Only tasks whose recorded duration is at most this (keeps --quick short).
    max_task_s: f64,
    /// Sessions start at seeded offsets in [0, this).
    start_spread_ms: u64,
}

/// The result of one (arm, N) run.
#[derive(Debug, Clone, Serialize)]
struct RunResult {
    arm: Arm,
    n: usize,
    completed: usize,
    oom_kills: u64,
    calls: u64,
    calls_killed: u64,
    calls_failed: u64,
    alloc_p50_us: Option<f64>,
    alloc_p95_us: Option<f64>,
    /// First start to last end.
    makespan_s: f64,
    /// Median over completed sessions of wall time ÷ scheduled time.
    median_stretch: Option<f64>,
    mem_mean_pct: f64,
    mem_peak_pct: f64,
    /// Sum of the sessions' scaled peaks ÷ cap.
    peak_demand_pct: f64,
    /// (ms since start, MiB) of the cap's memory.current.
    #[serde(skip)]
    series: Vec<(u64, f64)>,
}

pub fn run(quick: bool, out: &Path, trace: &Path, sessions: &[usize]) -> Result<Section> {
    let started = Instant::now();
    let mut cfg = if quick {
        Config {
            scale: Scale {
                time: 20.0,
                memory: 4.0,
            },
            cap_mib: 256,
            sessions: vec![4],
            max_task_s: 150.0,
            start_spread_ms: 1000,
        }
    } else {
        Config {
            scale: Scale {
                time: 20.0,
                memory: 4.0,
            },
            cap_mib: 512,
            sessions: vec![2, 4, 6, 8, 10],
            max_task_s: 300.0,
            start_spread_ms: 2000,
        }
    };
    if !sessions.is_empty() {
        cfg.sessions = sessions.to_vec();
    }
    let tasks = plan::load(trace)?;
    let mut pool: Vec<&plan::Task> = tasks
        .iter()
        .filter(|t| t.duration_s() <= cfg.max_task_s)
        .collect();
    let mut rng = fastrand::Rng::with_seed(SEED);
    rng.shuffle(&mut pool);
    let max_n = cfg.sessions.iter().copied().max().unwrap_or(0);
    let chosen: Vec<(Plan, u64)> = pool
        .iter()
        .cycle()
        .take(max_n)
        .map(|t| {
            (
                plan::plan(t, &cfg.scale),
                rng.u64(0..cfg.start_spread_ms.max(1)),
            )
        })
        .collect();
    let scratch = Scratch::new("agentd-bench-replay-")?;
    let plans_dir = scratch.path().join("plans");
    fs::create_dir(&plans_dir)?;
    let mut plan_files = Vec::new();
    for (i, (p, _)) in chosen.iter().enumerate() {
        let f = plans_dir.join(format!("{i}.json"));
        fs::write(&f, serde_json::to_vec(p)?)?;
        plan_files.push(f);
    }
    let mut results = Vec::new();
    for &n in &cfg.sessions {
        for arm in Arm::ALL {
            eprintln!("agentd-bench: replay arm {} with {n} sessions", arm.short());
            let r = run_arm(arm, n, &cfg, &scratch, &chosen[..n], &plan_files[..n])
                .with_context(|| format!("replay arm {} with {n} sessions", arm.short()))?;
            eprintln!(
                "agentd-bench:   {}/{n} completed, {} OOM kills, {:.1} s",
                r.completed, r.oom_kills, r.makespan_s
            );
            results.push(r);
        }
    }
    let plot = "replay.svg";
    let largest = max_n;
    let plotted: Vec<&RunResult> = results.iter().filter(|r| r.n == largest).collect();
    fs::write(out.join(plot), svg::plot(&plotted, cfg.cap_mib, largest))
        .with_context(|| format!("writing {}", out.join(plot).display()))?;
    Ok(section(
        &cfg,
        &results,
        &chosen,
        plot,
        started.elapsed().as_secs_f64(),
    ))
}

/// Samples the cap's memory.current every 100 ms until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<(u64, f64)>>>,
}

impl Sampler {
    fn start(cap: &Path) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let file = cap.join("memory.current");
        let handle = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut v = Vec::new();
            while !s2.load(Ordering::Relaxed) {
                if let Some(b) = fs::read_to_string(&file)
                    .ok()
                    .and_then(|t| t.trim().parse::<u64>().ok())
                {
                    v.push((t0.elapsed().as_millis() as u64, b as f64 / 1048576.0));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            v
        });
        Sampler {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> Vec<(u64, f64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

/// Starts `cmd` inside cgroup `dir` (joins through cgroup.procs before exec).
fn spawn_in(cmd: &mut Command, dir: &Path) -> Result<Child> {
    let procs = fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))
        .with_context(|| format!("opening {}/cgroup.procs", dir.display()))?;
    let fd = procs.as_raw_fd();
    // SAFETY: the closure only calls write(2) on an open fd with a static buffer
    // (async-signal-safe).
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("starting a replay agent")?;
    drop(procs);
    Ok(child)
}

fn sleep_until(t0: Instant, ms: u64) {
    let at = t0 + Duration::from_millis(ms);
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

fn parse_agent(stdout: &str) -> Option<AgentOut> {
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<AgentOut>(l).ok())
}

fn run_arm(
    arm: Arm,
    n: usize,
    cfg: &Config,
    scratch: &Scratch,
    chosen: &[(Plan, u64)],
    plan_files: &[PathBuf],
) -> Result<RunResult> {
    let cap = Cgroup::create(
        &format!(
            "agentd-bench-replay-{}-{}-{n}",
            std::process::id(),
            arm.short()
        ),
        &["memory", "pids", "cpu"],
    )?;
    cap.write("memory.max", &format!("{}M", cfg.cap_mib))?;
    let me = fixture::bin("agentd-bench")?;
    let mut outs: Vec<Option<AgentOut>> = Vec::new();
    let sampler;
    let t0;
    match arm {
        Arm::NoLimits | Arm::Static => {
            sampler = Sampler::start(&cap.path);
            t0 = Instant::now();
            let mut children = Vec::new();
            for (i, ((p, offset), file)) in chosen.iter().zip(plan_files).enumerate() {
                sleep_until(t0, *offset);
                let sess = cap.child(&format!("session-{i}"), &[])?;
                if arm == Arm::Static {
                    sess.write("memory.max", &format!("{}M", p.peak_mib + SLACK_MIB))?;
                }
                let child = spawn_in(
                    Command::new(&me)
                        .arg("replay-agent")
                        .arg("--plan")
                        .arg(file)
                        .args(["--calls", "child"])
                        .stdin(Stdio::null())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::null()),
                    &sess.path,
                )?;
                children.push((sess, child));
            }
            for (_sess, child) in children {
                let o = child.wait_with_output()?;
                outs.push(if o.status.success() {
                    parse_agent(&String::from_utf8_lossy(&o.stdout))
                } else {
                    None
                });
            }
        }
        Arm::Agentd => {
            let d_scratch = Scratch::new("agentd-bench-replay-d-")?;
            let daemon = Daemon::start(&d_scratch, &cap.path.join("agentd"))?;
            sampler = Sampler::start(&cap.path);
            t0 = Instant::now();
            let mut ids = Vec::new();
            for ((_, offset), file) in chosen.iter().zip(plan_files) {
                sleep_until(t0, *offset);
                let argv = vec![
                    me.to_string_lossy().into_owned(),
                    "replay-agent".into(),
                    "--plan".into(),
                    file.to_string_lossy().into_owned(),
                    "--calls".into(),
                    "shell".into(),
                ];
                ids.push(
                    daemon
                        .session_with_policy(&scratch.repo(), "version = 1\n", &argv)?
                        .id,
                );
            }
            for id in &ids {
                let s = daemon.wait(id)?;
                outs.push(if s.exit_code == Some(0) {
                    parse_agent(&daemon.stdout(id)?)
                } else {
                    None
                });
            }
            drop(daemon);
        }
    }
    let makespan_s = t0.elapsed().as_secs_f64();
    let series = sampler.finish();
    let oom_kills = cap.keyed("memory.events", "oom_kill").unwrap_or(0);
    drop(cap);

    let done: Vec<&AgentOut> = outs.iter().flatten().collect();
    let lat: Vec<f64> = done
        .iter()
        .flat_map(|o| o.lat_us.iter().map(|&v| f64::from(v)))
        .collect();
    let lat = stats::sorted(&lat);
    let stretch: Vec<f64> = done
        .iter()
        .filter_map(|o| {
            let p = chosen.iter().find(|(p, _)| p.task == o.task)?;
            stats::ratio(o.wall_ms as f64, p.0.end_ms.max(1) as f64)
        })
        .collect();
    let cap_mib = f64::from(cfg.cap_mib);
    let mean = if series.is_empty() {
        0.0
    } else {
        series.iter().map(|s| s.1).sum::<f64>() / series.len() as f64
    };
    let peak = series.iter().map(|s| s.1).fold(0.0, f64::max);
    let demand: u32 = chosen.iter().map(|(p, _)| p.peak_mib).sum();
    Ok(RunResult {
        arm,
        n,
        completed: done.len(),
        oom_kills,
        calls: done.iter().map(|o| o.calls).sum(),
        calls_killed: done.iter().map(|o| o.calls_killed).sum(),
        calls_failed: done.iter().map(|o| o.calls_failed).sum(),
        alloc_p50_us: stats::percentile(&lat, 50.0),
        alloc_p95_us: stats::percentile(&lat, 95.0),
        makespan_s,
        median_stretch: stats::median(&stats::sorted(&stretch)),
        mem_mean_pct: 100.0 * mean / cap_mib,
        mem_peak_pct: 100.0 * peak / cap_mib,
        peak_demand_pct: 100.0 * f64::from(demand) / cap_mib,
        series,
    })
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "–".into())
}

fn section(
    cfg: &Config,
    results: &[RunResult],
    chosen: &[(Plan, u64)],
    plot: &str,
    elapsed_s: f64,
) -> Section {
    let mut t = Table::new(
        &format!(
            "Shared cap {} MiB; time ÷{}, memory ÷{}; seed {SEED}. Allocation latency is per \
             1 MiB mapped and touched (µs); stretch = session wall time ÷ scheduled time.",
            cfg.cap_mib, cfg.scale.time, cfg.scale.memory
        ),
        &[
            "arm",
            "N",
            "Σ peaks ÷ cap",
            "completed",
            "OOM kills",
            "calls killed / run",
            "alloc p50 µs",
            "alloc p95 µs",
            "makespan s",
            "median stretch",
            "mem mean / peak % of cap",
        ],
    );
    for r in results {
        t.row(vec![
            r.arm.short().into(),
            r.n.to_string(),
            format!("{:.0}%", r.peak_demand_pct),
            format!("{}/{}", r.completed, r.n),
            r.oom_kills.to_string(),
            format!("{} / {}", r.calls_killed, r.calls),
            opt(r.alloc_p50_us, 0),
            opt(r.alloc_p95_us, 0),
            format!("{:.1}", r.makespan_s),
            opt(r.median_stretch, 2),
            format!("{:.0} / {:.0}", r.mem_mean_pct, r.mem_peak_pct),
        ]);
    }
    let mut largest = Table::new(
        "Largest N that ran without an OOM kill and with every session completed.",
        &["arm", "largest N without a kill", "N tried"],
    );
    for arm in Arm::ALL {
        let ok = results
            .iter()
            .filter(|r| r.arm == arm && r.oom_kills == 0 && r.completed == r.n)
            .map(|r| r.n)
            .max();
        let tried: Vec<String> = cfg.sessions.iter().map(|n| n.to_string()).collect();
        largest.row(vec![
            arm.name().into(),
            ok.map(|n| n.to_string()).unwrap_or_else(|| "none".into()),
            tried.join(", "),
        ]);
    }
    let tasks: Vec<String> = chosen
        .iter()
        .map(|(p, off)| format!("{} (+{off} ms, peak {} MiB)", p.task, p.peak_mib))
        .collect();
    Section {
        name: "replay".into(),
        title: "Multi-tenant memory replay".into(),
        tables: vec![t, largest],
        targets: vec![],
        notes: vec![
            format!(
                "Tasks from ../shared/traces/agent-tasks.jsonl (recorded duration ≤ {} s), in \
                 seeded order; session i runs task i: {}.",
                cfg.max_task_s,
                tasks.join("; ")
            ),
            "Each session's agent holds the task's memory outside tool calls; each recorded \
             tool call (every tool, not only Bash) is a process that holds what the task held \
             above the agent's level during it, or its recorded peak as a burst when it is \
             shorter than the 1 Hz sampling."
                .into(),
            format!(
                "Arm b's memory.max and arm c's declared intent are the recorded peak + \
                 {SLACK_MIB} MiB for the worker's own pages. Arm c runs real agentd sessions \
                 (sandbox, shim, per-call cgroups with memory.oom.group); its sessions start \
                 through the daemon, so their starts lag the offsets by the session start time."
            ),
            "OOM kills are the cap cgroup's hierarchical memory.events oom_kill; a session \
             whose agent was killed is not completed; a killed call does not end its session."
                .into(),
            "agentd has no memory policy beyond per-call memory.max yet (no memory.high \
             throttling, no freeze-instead-of-kill, no headroom sharing): this replay is the \
             yardstick those will be judged by."
                .into(),
        ],
        files: vec![plot.into()],
        data: json!({"config": cfg, "runs": results}),
        elapsed_s,
    }
}
