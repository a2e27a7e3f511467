//! Commit of a session's changes to the real repo: conflict detection against the session's
//! base, then an intent journal and idempotent operations, so a crash at any point is
//! finished by [`recover`].
//!
//! **Bases.** When a path first appears in a checkpoint, the repo's state of that path is
//! recorded ([`record_bases`]; for a whiteout, an opaque dir or a non-dir over a repo dir,
//! the repo's whole subtree below it). A commit refuses a path whose repo state differs from its base (the host changed it)
//! unless the repo already holds the session's version, and a repo path with no base under a
//! deleted dir (the host created it after the session saw the dir): both are listed as
//! conflicts and nothing is written. Paths the session never wrote are never in the plan.
//!
//! **Crash safety.** The plan (every path's pre- and post-state, contents as store objects)
//! is written durably as `intent.json` before the first change; then removals run deepest
//! first (only entries of the plan, one at a time, never a recursive delete), then
//! creations top-down, each file written to a temp name, fsynced and renamed over its path
//! (atomic per file). Every step is idempotent, so after kill -9 a restarted daemon runs
//! the same plan again ([`recover`]) and the repo ends at the post-commit tree; a crash
//! before the intent is durable leaves the repo untouched (pre-commit tree).

use std::collections::BTreeMap;
use std::path::Path;

use rustix::fs::FileType;
use serde::{Deserialize, Serialize};

use super::apply::{Root, Source, StoreSource, restore};
use super::store::{Store, hash_reader, write_durably};
use super::view::{Change, Content, State, changes, lower_state, same};
use super::{Entry, LayerError, Manifest, join};

/// The repo's state of each path when the session first wrote it (contents as hashes).
pub type Bases = BTreeMap<String, State>;

fn hashed(repo: &Root, p: &str, s: State) -> Result<State, LayerError> {
    Ok(match s {
        State::File {
            mode,
            size,
            content: Content::Lower,
            link,
        } => {
            let mut f = repo.open_read(p)?;
            let (h, _) = hash_reader(&mut f, &repo.path().join(p))?;
            State::File {
                mode,
                size,
                content: Content::Object(h),
                link,
            }
        }
        s => s,
    })
}

fn record_subtree(bases: &mut Bases, repo: &Root, p: &str) -> Result<(), LayerError> {
    for n in repo.list(p)? {
        let c = join(p, &n);
        if !bases.contains_key(&c) {
            let s = lower_state(repo, &c)?;
            let is_dir = matches!(s, State::Dir { .. });
            bases.insert(c.clone(), hashed(repo, &c, s)?);
            if is_dir {
                record_subtree(bases, repo, &c)?;
            }
        }
    }
    Ok(())
}

/// Records the repo's state of every path of `m` not seen before (and, below a whiteout or
/// an opaque dir, of the repo's subtree there).
pub fn record_bases(bases: &mut Bases, m: &Manifest, repo: &Root) -> Result<(), LayerError> {
    for (p, e) in &m.entries {
        if !bases.contains_key(p) {
            let s = lower_state(repo, p)?;
            bases.insert(p.clone(), hashed(repo, p, s)?);
        }
        // Everything but a merging dir hides the repo's subtree there.
        let hides = !matches!(e, Entry::Dir { opaque: false, .. });
        if hides
            && repo
                .lstat(p)?
                .is_some_and(|n| n.kind == FileType::Directory)
        {
            record_subtree(bases, repo, p)?;
        }
    }
    Ok(())
}

/// A path the commit refuses to write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    pub path: String,
    pub reason: String,
}

/// What a commit would do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// `old` = the repo now, `new` = the session's version; parents first.
    pub ops: Vec<Change>,
    pub conflicts: Vec<Conflict>,
}

fn selected(p: &str, paths: &[String]) -> bool {
    paths.is_empty()
        || paths.iter().any(|s| {
            let s = s.trim_matches('/');
            p == s || p.starts_with(&format!("{s}/")) || s.starts_with(&format!("{p}/"))
        })
}

