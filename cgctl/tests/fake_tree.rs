//! The tree, limits, lifecycle, sweep, spawn fallback and event logic against a fake
//! cgroupfs root (a tempdir populated by `fs::Fake`); the real kernel is exercised by the
//! VM tests in `tests/tests/cgctl.rs`.

// Test helpers outside #[test] fns may unwrap too (a failure is a test failure).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cgctl::fs::{Backend, Fake};
use cgctl::tree::{TreeNode, parse_call_dir, plan_sweep, removal_order, validate_session_id};
use cgctl::{Cgroup, Error, EventKind, EventWatcher, Limits, Max, Root};

const T: Duration = Duration::from_secs(5);

fn fake_root(fake: Fake) -> (tempfile::TempDir, Root) {
    let dir = tempfile::tempdir().unwrap();
    fake.init_root(dir.path(), &["cpu", "io", "memory", "pids"])
        .unwrap();
    let backend: Arc<dyn Backend> = Arc::new(fake);
    let root = Root::create(dir.path().join("agentd.slice"), backend).unwrap();
    (dir, root)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

#[test]
fn hierarchy_enables_controllers_down_to_the_leaves() {
    let (dir, root) = fake_root(Fake::default());
    assert_eq!(
        read(&dir.path().join("cgroup.subtree_control")).trim(),
        "cpu io memory pids"
    );
    let s = root.create_session("abc-1", &Limits::default()).unwrap();
    let call = s.create_call(7, &Limits::default()).unwrap();
    let sp = dir.path().join("agentd.slice/session-abc-1");
    assert_eq!(
        read(&sp.join("cgroup.subtree_control")).trim(),
        "cpu io memory pids"
    );
    assert_eq!(
        read(&sp.join("calls/cgroup.subtree_control")).trim(),
        "cpu io memory pids"
    );
    assert!(sp.join("agent/memory.max").exists());
    assert!(sp.join("calls/7/pids.max").exists());
    assert_eq!(call.cgroup().path(), sp.join("calls/7"));
    assert_eq!(s.call_numbers().unwrap(), vec![7]);
    assert_eq!(root.session_ids().unwrap(), vec!["abc-1".to_string()]);
    // Existing sessions reopen after a restart; a second create of the same id fails.
    assert_eq!(root.session("abc-1").unwrap().agent().name(), "agent");
    assert!(matches!(
        root.create_session("abc-1", &Limits::default()),
        Err(Error::Dir { op: "mkdir", .. })
    ));
}

#[test]
fn limits_are_written_exactly_and_missing_knobs_are_typed_errors() {
    let (dir, root) = fake_root(Fake {
        missing_knobs: vec!["memory.swap.max".into()],
    });
    let s = root
        .create_session(
            "s",
            &Limits {
                memory_max: Some(Max::Limit(1 << 30)),
                ..Limits::default()
            },
        )
        .unwrap();
    let limits = Limits {
        memory_high: Some(Max::Limit(64 << 20)),
        memory_max: Some(Max::Limit(128 << 20)),
        memory_oom_group: Some(true),
        pids_max: Some(Max::Limit(32)),
        cpu_weight: Some(20),
        ..Limits::default()
    };
    let call = s.create_call(1, &limits).unwrap();
    let cp = call.cgroup().path().to_path_buf();
    assert_eq!(read(&cp.join("memory.high")), "67108864");
    assert_eq!(read(&cp.join("memory.max")), "134217728");
    assert_eq!(read(&cp.join("memory.oom.group")), "1");
    assert_eq!(read(&cp.join("pids.max")), "32");
    assert_eq!(read(&cp.join("cpu.weight")), "20");
    assert_eq!(
        read(&dir.path().join("agentd.slice/session-s/memory.max")),
        "1073741824"
    );

    let swap = Limits {
        memory_swap_max: Some(Max::Limit(0)),
        ..Limits::default()
    };
    match s.create_call(2, &swap) {
        Err(Error::UnsupportedKnob { knob, path }) => {
            assert_eq!(knob, "memory.swap.max");
            assert!(path.ends_with("calls/2"));
        }
        other => panic!("expected UnsupportedKnob, got {other:?}"),
    }
    // The failed call left nothing behind.
    assert_eq!(s.call_numbers().unwrap(), vec![1]);

    // A write the kernel refuses names the file and the value.
    match call.cgroup().write("memory.bogus", "42") {
        Err(e @ Error::Write { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("memory.bogus") && msg.contains("\"42\""),
                "{msg}"
            );
        }
        other => panic!("expected Write error, got {other:?}"),
    }
}

#[test]
fn a_controller_the_parent_does_not_offer_is_missing_controller() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    fake.init_root(dir.path(), &["cpu", "memory"]).unwrap();
    let root = Root::create(dir.path().join("r"), Arc::new(fake)).unwrap();
    let s = root.create_session("s", &Limits::default()).unwrap();
    let e = s
        .create_call(
            1,
            &Limits {
                pids_max: Some(Max::Limit(10)),
                ..Limits::default()
            },
        )
        .unwrap_err();
    assert!(
        matches!(&e, Error::MissingController { controller, knob, .. } if controller == "pids" && knob == "pids.max"),
        "{e:?}"
    );
}

