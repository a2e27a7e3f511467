//! Undo through the daemon (issue 11), black-box with the real binaries in the test VM: a
//! checkpoint before every tool call, diff per call, undo through a running session's
//! merged view, commit to the repo with conflict detection, discard, `rm` refusing
//! uncommitted work, an ended session committed from its final checkpoint, bad input, and
//! no torn checkpoint while the agent writes continuously.

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

fn paths(diff: &Value) -> Vec<(String, String)> {
    diff["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["change"].as_str().unwrap().to_string(),
            )
        })
        .collect()
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
        paths(&c1),
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
        paths(&c2),
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
    assert_eq!(paths(&redo).len(), 3, "{redo}");

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
    fails_with(&d, &["commit", &id, "--git-branch", "x"], "not implemented");

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
        paths(&diff),
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
