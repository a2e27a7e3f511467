//! Renders a change list as the API's diff: one summary row per path and a unified diff of
//! the text files (a "Binary files … differ" line for the others, a mode line for a mode
//! change, the target for a symlink).

use std::io::Read;

use serde::{Deserialize, Serialize};

use super::LayerError;
use super::apply::Root;
use super::store::Store;
use super::view::{Change, Content, State};

/// What happened to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
    TypeChanged,
    ModeChanged,
}

/// One row of a diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDiff {
    pub path: String,
    pub change: ChangeKind,
    /// "file", "dir", "symlink", "fifo" (the new kind; the old one when deleted).
    pub kind: String,
    pub binary: bool,
    pub old_mode: Option<u32>,
    pub new_mode: Option<u32>,
    pub old_size: Option<u64>,
    pub new_size: Option<u64>,
}

/// Files larger than this are shown as binary (a line, no hunks).
pub const TEXT_LIMIT: u64 = 1 << 20;

fn size(s: &State) -> Option<u64> {
    match s {
        State::File { size, .. } => Some(*size),
        _ => None,
    }
}

/// Classifies one change.
pub fn kind_of(c: &Change) -> ChangeKind {
    match (&c.old, &c.new) {
        (State::Absent, _) => ChangeKind::Added,
        (_, State::Absent) => ChangeKind::Deleted,
        (a, b) if a.kind() != b.kind() => ChangeKind::TypeChanged,
        (
            State::File {
                content: x,
                size: sx,
                ..
            },
            State::File {
                content: y,
                size: sy,
                ..
            },
        ) if x == y && sx == sy => ChangeKind::ModeChanged,
        (State::Dir { .. }, State::Dir { .. }) | (State::Special { .. }, State::Special { .. }) => {
            ChangeKind::ModeChanged
        }
        _ => ChangeKind::Modified,
    }
}

fn bytes(
    s: &State,
    path: &str,
    store: &Store,
    lower: Option<&Root>,
) -> Result<Option<Vec<u8>>, LayerError> {
    match s {
        State::File {
            content: Content::Object(h),
            size,
            ..
        } => {
            if *size > TEXT_LIMIT {
                return Ok(None);
            }
            store.read(h).map(Some)
        }
        State::File {
            content: Content::Lower,
            size,
            ..
        } => {
            let Some(l) = lower else { return Ok(None) };
            if *size > TEXT_LIMIT {
                return Ok(None);
            }
            let mut v = Vec::new();
            l.open_read(path)?
                .read_to_end(&mut v)
                .map_err(|e| LayerError::io("read", l.path().join(path), e))?;
            Ok(Some(v))
        }
        State::Symlink { target } => Ok(Some(format!("-> {target}\n").into_bytes())),
        _ => Ok(Some(Vec::new())),
    }
}

fn text(b: &[u8]) -> Option<&str> {
    if b.contains(&0) {
        return None;
    }
    std::str::from_utf8(b).ok()
}

