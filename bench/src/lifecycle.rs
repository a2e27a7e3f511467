//! Benchmark 2, session lifecycle: create → first command → destroy. agentd through the
//! daemon (POST session, POST call `true`, DELETE, until its state is gone), the sandbox
//! alone (`agentd-sandbox run -- true`), a `bwrap … true`, and `crun run` of an equivalent
//! bundle; plain fork/exec of `true` for scale. Round-robin like the call benchmark.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::json;

use crate::crun::Bundle;
use crate::fixture::{self, Cgroup, Daemon, Scratch, run_quiet};
use crate::report::{Section, Table, Target};
use crate::stats::{self, Summary, ratio, x};

type Op<'a> = Box<dyn FnMut(usize) -> Result<()> + 'a>;
/// (name, what, how, samples, why it stopped).
type Variant<'a> = (&'a str, &'a str, Op<'a>, Vec<Duration>, Option<String>);

/// Waits until the daemon's runtime has removed the session's state dir (teardown done).
fn wait_gone(p: &Path) -> Result<()> {
    let t = Instant::now();
    while p.exists() {
        if t.elapsed() > Duration::from_secs(60) {
            bail!("{} still exists 60 s after DELETE", p.display());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

pub fn run(quick: bool) -> Result<Section> {
    let started = Instant::now();
    let (n, warmup) = if quick { (5, 1) } else { (30, 2) };
    let scratch = Scratch::new("agentd-bench-life-")?;
    let base = Cgroup::create(
        &format!("agentd-bench-life-{}", std::process::id()),
        &["memory", "pids", "cpu"],
    )?;
    let daemon = Daemon::start(&scratch, &base.path.join("agentd"))?;
    let bundle = Bundle::create(scratch.path(), "crun-run", &["true"])?;
    let repo = scratch.repo();
    let pid = std::process::id();

    let mut variants: Vec<Variant<'_>> = vec![
        (
            "fork_exec",
            "plain fork/exec of `true` (scale)",
            Box::new(|_| run_quiet(&mut Command::new("true"))),
            Vec::new(),
            None,
        ),
        (
            "agentd",
            "daemon: POST /v1/sessions → POST …/calls `true` → DELETE, until the state is gone",
            Box::new(|_| {
                let s = daemon.session(&repo, &["sleep", "1000000"])?;
                daemon.call(&s.id, &["true"])?;
                daemon.destroy(&s.id)?;
                wait_gone(&daemon.state.join("sessions").join(&s.id))
            }),
            Vec::new(),
            None,
        ),
        (
            "sandbox_run",
            "`agentd-sandbox run -- true` (the sandbox alone: namespaces, overlay, tmpfs state, teardown)",
            Box::new(|i| {
                let state = scratch.path().join(format!("sb-{i}"));
                let req =
                    agentd_sandbox::launch::RunRequest::default_for(&repo, &state, &["true"])?;
                run_quiet(&mut fixture::sandbox()?.run(&req, None)?)
            }),
            Vec::new(),
            None,
        ),
        (
            "bwrap",
            "`bwrap --ro-bind / / --unshare-all … true`",
            Box::new(|_| run_quiet(&mut fixture::bwrap(&["true"]))),
            Vec::new(),
            None,
        ),
        (
            "crun_run",
            "`crun run` of an equivalent bundle (user+pid+net+ipc+uts+mount+cgroup ns, ro /usr /etc)",
            Box::new(|i| bundle.run(&format!("bench-run-{pid}-{i}"))),
            Vec::new(),
            None,
        ),
    ];
    for round in 0..n + warmup {
        for v in variants.iter_mut().filter(|v| v.4.is_none()) {
            let t = Instant::now();
            match (v.2)(round) {
                Ok(()) if round >= warmup => v.3.push(t.elapsed()),
                Ok(()) => {}
                // crun is a baseline "if it runs"; everything else must work.
                Err(e) if v.0 == "crun_run" => v.4 = Some(format!("{e:#}")),
                Err(e) => return Err(e.context(format!("lifecycle variant {}", v.0))),
            }
        }
    }
    let sums: Vec<(String, String, Option<Summary>, Option<String>)> = variants
        .iter()
        .map(|v| {
            (
                v.0.to_string(),
                v.1.to_string(),
                Summary::of(&v.3),
                v.4.clone(),
            )
        })
        .collect();
    drop(variants);
    drop(daemon);
    Ok(section(&sums, n, warmup, started.elapsed().as_secs_f64()))
}

fn section(
    sums: &[(String, String, Option<Summary>, Option<String>)],
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
    let (bw, cr) = (med("bwrap"), med("crun_run"));
    let mut t = Table::new(
        &format!("create → first command → destroy, {n} timed rounds after {warmup} warm-up (ms)."),
        &[
            "variant",
            "what",
            "n",
            "median",
            "p95",
            "÷ bwrap",
            "÷ crun run",
        ],
    );
    let mut data = serde_json::Map::new();
    for (name, what, s, failed) in sums {
        if let Some(s) = s {
            let r = |b: Option<f64>| x(b.and_then(|b| ratio(s.median_ms, b)));
            t.row(vec![
                format!("`{name}`"),
                what.clone(),
                s.n.to_string(),
                stats::ms(s.median_ms),
                stats::ms(s.p95_ms),
                r(bw),
                r(cr),
            ]);
            data.insert(name.clone(), json!(s));
        } else {
            let why = failed.clone().unwrap_or_else(|| "no samples".into());
            t.not_run(name, what, &why);
            data.insert(name.clone(), json!({"error": why}));
        }
    }
    let mut targets = Vec::new();
    for path in ["agentd", "sandbox_run"] {
        let p = med(path);
        let vs_crun = p.zip(cr).and_then(|(p, c)| ratio(p, c));
        targets.push(Target {
            what: format!("`{path}` vs `crun_run`"),
            goal: "<= 1x".into(),
            measured: x(vs_crun),
            met: vs_crun.map(|r| r <= 1.0),
        });
        let vs_bw = p.zip(bw).and_then(|(p, b)| ratio(p, b));
        targets.push(Target {
            what: format!("`{path}` vs `bwrap`"),
            goal: "<= 1.2x".into(),
            measured: x(vs_bw),
            met: vs_bw.map(|r| r <= 1.2),
        });
    }
    Section {
        name: "lifecycle".into(),
        title: "Session lifecycle".into(),
        tables: vec![t],
        targets,
        notes: vec![
            "`agentd` is timed at the client: the session is running when POST /v1/sessions \
             answers, the call has its report when POST …/calls answers, and the round ends \
             when the runtime has removed the session's state dir after DELETE."
                .into(),
            "The sandbox adds what bwrap and crun do not: an overlay of the repo, a sized tmpfs \
             for the session state, Landlock and a seccomp filter; the daemon adds the session \
             cgroups and the journal."
                .into(),
        ],
        files: vec![],
        data: serde_json::Value::Object(data),
        elapsed_s,
    }
}
