//! Exec capture (VM, docs/capture.md): with `session.capture = "exec"` every program the
//! agent's processes exec is a call of its own, however it is spawned — fork+exec in a loop,
//! `posix_spawn`, `subprocess` (vfork+exec), a C `vfork`+`execv`, exec through a symlink,
//! `fexecve` of a memfd, `sh -c` (recorded as the script's words) — while the agent's own
//! runtime is not; escapes from inside (writing cgroup.procs, ptrace) fail; a 256M allocation
//! under a 64M intent is OOM-killed in its call and the agent goes on; an agent that runs
//! no command records 0 calls.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod daemon_common;

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use daemon_common::*;
use serde_json::Value;

const POLICY: &str = "version = 1\n\n[session]\ncapture = \"exec\"\n";

/// The agent: a Python program spawning commands every way it can, printing what it saw.
const AGENT: &str = r#"
import ctypes, os, subprocess, sys

def wait(pid):
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

for i in range(3):
    pid = os.fork()
    if pid == 0:
        os.execv("/bin/echo", ["/bin/echo", "fork-%d" % i])
    assert wait(pid) == 0
pid = os.posix_spawn("/bin/sh", ["/bin/sh", "-c", "exit 4"], os.environ)
print("posix_spawn", wait(pid), flush=True)
r = subprocess.run(["/bin/cat", "/proc/self/cgroup"], capture_output=True, text=True)
print("subprocess-cgroup", r.stdout.strip(), flush=True)
os.symlink("/bin/echo", "/tmp/echo-link")
subprocess.run(["/tmp/echo-link", "via-link"])
fd = os.memfd_create("memfd-true", 0)
os.write(fd, open("/bin/true", "rb").read())
pid = os.fork()
if pid == 0:
    try:
        os.execve(fd, ["memfd-true"], dict(os.environ))
    except OSError as e:
        print("memfd exec failed", e, flush=True)
        os._exit(126)
print("memfd", wait(pid), flush=True)
print("vfork", subprocess.run(["./vfork"]).returncode, flush=True)
r = subprocess.run(["python3", "-c", "bytearray(256 << 20); print('allocated')"],
                   env=dict(os.environ, AGENTD_INTENT="memory=64M"))
print("alloc", r.returncode, flush=True)
# Escapes: move itself (a forked child, not exec'd) out of the leaf; ptrace.
pid = os.fork()
if pid == 0:
    try:
        open("/sys/fs/cgroup/cgroup.procs", "w").write(str(os.getpid()))
        os._exit(0)
    except OSError:
        os._exit(1)
print("cgroup-write", wait(pid), flush=True)
print("ptrace", ctypes.CDLL(None, use_errno=True).ptrace(0, 0, 0, 0), flush=True)
print("agent done", flush=True)
"#;

