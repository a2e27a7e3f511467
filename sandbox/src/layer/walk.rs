//! Walk of the overlay's upper dir into a [`Manifest`]: only what the session wrote is
//! visited. A regular file whose stamp (inode, size, mtime, ctime) equals the previous
//! checkpoint's is not read again (its hash is carried over), so a checkpoint costs the
//! layer's entries plus the bytes written since the last one.
//!
//! A stamp is only recorded for a file that last changed [`STAMP_SETTLE_NS`] before the
//! walk began ("racy" stamps, as git calls them): file times come from the kernel's coarse
//! clock (one tick, 1–10 ms; a second on some filesystems; Linux ≤ 6.12 has no multigrain
//! timestamps), so a file rewritten with the same size in the same tick as the checkpoint
//! that read it keeps its (inode, size, mtime, ctime), and trusting that stamp kept the old
//! hash — an undo then left the new content (found by the VM proptest on 6.12). A file
//! that changed within the settle time is simply read again at the next checkpoint.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::store::Store;
use super::{Entry, LayerError, Manifest, Stamp, join};

/// What an upper-layer inode is, from its `st_mode` and `st_rdev` (pure, unit-tested).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    /// A character device 0/0: overlayfs's whiteout.
    Whiteout,
    /// A fifo or socket.
    Special,
    /// A real device node: never legitimately in a session's layer (nodev), refused.
    Device,
}

/// Classifies an inode of the upper layer.
pub fn kind_of(mode: u32, rdev: u64) -> Kind {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFREG => Kind::File,
        libc::S_IFLNK => Kind::Symlink,
        libc::S_IFCHR if rdev == 0 => Kind::Whiteout,
        libc::S_IFIFO | libc::S_IFSOCK => Kind::Special,
        _ => Kind::Device,
    }
}

/// The overlay's "opaque dir" xattr: `user.` with `userxattr` (sessions), `trusted.`
/// otherwise.
pub const OPAQUE_XATTRS: [&str; 2] = ["user.overlay.opaque", "trusted.overlay.opaque"];

/// Whether directory `p` is marked opaque.
pub fn is_opaque(p: &Path) -> bool {
    OPAQUE_XATTRS.iter().any(|name| {
        let mut buf = [0u8; 4];
        matches!(rustix::fs::lgetxattr(p, *name, &mut buf[..]), Ok(n) if n >= 1 && buf[0] == b'y')
    })
}

fn ns(sec: i64, nsec: i64) -> i128 {
    i128::from(sec) * 1_000_000_000 + i128::from(nsec)
}

/// How long before a walk's start a file must have last changed (its ctime, which no
/// process can set) for its stamp to be kept. Any later change then gets a ctime past the
/// recorded one whatever the filesystem's time granularity, up to 2 s (FAT's; ext4 with
/// small inodes has 1 s).
pub const STAMP_SETTLE_NS: i128 = 2_000_000_000;

/// The real-time clock in ns (the clock file times are taken from).
pub fn now_ns() -> i128 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i128::try_from(d.as_nanos()).unwrap_or(i128::MAX),
        // A clock before 1970: trust no stamp.
        Err(_) => i128::MIN,
    }
}

