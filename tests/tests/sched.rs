//! agentd's sched_ext scheduler on the real kernel (docs/scheduler.md): it loads in partial
//! mode and schedules the SCHED_EXT tasks of the cgroups it is told about while the host's
//! tasks stay in the fair class; detaching it returns every task to the fair class within a
//! second; the per-call accounting program counts on- and off-CPU time and run-queue wait.
//! On the 6.12 kernel (no sched_ext) the probe says so and the accounting still works.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use agentd_bpf::sched::{self, Class, Entry, SchedError, Scheduler};
use agentd_tests::vm::{self, Kernel};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A child of the root cgroup owned by one test; killed and removed on drop.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new(name: &str) -> TestCgroup {
        let root = Path::new(CGROUP_ROOT);
        fs::write(root.join("cgroup.subtree_control"), "+cpu +pids").unwrap();
        let path = root.join(format!("agentd-sched-{name}"));
        let _ = fs::write(path.join("cgroup.kill"), "1");
        let _ = fs::remove_dir(&path);
        fs::create_dir(&path).unwrap();
        TestCgroup(path)
    }

    fn id(&self) -> u64 {
        fs::metadata(&self.0).unwrap().ino()
    }

    /// `sh -c SCRIPT` started inside this cgroup (it moves itself before exec).
    fn spawn(&self, script: &str) -> Child {
        Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec {script}",
                self.0.display()
            ))
            .spawn()
            .unwrap()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = fs::write(self.0.join("cgroup.kill"), "1");
        for _ in 0..200 {
            if fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn set_policy(pid: u32, policy: i32) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a plain syscall on a pid with a live param struct.
    let r = unsafe { libc::sched_setscheduler(pid as i32, policy, &param) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn policy_of(pid: u32) -> i32 {
    // SAFETY: a plain syscall on a pid.
    unsafe { libc::sched_getscheduler(pid as i32) }
}

/// The `ext.enabled` line of /proc/PID/sched, when the kernel prints one; else whether the
/// scheduler is attached at all and the task's policy is SCHED_EXT.
fn on_ext(pid: u32) -> bool {
    let s = fs::read_to_string(format!("/proc/{pid}/sched")).unwrap_or_default();
    if let Some(l) = s
        .lines()
        .find(|l| l.trim_start().starts_with("ext.enabled"))
    {
        return l
            .split(':')
            .nth(1)
            .map(|v| v.trim() == "1")
            .unwrap_or(false);
    }
    sched::attached().is_some() && policy_of(pid) == sched::SCHED_EXT
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    t.elapsed()
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn sched_loads_partial_schedules_session_tasks_and_detach_returns_them_within_1s() {
    let vm = vm::enter();
    let loaded = Scheduler::load(&sched::Config::default(), true);
    if vm.kernel == Kernel::Fallback {
        let e = loaded.expect_err("6.12 has no sched_ext: the load must fail");
        assert!(matches!(e, SchedError::NotSupported(_)), "{e}");
        assert!(e.to_string().contains("no sched_ext"), "{e}");
        return;
    }
    let mut s = loaded.unwrap().expect("attached");
    assert_eq!(sched::attached().as_deref(), Some(sched::OPS_NAME));
    assert_eq!(
        fs::read_to_string("/sys/kernel/sched_ext/switch_all")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        "0",
        "partial mode: the host's tasks must stay in the fair class"
    );
    let lat = TestCgroup::new("lat");
    let batch = TestCgroup::new("batch");
    let e = |class| Entry {
        slot: 1,
        class,
        call_weight: 100,
        session_weight: 100,
    };
    s.set(lat.id(), e(Class::Latency)).unwrap();
    s.set(batch.id(), e(Class::Batch)).unwrap();
    let mut hogs: Vec<Child> = (0..3)
        .map(|_| batch.spawn("/bin/sh -c 'while :; do :; done'"))
        .collect();
    let mut probe = lat.spawn("/bin/sh -c 'while :; do sleep 0.01; done'");
    std::thread::sleep(Duration::from_millis(100));
    for c in hogs.iter().chain(std::iter::once(&probe)) {
        set_policy(c.id(), sched::SCHED_EXT).unwrap();
    }
    let me = std::process::id();
    std::thread::sleep(Duration::from_millis(1500));
    for c in hogs.iter().chain(std::iter::once(&probe)) {
        assert!(on_ext(c.id()), "pid {} is not on sched_ext", c.id());
    }
    assert!(
        !on_ext(me),
        "the test itself (a host task) was switched to sched_ext"
    );
    let st = s.stats().unwrap();
    eprintln!("scheduler stats after 1.5 s: {st:?}");
    eprintln!(
        "/proc/PID/sched of a hog:\n{}",
        fs::read_to_string(format!("/proc/{}/sched", hogs[0].id())).unwrap_or_default()
    );
    assert!(st.enq_batch > 0, "no batch enqueue counted: {st:?}");
    assert!(st.dispatched > 0, "nothing dispatched: {st:?}");
    assert!(st.exit.is_none(), "the kernel ended the scheduler: {st:?}");
    // Killing the scheduler: every task back in the fair class within 1 s.
    s.detach();
    let took = wait_for(
        "sched_ext disabled after detach",
        Duration::from_secs(1),
        || sched::attached().is_none(),
    );
    for c in hogs.iter().chain(std::iter::once(&probe)) {
        assert!(!on_ext(c.id()), "pid {} still on sched_ext", c.id());
        // The policy stays SCHED_EXT: it runs as SCHED_NORMAL until a scheduler loads.
        assert_eq!(policy_of(c.id()), sched::SCHED_EXT);
    }
    eprintln!("detached, tasks back in the fair class after {took:?}");
    for c in hogs.iter_mut().chain(std::iter::once(&mut probe)) {
        let _ = c.kill();
        let _ = c.wait();
    }
}