/// Plans the commit of `head` (the session's latest manifest) to `repo`, limited to
/// `paths` (and what they need) when not empty.
pub fn plan(
    head: &Manifest,
    bases: &Bases,
    repo: &Root,
    paths: &[String],
) -> Result<Plan, LayerError> {
    let mut out = Plan::default();
    for c in changes(&Manifest::default(), head, Some(repo))? {
        if !selected(&c.path, paths) {
            continue;
        }
        // An ancestor of a selected path only when it is a directory to create.
        let is_ancestor = !paths.is_empty()
            && !paths.iter().any(|s| {
                let s = s.trim_matches('/');
                c.path == s || c.path.starts_with(&format!("{s}/"))
            });
        if is_ancestor && !matches!(c.new, State::Dir { .. }) {
            continue;
        }
        match bases.get(&c.path) {
            Some(base)
                if !same(base, &c.old, &c.path, Some(repo))?
                    && !same(&c.old, &c.new, &c.path, Some(repo))? =>
            {
                out.conflicts.push(Conflict {
                    path: c.path.clone(),
                    reason: format!(
                        "changed on the host since the session started (was {}, now {})",
                        base.kind(),
                        c.old.kind()
                    ),
                });
                continue;
            }
            Some(_) => {}
            None if !matches!(c.old, State::Absent) => {
                out.conflicts.push(Conflict {
                    path: c.path.clone(),
                    reason: "created on the host after the session started; never touched".into(),
                });
                continue;
            }
            None => {}
        }
        out.ops.push(c);
    }
    // A conflicting path blocks the removal of its ancestors.
    let blocked: Vec<String> = out.conflicts.iter().map(|c| c.path.clone()).collect();
    out.ops.retain(|c| {
        !(matches!(c.new, State::Absent) || c.old.kind() != c.new.kind())
            || !blocked
                .iter()
                .any(|b| b.starts_with(&format!("{}/", c.path)))
    });
    Ok(out)
}

/// The intent journal of a commit in progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Intent {
    pub ops: Vec<Change>,
    /// The processes that ran (or run) the plan: a process killed while writing a file
    /// left it under a temp name with its pid ([`super::apply::tmp_prefix`]), which the
    /// next run removes ([`sweep_temps`]).
    #[serde(default)]
    pub writers: Vec<u32>,
}

/// Hook between the steps of a commit (a test's crash point); an error stops the commit.
pub type Tick<'a> = &'a mut dyn FnMut() -> Result<(), LayerError>;

fn removes(c: &Change) -> bool {
    match (&c.old, &c.new) {
        (State::Absent, _) => false,
        (_, State::Absent) => true,
        // A file (or symlink, fifo) becoming a file is replaced atomically by rename.
        (State::Dir { .. }, _) => !matches!(c.new, State::Dir { .. }),
        (_, State::File { .. }) => false,
        (a, b) => a.kind() != b.kind(),
    }
}

/// Performs `ops` (an intent's) on `repo`, contents from `src`; idempotent.
pub fn run(ops: &[Change], repo: &Root, src: &dyn Source, tick: Tick) -> Result<(), LayerError> {
    for c in ops.iter().rev().filter(|c| removes(c)) {
        tick()?;
        // Already done (a re-run after a crash): the path has its new kind.
        let now = repo.lstat(&c.path)?;
        let done = match (&c.new, now) {
            (_, None) => true,
            (State::Dir { .. }, Some(n)) => n.kind == FileType::Directory,
            (State::Symlink { .. }, Some(n)) => n.kind == FileType::Symlink,
            (State::Special { .. }, Some(n)) => n.kind == FileType::Fifo,
            _ => false,
        };
        if !done {
            repo.remove_one(&c.path)?;
        }
    }
    for c in ops.iter().filter(|c| !matches!(c.new, State::Absent)) {
        tick()?;
        restore(repo, std::slice::from_ref(c), src, true)?;
    }
    Ok(())
}

/// Writes the intent of `plan` (which must have no conflicts) durably to `intent`.
pub fn write_intent(plan: &Plan, intent: &Path) -> Result<(), LayerError> {
    if let Some(c) = plan.conflicts.first() {
        return Err(LayerError::Invalid {
            path: c.path.clone(),
            reason: format!("conflict: {}", c.reason),
        });
    }
    let json = serde_json::to_vec(&Intent {
        ops: plan.ops.clone(),
        writers: vec![std::process::id()],
    })
    .map_err(|e| LayerError::Json(e.to_string()))?;
    write_durably(intent, &json)
}

