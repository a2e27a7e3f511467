//! Every doctor row except cgroups and Landlock: namespaces, seccomp, overlayfs, the
//! session disk, sched_ext, BPF, BPF LSM, memcg BPF struct_ops, PSI, clone3
//! CLONE_INTO_CGROUP.

use std::path::Path;

use agentd_bpf::btf::features;
use agentd_bpf::probe::Feature;

use super::{Check, Host, Status, cgroup};

/// All checks, in DESIGN.md's table order.
pub(super) fn all(host: &dyn Host) -> Vec<Check> {
    vec![
        namespaces(host),
        seccomp(host),
        exec_capture(host),
        cgroup::check(host),
        clone_into_cgroup(host),
        overlayfs(host),
        session_disk(host),
        super::landlock::check(host.landlock_abi()),
        psi(host),
        sched_ext(host),
        bpf(host),
        bpf_lsm(host),
        memcg_bpf_ops(host),
    ]
}

pub(super) fn row(mechanism: &'static str, required: bool) -> Check {
    Check {
        mechanism,
        status: Status::Available,
        detail: String::new(),
        fallback: None,
        fix: None,
        required,
    }
}

pub(super) fn missing(mut c: Check, detail: String, fix: &str) -> Check {
    c.status = Status::Missing;
    c.detail = detail;
    c.fix = Some(fix.into());
    c
}

pub(super) fn degraded(mut c: Check, detail: String, fallback: &str, fix: &str) -> Check {
    c.status = Status::Degraded;
    c.detail = detail;
    c.fallback = Some(fallback.into());
    c.fix = Some(fix.into());
    c
}

fn namespaces(host: &dyn Host) -> Check {
    let c = row("userns", true);
    let max = host
        .read("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    if max == Some(0) {
        return missing(
            c,
            "user.max_user_namespaces is 0".into(),
            "sysctl -w user.max_user_namespaces=15000",
        );
    }
    if let Err(e) = host.namespaces() {
        return missing(
            c,
            format!("cannot create namespaces: {e}"),
            "enable CONFIG_USER_NS and friends; run agentd as root (or with CAP_SYS_ADMIN)",
        );
    }
    let mut notes = vec!["user, mount, pid, net, ipc, uts, cgroup namespaces".to_string()];
    if host
        .read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
        .is_ok_and(|v| v.trim() == "1")
    {
        notes.push("AppArmor restricts unprivileged user namespaces (agentd creates them as root: unaffected)".into());
    }
    Check {
        detail: notes.join("; "),
        ..c
    }
}

fn seccomp(host: &dyn Host) -> Check {
    let c = row("seccomp", true);
    let Ok(actions) = host.read("/proc/sys/kernel/seccomp/actions_avail") else {
        return missing(
            c,
            "/proc/sys/kernel/seccomp/actions_avail is missing: no seccomp filter support".into(),
            "use a kernel with CONFIG_SECCOMP_FILTER",
        );
    };
    let acts: Vec<&str> = actions.split_whitespace().collect();
    if !acts.contains(&"errno") || !acts.contains(&"kill_process") {
        return missing(
            c,
            format!(
                "seccomp lacks errno/kill_process actions (has: {})",
                actions.trim()
            ),
            "use a kernel with CONFIG_SECCOMP_FILTER",
        );
    }
    if !acts.contains(&"user_notif") {
        return degraded(
            c,
            "seccomp filters work, user notification does not".into(),
            "static rights only for side-effect gating",
            "use Linux 5.0 or later",
        );
    }
    Check {
        detail: format!("filters and user notification ({})", actions.trim()),
        ..c
    }
}

/// `session.capture = "exec"` (docs/capture.md): seccomp user notification holds each exec;
/// the exit status of a captured call comes from its pidfd (`PIDFD_INFO_EXIT`, 6.15+).
fn exec_capture(host: &dyn Host) -> Check {
    let c = row("exec_capture", false);
    let notif = host
        .read("/proc/sys/kernel/seccomp/actions_avail")
        .is_ok_and(|a| a.split_whitespace().any(|x| x == "user_notif"));
    if !notif {
        return missing(
            c,
            "no seccomp user notification: a policy with session.capture = \"exec\" is refused"
                .into(),
            "use Linux 5.0 or later",
        );
    }
    let release = host.kernel_release();
    if !has_pidfd_exit_info(&release) {
        return degraded(
            c,
            format!(
                "execs are captured; kernel {} has no PIDFD_INFO_EXIT, so a captured call's exit status is unknown",
                release.trim()
            ),
            "the call's report, limits and OOM kills are recorded without its exit status",
            "use Linux 6.15 or later",
        );
    }
    Check {
        detail: "every exec of the agent's processes can be held and placed in a call (seccomp user notification; exit status from pidfds)".into(),
        ..c
    }
}

