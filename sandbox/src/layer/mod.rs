//! The session layer's checkpoint engine: what the session wrote, recorded cheaply and
//! restorable exactly (see `docs/undo.md`).
//!
//! The overlay's upper dir *is* the session's change set against the repo (the lower dir),
//! so a checkpoint is a walk of the upper dir only ([`walk`]): cost proportional to what the
//! session wrote, never to the repo. Changed file contents go into a content-addressed
//! object store ([`store`]: reflink where the filesystem can, else a copy), the tree shape
//! into a [`Manifest`] (whiteouts, opaque dirs, modes, symlinks, empty dirs, hard links).
//! [`view`] turns two manifests and the lower dir into the list of paths whose *merged*
//! state differs (the diff, and the plan of an undo); [`apply`] performs such a plan
//! through a directory fd with `openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS)`, which is how
//! an undo goes through the merged view of a running session (overlayfs forbids changing
//! the upper layer behind a mounted overlay) and how a commit writes the real repo;
//! [`diff`] renders changes as a unified diff; [`commit`] applies a session's changes to the
//! repo under an intent journal.
//!
//! Everything here works on plain directories, so it is host-tested with a fake layout;
//! freezing the session and finding its merged view is the daemon's part.

pub mod apply;
pub mod commit;
pub mod diff;
pub mod git;
pub mod store;
pub mod view;
pub mod walk;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One entry of the upper layer, as the overlay means it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// A directory; `opaque` (xattr `user.overlay.opaque` or `trusted.overlay.opaque` = `y`)
    /// hides the lower dir's entries.
    Dir { mode: u32, opaque: bool },
    /// A regular file whose content is object `hash` (hex SHA-256) of `size` bytes. `link`
    /// groups names of one inode (hard links inside the layer).
    File {
        mode: u32,
        size: u64,
        hash: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        link: Option<u64>,
    },
    /// A symbolic link and its target.
    Symlink { target: String },
    /// An overlay whiteout (character device 0/0): the lower entry of this name is deleted.
    Whiteout,
    /// A fifo or socket (recorded so the tree compares equal; restored as a fifo).
    Special { mode: u32 },
}

/// What is needed to tell whether a file changed since the previous checkpoint without
/// reading it: the inode, size and both times (ctime changes on every write and chmod).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

/// The upper layer at one instant: path (relative, `/`-separated, no leading slash) →
/// entry. The root itself is not an entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub entries: BTreeMap<String, Entry>,
    /// Stamps of the regular files, for the next walk (not part of the tree's identity).
    #[serde(default)]
    pub stamps: BTreeMap<String, Stamp>,
}

impl Manifest {
    /// Number of regular files and their total size.
    pub fn totals(&self) -> (u64, u64) {
        let mut files = 0;
        let mut bytes = 0;
        for e in self.entries.values() {
            if let Entry::File { size, .. } = e {
                files += 1;
                bytes += size;
            }
        }
        (files, bytes)
    }

    /// Object hashes this manifest refers to.
    pub fn objects(&self) -> impl Iterator<Item = &str> {
        self.entries.values().filter_map(|e| match e {
            Entry::File { hash, .. } => Some(hash.as_str()),
            _ => None,
        })
    }

    /// Direct children of `dir` ("" = the root), by name, in order.
    pub fn children(&self, dir: &str) -> Vec<String> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let mut out: Vec<String> = Vec::new();
        for (k, _) in self.entries.range(prefix.clone()..) {
            let Some(rest) = k.strip_prefix(&prefix) else {
                break;
            };
            if rest.is_empty() {
                continue;
            }
            let name = rest.split('/').next().unwrap_or(rest);
            if out.last().map(String::as_str) != Some(name) && !rest.contains('/') {
                out.push(name.to_owned());
            }
        }
        out
    }
}

/// Joins a relative manifest path and a name.
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// Errors of the checkpoint engine; each names the path it concerns.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: a name that is not UTF-8 is not supported by checkpoints")]
    NotUtf8 { path: PathBuf },
    #[error("object {hash}: content does not match its hash (store damaged)")]
    Corrupt { hash: String },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("{0}")]
    Json(String),
}

impl LayerError {
    /// An [`LayerError::Io`] with what was done and on which path.
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LayerError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
    use super::*;

    #[test]
    fn children_lists_direct_names_only_in_order() {
        let mut m = Manifest::default();
        for p in ["a", "a/b", "a/b/c", "a/d", "a.txt", "b"] {
            m.entries.insert(p.into(), Entry::Whiteout);
        }
        assert_eq!(m.children(""), vec!["a", "a.txt", "b"]);
        assert_eq!(m.children("a"), vec!["b", "d"]);
        assert_eq!(m.children("a/b"), vec!["c"]);
        assert!(m.children("b").is_empty());
    }
}

#[cfg(test)]
mod proptests;
