//! Benchmark 1, tool-call overhead: `true` as a tool call in a running session through the
//! API (POST …/calls, and `agentctl exec`) and through the shim (the agent runs
//! `$SHELL -c true`), against plain fork/exec, fork/exec into a fresh cgroup (mkdir/rmdir),
//! the sandbox layer alone (`agentd-sandbox exec`), a new bubblewrap sandbox per call and
//! `crun exec` into a running container. The outside variants run round-robin, one
//! iteration of each per round, so drift in a shared TCG host hits them all alike.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::json;

use crate::crun::Bundle;
use crate::fixture::{self, Cgroup, Daemon, SandboxSession, Scratch, run_quiet};
use crate::report::{Section, Table, Target};
use crate::stats::{self, Summary, ratio, x};

type Op<'a> = Box<dyn FnMut() -> Result<()> + 'a>;

/// One measured way of running `true`.
struct Variant<'a> {
    name: &'static str,
    what: &'static str,
    op: Op<'a>,
    samples: Vec<Duration>,
    /// Why it stopped (only baselines that may not run are allowed to fail).
    failed: Option<String>,
    may_fail: bool,
}

impl<'a> Variant<'a> {
    fn new(name: &'static str, what: &'static str, op: Op<'a>) -> Variant<'a> {
        Variant {
            name,
            what,
            op,
            samples: Vec::new(),
            failed: None,
            may_fail: false,
        }
    }
}

/// Fork/exec of `argv` into a new cgroup under `parent`, then rmdir: the cheapest honest
/// per-call cgroup (the child joins through cgroup.procs before exec).
fn exec_in_new_cgroup(parent: &Cgroup, seq: u64, argv: &[&str]) -> Result<()> {
    let dir = parent.path.join(format!("c{seq}"));
    fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
    let procs = fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))
        .context("opening cgroup.procs")?;
    let fd = procs.as_raw_fd();
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]);
    // SAFETY: the closure only calls write(2) on an open fd with a static buffer, which is
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let st = cmd.status().with_context(|| format!("running {argv:?}"))?;
    drop(procs);
    fs::remove_dir(&dir).with_context(|| format!("rmdir {}", dir.display()))?;
    if !st.success() {
        bail!("{argv:?} failed: {st}");
    }
    Ok(())
}

/// What the shim agent prints: per-iteration milliseconds of each path.
#[derive(Debug, Deserialize)]
struct ShimTimes {
    shim: Vec<f64>,
    sh: Vec<f64>,
}

/// The agent of the shim measurement (runs INSIDE a session): `$SHELL -c true` (the shim)
/// and `/bin/sh -c true` alternately, `n` times each after `warmup`; prints one JSON line.
pub fn shim_agent(n: usize, warmup: usize) -> Result<()> {
    let shell = std::env::var("SHELL").context("SHELL is not set (not an agentd session?)")?;
    let mut shim = Vec::new();
    let mut sh = Vec::new();
    for i in 0..n + warmup {
        for (prog, out) in [(shell.as_str(), &mut shim), ("/bin/sh", &mut sh)] {
            let t = Instant::now();
            let st = Command::new(prog).args(["-c", "true"]).status()?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            if !st.success() {
                bail!("{prog} -c true failed: {st}");
            }
            if i >= warmup {
                out.push(ms);
            }
        }
    }
    println!("{}", json!({"shim": shim, "sh": sh}));
    Ok(())
}

