//! Host property test of checkpoint → undo on a plain directory (no overlay: the directory
//! is both the layer and the view, the lower dir empty). The VM test
//! (`tests/tests/undo.rs`) runs the same kind of sequences through a real overlay.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use proptest::prelude::*;

use super::apply::{Root, StoreSource, restore};
use super::store::Store;
use super::view::changes;
use super::walk::walk;
use super::{Manifest, commit};

const PATHS: &[&str] = &[
    "a",
    "b",
    "d",
    "d/a",
    "d/b",
    "d/e",
    "d/e/a",
    "target",
    "target/o",
    ".gitignore",
];
const MODES: &[u32] = &[0o644, 0o600, 0o755, 0o444];
const DIR_MODES: &[u32] = &[0o755, 0o700, 0o750];

#[derive(Debug, Clone)]
pub(crate) enum Op {
    Write(usize, u8, usize),
    Delete(usize),
    Rename(usize, usize),
    Symlink(usize, usize),
    Chmod(usize, usize),
    Mkdir(usize, usize),
    Rmdir(usize),
    Hardlink(usize, usize),
    Checkpoint,
}

fn op() -> impl Strategy<Value = Op> {
    let p = 0..PATHS.len();
    prop_oneof![
        3 => (p.clone(), any::<u8>(), 0usize..3).prop_map(|(a, c, n)| Op::Write(a, c, n)),
        1 => p.clone().prop_map(Op::Delete),
        1 => (p.clone(), p.clone()).prop_map(|(a, b)| Op::Rename(a, b)),
        1 => (p.clone(), p.clone()).prop_map(|(a, b)| Op::Symlink(a, b)),
        1 => (p.clone(), 0..MODES.len()).prop_map(|(a, m)| Op::Chmod(a, m)),
        2 => (p.clone(), 0..DIR_MODES.len()).prop_map(|(a, m)| Op::Mkdir(a, m)),
        1 => p.clone().prop_map(Op::Rmdir),
        1 => (p.clone(), p).prop_map(|(a, b)| Op::Hardlink(a, b)),
        2 => Just(Op::Checkpoint),
    ]
}

/// Performs one operation as an agent would (errors, e.g. a missing parent, are part of
/// the game: the tree simply stays as it is).
pub(crate) fn perform(ws: &Path, op: &Op) {
    let p = |i: usize| ws.join(PATHS[i]);
    match *op {
        Op::Write(a, c, n) => {
            let body: Vec<u8> = match n {
                0 => vec![],
                1 => format!("line {c}\nsame\n").into_bytes(),
                _ => vec![c; 5000],
            };
            let _ = fs::write(p(a), body);
        }
        Op::Delete(a) => {
            if fs::symlink_metadata(p(a)).is_ok_and(|m| m.is_dir()) {
                let _ = fs::remove_dir_all(p(a));
            } else {
                let _ = fs::remove_file(p(a));
            }
        }
        Op::Rename(a, b) => {
            let _ = fs::rename(p(a), p(b));
        }
        Op::Symlink(a, b) => {
            let _ = std::os::unix::fs::symlink(PATHS[b], p(a));
        }
        Op::Chmod(a, m) => {
            if fs::symlink_metadata(p(a)).is_ok_and(|m| m.is_file()) {
                let _ = fs::set_permissions(p(a), fs::Permissions::from_mode(MODES[m]));
            }
        }
        Op::Mkdir(a, m) => {
            if fs::create_dir(p(a)).is_ok() {
                let _ = fs::set_permissions(p(a), fs::Permissions::from_mode(DIR_MODES[m]));
            }
        }
        Op::Rmdir(a) => {
            let _ = fs::remove_dir(p(a));
        }
        Op::Hardlink(a, b) => {
            if fs::symlink_metadata(p(a)).is_ok_and(|m| m.is_file()) {
                let _ = fs::hard_link(p(a), p(b));
            }
        }
        Op::Checkpoint => {}
    }
}

/// The tree as compared: kind, permission bits, content or symlink target, per path.
pub(crate) type Snap = BTreeMap<String, (char, u32, Vec<u8>)>;

