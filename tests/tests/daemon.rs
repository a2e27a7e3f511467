//! agentd daemon and agentctl, black-box through the real binaries inside the test VM: a
//! daemon on a temp socket with its own cgroup root; a session; tool calls through
//! `agentctl exec` that land in their own `calls/<n>` cgroups with the limits policy and
//! intent resolve (read from cgroupfs while the call runs); reports in `agentctl calls`;
//! an OOM-killed call that leaves the session running; another uid refused with 403; the
//! host cap shown by `agentctl policy explain`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod daemon_common;
use daemon_common::*;

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn daemon_five_calls_get_five_cgroups_with_their_limits_and_reports() {
    let _vm = agentd_tests::vm::enter();
    let d = Daemon::start();
    let id = d.session();
    let s = d.json(&["inspect", &id]);
    assert_eq!(s["state"], "running");
    let scg = d.session_cgroup(&id);
    assert!(scg.join("agent").is_dir());
    // Every process of the agent is in the agent leaf.
    assert!(!read(&scg.join("agent/cgroup.procs")).unwrap().is_empty());

    let mems = [64u64, 96, 128, 160, 192];
    for (i, mb) in mems.iter().enumerate() {
        let n = i + 1;
        let intent = format!("memory={mb}M,cpu=batch");
        // The call sleeps so that its cgroup can be read while it runs.
        let call = d
            .ctl(&[
                "exec",
                &id,
                "--intent",
                &intent,
                "--",
                "sh",
                "-c",
                "sleep 3; echo call-ok",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let cg = scg.join(format!("calls/{n}"));
        let t = Instant::now();
        let mut seen = None;
        while t.elapsed() < Duration::from_secs(60) {
            // Only trust the file once a process is in the call (limits are set before).
            if let (Some(max), Some(procs)) =
                (read(&cg.join("memory.max")), read(&cg.join("cgroup.procs")))
                && !procs.is_empty()
            {
                seen = Some((
                    max,
                    read(&cg.join("cpu.weight")),
                    read(&cg.join("memory.oom.group")),
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = call.wait_with_output().unwrap();
        eprintln!(
            "call {n}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let (max, weight, oom_group) = seen.unwrap_or_else(|| panic!("calls/{n} never ran"));
        assert_eq!(max, (mb << 20).to_string(), "memory.max of calls/{n}");
        assert_eq!(weight.as_deref(), Some("50"), "cpu.weight of a batch call");
        assert_eq!(oom_group.as_deref(), Some("1"));
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("call-ok"));
        assert!(String::from_utf8_lossy(&out.stderr).contains("report:"));
        // Finished calls leave no cgroup behind.
        assert!(!cg.exists(), "calls/{n} was not removed");
    }
    let calls = d.json(&["calls", &id]);
    let calls = calls.as_array().unwrap();
    assert_eq!(calls.len(), 5);
    for (c, mb) in calls.iter().zip(mems) {
        assert_eq!(c["state"], "exited");
        assert_eq!(c["exit_code"], 0);
        assert_eq!(c["limits"]["memory"], mb << 20);
        let r = &c["report"];
        assert!(r["wall_ms"].as_u64().unwrap() >= 2000, "{r}");
        assert_eq!(r["limits"]["memory_max"]["limit"], mb << 20, "{r}");
        assert!(r["stats"]["cpu"]["usage_usec"].as_u64().is_some(), "{r}");
    }
    // A call without an intent gets the default 1 GiB, clamped by the host cap to 512 MiB.
    let c = d.json(&["exec", &id, "--", "true"]);
    assert_eq!(c["limits"]["memory"], 512u64 << 20);
    assert!(
        c["limits"]["notes"].to_string().contains("capped by"),
        "{c}"
    );
    // The table form names every call.
    let table = d.run(&["calls", &id]);
    assert_eq!(String::from_utf8_lossy(&table.stdout).lines().count(), 7);
    // rm kills the session and removes its cgroups; ps no longer lists it.
    assert!(d.run(&["rm", &id]).status.success());
    assert!(!scg.exists(), "session cgroup left behind");
    assert_eq!(d.json(&["ps"]).as_array().unwrap().len(), 0);
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn daemon_a_64m_call_allocating_256m_is_oom_killed_and_the_session_goes_on() {
    let _vm = agentd_tests::vm::enter();
    let d = Daemon::start();
    let id = d.session();
    let out = d.exec_256m_under_64m(&id);
    assert!(
        !out.status.success(),
        "the allocation should not survive 64M"
    );
    let c: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["limits"]["memory"], 64u64 << 20);
    assert_eq!(c["oom_killed"], true, "{c}");
    assert_eq!(c["exit_code"], 137, "{c}");
    // The session and its other calls go on.
    assert_eq!(d.json(&["inspect", &id])["state"], "running");
    let ok = d.run(&["exec", &id, "--", "sh", "-c", "echo still-here"]);
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stdout).contains("still-here"));
    let calls = d.json(&["calls", &id]);
    assert_eq!(calls.as_array().unwrap().len(), 2);
    assert_eq!(calls[1]["exit_code"], 0);
    // kill ends it: state killed, cgroups gone.
    let k = d.json(&["kill", &id]);
    assert_eq!(k["state"], "killed");
    assert!(!d.session_cgroup(&id).exists());
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn daemon_another_uid_cannot_see_or_steer_the_session() {
    let _vm = agentd_tests::vm::enter();
    let d = Daemon::start();
    let id = d.session();
    let as_user = |args: &[&str]| {
        let out = d.ctl(args).uid(USER).gid(USER).output().unwrap();
        eprintln!(
            "uid {USER} agentctl {args:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let ps = as_user(&["--json", "ps"]);
    assert!(ps.status.success());
    let list: Value = serde_json::from_slice(&ps.stdout).unwrap();
    assert_eq!(
        list.as_array().unwrap().len(),
        0,
        "uid 1000 sees root's session"
    );
    for args in [
        vec!["inspect", id.as_str()],
        vec!["calls", id.as_str()],
        vec!["kill", id.as_str()],
        vec!["rm", id.as_str()],
        vec!["exec", id.as_str(), "--", "true"],
    ] {
        let out = as_user(&args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("403"), "{args:?}: {err}");
        assert!(err.contains("belongs to uid 0"), "{args:?}: {err}");
    }
    // Untouched: still running, no call was made.
    let s = d.json(&["inspect", &id]);
    assert_eq!(s["state"], "running");
    assert_eq!(s["calls"], 0);
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn daemon_policy_explain_shows_the_host_cap_and_no_daemon_is_explained() {
    let _vm = agentd_tests::vm::enter();
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("host.toml");
    fs::write(&host, HOST_POLICY).unwrap();
    let repo = dir.path().join("policy.toml");
    fs::write(&repo, "version = 1\nextends = \"default\"\n").unwrap();
    let ctl = agentd_tests::project_binary("agentctl");
    // The default profile gives test runners 4GiB; the host allows calls 512MiB.
    let out = Command::new(&ctl)
        .arg("policy")
        .arg("--host")
        .arg(&host)
        .arg("explain")
        .arg(&repo)
        .args(["--", "cargo", "test"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    assert!(text.contains("memory     512MiB"), "{text}");
    assert!(
        text.contains("capped by host policy") && text.contains("call_memory = 512MiB"),
        "{text}"
    );
    // No daemon on this socket: a clear message saying how to start one.
    let out = Command::new(&ctl)
        .arg("--socket")
        .arg(dir.path().join("none.sock"))
        .arg("ps")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no agentd daemon") && err.contains("agentd serve"),
        "{err}"
    );
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn daemon_kill_9_during_a_call_readopts_the_session_and_records_the_call() {
    let _vm = agentd_tests::vm::enter();
    let mut d = Daemon::start();
    // Attached run: output and exit status come back through agentctl.
    let repo = d.repo.to_str().unwrap().to_string();
    let out = d.run(&[
        "run",
        "--workspace",
        &repo,
        "--",
        "sh",
        "-c",
        "echo attached; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("attached"));

    let id = d.session();
    let scg = d.session_cgroup(&id);
    let call = d
        .ctl(&["exec", &id, "--", "sh", "-c", "sleep 8; echo late"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while read(&scg.join("calls/1/cgroup.procs")).is_none_or(|p| p.is_empty()) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "call 1 never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    d.crash();
    let _ = call.wait_with_output();
    d.spawn();
    // The session is still listed and running, with its cgroup.
    let s = d.json(&["inspect", &id]);
    assert_eq!(s["state"], "running", "{s}");
    assert!(scg.join("agent").is_dir());
    // The interrupted call's report is recorded when it ends.
    let c1 = d.first_call_once_ended(&id);
    assert_eq!(c1["state"], "exited", "{c1}");
    assert!(c1["report"]["wall_ms"].as_u64().is_some(), "{c1}");
    assert!(!scg.join("calls/1").exists());
    // New calls go on with the next number; kill ends the re-adopted session.
    let c2 = d.json(&["exec", &id, "--", "true"]);
    assert_eq!(c2["n"], 2);
    assert_eq!(c2["exit_code"], 0);
    assert_eq!(d.json(&["kill", &id])["state"], "killed");
    assert!(!scg.exists());
}

/// Every `calls/<n>` with a process in it right now, with its memory.max.
fn running_calls(cgroup_root: &Path) -> Vec<(String, u64, String)> {
    let mut out = Vec::new();
    for s in fs::read_dir(cgroup_root).into_iter().flatten().flatten() {
        let name = s.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_prefix("session-") else {
            continue;
        };
        for c in fs::read_dir(s.path().join("calls"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(n) = c.file_name().to_string_lossy().parse::<u64>() else {
                continue;
            };
            if let (Some(max), Some(procs)) = (
                read(&c.path().join("memory.max")),
                read(&c.path().join("cgroup.procs")),
            ) && !procs.is_empty()
            {
                out.push((id.to_string(), n, max));
            }
        }
    }
    out
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn daemon_shim_gives_each_shell_command_of_the_agent_its_own_call_cgroup() {
    let _vm = agentd_tests::vm::enter();
    let d = Daemon::start();
    let other = d.session();
    // The other session's socket, as the daemon reaches it: inside that container only.
    let other_pid = fs::read_to_string(d.root.join(format!("state/sessions/{other}/session.json")))
        .map(|t| {
            serde_json::from_str::<Value>(&t).unwrap()["init_pid"]
                .as_i64()
                .unwrap()
        })
        .unwrap();
    let other_socket = format!("/proc/{other_pid}/root/run/agentd-shim.sock");
    assert!(
        Path::new(&other_socket).exists(),
        "{other_socket}: {}",
        d.json(&["inspect", &other])
    );
    // Five commands through $SHELL (the shim), each with its own declared memory; each
    // runs a nested $SHELL, which must stay in its call; then one command aimed at another
    // session's socket, which must be refused.
    let script = format!(
        "for i in 1 2 3 4 5; do \
           AGENTD_INTENT=memory=$((32 + 32 * i))M $SHELL -c \"sleep 2; $SHELL -c 'echo shim-$i'\" || exit 9; \
         done; \
         AGENTD_SHIM_SOCKET={} $SHELL -c 'echo cross'; echo \"shell=$SHELL\"",
        other_socket
    );
    let repo = d.repo.to_str().unwrap().to_string();
    let agent = d
        .ctl(&["run", "--workspace", &repo, "--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen: std::collections::BTreeMap<u64, String> = Default::default();
    let mut sid = None;
    let agent_pid = agent.id() as i32;
    let t = Instant::now();
    loop {
        for (id, n, max) in running_calls(&d.cgroup_root) {
            if id != other {
                sid = Some(id);
                seen.entry(n).or_insert(max);
            }
        }
        // SAFETY: waitpid-free liveness probe of our own child (signal 0).
        let alive = unsafe { libc::kill(agent_pid, 0) } == 0
            && fs::read_to_string(format!("/proc/{agent_pid}/stat"))
                .map(|s| !s.contains(") Z "))
                .unwrap_or(false);
        if !alive || t.elapsed() > Duration::from_secs(240) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = agent.wait_with_output().unwrap();
    let so = String::from_utf8_lossy(&out.stdout).into_owned();
    let se = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("agent: {}\nstdout:\n{so}\nstderr:\n{se}", out.status);
    assert!(out.status.success());
    for i in 1..=5 {
        assert!(so.contains(&format!("shim-{i}")), "{so}");
    }
    assert!(so.contains("cross"), "{so}");
    // The shim is the daemon's read-only bind at a fixed path (its host copy is under the
    // fixture's /tmp dir, invisible inside).
    assert!(so.contains("shell=/run/agentd/bin/agentd-shim"), "{so}");
    // Not reachable from this session (its /proc shows only its own processes).
    assert!(se.contains("no call cgroup"), "{se}");
    let want: std::collections::BTreeMap<u64, String> = (1..=5u64)
        .map(|i| (i, ((32 + 32 * i) << 20).to_string()))
        .collect();
    assert_eq!(seen, want, "call cgroups seen while the agent ran");
    let sid = sid.unwrap();
    let calls = d.json(&["calls", &sid]);
    let calls = calls.as_array().unwrap();
    assert_eq!(calls.len(), 5, "nested shells made no call of their own");
    for (i, c) in calls.iter().enumerate() {
        assert_eq!(c["state"], "exited", "{c}");
        assert_eq!(c["exit_code"], 0, "{c}");
        assert_eq!(c["argv"][0], "sleep", "{c}");
        assert_eq!(
            c["limits"]["memory"],
            (32 + 32 * (i as u64 + 1)) << 20,
            "{c}"
        );
        assert!(c["report"]["wall_ms"].as_u64().unwrap() >= 1500, "{c}");
    }
    // The other session made no call.
    assert_eq!(d.json(&["calls", &other]).as_array().unwrap().len(), 0);
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn daemon_systemd_socket_activation_and_readiness_notification() {
    let _vm = agentd_tests::vm::enter();
    let mut d = Daemon::new();
    let notify_path = d.root.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    d.activate = true;
    d.notify = Some(notify_path);
    d.spawn();
    let mut buf = [0u8; 4096];
    let n = notify.recv(&mut buf).unwrap();
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    eprintln!("notify: {msg}");
    assert!(msg.contains("READY=1"), "{msg}");
    assert!(
        msg.contains("STATUS=") && msg.contains("socket-activated"),
        "{msg}"
    );
    // The daemon serves on the socket systemd-socket-activate created and passed.
    let h = d.json(&["ps"]);
    assert_eq!(h.as_array().unwrap().len(), 0);
    d.stop();
    let n = notify.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    // A passed socket is the service manager's: the daemon leaves it in place.
    assert!(d.socket.exists());
}

fn mount_count() -> usize {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .count()
}

/// Processes whose command line mentions `needle`.
#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn daemon_concurrent_sessions_and_calls_leave_nothing_behind() {
    let _vm = agentd_tests::vm::enter();
    // Lean by default (the suite runs under TCG); issue 6's 20 x 50 passed in 179 s in the VM
    // (2026-11-23): run it with `cargo xtask vm-run -- env AGENTD_TEST_SESSIONS=20
    // AGENTD_TEST_CALLS=50 <daemon test binary> --ignored daemon_concurrent`.
    let sessions = agentd_tests::soak_size("AGENTD_TEST_SESSIONS", 10, 1) as usize;
    let calls = agentd_tests::soak_size("AGENTD_TEST_CALLS", 10, 1) as usize;
    let mounts_before = mount_count();
    let d = Daemon::start();
    let ids: Vec<String> = (0..sessions).map(|_| d.session()).collect();
    let t = Instant::now();
    std::thread::scope(|s| {
        for id in &ids {
            let d = &d;
            s.spawn(move || {
                for i in 0..calls {
                    let out = d
                        .ctl(&["exec", id, "--", "sh", "-c", &format!("echo {id}-{i}")])
                        .output()
                        .unwrap();
                    assert!(out.status.success(), "{id} call {i}: {out:?}");
                    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{id}-{i}")));
                }
            });
        }
    });
    eprintln!(
        "{sessions} sessions x {calls} calls, concurrently: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    for id in &ids {
        let list = d.json(&["calls", id]);
        let list = list.as_array().unwrap();
        assert_eq!(list.len(), calls);
        let mut ns: Vec<u64> = list.iter().map(|c| c["n"].as_u64().unwrap()).collect();
        ns.sort_unstable();
        assert_eq!(ns, (1..=calls as u64).collect::<Vec<_>>());
        assert!(
            list.iter()
                .all(|c| c["report"].is_object() && c["exit_code"] == 0)
        );
        assert!(d.run(&["rm", id]).status.success());
    }
    // Nothing left: no session cgroup, no state mount, no runtime process.
    let leftovers: Vec<_> = fs::read_dir(&d.cgroup_root)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("session-"))
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let sessions_dir = d.root.join("state/sessions");
    let t = Instant::now();
    while fs::read_dir(&sessions_dir).unwrap().count() > 0 {
        assert!(t.elapsed() < Duration::from_secs(60), "session state left");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        agentd_tests::processes_running("agentd-sandbox"),
        Vec::<String>::new(),
        "runtime or exec processes left"
    );
    drop(d);
    assert_eq!(mount_count(), mounts_before, "mounts left behind");
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn daemon_agent_leaf_has_tight_limits_and_a_delegated_daemon_moves_into_its_own_leaf() {
    let _vm = agentd_tests::vm::enter();
    // The daemon starts in a cgroup of its own (as under systemd's Delegate=yes) and manages
    // a root below it: it must move itself into a leaf before enabling controllers there.
    let own = PathBuf::from(format!(
        "/sys/fs/cgroup/agentd-test-delegated-{}",
        std::process::id()
    ));
    // As systemd does for a delegated unit: the controllers reach the daemon's cgroup.
    fs::write(
        "/sys/fs/cgroup/cgroup.subtree_control",
        "+memory +pids +cpu",
    )
    .unwrap();
    fs::create_dir_all(&own).unwrap();
    let mut d = Daemon::new();
    d.cgroup_root = own.join("sessions");
    d.start_in = Some(own.clone());
    d.spawn();
    let daemon_pid = d.child.as_ref().unwrap().id().to_string();
    let leaf_procs = read(&own.join("daemon/cgroup.procs")).unwrap();
    assert!(
        leaf_procs.lines().any(|p| p == daemon_pid),
        "daemon {daemon_pid} not in its leaf: {leaf_procs:?}"
    );
    assert_eq!(read(&own.join("cgroup.procs")).as_deref(), Some(""));
    let control = read(&own.join("cgroup.subtree_control")).unwrap();
    for c in ["memory", "pids", "cpu"] {
        assert!(
            control.contains(c),
            "{c} not enabled under {own:?}: {control}"
        );
    }

    // The agent leaf: the policy's default call memory (1 GiB, clamped to the host cap of
    // 512 MiB) and pids, the batch weight, one CPU.
    let id = d.session();
    let agent = d.session_cgroup(&id).join("agent");
    assert_eq!(
        read(&agent.join("memory.max")),
        Some((512u64 << 20).to_string())
    );
    assert_eq!(read(&agent.join("pids.max")).as_deref(), Some("512"));
    assert_eq!(read(&agent.join("cpu.weight")).as_deref(), Some("50"));
    assert_eq!(
        read(&agent.join("cpu.max")).as_deref(),
        Some("100000 100000")
    );
    let s = d.json(&["inspect", &id]);
    assert_eq!(s["limits"]["agent_memory"], 512u64 << 20, "{s}");
    assert_eq!(s["limits"]["agent_pids"], 512, "{s}");
    assert!(d.run(&["rm", &id]).status.success());

    // What the agent runs itself, without the shim, stays under those limits: 700 MiB is
    // OOM-killed in the agent leaf, and the agent (its shell) goes on.
    let repo = d.repo.to_str().unwrap().to_string();
    let out = d.run(&[
        "run",
        "--workspace",
        &repo,
        "--",
        "/bin/sh",
        "-c",
        "dd if=/dev/zero of=/dev/null bs=700M count=1 2>/dev/null; echo rc=$?",
    ]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rc=137"),
        "the 700 MiB allocation outside the shim was not killed"
    );
    let ps = d.json(&["ps", "--all"]);
    let sid = ps.as_array().unwrap().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(d.json(&["calls", &sid]).as_array().unwrap().len(), 0);
    drop(d);
    // The fixture removed its root; the daemon's leaf and its own cgroup are the test's.
    let _ = fs::remove_dir(own.join("daemon"));
    agentd_tests::remove_cgroup_dir(&own);
}
