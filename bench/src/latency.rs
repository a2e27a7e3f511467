//! Benchmark `latency`: the agent loop's wake-up latency beside builds (issue 14). A probe
//! in an agent cgroup (`agentd-bench latency-probe`: wakes every 10 ms on an absolute timer,
//! works 200 µs, records how late each wake-up was) runs beside 2 and 4 sessions, each running
//! a real `make -j<cpus>` of CPU-bound targets (a shell loop per target, so many short
//! processes, as a build). Arms, in the same run:
//! - `eevdf`: the fair class tuned as agentd tunes it without sched_ext: the agent leaf's
//!   cpu.weight 200 (latency), each build's 50 (batch), the build's processes SCHED_BATCH.
//! - `agentd`: the same cgroups and weights with agentd's sched_ext scheduler attached
//!   (`agentd_bpf::sched`), every task SCHED_EXT, the probe's cgroup latency class and each
//!   build batch, one session slot each.
//!
//! Figures: the probe's p50/p99 wake-up latency while the builds run and the builds' wall
//! time (all sessions' makes started together, until the last ends). Targets: p99 ≤ 0.5x
//! eevdf, build wall ≤ 1.05x eevdf.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::fixture::{Cgroup, Scratch, bin};
use crate::report::{Section, Table, Target};
use crate::stats::{percentile, ratio, sorted, x};

const SCHED_BATCH: i32 = 3;
const SCHED_EXT: i32 = 7;

/// `agentd-bench latency-probe`: every `period_us`, sleep to the next absolute tick, print
/// how late the wake-up was (µs), then spin `work_us`; until stdin closes or `secs` pass.
pub fn probe(period_us: u64, work_us: u64, secs: u64) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let clock = libc::CLOCK_MONOTONIC;
    let now = || {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the live timespec.
        unsafe { libc::clock_gettime(clock, &mut t) };
        t.tv_sec as i128 * 1_000_000_000 + t.tv_nsec as i128
    };
    let start = now();
    let mut target = start;
    let end = start + i128::from(secs) * 1_000_000_000;
    while target < end {
        target += i128::from(period_us) * 1000;
        let ts = libc::timespec {
            tv_sec: (target / 1_000_000_000) as libc::time_t,
            tv_nsec: (target % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: an absolute sleep on a live timespec; no remainder is needed.
        unsafe { libc::clock_nanosleep(clock, libc::TIMER_ABSTIME, &ts, std::ptr::null_mut()) };
        let woke = now();
        let late_us = (woke - target) / 1000;
        if writeln!(out, "{late_us}")
            .and_then(|()| out.flush())
            .is_err()
        {
            return Ok(());
        }
        let until = woke + i128::from(work_us) * 1000;
        while now() < until {
            std::hint::spin_loop();
        }
        // A wake-up later than a period: the next tick is from now (count each miss once).
        if now() > target + i128::from(period_us) * 1000 {
            target = now();
        }
    }
    Ok(())
}

fn makefile(dir: &Path, targets: usize, loops: u32) -> Result<()> {
    let mut m = String::from(".PHONY: all\nall:");
    for i in 0..targets {
        m.push_str(&format!(" t{i}"));
    }
    m.push('\n');
    for i in 0..targets {
        m.push_str(&format!(
            "t{i}:\n\t@i=0; while [ $$i -lt {loops} ]; do i=$$((i+1)); done\n"
        ));
    }
    std::fs::write(dir.join("Makefile"), m).context("writing the Makefile")
}

/// Starts `cmd` inside `cg` with `policy` (pre-exec: join the cgroup, set the policy).
fn spawn_in(cmd: &mut Command, cg: &Path, policy: i32) -> Result<std::process::Child> {
    let procs = std::ffi::CString::new(cg.join("cgroup.procs").as_os_str().as_encoded_bytes())?;
    // SAFETY: the closure only makes async-signal-safe syscalls (open, write, close,
    // sched_setscheduler) on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let w = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if w != 1 {
                return Err(std::io::Error::last_os_error());
            }
            let param = libc::sched_param { sched_priority: 0 };
            if policy != 0 && libc::sched_setscheduler(0, policy, &param) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().context("spawning into the benchmark cgroup")
}

