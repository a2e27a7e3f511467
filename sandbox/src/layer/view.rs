//! The merged view of a checkpoint (its manifest over the lower dir) and the paths where two
//! such views differ. Only the two manifests' entries are visited, plus the lower dir's
//! entries under a directory whose lower visibility flips between the two (a directory the
//! session removed, made opaque, or brought back): never the rest of the repo.

use std::collections::BTreeSet;

use rustix::fs::FileType;
use serde::{Deserialize, Serialize};

use super::apply::Root;
use super::store::hash_reader;
use super::{Entry, LayerError, Manifest, join};

/// Where a file's content is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Content {
    /// Object (hex SHA-256) of the store.
    Object(String),
    /// The lower dir's file at the same path.
    Lower,
}

/// A path's state in a merged view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum State {
    Absent,
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        size: u64,
        content: Content,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        link: Option<u64>,
    },
    Symlink {
        target: String,
    },
    Special {
        mode: u32,
    },
}

impl State {
    /// A short name of the kind ("file", "dir", …).
    pub fn kind(&self) -> &'static str {
        match self {
            State::Absent => "absent",
            State::Dir { .. } => "dir",
            State::File { .. } => "file",
            State::Symlink { .. } => "symlink",
            State::Special { .. } => "fifo",
        }
    }

    /// The permission bits, if the kind has them.
    pub fn mode(&self) -> Option<u32> {
        match self {
            State::Dir { mode } | State::File { mode, .. } | State::Special { mode } => Some(*mode),
            _ => None,
        }
    }

    fn is_dir(&self) -> bool {
        matches!(self, State::Dir { .. })
    }
}

/// One path whose merged state differs between two views.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub path: String,
    pub old: State,
    pub new: State,
}

/// The state of `p` in the lower dir.
pub fn lower_state(lower: &Root, p: &str) -> Result<State, LayerError> {
    let Some(n) = lower.lstat(p)? else {
        return Ok(State::Absent);
    };
    Ok(match n.kind {
        FileType::Directory => State::Dir { mode: n.mode },
        FileType::RegularFile => State::File {
            mode: n.mode,
            size: n.size,
            content: Content::Lower,
            link: None,
        },
        FileType::Symlink => State::Symlink {
            target: lower.readlink(p)?,
        },
        _ => State::Special { mode: n.mode },
    })
}

/// The state of `p` in `m`'s merged view, given whether the lower entry shows through.
fn state(
    m: &Manifest,
    p: &str,
    lower_visible: bool,
    lower: Option<&Root>,
) -> Result<State, LayerError> {
    if let Some(e) = m.entries.get(p) {
        return Ok(match e {
            Entry::Dir { mode, .. } => State::Dir { mode: *mode },
            Entry::File {
                mode,
                size,
                hash,
                link,
            } => State::File {
                mode: *mode,
                size: *size,
                content: Content::Object(hash.clone()),
                link: *link,
            },
            Entry::Symlink { target } => State::Symlink {
                target: target.clone(),
            },
            Entry::Whiteout => State::Absent,
            Entry::Special { mode } => State::Special { mode: *mode },
        });
    }
    match lower {
        Some(l) if lower_visible => lower_state(l, p),
        _ => Ok(State::Absent),
    }
}

/// Whether two states are the same tree content (hard-link grouping aside). Comparing an
/// object with the lower file reads the lower file.
pub fn same(a: &State, b: &State, p: &str, lower: Option<&Root>) -> Result<bool, LayerError> {
    match (a, b) {
        (
            State::File {
                mode: ma,
                size: sa,
                content: ca,
                ..
            },
            State::File {
                mode: mb,
                size: sb,
                content: cb,
                ..
            },
        ) => {
            if ma != mb || sa != sb {
                return Ok(false);
            }
            match (ca, cb) {
                (Content::Object(x), Content::Object(y)) => Ok(x == y),
                (Content::Lower, Content::Lower) => Ok(true),
                (Content::Object(h), Content::Lower) | (Content::Lower, Content::Object(h)) => {
                    let Some(l) = lower else { return Ok(false) };
                    let mut f = l.open_read(p)?;
                    let (lh, _) = hash_reader(&mut f, &l.path().join(p))?;
                    Ok(&lh == h)
                }
            }
        }
        _ => Ok(a == b),
    }
}

/// Whether the lower dir's children of `p` show through on one side, or None when `p` is
/// not a directory there (its children are absent).
fn child_visibility(
    m: &Manifest,
    p: &str,
    s: &State,
    vis: bool,
    lower: Option<&Root>,
) -> Result<Option<bool>, LayerError> {
    if !s.is_dir() {
        return Ok(None);
    }
    if !vis {
        return Ok(Some(false));
    }
    if matches!(m.entries.get(p), Some(Entry::Dir { opaque: true, .. })) {
        return Ok(Some(false));
    }
    Ok(Some(match lower {
        Some(l) => l.lstat(p)?.is_some_and(|n| n.kind == FileType::Directory),
        None => false,
    }))
}

/// Every path whose merged state differs between `a` and `b` over `lower` (None: an empty
/// lower dir), parents before children.
pub fn changes(
    a: &Manifest,
    b: &Manifest,
    lower: Option<&Root>,
) -> Result<Vec<Change>, LayerError> {
    let mut out = Vec::new();
    let vis = lower.is_some();
    visit(a, b, lower, "", Some(vis), Some(vis), &mut out)?;
    Ok(out)
}