/// Summary rows and (unless `stat`) the unified diff text of `changes`.
pub fn render(
    changes: &[Change],
    store: &Store,
    lower: Option<&Root>,
    stat: bool,
) -> Result<(Vec<FileDiff>, String), LayerError> {
    let mut rows = Vec::new();
    let mut out = String::new();
    for c in changes {
        let change = kind_of(c);
        let shown = if matches!(c.new, State::Absent) {
            &c.old
        } else {
            &c.new
        };
        let mut row = FileDiff {
            path: c.path.clone(),
            change,
            kind: shown.kind().to_owned(),
            binary: false,
            old_mode: c.old.mode(),
            new_mode: c.new.mode(),
            old_size: size(&c.old),
            new_size: size(&c.new),
        };
        let is_content = |s: &State| matches!(s, State::File { .. } | State::Symlink { .. });
        if !is_content(&c.old) && !is_content(&c.new) {
            if !stat {
                out.push_str(&format!("diff --agentd a/{0} b/{0}\n", c.path));
                out.push_str(&format!(
                    "{:?} {}: {} -> {}\n",
                    change,
                    shown.kind(),
                    mode_str(c.old.mode()),
                    mode_str(c.new.mode())
                ));
            }
            rows.push(row);
            continue;
        }
        let old = bytes(&c.old, &c.path, store, lower)?;
        let new = bytes(&c.new, &c.path, store, lower)?;
        let (ot, nt) = (old.as_deref().and_then(text), new.as_deref().and_then(text));
        row.binary = ot.is_none() || nt.is_none();
        if !stat {
            out.push_str(&format!("diff --agentd a/{0} b/{0}\n", c.path));
            if c.old.mode() != c.new.mode()
                && change != ChangeKind::Added
                && change != ChangeKind::Deleted
            {
                out.push_str(&format!(
                    "old mode {}\nnew mode {}\n",
                    mode_str(c.old.mode()),
                    mode_str(c.new.mode())
                ));
            }
            let a = if matches!(c.old, State::Absent) {
                "/dev/null".to_owned()
            } else {
                format!("a/{}", c.path)
            };
            let b = if matches!(c.new, State::Absent) {
                "/dev/null".to_owned()
            } else {
                format!("b/{}", c.path)
            };
            match (ot, nt) {
                (Some(x), Some(y)) if change != ChangeKind::ModeChanged => {
                    let d = similar::TextDiff::from_lines(x, y);
                    out.push_str(
                        &d.unified_diff()
                            .context_radius(3)
                            .header(&a, &b)
                            .to_string(),
                    );
                }
                (Some(_), Some(_)) => {}
                _ => out.push_str(&format!("Binary files {a} and {b} differ\n")),
            }
        }
        rows.push(row);
    }
    Ok((rows, out))
}

fn mode_str(m: Option<u32>) -> String {
    m.map(|m| format!("{m:o}")).unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
    use super::*;

    #[test]
    fn text_binary_and_mode_changes_render() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let h1 = s.put_bytes(b"one\ntwo\n").unwrap();
        let h2 = s.put_bytes(b"one\nthree\n").unwrap();
        let hb = s.put_bytes(b"\0\x01bin").unwrap();
        let f = |h: &str, mode| State::File {
            mode,
            size: 8,
            content: Content::Object(h.into()),
            link: None,
        };
        let changes = vec![
            Change {
                path: "a.txt".into(),
                old: f(&h1, 0o644),
                new: f(&h2, 0o644),
            },
            Change {
                path: "b.bin".into(),
                old: State::Absent,
                new: f(&hb, 0o644),
            },
            Change {
                path: "run.sh".into(),
                old: f(&h1, 0o644),
                new: f(&h1, 0o755),
            },
            Change {
                path: "gone".into(),
                old: State::Dir { mode: 0o755 },
                new: State::Absent,
            },
        ];
        let (rows, text) = render(&changes, &s, None, false).unwrap();
        let kinds: Vec<_> = rows
            .iter()
            .map(|r| (r.path.as_str(), r.change, r.binary))
            .collect();
        assert_eq!(
            kinds,
            [
                ("a.txt", ChangeKind::Modified, false),
                ("b.bin", ChangeKind::Added, true),
                ("run.sh", ChangeKind::ModeChanged, false),
                ("gone", ChangeKind::Deleted, false)
            ]
        );
        assert!(text.contains("--- a/a.txt\n+++ b/a.txt\n"), "{text}");
        assert!(text.contains("-two\n+three\n"), "{text}");
        assert!(
            text.contains("Binary files /dev/null and b/b.bin differ"),
            "{text}"
        );
        assert!(text.contains("old mode 644\nnew mode 755\n"), "{text}");
        let (_, stat) = render(&changes, &s, None, true).unwrap();
        assert!(stat.is_empty());
    }
}
