//! What a new user trips on first (issue 15), in the VM against a real daemon: a root-owned
//! workspace is refused with the way forward named and runs with `--user UID` as that
//! unprivileged uid; `ps` lists running sessions and `ps --all` the ended ones too;
//! `agentctl top` shows running sessions, their agent leaf and their running calls.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

mod daemon_common;
use daemon_common::*;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn daemon_root_owned_workspace_user_flag_ps_all_and_top() {
    let _vm = agentd_tests::vm::enter();
    let d = Daemon::start();
    // A repo owned by root, as a fresh checkout under /srv made by root would be.
    let rootrepo = d.root.join("rootrepo");
    fs::create_dir(&rootrepo).unwrap();
    fs::write(rootrepo.join("README"), "root's file\n").unwrap();
    assert_eq!(fs::metadata(&rootrepo).unwrap().uid(), 0);
    let ws = rootrepo.to_str().unwrap();

    // Refused, naming both ways forward.
    let out = d.run(&["run", "--workspace", ws, "--", "true"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("--user UID") && err.contains("chown -R UID"),
        "{err}"
    );
    // Never root.
    let out = d.run(&["run", "--user", "0", "--workspace", ws, "--", "true"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("never runs as root"));

    // --user 1000: the agent runs as that uid, may create files at the top of the
    // workspace, and root's own file stays read-only to it.
    let script = "id -u; echo made > new && echo created; \
                  (echo x >> README) 2>/dev/null && echo wrote-readme || echo readme-readonly";
    let out = d.run(&[
        "run",
        "--user",
        "1000",
        "--workspace",
        ws,
        "--",
        "/bin/sh",
        "-c",
        script,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let o = text(&out.stdout);
    assert!(o.starts_with("1000\n"), "{o}");
    assert!(
        o.contains("created") && o.contains("readme-readonly"),
        "{o}"
    );
    // The repo itself is untouched (the writes are in the session's upper layer).
    assert!(!rootrepo.join("new").exists());
    assert_eq!(
        fs::read_to_string(rootrepo.join("README")).unwrap(),
        "root's file\n"
    );

    // ps: only running sessions; --all: the ended one too.
    let live = d.session();
    let ps = d.json(&["ps"]);
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&ps), vec![live.clone()], "{ps}");
    let all = d.json(&["ps", "--all"]);
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .any(|s| s["state"] == "exited" && s["exit_code"] == 0),
        "{all}"
    );

    // top: a running call shows under its session with its command.
    let mut call = d
        .ctl(&["exec", &live, "--", "sleep", "20"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let rows = loop {
        let out = d.run(&["--json", "top", "--once", "--delay", "0.5"]);
        assert!(out.status.success());
        let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
        if rows
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["what"] == "call 1" && r["cpu_pct"].is_number())
        {
            break rows;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "no call in top");
        std::thread::sleep(Duration::from_millis(300));
    };
    let call_row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["what"] == "call 1")
        .unwrap();
    assert_eq!(call_row["session"], live.as_str());
    assert_eq!(call_row["command"], "sleep 20");
    assert!(call_row["memory"].as_u64().is_some(), "{call_row}");
    assert!(call_row["cpu_pct"].as_f64().is_some(), "{call_row}");
    let table = d.run(&["top", "-n", "1", "--delay", "0.3"]);
    let tt = text(&table.stdout);
    assert!(
        tt.contains("sessions running") && tt.contains(&live),
        "{tt}"
    );
    assert!(tt.contains("agent") && tt.contains("sleep 20"), "{tt}");
    let _ = call.kill();
    let _ = call.wait();
    assert!(d.run(&["kill", &live]).status.success());
}
