//! Finding the agentd root on this host: the cgroup2 mount from /proc/self/mountinfo (one
//! that offers controllers: on hybrid hosts the only cgroup2 mount, /sys/fs/cgroup/unified,
//! has none) and `agentd.slice` somewhere near the top of it (systemd puts a delegated
//! service subtree at `system.slice/agentd.service/`). Also the one reader of
//! `/proc/<pid>/cgroup` (where a process is in the hierarchy) for the whole project.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::tree::DEFAULT_ROOT_NAME;

/// Mount points of cgroup2 filesystems listed in a mountinfo text, in order.
pub fn cgroup2_mounts(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // Fields: id parent maj:min root mountpoint opts [optional...] - fstype source sopts
            let (pre, post) = line.split_once(" - ")?;
            let fstype = post.split_whitespace().next()?;
            if fstype != "cgroup2" {
                return None;
            }
            let mount = pre.split_whitespace().nth(4)?;
            Some(PathBuf::from(unescape(mount)))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(v) = b
                .get(i + 1..i + 4)
                .and_then(|o| std::str::from_utf8(o).ok())
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The first cgroup2 mount whose root offers the memory controller (agentd's per-call
/// control is pointless without it; hybrid hosts offer at most leftovers like hugetlb on
/// their cgroup2 mount).
pub fn cgroup2_with_controllers(mountinfo: &str) -> Result<PathBuf> {
    let mounts = cgroup2_mounts(mountinfo);
    let mut seen = Vec::new();
    for m in &mounts {
        let ctrl = std::fs::read_to_string(m.join("cgroup.controllers")).unwrap_or_default();
        if ctrl.split_whitespace().any(|c| c == "memory") {
            return Ok(m.clone());
        }
        let offered = if ctrl.trim().is_empty() {
            "no controllers".to_string()
        } else {
            format!("only [{}]", ctrl.trim())
        };
        seen.push(format!("{} offers {offered}", m.display()));
    }
    Err(Error::NoHierarchy(if mounts.is_empty() {
        "no cgroup2 filesystem is mounted (see /proc/self/mountinfo)".to_string()
    } else {
        format!(
            "no cgroup2 hierarchy with controllers (memory, cpu, pids): {} — this looks like \
             a hybrid cgroup host that keeps memory/cpu on cgroup v1; pass --root to point \
             at an agentd root",
            seen.join("; ")
        )
    }))
}

/// Looks for a directory named `agentd.slice` under `mount`, breadth-first, at most
/// `max_depth` levels down.
pub fn find_root_under(mount: &Path, max_depth: usize) -> Option<PathBuf> {
    let mut level = vec![mount.to_path_buf()];
    for _ in 0..=max_depth {
        let mut next = Vec::new();
        for dir in &level {
            let candidate = dir.join(DEFAULT_ROOT_NAME);
            if candidate.is_dir() {
                return Some(candidate);
            }
            if let Ok(rd) = std::fs::read_dir(dir) {
                let mut subs: Vec<PathBuf> = rd
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path())
                    .collect();
                subs.sort();
                next.extend(subs);
            }
        }
        level = next;
    }
    None
}

/// Where the cgroup2 hierarchy is mounted on a unified host (and in the test VM).
pub const UNIFIED_MOUNT: &str = "/sys/fs/cgroup";

/// The cgroup v2 path in a `/proc/<pid>/cgroup` text (its `0::` line), relative to the
/// cgroup2 mount and starting with `/`; `None` when the process has no v2 cgroup line.
pub fn proc_cgroup_path(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim_end)
}

/// Where process `pid` (a number, or `self`) is in the cgroup2 hierarchy.
pub fn cgroup_of(pid: &str) -> Result<String> {
    let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Read {
        path: path.clone(),
        source,
    })?;
    proc_cgroup_path(&text)
        .map(str::to_owned)
        .ok_or_else(|| Error::Parse {
            path,
            detail: format!("no cgroup v2 (`0::`) line in {text:?}"),
        })
}

/// A cgroup directory under `mount` as `/proc/<pid>/cgroup` spells it (`/a/b`).
pub fn as_proc_path(dir: &Path, mount: &Path) -> String {
    let rel = dir.strip_prefix(mount).unwrap_or(dir);
    format!("/{}", rel.display().to_string().trim_start_matches('/'))
}

/// The default agentd root on this host.
pub fn default_root() -> Result<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("reading /proc/self/mountinfo", e))?;
    let mount = cgroup2_with_controllers(&mountinfo)?;
    find_root_under(&mount, 3).ok_or_else(|| {
        Error::NoHierarchy(format!(
            "no {DEFAULT_ROOT_NAME} under {} (is agentd running?); pass --root",
            mount.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
";

    #[test]
    fn proc_cgroup_lines_give_the_v2_path() {
        assert_eq!(
            proc_cgroup_path("1:name=systemd:/x\n0::/a/b\n"),
            Some("/a/b")
        );
        assert_eq!(proc_cgroup_path("1:name=systemd:/x\n"), None);
        assert_eq!(
            as_proc_path(
                Path::new("/sys/fs/cgroup/agentd.slice/s"),
                Path::new(UNIFIED_MOUNT)
            ),
            "/agentd.slice/s"
        );
    }

    #[test]
    fn finds_cgroup2_mounts_only() {
        assert_eq!(
            cgroup2_mounts(HYBRID),
            vec![PathBuf::from("/sys/fs/cgroup/unified")]
        );
        let unified = "25 1 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            cgroup2_mounts(unified),
            vec![PathBuf::from("/sys/fs/cgroup")]
        );
        assert_eq!(
            cgroup2_mounts("1 2 0:1 / /my\\040cg rw - cgroup2 none rw\n"),
            vec![PathBuf::from("/my cg")]
        );
    }

    #[test]
    fn a_cgroup2_mount_without_controllers_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.controllers"), "\n").unwrap();
        let info = format!(
            "41 31 0:38 / {} rw - cgroup2 cgroup2 rw\n",
            dir.path().display()
        );
        let e = cgroup2_with_controllers(&info).unwrap_err().to_string();
        assert!(e.contains("no cgroup2 hierarchy with controllers"), "{e}");
        assert!(
            e.contains(&format!("{} offers no controllers", dir.path().display())),
            "{e}"
        );
        std::fs::write(dir.path().join("cgroup.controllers"), "hugetlb\n").unwrap();
        let e = cgroup2_with_controllers(&info).unwrap_err().to_string();
        assert!(e.contains("offers only [hugetlb]"), "{e}");
        let e = cgroup2_with_controllers("").unwrap_err().to_string();
        assert!(e.contains("no cgroup2 filesystem"), "{e}");

        std::fs::write(dir.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        assert_eq!(cgroup2_with_controllers(&info).unwrap(), dir.path());
    }

    #[test]
    fn finds_agentd_slice_in_a_delegated_service_subtree() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("system.slice/agentd.service/agentd.slice");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::create_dir_all(dir.path().join("user.slice/a/b/c/d")).unwrap();
        assert_eq!(find_root_under(dir.path(), 3), Some(deep));
        assert_eq!(find_root_under(dir.path(), 1), None);
    }
}
