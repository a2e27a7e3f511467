//! Quiet checkpoints (docs/undo.md): a checkpoint of a layer in which nothing changed since
//! the last frozen walk reuses that walk without freezing the session. Black-box with the
//! real binaries in the test VM: after quiet checkpoints, a same-size in-place rewrite, a
//! chmod and a delete are each still caught by the next checkpoint, and undo gives each
//! checkpoint's tree back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::time::Duration;

use serde_json::Value;

mod daemon_common;
use daemon_common::*;

fn sh(d: &Daemon, id: &str, script: &str) -> Value {
    let c = d.json(&["exec", id, "--", "sh", "-c", script]);
    assert_eq!(c["exit_code"], 0, "{c}");
    c
}

fn out(d: &Daemon, id: &str, script: &str) -> String {
    sh(d, id, script)["stdout"].as_str().unwrap().to_string()
}

fn changed(d: &Daemon, id: &str, call: u64) -> Vec<(String, String)> {
    diff_paths(&d.json(&["diff", id, "--call", &call.to_string()]))
}

/// Past the stamp settle time (2 s), so the next checkpoint can be a quiet one.
fn settle() {
    std::thread::sleep(Duration::from_millis(2_500));
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn undo_quiet_checkpoints_still_catch_every_change_after_them() {
    let _vm = agentd_tests::vm::enter();
    let d = Daemon::start();
    let id = d.session();
    // Call 1 writes; the checkpoint before call 2 is a frozen walk that sees it.
    sh(
        &d,
        &id,
        "echo one > a; mkdir d; echo x > d/f; echo keep > k",
    );
    settle();
    sh(&d, &id, "true"); // 2
    settle();
    // Calls 3-5 change nothing: their checkpoints are quiet, and equal.
    for _ in 3..=5 {
        sh(&d, &id, "cat a d/f > /dev/null");
    }
    for call in 3..=5 {
        assert_eq!(changed(&d, &id, call), [], "call {call} changed nothing");
    }
    // Call 6: the same size, in place (inode, size kept); call 7: a chmod; call 8: a delete.
    sh(&d, &id, "printf 'y\\n' > d/f");
    sh(&d, &id, "chmod 600 a");
    sh(&d, &id, "rm k");
    sh(&d, &id, "true"); // 9: its checkpoint holds call 8's delete
    assert_eq!(changed(&d, &id, 6), [("d/f".into(), "modified".into())]);
    assert_eq!(changed(&d, &id, 7), [("a".into(), "mode_changed".into())]);
    assert_eq!(changed(&d, &id, 8), [("k".into(), "deleted".into())]);
    // After a quiet stretch again, one more rewrite right after a quiet checkpoint.
    settle();
    sh(&d, &id, "true"); // 10: frozen (call 8's delete is recent); 11 below: quiet
    settle();
    sh(&d, &id, "true"); // 11
    sh(&d, &id, "printf 'z\\n' > d/f"); // 12
    sh(&d, &id, "true"); // 13
    assert_eq!(changed(&d, &id, 11), []);
    assert_eq!(changed(&d, &id, 12), [("d/f".into(), "modified".into())]);
    // Undo to the checkpoints before calls 12, 6 and 3 gives each tree back.
    d.json(&["undo", &id, "--to", "12"]);
    assert_eq!(
        out(&d, &id, "cat d/f; stat -c %a a; test -e k || echo nok"),
        "y\n600\nnok\n"
    );
    d.json(&["undo", &id, "--to", "6"]);
    assert_eq!(
        out(&d, &id, "cat d/f; stat -c %a a; cat k"),
        "x\n644\nkeep\n"
    );
    d.json(&["undo", &id, "--to", "3"]);
    assert_eq!(out(&d, &id, "cat a d/f k"), "one\nx\nkeep\n");
}