/// Whether no inode of `upper` (the dir itself, every entry below it) has a ctime at or
/// after `limit_ns`: then nothing in the layer changed since `limit_ns`, because every change
/// a process can make to an inode (contents, mode, owner, xattrs such as the overlay's opaque
/// mark, links) and to a directory's entries (create, delete, rename in it) sets the ctime of
/// the inode or of its directory to the time of the change, and no process can set a ctime.
/// Stops at the first such inode; reads no file contents. Without freezing anything: an
/// inode seen unchanged was unchanged from `limit_ns` until it was seen.
pub fn quiet_since(upper: &Path, limit_ns: i128) -> Result<bool, LayerError> {
    let changed = |p: &Path| -> Result<bool, LayerError> {
        let md = std::fs::symlink_metadata(p).map_err(|e| LayerError::io("stat", p, e))?;
        Ok(ns(md.ctime(), md.ctime_nsec()) >= limit_ns)
    };
    if changed(upper)? {
        return Ok(false);
    }
    let mut stack = vec![upper.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(|e| LayerError::io("readdir", &dir, e))?;
        for e in rd {
            let e = e.map_err(|e| LayerError::io("readdir", &dir, e))?;
            let p = e.path();
            if changed(&p)? {
                return Ok(false);
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    Ok(true)
}

/// Walks `upper` into a manifest, storing new or changed file contents in `store`.
/// `prev` (the previous checkpoint's manifest) lets unchanged files skip the read.
pub fn walk(upper: &Path, store: &Store, prev: Option<&Manifest>) -> Result<Manifest, LayerError> {
    walk_at(upper, store, prev, now_ns())
}

/// [`walk`] begun at `started_ns` (real time): stamps are kept only for files whose ctime
/// is at least [`STAMP_SETTLE_NS`] older (the clock is a parameter so the rule is tested
/// without sleeping).
pub fn walk_at(
    upper: &Path,
    store: &Store,
    prev: Option<&Manifest>,
    started_ns: i128,
) -> Result<Manifest, LayerError> {
    let mut m = Manifest::default();
    let mut stack: Vec<String> = vec![String::new()];
    while let Some(dir) = stack.pop() {
        let dpath = upper.join(&dir);
        let rd = std::fs::read_dir(&dpath).map_err(|e| LayerError::io("list", &dpath, e))?;
        for ent in rd {
            let ent = ent.map_err(|e| LayerError::io("list", &dpath, e))?;
            let name = ent.file_name();
            let Some(name) = name.to_str() else {
                return Err(LayerError::NotUtf8 { path: ent.path() });
            };
            let rel = join(&dir, name);
            let p = ent.path();
            let md = std::fs::symlink_metadata(&p).map_err(|e| LayerError::io("stat", &p, e))?;
            let mode = md.mode() & 0o7777;
            let entry = match kind_of(md.mode(), md.rdev()) {
                Kind::Dir => {
                    stack.push(rel.clone());
                    Entry::Dir {
                        mode,
                        opaque: is_opaque(&p),
                    }
                }
                Kind::File => {
                    let stamp = Stamp {
                        dev: md.dev(),
                        ino: md.ino(),
                        size: md.size(),
                        mtime_ns: ns(md.mtime(), md.mtime_nsec()),
                        ctime_ns: ns(md.ctime(), md.ctime_nsec()),
                    };
                    let link = (md.nlink() > 1).then_some(md.ino());
                    let known =
                        prev.and_then(|pm| match (pm.stamps.get(&rel), pm.entries.get(&rel)) {
                            (Some(s), Some(Entry::File { hash, size, .. }))
                                if *s == stamp && store.has(hash) =>
                            {
                                Some((hash.clone(), *size))
                            }
                            _ => None,
                        });
                    let (hash, size) = match known {
                        Some(k) => k,
                        None => store.put_file(&p)?,
                    };
                    if stamp.ctime_ns.saturating_add(STAMP_SETTLE_NS) <= started_ns {
                        m.stamps.insert(rel.clone(), stamp);
                    }
                    Entry::File {
                        mode,
                        size,
                        hash,
                        link,
                    }
                }
                Kind::Symlink => {
                    let t =
                        std::fs::read_link(&p).map_err(|e| LayerError::io("readlink", &p, e))?;
                    let Some(target) = t.to_str() else {
                        return Err(LayerError::NotUtf8 { path: p });
                    };
                    Entry::Symlink {
                        target: target.to_owned(),
                    }
                }
                Kind::Whiteout => Entry::Whiteout,
                Kind::Special => Entry::Special { mode },
                Kind::Device => {
                    return Err(LayerError::Invalid {
                        path: rel,
                        reason: "a device node in the session layer".into(),
                    });
                }
            };
            m.entries.insert(rel, entry);
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
    use super::*;

    #[test]
    fn quiet_since_sees_any_change_after_the_limit_and_nothing_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let up = dir.path();
        std::fs::create_dir_all(up.join("a/b")).unwrap();
        std::fs::write(up.join("a/b/f"), "one").unwrap();
        std::fs::write(up.join("g"), "two").unwrap();
        // Past the kernel's coarse clock tick, so the limit is after every ctime above.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let limit = now_ns();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            quiet_since(up, limit).unwrap(),
            "nothing changed since the limit"
        );
        assert!(
            !quiet_since(up, i128::MIN).unwrap(),
            "everything changed since 1970"
        );
        // A same-size rewrite deep down, a chmod, a new entry, a delete: each is seen.
        std::fs::write(up.join("a/b/f"), "uno").unwrap();
        assert!(!quiet_since(up, limit).unwrap(), "rewrite");
        let limit = {
            std::thread::sleep(std::time::Duration::from_millis(50));
            let l = now_ns();
            std::thread::sleep(std::time::Duration::from_millis(50));
            l
        };
        assert!(quiet_since(up, limit).unwrap());
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(up.join("g"), std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(!quiet_since(up, limit).unwrap(), "chmod");
        let limit = {
            std::thread::sleep(std::time::Duration::from_millis(50));
            let l = now_ns();
            std::thread::sleep(std::time::Duration::from_millis(50));
            l
        };
        std::fs::remove_file(up.join("a/b/f")).unwrap();
        assert!(!quiet_since(up, limit).unwrap(), "delete (the dir's ctime)");
    }
    use std::fs;

    #[test]
    fn whiteouts_are_char_devices_zero_zero_only() {
        assert_eq!(kind_of(libc::S_IFCHR, 0), Kind::Whiteout);
        assert_eq!(kind_of(libc::S_IFCHR, 0x0103), Kind::Device);
        assert_eq!(kind_of(libc::S_IFBLK, 0), Kind::Device);
        assert_eq!(kind_of(libc::S_IFDIR | 0o755, 0), Kind::Dir);
        assert_eq!(kind_of(libc::S_IFIFO, 0), Kind::Special);
        assert_eq!(kind_of(libc::S_IFLNK | 0o777, 0), Kind::Symlink);
    }

    #[test]
    fn walk_records_shape_and_skips_unchanged_files() {
        let t = tempfile::tempdir().unwrap();
        let up = t.path().join("upper");
        fs::create_dir_all(up.join("d/empty")).unwrap();
        fs::write(up.join("d/f"), b"one").unwrap();
        fs::hard_link(up.join("d/f"), up.join("g")).unwrap();
        std::os::unix::fs::symlink("../x", up.join("d/l")).unwrap();
        let store = Store::open(&t.path().join("s")).unwrap();
        let m = walk(&up, &store, None).unwrap();
        let keys: Vec<_> = m.entries.keys().cloned().collect();
        assert_eq!(keys, ["d", "d/empty", "d/f", "d/l", "g"]);
        assert_eq!(
            m.entries["d/l"],
            Entry::Symlink {
                target: "../x".into()
            }
        );
        let (Entry::File { link: a, .. }, Entry::File { link: b, .. }) =
            (&m.entries["d/f"], &m.entries["g"])
        else {
            panic!("files expected");
        };
        assert!(a.is_some() && a == b, "hard links share a group");
        let m2 = walk(&up, &store, Some(&m)).unwrap();
        assert_eq!(m2, m);
        fs::write(up.join("d/f"), b"two").unwrap();
        let m3 = walk(&up, &store, Some(&m)).unwrap();
        assert_ne!(m3.entries["d/f"], m.entries["d/f"]);
    }

    fn ctime_ns(p: &Path) -> i128 {
        let md = fs::symlink_metadata(p).unwrap();
        ns(md.ctime(), md.ctime_nsec())
    }

    #[test]
    fn a_settled_file_is_not_read_again() {
        let t = tempfile::tempdir().unwrap();
        let up = t.path().join("upper");
        fs::create_dir_all(&up).unwrap();
        fs::write(up.join("f"), b"one").unwrap();
        let store = Store::open(&t.path().join("s")).unwrap();
        let later = ctime_ns(&up.join("f")) + STAMP_SETTLE_NS;
        let m = walk_at(&up, &store, None, later).unwrap();
        assert!(m.stamps.contains_key("f"), "a settled file's stamp is kept");
        // Its stamp is trusted: plant another (stored) hash under the same stamp and see
        // that the next walk carries it over instead of reading the file.
        let mut forged = m.clone();
        let fake = store.put_bytes(b"not the file").unwrap();
        if let Some(Entry::File { hash, .. }) = forged.entries.get_mut("f") {
            *hash = fake.clone();
        }
        let m2 = walk_at(&up, &store, Some(&forged), later).unwrap();
        assert!(
            matches!(&m2.entries["f"], Entry::File { hash, .. } if *hash == fake),
            "an unchanged settled file was read again"
        );
    }

    /// The bug the VM proptest found on Linux 6.12: the checkpoint's walk ran in the same
    /// clock tick as the file's last write, the file was then rewritten with the same size
    /// in that tick (same inode, size, mtime and ctime on a coarse clock), and the next walk
    /// trusted the stamp and kept the old hash. The walk now keeps no stamp for a file that
    /// changed within the settle time, so the next walk reads it whatever its times say.
    #[test]
    fn a_file_changed_in_the_walks_tick_is_read_again_at_the_next_walk() {
        let t = tempfile::tempdir().unwrap();
        let up = t.path().join("upper");
        fs::create_dir_all(&up).unwrap();
        fs::write(up.join("README"), [253u8; 5000]).unwrap();
        let store = Store::open(&t.path().join("s")).unwrap();
        // The walk began in the tick of the write (what a coarse clock makes of "just
        // after"): no stamp may be kept.
        let cp1 = walk_at(&up, &store, None, ctime_ns(&up.join("README"))).unwrap();
        assert!(
            !cp1.stamps.contains_key("README"),
            "a stamp from the file's own tick was kept: a same-size rewrite in that tick \
             would go unseen"
        );
        fs::write(up.join("README"), [33u8; 5000]).unwrap();
        // Had the stamp been kept, a coarse clock would have given the rewrite the same
        // stat (forged here with the file's stat now), and the walk would carry the old
        // hash over: the stale checkpoint the undo then trusted.
        let stat = walk_at(&up, &store, None, i128::MAX).unwrap().stamps["README"];
        let mut racy = cp1.clone();
        racy.stamps.insert("README".into(), stat);
        let stale = walk(&up, &store, Some(&racy)).unwrap();
        assert_eq!(stale.entries["README"], cp1.entries["README"]);
        let cp2 = walk(&up, &store, Some(&cp1)).unwrap();
        let want = store.put_bytes(&[33u8; 5000]).unwrap();
        assert!(matches!(&cp2.entries["README"], Entry::File { hash, .. } if *hash == want));
    }

    #[test]
    fn whiteouts_and_opaque_dirs_are_recorded_when_the_host_lets_us_make_them() {
        let t = tempfile::tempdir().unwrap();
        let up = t.path().join("upper");
        fs::create_dir_all(up.join("o")).unwrap();
        let made = rustix::fs::mknodat(
            rustix::fs::CWD,
            up.join("gone"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0),
            0,
        )
        .is_ok()
            && rustix::fs::lsetxattr(
                up.join("o"),
                "user.overlay.opaque",
                b"y",
                rustix::fs::XattrFlags::empty(),
            )
            .is_ok();
        if !made {
            eprintln!(
                "skipped: mknod 0/0 or user xattrs not permitted here (the VM test covers it)"
            );
            return;
        }
        let store = Store::open(&t.path().join("s")).unwrap();
        let m = walk(&up, &store, None).unwrap();
        assert_eq!(m.entries["gone"], Entry::Whiteout);
        assert!(matches!(m.entries["o"], Entry::Dir { opaque: true, .. }));
    }
}
