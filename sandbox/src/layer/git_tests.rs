//! Host tests of the git export against a real `git` in a scratch repo.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use super::*;
use crate::layer::view::Content;

struct Objects(HashMap<String, Vec<u8>>);

impl Source for Objects {
    fn open(&self, content: &Content, path: &str) -> Result<Box<dyn Read>, LayerError> {
        match content {
            Content::Object(h) => Ok(Box::new(std::io::Cursor::new(self.0[h].clone()))),
            Content::Lower => Err(LayerError::Invalid {
                path: path.into(),
                reason: "no lower in this test".into(),
            }),
        }
    }
}

fn sh_git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@invalid"])
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn repo() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    sh_git(d.path(), &["init", "-q", "-b", "main"]);
    std::fs::write(d.path().join("a.txt"), "a\n").unwrap();
    std::fs::create_dir(d.path().join("old")).unwrap();
    std::fs::write(d.path().join("old/x"), "x\n").unwrap();
    sh_git(d.path(), &["add", "-A"]);
    sh_git(d.path(), &["commit", "-q", "-m", "base"]);
    d
}

fn file(h: &str, mode: u32) -> State {
    State::File {
        mode,
        size: 1,
        content: Content::Object(h.into()),
        link: None,
    }
}

fn ch(path: &str, old: State, new: State) -> Change {
    Change {
        path: path.into(),
        old,
        new,
    }
}

fn steps() -> (Vec<Step>, Objects) {
    let objs = Objects(HashMap::from([
        ("h1".to_string(), b"a, edited\n".to_vec()),
        ("h2".to_string(), b"#!/bin/sh\necho hi\n".to_vec()),
    ]));
    let s1 = Step {
        message: "sed -i s/a/b/ a.txt".into(),
        time: 1_700_000_000,
        changes: vec![
            ch("a.txt", file("lower", 0o644), file("h1", 0o644)),
            ch("new", State::Absent, State::Dir { mode: 0o755 }),
            ch("new/run.sh", State::Absent, file("h2", 0o755)),
        ],
    };
    let quiet = Step {
        message: "ls".into(),
        time: 1_700_000_001,
        changes: vec![],
    };
    let s2 = Step {
        message: "rm -r old && ln -s a.txt link".into(),
        time: 1_700_000_002,
        changes: vec![
            ch("old", State::Dir { mode: 0o755 }, State::Absent),
            ch("old/x", file("lower", 0o644), State::Absent),
            ch(
                "link",
                State::Absent,
                State::Symlink {
                    target: "a.txt".into(),
                },
            ),
            ch("fifo", State::Absent, State::Special { mode: 0o644 }),
        ],
    };
    (vec![s1, quiet, s2], objs)
}