#[test]
fn finish_reports_then_removes_the_call() {
    let (_dir, root) = fake_root(Fake::default());
    let s = root.create_session("s", &Limits::default()).unwrap();
    let call = s.create_call(3, &Limits::default()).unwrap();
    let cp = call.cgroup().path().to_path_buf();
    // Simulate a finished workload's figures.
    std::fs::write(cp.join("memory.peak"), format!("{}\n", 210 << 20)).unwrap();
    std::fs::write(
        cp.join("memory.events"),
        "low 0\nhigh 4\nmax 1\noom 1\noom_kill 1\n",
    )
    .unwrap();
    std::fs::write(
        cp.join("cpu.stat"),
        "usage_usec 1000500\nuser_usec 990000\nsystem_usec 10500\n",
    )
    .unwrap();
    std::fs::write(
        cp.join("io.stat"),
        "8:0 rbytes=10 wbytes=20 rios=1 wios=2\n",
    )
    .unwrap();
    std::fs::write(cp.join("pids.peak"), "5\n").unwrap();
    let report = call.finish(T).unwrap();
    assert!(!cp.exists());
    let mem = report.stats.memory.unwrap();
    assert_eq!(mem.peak, Some(210 << 20));
    assert_eq!(mem.events.high, 4);
    assert_eq!(mem.events.oom_kill, 1);
    assert_eq!(report.stats.cpu.usage_usec, 1_000_500);
    assert_eq!(report.stats.io.unwrap().wbytes, 20);
    assert_eq!(report.stats.pids.unwrap().peak, Some(5));
    assert_eq!(report.stats.pressure.memory.unwrap().some.total_usec, 0);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["stats"]["memory"]["peak"], 210u64 << 20);
}

#[test]
fn freeze_kill_and_wait_empty_follow_cgroup_events() {
    let (_dir, root) = fake_root(Fake::default());
    let s = root.create_session("s", &Limits::default()).unwrap();
    let cg = s
        .create_call(1, &Limits::default())
        .unwrap()
        .cgroup()
        .clone();
    cg.freeze(T).unwrap();
    assert_eq!(cg.events().unwrap().get("frozen"), Some(&1));
    cg.thaw(T).unwrap();
    assert_eq!(cg.events().unwrap().get("frozen"), Some(&0));

    std::fs::write(cg.path().join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
    let e = cg.wait_empty(Duration::from_millis(100)).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Timeout {
                what: "populated 0",
                ..
            }
        ),
        "{e:?}"
    );
    // A change of cgroup.events wakes the waiter (inotify), well before its timeout.
    let p = cg.path().join("cgroup.events");
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        std::fs::write(p, "populated 0\nfrozen 0\n").unwrap();
    });
    let start = std::time::Instant::now();
    cg.wait_empty(Duration::from_secs(20)).unwrap();
    assert!(start.elapsed() < Duration::from_secs(5));
    t.join().unwrap();

    std::fs::write(cg.path().join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
    cg.kill().unwrap();
    cg.wait_empty(T).unwrap();
}

