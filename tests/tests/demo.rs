//! The README's main-job command (`examples/demo.sh`) keeps working: a scripted agent runs in
//! an agentd session and each of its five shell commands becomes a reported tool call.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::path::Path;
use std::process::Command;

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn demo_scripted_agent_makes_five_reported_calls() {
    let _vm = agentd_tests::vm::enter();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo.sh");
    let bin_dir = agentd_tests::project_binary("agentd");
    let path = format!(
        "{}:{}",
        bin_dir.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("/bin/sh")
        .arg(&demo)
        .env("PATH", path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed: {out:?}");
    assert!(
        stdout.contains("2 + 3 = 5") && stdout.contains("tests passed"),
        "{stdout}"
    );
    let calls: Vec<&str> = stdout
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("exited"))
        .collect();
    assert_eq!(
        calls.len(),
        5,
        "five tool calls with reports expected: {stdout}"
    );
    assert!(
        calls
            .iter()
            .any(|l| l.contains("batch") && l.contains("make")),
        "{stdout}"
    );
    // The diff shows the agent's build and its edit; the edit (call 5) is undone, the rest
    // committed: the repo gets `hello`, and main.c still ends with #endif.
    assert!(stdout.contains("+// reviewed by the agent"), "{stdout}");
    assert!(stdout.contains("added         hello"), "{stdout}");
    assert!(stdout.contains("committed checkpoint"), "{stdout}");
    assert!(stdout.trim_end().ends_with("#endif"), "{stdout}");
}