#[test]
fn the_history_becomes_commits_on_a_new_branch_and_nothing_else_changes() {
    let d = repo();
    let g = Git {
        dir: d.path().to_path_buf(),
        owner: None,
    };
    let head_before = sh_git(d.path(), &["rev-parse", "HEAD"]);
    let (steps, objs) = steps();
    let e = export(
        &g,
        "agent/work",
        None,
        &steps,
        "agentd <agentd@localhost>",
        &objs,
    )
    .unwrap();
    assert_eq!(e.commits, 2, "the quiet step makes no commit");
    assert_eq!(e.skipped, 1, "the fifo");
    assert_eq!(e.base.as_deref(), Some(head_before.trim()));
    // The branch: two commits on the base, messages the calls', trees as the steps left them.
    let log = sh_git(d.path(), &["log", "--format=%s", "main..agent/work"]);
    assert_eq!(log, "rm -r old && ln -s a.txt link\nsed -i s/a/b/ a.txt\n");
    assert_eq!(
        sh_git(d.path(), &["show", "agent/work:a.txt"]),
        "a, edited\n"
    );
    let tree = sh_git(d.path(), &["ls-tree", "-r", "agent/work"]);
    assert!(
        tree.contains("100755 blob") && tree.contains("new/run.sh"),
        "{tree}"
    );
    assert!(
        tree.contains("120000 blob") && tree.contains("\tlink"),
        "{tree}"
    );
    assert!(!tree.contains("old/x"), "{tree}");
    assert_eq!(sh_git(d.path(), &["show", "agent/work~1:old/x"]), "x\n");
    // HEAD, the current branch, the index and the working tree are as they were.
    assert_eq!(sh_git(d.path(), &["rev-parse", "HEAD"]), head_before);
    assert_eq!(
        sh_git(d.path(), &["symbolic-ref", "HEAD"]).trim(),
        "refs/heads/main"
    );
    assert_eq!(sh_git(d.path(), &["status", "--porcelain"]), "");
    assert_eq!(
        std::fs::read_to_string(d.path().join("a.txt")).unwrap(),
        "a\n"
    );
    // No private ref left behind.
    assert_eq!(
        sh_git(d.path(), &["for-each-ref", "--format=%(refname)"]),
        "refs/heads/agent/work\nrefs/heads/main\n"
    );
    // A second export to the same name is refused, the branch kept.
    let again = export(
        &g,
        "agent/work",
        None,
        &steps,
        "agentd <agentd@localhost>",
        &objs,
    );
    assert!(
        matches!(again, Err(GitError::BranchExists { .. })),
        "{again:?}"
    );
    assert_eq!(
        sh_git(d.path(), &["rev-parse", "agent/work"]).trim(),
        e.head
    );
}

#[test]
fn bad_names_a_non_repo_and_an_empty_history_are_refused() {
    let d = repo();
    let g = Git {
        dir: d.path().to_path_buf(),
        owner: None,
    };
    let (steps, objs) = steps();
    for bad in ["", "-x", "a..b", "a b", "x.lock", "HEAD", "a~1", "refs:x"] {
        let r = export(&g, bad, None, &steps, "a <a@b>", &objs);
        assert!(
            matches!(r, Err(GitError::BadBranch { .. })),
            "{bad:?}: {r:?}"
        );
    }
    let r = export(&g, "main", None, &steps, "a <a@b>", &objs);
    assert!(matches!(r, Err(GitError::BranchExists { .. })), "{r:?}");
    let empty = [Step {
        message: "ls".into(),
        time: 1,
        changes: vec![],
    }];
    let r = export(&g, "nothing", None, &empty, "a <a@b>", &objs);
    assert!(matches!(r, Err(GitError::NothingToExport { .. })), "{r:?}");
    let plain = tempfile::tempdir().unwrap();
    let g = Git {
        dir: plain.path().to_path_buf(),
        owner: None,
    };
    let r = export(&g, "x", None, &steps, "a <a@b>", &objs);
    assert!(matches!(r, Err(GitError::NotARepo { .. })), "{r:?}");
}

#[test]
fn a_workspace_in_a_subdirectory_and_an_unborn_repo() {
    let d = tempfile::tempdir().unwrap();
    sh_git(d.path(), &["init", "-q", "-b", "main"]);
    std::fs::create_dir(d.path().join("sub")).unwrap();
    let g = Git {
        dir: d.path().join("sub"),
        owner: None,
    };
    let objs = Objects(HashMap::from([("h".to_string(), b"q \"x\"\n".to_vec())]));
    let steps = [Step {
        message: "touch".into(),
        time: 5,
        changes: vec![ch("we\"ird name", State::Absent, file("h", 0o600))],
    }];
    let e = export(&g, "w", None, &steps, "a <a@b>", &objs).unwrap();
    assert_eq!(e.base, None);
    assert_eq!(
        sh_git(d.path(), &["show", "w:sub/we\"ird name"]),
        "q \"x\"\n"
    );
    assert_eq!(
        argv_subject(&["sh".into(), "-c".into(), "echo 'hi' > a".into()]),
        r"sh -c 'echo '\''hi'\'' > a'"
    );
}
