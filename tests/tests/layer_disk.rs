//! The session layer on disk (issue 11, docs/layer.md), black-box through the daemon in the
//! test VM, its state on the VM's scratch disk (`/var/tmp`, a real ext4 disk; the rest of
//! the VM is memory): a 1 GiB write in a session with a 512 MiB memory limit succeeds and
//! is not charged as shmem; writes past the quota get ENOSPC in the workspace, /tmp and
//! /home; the layer survives a daemon restart (diffable, committable); and a session the
//! host went down with (daemon, runtime and init killed, the layer unmounted as a reboot
//! would) comes back ended with its layer intact and committable.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

mod daemon_common;
use daemon_common::*;

/// The scratch disk of the test VM (xtask/src/vm.rs).
const DISK: &str = "/var/tmp";

fn on_a_real_disk() -> Daemon {
    let mounts = fs::read_to_string("/proc/mounts").unwrap();
    let fstype = mounts.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&DISK)).then(|| f[2].to_string())
    });
    assert_eq!(
        fstype.as_deref(),
        Some("ext4"),
        "{DISK} is not the VM's scratch disk: {mounts}"
    );
    Daemon::new_in(DISK)
}

fn policy(d: &Daemon, name: &str, text: &str) -> PathBuf {
    let p = d.root.join(name);
    fs::write(&p, text).unwrap();
    p
}