fn visit(
    a: &Manifest,
    b: &Manifest,
    lower: Option<&Root>,
    dir: &str,
    a_vis: Option<bool>,
    b_vis: Option<bool>,
    out: &mut Vec<Change>,
) -> Result<(), LayerError> {
    let mut names: BTreeSet<String> = BTreeSet::new();
    if a_vis.is_some() {
        names.extend(a.children(dir));
    }
    if b_vis.is_some() {
        names.extend(b.children(dir));
    }
    let (av, bv) = (a_vis == Some(true), b_vis == Some(true));
    if av != bv
        && let Some(l) = lower
    {
        names.extend(l.list(dir)?);
    }
    for n in names {
        let p = join(dir, &n);
        let sa = match a_vis {
            Some(v) => state(a, &p, v, lower)?,
            None => State::Absent,
        };
        let sb = match b_vis {
            Some(v) => state(b, &p, v, lower)?,
            None => State::Absent,
        };
        let (ca, cb) = (
            child_visibility(a, &p, &sa, av, lower)?,
            child_visibility(b, &p, &sb, bv, lower)?,
        );
        let differs = !same(&sa, &sb, &p, lower)?;
        let descend = sa.is_dir() || sb.is_dir();
        if differs {
            out.push(Change {
                path: p.clone(),
                old: sa,
                new: sb,
            });
        }
        if descend {
            visit(a, b, lower, &p, ca, cb, out)?;
        }
    }
    Ok(())
}

/// The merged view of `m` over `lower` as a full change list from nothing: every path and
/// its state (tests and `--git-branch` export use it; it reads the whole lower dir).
pub fn full_tree(m: &Manifest, lower: Option<&Root>) -> Result<Vec<Change>, LayerError> {
    let mut out = Vec::new();
    visit(
        &Manifest::default(),
        m,
        lower,
        "",
        Some(false),
        Some(lower.is_some()),
        &mut out,
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
    use super::*;
    use std::fs;

    fn dir(opaque: bool) -> Entry {
        Entry::Dir {
            mode: 0o755,
            opaque,
        }
    }

    fn lower() -> (tempfile::TempDir, Root) {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("src/deep")).unwrap();
        fs::write(t.path().join("src/a.rs"), b"a\n").unwrap();
        fs::write(t.path().join("src/deep/b.rs"), b"b\n").unwrap();
        fs::write(t.path().join("README"), b"r\n").unwrap();
        // Not visited unless its visibility flips: a big directory the session never touched.
        fs::create_dir_all(t.path().join("vendor")).unwrap();
        for i in 0..50 {
            fs::write(t.path().join(format!("vendor/{i}")), b"v").unwrap();
        }
        for p in ["src", "src/deep", "vendor"] {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(t.path().join(p), fs::Permissions::from_mode(0o755)).unwrap();
        }
        let r = Root::open(t.path()).unwrap();
        (t, r)
    }

    #[test]
    fn a_whiteout_of_a_dir_deletes_its_lower_subtree_and_nothing_else() {
        let (_t, l) = lower();
        let mut b = Manifest::default();
        b.entries.insert("src".into(), Entry::Whiteout);
        let c = changes(&Manifest::default(), &b, Some(&l)).unwrap();
        let paths: Vec<_> = c.iter().map(|c| (c.path.as_str(), c.new.kind())).collect();
        assert_eq!(
            paths,
            [
                ("src", "absent"),
                ("src/a.rs", "absent"),
                ("src/deep", "absent"),
                ("src/deep/b.rs", "absent")
            ]
        );
        assert!(c.iter().all(|c| c.old.kind() != "absent"));
    }

    #[test]
    fn an_opaque_dir_hides_lower_children_and_a_plain_one_merges_them() {
        let (_t, l) = lower();
        let mut opaque = Manifest::default();
        opaque.entries.insert("src".into(), dir(true));
        opaque.entries.insert(
            "src/new".into(),
            Entry::Symlink {
                target: "a.rs".into(),
            },
        );
        let c = changes(&Manifest::default(), &opaque, Some(&l)).unwrap();
        let got: Vec<_> = c.iter().map(|c| (c.path.as_str(), c.new.kind())).collect();
        assert_eq!(
            got,
            [
                ("src/a.rs", "absent"),
                ("src/deep", "absent"),
                ("src/deep/b.rs", "absent"),
                ("src/new", "symlink")
            ]
        );
        let mut plain = opaque.clone();
        plain.entries.insert("src".into(), dir(false));
        let c = changes(&Manifest::default(), &plain, Some(&l)).unwrap();
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].path, "src/new");
        // Going back from opaque to plain brings the lower children back.
        let c = changes(&opaque, &plain, Some(&l)).unwrap();
        let got: Vec<_> = c
            .iter()
            .map(|c| (c.path.as_str(), c.old.kind(), c.new.kind()))
            .collect();
        assert_eq!(
            got,
            [
                ("src/a.rs", "absent", "file"),
                ("src/deep", "absent", "dir"),
                ("src/deep/b.rs", "absent", "file")
            ]
        );
    }

    #[test]
    fn a_copied_up_file_with_the_lower_content_is_no_change() {
        let (t, l) = lower();
        let store = super::super::store::Store::open(&t.path().join("../store-x")).unwrap();
        let (h, _) = store.put_file(&t.path().join("src/a.rs")).unwrap();
        let mut b = Manifest::default();
        b.entries.insert("src".into(), dir(false));
        b.entries.insert(
            "src/a.rs".into(),
            Entry::File {
                mode: fs::symlink_metadata(t.path().join("src/a.rs"))
                    .unwrap()
                    .mode()
                    & 0o7777,
                size: 2,
                hash: h,
                link: None,
            },
        );
        assert!(
            changes(&Manifest::default(), &b, Some(&l))
                .unwrap()
                .is_empty()
        );
        let _ = fs::remove_dir_all(t.path().join("../store-x"));
    }

    use std::os::unix::fs::MetadataExt;
}
