//! A directory tree reached only through a directory fd ([`Root`]): every path is resolved
//! with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
//! RESOLVE_NO_XDEV)` and the last component is handled with `*at` calls that never follow
//! it. A symlink the agent planted can therefore never make an undo or a commit write
//! outside the tree (the daemon does this as root, or with the owner's fsuid).
//!
//! [`restore`] makes the paths of a change list look like their `new` state, top-down,
//! idempotently: it is the undo (through a running session's merged view) and the second
//! half of a commit.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::view::{Change, Content, State};
use super::{LayerError, join};

/// A tree reached through a directory fd.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

/// What [`Root::lstat`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    pub kind: FileType,
    pub mode: u32,
    pub size: u64,
    pub ino: u64,
}

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

static SEQ: AtomicU64 = AtomicU64::new(0);

fn split(rel: &str) -> (&str, &str) {
    match rel.rfind('/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => ("", rel),
    }
}

fn gone(e: Errno) -> bool {
    e == Errno::NOENT || e == Errno::NOTDIR
}

/// The prefix of the temp names process `pid` writes files under before renaming them
/// over their path (what a process killed mid-write leaves behind).
pub fn tmp_prefix(pid: u32) -> String {
    format!(".agentd-tmp-{pid}-")
}

impl Root {
    /// Opens the tree at `path` (the merged view, the repo, a plain directory).
    pub fn open(path: &Path) -> Result<Root, LayerError> {
        let fd = rustix::fs::open(
            path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| LayerError::io("open", path, e.into()))?;
        Ok(Root {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The tree's path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, what: &'static str, rel: &str, e: Errno) -> LayerError {
        LayerError::io(what, self.path.join(rel), e.into())
    }

    /// A directory of the tree, resolved beneath the root without following symlinks.
    fn dir(&self, rel: &str) -> Result<OwnedFd, Errno> {
        let p = if rel.is_empty() { "." } else { rel };
        rustix::fs::openat2(
            &self.fd,
            p,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )
    }

    /// The node at `rel` (not following a final symlink); None if absent.
    pub fn lstat(&self, rel: &str) -> Result<Option<Node>, LayerError> {
        let (parent, name) = split(rel);
        let d = match self.dir(parent) {
            Ok(d) => d,
            Err(e) if gone(e) || e == Errno::LOOP || e == Errno::XDEV => return Ok(None),
            Err(e) => return Err(self.err("open", parent, e)),
        };
        match rustix::fs::statat(&d, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(Node {
                kind: FileType::from_raw_mode(st.st_mode),
                mode: st.st_mode & 0o7777,
                size: st.st_size as u64,
                ino: st.st_ino,
            })),
            Err(e) if gone(e) => Ok(None),
            Err(e) => Err(self.err("stat", rel, e)),
        }
    }

    /// Names in directory `rel`, sorted (none when it is not a directory).
    pub fn list(&self, rel: &str) -> Result<Vec<String>, LayerError> {
        let d = match self.dir(rel) {
            Ok(d) => d,
            Err(e) if gone(e) || e == Errno::LOOP || e == Errno::XDEV => return Ok(vec![]),
            Err(e) => return Err(self.err("open", rel, e)),
        };
        let mut out = Vec::new();
        let it = rustix::fs::Dir::read_from(&d).map_err(|e| self.err("list", rel, e))?;
        for ent in it {
            let ent = ent.map_err(|e| self.err("list", rel, e))?;
            let n = ent.file_name().to_bytes();
            if n == b"." || n == b".." {
                continue;
            }
            match std::str::from_utf8(n) {
                Ok(s) => out.push(s.to_owned()),
                Err(_) => {
                    return Err(LayerError::NotUtf8 {
                        path: self.path.join(rel),
                    });
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Opens regular file `rel` for reading (never through a symlink).
    pub fn open_read(&self, rel: &str) -> Result<File, LayerError> {
        rustix::fs::openat2(
            &self.fd,
            rel,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )
        .map(File::from)
        .map_err(|e| self.err("open", rel, e))
    }

    /// The target of symlink `rel`.
    pub fn readlink(&self, rel: &str) -> Result<String, LayerError> {
        let (parent, name) = split(rel);
        let d = self.dir(parent).map_err(|e| self.err("open", parent, e))?;
        let t = rustix::fs::readlinkat(&d, name, Vec::new())
            .map_err(|e| self.err("readlink", rel, e))?;
        t.into_string().map_err(|_| LayerError::NotUtf8 {
            path: self.path.join(rel),
        })
    }

    /// Removes `rel` and everything beneath it (absent is fine).
    pub fn remove_all(&self, rel: &str) -> Result<(), LayerError> {
        let Some(node) = self.lstat(rel)? else {
            return Ok(());
        };
        let (parent, name) = split(rel);
        let d = self.dir(parent).map_err(|e| self.err("open", parent, e))?;
        if node.kind == FileType::Directory {
            if node.mode & 0o700 != 0o700 {
                rustix::fs::chmodat(&d, name, Mode::from_raw_mode(0o700), AtFlags::empty())
                    .map_err(|e| self.err("chmod", rel, e))?;
            }
            for n in self.list(rel)? {
                self.remove_all(&join(rel, &n))?;
            }
            rustix::fs::unlinkat(&d, name, AtFlags::REMOVEDIR)
                .map_err(|e| self.err("rmdir", rel, e))
        } else {
            match rustix::fs::unlinkat(&d, name, AtFlags::empty()) {
                Err(e) if !gone(e) => Err(self.err("unlink", rel, e)),
                _ => Ok(()),
            }
        }
    }

    /// Removes `rel` if it is a file, symlink or an empty directory (absent is fine).
    pub fn remove_one(&self, rel: &str) -> Result<(), LayerError> {
        let Some(node) = self.lstat(rel)? else {
            return Ok(());
        };
        let (parent, name) = split(rel);
        let d = self.dir(parent).map_err(|e| self.err("open", parent, e))?;
        let flags = if node.kind == FileType::Directory {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        match rustix::fs::unlinkat(&d, name, flags) {
            Err(e) if !gone(e) => Err(self.err("remove", rel, e)),
            _ => Ok(()),
        }
    }

    /// Creates directory `rel` (an existing directory is kept) with `mode`.
    pub fn mkdir(&self, rel: &str, mode: u32) -> Result<(), LayerError> {
        let (parent, name) = split(rel);
        let d = self.dir(parent).map_err(|e| self.err("open", parent, e))?;
        match rustix::fs::mkdirat(&d, name, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(self.err("mkdir", rel, e)),
        }
        self.chmod(rel, mode)
    }

    /// Sets the mode of `rel` (a directory, file or fifo; never a symlink).
    pub fn chmod(&self, rel: &str, mode: u32) -> Result<(), LayerError> {
        let (parent, name) = split(rel);
        let d = self.dir(parent).map_err(|e| self.err("open", parent, e))?;
        match self.lstat(rel)? {
            Some(n) if n.kind == FileType::Symlink => Ok(()),
            Some(n) if n.mode == mode => Ok(()),
            _ => rustix::fs::chmodat(&d, name, Mode::from_raw_mode(mode), AtFlags::empty())
                .map_err(|e| self.err("chmod", rel, e)),
        }
    }

    fn tmp_name(name: &str) -> String {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let short: String = name.chars().take(64).collect();
        format!("{}{n}-{short}", tmp_prefix(std::process::id()))
    }

    /// Replaces `rel` atomically by a regular file with `data`'s content and `mode`
    /// (a temp file beside it, fsync when `durable`, rename over).
    pub fn write_file(
        &self,
        rel: &str,
        data: &mut dyn Read,
        mode: u32,
        durable: bool,
    ) -> Result<(), LayerError> {
        let (parent, name) = split(rel);
        let d = self.dir(parent).map_err(|e| self.err("open", parent, e))?;
        let tmp = Self::tmp_name(name);
        let fd = rustix::fs::openat(
            &d,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| self.err("create", &join(parent, &tmp), e))?;
        let mut f = File::from(fd);
        let res = (|| {
            std::io::copy(data, &mut f)
                .map_err(|e| LayerError::io("write", self.path.join(rel), e))?;
            rustix::fs::fchmod(&f, Mode::from_raw_mode(mode))
                .map_err(|e| self.err("chmod", rel, e))?;
            if durable {
                f.sync_all()
                    .map_err(|e| LayerError::io("fsync", self.path.join(rel), e))?;
            }
            self.replace(&d, &tmp, rel, name)
        })();
        if res.is_err() {
            let _ = rustix::fs::unlinkat(&d, tmp.as_str(), AtFlags::empty());
        }
        res
    }

    fn replace(&self, d: &OwnedFd, tmp: &str, rel: &str, name: &str) -> Result<(), LayerError> {
        if let Some(n) = self.lstat(rel)?
            && n.kind == FileType::Directory
        {
            self.remove_all(rel)?;
        }
        rustix::fs::renameat(d, tmp, d, name).map_err(|e| self.err("rename", rel, e))
    }

    /// Makes `rel` a hard link of `existing` (atomically replacing what was there).
    pub fn link(&self, existing: &str, rel: &str) -> Result<(), LayerError> {
        let (ep, en) = split(existing);
        let (parent, name) = split(rel);
        let ed = self.dir(ep).map_err(|e| self.err("open", ep, e))?;
        let d = self.dir(parent).map_err(|e| self.err("open", parent, e))?;
        let tmp = Self::tmp_name(name);
        rustix::fs::linkat(&ed, en, &d, tmp.as_str(), AtFlags::empty())
            .map_err(|e| self.err("link", rel, e))?;
        self.replace(&d, &tmp, rel, name)
    }

    /// Replaces `rel` by a symlink to `target`.
    pub fn symlink(&self, rel: &str, target: &str) -> Result<(), LayerError> {
        self.remove_all(rel)?;
        let (parent, name) = split(rel);
        let d = self.dir(parent).map_err(|e| self.err("open", parent, e))?;
        rustix::fs::symlinkat(target, &d, name).map_err(|e| self.err("symlink", rel, e))
    }

    /// Replaces `rel` by a fifo of `mode`.
    pub fn mkfifo(&self, rel: &str, mode: u32) -> Result<(), LayerError> {
        self.remove_all(rel)?;
        let (parent, name) = split(rel);
        let d = self.dir(parent).map_err(|e| self.err("open", parent, e))?;
        rustix::fs::mknodat(&d, name, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
            .map_err(|e| self.err("mkfifo", rel, e))?;
        self.chmod(rel, mode)
    }

    /// The raw directory fd (for callers that need `AsFd`).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Where file contents come from when restoring: an object of the store, or the lower
/// (the repo) at the same path.
pub trait Source {
    /// A reader of the content.
    fn open(&self, content: &Content, path: &str) -> Result<Box<dyn Read>, LayerError>;
}

/// Contents from a session's store, and (for [`Content::Lower`]) from the lower dir.
#[derive(Debug)]
pub struct StoreSource<'a> {
    pub store: &'a super::store::Store,
    pub lower: Option<&'a Root>,
}

impl Source for StoreSource<'_> {
    fn open(&self, content: &Content, path: &str) -> Result<Box<dyn Read>, LayerError> {
        match (content, self.lower) {
            (Content::Object(h), _) => Ok(Box::new(std::io::Cursor::new(self.store.read(h)?))),
            (Content::Lower, Some(l)) => Ok(Box::new(l.open_read(path)?)),
            (Content::Lower, None) => Err(LayerError::Invalid {
                path: path.into(),
                reason: "content from a lower dir that is not there".into(),
            }),
        }
    }
}

/// Makes every path of `changes` look like its `new` state in `root`, top-down (the
/// order [`super::view::changes`] yields). Directories are made writable while their
/// children change and get their final modes last (deepest first), so a read-only
/// directory in either state is no obstacle. Idempotent: running it again after a crash
/// finishes the job. `durable` fsyncs each written file (commits).
pub fn restore(
    root: &Root,
    changes: &[Change],
    src: &dyn Source,
    durable: bool,
) -> Result<(), LayerError> {
    // Final modes of directories, applied at the end, deepest first.
    let mut final_modes: Vec<(String, u32)> = Vec::new();
    let mut opened: HashMap<String, ()> = HashMap::new();
    let mut links: HashMap<u64, String> = HashMap::new();
    for c in changes {
        let (parent, _) = split(&c.path);
        // The parent must be writable for us while we change its entries.
        if !parent.is_empty() && !opened.contains_key(parent) {
            if let Some(n) = root.lstat(parent)?
                && n.kind == FileType::Directory
                && n.mode & 0o700 != 0o700
            {
                final_modes.push((parent.to_owned(), n.mode));
                root.chmod(parent, n.mode | 0o700)?;
            }
            opened.insert(parent.to_owned(), ());
        }
        match &c.new {
            State::Absent => root.remove_all(&c.path)?,
            State::Dir { mode } => {
                match root.lstat(&c.path)? {
                    Some(n) if n.kind == FileType::Directory => {}
                    Some(_) => {
                        root.remove_all(&c.path)?;
                        root.mkdir(&c.path, 0o700)?;
                    }
                    None => root.mkdir(&c.path, 0o700)?,
                }
                // Writable now; the final mode is set at the end.
                root.chmod(&c.path, mode | 0o700)?;
                opened.insert(c.path.clone(), ());
                final_modes.push((c.path.clone(), *mode));
            }
            State::File {
                mode,
                content,
                link,
                ..
            } => {
                if let Some(g) = link
                    && let Some(first) = links.get(g)
                {
                    root.link(first, &c.path)?;
                    continue;
                }
                let mut r = src.open(content, &c.path)?;
                root.write_file(&c.path, &mut r, *mode, durable)?;
                if let Some(g) = link {
                    links.insert(*g, c.path.clone());
                }
            }
            State::Symlink { target } => root.symlink(&c.path, target)?,
            State::Special { mode } => root.mkfifo(&c.path, *mode)?,
        }
    }
    final_modes.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| b.0.cmp(&a.0)));
    for (p, m) in final_modes {
        if root
            .lstat(&p)?
            .is_some_and(|n| n.kind == FileType::Directory)
        {
            root.chmod(&p, m)?;
        }
    }
    Ok(())
}

/// Copies all of `r` into a writer (a tiny helper for sources).
pub fn copy_all(r: &mut dyn Read, w: &mut dyn Write) -> std::io::Result<u64> {
    std::io::copy(r, w)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
    use super::*;
    use std::fs;

    #[test]
    fn paths_through_a_planted_symlink_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let tree = t.path().join("tree");
        let outside = t.path().join("outside");
        fs::create_dir_all(&tree).unwrap();
        fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("evil")).unwrap();
        std::os::unix::fs::symlink("../outside", tree.join("evil2")).unwrap();
        let r = Root::open(&tree).unwrap();
        for p in ["evil/x", "evil2/x"] {
            assert!(
                r.write_file(p, &mut &b"x"[..], 0o644, false).is_err(),
                "{p}"
            );
            assert!(r.mkdir(p, 0o755).is_err(), "{p}");
            assert!(r.lstat(p).unwrap().is_none(), "{p}");
        }
        assert!(r.open_read("evil").is_err());
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        // The symlink itself is an entry of the tree and can be replaced.
        r.write_file("evil", &mut &b"now a file"[..], 0o600, false)
            .unwrap();
        assert_eq!(fs::read(tree.join("evil")).unwrap(), b"now a file");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    }
}
