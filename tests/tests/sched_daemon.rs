//! agentd's scheduler through the daemon, inside the test VM (docs/scheduler.md): the daemon
//! attaches it (7.3) or says the kernel has none (6.12), in `agentd doctor` too; a session's
//! tasks are SCHED_EXT and cannot leave it (seccomp: sched_setattr and sched_setscheduler to
//! anything but SCHED_EXT get EPERM, from inside the session); a call's report carries its
//! on/off-CPU time and run-queue wait; a daemon killed with -9 takes the scheduler with it
//! and the session's tasks are back in the fair class within a second.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::fs;
use std::time::{Duration, Instant};

use agentd_tests::vm::{self, Kernel};

mod daemon_common;
use daemon_common::*;

/// Inside the session: tries each escape and prints `name=result` per line.
const ESCAPES: &str = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def res(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return os.strerror(e.errno).replace(" ", "_")
print("policy=%d" % os.sched_getscheduler(0))
p = os.sched_param(0)
print("to_other=" + res(lambda: os.sched_setscheduler(0, os.SCHED_OTHER, p)))
print("to_batch=" + res(lambda: os.sched_setscheduler(0, os.SCHED_BATCH, p)))
print("to_idle=" + res(lambda: os.sched_setscheduler(0, os.SCHED_IDLE, p)))
print("to_ext_reset_on_fork=" + res(lambda: os.sched_setscheduler(0, 7 | 0x40000000, p)))
print("to_ext=" + res(lambda: os.sched_setscheduler(0, 7, p)))
attr = (ctypes.c_uint32 * 14)()
attr[0] = 56  # size: struct sched_attr v1, sched_policy = SCHED_OTHER
r = libc.syscall(314, 0, ctypes.byref(attr), 0)  # sched_setattr
print("setattr=" + ("ok" if r == 0 else os.strerror(ctypes.get_errno()).replace(" ", "_")))
print("policy_after=%d" % os.sched_getscheduler(0))
"#;

fn kv(out: &str) -> std::collections::HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn policy_of(pid: u32) -> i32 {
    // SAFETY: a plain syscall on a pid.
    unsafe { libc::sched_getscheduler(pid as i32) }
}

fn attached() -> Option<String> {
    agentd_bpf::sched::attached()
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn sched_daemon_session_tasks_are_ext_cannot_escape_and_calls_are_accounted() {
    let vm = vm::enter();
    let mut d = Daemon::start();
    let ext = vm.kernel == Kernel::SchedExt;
    // The doctor row says what runs.
    let doc = d.run(&["doctor"]);
    let doc = String::from_utf8_lossy(&doc.stdout).into_owned();
    let row = doc
        .lines()
        .find(|l| l.starts_with("sched_ext"))
        .unwrap_or_else(|| panic!("no sched_ext row:\n{doc}"))
        .to_owned();
    if ext {
        assert_eq!(attached().as_deref(), Some("agentd"), "{row}");
        assert!(row.contains("available") && row.contains("loaded"), "{row}");
    } else {
        assert!(attached().is_none());
        assert!(
            row.contains("degraded") && row.contains("not supported by this kernel"),
            "{row}"
        );
        assert!(doc.contains("fallback: cpu.weight"), "{doc}");
    }
    let id = d.session();
    // The agent (sleep 86400) is SCHED_EXT on the sched_ext kernel, SCHED_NORMAL without.
    let agent_leaf = d.session_cgroup(&id).join("agent");
    let t = Instant::now();
    let agent_pids: Vec<u32> = loop {
        let pids: Vec<u32> = fs::read_to_string(agent_leaf.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            // The agent itself (the leaf also holds the container's init, which is not
            // confined: it never execs a tool).
            .filter(|p| {
                fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sleep")
            })
            .collect();
        if !pids.is_empty() {
            break pids;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "no agent process");
        std::thread::sleep(Duration::from_millis(100));
    };
    let want = if ext { 7 } else { 0 };
    for p in &agent_pids {
        assert_eq!(policy_of(*p), want, "agent pid {p}");
    }
    // Escapes from inside, through a call (the spawner's child: the agent's confinement).
    let c = d.json(&["exec", &id, "--", "python3", "-c", ESCAPES]);
    let out = kv(c["stdout"].as_str().unwrap_or_default());
    eprintln!("escape results: {out:?}");
    let eperm = "Operation_not_permitted";
    assert_eq!(out["policy"], want.to_string(), "{c}");
    for k in [
        "to_other",
        "to_batch",
        "to_idle",
        "to_ext_reset_on_fork",
        "setattr",
    ] {
        assert_eq!(out[k], eperm, "{k}: {c}");
    }
    // SCHED_EXT itself passes seccomp; the 6.12 kernel has no such policy.
    assert_eq!(
        out["to_ext"],
        if ext { "ok" } else { "Invalid_argument" },
        "{c}"
    );
    assert_eq!(out["policy_after"], want.to_string(), "{c}");
    // Accounting: 2 busy processes and a sleep in one call (the parent shell is off CPU
    // while it waits for them, then sleeps).
    let c = d.json(&[
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "for j in 1 2; do (i=0; while [ $i -lt 60000 ]; do i=$((i+1)); done) & done; wait; sleep 0.5",
    ]);
    let cs = &c["cpu_sched"];
    eprintln!(
        "call report cpu_sched: {cs}\ncgctl cpu: {}",
        c["report"]["stats"]["cpu"]
    );
    assert!(cs.is_object(), "no cpu_sched in the call: {c}");
    assert_eq!(cs["scheduler"], if ext { "agentd" } else { "fair" }, "{c}");
    // The class the policy resolved for the call (the scheduler's too).
    assert_eq!(cs["class"], c["limits"]["cpu_class"], "{c}");
    let on = cs["on_cpu_us"].as_u64().unwrap();
    let usage = c["report"]["stats"]["cpu"]["usage_usec"].as_u64().unwrap();
    // The tracepoints and cpu.stat count the same CPU time (within a third).
    assert!(
        on * 3 >= usage * 2 && on * 2 <= usage * 3,
        "on_cpu_us {on} vs cpu.stat usage_usec {usage}: {c}"
    );
    assert!(
        cs["off_cpu_us"].as_u64().unwrap() >= 400_000,
        "the 0.5 s sleep: {c}"
    );
    assert!(cs["runs"].as_u64().unwrap() > 0 && cs["wakeups"].as_u64().unwrap() > 0);
    assert!(
        cs["runq_wait_max_us"].as_u64().unwrap() <= cs["runq_wait_us"].as_u64().unwrap(),
        "{c}"
    );
    // The daemon dies (kill -9): its link goes with it, and the session's tasks are back
    // in the fair class within a second (their policy stays SCHED_EXT, run as normal).
    d.crash();
    let t = Instant::now();
    while attached().is_some() {
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "scheduler still attached 1 s after the daemon died"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("scheduler gone {:?} after the daemon died", t.elapsed());
    let st = fs::read_to_string("/sys/kernel/sched_ext/state").unwrap_or_default();
    if ext {
        assert_eq!(st.trim(), "disabled");
    }
    for p in &agent_pids {
        let sched = fs::read_to_string(format!("/proc/{p}/sched")).unwrap_or_default();
        if let Some(l) = sched
            .lines()
            .find(|l| l.trim_start().starts_with("ext.enabled"))
        {
            assert!(l.trim_end().ends_with('0'), "pid {p} still on ext: {l}");
        }
    }
    // A new daemon re-adopts the session and attaches again.
    d.spawn();
    if ext {
        assert_eq!(attached().as_deref(), Some("agentd"));
    }
    let _ = d.run(&["kill", &id]);
}
