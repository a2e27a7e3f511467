//! agentd's live features, black-box through the real binaries in the test VM: an attached
//! `agentctl run` (output as it comes, stdin forwarded, the agent's exit status), streamed
//! `exec`, `logs -f`, `stats`, `--json` on every command, completions and man pages, the
//! in-process daemon of a root `agentctl run` without a daemon, journald priorities, and a
//! shim call whose exit status survives a kill -9 of the daemon.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod daemon_common;
use daemon_common::*;

/// Reads lines from `r` until one contains `needle`; returns everything read.
fn read_until(r: &mut impl BufRead, needle: &str) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).unwrap();
        all.push_str(&line);
        if n == 0 || line.contains(needle) {
            return all;
        }
    }
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn daemon_attached_run_streams_output_forwards_stdin_and_exits_with_the_agents_status() {
    let _vm = agentd_tests::vm::enter();
    let d = Daemon::start();
    let repo = d.repo.to_str().unwrap().to_string();
    // The agent prints, then waits for a line on its stdin, then is killed by a signal.
    let mut run = d
        .ctl(&[
            "run",
            "--workspace",
            &repo,
            "--",
            "/bin/sh",
            "-c",
            "echo first; echo to-stderr >&2; read line; echo got:$line; kill -TERM $$",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(run.stdout.take().unwrap());
    // "first" arrives while the agent still runs (it waits for our line): output is live.
    let seen = read_until(&mut out, "first");
    assert!(seen.contains("first"), "{seen}");
    let ps = d.json(&["ps"]);
    assert_eq!(ps[0]["state"], "running", "{ps}");
    run.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let rest = read_until(&mut out, "got:");
    assert!(rest.contains("got:hello"), "{rest}");
    let status = run.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut run.stderr.take().unwrap(), &mut err).unwrap();
    eprintln!("stderr: {err}");
    assert!(err.contains("to-stderr"), "{err}");
    // SIGTERM: 128 + 15.
    assert_eq!(status.code(), Some(143), "{status}");
    let s = &d.json(&["ps", "--all"])[0];
    assert_eq!(s["exit_code"], 143, "{s}");

    // An agent reading stdin to its end gets end-of-file when ours ends.
    let out = d
        .ctl(&["run", "--workspace", &repo, "--", "/bin/sh", "-c", "wc -l"])
        .stdin(Stdio::from(fs::File::open("/etc/passwd").unwrap()))
        .output()
        .unwrap();
    let lines = fs::read_to_string("/etc/passwd").unwrap().lines().count();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        lines.to_string()
    );
    assert!(out.status.success());
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn daemon_exec_streams_logs_follow_and_stats_show_live_usage() {
    let _vm = agentd_tests::vm::enter();
    let d = Daemon::start();
    let id = d.session();
    // exec prints the call's output as it comes: "one" while the call still runs.
    let mut call = d
        .ctl(&["exec", &id, "--", "sh", "-c", "echo one; sleep 4; echo two"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(call.stdout.take().unwrap());
    let seen = read_until(&mut out, "one");
    assert!(seen.contains("one"), "{seen}");
    let cg = d.session_cgroup(&id).join("calls/1");
    assert!(
        cg.exists(),
        "the call had ended before its first line arrived"
    );
    // stats while the call runs: the session, its agent leaf and call 1.
    let st = d.json(&["stats", &id]);
    eprintln!("{st:#}");
    let s = &st[0];
    assert_eq!(s["id"], id.as_str());
    assert!(s["usage"]["memory_current"].as_u64().unwrap() > 0, "{s}");
    assert!(s["agent"]["pids_current"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["usage"]["cpu_usage_usec"].as_u64().is_some(), "{s}");
    let c = &s["calls"][0];
    assert_eq!(c["n"], 1, "{s}");
    assert_eq!(c["argv"][0], "sh", "{s}");
    assert!(c["usage"]["pids_current"].as_u64().unwrap() >= 1, "{s}");
    let all = d.json(&["stats"]);
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
    let table = d.run(&["stats"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("call 1"));
    let rest = read_until(&mut out, "two");
    assert!(rest.contains("two"), "{rest}");
    let o = call.wait_with_output().unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("report:"));

    // logs -f: follows a detached agent's output until it exits, then returns.
    let repo = d.repo.to_str().unwrap().to_string();
    let out = d.run(&[
        "run",
        "--detach",
        "--workspace",
        &repo,
        "--",
        "/bin/sh",
        "-c",
        "echo early; sleep 3; echo late >&2",
    ]);
    let sid = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let f = d.run(&["logs", "-f", &sid]);
    assert!(f.status.success());
    assert!(String::from_utf8_lossy(&f.stdout).contains("early"));
    assert!(String::from_utf8_lossy(&f.stderr).contains("late"));
    assert_ne!(d.json(&["inspect", &sid])["state"], "running");
    // A session that is not running has no live stats: 409 with the reason.
    let st = d.run(&["stats", &sid]);
    assert!(String::from_utf8_lossy(&st.stderr).contains("409"));
}

/// Parses stdout as one JSON document, or as NDJSON (every line a JSON object).
fn parses_as_json(out: &[u8]) -> bool {
    let text = String::from_utf8_lossy(out);
    serde_json::from_str::<Value>(&text).is_ok()
        || (!text.trim().is_empty()
            && text
                .lines()
                .all(|l| serde_json::from_str::<Value>(l).is_ok()))
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn daemon_every_agentctl_command_speaks_json_and_completions_and_man_pages_generate() {
    let _vm = agentd_tests::vm::enter();
    let d = Daemon::start();
    let repo = d.repo.to_str().unwrap().to_string();
    let id = d.session();
    let policy = d.root.join("policy.toml");
    fs::write(&policy, "version = 1\n").unwrap();
    let policy = policy.to_str().unwrap().to_string();
    let man = d.root.join("man");
    let man_s = man.to_str().unwrap().to_string();
    let cases: Vec<Vec<&str>> = vec![
        vec!["run", "--workspace", &repo, "--", "echo", "hi"],
        vec!["run", "--detach", "--workspace", &repo, "--", "sleep", "1"],
        vec!["exec", &id, "--", "echo", "x"],
        vec!["ps"],
        vec!["calls", &id],
        vec!["stats"],
        vec!["stats", &id],
        vec!["inspect", &id],
        vec!["logs", &id],
        vec!["doctor"],
        vec!["policy", "check", &policy],
        vec!["policy", "explain", &policy, "--", "make"],
        vec!["policy", "schema"],
        vec!["completions", "bash"],
        vec!["man", &man_s],
        vec!["kill", &id],
        vec!["logs", "-f", &id],
        vec!["rm", &id],
    ];
    for args in cases {
        let mut a = vec!["--json"];
        a.extend_from_slice(&args);
        let out = d.run(&a);
        assert!(
            parses_as_json(&out.stdout),
            "agentctl {a:?} did not print JSON"
        );
    }
    // The generated completion scripts and man pages.
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef agentctl"),
        ("fish", "complete -c agentctl"),
    ] {
        let out = d.run(&["completions", shell]);
        assert!(out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(marker),
            "{shell}"
        );
    }
    for page in ["agentctl.1", "agentctl-run.1", "agentctl-policy-explain.1"] {
        let text = fs::read_to_string(man.join(page)).unwrap();
        assert!(text.contains(".TH"), "{page}");
    }
    let out = Command::new(agentd_tests::project_binary("agentd"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("complete -F"));
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn daemon_root_agentctl_run_without_a_daemon_runs_one_in_process_and_cleans_up() {
    let _vm = agentd_tests::vm::enter();
    let d = Daemon::new(); // the fixture's repo, no daemon
    let repo = d.repo.to_str().unwrap().to_string();
    let none = d.root.join("none.sock");
    let ctl = agentd_tests::project_binary("agentctl");
    // A user without a daemon is told how to start one.
    let out = Command::new(&ctl)
        .arg("--socket")
        .arg(&none)
        .args(["run", "--workspace", &repo, "--", "true"])
        .uid(USER)
        .gid(USER)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no agentd daemon") && err.contains("sudo agentctl run"),
        "{err}"
    );
    // Root: a daemon inside agentctl for this one session, calls through the shim work.
    let child = Command::new(&ctl)
        .arg("--socket")
        .arg(&none)
        .args([
            "run",
            "--workspace",
            &repo,
            "--",
            "/bin/sh",
            "-c",
            "echo inproc; $SHELL -c 'echo via-shim'; exit 4",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    let se = String::from_utf8_lossy(&out.stderr);
    eprintln!("stdout:\n{so}\nstderr:\n{se}");
    assert_eq!(out.status.code(), Some(4));
    assert!(so.contains("inproc") && so.contains("via-shim"), "{so}");
    assert!(se.contains("inside this process"), "{se}");
    // The calls table is shown before the daemon goes away: one call, exited.
    assert!(
        se.contains("exited") && se.contains("echo via-shim"),
        "{se}"
    );
    // Nothing left: its cgroup root, state dir and socket.
    assert!(!PathBuf::from(format!("/sys/fs/cgroup/agentctl-run-{pid}")).exists());
    assert!(!PathBuf::from(format!("/var/lib/agentd/agentctl-run-{pid}")).exists());
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn daemon_logs_carry_journald_priorities_under_journal_stream() {
    let _vm = agentd_tests::vm::enter();
    let d = Daemon::new();
    let log = d.root.join("stderr.log");
    let f = fs::File::create(&log).unwrap();
    let md = f.metadata().unwrap();
    let mut child = Command::new(agentd_tests::project_binary("agentd"))
        .env("JOURNAL_STREAM", format!("{}:{}", md.dev(), md.ino()))
        .arg("serve")
        .arg("--socket")
        .arg(&d.socket)
        .arg("--state-dir")
        .arg(d.root.join("state"))
        .arg("--cgroup-root")
        .arg(&d.cgroup_root)
        .arg("--shim-bin")
        .arg(d.root.join("agentd-shim"))
        .stderr(Stdio::from(f))
        .spawn()
        .unwrap();
    // Until it says it listens (its signal handling is up then; the socket file exists a
    // little earlier, and a SIGTERM in between ends it before it logs anything).
    let t = Instant::now();
    while !fs::read_to_string(&log).is_ok_and(|t| t.contains("listening on")) {
        assert!(t.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    let text = fs::read_to_string(&log).unwrap();
    eprintln!("{text}");
    assert!(
        text.lines().any(|l| l.starts_with("<6>listening on")),
        "{text}"
    );
    assert!(text.lines().all(|l| l.starts_with('<')), "{text}");
    let _ = fs::remove_dir(&d.cgroup_root);
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn daemon_kill_9_while_a_shim_call_runs_keeps_its_exit_status() {
    let _vm = agentd_tests::vm::enter();
    let mut d = Daemon::start();
    let repo = d.repo.to_str().unwrap().to_string();
    let out = d.run(&[
        "run",
        "--detach",
        "--workspace",
        &repo,
        "--",
        "/bin/sh",
        "-c",
        "$SHELL -c 'sleep 6; exit 7'; sleep 600",
    ]);
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let scg = d.session_cgroup(&id);
    let t = Instant::now();
    while fs::read_to_string(scg.join("calls/1/cgroup.procs")).map_or(true, |p| p.trim().is_empty())
    {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the shim call never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    d.crash();
    d.spawn();
    let c = d.first_call_once_ended(&id);
    // The agent's output (the shim's complaints, if any) for the log.
    d.run(&["logs", &id]);
    assert_eq!(c["state"], "exited", "{c}");
    // The shim reported its status to the new daemon.
    assert_eq!(c["exit_code"], 7, "{c}");
    assert!(c["report"]["wall_ms"].as_u64().is_some(), "{c}");
    assert_eq!(d.json(&["kill", &id])["state"], "killed");
}