pub fn run(quick: bool) -> Result<Section> {
    let started = Instant::now();
    let (n, warmup) = if quick { (20, 2) } else { (100, 3) };
    let scratch = Scratch::new("agentd-bench-calls-")?;
    let base = Cgroup::create(
        &format!("agentd-bench-calls-{}", std::process::id()),
        &["memory", "pids", "cpu"],
    )?;
    let daemon_root = base.path.join("agentd");
    let daemon = Daemon::start(&scratch, &daemon_root)?;
    let session = daemon.session(&scratch.repo(), &["sleep", "1000000"])?;
    // The path before the spawner, in the same run: a second session whose spawner socket
    // is unlinked, so the daemon falls back to `agentd-sandbox exec --request-fd 3` for it
    // (as for a session of an older runtime; docs/spawner.md).
    let old_path = daemon.session(&scratch.repo(), &["sleep", "1000000"])?;
    let old_sock = daemon
        .state
        .join("sessions")
        .join(&old_path.id)
        .join(agentd_sandbox::spawner::SOCKET);
    fs::remove_file(&old_sock).with_context(|| format!("rm {}", old_sock.display()))?;
    let sandbox = SandboxSession::start(&scratch, "sandbox-state")?;
    let plain = base.child("plain", &[])?;
    let bundle = Bundle::create(scratch.path(), "crun-exec", &["sleep", "1000000"])?;
    let crun_id = format!("bench-exec-{}", std::process::id());
    let crun_ready = bundle.start_detached(&crun_id);
    let agentctl = fixture::bin("agentctl")?;

    let seq = std::cell::Cell::new(0u64);
    let next = || {
        seq.set(seq.get() + 1);
        seq.get()
    };
    let mut variants = vec![
        Variant::new(
            "fork_exec",
            "plain fork/exec of `true`",
            Box::new(|| run_quiet(&mut Command::new("true"))),
        ),
        Variant::new(
            "fork_exec_cgroup",
            "fork/exec of `true` in a new cgroup (mkdir, join, rmdir)",
            Box::new(|| exec_in_new_cgroup(&plain, next(), &["true"])),
        ),
        Variant::new(
            "sh_cgroup",
            "fork/exec of `sh -c true` in a new cgroup (the shim's baseline)",
            Box::new(|| exec_in_new_cgroup(&plain, next(), &["/bin/sh", "-c", "true"])),
        ),
        Variant::new(
            "sandbox_exec",
            "`agentd-sandbox exec` into a running session (sandbox layer alone, no cgroup)",
            Box::new(|| sandbox.exec(&["true"])),
        ),
        Variant::new(
            "api",
            "agentd tool call: POST /v1/sessions/{id}/calls (own cgroup, limits, report, journal)",
            Box::new(|| daemon.call(&session.id, &["true"]).map(|_| ())),
        ),
        Variant::new(
            "api_exec",
            "the same API call through the fallback path (`agentd-sandbox exec --request-fd 3` per call: the path before the spawner)",
            Box::new(|| daemon.call(&old_path.id, &["true"]).map(|_| ())),
        ),
        Variant::new(
            "agentctl_exec",
            "`agentctl exec ID -- true` (the API path plus the CLI's own start)",
            Box::new(|| {
                run_quiet(
                    Command::new(&agentctl)
                        .arg("--socket")
                        .arg(&daemon.socket)
                        .args(["exec", &session.id, "--", "true"]),
                )
            }),
        ),
        Variant::new(
            "agentctl_start",
            "`agentctl --version`: one exec of the CLI alone (the scale of `agentctl exec`'s own start)",
            Box::new(|| run_quiet(Command::new(&agentctl).arg("--version"))),
        ),
        Variant::new(
            "bwrap",
            "a new bubblewrap sandbox per call (`bwrap --ro-bind / / --unshare-all … true`)",
            Box::new(|| run_quiet(&mut fixture::bwrap(&["true"]))),
        ),
    ];
    let mut crun_variant = Variant::new(
        "crun_exec",
        "`crun exec` into a running crun container",
        Box::new(|| bundle.exec(&crun_id, &["true"])),
    );
    crun_variant.may_fail = true;
    if let Err(e) = &crun_ready {
        crun_variant.failed = Some(format!("crun run --detach failed: {e:#}"));
    }
    variants.push(crun_variant);

    for round in 0..n + warmup {
        for v in variants.iter_mut().filter(|v| v.failed.is_none()) {
            let t = Instant::now();
            match (v.op)() {
                Ok(()) => {
                    if round >= warmup {
                        v.samples.push(t.elapsed());
                    }
                }
                Err(e) if v.may_fail => v.failed = Some(format!("{e:#}")),
                Err(e) => return Err(e.context(format!("variant {}", v.name))),
            }
        }
    }
    let mut sums: Vec<(&str, &str, Option<Summary>, Option<String>)> = variants
        .iter()
        .map(|v| (v.name, v.what, Summary::of(&v.samples), v.failed.clone()))
        .collect();
    drop(variants);
    bundle.delete(&crun_id);
    drop(sandbox);

    // The shim path: an agent in its own session times `$SHELL -c true` from inside.
    let agent_argv = vec![
        fixture::bin("agentd-bench")?.to_string_lossy().into_owned(),
        "shim-agent".into(),
        "--n".into(),
        n.to_string(),
        "--warmup".into(),
        warmup.to_string(),
    ];
    let shim_session = daemon.session_with_policy(&scratch.repo(), "version = 1\n", &agent_argv)?;
    let ended = daemon.wait(&shim_session.id)?;
    let out = daemon.stdout(&shim_session.id)?;
    if ended.exit_code != Some(0) {
        bail!("the shim agent failed ({:?}): {out}", ended.exit_code);
    }
    let times: ShimTimes = out
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("the shim agent printed no timings: {out:?}"))?;
    // Exec capture (docs/capture.md): the same agent in a session with `capture = "exec"`;
    // its plain `/bin/sh -c true` is a call captured in the kernel.
    let capture_policy = "version = 1\n\n[session]\ncapture = \"exec\"\n";
    let cap_session = daemon.session_with_policy(&scratch.repo(), capture_policy, &agent_argv)?;
    let ended = daemon.wait(&cap_session.id)?;
    let out = daemon.stdout(&cap_session.id)?;
    if ended.exit_code != Some(0) {
        bail!("the capture agent failed ({:?}): {out}", ended.exit_code);
    }
    let captured: ShimTimes = out
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("the capture agent printed no timings: {out:?}"))?;
    drop(daemon);

    sums.push((
        "shim",
        "agentd tool call from inside: the agent runs `$SHELL -c true` (agentd-shim → daemon → calls/<n> → sh)",
        Summary::of_ms(&times.shim),
        None,
    ));
    sums.push((
        "sh_in_session",
        "the same agent runs `/bin/sh -c true` directly (no tool call)",
        Summary::of_ms(&times.sh),
        None,
    ));
    sums.push((
        "exec_capture",
        "the same agent in a `session.capture = \"exec\"` session runs `/bin/sh -c true`: the exec held by seccomp user notification → spawner → daemon → calls/<n>",
        Summary::of_ms(&captured.sh),
        None,
    ));
    Ok(section(&sums, n, warmup, started.elapsed().as_secs_f64()))
}

