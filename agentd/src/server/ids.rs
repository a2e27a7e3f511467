//! The host uid (= gid) each session's container root maps to: one of its own per session,
//! from a range the daemon owns (`agentd serve --container-ids START:COUNT`), so no two
//! sessions — and no user's subordinate ids — share a container root. A session's state dir
//! is owned by its container root with mode 0700: another session's root, or uid 100000 (the
//! first user's subuid on Debian, every session's root before this), can neither list nor
//! traverse it (issue 18).
//!
//! The range is checked at start against /etc/subuid, /etc/subgid, /etc/passwd and
//! /etc/group: an overlap refuses to start, naming the entry. The id a session gets is
//! recorded with it ([`crate::api::SessionInfo::container_uid`]); a re-adopted session keeps
//! the one its runtime recorded. Pure parsing and choice here (host-tested); the daemon
//! reads the files and the journal.

use std::collections::BTreeSet;
use std::path::Path;

/// The default range: just above systemd-nspawn's container range (0x80000–0x6FFFFFFF)
/// and below systemd's foreign range (0x7FFF0000–), far above Debian's subuid blocks
/// (100000–600100000).
pub const DEFAULT_START: u32 = 0x7000_0000;
/// 65,536 sessions alive or kept at once.
pub const DEFAULT_COUNT: u32 = 65_536;

/// The range of an in-process daemon (`agentctl run` with no daemon running): 16 ids of
/// the 65,536 right above the default range, by pid, so it shares no container uid with the
/// system daemon nor, but for a pid collision mod 4096, with another such run.
pub fn in_process_range(pid: u32) -> IdRange {
    IdRange {
        start: DEFAULT_START + DEFAULT_COUNT + (pid % 4096) * 16,
        count: 16,
    }
}

/// A half-open range of host ids `[start, start + count)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub start: u32,
    pub count: u32,
}

impl Default for IdRange {
    fn default() -> Self {
        IdRange {
            start: DEFAULT_START,
            count: DEFAULT_COUNT,
        }
    }
}

/// What is wrong with a container id range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("container ids {text:?}: expected START:COUNT (e.g. {DEFAULT_START}:{DEFAULT_COUNT})")]
    Syntax { text: String },
    #[error(
        "container ids {start}:{count}: must be non-empty, above 65535 (system and user ids) \
         and end below 4294967295"
    )]
    Bounds { start: u32, count: u32 },
    #[error(
        "container ids {start}..{end} overlap {file} line {line} ({entry:?}): a session's \
         container root would share a uid with it; pick another range with \
         `agentd serve --container-ids START:COUNT`"
    )]
    Overlap {
        start: u32,
        end: u64,
        file: String,
        line: usize,
        entry: String,
    },
    #[error("container ids: reading {file}: {reason}")]
    Read { file: String, reason: String },
    #[error(
        "no free container id: all {count} ids from {start} belong to sessions alive or kept \
         (remove ended sessions with `agentctl rm`, or widen --container-ids)"
    )]
    Exhausted { start: u32, count: u32 },
}

impl IdRange {
    fn end(&self) -> u64 {
        u64::from(self.start) + u64::from(self.count)
    }

    /// `START:COUNT`, checked: not empty, clear of the ids users and the system have, and
    /// never reaching `(uid_t)-1`.
    pub fn parse(text: &str) -> Result<IdRange, IdError> {
        let syntax = || IdError::Syntax { text: text.into() };
        let (a, b) = text.split_once(':').ok_or_else(syntax)?;
        let start: u32 = a.trim().parse().map_err(|_| syntax())?;
        let count: u32 = b.trim().parse().map_err(|_| syntax())?;
        let r = IdRange { start, count };
        if count == 0 || start <= 65_535 || r.end() > u64::from(u32::MAX) {
            return Err(IdError::Bounds { start, count });
        }
        Ok(r)
    }

    fn contains(&self, id: u64) -> bool {
        id >= u64::from(self.start) && id < self.end()
    }

    /// Refuses a range that overlaps an entry of a subordinate-id file (`name:start:count`
    /// lines of /etc/subuid, /etc/subgid).
    pub fn check_subids(&self, file: &Path, text: &str) -> Result<(), IdError> {
        for (i, line) in text.lines().enumerate() {
            let f: Vec<&str> = line.trim().split(':').collect();
            let (Some(s), Some(c)) = (
                f.get(1).and_then(|v| v.parse::<u64>().ok()),
                f.get(2).and_then(|v| v.parse::<u64>().ok()),
            ) else {
                continue;
            };
            if s < self.end() && u64::from(self.start) < s + c {
                return Err(self.overlap(file, i, line));
            }
        }
        Ok(())
    }

