//! The `cgctl` binary run as a user would, against a fake cgroupfs root (the real kernel:
//! tests/tests/cgctl.rs in the VM).

// Test helpers outside #[test] fns may unwrap too (a failure is a test failure).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::sync::Arc;

use cgctl::fs::Fake;
use cgctl::{Limits, Root};

fn cgctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cgctl"))
}

fn fake_tree() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    Fake::default()
        .init_root(dir.path(), &["cpu", "memory", "pids"])
        .unwrap();
    let path = dir.path().join("agentd.slice");
    let root = Root::create(&path, Arc::new(Fake::default())).unwrap();
    let s = root.create_session("demo", &Limits::default()).unwrap();
    for (n, mem) in [(1u64, 10u64 << 20), (2, 300 << 20)] {
        let c = s.create_call(n, &Limits::default()).unwrap();
        std::fs::write(c.cgroup().path().join("memory.current"), mem.to_string()).unwrap();
        std::fs::write(
            c.cgroup().path().join("cpu.stat"),
            format!("usage_usec {}\nuser_usec 0\nsystem_usec 0\n", n * 1_500_000),
        )
        .unwrap();
    }
    (dir, path)
}

#[test]
fn tree_shows_sessions_and_calls_with_figures() {
    let (_d, root) = fake_tree();
    let out = cgctl()
        .arg("--root")
        .arg(&root)
        .arg("tree")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("session-demo"), "{text}");
    assert!(
        text.contains("calls/1") && text.contains("calls/2"),
        "{text}"
    );
    assert!(text.contains("300M") && text.contains("3.00s"), "{text}");

    let out = cgctl()
        .args(["tree", "--json", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sessions"][0]["id"], "demo");
    assert_eq!(v["sessions"][0]["calls"][1]["memory_current"], 300u64 << 20);
    assert_eq!(v["sessions"][0]["calls"][1]["cpu_usage_usec"], 3_000_000);
}

#[test]
fn top_once_sorts_by_memory_and_iterations_repeat() {
    let (_d, root) = fake_tree();
    let out = cgctl()
        .args(["top", "--once", "--delay", "0.05", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let p2 = text.find("session-demo/calls/2").unwrap();
    let p1 = text.find("session-demo/calls/1").unwrap();
    assert!(p2 < p1, "sorted by memory: {text}");

    let out = cgctl()
        .args(["top", "--json", "-n", "3", "-d", "0.02", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0][0]["path"], "session-demo/calls/2");
    assert_eq!(lines[0][0]["cpu_percent"], 0.0);
}

#[test]
fn stat_prints_one_cgroup() {
    let (_d, root) = fake_tree();
    let out = cgctl()
        .args(["stat", "session-demo/calls/2", "--json", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["stats"]["memory"]["current"], 300u64 << 20);
    let out = cgctl()
        .args(["stat", "session-demo/calls/2", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("memory.current 314572800 (300M)"), "{text}");
    let out = cgctl()
        .args(["stat", "nope", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
}

#[test]
fn without_a_cgroup2_hierarchy_with_controllers_the_error_is_clear() {
    // Only meaningful on hosts without a controller-bearing cgroup2 mount (the hybrid
    // development hosts); on a unified host the default root lookup is exercised in the VM.
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    if cgctl::discover::cgroup2_with_controllers(&info).is_ok() {
        return;
    }
    let out = cgctl().arg("tree").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no cgroup2"), "{err}");
}
