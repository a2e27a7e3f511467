//! The daemon's own place in the cgroup tree. cgroup v2's "no internal processes" rule: a
//! cgroup other than the root that holds processes cannot enable controllers for its
//! children. Under systemd with `Delegate=yes` the daemon starts in its service's cgroup;
//! when the cgroup root it manages is a child of that cgroup (its delegated subtree), it
//! first moves itself into its own leaf, `<own cgroup>/daemon`, so the controllers can be
//! enabled for the sessions' subtree.

use std::path::{Path, PathBuf};

/// Where the daemon's process sits in the cgroup2 hierarchy, as `/proc/self/cgroup` says
/// (`0::/system.slice/agentd.service` → that path under `mount`).
pub fn own_cgroup(mount: &Path) -> std::io::Result<PathBuf> {
    let rel = cgctl::discover::cgroup_of("self").map_err(std::io::Error::other)?;
    Ok(mount.join(rel.trim_start_matches('/')))
}

/// The leaf the daemon moves into, when `root`'s parent is the daemon's own cgroup `own`
/// and `own` is not the hierarchy's root (which is exempt from the rule).
pub fn leaf_needed(own: &Path, root: &Path, mount: &Path) -> Option<PathBuf> {
    (root.parent() == Some(own) && own != mount).then(|| own.join("daemon"))
}

/// Moves this process (all its threads) into `<own>/daemon` when the managed root is a
/// child of its own cgroup. Returns the leaf it moved into, if it did.
pub fn move_self_if_needed(root: &Path) -> std::io::Result<Option<PathBuf>> {
    let mount = Path::new(cgctl::discover::UNIFIED_MOUNT);
    if !root.starts_with(mount) {
        return Ok(None);
    }
    let own = own_cgroup(mount)?;
    let Some(leaf) = leaf_needed(&own, root, mount) else {
        return Ok(None);
    };
    match std::fs::create_dir(&leaf) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    // Writing 0 moves the writing process, with every thread, into the leaf.
    std::fs::write(leaf.join("cgroup.procs"), "0")?;
    Ok(Some(leaf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_moves_only_when_its_own_cgroup_is_the_roots_parent() {
        let m = Path::new("/sys/fs/cgroup");
        let own = Path::new("/sys/fs/cgroup/system.slice/agentd.service");
        assert_eq!(
            leaf_needed(own, &own.join("sessions"), m),
            Some(own.join("daemon"))
        );
        // The default root (agentd.slice at the top) needs no move.
        assert_eq!(leaf_needed(own, &m.join("agentd.slice"), m), None);
        // A daemon in the hierarchy's root is exempt.
        assert_eq!(leaf_needed(m, &m.join("agentd.slice"), m), None);
    }
}
