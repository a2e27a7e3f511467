//! `agentctl commit SESSION --git-branch NAME` (issue 11, docs/undo.md), black-box in the
//! test VM: the session's history becomes one commit per tool call that changed something
//! on a new branch of the workspace's git repo, its subject the call's argv, on the commit
//! HEAD was at when the session started; the working tree, index, HEAD and current branch
//! are untouched, the objects and the ref are the repo owner's; an invalid name (400) and a
//! branch that exists (409) are refused. A workspace that is no git repo is refused in
//! undo_daemon.rs and api.rs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

mod daemon_common;
use daemon_common::*;

/// git in `repo` as the repo's owner (as root git would refuse a repo owned by another).
fn git(repo: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["-c", "user.name=owner", "-c", "user.email=owner@invalid"])
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("HOME", "/nonexistent")
        .uid(USER)
        .gid(USER)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn sh(d: &Daemon, id: &str, script: &str) -> Value {
    let c = d.json(&["exec", id, "--", "sh", "-c", script]);
    assert_eq!(c["exit_code"], 0, "{c}");
    c
}

fn fails_with(d: &Daemon, args: &[&str], needle: &str) {
    let out = d.run(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(needle), "{args:?}: {err}");
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn undo_git_branch_export_makes_one_commit_per_call_and_leaves_the_checkout_alone() {
    let _vm = agentd_tests::vm::enter();
    let d = Daemon::start();
    git(&d.repo, &["init", "-q", "-b", "main"]);
    git(&d.repo, &["add", "-A"]);
    git(&d.repo, &["commit", "-q", "-m", "base"]);
    let head = git(&d.repo, &["rev-parse", "HEAD"]).trim().to_string();
    let id = d.session();
    sh(&d, &id, "echo one > a.txt; mkdir -p sub; echo x > sub/f");
    sh(&d, &id, "ls > /dev/null");
    sh(
        &d,
        &id,
        "echo two >> a.txt; rm README; ln -s a.txt link; chmod +x sub/f",
    );
    // A host commit after the session started: the branch still starts at the base.
    fs::write(d.repo.join("host.txt"), "host's\n").unwrap();
    chown_r(&d.repo.join("host.txt"), USER);
    git(&d.repo, &["add", "host.txt"]);
    git(&d.repo, &["commit", "-q", "-m", "host"]);
    let host_head = git(&d.repo, &["rev-parse", "HEAD"]);

    fails_with(
        &d,
        &["commit", &id, "--git-branch", "bad..name"],
        "invalid branch name",
    );
    fails_with(
        &d,
        &["commit", &id, "--git-branch", "main"],
        "already exists",
    );

    let c = d.json(&["commit", &id, "--git-branch", "agent/work"]);
    assert_eq!(c["git"]["commits"], 2, "{c}");
    assert_eq!(c["git"]["base"], head.as_str(), "{c}");
    assert_eq!(c["paths"], serde_json::json!([]), "{c}");
    let log = git(
        &d.repo,
        &["log", "--format=%s", &format!("{head}..agent/work")],
    );
    let subjects: Vec<&str> = log.lines().collect();
    assert_eq!(subjects.len(), 2, "{log}");
    assert!(
        subjects[1].starts_with("sh -c ") && subjects[1].contains("echo one > a.txt"),
        "{log}"
    );
    assert!(subjects[0].contains("rm README"), "{log}");
    assert_eq!(git(&d.repo, &["show", "agent/work:a.txt"]), "one\ntwo\n");
    assert_eq!(git(&d.repo, &["show", "agent/work~1:a.txt"]), "one\n");
    let tree = git(&d.repo, &["ls-tree", "-r", "agent/work"]);
    assert!(
        tree.contains("120000 blob") && tree.contains("\tlink"),
        "{tree}"
    );
    assert!(
        tree.contains("100755 blob") && tree.contains("\tsub/f"),
        "{tree}"
    );
    assert!(
        !tree.contains("README") && !tree.contains("host.txt"),
        "{tree}"
    );
    assert_eq!(
        git(&d.repo, &["rev-parse", "agent/work~2"]).trim(),
        head,
        "based on the session's base"
    );

    // Nothing of the checkout moved: HEAD, the current branch, index, working tree.
    assert_eq!(git(&d.repo, &["rev-parse", "HEAD"]), host_head);
    assert_eq!(
        git(&d.repo, &["symbolic-ref", "HEAD"]).trim(),
        "refs/heads/main"
    );
    assert_eq!(git(&d.repo, &["status", "--porcelain"]), "");
    assert!(!d.repo.join("a.txt").exists());
    assert_eq!(
        fs::read_to_string(d.repo.join("README")).unwrap(),
        "sample repo\n"
    );
    // The ref and the objects are the owner's, no private ref left.
    let r = d.repo.join(".git/refs/heads/agent/work");
    assert_eq!(fs::metadata(&r).unwrap().uid(), USER);
    for e in fs::read_dir(d.repo.join(".git/objects/pack")).unwrap() {
        assert_eq!(fs::metadata(e.unwrap().path()).unwrap().uid(), USER);
    }
    assert_eq!(
        git(&d.repo, &["for-each-ref", "--format=%(refname)"]),
        "refs/heads/agent/work\nrefs/heads/main\n"
    );
    // Again to the same name: 409, the branch kept.
    fails_with(
        &d,
        &["commit", &id, "--git-branch", "agent/work"],
        "already exists",
    );
    // The export wrote no repo file: the session's changes are still uncommitted.
    fails_with(&d, &["rm", &id], "uncommitted change");
}
