//! `agentd doctor` against fake /proc and /sys trees and canned live-probe answers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::fs;
use std::path::{Path, PathBuf};

use agentd::doctor::{self, Host, LiveProbes, Status};
use agentd_bpf::probe::Feature;

/// A fake host: files under a temp dir, live answers from fields.
struct Fake {
    root: tempfile::TempDir,
    namespaces: Result<(), String>,
    landlock: Result<u32, String>,
    clone3: Result<bool, String>,
    lsm_load: Result<bool, String>,
    memcg_ops: bool,
    writable: bool,
    sched_load: Result<(), String>,
}

impl Fake {
    /// A healthy cgroup v2 host (like the test VM).
    fn unified() -> Fake {
        let f = Fake {
            root: tempfile::tempdir().unwrap(),
            namespaces: Ok(()),
            landlock: Ok(10),
            clone3: Ok(true),
            lsm_load: Ok(true),
            memcg_ops: false,
            writable: true,
            sched_load: Ok(()),
        };
        f.write(
            "proc/self/mountinfo",
            "22 1 0:21 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
        );
        f.write(
            "sys/fs/cgroup/cgroup.controllers",
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        );
        f.write("proc/self/cgroup", "0::/\n");
        f.write("proc/sys/user/max_user_namespaces", "15000\n");
        f.write(
            "proc/sys/kernel/seccomp/actions_avail",
            "kill_process kill_thread trap errno user_notif trace log allow\n",
        );
        f.write("proc/filesystems", "nodev\ttmpfs\nnodev\toverlay\n\text4\n");
        f.write("dev/loop-control", "");
        f.write("usr/sbin/mkfs.ext4", "");
        f.write(
            "proc/pressure/memory",
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        );
        f.write("sys/kernel/sched_ext/state", "disabled\n");
        f.write(
            "proc/self/status",
            "Name:\tagentd\nCapEff:\t000001ffffffffff\n",
        );
        f.write("sys/kernel/btf/vmlinux", "");
        f.write(
            "sys/kernel/security/lsm",
            "lockdown,capability,landlock,yama,bpf",
        );
        f
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.root.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn remove(&self, rel: &str) {
        fs::remove_file(self.root.path().join(rel)).unwrap();
    }
}

impl LiveProbes for Fake {
    fn namespaces(&self) -> Result<(), String> {
        self.namespaces.clone()
    }
    fn landlock_abi(&self) -> Result<u32, String> {
        self.landlock.clone()
    }
    fn clone_into_cgroup(&self) -> Result<bool, String> {
        self.clone3.clone()
    }
    fn bpf_loadable(&self, feature: Feature) -> Result<bool, String> {
        assert_eq!(feature, Feature::Lsm);
        self.lsm_load.clone()
    }
    fn btf_has_struct(&self, path: &Path, name: &str) -> Result<bool, String> {
        assert!(
            path.starts_with(self.root.path()),
            "BTF read outside the fake root"
        );
        assert_eq!(name, "memcg_bpf_ops");
        Ok(self.memcg_ops)
    }
    fn kernel_release(&self) -> String {
        "7.3.4-test".into()
    }
    fn sched_loads(&self) -> Result<(), String> {
        self.sched_load.clone()
    }
}

impl Host for Fake {
    fn root(&self) -> &Path {
        self.root.path()
    }
    fn writable(&self, abs: &str) -> bool {
        let _: PathBuf = self.path(abs);
        self.writable
    }
}

fn status_of(report: &doctor::Report, mechanism: &str) -> Status {
    report.check(mechanism).unwrap().status
}

#[test]
fn unified_host_is_ready_and_names_only_expected_degradations() {
    let report = doctor::run(&Fake::unified());
    assert!(report.ready(), "{}", report.render());
    for c in &report.checks {
        let expected = if c.mechanism == "memcg_bpf_ops" {
            Status::Degraded
        } else {
            Status::Available
        };
        assert_eq!(c.status, expected, "{}: {}", c.mechanism, c.detail);
    }
    assert!(report.render().contains("ready: a default session can run"));
}

#[test]
fn hybrid_cgroups_block_and_are_named() {
    let f = Fake::unified();
    f.write(
        "proc/self/mountinfo",
        "26 25 0:23 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
         30 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
         31 25 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n",
    );
    f.write("sys/fs/cgroup/unified/cgroup.controllers", "");
    let report = doctor::run(&f);
    assert!(!report.ready());
    let c = report.check("cgroup2").unwrap();
    assert_eq!(c.status, Status::Missing);
    assert!(c.detail.contains("hybrid cgroups"), "{}", c.detail);
    assert!(
        c.detail.contains("memory at /sys/fs/cgroup/memory"),
        "{}",
        c.detail
    );
    assert!(
        c.detail
            .contains("/sys/fs/cgroup/unified has no controllers"),
        "{}",
        c.detail
    );
    assert!(
        report
            .render()
            .contains("NOT READY: a default session needs cgroup2")
    );
}

#[test]
fn cgroup2_without_v1_but_lacking_controllers_says_which() {
    let f = Fake::unified();
    f.write("sys/fs/cgroup/cgroup.controllers", "cpu io\n");
    let c = doctor::run(&f).check("cgroup2").unwrap().clone();
    assert_eq!(c.status, Status::Missing);
    assert!(
        c.detail.contains("lacks the memory, pids controller(s)"),
        "{}",
        c.detail
    );
}

#[test]
fn undelegated_cgroup_is_missing_with_the_systemd_fix() {
    let mut f = Fake::unified();
    f.write("proc/self/cgroup", "0::/system.slice/agentd.service\n");
    f.writable = false;
    let c = doctor::run(&f).check("cgroup2").unwrap().clone();
    assert_eq!(c.status, Status::Missing);
    assert!(
        c.detail
            .contains("/sys/fs/cgroup/system.slice/agentd.service is not writable")
    );
    assert!(c.fix.unwrap().contains("Delegate=yes"));
}

#[test]
fn no_cgroup2_mounted() {
    let f = Fake::unified();
    f.write(
        "proc/self/mountinfo",
        "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n",
    );
    let c = doctor::run(&f).check("cgroup2").unwrap().clone();
    assert_eq!(c.detail, "no cgroup2 hierarchy is mounted");
}

#[test]
fn user_namespaces_disabled_or_refused_block() {
    let f = Fake::unified();
    f.write("proc/sys/user/max_user_namespaces", "0\n");
    let r = doctor::run(&f);
    assert_eq!(status_of(&r, "userns"), Status::Missing);
    assert!(!r.ready());

    let mut f = Fake::unified();
    f.namespaces = Err("unshare: Operation not permitted".into());
    let r = doctor::run(&f);
    assert!(
        r.check("userns")
            .unwrap()
            .detail
            .contains("Operation not permitted")
    );
    assert!(!r.ready());
}

#[test]
fn apparmor_userns_restriction_is_reported() {
    let f = Fake::unified();
    f.write(
        "proc/sys/kernel/apparmor_restrict_unprivileged_userns",
        "1\n",
    );
    let r = doctor::run(&f);
    assert_eq!(status_of(&r, "userns"), Status::Available);
    assert!(r.check("userns").unwrap().detail.contains("AppArmor"));
}

#[test]
fn seccomp_without_user_notification_degrades() {
    let f = Fake::unified();
    f.write(
        "proc/sys/kernel/seccomp/actions_avail",
        "kill_process kill_thread trap errno trace log allow\n",
    );
    let r = doctor::run(&f);
    assert_eq!(status_of(&r, "seccomp"), Status::Degraded);
    assert!(r.ready());
    f.remove("proc/sys/kernel/seccomp/actions_avail");
    let r = doctor::run(&f);
    assert_eq!(status_of(&r, "seccomp"), Status::Missing);
    assert!(!r.ready());
}

#[test]
fn exec_capture_needs_user_notification_and_gets_exit_statuses_from_6_15() {
    let f = Fake::unified();
    // The fake kernel is 7.3 (PIDFD_INFO_EXIT); 6.12's degradation is a unit test.
    let r = doctor::run(&f);
    assert_eq!(status_of(&r, "exec_capture"), Status::Available);
    f.write(
        "proc/sys/kernel/seccomp/actions_avail",
        "kill_process kill_thread trap errno trace log allow\n",
    );
    let r = doctor::run(&f);
    assert_eq!(status_of(&r, "exec_capture"), Status::Missing);
    // Not required: a default session (capture = "shim") still runs.
    assert!(r.ready());
}

#[test]
fn overlay_as_module_is_available_absent_is_missing() {
    let f = Fake::unified();
    f.write("proc/filesystems", "nodev\ttmpfs\n");
    let r = doctor::run(&f);
    assert_eq!(status_of(&r, "overlayfs"), Status::Missing);
    f.write(
        "lib/modules/7.3.4-test/kernel/fs/overlayfs/overlay.ko.xz",
        "",
    );
    let r = doctor::run(&f);
    assert_eq!(status_of(&r, "overlayfs"), Status::Available);
    assert!(
        r.check("overlayfs")
            .unwrap()
            .detail
            .contains("loaded on first mount")
    );
}

#[test]
fn no_sched_ext_falls_back_to_cpu_weight() {
    let f = Fake::unified();
    f.remove("sys/kernel/sched_ext/state");
    let r = doctor::run(&f);
    let c = r.check("sched_ext").unwrap();
    assert_eq!(c.status, Status::Degraded);
    assert_eq!(c.fallback.as_deref(), Some("cpu.weight / cpu.max per call"));
    assert!(r.ready(), "sched_ext is optional");
    assert!(
        c.detail.contains("not supported by this kernel"),
        "{}",
        c.detail
    );
}

#[test]
fn agentd_scheduler_attached_is_loaded_and_a_failed_load_says_why() {
    let mut f = Fake::unified();
    let c = doctor::run(&f).check("sched_ext").unwrap().clone();
    assert_eq!(c.status, Status::Available);
    assert!(c.detail.contains("loads"), "{}", c.detail);
    f.write("sys/kernel/sched_ext/state", "enabled\n");
    f.write("sys/kernel/sched_ext/root/ops", "agentd\n");
    let c = doctor::run(&f).check("sched_ext").unwrap().clone();
    assert_eq!(c.status, Status::Available);
    assert!(c.detail.starts_with("loaded"), "{}", c.detail);
    f.write("sys/kernel/sched_ext/state", "disabled\n");
    f.sched_load = Err("kfunc scx_bpf_dsq_insert missing".into());
    let c = doctor::run(&f).check("sched_ext").unwrap().clone();
    assert_eq!(c.status, Status::Degraded);
    assert!(c.detail.starts_with("failed") && c.detail.contains("scx_bpf_dsq_insert"));
    assert_eq!(c.fallback.as_deref(), Some("cpu.weight / cpu.max per call"));
}

#[test]
fn foreign_sched_ext_scheduler_is_named() {
    let f = Fake::unified();
    f.write("sys/kernel/sched_ext/state", "enabled\n");
    f.write("sys/kernel/sched_ext/root/ops", "scx_rusty\n");
    let c = doctor::run(&f).check("sched_ext").unwrap().clone();
    assert_eq!(c.status, Status::Degraded);
    assert!(c.detail.contains("scx_rusty"));
}

#[test]
fn bpf_lsm_inactive_or_refused_degrades_with_reason() {
    let f = Fake::unified();
    f.write(
        "sys/kernel/security/lsm",
        "lockdown,capability,landlock,yama",
    );
    let c = doctor::run(&f).check("bpf_lsm").unwrap().clone();
    assert_eq!(c.status, Status::Degraded);
    assert!(c.detail.contains("not an active LSM"));

    let mut f = Fake::unified();
    f.lsm_load = Err("Operation not permitted (os error 1)".into());
    let c = doctor::run(&f).check("bpf_lsm").unwrap().clone();
    assert!(
        c.detail.contains("refused: Operation not permitted"),
        "{}",
        c.detail
    );
}

#[test]
fn missing_capabilities_psi_clone3_degrade() {
    let mut f = Fake::unified();
    f.write("proc/self/status", "CapEff:\t0000000000000000\n");
    f.clone3 = Ok(false);
    f.remove("proc/pressure/memory");
    let r = doctor::run(&f);
    for m in ["bpf", "clone_into_cgroup", "psi"] {
        assert_eq!(status_of(&r, m), Status::Degraded, "{m}");
    }
    assert!(r.ready());
}

#[test]
fn landlock_follows_the_sandbox_decision_for_the_default_plan() {
    // ABI 6 (Linux 6.12): runs without resolve_unix, named.
    let mut f = Fake::unified();
    f.landlock = Ok(6);
    let r = doctor::run(&f);
    let c = r.check("landlock").unwrap();
    assert_eq!(c.status, Status::Degraded);
    assert!(c.detail.contains("resolve_unix (ABI 9)"), "{}", c.detail);
    assert!(r.ready());
    // No Landlock: the sandbox refuses a default session, so the doctor blocks.
    f.landlock = Err("Operation not supported".into());
    let r = doctor::run(&f);
    assert_eq!(status_of(&r, "landlock"), Status::Missing);
    assert!(!r.ready());
    assert!(
        r.render()
            .contains("NOT READY: a default session needs landlock")
    );
}

#[test]
fn memcg_ops_available_when_btf_has_them() {
    let mut f = Fake::unified();
    f.memcg_ops = true;
    assert_eq!(
        status_of(&doctor::run(&f), "memcg_bpf_ops"),
        Status::Available
    );
}

#[test]
fn no_loop_devices_or_mkfs_block_sessions_and_say_why() {
    let f = Fake::unified();
    assert_eq!(
        status_of(&doctor::run(&f), "session_disk"),
        Status::Available
    );
    f.remove("dev/loop-control");
    let r = doctor::run(&f);
    let c = r.check("session_disk").unwrap();
    assert_eq!(c.status, Status::Missing);
    assert!(c.detail.contains("/dev/loop-control"), "{}", c.detail);
    assert!(!r.ready(), "sessions cannot start without their disk");
    f.write("dev/loop-control", "");
    f.remove("usr/sbin/mkfs.ext4");
    let r = doctor::run(&f);
    let c = r.check("session_disk").unwrap();
    assert_eq!(c.status, Status::Missing);
    assert!(c.detail.contains("mkfs.ext4"), "{}", c.detail);
}

#[test]
fn json_report_has_every_row() {
    let report = doctor::run(&Fake::unified());
    let v: serde_json::Value = serde_json::to_value(&report).unwrap();
    assert_eq!(v["kernel"], "7.3.4-test");
    assert_eq!(v["checks"].as_array().unwrap().len(), 13);
    assert_eq!(v["checks"][3]["mechanism"], "cgroup2");
    assert_eq!(v["checks"][3]["status"], "available");
}
