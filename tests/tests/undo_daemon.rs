//! Undo through the daemon (issue 11), black-box with the real binaries in the test VM: a
//! checkpoint before every tool call, diff per call, undo through a running session's
//! merged view, commit to the repo with conflict detection, discard, `rm` refusing
//! uncommitted work, an ended session committed from its final checkpoint, bad input, and
//! no torn checkpoint while the agent writes continuously, and a running session frozen for
//! the whole of a commit.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::fs;
use std::time::{Duration, Instant};

use serde_json::Value;

mod daemon_common;
use daemon_common::*;

fn sh(d: &Daemon, id: &str, script: &str) -> Value {
    let c = d.json(&["exec", id, "--", "sh", "-c", script]);
    assert_eq!(c["exit_code"], 0, "{c}");
    c
}

fn inside(d: &Daemon, id: &str, script: &str) -> String {
    let c = d.json(&["exec", id, "--", "sh", "-c", script]);
    c["stdout"].as_str().unwrap().to_string()
}

fn fails_with(d: &Daemon, args: &[&str], needle: &str) {
    let out = d.run(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(needle), "{args:?}: {err}");
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn undo_daemon_checkpoints_diff_undo_commit_discard_through_a_live_session() {
    let _vm = agentd_tests::vm::enter();
    let d = Daemon::start();
    let id = d.session();
    sh(
        &d,
        &id,
        "echo one > a.txt; mkdir -p sub/empty; echo x > sub/f",
    );
    sh(
        &d,
        &id,
        "echo two >> a.txt; rm README; printf '\\0\\1' > bin",
    );
    sh(&d, &id, "true");
    // One checkpoint per call, taken before it (0 is the session's start).
    let cps = d.json(&["checkpoints", &id]);
    let calls: Vec<Value> = cps
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["call"].clone())
        .collect();
    assert_eq!(calls, [Value::Null, 1.into(), 2.into(), 3.into()], "{cps}");
    let c1 = d.json(&["diff", &id, "--call", "1"]);
    assert_eq!(
        diff_paths(&c1),
        [
            ("a.txt".into(), "added".into()),
            ("sub".into(), "added".into()),
            ("sub/empty".into(), "added".into()),
            ("sub/f".into(), "added".into())
        ],
        "{c1}"
    );
    let c2 = d.json(&["diff", &id, "--call", "2"]);
    assert_eq!(
        diff_paths(&c2),
        [
            ("README".into(), "deleted".into()),
            ("a.txt".into(), "modified".into()),
            ("bin".into(), "added".into())
        ],
        "{c2}"
    );
    assert!(
        c2["diff"].as_str().unwrap().contains(" one\n+two\n"),
        "{c2}"
    );
    assert!(c2["files"][2]["binary"].as_bool().unwrap(), "{c2}");
    let text = String::from_utf8(d.run(&["diff", &id]).stdout).unwrap();
    assert!(
        text.contains("+++ b/a.txt") && text.contains("Binary files"),
        "{text}"
    );
    // A host file created after the session started: never touched by anything below.
    fs::write(d.repo.join("host-new.txt"), "host's\n").unwrap();
    chown_r(&d.repo.join("host-new.txt"), USER);

    // Undo call 2 (back to the checkpoint taken before it), through the merged view.
    let u = d.json(&["undo", &id, "--to", "2"]);
    assert_eq!(u["to"], 2, "{u}");
    assert_eq!(
        inside(
            &d,
            &id,
            "cat a.txt; cat README; test -e bin || echo nobin; ls -ld sub/empty | cut -c1; stat -c %u a.txt"
        ),
        "one\nsample repo\nnobin\nd\n1000\n"
    );
    assert!(!d.repo.join("a.txt").exists(), "undo wrote the repo");
    // The undo itself is undoable: the checkpoint saved before it has call 2's work.
    let saved = u["saved"].as_u64().unwrap().to_string();
    let redo = d.json(&["diff", &id, "--from", "2", "--to", &saved, "--stat"]);
    assert_eq!(diff_paths(&redo).len(), 3, "{redo}");

    // Bad input: unknown call, checkpoint, session.
    fails_with(
        &d,
        &["diff", &id, "--call", "99"],
        "no checkpoint before call 99",
    );
    fails_with(&d, &["undo", &id, "--to", "999"], "has no checkpoint 999");
    fails_with(
        &d,
        &["checkpoints", "nosuchsession"],
        "no session nosuchsession",
    );
    // The test repo is no git repo (tests/tests/undo_git.rs exports to one).
    fails_with(
        &d,
        &["commit", &id, "--git-branch", "x"],
        "is not in a git repository",
    );

    // Commit: the repo gets exactly the session's changes.
    let c = d.json(&["commit", &id]);
    assert_eq!(
        c["paths"],
        serde_json::json!(["a.txt", "sub", "sub/empty", "sub/f"]),
        "{c}"
    );
    assert_eq!(fs::read_to_string(d.repo.join("a.txt")).unwrap(), "one\n");
    assert!(d.repo.join("sub/empty").is_dir());
    assert_eq!(
        fs::read_to_string(d.repo.join("README")).unwrap(),
        "sample repo\n"
    );
    assert_eq!(
        fs::read_to_string(d.repo.join("host-new.txt")).unwrap(),
        "host's\n"
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(d.repo.join("a.txt")).unwrap().uid(), USER);

    // A host change to a file the session also changed is a conflict; nothing is written.
    sh(&d, &id, "echo three > a.txt; echo y > sub/f");
    fs::write(d.repo.join("a.txt"), "host edit\n").unwrap();
    fails_with(&d, &["commit", &id], "a.txt: changed on the host");
    assert_eq!(
        fs::read_to_string(d.repo.join("a.txt")).unwrap(),
        "host edit\n"
    );
    assert_eq!(fs::read_to_string(d.repo.join("sub/f")).unwrap(), "x\n");
    // Uncommitted work: rm refuses without --force.
    fails_with(&d, &["rm", &id], "uncommitted change");
    // Only the paths asked for.
    let c = d.json(&["commit", &id, "--paths", "sub"]);
    assert_eq!(c["paths"], serde_json::json!(["sub/f"]), "{c}");
    assert_eq!(fs::read_to_string(d.repo.join("sub/f")).unwrap(), "y\n");
    // Discard: back to the start, i.e. the repo as it is now.
    d.json(&["discard", &id]);
    assert_eq!(inside(&d, &id, "cat a.txt"), "host edit\n");
    assert!(d.run(&["rm", &id]).status.success());
    assert_eq!(
        fs::read_to_string(d.repo.join("host-new.txt")).unwrap(),
        "host's\n"
    );
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn undo_daemon_an_ended_session_is_committed_from_its_final_checkpoint() {
    let _vm = agentd_tests::vm::enter();
    let d = Daemon::start();
    let repo = d.repo.to_str().unwrap();
    let out = d.run(&[
        "run",
        "--detach",
        "--workspace",
        repo,
        "--",
        "sh",
        "-c",
        "echo fin > done.txt; rm README",
    ]);
    assert!(out.status.success());
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let t = Instant::now();
    while d.json(&["inspect", &id])["state"] == "running"
        || d.json(&["inspect", &id])["state"] == "starting"
    {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "session never ended"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The layer's state dir is gone; its last state is the final checkpoint.
    assert!(!d.root.join("state/sessions").join(&id).exists());
    let cps = d.json(&["checkpoints", &id]);
    assert_eq!(
        cps.as_array().unwrap().last().unwrap()["reason"],
        "session end",
        "{cps}"
    );
    let diff = d.json(&["diff", &id, "--stat"]);
    assert_eq!(
        diff_paths(&diff),
        [
            ("README".into(), "deleted".into()),
            ("done.txt".into(), "added".into())
        ]
    );
    fails_with(&d, &["checkpoints", &id, "--take", "x"], "not running");
    d.json(&["commit", &id]);
    assert_eq!(
        fs::read_to_string(d.repo.join("done.txt")).unwrap(),
        "fin\n"
    );
    assert!(!d.repo.join("README").exists());
    assert!(d.run(&["rm", &id]).status.success());
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn undo_daemon_no_torn_checkpoint_while_the_agent_writes_continuously() {
    let _vm = agentd_tests::vm::enter();
    let runs: u32 = std::env::var("AGENTD_TORN_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let d = Daemon::start();
    let repo = d.repo.to_str().unwrap();
    // One 64 KiB write() at a time, alternating all-'a' and all-'b': any checkpoint whose
    // copy of f mixes the two was read in the middle of a write.
    let script = "head -c 65536 /dev/zero | tr '\\0' a > /tmp/A; head -c 65536 /dev/zero | tr '\\0' b > /tmp/B; \
                  cp /tmp/A f; while :; do dd if=/tmp/A of=f bs=65536 count=1 conv=notrunc status=none; \
                  dd if=/tmp/B of=f bs=65536 count=1 conv=notrunc status=none; done";
    let out = d.run(&[
        "run",
        "--detach",
        "--workspace",
        repo,
        "--",
        "sh",
        "-c",
        script,
    ]);
    assert!(out.status.success());
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let store = d.root.join("state/undo").join(&id);
    let (mut a, mut b) = (0, 0);
    for i in 0..runs {
        let cp = d.json(&["checkpoints", &id, "--take", &format!("torn {i}")]);
        let n = cp["id"].as_u64().unwrap();
        let rec: Value =
            serde_json::from_slice(&fs::read(store.join(format!("checkpoints/{n}.json"))).unwrap())
                .unwrap();
        let Some(h) = rec["manifest"]["entries"]["f"]["hash"].as_str() else {
            continue; // before the agent's first copy
        };
        let obj = fs::read(store.join("objects").join(&h[..2]).join(&h[2..])).unwrap();
        assert_eq!(obj.len(), 65536, "checkpoint {n}: size {}", obj.len());
        let first = obj[0];
        assert!(obj.iter().all(|c| *c == first), "checkpoint {n} is torn");
        if first == b'a' { a += 1 } else { b += 1 }
    }
    eprintln!("torn-checkpoint test: {runs} checkpoints, none torn ({a} all-a, {b} all-b)");
    assert!(a > 0 && b > 0, "the writer never alternated ({a} a, {b} b)");
    assert!(d.run(&["kill", &id]).status.success());
    assert!(d.run(&["rm", &id, "--force"]).status.success());
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn undo_daemon_a_running_session_stays_frozen_for_the_whole_commit() {
    let _vm = agentd_tests::vm::enter();
    let d = Daemon::start();
    let repo = d.repo.to_str().unwrap();
    // The agent rewrites 50 files in order with its round number, as fast as it can. A
    // commit that read the layer while the agent ran would mix rounds far apart; one of a
    // frozen session sees round k in a prefix of the files (k + 1 where the round had got
    // to) and k in the rest.
    let files = 50;
    let script = format!(
        "L=$(seq -w 0 {}); i=0; while :; do i=$((i+1)); for n in $L; do echo $i > f$n; done; done",
        files - 1
    );
    let out = d.run(&[
        "run",
        "--detach",
        "--workspace",
        repo,
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert!(out.status.success());
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let rounds = |dir: &std::path::Path| -> Option<Vec<u64>> {
        (0..files)
            .map(|n| {
                fs::read_to_string(dir.join(format!("f{n:02}")))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            })
            .collect()
    };
    let mut seen = Vec::new();
    let t = Instant::now();
    while seen.len() < 5 {
        assert!(t.elapsed() < Duration::from_secs(300), "commits: {seen:?}");
        d.json(&["commit", &id]);
        let Some(r) = rounds(&d.repo) else {
            continue; // before the agent's first whole round
        };
        let (lo, hi) = (*r.iter().min().unwrap(), *r.iter().max().unwrap());
        let split = r.iter().take_while(|v| **v == hi).count();
        assert!(
            hi - lo <= 1 && r[split..].iter().all(|v| *v == lo),
            "commit {} mixes rounds: {r:?}",
            seen.len()
        );
        seen.push(hi);
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("frozen-commit test: rounds committed {seen:?}");
    assert!(
        seen.windows(2).any(|w| w[0] != w[1]),
        "the agent never ran: {seen:?}"
    );
    assert!(d.run(&["kill", &id]).status.success());
    assert!(d.run(&["rm", &id, "--force"]).status.success());
}

type Tree = std::collections::BTreeMap<String, (char, u32, Vec<u8>)>;

/// Every entry below `root` (kind, mode, content or link target), for exact comparisons.
fn tree(root: &std::path::Path) -> Tree {
    use std::os::unix::fs::MetadataExt;
    fn rec(root: &std::path::Path, rel: &str, out: &mut Tree) {
        let mut names: Vec<String> = fs::read_dir(root.join(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        for n in names {
            let r = if rel.is_empty() {
                n
            } else {
                format!("{rel}/{n}")
            };
            let p = root.join(&r);
            let md = fs::symlink_metadata(&p).unwrap();
            let mode = md.mode() & 0o7777;
            if md.is_dir() {
                out.insert(r.clone(), ('d', mode, vec![]));
                rec(root, &r, out);
            } else if md.file_type().is_symlink() {
                let t = fs::read_link(&p)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes();
                out.insert(r, ('l', 0, t));
            } else {
                out.insert(r, ('f', mode, fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Tree::new();
    rec(root, "", &mut out);
    out
}

/// Puts the repo back to `pristine` (same directory inode: the session's workspace).
fn reset_repo(repo: &std::path::Path, pristine: &std::path::Path) {
    for e in fs::read_dir(repo).unwrap() {
        let p = e.unwrap().path();
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            fs::remove_dir_all(&p).unwrap();
        } else {
            fs::remove_file(&p).unwrap();
        }
    }
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", pristine.display()))
        .arg(repo)
        .status()
        .unwrap();
    assert!(st.success());
}

/// kill -9 of the daemon at random points of a commit (issue 11): after the restart the
/// repo is exactly the pre-commit or the post-commit tree (the restarted daemon finishes a
/// commit whose intent was durable, and nothing was written before that), and no intent is
/// left. `AGENTD_COMMIT_KILLS` sets the number of kills (default 200; the soak is 1,000).
#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn undo_daemon_kill_9_during_commit_leaves_the_pre_or_post_commit_tree() {
    let _vm = agentd_tests::vm::enter();
    let kills: u32 = std::env::var("AGENTD_COMMIT_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut d = Daemon::new();
    // A repo with files to modify, a directory to delete and a mode to change.
    fs::create_dir_all(d.repo.join("src")).unwrap();
    fs::create_dir_all(d.repo.join("old/deep")).unwrap();
    for i in 0..40 {
        fs::write(d.repo.join(format!("src/f{i}.txt")), format!("line {i}\n")).unwrap();
        fs::write(d.repo.join(format!("old/deep/o{i}")), format!("old {i}\n")).unwrap();
    }
    chown_r(&d.repo, USER);
    d.spawn();
    let id = d.session();
    sh(
        &d,
        &id,
        "mkdir -p gen/a gen/b gen/empty && \
         for i in $(seq 1 40); do head -c 8192 /dev/urandom > gen/a/f$i; done && \
         for i in $(seq 1 10); do echo n$i > gen/b/n$i; done && \
         for i in $(seq 0 2 39); do echo edit >> src/f$i.txt; done && \
         rm -r old && ln -s src/f0.txt link && chmod 600 src/f1.txt",
    );
    assert!(d.run(&["kill", &id]).status.success());
    let t = Instant::now();
    while !matches!(
        d.json(&["inspect", &id])["state"].as_str(),
        Some("killed" | "exited" | "failed")
    ) {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "session never ended"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let store = d.root.join("state/undo").join(&id);
    let intent = store.join("intent.json");
    let bases = store.join("bases.json");
    let bases_before = fs::read(&bases).unwrap();
    let pre = tree(&d.repo);
    let pristine = d.root.join("pristine");
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(&d.repo)
        .arg(&pristine)
        .status()
        .unwrap();
    assert!(st.success());
    // One uninterrupted commit: the post-commit tree and how long a commit takes.
    let t = Instant::now();
    d.json(&["commit", &id]);
    let took = t.elapsed();
    let post = tree(&d.repo);
    assert_ne!(pre, post);
    // A small xorshift, seeded from the clock (printed, so a failure can be replayed).
    let mut seed: u64 = std::env::var("AGENTD_COMMIT_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("commit-kill: seed {seed}, an uninterrupted commit takes {took:?}");
    let (mut at_pre, mut at_post, mut mid, mut between) = (0u32, 0u32, 0u32, 0u32);
    let started = Instant::now();
    for i in 0..kills {
        // The repo and the daemon's record of what was committed, as before the commit.
        reset_repo(&d.repo, &pristine);
        fs::write(&bases, &bases_before).unwrap();
        assert_eq!(tree(&d.repo), pre);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Anywhere from before the request arrives to just after the commit's end.
        let delay = took.mul_f64((seed % 1300) as f64 / 1000.0);
        let mut child = d
            .ctl(&["commit", &id])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        d.crash();
        let _ = child.wait();
        let had_intent = intent.exists();
        let at_kill = tree(&d.repo);
        d.spawn();
        let now = tree(&d.repo);
        if now != pre && now != post {
            let differ: Vec<&String> = now
                .keys()
                .chain(post.keys())
                .filter(|k| now.get(*k) != post.get(*k))
                .collect();
            panic!(
                "kill {i} after {delay:?} (intent {had_intent}): the repo is neither the pre- \
                 nor the post-commit tree after the restart; paths differing from the post \
                 tree: {differ:?}"
            );
        }
        assert!(
            !intent.exists(),
            "kill {i}: the intent outlived the recovery"
        );
        if had_intent {
            mid += 1;
            // With the intent durable the restart finishes the commit.
            assert_eq!(now, post, "kill {i}: an intent was left but not finished");
        }
        if at_kill != pre && at_kill != post {
            between += 1;
        }
        if now == pre {
            at_pre += 1
        } else {
            at_post += 1
        }
        if i % 50 == 49 {
            eprintln!(
                "commit-kill: {} kills in {:.0} s",
                i + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    eprintln!(
        "FIGURE commit-kill: {kills} kills of the daemon during a commit of {} paths: \
         {at_pre} left the pre-commit tree, {at_post} the post-commit tree ({mid} with the \
         intent durable, finished by the restarted daemon; {between} killed with the repo \
         between the two); none other",
        post.len()
    );
    if kills >= 50 {
        assert!(
            at_pre > 0 && mid > 0 && between > 0,
            "the kills never landed inside the commit ({at_pre} pre, {mid} mid, {between} between)"
        );
    }
    // Still committable: a final commit from the pre state gives the post tree.
    reset_repo(&d.repo, &pristine);
    fs::write(&bases, &bases_before).unwrap();
    d.json(&["commit", &id]);
    assert_eq!(tree(&d.repo), post);
}

/// `[undo]` of the policy (docs/undo.md): `keep` prunes all but the newest checkpoints
/// (never checkpoint 0), an undo to a pruned one is 410 with the session's retention, and
/// `checkpoint = "off"` takes none before calls.
#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn undo_daemon_retention_keys_prune_and_a_pruned_checkpoint_says_so() {
    let _vm = agentd_tests::vm::enter();
    let d = Daemon::start();
    let run_with = |name: &str, text: &str| -> String {
        let p = d.root.join(name);
        fs::write(&p, text).unwrap();
        let out = d.run(&[
            "run",
            "--detach",
            "--workspace",
            d.repo.to_str().unwrap(),
            "--policy",
            p.to_str().unwrap(),
            "--",
            "sleep",
            "86400",
        ]);
        assert!(out.status.success(), "agentctl run failed");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let id = run_with("keep.toml", "version = 1\n[undo]\nkeep = 3\n");
    for i in 0..5 {
        sh(&d, &id, &format!("echo {i} > f{i}"));
    }
    let ids: Vec<u64> = d
        .json(&["checkpoints", &id])
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [0, 3, 4, 5], "keep = 3 besides checkpoint 0");
    fails_with(&d, &["undo", &id, "--to", "1"], "checkpoint 1 of session");
    let out = d.run(&["undo", &id, "--to", "2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("was pruned (retention keeps the last 3)"),
        "{err}"
    );
    // A kept one still restores: the files of calls 3.. are gone again.
    d.json(&["undo", &id, "--to", "3"]);
    assert_eq!(inside(&d, &id, "ls f*"), "f0\nf1\n");
    // Still 0 and three others after the undo's own checkpoints.
    assert_eq!(d.json(&["checkpoints", &id]).as_array().unwrap().len(), 4);
    assert!(d.run(&["kill", &id]).status.success());

    let off = run_with("off.toml", "version = 1\n[undo]\ncheckpoint = \"off\"\n");
    sh(&d, &off, "echo x > g");
    sh(&d, &off, "true");
    let cps = d.json(&["checkpoints", &off]);
    assert_eq!(cps.as_array().unwrap().len(), 1, "none before calls: {cps}");
    // On demand still works, and the diff sees the work.
    d.json(&["checkpoints", &off, "--take", "now"]);
    assert_eq!(
        diff_paths(&d.json(&["diff", &off])),
        [("g".into(), "added".into())]
    );
    assert!(d.run(&["kill", &off]).status.success());
    // A bad value is refused at its line and column.
    let p = d.root.join("bad.toml");
    fs::write(&p, "version = 1\n[undo]\nkeep = 0\n").unwrap();
    let out = d.run(&[
        "run",
        "--detach",
        "--workspace",
        d.repo.to_str().unwrap(),
        "--policy",
        p.to_str().unwrap(),
        "--",
        "true",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":3:8") && err.contains("out of range"),
        "{err}"
    );
}
