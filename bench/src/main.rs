//! `agentd-bench`: agentd's benchmarks (issue 7). `cargo xtask bench` builds it, boots the
//! test VM (cgroup v2 with controllers, the project's binaries on PATH) and runs
//! `agentd-bench suite` there; the suite writes `report.json`, `report.md` and the replay's
//! SVG into `--out` and prints the markdown. The other subcommands are the processes the
//! benchmarks start: the shim agent and the replay's agent and tool-call workers.

mod calls;
mod checkpoint;
mod crun;
mod egress;
mod fixture;
mod footprint;
mod latency;
mod lifecycle;
mod replay;
mod report;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use crate::report::{Machine, Report};

/// The benchmarks, in the order the suite runs them.
const NAMES: [&str; 7] = [
    "calls",
    "lifecycle",
    "footprint",
    "checkpoint",
    "egress",
    "latency",
    "replay",
];

#[derive(Debug, Parser)]
#[command(
    name = "agentd-bench",
    about = "agentd benchmarks (run by `cargo xtask bench`)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run benchmarks (inside the test VM) and write the report.
    Suite {
        /// Small run counts (CI: the whole run, VM boot included, under 5 minutes).
        #[arg(long)]
        quick: bool,
        /// Only these benchmarks (calls, lifecycle, footprint, checkpoint, egress, latency, replay); default all.
        names: Vec<String>,
        /// Directory for report.json, report.md and plots.
        #[arg(long)]
        out: PathBuf,
        /// The host's CPU model (the guest sees QEMU's).
        #[arg(long, default_value = "unknown")]
        host_cpu: String,
        /// The VM's accelerator (TCG or KVM).
        #[arg(long, default_value = "unknown")]
        accel: String,
        /// The recorded agent tasks the replay follows.
        #[arg(long)]
        trace: Option<PathBuf>,
        /// Replay these session counts instead of the default sweep (e.g. `12,14,16`).
        #[arg(long, value_delimiter = ',')]
        replay_sessions: Vec<usize>,
        /// The cargo profile the binaries were built with.
        #[arg(long, default_value = "unknown")]
        profile: String,
    },
    /// (inside a session) time `$SHELL -c true` against `/bin/sh -c true`.
    #[command(hide = true)]
    ShimAgent {
        #[arg(long)]
        n: usize,
        #[arg(long)]
        warmup: usize,
    },
    /// (replay) one session's agent: follows the task's memory, runs its tool calls.
    #[command(hide = true)]
    ReplayAgent {
        /// The session's schedule (JSON, see replay::plan).
        #[arg(long)]
        plan: PathBuf,
        /// How tool calls are started: `child` (a plain child) or `shell` (`$SHELL -c`, so
        /// through agentd-shim inside an agentd session).
        #[arg(long)]
        calls: String,
    },
    /// (egress) the upstream server, inside the upstream network namespace.
    #[command(hide = true)]
    EgressServer {
        #[arg(long)]
        addr: String,
    },
    /// (egress) the client: connect latency and one stream.
    #[command(hide = true)]
    EgressClient {
        #[arg(long)]
        host: String,
        #[arg(long)]
        n: usize,
        #[arg(long)]
        bytes: u64,
    },
    /// (latency) the agent-loop probe: wake every period, work, print each lateness (µs).
    #[command(hide = true)]
    LatencyProbe {
        #[arg(long)]
        period_us: u64,
        #[arg(long)]
        work_us: u64,
        #[arg(long)]
        secs: u64,
    },
    /// (replay) one tool call: holds a memory schedule for its duration.
    #[command(hide = true)]
    ReplayCall {
        /// `ms:MiB,ms:MiB,…` steps relative to the call's start, then exit at `--end-ms`.
        #[arg(long)]
        steps: String,
        #[arg(long)]
        end_ms: u64,
    },
}

fn main() -> ExitCode {
    match dispatch(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentd-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Suite {
            quick,
            names,
            out,
            host_cpu,
            accel,
            profile,
            trace,
            replay_sessions,
        } => suite(
            quick,
            &names,
            &out,
            (host_cpu, accel, profile),
            trace,
            &replay_sessions,
        ),
        Cmd::ShimAgent { n, warmup } => calls::shim_agent(n, warmup),
        Cmd::ReplayAgent { plan, calls } => replay::agent::run(&plan, &calls),
        Cmd::ReplayCall { steps, end_ms } => replay::agent::call(&steps, end_ms),
        Cmd::EgressServer { addr } => egress::server(&addr),
        Cmd::LatencyProbe {
            period_us,
            work_us,
            secs,
        } => latency::probe(period_us, work_us, secs),
        Cmd::EgressClient { host, n, bytes } => egress::client(&host, n, bytes),
    }
}

/// The benchmarks create cgroups, mounts and sessions: only inside the test VM.
fn require_vm() -> Result<()> {
    if std::env::var_os("AGENTD_TEST_VM").is_none()
        || !std::path::Path::new("/run/agentd-test-vm").exists()
    {
        bail!(
            "refusing to run outside the agentd test VM (AGENTD_TEST_VM unset or \
             /run/agentd-test-vm missing): run `cargo xtask bench`"
        );
    }
    Ok(())
}

fn suite(
    quick: bool,
    names: &[String],
    out: &std::path::Path,
    (host_cpu, accel, profile): (String, String, String),
    trace: Option<PathBuf>,
    replay_sessions: &[usize],
) -> Result<()> {
    require_vm()?;
    for n in names {
        if !NAMES.contains(&n.as_str()) {
            bail!(
                "no benchmark named {n:?}; the benchmarks are {}",
                NAMES.join(", ")
            );
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let started = Instant::now();
    let machine = Machine {
        host_cpu,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .context("reading the kernel release")?
            .trim()
            .to_string(),
        accelerator: accel,
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        memory_mib: meminfo_total_kib()? / 1024,
        build_profile: profile,
        date: utc_now()?,
        quick,
    };
    let mut report = Report {
        machine,
        sections: Vec::new(),
        total_s: 0.0,
    };
    for name in NAMES {
        if !names.is_empty() && !names.iter().any(|n| n == name) {
            continue;
        }
        eprintln!(
            "agentd-bench: running {name}{}",
            if quick { " (quick)" } else { "" }
        );
        let section = match name {
            "calls" => calls::run(quick),
            "lifecycle" => lifecycle::run(quick),
            "footprint" => footprint::run(quick),
            "checkpoint" => checkpoint::run(quick),
            "egress" => egress::run(quick),
            "latency" => latency::run(quick),
            _ => match &trace {
                Some(t) => replay::run(quick, out, t, replay_sessions),
                None => Err(anyhow::anyhow!("the replay needs --trace FILE")),
            },
        }
        .with_context(|| format!("benchmark {name}"))?;
        eprintln!("agentd-bench: {name} done in {:.0} s", section.elapsed_s);
        report.sections.push(section);
        report.total_s = started.elapsed().as_secs_f64();
        // Written after each benchmark, so a later failure keeps the earlier figures.
        report.write(out)?;
    }
    println!("{}", report.markdown());
    Ok(())
}

fn meminfo_total_kib() -> Result<u64> {
    let t = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    t.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("/proc/meminfo has no MemTotal")
}

fn utc_now() -> Result<String> {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .context("running date")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