/// Takes over an unfinished commit's intent (None without one): this process is added
/// to its writers, durably, before it writes anything, so a crash of this run too is
/// cleaned up by the next.
pub fn resume_intent(intent: &Path) -> Result<Option<Intent>, LayerError> {
    let Some(mut i) = read_intent(intent)? else {
        return Ok(None);
    };
    let me = std::process::id();
    if !i.writers.contains(&me) {
        i.writers.push(me);
        let json = serde_json::to_vec(&i).map_err(|e| LayerError::Json(e.to_string()))?;
        write_durably(intent, &json)?;
    }
    Ok(Some(i))
}

/// Removes the temp files an interrupted run of `i` left beside the plan's paths (only
/// names with a writer's temp prefix, in the plan's own directories: nothing else of the
/// repo is touched). Returns how many.
pub fn sweep_temps(repo: &Root, i: &Intent) -> Result<usize, LayerError> {
    let prefixes: Vec<String> = i
        .writers
        .iter()
        .map(|p| super::apply::tmp_prefix(*p))
        .collect();
    let mut dirs: Vec<&str> = i
        .ops
        .iter()
        .map(|c| c.path.rsplit_once('/').map_or("", |(d, _)| d))
        .collect();
    dirs.sort_unstable();
    dirs.dedup();
    let mut n = 0;
    for d in dirs {
        let is_dir =
            d.is_empty() || matches!(repo.lstat(d)?, Some(s) if s.kind == FileType::Directory);
        if !is_dir {
            continue;
        }
        for name in repo.list(d)? {
            if prefixes.iter().any(|p| name.starts_with(p.as_str())) {
                repo.remove_one(&join(d, &name))?;
                n += 1;
            }
        }
    }
    Ok(n)
}

