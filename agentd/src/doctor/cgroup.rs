//! The cgroup row of the doctor: finds cgroup2 and v1 hierarchies in mountinfo, tells a
//! unified host from a hybrid one, and checks that our own cgroup can be delegated to.

use super::{Check, Host, Status};

/// One cgroup mount from /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CgroupMount {
    pub mount_point: String,
    /// v1 only: the controllers bound to this hierarchy.
    pub v1_controllers: Vec<String>,
    pub v2: bool,
}

/// Controllers a default session limits.
const NEEDED: [&str; 3] = ["memory", "cpu", "pids"];

/// Parses the cgroup and cgroup2 mounts of a mountinfo text.
pub(super) fn mounts(mountinfo: &str) -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = left.split_whitespace().nth(4).unwrap_or_default();
        let mut r = right.split_whitespace();
        let fstype = r.next().unwrap_or_default();
        let super_opts = r.nth(1).unwrap_or_default();
        match fstype {
            "cgroup2" => out.push(CgroupMount {
                mount_point: unescape(mount_point),
                v1_controllers: Vec::new(),
                v2: true,
            }),
            "cgroup" => out.push(CgroupMount {
                mount_point: unescape(mount_point),
                v1_controllers: super_opts
                    .split(',')
                    .filter(|o| {
                        [
                            "memory", "cpu", "cpuacct", "pids", "blkio", "cpuset", "freezer",
                        ]
                        .contains(o)
                    })
                    .map(str::to_string)
                    .collect(),
                v2: false,
            }),
            _ => {}
        }
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

pub(super) fn check(host: &dyn Host) -> Check {
    let base = Check {
        mechanism: "cgroup2",
        status: Status::Missing,
        detail: String::new(),
        fallback: None,
        fix: None,
        required: true,
    };
    let mountinfo = match host.read("/proc/self/mountinfo") {
        Ok(m) => m,
        Err(e) => {
            return Check {
                detail: format!("cannot read /proc/self/mountinfo: {e}"),
                fix: Some("mount /proc".into()),
                ..base
            };
        }
    };
    let all = mounts(&mountinfo);
    let v1_taken: Vec<(String, String)> = all
        .iter()
        .filter(|m| !m.v2)
        .flat_map(|m| {
            m.v1_controllers
                .iter()
                .map(|c| (c.clone(), m.mount_point.clone()))
        })
        .filter(|(c, _)| NEEDED.contains(&c.as_str()))
        .collect();
    // The cgroup2 mount with the most controllers is the one agentd would use.
    let best = all
        .iter()
        .filter(|m| m.v2)
        .map(|m| {
            let ctrls = host
                .read(&format!("{}/cgroup.controllers", m.mount_point))
                .unwrap_or_default();
            (
                m,
                ctrls
                    .split_whitespace()
                    .map(str::to_string)
                    .collect::<Vec<_>>(),
            )
        })
        .max_by_key(|(_, c)| c.len());
    let Some((mount, controllers)) = best else {
        return Check {
            detail: "no cgroup2 hierarchy is mounted".into(),
            fix: Some(
                "mount cgroup2 (systemd does with systemd.unified_cgroup_hierarchy=1)".into(),
            ),
            ..base
        };
    };
    let lacking: Vec<&str> = NEEDED
        .iter()
        .copied()
        .filter(|n| !controllers.iter().any(|c| c == n))
        .collect();
    if !lacking.is_empty() {
        let detail = if v1_taken.is_empty() {
            format!(
                "cgroup2 at {} lacks the {} controller(s) (has: {})",
                mount.mount_point,
                lacking.join(", "),
                if controllers.is_empty() {
                    "none".into()
                } else {
                    controllers.join(" ")
                }
            )
        } else {
            let taken: Vec<String> = v1_taken
                .iter()
                .map(|(c, p)| format!("{c} at {p}"))
                .collect();
            format!(
                "hybrid cgroups: {} bound to cgroup v1 ({}); the cgroup2 hierarchy at {} has {}",
                lacking.join(", "),
                taken.join(", "),
                mount.mount_point,
                if controllers.is_empty() {
                    "no controllers".to_string()
                } else {
                    format!("only: {}", controllers.join(" "))
                }
            )
        };
        return Check {
            detail,
            fix: Some(
                "boot with systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all (pure cgroup v2); \
                 to try agentd meanwhile: cargo xtask vm-run -- agentd doctor"
                    .into(),
            ),
            ..base
        };
    }
    // Our own cgroup: where agentd.slice would be created (delegated subtree).
    let own = host
        .read("/proc/self/cgroup")
        .ok()
        .and_then(|t| cgctl::discover::proc_cgroup_path(&t).map(|p| p.trim().to_string()))
        .unwrap_or_else(|| "/".into());
    let own_dir = format!("{}{}", mount.mount_point.trim_end_matches('/'), own);
    let mut detail = format!(
        "cgroup2 at {} with {}; own cgroup {own}",
        mount.mount_point,
        controllers.join(" ")
    );
    if !controllers.iter().any(|c| c == "io") {
        detail.push_str("; no io controller (io limits unavailable)");
    }
    if !host.writable(&own_dir) {
        return Check {
            detail: format!("{detail}, but {own_dir} is not writable by agentd"),
            fix: Some(
                "run agentd as root, under systemd with Delegate=yes (agentd.service)".into(),
            ),
            ..base
        };
    }
    Check {
        status: Status::Available,
        detail: format!("{detail} (writable: subtree can be delegated)"),
        ..base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 1 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
30 25 0:27 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
31 25 0:28 / /sys/fs/cgroup/cpu rw,nosuid - cgroup cgroup rw,cpu
32 25 0:29 / /sys/fs/cgroup/my\\040dir rw - cgroup cgroup rw,pids
";

    #[test]
    fn parses_v1_and_v2_mounts() {
        let m = mounts(HYBRID);
        assert_eq!(m.len(), 4);
        assert!(m[0].v2 && m[0].mount_point == "/sys/fs/cgroup/unified");
        assert_eq!(m[1].v1_controllers, vec!["memory"]);
        assert_eq!(m[3].mount_point, "/sys/fs/cgroup/my dir");
        assert_eq!(m[3].v1_controllers, vec!["pids"]);
    }
}