    /// Refuses a range holding the id of an entry of /etc/passwd or /etc/group (third field).
    pub fn check_ids(&self, file: &Path, text: &str) -> Result<(), IdError> {
        for (i, line) in text.lines().enumerate() {
            let id = line.split(':').nth(2).and_then(|v| v.parse::<u64>().ok());
            if id.is_some_and(|id| self.contains(id)) {
                return Err(self.overlap(file, i, line));
            }
        }
        Ok(())
    }

    fn overlap(&self, file: &Path, i: usize, line: &str) -> IdError {
        IdError::Overlap {
            start: self.start,
            end: self.end(),
            file: file.display().to_string(),
            line: i + 1,
            entry: line.trim().chars().take(80).collect(),
        }
    }

    /// The lowest id of the range no session in `taken` holds.
    pub fn pick(&self, taken: &BTreeSet<u32>) -> Result<u32, IdError> {
        (0..self.count)
            .map(|k| self.start + k)
            .find(|id| !taken.contains(id))
            .ok_or(IdError::Exhausted {
                start: self.start,
                count: self.count,
            })
    }

    /// Checks the range against the host's id files. A missing file holds no ids; one that
    /// exists but cannot be read refuses the start (fail closed: its ids are unknown).
    pub fn check_host(&self) -> Result<(), IdError> {
        for (f, sub) in [
            ("/etc/subuid", true),
            ("/etc/subgid", true),
            ("/etc/passwd", false),
            ("/etc/group", false),
        ] {
            let Some(text) = read_id_file(Path::new(f))? else {
                continue;
            };
            if sub {
                self.check_subids(Path::new(f), &text)?;
            } else {
                self.check_ids(Path::new(f), &text)?;
            }
        }
        Ok(())
    }
}

/// An id file's text; `None` when it does not exist.
fn read_id_file(path: &Path) -> Result<Option<String>, IdError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(IdError::Read {
            file: path.display().to_string(),
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code
    use super::*;

    #[test]
    fn ranges_parse_and_bad_ones_say_why() {
        assert_eq!(
            IdRange::parse("1879048192:65536").unwrap(),
            IdRange::default()
        );
        for bad in ["", "5", "a:b", "1:-1"] {
            assert!(
                matches!(IdRange::parse(bad), Err(IdError::Syntax { .. })),
                "{bad}"
            );
        }
        for bad in ["1000:10", "70000:0", "4294967290:10"] {
            assert!(
                matches!(IdRange::parse(bad), Err(IdError::Bounds { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn an_overlap_with_subordinate_or_user_ids_is_refused_by_line() {
        let r = IdRange::parse("200000:65536").unwrap();
        let sub = "# comment\nalice:100000:65536\nbob:165536:65536\n";
        let e = r.check_subids(Path::new("/etc/subuid"), sub).unwrap_err();
        assert!(
            matches!(&e, IdError::Overlap { line: 3, entry, .. } if entry.starts_with("bob:")),
            "{e}"
        );
        assert!(e.to_string().contains("--container-ids"), "{e}");
        r.check_subids(Path::new("/etc/subuid"), "alice:100000:65536\n")
            .unwrap();
        let passwd = "root:x:0:0::/root:/bin/sh\nodd:x:210000:210000::/:/bin/sh\n";
        assert!(r.check_ids(Path::new("/etc/passwd"), passwd).is_err());
        r.check_ids(Path::new("/etc/passwd"), "root:x:0:0::/root:/bin/sh\n")
            .unwrap();
    }

    #[test]
    fn a_missing_id_file_holds_no_ids_and_an_unreadable_one_refuses() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_id_file(&dir.path().join("none")).unwrap(), None);
        // A directory where the file should be: it exists, and reading it fails.
        let e = read_id_file(dir.path()).unwrap_err();
        assert!(matches!(e, IdError::Read { .. }), "{e}");
    }

    #[test]
    fn each_session_gets_the_lowest_free_id_and_a_full_range_says_so() {
        let r = IdRange::parse("300000:3").unwrap();
        let mut taken = BTreeSet::new();
        for want in [300000, 300001, 300002] {
            let id = r.pick(&taken).unwrap();
            assert_eq!(id, want);
            taken.insert(id);
        }
        assert!(matches!(r.pick(&taken), Err(IdError::Exhausted { .. })));
        taken.remove(&300001);
        assert_eq!(r.pick(&taken).unwrap(), 300001);
    }
}