/// The intent of an unfinished commit, if any.
pub fn read_intent(intent: &Path) -> Result<Option<Intent>, LayerError> {
    match std::fs::read(intent) {
        Ok(d) => serde_json::from_slice(&d)
            .map(Some)
            .map_err(|e| LayerError::Json(format!("{}: {e}", intent.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LayerError::io("read", intent, e)),
    }
}

/// Applies `plan` (with no conflicts) to `repo` under the intent journal at `intent`.
pub fn apply(
    plan: &Plan,
    repo: &Root,
    store: &Store,
    intent: &Path,
    tick: Tick,
) -> Result<(), LayerError> {
    tick()?;
    write_intent(plan, intent)?;
    let src = StoreSource {
        store,
        lower: Some(repo),
    };
    run(&plan.ops, repo, &src, tick)?;
    std::fs::remove_file(intent).map_err(|e| LayerError::io("remove", intent, e))
}

/// Finishes a commit a crash interrupted (a no-op without an intent); returns whether
/// there was one.
pub fn recover(repo: &Root, store: &Store, intent: &Path) -> Result<bool, LayerError> {
    let Some(i) = resume_intent(intent)? else {
        return Ok(false);
    };
    sweep_temps(repo, &i)?;
    let src = StoreSource {
        store,
        lower: Some(repo),
    };
    run(&i.ops, repo, &src, &mut || Ok(()))?;
    std::fs::remove_file(intent).map_err(|e| LayerError::io("remove", intent, e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
    use super::*;
    use crate::layer::walk::walk;
    use std::fs;

    /// A repo, a layer changing `src/a` and deleting `old/` (as the overlay records it),
    /// its bases recorded at the session's first checkpoint.
    fn setup() -> (tempfile::TempDir, Root, Store, Manifest, Bases) {
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("repo");
        fs::create_dir_all(repo.join("src")).unwrap();
        fs::create_dir_all(repo.join("old")).unwrap();
        fs::write(repo.join("src/a"), b"a0").unwrap();
        fs::write(repo.join("src/b"), b"b0").unwrap();
        fs::write(repo.join("old/x"), b"x").unwrap();
        let up = t.path().join("upper");
        fs::create_dir_all(up.join("src")).unwrap();
        fs::write(up.join("src/a"), b"a1").unwrap();
        fs::write(up.join("new"), b"n").unwrap();
        let store = Store::open(&t.path().join("store")).unwrap();
        let mut head = walk(&up, &store, None).unwrap();
        head.entries.insert("old".into(), Entry::Whiteout);
        let root = Root::open(&repo).unwrap();
        let mut bases = Bases::new();
        record_bases(&mut bases, &head, &root).unwrap();
        (t, root, store, head, bases)
    }

    #[test]
    fn a_clean_commit_applies_exactly_the_sessions_changes() {
        let (t, root, store, head, bases) = setup();
        // A host change to a file the session never wrote is not the session's business.
        fs::write(root.path().join("src/b"), b"b-host").unwrap();
        let plan = plan(&head, &bases, &root, &[]).unwrap();
        assert!(plan.conflicts.is_empty(), "{:?}", plan.conflicts);
        let paths: Vec<_> = plan.ops.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["new", "old", "old/x", "src/a"]);
        apply(
            &plan,
            &root,
            &store,
            &t.path().join("intent.json"),
            &mut || Ok(()),
        )
        .unwrap();
        let r = root.path();
        assert_eq!(fs::read(r.join("src/a")).unwrap(), b"a1");
        assert_eq!(fs::read(r.join("src/b")).unwrap(), b"b-host");
        assert_eq!(fs::read(r.join("new")).unwrap(), b"n");
        assert!(!r.join("old").exists());
        assert!(!t.path().join("intent.json").exists());
    }

    #[test]
    fn host_changes_and_host_creations_are_conflicts_and_left_alone() {
        let (t, root, store, head, bases) = setup();
        let r = root.path().to_path_buf();
        fs::write(r.join("src/a"), b"a-host").unwrap();
        fs::write(r.join("old/created-later"), b"mine").unwrap();
        fs::write(r.join("new"), b"host's new").unwrap();
        let plan = plan(&head, &bases, &root, &[]).unwrap();
        let conflicts: Vec<_> = plan.conflicts.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(conflicts, ["new", "old/created-later", "src/a"]);
        assert!(plan.conflicts[1].reason.contains("created on the host"));
        // `old` itself cannot go while a host file is in it; `old/x` still can.
        let ops: Vec<_> = plan.ops.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(ops, ["old/x"]);
        assert!(apply(&plan, &root, &store, &t.path().join("i"), &mut || Ok(())).is_err());
        assert_eq!(fs::read(r.join("src/a")).unwrap(), b"a-host");
        assert_eq!(fs::read(r.join("old/created-later")).unwrap(), b"mine");
        assert!(
            r.join("old/x").exists(),
            "nothing written while conflicts remain"
        );
    }

    /// A daemon killed while writing a file of the commit left it under its temp name (the
    /// VM's kill -9 test found it): the recovery removes it, and only it.
    #[test]
    fn a_recovery_removes_the_temp_files_of_the_interrupted_run_only() {
        let (t, root, store, head, bases) = setup();
        let r = root.path().to_path_buf();
        let plan = plan(&head, &bases, &root, &[]).unwrap();
        let intent = t.path().join("intent.json");
        write_intent(&plan, &intent).unwrap();
        let mine = format!("{}3-a", super::super::apply::tmp_prefix(std::process::id()));
        fs::write(r.join("src").join(&mine), b"half").unwrap();
        fs::write(r.join("src/.agentd-tmp-1-0-a"), b"not a writer's").unwrap();
        assert!(recover(&root, &store, &intent).unwrap());
        assert!(
            !r.join("src").join(&mine).exists(),
            "the torn temp file stayed"
        );
        assert!(r.join("src/.agentd-tmp-1-0-a").exists());
        assert_eq!(fs::read(r.join("src/a")).unwrap(), b"a1");
        assert!(!intent.exists());
    }

    #[test]
    fn paths_limit_the_commit_to_what_was_asked() {
        let (t, root, store, head, bases) = setup();
        let plan = plan(&head, &bases, &root, &["src".into()]).unwrap();
        let ops: Vec<_> = plan.ops.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(ops, ["src/a"]);
        apply(&plan, &root, &store, &t.path().join("i"), &mut || Ok(())).unwrap();
        assert!(root.path().join("old/x").exists() && !root.path().join("new").exists());
    }
}