#[test]
fn sweep_removes_dead_sessions_bottom_up_and_keeps_the_rest() {
    let (dir, root) = fake_root(Fake::default());
    for id in ["dead1", "dead2", "alive"] {
        let s = root.create_session(id, &Limits::default()).unwrap();
        s.create_call(1, &Limits::default()).unwrap();
        s.create_call(2, &Limits::default()).unwrap();
    }
    std::fs::create_dir(dir.path().join("agentd.slice/not-a-session")).unwrap();
    // A session half-created by a crashed daemon (no agent/calls yet).
    root.cgroup().create_child("session-half").unwrap();
    let report = root.sweep(|id| id != "alive", T).unwrap();
    assert_eq!(report.removed_sessions, vec!["dead1", "dead2", "half"]);
    assert_eq!(report.kept_sessions, vec!["alive"]);
    assert_eq!(report.foreign, vec!["not-a-session"]);
    assert_eq!(
        &report.removed_cgroups[..5],
        &[
            "session-dead1/agent",
            "session-dead1/calls/1",
            "session-dead1/calls/2",
            "session-dead1/calls",
            "session-dead1"
        ]
    );
    assert_eq!(
        root.cgroup().children().unwrap(),
        vec!["not-a-session", "session-alive"]
    );
    assert_eq!(
        root.session("alive").unwrap().call_numbers().unwrap(),
        vec![1, 2]
    );
}