/// Whether a kernel release (`uname -r`) has `PIDFD_INFO_EXIT` (Linux 6.15).
pub(super) fn has_pidfd_exit_info(release: &str) -> bool {
    let mut it = release
        .trim()
        .split(|ch: char| !ch.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0)) >= (6, 15)
}

#[cfg(test)]
#[test]
fn pidfd_exit_info_comes_with_6_15() {
    assert!(has_pidfd_exit_info("7.3.4+deb13-cloud-amd64"));
    assert!(has_pidfd_exit_info("6.15.0"));
    assert!(!has_pidfd_exit_info("6.12.117+deb13-cloud-amd64"));
    assert!(!has_pidfd_exit_info("5.19"));
    assert!(!has_pidfd_exit_info(""));
}

fn clone_into_cgroup(host: &dyn Host) -> Check {
    let c = row("clone_into_cgroup", false);
    match host.clone_into_cgroup() {
        Ok(true) => Check {
            detail: "clone3 CLONE_INTO_CGROUP: tool calls start inside their cgroup".into(),
            ..c
        },
        Ok(false) => degraded(
            c,
            "clone3 does not know CLONE_INTO_CGROUP".into(),
            "the child writes itself into cgroup.procs before exec",
            "use Linux 5.7 or later",
        ),
        Err(e) => degraded(
            c,
            format!("clone3 probe failed: {e}"),
            "the child writes itself into cgroup.procs before exec",
            "use Linux 5.7 or later",
        ),
    }
}

fn overlayfs(host: &dyn Host) -> Check {
    let c = row("overlayfs", true);
    let filesystems = host.read("/proc/filesystems").unwrap_or_default();
    if filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
    {
        return Check {
            detail: "overlay filesystem registered".into(),
            ..c
        };
    }
    let release = host.kernel_release();
    let moddir = format!("/lib/modules/{release}/kernel/fs/overlayfs");
    let module = [
        "overlay.ko",
        "overlay.ko.xz",
        "overlay.ko.zst",
        "overlay.ko.gz",
    ]
    .iter()
    .find(|m| host.exists(&format!("{moddir}/{m}")));
    match module {
        Some(m) => Check {
            detail: format!("overlay module {moddir}/{m} (loaded on first mount)"),
            ..c
        },
        None => missing(
            c,
            "overlayfs is neither registered in /proc/filesystems nor available as a module".into(),
            "use a kernel with CONFIG_OVERLAY_FS (or install its modules package)",
        ),
    }
}

/// The session layer's disk (`agentd_sandbox::disk`): a sparse ext4 image per session on a
/// loop device. Without it every session is refused, so it is required.
fn session_disk(host: &dyn Host) -> Check {
    let c = row("session_disk", true);
    let Some(mkfs) = agentd_sandbox::disk::MKFS.iter().find(|p| host.exists(p)) else {
        return missing(
            c,
            format!(
                "no mkfs.ext4 (looked in {}): session layers are ext4 images",
                agentd_sandbox::disk::MKFS.join(", ")
            ),
            "install e2fsprogs",
        );
    };
    if !host.exists("/dev/loop-control") {
        return missing(
            c,
            "no /dev/loop-control: session layers are images on loop devices".into(),
            "load the loop module (modprobe loop) or use a kernel with CONFIG_BLK_DEV_LOOP",
        );
    }
    let filesystems = host.read("/proc/filesystems").unwrap_or_default();
    let ext4 = filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some("ext4"))
        || host.exists(&format!(
            "/lib/modules/{}/kernel/fs/ext4",
            host.kernel_release()
        ));
    if !ext4 {
        return missing(
            c,
            "ext4 is neither registered in /proc/filesystems nor available as a module".into(),
            "use a kernel with CONFIG_EXT4_FS",
        );
    }
    Check {
        detail: format!(
            "a sparse ext4 image per session (its disk quota) on a loop device; {mkfs}"
        ),
        ..c
    }
}

fn psi(host: &dyn Host) -> Check {
    let c = row("psi", false);
    match host.read("/proc/pressure/memory") {
        Ok(_) => Check {
            detail: "pressure stall information in /proc/pressure and per cgroup".into(),
            ..c
        },
        Err(e) => degraded(
            c,
            format!("/proc/pressure/memory: {e}"),
            "memory.events counters only",
            "boot with psi=1 (CONFIG_PSI)",
        ),
    }
}

