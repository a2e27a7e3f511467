//! OCI bundle roots (`agentd-sandbox run --bundle`) in the test VM: a busybox bundle built in
//! the test runs confined; configs that would weaken confinement are refused by field; start
//! latency against `crun run` on the same bundle.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod sandbox_common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sandbox_common::*;

/// An OCI bundle of a static busybox: `rootfs/` with the mount points the sandbox needs, and
/// a config.json (the caller edits `config` before writing it with [`write_config`]).
struct Bundle {
    dir: PathBuf,
    config: serde_json::Value,
}

fn bundle(f: &Fixture) -> Bundle {
    let dir = f.root.join("bundle");
    let rootfs = dir.join("rootfs");
    for d in [
        "bin",
        "proc",
        "dev",
        "tmp",
        "run",
        "home",
        "workspace",
        "sys",
        "etc",
    ] {
        fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "cat", "ls", "id", "echo", "touch", "hostname", "pwd", "grep", "true",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    fs::write(rootfs.join("etc/bundle-release"), "busybox bundle\n").unwrap();
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs", "readonly": true},
        "process": {
            "terminal": false,
            "user": {"uid": 1000, "gid": 1000},
            "args": ["sh", "-c", "echo from-bundle"],
            "env": ["PATH=/bin", "HOME=/home/agent"],
            "cwd": "/workspace",
            "capabilities": {"bounding": [], "effective": [], "permitted": [], "ambient": []},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 512, "soft": 256}],
            "noNewPrivileges": true
        },
        "hostname": "bundle-host",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts"},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}
            ],
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "maskedPaths": ["/proc/kcore", "/etc/bundle-release"],
            "readonlyPaths": ["/proc/sys"]
        }
    });
    Bundle { dir, config }
}

fn write_config(b: &Bundle) {
    fs::write(
        b.dir.join("config.json"),
        serde_json::to_vec_pretty(&b.config).unwrap(),
    )
    .unwrap();
}

