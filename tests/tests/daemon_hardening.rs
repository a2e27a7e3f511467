//! Host-side hardening of the daemon (issue 18), black-box in the test VM: on a host with
//! swap a session never swaps (memory.swap.max = 0: a memory bomb gets memory.max, not
//! memory.max + the host's swap); a descriptor leaked into the daemon by whoever started it
//! reaches no runtime, agent or call; a workspace path the overlay's mount options would
//! misread is refused with a 400 naming it; calls with 1.9 MB of argv run, and their
//! journal records keep a bounded part of it; each session has its own container root uid,
//! and no other session's root (nor uid 100000) can enter its state dir.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod daemon_common;
use daemon_common::*;

/// A swap file on the VM's scratch disk, on for the guard's life (the test VM has no swap).
struct Swap(std::path::PathBuf);

impl Swap {
    fn on(path: &str, mib: u32) -> Swap {
        let sh = |cmd: &str| {
            let st = std::process::Command::new("sh")
                .args(["-c", cmd])
                .status()
                .unwrap();
            assert!(st.success(), "{cmd}: {st}");
        };
        sh(&format!(
            "dd if=/dev/zero of={path} bs=1M count={mib} status=none && chmod 600 {path} \
             && mkswap {path} >/dev/null && swapon {path}"
        ));
        Swap(path.into())
    }
}

