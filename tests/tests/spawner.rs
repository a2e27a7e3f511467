//! The per-session call spawner (issue 15, `docs/spawner.md`), in the VM: a call it starts
//! has exactly the confinement of one started by `agentd-sandbox exec` (the old way); the
//! agent killing everything it can (`kill -9 -1`) stops neither the spawner nor the next
//! call, and cannot even see the spawner or its socket; many calls from 10 concurrent
//! clients into one session: none lost or misattributed, no cgroup or spawner left behind.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::fs;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentd_sandbox::launch::ExecRequest;
use agentd_sandbox::spawner::client;

mod sandbox_common;
use sandbox_common::*;

/// A session whose agent runs `script`, started in `<cg>/agent`; waits for session.json.
fn start_session(f: &Fixture, cg: &Path, script: &str) -> Child {
    fs::create_dir_all(cg.join("agent")).unwrap();
    let agent_cg = cg.join("agent");
    let child = sandbox_cmd(f, &["--cgroup", agent_cg.to_str().unwrap()], script)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    agentd_tests::wait_for_path(
        &f.state.join("session.json"),
        Duration::from_secs(60),
        "session did not start",
    );
    assert!(
        client::available(&f.state),
        "no spawner socket in the state dir"
    );
    child
}

fn test_cgroup(name: &str) -> PathBuf {
    let p = PathBuf::from(format!(
        "/sys/fs/cgroup/agentd-spawner-{name}-{}",
        std::process::id()
    ));
    fs::create_dir(&p).unwrap();
    p
}

/// Processes whose parent is `ppid` (field 4 of /proc/<pid>/stat).
fn children_of(ppid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(stat) = fs::read_to_string(e.path().join("stat"))
            && let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r)
            && rest.split_whitespace().nth(1) == Some(ppid.to_string().as_str())
        {
            out.push(pid);
        }
    }
    out
}

/// (the session's init, its spawner) among the runtime's children: the init is in the
/// session's pid namespace (two NSpid entries), the spawner in the runtime's.
fn init_and_spawner(runtime: u32) -> (u32, u32) {
    let kids = children_of(runtime);
    assert_eq!(kids.len(), 2, "the runtime's children: {kids:?}");
    let nested = |p: u32| {
        fs::read_to_string(format!("/proc/{p}/status"))
            .unwrap()
            .lines()
            .find(|l| l.starts_with("NSpid:"))
            .is_some_and(|l| l.split_whitespace().count() > 2)
    };
    match (nested(kids[0]), nested(kids[1])) {
        (true, false) => (kids[0], kids[1]),
        (false, true) => (kids[1], kids[0]),
        other => panic!("cannot tell the init from the spawner: {kids:?} {other:?}"),
    }
}

/// Runs `argv` through the spawner in a new cgroup `cg`; (exit code, stdout).
fn spawner_call(f: &Fixture, cg: &Path, argv: &[&str]) -> (i32, String) {
    fs::create_dir(cg).unwrap();
    let dir = fs::File::open(cg).unwrap();
    let (mut rd, wr) = pipe();
    let null = client::dev_null().unwrap();
    let err = std::io::stderr();
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    let mut req = ExecRequest::new(&f.state, &argv);
    req.cgroup = Some(cg.to_path_buf());
    let started =
        client::start(&req, [dir.as_fd(), null.as_fd(), wr.as_fd(), err.as_fd()]).unwrap();
    drop(wr);
    let mut out = String::new();
    rd.read_to_string(&mut out).unwrap();
    let code = client::wait_exit(&started).unwrap();
    agentd_tests::remove_cgroup_dir(cg);
    (code, out)
}

fn pipe() -> (fs::File, fs::File) {
    let (r, w) = client::pipe().unwrap();
    (fs::File::from(r), fs::File::from(w))
}