fn run_bundle(f: &Fixture, b: &Bundle, extra: &[&str]) -> (i32, String, String) {
    let out = Command::new(agentd_tests::project_binary("agentd-sandbox"))
        .arg("run")
        .arg("--workspace")
        .arg(&f.repo)
        .arg("--state")
        .arg(&f.state)
        .arg("--bundle")
        .arg(&b.dir)
        .args(extra)
        .output()
        .unwrap();
    let so = String::from_utf8_lossy(&out.stdout).into_owned();
    let se = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!(
        "--- bundle run {extra:?}: {:?}\n{so}--- stderr\n{se}",
        out.status
    );
    (out.status.code().unwrap_or(-1), so, se)
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn sandbox_bundle_root_runs_the_config_process_confined_and_refuses_weakening_fields() {
    let _vm = agentd_tests::vm::enter();
    let f = fixture();
    let before = snapshot(&f.repo);
    let mut b = bundle(&f);
    b.config["process"]["args"] = serde_json::json!([
        "sh",
        "-c",
        "id -u; hostname; pwd; cat a.txt; echo edit >> a.txt; \
         ls /usr 2>&1 | head -1; cat /etc/bundle-release; \
         grep -E '^(NoNewPrivs|Seccomp|CapEff):' /proc/self/status; \
         grep 'open files' /proc/self/limits; \
         if touch /bin/x 2>/dev/null; then echo WROTE-ROOT; fi; \
         if touch /sys/x 2>/dev/null; then echo WROTE-SYS; fi; \
         ls /sys/kernel >/dev/null && echo SYS-OK; echo finished"
    ]);
    write_config(&b);
    let rootfs_before = snapshot(&b.dir);
    let (code, out, _) = run_bundle(&f, &b, &["--keep-state"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1000");
    assert_eq!(lines[1], "bundle-host");
    assert_eq!(lines[2], "/workspace");
    assert_eq!(lines[3], "alpha");
    // The bundle's root, not the host's: no /usr; its masked path is empty.
    assert!(lines[4].contains("No such file"), "{out}");
    assert!(
        !out.contains("busybox bundle"),
        "maskedPaths not applied: {out}"
    );
    assert!(out.contains("NoNewPrivs:\t1") && out.contains("Seccomp:\t2"));
    assert!(out.contains("CapEff:\t0000000000000000"));
    assert!(
        out.lines()
            .any(|l| l.starts_with("Max open files") && l.contains(" 256 ") && l.contains(" 512 ")),
        "{out}"
    );
    assert!(!out.contains("WROTE-"), "{out}");
    assert!(out.contains("SYS-OK") && out.contains("finished"), "{out}");
    assert_eq!(snapshot(&f.repo), before, "the repo changed");
    assert_eq!(
        fs::read_to_string(f.state.join("layer/upper/a.txt")).unwrap(),
        "alpha\nedit\n"
    );
    assert_eq!(snapshot(&b.dir), rootfs_before, "the bundle changed");
    destroy(&f);
    // The command line overrides process.args.
    let (code, out, _) = run_bundle(&f, &b, &["--", "echo", "override"]);
    assert_eq!((code, out.as_str()), (0, "override\n"));

    // Fields that would weaken or change confinement: refused, naming the field.
    let refused: Vec<(&str, serde_json::Value, &str)> = vec![
        ("/root/readonly", serde_json::json!(false), "root.readonly"),
        (
            "/process/user/uid",
            serde_json::json!(0),
            "process.user.uid",
        ),
        (
            "/process/capabilities/bounding",
            serde_json::json!(["CAP_SYS_ADMIN"]),
            "process.capabilities",
        ),
        (
            "/process/noNewPrivileges",
            serde_json::json!(false),
            "process.noNewPrivileges",
        ),
        (
            "/process/apparmorProfile",
            serde_json::json!("x"),
            "process.apparmorProfile",
        ),
        ("/hooks", serde_json::json!({"prestart": []}), "hooks"),
        (
            "/linux/seccomp",
            serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW"}),
            "linux.seccomp",
        ),
        (
            "/linux/sysctl",
            serde_json::json!({"net.ipv4.ip_forward": "1"}),
            "linux.sysctl",
        ),
        (
            "/linux/uidMappings",
            serde_json::json!([{"containerID": 0, "hostID": 0, "size": 1}]),
            "linux.uidMappings",
        ),
        (
            "/linux/namespaces",
            serde_json::json!([{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}]),
            "no network namespace",
        ),
        (
            "/linux/namespaces",
            serde_json::json!([{"type": "pid"}, {"type": "network", "path": "/proc/1/ns/net"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}]),
            "joining an existing namespace",
        ),
        (
            "/linux/resources",
            serde_json::json!({"memory": {"limit": 1000000}}),
            "linux.resources.memory",
        ),
        (
            "/mounts",
            serde_json::json!([{"destination": "/workspace/x", "type": "bind", "source": "/etc", "options": ["rbind"]}]),
            "writable bind",
        ),
        (
            "/futureField",
            serde_json::json!(1),
            "futureField: not supported",
        ),
    ];
    for (pointer, value, want) in refused {
        let mut bad = Bundle {
            dir: b.dir.clone(),
            config: b.config.clone(),
        };
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let target = if parent.is_empty() {
            &mut bad.config
        } else {
            bad.config.pointer_mut(parent).unwrap()
        };
        target[key] = value;
        write_config(&bad);
        let (code, out, err) = run_bundle(&f, &bad, &[]);
        assert_eq!(code, 125, "{pointer}");
        assert!(out.is_empty(), "{pointer}: ran: {out}");
        assert!(
            err.contains("config.json") && err.contains(want),
            "{pointer}: want {want:?}: {err}"
        );
        assert!(!f.state.exists(), "{pointer}: state left");
    }
    write_config(&b);
}

/// Median of `agentd-sandbox run --bundle` vs `crun run` on the same busybox bundle (the
/// OCI-runtime reference), 20 sequential starts each; printed, not asserted.
#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn sandbox_bundle_start_latency_against_crun() {
    let _vm = agentd_tests::vm::enter();
    let f = fixture();
    let mut b = bundle(&f);
    b.config["process"]["args"] = serde_json::json!(["true"]);
    write_config(&b);
    let n = 20;
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let mut ours = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let (code, _, _) = run_bundle(&f, &b, &[]);
        ours.push(t.elapsed());
        assert_eq!(code, 0);
    }
    let crun = Path::new("/usr/bin/crun");
    if !crun.exists() {
        eprintln!(
            "sandbox: bundle start+run+teardown median {:?} (N={n}); crun not installed",
            median(ours)
        );
        return;
    }
    // crun as root with the same rootfs; it needs a writable run dir and its own config
    // (root uid allowed for it, no user namespace).
    let crun_bundle = f.root.join("crun-bundle");
    fs::create_dir(&crun_bundle).unwrap();
    std::os::unix::fs::symlink(b.dir.join("rootfs"), crun_bundle.join("rootfs")).unwrap();
    let mut cfg = b.config.clone();
    cfg["root"]["path"] = serde_json::json!(b.dir.join("rootfs"));
    fs::write(
        crun_bundle.join("config.json"),
        serde_json::to_vec(&cfg).unwrap(),
    )
    .unwrap();
    let mut theirs = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        let out = Command::new(crun)
            .args(["--root", &f.root.join("crun-state").display().to_string()])
            .args(["run", "--bundle"])
            .arg(&crun_bundle)
            .arg(format!("agentd-sbx-crun-{i}"))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        theirs.push(t.elapsed());
        assert!(
            out.status.success(),
            "crun: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!(
        "sandbox: same busybox bundle, `true`, start+run+teardown, N={n}: agentd-sandbox run \
         --bundle median {:?}; crun run median {:?}",
        median(ours),
        median(theirs)
    );
}