impl Drop for Swap {
    fn drop(&mut self) {
        let _ = std::process::Command::new("swapoff").arg(&self.0).status();
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn hardening_a_memory_bomb_on_a_host_with_swap_gets_memory_max_and_no_swap() {
    let _vm = agentd_tests::vm::enter();
    let _swap = Swap::on("/var/tmp/agentd-bounds.swap", 512);
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap();
    assert!(swaps.contains("agentd-bounds.swap"), "{swaps}");
    let d = Daemon::start();
    let id = d.session();
    let cg = d.session_cgroup(&id);
    assert_eq!(read(&cg.join("memory.swap.max")).as_deref(), Some("0"));
    // 256 MiB touched under a 64 MiB call: with the host's swap it would page out and finish.
    let out = d.run(&[
        "--json",
        "exec",
        &id,
        "--intent",
        "memory=64M",
        "--",
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=256M",
        "count=1",
    ]);
    assert!(!out.status.success(), "the bomb lived on swap");
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["oom_killed"], true, "{c}");
    // memory.swap.peak is hierarchical: nothing of the session (agent leaf, calls) swapped.
    let peak = read(&cg.join("memory.swap.peak"));
    assert_eq!(peak.as_deref(), Some("0"), "the session swapped");
    let _ = d.json(&["kill", &id]);
}

/// Every process (but those in `except`) holding a descriptor whose target names `needle`.
fn holders(needle: &str, except: &[u32]) -> Vec<String> {
    let mut found = Vec::new();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && target.to_string_lossy().contains(needle)
                && !except.contains(&pid)
            {
                let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
                found.push(format!("{pid} ({}) {}", comm.trim(), fd.path().display()));
            }
        }
    }
    found
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn hardening_a_descriptor_leaked_into_the_daemon_reaches_no_runtime_agent_or_call() {
    let _vm = agentd_tests::vm::enter();
    let mut d = Daemon::new();
    let secret = d.root.join("leaked-secret");
    std::fs::write(&secret, "not for the agent\n").unwrap();
    d.leak_fd = Some(std::fs::File::open(&secret).unwrap());
    d.spawn();
    let pid = d.child.as_ref().unwrap().id();
    let ours = std::fs::read_link(format!("/proc/{pid}/fd/9")).unwrap();
    assert!(ours.ends_with("leaked-secret"), "{}", ours.display());
    // The agent, a shim call and an API call each list their own descriptors.
    let repo = d.repo.to_str().unwrap().to_string();
    let list = "ls -l /proc/self/fd";
    let script = format!("{list}; $SHELL -c '{list}'");
    let out = d.run(&["run", "--workspace", &repo, "--", "sh", "-c", &script]);
    assert!(out.status.success());
    let id = d.session();
    let call = d.run(&["exec", &id, "--", "ls", "-l", "/proc/self/fd"]);
    assert!(call.status.success());
    let listed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&call.stdout)
    );
    assert_eq!(listed.matches(" 0 -> ").count(), 3, "{listed}");
    assert!(!listed.contains("leaked-secret"), "{listed}");
    // Nothing else of the running session (runtime, init, spawner, agent) holds it either.
    let held = holders("leaked-secret", &[pid, std::process::id()]);
    assert!(held.is_empty(), "leaked to: {held:?}");
    let _ = d.json(&["kill", &id]);
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn hardening_a_workspace_the_overlay_options_would_misread_is_refused_by_name() {
    let _vm = agentd_tests::vm::enter();
    let d = Daemon::start();
    let odd = d.root.join("repo,upperdir=x");
    std::fs::create_dir(&odd).unwrap();
    chown_r(&odd, USER);
    let out = d.run(&["run", "--workspace", odd.to_str().unwrap(), "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "not refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("400") && err.contains("','"), "{err}");
    assert!(err.contains("rename the directory"), "{err}");
    assert!(d.json(&["ps", "--all"]).as_array().unwrap().is_empty());
}

/// Bytes of the journal and its write-ahead log.
fn journal_bytes(d: &Daemon) -> u64 {
    ["journal.db", "journal.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(d.root.join("state").join(f)).ok())
        .map(|m| m.len())
        .sum()
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn hardening_40_calls_with_1_9_mb_of_argv_each_run_and_their_records_stay_bounded() {
    let _vm = agentd_tests::vm::enter();
    let d = Daemon::start();
    let id = d.session();
    // 19 words of 100 KB: under the kernel's 128 KiB a word and 2 MiB in all.
    let words: Vec<String> = (0..19)
        .map(|i| format!("{:02}", i).repeat(50_000))
        .collect();
    let before = journal_bytes(&d);
    for _ in 0..40 {
        let mut args = vec!["exec", id.as_str(), "--", "true"];
        args.extend(words.iter().map(String::as_str));
        let out = d.ctl(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let grown = journal_bytes(&d).saturating_sub(before);
    eprintln!("journal grew {grown} bytes for 40 calls of 1.9 MB argv");
    // Unbounded, the rows alone would be 76 MB.
    assert!(grown < 16 << 20, "journal grew {grown} bytes");
    let calls = d.json(&["calls", &id]);
    let calls = calls.as_array().unwrap();
    assert_eq!(calls.len(), 40);
    for c in calls {
        assert_eq!(c["argv"][0], "true", "{}", c["n"]);
        assert!(
            c["argv_cut"].as_u64().unwrap() > 1_800_000,
            "{}",
            c["argv_cut"]
        );
        assert_eq!(c["exit_code"], 0);
    }
    let _ = d.json(&["kill", &id]);
}

/// `ls DIR` as `uid` (gid the same, no groups): did it list?
fn lists_as(uid: u32, dir: &std::path::Path) -> bool {
    use std::os::unix::process::CommandExt;
    std::process::Command::new("ls")
        .arg(dir)
        .uid(uid)
        .gid(uid)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn hardening_each_session_has_its_own_container_root_and_no_other_can_enter_its_state() {
    use std::os::unix::fs::MetadataExt;
    let _vm = agentd_tests::vm::enter();
    let mut d = Daemon::start();
    let (a, b) = (d.session(), d.session());
    let uid_of =
        |d: &Daemon, id: &str| d.json(&["inspect", id])["container_uid"].as_u64().unwrap() as u32;
    let (ua, ub) = (uid_of(&d, &a), uid_of(&d, &b));
    assert_ne!(ua, ub, "two sessions share a container root");
    for u in [ua, ub] {
        assert!(
            (0x7000_0000..0x7001_0000).contains(&u),
            "{u:#x} outside the range"
        );
    }
    let root = d.root.clone();
    let state = |id: &str| root.join("state/sessions").join(id);
    let md = std::fs::metadata(state(&a)).unwrap();
    assert_eq!((md.uid(), md.mode() & 0o777), (ua, 0o700));
    // Inside, the root of each is uid 0 mapped to its own host uid.
    let map = d.run(&["exec", &a, "--", "cat", "/proc/self/uid_map"]);
    let map = String::from_utf8_lossy(&map.stdout).into_owned();
    let ua_text = ua.to_string();
    assert!(
        map.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["0", ua_text.as_str(), "1"]),
        "{map}"
    );
    // B's root, and uid 100000 (every session's root before), cannot even list A's state.
    assert!(
        lists_as(ua, &state(&a)),
        "A's own root cannot list its state"
    );
    assert!(
        !lists_as(ub, &state(&a)),
        "B's container root lists A's state"
    );
    assert!(!lists_as(100_000, &state(&a)), "uid 100000 lists A's state");
    // A restarted daemon keeps each session's uid (from its record), and its calls run.
    d.crash();
    d.spawn();
    assert_eq!(uid_of(&d, &a), ua);
    let c = d.run(&["exec", &a, "--", "true"]);
    assert!(c.status.success());
    // A third session does not take a uid a kept session holds.
    let c3 = d.session();
    let u3 = uid_of(&d, &c3);
    assert!(u3 != ua && u3 != ub, "{u3:#x} reused");
    for id in [&a, &b, &c3] {
        let _ = d.json(&["kill", id]);
    }
}