/// What a call sees of its own confinement (cgroup path made relative to the test's).
const PROBE: &str = "id -u; id -G; \
    grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp|Seccomp_filters):' /proc/self/status; \
    (printf probe > /proc/self/comm) 2>/dev/null && echo landlock-open || echo landlock-denied; \
    (echo x > /etc/agentd-probe) 2>/dev/null && echo etc-writable || echo etc-denied; \
    sed -E 's/^[0-9]+ [0-9]+ //' /proc/self/mountinfo | sort; \
    sed -E 's#/(exec|spawner)$#/CALL#' /proc/self/cgroup; \
    [ \"$(cut -d' ' -f6 /proc/$$/stat)\" = \"$$\" ] && echo own-session || echo no-session; \
    ulimit -a; pwd; env | sort";

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn spawner_call_has_exactly_the_confinement_of_an_exec_call() {
    let _vm = agentd_tests::vm::enter();
    let f = fixture();
    let cg = test_cgroup("same");
    let agent = start_session(&f, &cg, "while [ ! -e /tmp/stop ]; do sleep 0.1; done");
    let old_way = Command::new(agentd_tests::project_binary("agentd-sandbox"))
        .arg("exec")
        .arg("--state")
        .arg(&f.state)
        .arg("--cgroup")
        .arg({
            fs::create_dir(cg.join("exec")).unwrap();
            cg.join("exec")
        })
        .args(["--", "sh", "-c", PROBE])
        .output()
        .unwrap();
    assert!(old_way.status.success());
    let old = String::from_utf8_lossy(&old_way.stdout).into_owned();
    agentd_tests::remove_cgroup_dir(&cg.join("exec"));
    let (code, new) = spawner_call(&f, &cg.join("spawner"), &["sh", "-c", PROBE]);
    eprintln!("exec:\n{old}\nspawner:\n{new}");
    assert_eq!(code, 0);
    assert_eq!(old, new, "the spawner's call is confined differently");
    // And it is the confinement we expect, not merely the same.
    assert!(new.starts_with("1000\n1000\n"), "{new}");
    assert!(new.contains("CapEff:\t0000000000000000"), "{new}");
    assert!(new.contains("CapBnd:\t0000000000000000"), "{new}");
    assert!(
        new.contains("NoNewPrivs:\t1") && new.contains("Seccomp:\t2"),
        "{new}"
    );
    assert!(
        new.contains("landlock-denied") && new.contains("etc-denied"),
        "{new}"
    );
    assert!(new.contains("own-session"), "{new}");
    assert!(
        new.lines()
            .any(|l| l.starts_with("0::") && l.ends_with("/CALL")),
        "{new}"
    );
    // A command that does not exist: an error, nothing runs, the spawner goes on.
    fs::create_dir(cg.join("bad")).unwrap();
    let dir = fs::File::open(cg.join("bad")).unwrap();
    let null = client::dev_null().unwrap();
    let mut bad = ExecRequest::new(&f.state, &["/no/such/tool".into()]);
    bad.cgroup = Some(cg.join("bad"));
    let e = client::start(
        &bad,
        [dir.as_fd(), null.as_fd(), null.as_fd(), null.as_fd()],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("/no/such/tool") && e.contains("No such file"),
        "{e}"
    );
    drop(dir);
    agentd_tests::remove_cgroup_dir(&cg.join("bad"));
    let (code, out) = spawner_call(
        &f,
        &cg.join("last"),
        &["sh", "-c", "touch /tmp/stop; echo ok"],
    );
    assert_eq!((code, out.as_str()), (0, "ok\n"));
    assert!(agent.wait_with_output().unwrap().status.success());
    assert!(!f.state.exists());
    agentd_tests::remove_cgroup_dir(&cg.join("agent"));
    agentd_tests::remove_cgroup_dir(&cg);
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn spawner_survives_the_agent_killing_everything_it_can_see() {
    let _vm = agentd_tests::vm::enter();
    let f = fixture();
    let cg = test_cgroup("kill");
    let state = f.state.display().to_string();
    // The agent: waits for a long call to run, then kill -9 -1 (everything it may signal in
    // its pid namespace: the call too, which runs as its uid), looks for the spawner and
    // its socket, and waits for the next call to tell it to stop.
    let script = format!(
        "while [ ! -e /tmp/call-running ]; do sleep 0.1; done; kill -9 -1; \
         if [ -e {state}/spawner.sock ] || ls -A {state} 2>/dev/null | grep -q .; then echo seen; else echo hidden; fi > /tmp/state-entries; \
         ls /proc | grep -cE '^[0-9]+$' > /tmp/pids; touch /tmp/killed; \
         while [ ! -e /tmp/stop ]; do sleep 0.1; done; echo agent-done"
    );
    let agent = start_session(&f, &cg, &script);
    let runtime = agent.id();
    let (init, spawner) = init_and_spawner(runtime);
    let long = {
        let st = f.state.clone();
        let cgl = cg.join("long");
        std::thread::spawn(move || {
            let fx = Fixture {
                _dir: tempfile::tempdir().unwrap(),
                root: PathBuf::new(),
                repo: PathBuf::new(),
                state: st,
            };
            spawner_call(
                &fx,
                &cgl,
                &["sh", "-c", "touch /tmp/call-running; exec sleep 1000"],
            )
        })
    };
    let t = Instant::now();
    let inside = |p: &str| fs::read_to_string(format!("/proc/{init}/root{p}")).ok();
    while inside("/tmp/killed").is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the agent never killed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (pids, entries) = (
        inside("/tmp/pids").unwrap(),
        inside("/tmp/state-entries").unwrap(),
    );
    eprintln!(
        "after kill -9 -1: {} pids visible inside, state dir entries {entries:?}",
        pids.trim()
    );
    assert_eq!(
        entries.trim(),
        "hidden",
        "the agent sees the state dir's contents"
    );
    // The running call was the agent's to kill (same uid): it ended with SIGKILL.
    let (code, _) = long.join().unwrap();
    assert_eq!(code, 137);
    // The spawner lives on (the same process) and serves the next call.
    assert_eq!(init_and_spawner(runtime), (init, spawner));
    let (code, out) = spawner_call(
        &f,
        &cg.join("next"),
        &["sh", "-c", "echo next-call; touch /tmp/stop"],
    );
    assert_eq!((code, out.as_str()), (0, "next-call\n"));
    let out = agent.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("agent-done"));
    assert!(out.status.success());
    assert!(!f.state.exists());
    agentd_tests::remove_cgroup_dir(&cg.join("agent"));
    agentd_tests::remove_cgroup_dir(&cg);
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn spawner_many_calls_from_ten_clients_none_lost_and_nothing_left() {
    let _vm = agentd_tests::vm::enter();
    // 200 by default (docs/test-vm.md); issue 15's 1,000: AGENTD_SPAWNER_CALLS=1000.
    let total = agentd_tests::soak_size("AGENTD_SPAWNER_CALLS", 200, 1) as usize;
    let f = fixture();
    let cg = test_cgroup("many");
    fs::create_dir(cg.join("calls")).unwrap();
    let agent = start_session(&f, &cg, "while [ ! -e /tmp/stop ]; do sleep 0.1; done");
    let (_, spawner) = init_and_spawner(agent.id());
    let t = Instant::now();
    let clients = 10;
    std::thread::scope(|s| {
        for c in 0..clients {
            let (f, cg) = (&f, &cg);
            s.spawn(move || {
                for i in (c..total).step_by(clients) {
                    let dir = cg.join("calls").join(i.to_string());
                    // Each call says who it is and where it runs: its own cgroup, nobody else's.
                    let (code, out) = spawner_call(
                        f,
                        &dir,
                        &[
                            "sh",
                            "-c",
                            &format!("echo call-{i}; cat /proc/self/cgroup; exit {}", i % 7),
                        ],
                    );
                    assert_eq!(code, (i % 7) as i32, "call {i}");
                    assert!(out.starts_with(&format!("call-{i}\n")), "call {i}: {out}");
                    assert!(
                        out.lines()
                            .any(|l| l.starts_with("0::") && l.ends_with(&format!("/calls/{i}"))),
                        "call {i} ran elsewhere: {out}"
                    );
                    if (i + 1) % 100 == 0 {
                        eprintln!("spawner: {} calls after {:.1?}", i + 1, t.elapsed());
                    }
                }
            });
        }
    });
    let took = t.elapsed();
    eprintln!(
        "spawner: {total} calls from {clients} clients in {took:.1?} ({:.1} ms/call)",
        took.as_secs_f64() * 1000.0 / total as f64
    );
    let left: Vec<_> = fs::read_dir(cg.join("calls"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "call cgroups left: {left:?}");
    // End the session: the spawner goes with it.
    let (code, _) = spawner_call(&f, &cg.join("calls/stop"), &["touch", "/tmp/stop"]);
    assert_eq!(code, 0);
    assert!(agent.wait_with_output().unwrap().status.success());
    assert!(
        !Path::new(&format!("/proc/{spawner}")).exists(),
        "the spawner outlived its session"
    );
    assert!(!f.state.exists());
    let bin = agentd_tests::project_binary("agentd-sandbox");
    for e in fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(exe) = fs::read_link(e.path().join("exe")) {
            assert_ne!(exe, bin, "a sandbox process survived: {:?}", e.path());
        }
    }
    agentd_tests::remove_cgroup_dir(&cg.join("calls"));
    agentd_tests::remove_cgroup_dir(&cg.join("agent"));
    agentd_tests::remove_cgroup_dir(&cg);
}

/// Whether `pid` has ended (gone, or a zombie nobody reaped yet).
fn ended(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .and_then(|(_, r)| r.split_whitespace().next())
            .is_some_and(|st| st == "Z" || st == "X"),
    }
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn sigkill_of_the_runtime_ends_the_init_the_agent_and_the_spawner() {
    let _vm = agentd_tests::vm::enter();
    let f = fixture();
    let cg = test_cgroup("sigkill");
    let mut runtime = start_session(&f, &cg, "exec sleep 1000");
    let (init, spawner) = init_and_spawner(runtime.id());
    let t = Instant::now();
    let agent = loop {
        if let Some(a) = children_of(init).first() {
            break *a;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no agent under the init"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // A call running too: it must end with its session.
    let call_cg = cg.join("call");
    fs::create_dir(&call_cg).unwrap();
    let dir = fs::File::open(&call_cg).unwrap();
    let null = client::dev_null().unwrap();
    let mut req = ExecRequest::new(&f.state, &["sleep".into(), "1000".into()]);
    req.cgroup = Some(call_cg.clone());
    let started = client::start(
        &req,
        [dir.as_fd(), null.as_fd(), null.as_fd(), null.as_fd()],
    )
    .unwrap();
    let call = started.pid as u32;
    drop(dir);
    runtime.kill().unwrap();
    runtime.wait().unwrap();
    let t = Instant::now();
    loop {
        let alive: Vec<(&str, u32)> = [
            ("init", init),
            ("agent", agent),
            ("spawner", spawner),
            ("call", call),
        ]
        .into_iter()
        .filter(|(_, p)| !ended(*p))
        .collect();
        if alive.is_empty() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "still running 30 s after the runtime's SIGKILL: {alive:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The call's connection ends with the spawner (no exit to report: the daemon reads
    // the cgroup instead).
    assert!(client::wait_exit(&started).is_err());
    // The runtime could not clean up: the state stays mounted until destroyed.
    destroy(&f);
    for d in [&call_cg, &cg.join("agent"), &cg] {
        agentd_tests::remove_cgroup_dir(d);
    }
}