struct Arm {
    p50_us: f64,
    p99_us: f64,
    samples: usize,
    build_s: f64,
}

fn run_arm(
    base: &Cgroup,
    scratch: &Scratch,
    sessions: usize,
    agentd: bool,
    targets: usize,
    loops: u32,
) -> Result<Arm> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let arm = base.child(
        &format!("{}-{sessions}", if agentd { "agentd" } else { "eevdf" }),
        &["cpu"],
    )?;
    let agent_s = arm.child("agent-session", &["cpu"])?;
    let agent = agent_s.child("agent", &[])?;
    agent.write("cpu.weight", "200")?;
    let mut builds = Vec::new();
    for i in 0..sessions {
        let s = arm.child(&format!("session-{i}"), &["cpu"])?;
        let b = s.child("build", &[])?;
        b.write("cpu.weight", "50")?;
        builds.push((s, b));
    }
    let sched = if agentd {
        use agentd_bpf::sched::{Class, Config, Entry, Scheduler};
        let s = Scheduler::load(&Config::default(), true)
            .context("loading agentd's scheduler")?
            .context("the scheduler did not attach")?;
        let id = |p: &Path| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        let e = |slot, class, w| Entry {
            slot,
            class,
            call_weight: w,
            session_weight: 100,
        };
        s.set(id(&agent.path)?, e(1, Class::Latency, 200))?;
        for (i, (_, b)) in builds.iter().enumerate() {
            s.set(id(&b.path)?, e(2 + i as u32, Class::Batch, 50))?;
        }
        Some(s)
    } else {
        None
    };
    let (probe_policy, build_policy) = if agentd {
        (SCHED_EXT, SCHED_EXT)
    } else {
        (0, SCHED_BATCH)
    };
    let dir = scratch.path().join(format!("make-{sessions}-{agentd}"));
    std::fs::create_dir_all(&dir)?;
    makefile(&dir, targets, loops)?;
    let mut probe = spawn_in(
        Command::new(bin("agentd-bench")?)
            .args(["latency-probe", "--period-us", "10000", "--work-us", "200"])
            .args(["--secs", "3600"])
            .stdout(Stdio::piped()),
        &agent.path,
        probe_policy,
    )?;
    let lines = BufReader::new(probe.stdout.take().context("probe stdout")?);
    let reader = std::thread::spawn(move || {
        lines
            .lines()
            .map_while(|l| l.ok())
            .filter_map(|l| l.trim().parse::<f64>().ok())
            .collect::<Vec<f64>>()
    });
    // The probe settles for half a second before the builds start.
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let mut makes = Vec::new();
    for (_, b) in &builds {
        makes.push(spawn_in(
            Command::new("make")
                .arg(format!("-j{cpus}"))
                .arg("-s")
                .current_dir(&dir)
                .stdout(Stdio::null()),
            &b.path,
            build_policy,
        )?);
    }
    let mut ok = true;
    for m in &mut makes {
        ok &= m.wait().map(|s| s.success()).unwrap_or(false);
    }
    let build_s = started.elapsed().as_secs_f64();
    let before = Instant::now();
    let _ = probe.kill();
    let _ = probe.wait();
    let all = reader
        .join()
        .map_err(|_| anyhow::anyhow!("probe reader panicked"))?;
    // Only the wake-ups while the builds ran: drop the 50 settling ones (0.5 s) and the
    // ones after the builds (none: the probe is killed at once).
    let _ = before;
    let during: Vec<f64> = all.into_iter().skip(50).collect();
    if let Some(s) = &sched {
        let st = s.stats().context("scheduler stats")?;
        if let Some(why) = st.exit {
            bail!("the kernel ended agentd's scheduler during the run: {why}");
        }
        eprintln!("latency: scheduler stats ({sessions} sessions): {st:?}");
    }
    drop(sched);
    if !ok {
        bail!("a build failed");
    }
    let sorted = sorted(&during);
    Ok(Arm {
        p50_us: percentile(&sorted, 50.0).unwrap_or(f64::NAN),
        p99_us: percentile(&sorted, 99.0).unwrap_or(f64::NAN),
        samples: sorted.len(),
        build_s,
    })
}