/// vfork + execv, as C programs (and older libcs' posix_spawn) do it.
const VFORK_C: &str = r#"
#include <unistd.h>
#include <sys/wait.h>
int main(void) {
    pid_t p = vfork();
    if (p == 0) { char *a[] = {"/bin/echo", "vforked", 0}; execv(a[0], a); _exit(127); }
    int st; waitpid(p, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
}
"#;

/// Waits for the session to end; returns its final row.
fn ended(d: &Daemon, id: &str) -> Value {
    let t = Instant::now();
    loop {
        let s = d.json(&["inspect", id]);
        if s["state"] != "running" && s["state"] != "starting" {
            return s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "session never ended: {s}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits until no call of the session is running (their reports are recorded).
fn calls_done(d: &Daemon, id: &str) -> Vec<Value> {
    let t = Instant::now();
    loop {
        let calls = d.json(&["calls", id]);
        let list = calls.as_array().cloned().unwrap_or_default();
        if list.iter().all(|c| c["state"] != "running") {
            return list;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "calls never ended: {calls}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn start(d: &Daemon, argv: &[&str]) -> String {
    let policy = d.root.join("capture.toml");
    fs::write(&policy, POLICY).unwrap();
    let mut args = vec![
        "run",
        "--detach",
        "--policy",
        policy.to_str().unwrap(),
        "--workspace",
        d.repo.to_str().unwrap(),
        "--",
    ];
    args.extend_from_slice(argv);
    let out = d.run(&args);
    assert!(out.status.success(), "agentctl run failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The kernel publishes exit statuses on pidfds from 6.15 (PIDFD_INFO_EXIT).
fn pidfd_exit_info() -> bool {
    let r = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut it = r.split(|c: char| !c.is_ascii_digit());
    let major: u32 = it.next().unwrap().parse().unwrap();
    let minor: u32 = it.next().unwrap().parse().unwrap();
    (major, minor) >= (6, 15)
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn capture_every_exec_of_the_agent_is_a_call_however_it_is_spawned() {
    let _vm = agentd_tests::vm::enter();
    let d = Daemon::start();
    fs::write(d.repo.join("agent.py"), AGENT).unwrap();
    fs::write(d.root.join("vfork.c"), VFORK_C).unwrap();
    let cc = Command::new("cc")
        .arg("-O1")
        .arg("-o")
        .arg(d.repo.join("vfork"))
        .arg(d.root.join("vfork.c"))
        .status()
        .unwrap();
    assert!(cc.success());
    chown_r(&d.repo, USER);
    let id = start(&d, &["python3", "agent.py"]);
    let s = ended(&d, &id);
    let logs = d.run(&["logs", &id]);
    let out = String::from_utf8_lossy(&logs.stdout).into_owned();
    assert_eq!(s["exit_code"], 0, "{s}\n{out}");
    assert!(out.contains("agent done"), "{out}");
    let calls = calls_done(&d, &id);
    let words: Vec<String> = calls
        .iter()
        .map(|c| {
            c["argv"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w.as_str().unwrap().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    eprintln!("calls: {words:#?}");
    // Every call was captured at exec; the runtime (python3 agent.py) is none of them.
    for c in &calls {
        assert_eq!(c["via"], "exec", "{c}");
    }
    assert!(!words.iter().any(|w| w.contains("agent.py")), "{words:?}");
    let has = |w: &str| {
        calls
            .iter()
            .zip(&words)
            .find(|(_, x)| x.as_str() == w)
            .map(|(c, _)| c.clone())
            .unwrap_or_else(|| panic!("no call {w:?} in {words:?}"))
    };
    for i in 0..3 {
        has(&format!("/bin/echo fork-{i}"));
    }
    // `sh -c SCRIPT` is recorded as the script's words.
    let spawned = has("exit 4");
    has("/bin/cat /proc/self/cgroup");
    has("/tmp/echo-link via-link");
    has("memfd-true");
    has("./vfork");
    // The vfork'd echo runs inside ./vfork's call: no call of its own.
    assert!(!words.iter().any(|w| w == "/bin/echo vforked"), "{words:?}");
    let alloc = has("python3 -c bytearray(256 << 20); print('allocated')");
    assert_eq!(alloc["limits"]["memory"], 64 << 20, "{alloc}");
    assert_eq!(alloc["oom_killed"], true, "{alloc}");
    assert_eq!(calls.len(), 9, "{words:?}");
    // The agent saw its commands in their calls and went on after the OOM kill.
    assert!(out.contains("subprocess-cgroup 0::/../calls/"), "{out}");
    assert!(out.contains("posix_spawn 4"), "{out}");
    assert!(out.contains("memfd 0"), "{out}");
    assert!(out.contains("vfork 0"), "{out}");
    assert!(!out.contains("allocated"), "{out}");
    assert!(
        out.contains("alloc -9") || out.contains("alloc 137"),
        "{out}"
    );
    // Escapes: the leaf's processes cannot move themselves; ptrace is refused.
    assert!(out.contains("cgroup-write 1"), "{out}");
    assert!(out.contains("ptrace -1"), "{out}");
    if pidfd_exit_info() {
        assert_eq!(spawned["exit_code"], 4, "{spawned}");
        assert_eq!(has("./vfork")["exit_code"], 0);
    }
    // The session's cgroups are gone with it.
    let t = Instant::now();
    while d.session_cgroup(&id).exists() && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!d.session_cgroup(&id).exists());
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn capture_an_agent_that_runs_no_command_records_no_call() {
    let _vm = agentd_tests::vm::enter();
    let d = Daemon::start();
    let id = start(
        &d,
        &["python3", "-c", "import os; print('thinking', os.getpid())"],
    );
    let s = ended(&d, &id);
    assert_eq!(s["exit_code"], 0, "{s}");
    let calls = calls_done(&d, &id);
    assert!(calls.is_empty(), "{calls:?}");
}