pub(crate) fn snapshot(root: &Path) -> Snap {
    fn rec(root: &Path, rel: &str, out: &mut BTreeMap<String, (char, u32, Vec<u8>)>) {
        let dir = root.join(rel);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        for n in names {
            let r = super::join(rel, &n);
            let p = root.join(&r);
            let md = fs::symlink_metadata(&p).unwrap();
            let mode = md.mode() & 0o7777;
            if md.is_dir() {
                out.insert(r.clone(), ('d', mode, vec![]));
                rec(root, &r, out);
            } else if md.file_type().is_symlink() {
                let t = fs::read_link(&p).unwrap();
                out.insert(r, ('l', 0, t.into_os_string().into_encoded_bytes()));
            } else {
                out.insert(r, ('f', mode, fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    rec(root, "", &mut out);
    out
}

fn undo_to(ws: &Path, store: &Store, current: &Manifest, target: &Manifest) {
    let c = changes(current, target, None).unwrap();
    let root = Root::open(ws).unwrap();
    restore(&root, &c, &StoreSource { store, lower: None }, false).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    })]

    #[test]
    fn undo_to_any_checkpoint_gives_back_its_tree(
        ops in prop::collection::vec(op(), 1..40),
        pick in any::<prop::sample::Index>(),
        pick2 in any::<prop::sample::Index>(),
    ) {
        let t = tempfile::tempdir().unwrap();
        let ws = t.path().join("ws");
        fs::create_dir(&ws).unwrap();
        let store = Store::open(&t.path().join("store")).unwrap();
        let mut cps: Vec<(Manifest, Snap)> =
            vec![(Manifest::default(), snapshot(&ws))];
        for o in &ops {
            if matches!(o, Op::Checkpoint) {
                let prev = cps.last().map(|c| &c.0);
                let m = walk(&ws, &store, prev).unwrap();
                cps.push((m, snapshot(&ws)));
            } else {
                perform(&ws, o);
            }
        }
        let now = walk(&ws, &store, cps.last().map(|c| &c.0)).unwrap();
        let (target, want) = &cps[pick.index(cps.len())];
        undo_to(&ws, &store, &now, target);
        prop_assert_eq!(&snapshot(&ws), want);
        // The layer now walks to the same tree; undoing again (redo) works the same way.
        let after = walk(&ws, &store, Some(&now)).unwrap();
        let (target2, want2) = &cps[pick2.index(cps.len())];
        undo_to(&ws, &store, &after, target2);
        prop_assert_eq!(&snapshot(&ws), want2);
    }

    #[test]
    fn a_commit_interrupted_anywhere_and_recovered_gives_the_post_commit_tree(
        before in prop::collection::vec(op(), 0..15),
        session in prop::collection::vec(op(), 1..25),
        crash_at in 0usize..60,
    ) {
        // The "repo" starts as some tree; the session's layer is the repo's copy changed
        // by `session` (empty lower: the layer holds the whole tree, as after a copy-up
        // of everything), so the commit must make the repo equal the layer.
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("repo");
        let ws = t.path().join("ws");
        fs::create_dir(&repo).unwrap();
        fs::create_dir(&ws).unwrap();
        for o in &before { perform(&repo, o); perform(&ws, o); }
        for o in &session { perform(&ws, o); }
        let store = Store::open(&t.path().join("store")).unwrap();
        let head = walk(&ws, &store, None).unwrap();
        // Opaque root: the layer replaces the repo's tree entirely.
        let mut head_opaque = head.clone();
        let pre = snapshot(&repo);
        let root = Root::open(&repo).unwrap();
        // Mark every top-level dir opaque and add whiteouts for top-level repo names the
        // layer lacks, as the overlay would have recorded them.
        for n in root.list("").unwrap() {
            head_opaque.entries.entry(n).or_insert(super::Entry::Whiteout);
        }
        for e in head_opaque.entries.values_mut() {
            if let super::Entry::Dir { opaque, .. } = e { *opaque = true; }
        }
        let mut bases = commit::Bases::new();
        commit::record_bases(&mut bases, &head_opaque, &root).unwrap();
        let plan = commit::plan(&head_opaque, &bases, &root, &[]).unwrap();
        prop_assert!(plan.conflicts.is_empty(), "{:?}", plan.conflicts);
        let intent = t.path().join("intent.json");
        let mut n = 0;
        let r = commit::apply(&plan, &root, &store, &intent, &mut || {
            n += 1;
            if n > crash_at { Err(super::LayerError::Json("crash".into())) } else { Ok(()) }
        });
        if r.is_err() {
            // Before the intent is durable the repo is untouched.
            if intent.exists() {
                // A restarted daemon finishes it.
                prop_assert!(commit::recover(&root, &store, &intent).unwrap());
            } else {
                // Before the intent is durable the repo is untouched: the commit did not
                // happen and can simply be asked for again.
                prop_assert_eq!(&snapshot(&repo), &pre);
                commit::apply(&plan, &root, &store, &intent, &mut || Ok(())).unwrap();
            }
        }
        prop_assert!(!intent.exists());
        prop_assert_eq!(snapshot(&repo), snapshot(&ws));
    }
}