/// agentd's sched_ext scheduler: loaded (attached by a running daemon), not supported by
/// this kernel (the fallback runs), or failed with the kernel's reason (a live load).
fn sched_ext(host: &dyn Host) -> Check {
    let c = row("sched_ext", false);
    let fallback = "cpu.weight / cpu.max per call";
    let Ok(state) = host.read("/sys/kernel/sched_ext/state") else {
        return degraded(
            c,
            "not supported by this kernel (no /sys/kernel/sched_ext: built without \
             CONFIG_SCHED_CLASS_EXT)"
                .into(),
            fallback,
            "use Linux 6.12+ with CONFIG_SCHED_CLASS_EXT=y (Debian trixie-backports)",
        );
    };
    let state = state.trim().to_string();
    if state == "enabled" {
        let ops = host
            .read("/sys/kernel/sched_ext/root/ops")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        if ops == agentd_bpf::sched::OPS_NAME {
            return Check {
                detail: "loaded: agentd's scheduler is attached (partial mode: session tasks \
                         only)"
                    .into(),
                ..c
            };
        }
        return degraded(
            c,
            format!("another BPF scheduler ({ops}) is attached"),
            fallback,
            "detach it before starting agentd",
        );
    }
    match host.sched_loads() {
        Ok(()) => Check {
            detail: format!(
                "sched_ext present (state: {state}); agentd's scheduler loads (the daemon \
                 attaches it at start)"
            ),
            ..c
        },
        Err(e) => degraded(
            c,
            format!("failed: agentd's scheduler does not load: {e}"),
            fallback,
            "run doctor as root; see the reason above",
        ),
    }
}

fn bpf(host: &dyn Host) -> Check {
    let c = row("bpf", false);
    let caps = host
        .read("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0);
    const CAP_SYS_ADMIN: u64 = 21;
    const CAP_BPF: u64 = 39;
    let has_cap = caps & (1 << CAP_BPF) != 0 || caps & (1 << CAP_SYS_ADMIN) != 0;
    let btf = host.exists(agentd_bpf::btf::VMLINUX_BTF);
    match (has_cap, btf) {
        (true, true) => Check {
            detail: "CAP_BPF and kernel BTF (CO-RE programs load)".into(),
            ..c
        },
        (false, _) => degraded(
            c,
            "no CAP_BPF in the effective set".into(),
            "cgroup limits and userspace monitoring only",
            "run agentd as root (agentd.service)",
        ),
        (true, false) => degraded(
            c,
            "no kernel BTF at /sys/kernel/btf/vmlinux".into(),
            "cgroup limits and userspace monitoring only",
            "use a kernel with CONFIG_DEBUG_INFO_BTF",
        ),
    }
}

fn bpf_lsm(host: &dyn Host) -> Check {
    let c = row("bpf_lsm", false);
    let fallback = "static rights only (Landlock, mounts, seccomp)";
    let lsm = match host.read("/sys/kernel/security/lsm") {
        Ok(l) => l.trim().to_string(),
        Err(e) => {
            return degraded(
                c,
                format!("cannot read /sys/kernel/security/lsm ({e}): securityfs not mounted?"),
                fallback,
                "mount -t securityfs securityfs /sys/kernel/security",
            );
        }
    };
    if !lsm.split(',').any(|l| l == "bpf") {
        return degraded(
            c,
            format!("bpf is not an active LSM (active: {lsm})"),
            fallback,
            "boot with lsm=...,bpf (CONFIG_BPF_LSM=y)",
        );
    }
    match host.bpf_loadable(Feature::Lsm) {
        Ok(true) => Check {
            detail: format!("active and loadable (lsm: {lsm})"),
            ..c
        },
        Ok(false) => degraded(
            c,
            "the kernel does not know BPF LSM programs".into(),
            fallback,
            "use a kernel with CONFIG_BPF_LSM=y",
        ),
        Err(e) => degraded(
            c,
            format!("active, but loading an LSM program is refused: {e}"),
            fallback,
            "run agentd as root outside a restricting container or VM monitor",
        ),
    }
}

fn memcg_bpf_ops(host: &dyn Host) -> Check {
    let c = row("memcg_bpf_ops", false);
    let fallback = "memory.high per call, memory.events and PSI watched by the daemon";
    match host.btf_has_struct(
        Path::new(&host.path(agentd_bpf::btf::VMLINUX_BTF)),
        features::MEMCG_BPF_OPS,
    ) {
        Ok(true) => Check {
            detail: "memcg BPF struct_ops in kernel BTF".into(),
            ..c
        },
        Ok(false) => degraded(
            c,
            "no memcg_bpf_ops in kernel BTF (expected: the series is not upstream)".into(),
            fallback,
            "none needed; a kernel carrying the memcg BPF struct_ops series enables it",
        ),
        Err(e) => degraded(
            c,
            format!("cannot read kernel BTF: {e}"),
            fallback,
            "use a kernel with CONFIG_DEBUG_INFO_BTF",
        ),
    }
}