pub fn run(quick: bool) -> Result<Section> {
    let started = Instant::now();
    let (targets, loops) = if quick { (16, 20_000) } else { (48, 40_000) };
    let scratch = Scratch::new("agentd-bench-latency-")?;
    let base = Cgroup::create(
        &format!("agentd-bench-latency-{}", std::process::id()),
        &["cpu"],
    )?;
    let ext = agentd_bpf::btf::KernelBtf::load(Path::new(agentd_bpf::btf::VMLINUX_BTF))
        .map(|b| agentd_bpf::sched::probe(&b).is_ok())
        .unwrap_or(false);
    let mut table = Table::new(
        "Probe wake-up latency (10 ms period, 200 µs work) beside N sessions of `make -j`",
        &[
            "arm",
            "sessions",
            "wake-ups",
            "p50 (µs)",
            "p99 (µs)",
            "build wall (s)",
        ],
    );
    let mut targets_out = Vec::new();
    let mut data = Vec::new();
    for n in [2usize, 4] {
        let e = run_arm(&base, &scratch, n, false, targets, loops)?;
        table.row(vec![
            "`eevdf` (cpu.weight, SCHED_BATCH)".into(),
            n.to_string(),
            e.samples.to_string(),
            format!("{:.0}", e.p50_us),
            format!("{:.0}", e.p99_us),
            format!("{:.2}", e.build_s),
        ]);
        let a = if ext {
            Some(run_arm(&base, &scratch, n, true, targets, loops)?)
        } else {
            table.not_run(
                "agentd",
                &format!("{n} sessions"),
                "this kernel has no sched_ext",
            );
            None
        };
        if let Some(a) = &a {
            table.row(vec![
                "`agentd` (sched_ext)".into(),
                n.to_string(),
                a.samples.to_string(),
                format!("{:.0}", a.p50_us),
                format!("{:.0}", a.p99_us),
                format!("{:.2}", a.build_s),
            ]);
        }
        let p99 = a.as_ref().and_then(|a| ratio(a.p99_us, e.p99_us));
        let wall = a.as_ref().and_then(|a| ratio(a.build_s, e.build_s));
        targets_out.push(Target {
            what: format!("p99 wake-up latency, agentd vs eevdf, {n} sessions"),
            goal: "<= 0.5x".into(),
            measured: x(p99),
            met: p99.map(|r| r <= 0.5),
        });
        targets_out.push(Target {
            what: format!("build wall time, agentd vs eevdf, {n} sessions"),
            goal: "<= 1.05x".into(),
            measured: x(wall),
            met: wall.map(|r| r <= 1.05),
        });
        data.push(json!({
            "sessions": n,
            "eevdf": {"p50_us": e.p50_us, "p99_us": e.p99_us, "samples": e.samples, "build_s": e.build_s},
            "agentd": a.as_ref().map(|a| json!({"p50_us": a.p50_us, "p99_us": a.p99_us, "samples": a.samples, "build_s": a.build_s})),
        }));
    }
    Ok(Section {
        name: "latency".into(),
        title: "Agent-loop latency beside builds (sched_ext vs tuned EEVDF)".into(),
        tables: vec![table],
        targets: targets_out,
        notes: vec![
            format!(
                "Each session's build: `make -j<cpus>` of {targets} targets, each a shell loop of {loops} iterations; all sessions' makes start together; wall time until the last ends."
            ),
            "Wake-up latency: how late the probe's absolute 10 ms timer wake-up was (clock_nanosleep TIMER_ABSTIME), first 50 wake-ups (before the builds) dropped.".into(),
            "Arms run one after the other in the same VM boot; under TCG absolute times are inflated, compare ratios.".into(),
        ],
        files: Vec::new(),
        data: json!(data),
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}