fn session_with(d: &Daemon, policy: &Path) -> String {
    let out = d.run(&[
        "run",
        "--detach",
        "--workspace",
        d.repo.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
        "--",
        "sleep",
        "86400",
    ]);
    assert!(out.status.success(), "agentctl run failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn exec(d: &Daemon, id: &str, script: &str) -> Value {
    d.json(&["exec", id, "--", "sh", "-c", script])
}

fn stat_field(stat: &str, key: &str) -> u64 {
    stat.lines()
        .find_map(|l| l.strip_prefix(&format!("{key} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in memory.stat:\n{stat}"))
}

fn paths(diff: &Value) -> Vec<String> {
    diff["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect()
}

fn state_of(d: &Daemon, id: &str) -> String {
    let ps = d.json(&["ps", "--all"]);
    ps.as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .map(|s| s["state"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("no session {id} in {ps}"))
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn layer_disk_a_1gib_write_under_a_512mib_memory_limit_is_page_cache_not_shmem() {
    let _vm = agentd_tests::vm::enter();
    let mut d = on_a_real_disk();
    d.spawn();
    let p = policy(
        &d,
        "big.toml",
        "version = 1\n[resources]\nmemory = \"512MiB\"\ndisk = \"2GiB\"\n",
    );
    let id = session_with(&d, &p);
    let cg = d.session_cgroup(&id);
    assert_eq!(
        fs::read_to_string(cg.join("memory.max")).unwrap().trim(),
        (512u64 << 20).to_string()
    );
    // The daemon's page-cache threshold (agentd/src/server/page_cache.rs): half the limit
    // while the session's processes hold little.
    let high = || fs::read_to_string(cg.join("memory.high")).unwrap();
    let t = Instant::now();
    while high().trim() != (256u64 << 20).to_string() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "memory.high {}",
            high()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let image = d.root.join(format!("state/sessions/{id}/layer.img"));
    assert_eq!(fs::metadata(&image).unwrap().len(), 2 << 30, "the quota");
    // 1 GiB of "build output" in the workspace (the overlay's upper dir), flushed, then
    // removed in the same call (so the next checkpoint does not copy it).
    let t = Instant::now();
    let c = exec(
        &d,
        &id,
        "dd if=/dev/zero of=target.bin bs=1M count=1024 2>&1 && sync && \
         stat -c %s target.bin && rm target.bin",
    );
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(c["exit_code"], 0, "{c}");
    assert!(
        c["stdout"]
            .as_str()
            .unwrap()
            .contains(&(1u64 << 30).to_string()),
        "{c}"
    );
    let peak: u64 = fs::read_to_string(cg.join("memory.peak"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let stat = fs::read_to_string(cg.join("memory.stat")).unwrap();
    let events = fs::read_to_string(cg.join("memory.events")).unwrap();
    let shmem = stat_field(&stat, "shmem");
    let anon = stat_field(&stat, "anon");
    let file = stat_field(&stat, "file");
    let oom_kill = stat_field(&events, "oom_kill");
    let high_events = stat_field(&events, "high");
    eprintln!(
        "FIGURE layer_disk: 1 GiB written in {secs:.1} s under memory.max 512 MiB: session \
         memory.peak {} MiB (memory.high {} MiB, {high_events} high events), now file {} \
         MiB, anon {} KiB, shmem {} KiB, oom_kill {oom_kill}; the call's own peak {} MiB",
        peak >> 20,
        high().trim().parse::<u64>().unwrap_or(0) >> 20,
        file >> 20,
        anon >> 10,
        shmem >> 10,
        c["report"]["stats"]["memory"]["peak"].as_u64().unwrap_or(0) >> 20
    );
    // Nothing was killed for it: a tmpfs layer would have charged all 1 GiB as shmem,
    // which cannot be reclaimed, and been OOM-killed at 512 MiB.
    assert_eq!(oom_kill, 0, "{events}");
    // The layer's pages are file cache, never shmem; what the session cannot give back
    // (anon + shmem) stays near its processes' own memory.
    assert!(shmem < 16 << 20, "shmem {shmem}: {stat}");
    assert!(anon < 64 << 20, "anon {anon}: {stat}");
    // And the page cache was reclaimed at the threshold, not at the limit: the session's
    // memory stays well under it.
    assert!(
        peak <= (512 * 6 / 10) << 20,
        "memory.peak {} MiB of a 512 MiB limit: {stat}",
        peak >> 20
    );
    d.run(&["kill", &id]);
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn layer_disk_writes_past_the_quota_get_enospc_in_the_workspace_tmp_and_home() {
    let _vm = agentd_tests::vm::enter();
    let mut d = on_a_real_disk();
    d.spawn();
    let p = policy(
        &d,
        "small.toml",
        "version = 1\n[resources]\ndisk = \"64MiB\"\n",
    );
    let id = session_with(&d, &p);
    let c = exec(
        &d,
        &id,
        "dd if=/dev/zero of=fill bs=1M count=128 2>&1; echo ws=$?; stat -c %s fill; \
         dd if=/dev/zero of=/tmp/t bs=1M count=8 2>&1; echo tmp=$?; \
         dd if=/dev/zero of=$HOME/h bs=1M count=8 2>&1; echo home=$?; \
         df -k /tmp | tail -1",
    );
    let out = c["stdout"].as_str().unwrap();
    eprintln!("{out}");
    assert_eq!(out.matches("No space left on device").count(), 3, "{out}");
    for k in ["ws=0", "tmp=0", "home=0"] {
        assert!(!out.contains(k), "{k}: {out}");
    }
    let fill: u64 = out
        .lines()
        .find(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
        .unwrap()
        .parse()
        .unwrap();
    // The image's own metadata (journal, inode tables) is all that is not the session's.
    assert!((48 << 20..=64 << 20).contains(&fill), "fill {fill}");
    // The quota is the session's alone: freeing it makes room again.
    let c = exec(&d, &id, "rm fill && echo x > /tmp/t && echo ok");
    assert_eq!(c["stdout"], "ok\n", "{c}");
    // A key whose value cannot be a filesystem is refused at its line and column.
    let bad = policy(
        &d,
        "tiny.toml",
        "version = 1\n[resources]\ndisk = \"4KiB\"\n",
    );
    let out = d.run(&[
        "run",
        "--detach",
        "--workspace",
        d.repo.to_str().unwrap(),
        "--policy",
        bad.to_str().unwrap(),
        "--",
        "true",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":3:8") && err.contains("minimum of 1 MiB"),
        "{err}"
    );
    d.run(&["kill", &id]);
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn layer_disk_the_layer_survives_a_daemon_restart_and_the_host_going_down() {
    let _vm = agentd_tests::vm::enter();
    let mut d = on_a_real_disk();
    d.spawn();
    let a = d.session();
    let b = d.session();
    for (id, name) in [(&a, "a"), (&b, "b")] {
        let c = exec(
            &d,
            id,
            &format!("echo kept > from-{name}.txt && mkdir -p out-{name} && echo o > out-{name}/f"),
        );
        assert_eq!(c["exit_code"], 0, "{c}");
    }
    // 1. kill -9 of the daemon; the sessions keep running on their layers.
    d.crash();
    d.spawn();
    assert_eq!(state_of(&d, &a), "running");
    let diff = d.json(&["diff", &a]);
    assert_eq!(paths(&diff), ["from-a.txt", "out-a", "out-a/f"], "{diff}");

    // 2. The host goes down with session b: the daemon, b's runtime and init die at once,
    // and (as after a reboot) b's layer is no longer mounted; only its image is left.
    let state = d.root.join(format!("state/sessions/{b}"));
    let rec: Value =
        serde_json::from_slice(&fs::read(state.join("session.json")).unwrap()).unwrap();
    let init = rec["init_pid"].as_i64().unwrap() as i32;
    let runtime: i32 = fs::read_to_string(format!("/proc/{init}/stat"))
        .unwrap()
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    d.crash();
    // SAFETY: kill(2) of processes this test's daemon started.
    unsafe {
        libc::kill(runtime, libc::SIGKILL);
        libc::kill(init, libc::SIGKILL);
    }
    let t = Instant::now();
    while Path::new(&format!("/proc/{init}")).exists() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "init {init} survived"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = std::process::Command::new("umount")
        .arg("-l")
        .arg(state.join("layer"))
        .status()
        .unwrap();
    assert!(st.success());
    assert!(state.join("layer.img").is_file());
    assert!(!state.join("layer/upper").exists(), "still mounted");
    d.spawn();
    // b comes back stopped (not failed: its work was kept), with the layer it had when
    // the host went down, and `ps` lists it without --all (it awaits a commit or discard).
    assert_eq!(state_of(&d, &b), "stopped");
    let ps = d.json(&["ps"]);
    let listed: Vec<&str> = ps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert!(listed.contains(&b.as_str()), "ps: {ps}");
    let info = d.json(&["inspect", &b]);
    assert!(
        info["error"].as_str().unwrap().contains("layer was kept"),
        "{info}"
    );
    let diff = d.json(&["diff", &b]);
    assert_eq!(paths(&diff), ["from-b.txt", "out-b", "out-b/f"], "{diff}");
    let c = d.json(&["commit", &b]);
    eprintln!("commit of b: {c}");
    assert_eq!(
        fs::read_to_string(d.repo.join("from-b.txt")).unwrap(),
        "kept\n"
    );
    assert_eq!(fs::read_to_string(d.repo.join("out-b/f")).unwrap(), "o\n");
    // Its image is gone once the final checkpoint holds the layer.
    assert!(!state.exists(), "the state of b was kept");
    // And it is discardable: back to its start (the repo now, with b's commit in it).
    d.json(&["discard", &b]);
    assert!(
        d.json(&["diff", &b])["files"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // a, still running after both restarts, commits too.
    d.json(&["commit", &a]);
    assert_eq!(
        fs::read_to_string(d.repo.join("from-a.txt")).unwrap(),
        "kept\n"
    );
    d.run(&["kill", &a]);
}