#[test]
fn naming_and_sweep_planning() {
    assert!(validate_session_id("a-Z_09").is_ok());
    for bad in ["", "a/b", "..", "x y", &"a".repeat(65)] {
        assert!(validate_session_id(bad).is_err(), "{bad:?}");
    }
    assert_eq!(parse_call_dir("12"), Some(12));
    assert_eq!(parse_call_dir("012"), None);
    assert_eq!(parse_call_dir("x"), None);
    let names: Vec<String> = [
        "session-a",
        "session-b",
        "session-",
        "other",
        "session-../x",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let plan = plan_sweep(&names, |id| id == "a");
    assert_eq!(plan.remove, vec!["session-a"]);
    assert_eq!(plan.keep, vec!["b"]);
    assert_eq!(plan.foreign, vec!["session-", "other", "session-../x"]);

    let leaf = TreeNode::default();
    let tree = TreeNode {
        children: vec![
            ("agent".into(), leaf.clone()),
            (
                "calls".into(),
                TreeNode {
                    children: vec![("9".into(), leaf.clone())],
                },
            ),
        ],
    };
    let order: Vec<String> = removal_order("session-a", &tree)
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(
        order,
        [
            "session-a/agent",
            "session-a/calls/9",
            "session-a/calls",
            "session-a"
        ]
    );
}

#[test]
fn forced_procs_fallback_is_reported_and_runs_the_program() {
    let (dir, root) = fake_root(Fake::default());
    let s = root.create_session("s", &Limits::default()).unwrap();
    let call = s.create_call(1, &Limits::default()).unwrap();
    let (r, w) = rustix::pipe::pipe().unwrap();
    let mut cmd = cgctl::Command::new("sh");
    cmd.args(["-c", "echo \"$GREETING from $(pwd)\""])
        .env("GREETING", "hello")
        .current_dir("/")
        .stdout(cgctl::Stdio::Fd(w))
        .force_procs_fallback(true);
    let mut child = cmd.spawn_into(call.cgroup()).unwrap();
    assert!(matches!(
        child.placement(),
        cgctl::Placement::ProcsFallback { .. }
    ));
    assert!(child.wait().unwrap().success());
    let mut out = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(r), &mut out).unwrap();
    assert_eq!(out, "hello from /\n");
    // The child moved itself by writing "0" (= self) to cgroup.procs.
    assert!(call.cgroup().read("cgroup.procs").unwrap().starts_with('0'));

    let e = cgctl::Command::new("/nonexistent/prog")
        .force_procs_fallback(true)
        .spawn_into(call.cgroup())
        .unwrap_err();
    assert!(
        matches!(&e, Error::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
        "{e:?}"
    );
    // exec failures inside the child come back through the error pipe.
    // A file with an exec bit but no valid format: execve fails with ENOEXEC in the child.
    let junk = dir.path().join("junk");
    std::fs::write(&junk, [0u8, 1, 2, 3]).unwrap();
    std::fs::set_permissions(&junk, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let e = cgctl::Command::new(&junk)
        .force_procs_fallback(true)
        .spawn_into(call.cgroup())
        .unwrap_err();
    assert!(
        matches!(&e, Error::Spawn { source, .. } if source.raw_os_error() == Some(8 /* ENOEXEC */)),
        "{e:?}"
    );
}

#[test]
fn cgroup_handles_open_by_path() {
    let (_dir, root) = fake_root(Fake::default());
    let path = root.cgroup().path().to_path_buf();
    let cg = Cgroup::open_with(&path, root.cgroup().backend().clone()).unwrap();
    assert_eq!(
        cg.controllers().unwrap(),
        vec!["cpu", "io", "memory", "pids"]
    );
    assert!(Cgroup::open_with(path.join("nope"), Arc::new(Fake::default())).is_err());
}

async fn next(w: &mut EventWatcher) -> cgctl::Event {
    tokio::time::timeout(T, w.next()).await.unwrap().unwrap()
}

#[tokio::test]
async fn event_watcher_reports_creation_memory_events_and_emptying() {
    let (_dir, root) = fake_root(Fake::default());
    let mut w = EventWatcher::new(root.cgroup().path()).unwrap();
    let s = root.create_session("s", &Limits::default()).unwrap();
    let call = s.create_call(1, &Limits::default()).unwrap();
    let cp = call.cgroup().path().to_path_buf();
    let mut created = Vec::new();
    while created.len() < 4 {
        let e = next(&mut w).await;
        assert_eq!(e.kind, EventKind::Created, "{e:?}");
        created.push(e.path);
    }
    assert_eq!(created.last(), Some(&cp));

    std::fs::write(
        cp.join("memory.events"),
        "low 0\nhigh 3\nmax 0\noom 0\noom_kill 0\n",
    )
    .unwrap();
    let e = next(&mut w).await;
    assert_eq!(
        (e.path.as_path(), e.kind),
        (cp.as_path(), EventKind::MemoryHigh { total: 3 })
    );
    std::fs::write(
        cp.join("memory.events"),
        "low 0\nhigh 3\nmax 1\noom 1\noom_kill 1\n",
    )
    .unwrap();
    let kinds = [
        next(&mut w).await.kind,
        next(&mut w).await.kind,
        next(&mut w).await.kind,
    ];
    assert_eq!(
        kinds,
        [
            EventKind::MemoryMax { total: 1 },
            EventKind::Oom { total: 1 },
            EventKind::OomKill { total: 1 }
        ]
    );
    std::fs::write(cp.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
    assert_eq!(next(&mut w).await.kind, EventKind::Populated);
    std::fs::write(cp.join("cgroup.events"), "populated 0\nfrozen 0\n").unwrap();
    assert_eq!(next(&mut w).await.kind, EventKind::Emptied);
    call.finish(T).unwrap();
    let e = next(&mut w).await;
    assert_eq!((e.path, e.kind), (cp, EventKind::Removed));
}