fn section(
    sums: &[(&str, &str, Option<Summary>, Option<String>)],
    n: usize,
    warmup: usize,
    elapsed_s: f64,
) -> Section {
    let med = |name: &str| {
        sums.iter()
            .find(|s| s.0 == name)
            .and_then(|s| s.2.as_ref())
            .map(|s| s.median_ms)
    };
    let fe = med("fork_exec");
    let fec = med("fork_exec_cgroup");
    let bw = med("bwrap");
    let mut t = Table::new(
        &format!("`true` per call, {n} timed iterations each after {warmup} warm-up rounds (ms)."),
        &[
            "variant",
            "what",
            "n",
            "median",
            "p95",
            "÷ fork/exec",
            "÷ fork/exec+cgroup",
            "bwrap ÷ this",
        ],
    );
    let mut data = serde_json::Map::new();
    for (name, what, s, failed) in sums {
        match s {
            Some(s) => {
                let r = |b: Option<f64>| x(b.and_then(|b| ratio(s.median_ms, b)));
                t.row(vec![
                    format!("`{name}`"),
                    what.to_string(),
                    s.n.to_string(),
                    stats::ms(s.median_ms),
                    stats::ms(s.p95_ms),
                    r(fe),
                    r(fec),
                    x(bw.and_then(|b| ratio(b, s.median_ms))),
                ]);
                data.insert(name.to_string(), json!(s));
            }
            None => {
                let why = failed.clone().unwrap_or_else(|| "no samples".into());
                t.not_run(name, what, &why);
                data.insert(name.to_string(), json!({"error": why}));
            }
        }
    }
    let mut targets = Vec::new();
    // Issue 15's goals (the spawner's fast path).
    for (path, base) in [("api", "fork_exec_cgroup"), ("shim", "sh_cgroup")] {
        let (p, b) = (med(path), med(base));
        let speedup = bw.zip(p).and_then(|(bw, p)| ratio(bw, p));
        targets.push(Target {
            what: format!("`{path}` vs `bwrap` per call"),
            goal: ">= 2.5x faster".into(),
            measured: format!("{} faster", x(speedup)),
            met: speedup.map(|s| s >= 2.5),
        });
        let over = p.zip(b).and_then(|(p, b)| ratio(p, b));
        targets.push(Target {
            what: format!("`{path}` vs `{base}`"),
            goal: "<= 1.3x".into(),
            measured: x(over),
            met: over.map(|o| o <= 1.3),
        });
    }
    // Issue 17: a call captured at exec costs no more than a shim call.
    let cap = med("exec_capture")
        .zip(med("shim"))
        .and_then(|(c, s)| ratio(c, s));
    targets.push(Target {
        what: "`exec_capture` vs `shim`".into(),
        goal: "<= 1.2x".into(),
        measured: x(cap),
        met: cap.map(|c| c <= 1.2),
    });
    // The spawner's own gain, measured in this run against the fallback path.
    let gain = med("api")
        .zip(med("api_exec"))
        .and_then(|(a, o)| ratio(a, o));
    targets.push(Target {
        what: "`api` vs `api_exec` (spawner vs `agentd-sandbox exec` per call)".into(),
        goal: "< 1x".into(),
        measured: x(gain),
        met: gain.map(|g| g < 1.0),
    });
    // agentctl exec: the API path plus one exec of the CLI.
    let budget = fec.zip(med("agentctl_start")).map(|(f, a)| 1.5 * f + a);
    let ax = med("agentctl_exec");
    targets.push(Target {
        what: "`agentctl_exec` vs 1.5 x `fork_exec_cgroup` + `agentctl_start`".into(),
        goal: "<= 1x".into(),
        measured: format!(
            "{} ({} vs {} ms)",
            x(ax.zip(budget).and_then(|(a, b)| ratio(a, b))),
            ax.map_or("-".into(), stats::ms),
            budget.map_or("-".into(), stats::ms)
        ),
        met: ax.zip(budget).map(|(a, b)| a <= b),
    });
    Section {
        name: "calls".into(),
        title: "Tool-call overhead".into(),
        tables: vec![t],
        targets,
        notes: vec![
            "Outside variants run round-robin (one iteration of each per round); the shim pair \
             alternates inside one agent. Ratios are of medians from this run."
                .into(),
            "`api` and `agentctl_exec` time the whole client round trip; the daemon creates \
             `calls/<n>` with memory.max, memory.oom.group, cpu.weight and pids.max, has the \
             session's call spawner fork the tool straight into it (docs/spawner.md: one exec \
             per call), reads the cgroup report, removes the cgroup and journals the call \
             (SQLite) before answering. `sandbox_exec` is the old per-call sandbox layer \
             (an exec of `agentd-sandbox exec`, its namespace joins, then the tool's exec); \
             `api_exec` is the whole API call through it, in a second session whose spawner \
             socket was removed (the daemon's fallback)."
                .into(),
            "The shim path compares `sh -c true` through agentd-shim with `sh -c true` in a \
             fresh cgroup outside any session (`sh_cgroup`)."
                .into(),
        ],
        files: vec![],
        data: serde_json::Value::Object(data),
        elapsed_s,
    }
}
