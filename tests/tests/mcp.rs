//! `agentctl mcp` (docs/mcp.md):
//! - on the host: the Claude Code and Codex configuration snippets in docs/mcp.md parse (JSON,
//!   TOML), have the shape those harnesses read, and name only flags `agentctl mcp` has;
//! - in the test VM: a real MCP client nobody here wrote (the official Python SDK, PyPI `mcp`,
//!   installed by `cargo xtask deps`) drives `agentctl mcp --workspace` against a real
//!   `agentd serve`: initialize, tools, 20 execs as 20 call cgroups (checked with `agentctl
//!   calls`), OOM reported as such with the session going on, a write outside the workspace
//!   refused by the sandbox, schema errors, cancellation killing the call.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

mod daemon_common;
use daemon_common::Daemon;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The fenced blocks of `lang` in docs/mcp.md.
fn blocks(lang: &str) -> Vec<String> {
    let doc = std::fs::read_to_string(workspace_root().join("docs/mcp.md")).unwrap();
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in doc.lines() {
        match &mut cur {
            None if line.trim() == format!("```{lang}") => cur = Some(String::new()),
            Some(b) if line.trim() == "```" => {
                out.push(std::mem::take(b));
                cur = None;
            }
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    out
}

/// Checks one server entry (command + args, or url) against agentctl's real flags.
fn check_server(name: &str, command: Option<&str>, args: &[String], url: Option<&str>) {
    if let Some(url) = url {
        assert!(
            url.starts_with("http://127.0.0.1:") && url.ends_with("/mcp"),
            "{name}: {url}"
        );
        return;
    }
    assert_eq!(command, Some("agentctl"), "{name}");
    let mcp = args
        .iter()
        .position(|a| a == "mcp")
        .expect("the mcp subcommand");
    let help = Command::new(agentd_tests::project_binary("agentctl"))
        .args(["mcp", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    for a in args.iter().filter(|a| a.starts_with("--")) {
        let flag = a.split('=').next().unwrap();
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "{name}: {flag} is not an `agentctl mcp` flag:\n{help}"
        );
    }
    // And agentctl accepts the whole command line as given (clap parses it; --help stops
    // before anything runs).
    let mut argv = args.to_vec();
    argv.insert(mcp + 1, "--help".into());
    let ok = Command::new(agentd_tests::project_binary("agentctl"))
        .args(&argv)
        .output()
        .unwrap();
    assert!(ok.status.success(), "{name}: agentctl {argv:?}");
}

#[test]
fn mcp_doc_snippets_for_claude_code_and_codex_parse_and_name_real_flags() {
    let json = blocks("json");
    assert!(!json.is_empty(), "docs/mcp.md has the Claude Code snippets");
    let mut seen = 0;
    for b in &json {
        let v: Value = serde_json::from_str(b).unwrap_or_else(|e| panic!("{e}:\n{b}"));
        let servers = v["mcpServers"].as_object().expect("mcpServers");
        for (name, s) in servers {
            let args: Vec<String> = s["args"]
                .as_array()
                .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
                .unwrap_or_default();
            if s.get("url").is_some() {
                assert_eq!(s["type"], "http", "{name}");
            }
            check_server(name, s["command"].as_str(), &args, s["url"].as_str());
            seen += 1;
        }
    }
    let toml_blocks = blocks("toml");
    assert!(
        !toml_blocks.is_empty(),
        "docs/mcp.md has the Codex snippets"
    );
    for b in &toml_blocks {
        let v: toml::Table = toml::from_str(b).unwrap_or_else(|e| panic!("{e}:\n{b}"));
        let servers = v["mcp_servers"].as_table().expect("[mcp_servers.NAME]");
        for (name, s) in servers {
            let args: Vec<String> = s
                .get("args")
                .and_then(|a| a.as_array())
                .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
                .unwrap_or_default();
            check_server(
                name,
                s.get("command").and_then(|c| c.as_str()),
                &args,
                s.get("url").and_then(|c| c.as_str()),
            );
            seen += 1;
        }
    }
    assert!(seen >= 4, "stdio and HTTP forms for both harnesses");
}

/// The venv `cargo xtask deps` makes (xtask/src/deps.rs `mcp_client_dir`).
fn mcp_python() -> PathBuf {
    let py = workspace_root().join("target/mcp-client/python-mcp-2.3.0/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run `cargo xtask deps` (it installs the MCP Python SDK)",
        py.display()
    );
    py
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn mcp_a_real_client_runs_exec_files_oom_and_cancel_through_agentctl_mcp() {
    let _vm = agentd_tests::vm::enter();
    let d = Daemon::start();
    let out = Command::new(mcp_python())
        .arg(workspace_root().join("tests/tests/mcp_client.py"))
        .arg(agentd_tests::project_binary("agentctl"))
        .arg(&d.socket)
        .arg(&d.repo)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("client stderr:\n{stderr}");
    assert!(
        out.status.success(),
        "the MCP client failed: {}",
        out.status
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("client saw: {}", serde_json::to_string_pretty(&r).unwrap());

    assert_eq!(r["server"], "agentd");
    assert_eq!(
        r["tools"],
        serde_json::json!(["exec", "list", "read_file", "status", "write_file"])
    );
    assert_eq!(r["schemas"]["exec"]["additionalProperties"], false);
    let id = r["session"].as_str().unwrap().to_string();

    // 20 execs: 20 distinct calls, each with its output.
    let execs = r["exec"].as_array().unwrap();
    assert_eq!(execs.len(), 20);
    let mut ns: Vec<u64> = execs.iter().map(|e| e["call"].as_u64().unwrap()).collect();
    for (i, e) in execs.iter().enumerate() {
        assert_eq!(e["stdout"], format!("call-{i}\n"), "{e}");
        assert_eq!(e["stderr"], format!("err-{i}\n"), "{e}");
        assert_eq!(
            (e["exit"].as_i64(), e["is_error"].as_bool()),
            (Some(0), Some(false))
        );
    }
    ns.dedup();
    assert_eq!(ns.len(), 20, "20 separate calls: {ns:?}");

    // Progress: notes arrived while the 4 s call ran, not all at its end.
    let p = &r["progress"];
    let notes = p["notes"].as_array().unwrap();
    assert!(!notes.is_empty(), "no progress notification: {p}");
    let first = notes[0]["t"].as_f64().unwrap();
    assert!(
        first < p["ended"].as_f64().unwrap() - 1.5,
        "the first progress note came at the end: {p}"
    );
    assert!(p["stdout"].as_str().unwrap().contains("tick 4"));

    // OOM: an error result that says OOM, and the session went on.
    let oom = &r["oom"];
    assert_eq!(oom["is_error"], true, "{oom}");
    assert_eq!(oom["sc"]["reason"], "oom", "{oom}");
    assert_eq!(oom["sc"]["oom_killed"], true, "{oom}");
    assert_eq!(oom["sc"]["limits"]["memory"], 64u64 << 20);
    assert!(oom["text"].as_str().unwrap().starts_with("OOM:"), "{oom}");
    assert_eq!(r["after_oom"], "still-here\n");

    // Bounded output, the cut said.
    let b = &r["bounded"];
    assert_eq!(b["sc"]["truncated"], true, "{b}");
    assert_eq!(
        b["sc"]["stdout_bytes"], 588895,
        "seq 1 100000 writes 588895 bytes"
    );
    assert!(b["text"].as_str().unwrap().contains("bytes cut"), "{b}");
    assert!(
        b["sc"]["stdout"]
            .as_str()
            .unwrap()
            .ends_with("99999\n100000\n")
    );

    // Files through the sandbox; outside the workspace refused, the host unchanged.
    assert_eq!(
        r["write_inside"]["is_error"], false,
        "{}",
        r["write_inside"]
    );
    assert_eq!(r["read_inside"]["text"], "hello from mcp\n");
    let list = r["list"]["text"].as_str().unwrap();
    assert!(
        list.contains("f 12 README\n") && list.contains(" notes\n"),
        "{list}"
    );
    assert_eq!(r["write_etc"]["is_error"], true, "{}", r["write_etc"]);
    assert!(
        r["write_etc"]["text"]
            .as_str()
            .unwrap()
            .contains("refused or failed inside the sandbox"),
        "{}",
        r["write_etc"]
    );
    assert!(!Path::new("/etc/agentd-mcp-escape.txt").exists());
    assert!(!d.repo.parent().unwrap().join("escape.txt").exists());

    // Schema violations and hidden tools are JSON-RPC errors with the reason.
    assert_eq!(r["invalid"]["code"], -32602, "{}", r["invalid"]);
    assert!(
        r["invalid"]["message"]
            .as_str()
            .unwrap()
            .contains("exec: invalid type")
    );
    assert!(
        r["approve"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown tool")
    );
    assert!(
        r["status"]["text"]
            .as_str()
            .unwrap()
            .contains(&format!("session {id}"))
    );

    // Cancel: the call's cgroup was killed (137), well before its 300 s, and the session
    // went on.
    let c = &r["cancelled_call"];
    assert_eq!(c["argv"], serde_json::json!(["sleep", "300"]), "{c}");
    assert_eq!(c["exit_code"], 137, "{c}");
    assert!(
        c["ended_at"].as_u64().unwrap() - c["started_at"].as_u64().unwrap() < 60,
        "{c}"
    );
    assert_eq!(r["after_cancel"], "alive\n");

    // Every tool call was a call of the session, visible to `agentctl calls`: the 20 execs,
    // each in its own calls/<n> with its report.
    let calls = d.json(&["calls", &id]);
    let calls = calls.as_array().unwrap();
    for n in &ns {
        let c = calls.iter().find(|c| c["n"] == *n).unwrap();
        assert_eq!(c["exit_code"], 0, "{c}");
        assert!(
            c["report"]["path"]
                .as_str()
                .unwrap()
                .ends_with(&format!("calls/{n}")),
            "{c}"
        );
    }
    // The session agentctl mcp created was killed when the client went away.
    assert_eq!(d.json(&["inspect", &id])["state"], "killed");
}
