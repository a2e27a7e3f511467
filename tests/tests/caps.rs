//! Capabilities and approvals, black-box in the test VM (docs/capabilities.md): a session's
//! connection under an `ask` rule is parked by the egress proxy and filed in the approval
//! queue; `agentctl approve` resumes it (within 1 s), `deny` and the policy's timeout refuse
//! it the way egress refuses (HTTP 403 naming the rule, a TLS alert); scoped grants, revoke
//! on the next access, requests from inside (`agentd-cap request`), who may answer (not
//! another uid, not the session's own socket), and the audit chain's verification against
//! a modified, removed and truncated journal. Upstreams: the egress fixture.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::fs;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

mod daemon_common;
use daemon_common::*;

mod egress_fixture;
use egress_fixture::*;

const POLICY: &str = r#"version = 1
[network]
enabled = true
allow = ["web.test", "10.77.0.2/32"]
ask = ["other.test", "alpha.test"]

[capabilities]
"net:beta.test:80" = { effect = "ask" }

[approvals]
timeout = "4s"
"#;

const HOST: &str =
    "\n[network.max]\nenabled = true\nallow = [\"*.test\", \"*.test:*\", \"10.77.0.2/32\"]\n";

fn session(d: &Daemon, up: &Upstream) -> String {
    fs::write(d.root.join("host.toml"), format!("{HOST_POLICY}{HOST}")).unwrap();
    fs::write(d.repo.join("ca.pem"), &up.cert).unwrap();
    fs::write(d.root.join("policy.toml"), POLICY).unwrap();
    chown_r(&d.repo, USER);
    let pol = d.root.join("policy.toml");
    let out = d.run(&[
        "run",
        "--detach",
        "--policy",
        pol.to_str().unwrap(),
        "--workspace",
        d.repo.to_str().unwrap(),
        "--",
        "sleep",
        "86400",
    ]);
    assert!(out.status.success(), "agentctl run failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A tool call running `sh -c SCRIPT`, not waited for.
fn spawn_call(d: &Daemon, id: &str, script: &str) -> Child {
    d.ctl(&["--json", "exec", id, "--", "/bin/sh", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn ended(c: Child) -> Value {
    let out = c.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    eprintln!(
        "call {}: exit {}\nstdout: {}\nstderr: {}",
        v["n"], v["exit_code"], v["stdout"], v["stderr"]
    );
    v
}

fn call(d: &Daemon, id: &str, script: &str) -> Value {
    ended(spawn_call(d, id, script))
}

/// The pending request for `resource`, once filed (up to 60 s: TCG is slow).
fn pending(d: &Daemon, resource: &str) -> Value {
    let t = Instant::now();
    loop {
        let q = d.json(&["approvals"]);
        if let Some(a) = q
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["resource"] == resource)
        {
            return a.clone();
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no request for {resource}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// The `t=NANOS` a script printed when its command returned.
fn t_of(v: &Value) -> u128 {
    v["stdout"]
        .as_str()
        .unwrap()
        .rsplit("t=")
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

const TIMED: &str = "; echo \" rc=$? t=$(date +%s%N)\"";

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn caps_egress_ask_parks_the_connection_until_approve_deny_or_timeout() {
    let _vm = agentd_tests::vm::enter();
    let up = upstream();
    let d = Daemon::start();
    let id = session(&d, up);

    // Approve (scope once): the parked request resumes within 1 s of the answer.
    let c = spawn_call(
        &d,
        &id,
        &format!("curl -sS --max-time 60 http://other.test/hello.txt{TIMED}"),
    );
    let a = pending(&d, "net:other.test:80");
    assert_eq!(a["via"], "egress");
    assert!(
        a["rule"]
            .as_str()
            .unwrap()
            .contains("network.ask `other.test`"),
        "{a}"
    );
    assert!(a["rule"].as_str().unwrap().contains(":5:8"), "{a}");
    let aid = a["id"].as_u64().unwrap().to_string();
    // Nobody but the owner (root here) may answer: not another uid ...
    let other = d
        .ctl(&["approve", &aid])
        .uid(USER)
        .gid(USER)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(
        !other.status.success() && err.contains("belongs to uid 0"),
        "{err}"
    );
    // ... and not the session's own socket (it has no route that answers).
    let inside = call(
        &d,
        &id,
        &format!(
            "curl -sS -o /dev/null -w '%{{http_code}}' --unix-socket /run/agentd-shim.sock \
             -X POST -H 'content-type: application/json' -d '{{\"scope\":\"session\"}}' \
             http://agentd/v1/approvals/{aid}/approve"
        ),
    );
    assert_eq!(inside["stdout"], "404", "{inside}");
    assert_eq!(
        d.json(&["approvals"]).as_array().unwrap().len(),
        1,
        "still pending"
    );
    let answered = d.json(&["approve", &aid]);
    let t_answer = now_ns();
    assert_eq!(answered["state"], "approved");
    let v = ended(c);
    assert!(
        v["stdout"]
            .as_str()
            .unwrap()
            .contains("hello from web.test"),
        "{v}"
    );
    let resume_ms = t_of(&v).saturating_sub(t_answer) as f64 / 1e6;
    eprintln!("approve → curl done: {resume_ms:.0} ms");
    assert!(
        resume_ms <= 1000.0,
        "resumed {resume_ms} ms after the approval"
    );
    // A once grant is used up: the next connection asks again.

    // Deny: the explicit proxy answers 403 with the JSON reason naming the approval and rule.
    let c = spawn_call(
        &d,
        &id,
        &format!(
            "curl -sS --max-time 60 -w ' code=%{{http_code}}' http://other.test/hello.txt{TIMED}"
        ),
    );
    let aid = pending(&d, "net:other.test:80")["id"]
        .as_u64()
        .unwrap()
        .to_string();
    let out = d.run(&["deny", &aid, "--reason", "not today"]);
    assert!(out.status.success());
    let v = ended(c);
    let s = v["stdout"].as_str().unwrap();
    assert!(s.contains("code=403"), "{s}");
    assert!(s.contains(&format!("denied by approval {aid}")), "{s}");
    assert!(s.contains("not today") && s.contains("ask rule"), "{s}");

    // Timeout: transparent TLS, nobody answers: the TLS alert after the policy's 4 s.
    let t = Instant::now();
    let v = call(
        &d,
        &id,
        &format!(
            "curl -sS --noproxy '*' --max-time 60 --cacert ca.pem https://other.test/hello.txt{TIMED}"
        ),
    );
    let secs = t.elapsed().as_secs_f64();
    let err = v["stderr"].as_str().unwrap().to_ascii_lowercase();
    assert!(
        err.contains("access denied") || err.contains("alert"),
        "{err}"
    );
    assert!((4.0..30.0).contains(&secs), "timed out after {secs} s");
    // The connection's audit row (written by the proxy's batch writer) names the timeout.
    let t = Instant::now();
    loop {
        let net = d.json(&["net", &id]).to_string();
        if net.contains("not answered within 4s") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{net}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Scope session (a `net:` capability ask rule): later connections need no answer;
    // revoking the grant makes the next access ask again (denied at the timeout).
    let c = spawn_call(&d, &id, "curl -sS --max-time 60 http://beta.test/hello.txt");
    let a = pending(&d, "net:beta.test:80");
    assert!(
        a["rule"]
            .as_str()
            .unwrap()
            .contains("capabilities.\"net:beta.test:80\""),
        "{a}"
    );
    let g = d.json(&["approve", &a["id"].to_string(), "--scope", "session"]);
    let grant = g["grant"].as_u64().unwrap();
    assert!(
        ended(c)["stdout"]
            .as_str()
            .unwrap()
            .contains("hello from web.test")
    );
    let v = call(&d, &id, "curl -sS --max-time 60 http://beta.test/hello.txt");
    assert!(
        v["stdout"]
            .as_str()
            .unwrap()
            .contains("hello from web.test"),
        "no second ask"
    );
    let grants = d.json(&["grants", &id]);
    assert!(grants.to_string().contains("net:beta.test:80"), "{grants}");
    let r = d.json(&["revoke", &id, &grant.to_string()]);
    assert_eq!(r["revoked"], serde_json::json!([grant]));
    let v = call(
        &d,
        &id,
        "curl -sS --max-time 60 -w ' code=%{http_code}' http://beta.test/hello.txt",
    );
    assert!(v["stdout"].as_str().unwrap().contains("code=403"), "{v}");

    // The audit trail holds it all and verifies; tampering is found.
    let a = d.json(&["audit", &id]);
    assert_eq!(a["verified"]["ok"], true, "{}", a["verified"]);
    let kinds: Vec<&str> = a["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    for k in [
        "session-start",
        "request",
        "decision",
        "grant",
        "use",
        "revoke",
        "call",
    ] {
        assert!(kinds.contains(&k), "no {k} record: {kinds:?}");
    }
    let n = kinds.len();
    let ok = d.run(&["audit", &id, "--verify"]);
    assert!(ok.status.success());
    let db = d.root.join("state/journal.db");
    let sql = |q: &str| {
        let out = Command::new("/usr/bin/python3")
            .args(["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(sys.argv[2]); c.commit()"])
            .arg(&db)
            .arg(q)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let verify = || {
        let out = d.run(&["audit", &id, "--verify"]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    sql(&format!(
        "UPDATE audit SET body = body || ' ' WHERE session_id = '{id}' AND seq = 3"
    ));
    let (code, text) = verify();
    assert_eq!(code, Some(1));
    assert!(text.contains("record 3 was modified"), "{text}");
    sql(&format!(
        "UPDATE audit SET body = rtrim(body, ' ') WHERE session_id = '{id}' AND seq = 3"
    ));
    assert_eq!(verify().0, Some(0));
    sql(&format!(
        "DELETE FROM audit WHERE session_id = '{id}' AND seq = {n}"
    ));
    let (code, text) = verify();
    assert_eq!(code, Some(1));
    assert!(
        text.contains(&format!("truncated after record {}", n - 1)),
        "{text}"
    );
    sql(&format!(
        "DELETE FROM audit WHERE session_id = '{id}' AND seq = 5"
    ));
    let (code, text) = verify();
    assert_eq!(code, Some(1));
    assert!(text.contains("record 5 is missing"), "{text}");
    d.run(&["kill", &id]);
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn caps_agentd_cap_request_from_inside_blocks_until_answered() {
    let _vm = agentd_tests::vm::enter();
    let up = upstream();
    let d = Daemon::start();
    let id = session(&d, up);
    let cap = "/run/agentd/bin/agentd-shim cap request";

    let c = spawn_call(
        &d,
        &id,
        &format!("{cap} net:alpha.test:443 --reason 'push the fix'{TIMED}"),
    );
    let a = pending(&d, "net:alpha.test:443");
    assert_eq!(
        (a["via"].as_str(), a["reason"].as_str()),
        (Some("agentd-cap"), Some("push the fix"))
    );
    assert!(a["call"].is_u64(), "{a}");
    d.json(&["approve", &a["id"].to_string(), "--scope", "call"]);
    let t_answer = now_ns();
    let v = ended(c);
    assert!(v["stdout"].as_str().unwrap().contains("rc=0"), "{v}");
    let ms = t_of(&v).saturating_sub(t_answer) as f64 / 1e6;
    eprintln!("approve → agentd-cap exit: {ms:.0} ms");
    assert!(ms <= 1000.0, "{ms}");

    let c = spawn_call(&d, &id, &format!("{cap} net:alpha.test:443{TIMED}"));
    let a = pending(&d, "net:alpha.test:443");
    d.json(&["deny", &a["id"].to_string()]);
    let v = ended(c);
    assert!(v["stdout"].as_str().unwrap().contains("rc=3"), "{v}");
    assert!(
        v["stderr"].as_str().unwrap().contains("denied by approval"),
        "{v}"
    );

    // Decided by policy without asking anyone; bad requests are refused.
    for (res, rc, says) in [
        ("net:web.test:80", "rc=0", "already allowed"),
        ("net:evil.test:80", "rc=3", "denied by policy"),
        ("fs:/etc/passwd:read", "rc=3", "no mechanism enforces `fs`"),
        ("secret:*", "rc=2", "covers every secret"),
    ] {
        let v = call(&d, &id, &format!("{cap} '{res}'{TIMED}"));
        assert!(v["stdout"].as_str().unwrap().contains(rc), "{res}: {v}");
        assert!(v["stderr"].as_str().unwrap().contains(says), "{res}: {v}");
    }
    // Unanswered: denied at the timeout (4 s).
    let t = Instant::now();
    let v = call(&d, &id, &format!("{cap} net:alpha.test:443{TIMED}"));
    assert!(v["stdout"].as_str().unwrap().contains("rc=3"), "{v}");
    assert!(
        v["stderr"]
            .as_str()
            .unwrap()
            .contains("not answered within 4s"),
        "{v}"
    );
    assert!(t.elapsed() >= Duration::from_secs(4));
    let a = d.json(&["audit", &id]);
    assert_eq!(a["verified"]["ok"], true, "{}", a["verified"]);
    d.run(&["kill", &id]);
}
