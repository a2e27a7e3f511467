//! The daemon's host resources stay bounded against its clients (issue 18): an agent holding
//! 4,000 connections open on its session's shim socket (sending nothing: slowloris) neither
//! costs the daemon thousands of descriptors nor stops it answering another user on the API
//! socket within 1 s; the daemon runs with its open-files soft limit raised to the hard one.
//! Black-box through the real binaries in the test VM.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

mod daemon_common;
use daemon_common::*;

/// Opens (non-blocking) up to 4,000 connections to the shim socket and holds them.
const FLOOD: &str = r#"
import os, resource, socket, time
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
path = os.environ.get("AGENTD_SHIM_SOCKET", "/run/agentd-shim.sock")
held, refused = [], 0
for i in range(min(4000, hard - 16)):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect(path)
        held.append(s)
    except (BlockingIOError, ConnectionRefusedError, OSError):
        refused += 1
        s.close()
print("held", len(held), "refused", refused, flush=True)
time.sleep(25)
"#;

/// The daemon's open descriptors.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// One `GET /v1/health` on the API socket (no exec involved); returns how long it took.
fn health(socket: &std::path::Path) -> Duration {
    let t = Instant::now();
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: agentd\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    t.elapsed()
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn daemon_survives_a_shim_connection_flood_and_keeps_answering() {
    let _vm = agentd_tests::vm::enter();
    let d = Daemon::start();
    let pid = d.child.as_ref().unwrap().id();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let nofile: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(nofile[3], nofile[4], "soft limit not raised: {limits}");
    let id = d.session();
    let before = fds(pid);
    let mut flood = d
        .ctl(&["exec", &id, "--", "python3", "-c", FLOOD])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(flood.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    eprintln!("flood: {line}");
    assert!(line.starts_with("held "), "{line}");
    // While they are held: the daemon's descriptors stay bounded and the API answers.
    let mut worst = Duration::ZERO;
    let mut most = 0;
    for _ in 0..10 {
        worst = worst.max(health(&d.socket));
        most = most.max(fds(pid));
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("daemon fds: {before} before, at most {most} during; worst health answer {worst:?}");
    assert!(most < before + 200, "{most} descriptors (from {before})");
    assert!(worst < Duration::from_secs(1), "{worst:?}");
    let _ = flood.wait();
    // Afterwards a call from inside the session still works.
    let out = d.run(&["exec", &id, "--", "sh", "-c", "echo after"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "after\n");
}
