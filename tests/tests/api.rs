//! The API contract, `docs/api.yaml` (OpenAPI 3.1), against the implementation:
//! - on the host: the document is well-formed (every `$ref` resolves, every operation has an
//!   id and JSON answers with schemas) and documents exactly the routes of the one route
//!   table (`agentd::routes`, which the router registers), so a new route cannot ship
//!   undocumented;
//! - in the test VM: every documented operation is sent to a real `agentd serve`, each answer's
//!   status must be one the document lists for that operation and its body must validate
//!   against the listed schema; error answers (400, 403, 404, 409) included. Requests go through
//!   `curl --unix-socket`, so the 403 case can come from another uid for real (SO_PEERCRED).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

mod daemon_common;
use daemon_common::{Daemon, USER};

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn document() -> Value {
    let text = fs::read_to_string(workspace_root().join("docs/api.yaml")).unwrap();
    serde_yaml_ng::from_str(&text).unwrap()
}

/// Follows a local `$ref` (`#/a/b`) from the document root.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let ptr = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("non-local $ref {r}"));
            doc.pointer(ptr)
                .unwrap_or_else(|| panic!("$ref {r} does not resolve"))
        }
        None => v,
    }
}

/// Every `(path, method)` the document has, e.g. `("/sessions/{id}", "get")`.
fn documented_operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            if item.get(m).is_some() {
                ops.insert((path.clone(), m.to_string()));
            }
        }
    }
    ops
}

/// Every `(path, method)` of the route table (`agentd::routes`), whose [`DAEMON`] routes
/// the daemon's router registers exactly (a host test in agentd checks that) and whose
/// [`SHIM`] routes each session's socket serves.
///
/// [`DAEMON`]: agentd::routes::DAEMON
/// [`SHIM`]: agentd::routes::SHIM
fn registered_routes() -> BTreeSet<(String, String)> {
    agentd::routes::DAEMON
        .iter()
        .chain(agentd::routes::SHIM)
        .flat_map(|r| {
            r.methods
                .iter()
                .map(|m| (r.path.to_string(), m.to_string()))
        })
        .collect()
}

/// Whether a documented path is served on a session's own socket (the shim's protocol,
/// `x-agentd-socket: session`), not on the daemon's: the daemon test exercises those
/// through the shim, not from here.
fn on_session_socket(doc: &Value, path: &str) -> bool {
    doc["paths"][path]["x-agentd-socket"] == "session"
}

fn walk_refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                out.push(r);
            }
            m.values().for_each(|c| walk_refs(c, out));
        }
        Value::Array(a) => a.iter().for_each(|c| walk_refs(c, out)),
        _ => {}
    }
}

#[test]
fn api_document_is_well_formed() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut refs = Vec::new();
    walk_refs(&doc, &mut refs);
    assert!(refs.len() > 10);
    for r in refs {
        let _ = resolve(&doc, &json!({ "$ref": r }));
    }
    let mut ids = BTreeSet::new();
    for (path, method) in documented_operations(&doc) {
        let op = &doc["paths"][&path][&method];
        let id = op["operationId"].as_str();
        assert!(
            id.is_some_and(|i| ids.insert(i.to_string())),
            "{method} {path}: operationId"
        );
        let responses = op["responses"].as_object().unwrap();
        assert!(
            responses.keys().any(|c| c.starts_with('2')),
            "{method} {path}: no 2xx"
        );
        for (code, r) in responses {
            let content = resolve(&doc, r)["content"].as_object();
            assert!(
                content.is_some_and(|c| !c.is_empty()
                    && c.values().all(|t| t["schema"].is_object())
                    && c.keys().all(|k| k == "application/json" || k == NDJSON)),
                "{method} {path} {code}: every answer is JSON or NDJSON, with a schema"
            );
        }
        if path.contains("{id}") {
            let params = doc["paths"][&path]["parameters"].as_array();
            assert!(
                params.is_some_and(|p| !p.is_empty()),
                "{path}: the id parameter"
            );
        }
    }
    // The schemas themselves are valid JSON Schema 2020-12.
    for name in doc["components"]["schemas"].as_object().unwrap().keys() {
        validator(
            &doc,
            &json!({ "$ref": format!("#/components/schemas/{name}") }),
        );
    }
}

#[test]
fn api_documents_exactly_the_routes_the_daemon_registers() {
    let doc = document();
    // Both relative to the API prefix: the document's server URL and the router's `{p}` carry /v1.
    let documented = documented_operations(&doc);
    let registered = registered_routes();
    let undocumented: Vec<_> = registered.difference(&documented).collect();
    let unimplemented: Vec<_> = documented.difference(&registered).collect();
    assert!(
        undocumented.is_empty() && unimplemented.is_empty(),
        "docs/api.yaml is out of date: registered but undocumented {undocumented:?}; \
         documented but not registered {unimplemented:?}"
    );
}

/// A validator for `schema`, whose `$ref`s point into the document's components.
fn validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let mut root = schema.clone();
    root["components"] = doc["components"].clone();
    jsonschema::draft202012::new(&root).unwrap_or_else(|e| panic!("invalid schema {schema}: {e}"))
}

/// One answer of the daemon; an NDJSON body is an array of its lines.
struct Answer {
    status: u16,
    ctype: String,
    body: Value,
}

/// The content type of streamed answers (one JSON object per line).
const NDJSON: &str = "application/x-ndjson";

/// The conformance client: the shared test daemon, the document, what has been exercised.
struct Api {
    d: Daemon,
    doc: Value,
    /// `operationId`s answered with a documented 2xx so far.
    exercised: BTreeSet<String>,
}

impl Api {
    fn start() -> Api {
        Api {
            d: Daemon::start(),
            doc: document(),
            exercised: BTreeSet::new(),
        }
    }

    /// Sends a request through curl (as `uid` when given); `body` is `(content type, bytes)`.
    fn raw(
        &self,
        uid: Option<u32>,
        method: &str,
        path: &str,
        body: Option<(&str, &str)>,
    ) -> Answer {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "120", "-X", method, "--unix-socket"])
            .arg(&self.d.socket)
            .args(["-w", "\n%{http_code} %{content_type}"]);
        if let Some((ctype, _)) = body {
            cmd.args([
                "-H",
                &format!("content-type: {ctype}"),
                "--data-binary",
                "@-",
            ]);
        }
        cmd.arg(format!("http://localhost/v1{path}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        let mut child = cmd.spawn().expect("curl (installed by cargo xtask deps)");
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(body.map_or("", |b| b.1).as_bytes())
            .unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, trailer) = text.rsplit_once('\n').unwrap_or(("", &text));
        let (code, ctype) = trailer.split_once(' ').unwrap_or((trailer, ""));
        let status = code.trim().parse().unwrap_or(0);
        let ctype = ctype.split(';').next().unwrap_or("").trim().to_string();
        let body = if ctype == NDJSON {
            Value::Array(
                body.lines()
                    .map(|l| serde_json::from_str(l).unwrap_or(Value::String(l.to_string())))
                    .collect(),
            )
        } else {
            serde_json::from_str(body).unwrap_or(Value::String(body.to_string()))
        };
        Answer {
            status,
            ctype,
            body,
        }
    }

    /// Sends a documented operation (`template` with `{id}`, plus `query`) and checks the
    /// answer against the document: its status must be listed for the operation, and its
    /// body must match that status's schema for the answer's content type (for NDJSON, every
    /// line must match).
    fn call(
        &mut self,
        uid: Option<u32>,
        method: &str,
        template: &str,
        id: &str,
        query: &str,
        body: Option<(&str, &str)>,
    ) -> Answer {
        // `id` may be `ID/N` for a template that also names a call number `{n}`.
        let (id, n) = id.split_once('/').unwrap_or((id, ""));
        let path = format!(
            "{}{query}",
            template
                .replace("{id}", id)
                .replace("{aid}", id)
                .replace("{n}", n)
                .replace("{g}", n)
        );
        let a = self.raw(uid, method, &path, body);
        let m = method.to_ascii_lowercase();
        let op = self.doc["paths"][template][&m].clone();
        assert!(op.is_object(), "{method} {template} is not documented");
        let Some(response) = op["responses"].get(a.status.to_string()) else {
            panic!(
                "{method} {path}: status {} is not documented for this operation; body {}",
                a.status, a.body
            )
        };
        let content = &resolve(&self.doc, response)["content"];
        let Some(schema) = content.get(&a.ctype).map(|c| c["schema"].clone()) else {
            panic!(
                "{method} {path}: content type {:?} is not documented for {}",
                a.ctype, a.status
            )
        };
        let v = validator(&self.doc, &schema);
        let items: Vec<&Value> = match (&a.body, a.ctype.as_str()) {
            (Value::Array(lines), NDJSON) => lines.iter().collect(),
            (b, _) => vec![b],
        };
        for item in items {
            let errors: Vec<String> = v
                .iter_errors(item)
                .map(|e| format!("{} at {}", e, e.instance_path()))
                .collect();
            assert!(
                errors.is_empty(),
                "{method} {path} answered {} with a body that does not match docs/api.yaml: \
                 {errors:?}\nbody: {item}",
                a.status
            );
        }
        if (200..300).contains(&a.status) {
            self.exercised
                .insert(op["operationId"].as_str().unwrap().to_string());
        }
        a
    }

    /// feedStdin with `bytes`.
    fn feed_stdin(&mut self, id: &str, bytes: &str) -> Answer {
        let body = Some(("application/octet-stream", bytes));
        self.call(None, "POST", "/sessions/{id}/stdin", id, "", body)
    }

    /// [`Api::call`] with a JSON body or none.
    fn json(
        &mut self,
        uid: Option<u32>,
        method: &str,
        template: &str,
        id: &str,
        body: Option<&str>,
    ) -> Answer {
        self.call(
            uid,
            method,
            template,
            id,
            "",
            body.map(|b| ("application/json", b)),
        )
    }
}

/// The answer of listSessions contains session `id`.
fn lists(sessions: &Value, id: &str) -> bool {
    sessions.as_array().unwrap().iter().any(|s| s["id"] == id)
}

/// The text of a stream's `stdout` (or `stderr`) events, and its last event.
fn streamed<'a>(a: &'a Answer, which: &str) -> (String, &'a Value) {
    let lines = a
        .body
        .as_array()
        .unwrap_or_else(|| panic!("not a stream: {}", a.body));
    let text = lines.iter().filter_map(|l| l[which].as_str()).collect();
    (text, lines.last().unwrap())
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn api_every_documented_operation_answers_as_documented() {
    let _vm = agentd_tests::vm::enter();
    // The approvals part starts a network session: its daemon needs an upstream DNS
    // setting (nothing is resolved: the request from inside names no connection).
    // SAFETY: set before the daemon (and any other thread) starts.
    unsafe { std::env::set_var("AGENTD_EGRESS_DNS", "127.0.0.1:53") };
    let mut api = Api::start();
    let repo = api.d.repo.to_str().unwrap().to_string();

    let h = api.json(None, "GET", "/health", "", None);
    assert_eq!(h.body["caller_uid"], 0);
    let h = api.json(Some(USER), "GET", "/health", "", None);
    assert_eq!(h.body["caller_uid"], USER);

    // Bad input is a 400 with a reason, whatever is wrong with it.
    for bad in [
        "{not json",
        "{}",
        r#"{"workspace": "/nonexistent-agentd-api", "argv": ["true"]}"#,
        r#"{"workspace": "relative", "argv": ["true"]}"#,
    ] {
        let a = api.json(None, "POST", "/sessions", "", Some(bad));
        assert_eq!(a.status, 400, "POST /sessions {bad}: {}", a.body);
    }
    let a = api.call(
        None,
        "POST",
        "/sessions",
        "",
        "",
        Some(("text/plain", "{}")),
    );
    assert_eq!(
        a.status, 400,
        "a body that is not declared JSON: {}",
        a.body
    );
    let bad_policy = json!({
        "workspace": repo, "argv": ["true"],
        "policy": {"name": ".agentd/policy.toml", "text": "version = 1\n[resources]\nmemroy = \"1G\"\n"}
    });
    let a = api.json(None, "POST", "/sessions", "", Some(&bad_policy.to_string()));
    assert_eq!(a.status, 400);
    assert!(
        a.body["error"]
            .as_str()
            .unwrap()
            .contains(".agentd/policy.toml:3:"),
        "{}",
        a.body
    );

    let create = json!({"workspace": repo, "argv": ["sleep", "600"]});
    let s = api.json(None, "POST", "/sessions", "", Some(&create.to_string()));
    assert_eq!(s.status, 200, "{}", s.body);
    assert_eq!(s.body["state"], "running");
    let id = s.body["id"].as_str().unwrap().to_string();

    let l = api.json(None, "GET", "/sessions", "", None);
    assert!(lists(&l.body, &id));
    let l = api.json(Some(USER), "GET", "/sessions", "", None);
    assert!(!lists(&l.body, &id));
    api.json(None, "GET", "/sessions/{id}", &id, None);
    let nf = api.json(None, "GET", "/sessions/{id}", "no-such-session", None);
    assert_eq!(nf.status, 404);
    for (method, template) in [
        ("GET", "/sessions/{id}"),
        ("GET", "/sessions/{id}/logs"),
        ("GET", "/sessions/{id}/calls"),
        ("GET", "/sessions/{id}/stats"),
        ("GET", "/sessions/{id}/net"),
        ("POST", "/sessions/{id}/kill"),
        ("POST", "/sessions/{id}/wait"),
        ("DELETE", "/sessions/{id}"),
    ] {
        let a = api.json(Some(USER), method, template, &id, None);
        assert_eq!(
            a.status, 403,
            "{method} {template} as uid {USER}: {}",
            a.body
        );
    }
    for (template, body) in [
        ("/sessions/{id}/calls", r#"{"argv":["true"]}"#),
        ("/sessions/{id}/stdin", "x"),
    ] {
        let a = api.json(Some(USER), "POST", template, &id, Some(body));
        assert_eq!(a.status, 403, "POST {template} as uid {USER}: {}", a.body);
    }

    let call = json!({"argv": ["sh", "-c", "echo out; echo err >&2; exit 3"], "intent": {"memory": "64M"}});
    let c = api.json(
        None,
        "POST",
        "/sessions/{id}/calls",
        &id,
        Some(&call.to_string()),
    );
    assert_eq!(c.status, 200, "{}", c.body);
    assert_eq!(
        (c.body["exit_code"].as_i64(), c.body["stdout"].as_str()),
        (Some(3), Some("out\n"))
    );
    assert_eq!(c.body["limits"]["memory"], 64 << 20);
    assert!(c.body["report"]["stats"]["cpu"]["usage_usec"].is_u64());
    let call = json!({"argv": ["sh", "-c", "echo a; echo b >&2"]}).to_string();
    let c = api.call(
        None,
        "POST",
        "/sessions/{id}/calls",
        &id,
        "?stream=true",
        Some(("application/json", &call)),
    );
    assert_eq!((c.status, c.ctype.as_str()), (200, NDJSON), "{}", c.body);
    let (out, last) = streamed(&c, "stdout");
    assert_eq!(out, "a\n");
    assert_eq!(last["call"]["exit_code"], 0, "{}", c.body);
    for bad in [
        r#"{"argv": []}"#,
        r#"{"argv": ["true"], "intent": {"memory": "lots"}}"#,
        r#"{"argv": ["true"], "env": {"LD_PRELOAD": "/x.so"}}"#,
        r#"{"argv": "true"}"#,
    ] {
        let a = api.json(None, "POST", "/sessions/{id}/calls", &id, Some(bad));
        assert_eq!(a.status, 400, "POST calls {bad}: {}", a.body);
    }
    let calls = api.json(None, "GET", "/sessions/{id}/calls", &id, None);
    assert_eq!(calls.body.as_array().unwrap().len(), 2, "{}", calls.body);
    // killCall: a streamed call's first line names it; killing its cgroup ends it (137).
    let mut slow = Command::new("curl")
        .args([
            "-sS",
            "-N",
            "--max-time",
            "120",
            "-X",
            "POST",
            "--unix-socket",
        ])
        .arg(&api.d.socket)
        .args(["-H", "content-type: application/json", "--data-binary"])
        .arg(json!({"argv": ["sleep", "300"]}).to_string())
        .arg(format!(
            "http://localhost/v1/sessions/{id}/calls?stream=true"
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(slow.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let n = first["started"]["n"]
        .as_u64()
        .expect("a started line first");
    let k = api.json(
        None,
        "POST",
        "/sessions/{id}/calls/{n}/kill",
        &format!("{id}/{n}"),
        None,
    );
    assert_eq!((k.status, &k.body["n"]), (200, &json!(n)), "{}", k.body);
    let last: Value = serde_json::from_str(&lines.last().unwrap().unwrap()).unwrap();
    assert_eq!(last["call"]["exit_code"], 137, "{last}");
    slow.wait().unwrap();
    let again = api.json(
        None,
        "POST",
        "/sessions/{id}/calls/{n}/kill",
        &format!("{id}/{n}"),
        None,
    );
    assert_eq!(again.status, 409, "an ended call: {}", again.body);
    let a = api.json(
        Some(USER),
        "POST",
        "/sessions/{id}/calls/{n}/kill",
        &format!("{id}/{n}"),
        None,
    );
    assert_eq!(a.status, 403, "another uid: {}", a.body);
    api.json(None, "GET", "/sessions/{id}/logs", &id, None);
    let st = api.json(None, "GET", "/sessions/{id}/stats", &id, None);
    assert_eq!(st.body["id"], id.as_str());
    // A session without network has no connections (tests/tests/egress.rs covers the rest).
    let net = api.json(None, "GET", "/sessions/{id}/net", &id, None);
    assert_eq!(net.body, json!([]), "{}", net.body);
    let all = api.json(None, "GET", "/stats", "", None);
    api.json(None, "GET", "/pool", "", None);
    assert!(lists(&all.body, &id));
    let all = api.json(Some(USER), "GET", "/stats", "", None);
    assert!(!lists(&all.body, &id));

    // Undo (docs/undo.md): checkpoints, diff, undo, commit, discard and their 4xx.
    let w = r#"{"argv":["sh","-c","echo hi > api-undo.txt"]}"#;
    let c = api.json(None, "POST", "/sessions/{id}/calls", &id, Some(w));
    assert_eq!(c.status, 200, "{}", c.body);
    let n = c.body["n"].as_u64().unwrap();
    let cps = api.json(None, "GET", "/sessions/{id}/checkpoints", &id, None);
    assert!(
        cps.body.as_array().unwrap().iter().any(|c| c["call"] == n),
        "{}",
        cps.body
    );
    let cp = api.json(
        None,
        "POST",
        "/sessions/{id}/checkpoints",
        &id,
        Some(r#"{"reason":"api"}"#),
    );
    assert_eq!(cp.body["reason"], "api", "{}", cp.body);
    let d = api.call(None, "GET", "/sessions/{id}/diff", &id, "?stat=true", None);
    assert!(
        d.body["files"].to_string().contains("api-undo.txt"),
        "{}",
        d.body
    );
    let d = api.call(
        None,
        "GET",
        "/sessions/{id}/diff",
        &id,
        &format!("?call={n}"),
        None,
    );
    assert!(
        d.body["diff"].as_str().unwrap().contains("+hi"),
        "{}",
        d.body
    );
    let a = api.call(None, "GET", "/sessions/{id}/diff", &id, "?call=9999", None);
    assert_eq!(a.status, 404, "{}", a.body);
    let a = api.json(
        None,
        "POST",
        "/sessions/{id}/undo",
        &id,
        Some(r#"{"to":9999}"#),
    );
    assert_eq!(a.status, 404, "{}", a.body);
    let a = api.json(
        None,
        "GET",
        "/sessions/{id}/checkpoints",
        "no-such-session",
        None,
    );
    assert_eq!(a.status, 404, "{}", a.body);
    let a = api.json(Some(USER), "GET", "/sessions/{id}/checkpoints", &id, None);
    assert_eq!(a.status, 403, "{}", a.body);
    let u = api.json(
        None,
        "POST",
        "/sessions/{id}/undo",
        &id,
        Some(r#"{"to":0}"#),
    );
    assert!(
        u.body["paths"].to_string().contains("api-undo.txt"),
        "{}",
        u.body
    );
    let cm = api.json(None, "POST", "/sessions/{id}/commit", &id, Some("{}"));
    assert_eq!(cm.body["paths"], json!([]), "{}", cm.body);
    let a = api.json(
        None,
        "POST",
        "/sessions/{id}/commit",
        &id,
        Some(r#"{"git_branch":"x"}"#),
    );
    // The API test's repo is no git repo: a clear 409 (tests/tests/undo_git.rs exports).
    assert_eq!(a.status, 409, "{}", a.body);
    assert!(
        a.body["error"]
            .as_str()
            .unwrap()
            .contains("is not in a git repository"),
        "{}",
        a.body
    );
    let a = api.json(
        None,
        "POST",
        "/sessions/{id}/commit",
        &id,
        Some(r#"{"git_branch":"a..b"}"#),
    );
    assert_eq!(a.status, 400, "{}", a.body);
    api.json(None, "POST", "/sessions/{id}/discard", &id, None);

    // A session with a stdin: the body of POST …/stdin is what the agent reads.
    let create = json!({"workspace": repo, "stdin": true,
        "argv": ["sh", "-c", "read line; echo got:$line; echo note >&2"]});
    let s2 = api.json(None, "POST", "/sessions", "", Some(&create.to_string()));
    assert_eq!(s2.status, 200, "{}", s2.body);
    let id2 = s2.body["id"].as_str().unwrap().to_string();
    let a = api.feed_stdin(&id2, "hello\n");
    assert_eq!((a.status, &a.body["bytes"]), (200, &json!(6)), "{}", a.body);
    let f = api.call(
        None,
        "GET",
        "/sessions/{id}/logs",
        &id2,
        "?follow=true",
        None,
    );
    let (out, last) = streamed(&f, "stdout");
    assert_eq!(out, "got:hello\n", "{}", f.body);
    assert_eq!(last["session"]["state"], "exited", "{}", f.body);
    // The runtime's own warnings (e.g. a Landlock right the kernel cannot enforce and the
    // plan marks optional, on 6.12) come first on the session's stderr.
    let err = streamed(&f, "stderr").0;
    assert!(err.ends_with("note\n"), "{err:?}");
    let a = api.feed_stdin(&id2, "more");
    assert_eq!(a.status, 409, "stdin of an exited session: {}", a.body);
    let a = api.json(None, "GET", "/sessions/{id}/stats", &id2, None);
    assert_eq!(a.status, 409, "stats of an exited session: {}", a.body);

    let k = api.json(None, "POST", "/sessions/{id}/kill", &id, None);
    assert_eq!(k.body["state"], "killed");
    let a = api.json(
        None,
        "POST",
        "/sessions/{id}/calls",
        &id,
        Some(r#"{"argv":["true"]}"#),
    );
    assert_eq!(a.status, 409, "a call into a killed session: {}", a.body);
    let w = api.json(None, "POST", "/sessions/{id}/wait", &id, None);
    assert!(w.body["ended_at"].is_u64());
    api.json(None, "DELETE", "/sessions/{id}", &id, None);
    let l = api.json(None, "GET", "/sessions", "", None);
    assert!(!lists(&l.body, &id));

    // Approvals (docs/capabilities.md): a request from inside a network session whose policy
    // puts crates.io under ask (within the built-in host caps), answered through the API.
    let ask = json!({"workspace": repo, "argv": ["sleep", "600"],
        "policy": {"name": ".agentd/policy.toml", "text": "version = 1\n[network]\nenabled = true\nask = [\"@crates\"]\n[approvals]\ntimeout = \"60s\"\n"}});
    let s3 = api.json(None, "POST", "/sessions", "", Some(&ask.to_string()));
    assert_eq!(s3.status, 200, "{}", s3.body);
    let id3 = s3.body["id"].as_str().unwrap().to_string();
    let socket = api.d.socket.clone();
    let request_from_inside = || {
        Command::new("curl")
            .args(["-sS", "--max-time", "120", "-X", "POST", "--unix-socket"])
            .arg(&socket)
            .args(["-H", "content-type: application/json", "--data-binary"])
            .arg(json!({"argv": ["/run/agentd/bin/agentd-shim", "cap", "request", "net:crates.io:443", "--reason", "api"]}).to_string())
            .arg(format!("http://localhost/v1/sessions/{id3}/calls"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let wait_pending = |api: &mut Api| -> u64 {
        for _ in 0..300 {
            let q = api.json(None, "GET", "/approvals", "", None);
            if let Some(a) = q.body["requests"].as_array().unwrap().first() {
                return a["id"].as_u64().unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        panic!("no request filed");
    };
    let first = request_from_inside();
    let aid = wait_pending(&mut api);
    let q = api.call(None, "GET", "/approvals", "", "?wait=1&after=0", None);
    assert_eq!(q.status, 200, "{}", q.body);
    let mine = api.json(Some(USER), "GET", "/approvals", "", None);
    assert_eq!(
        mine.body["requests"],
        json!([]),
        "another uid sees none: {}",
        mine.body
    );
    let path = format!("{aid}");
    let a = api.json(
        Some(USER),
        "POST",
        "/approvals/{aid}/approve",
        &path,
        Some("{}"),
    );
    assert_eq!(a.status, 403, "{}", a.body);
    let a = api.json(
        None,
        "POST",
        "/approvals/{aid}/approve",
        "999999",
        Some("{}"),
    );
    assert_eq!(a.status, 404, "{}", a.body);
    let a = api.json(
        None,
        "POST",
        "/approvals/{aid}/approve",
        &path,
        Some(r#"{"scope":"forever"}"#),
    );
    assert_eq!(a.status, 400, "{}", a.body);
    let a = api.json(
        None,
        "POST",
        "/approvals/{aid}/approve",
        &path,
        Some(r#"{"scope":"session"}"#),
    );
    assert_eq!(
        (a.status, &a.body["state"]),
        (200, &json!("approved")),
        "{}",
        a.body
    );
    let grant = a.body["grant"].as_u64().unwrap();
    let out = first.wait_with_output().unwrap();
    let c: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["exit_code"], 0, "{c}");
    let a = api.json(None, "POST", "/approvals/{aid}/deny", &path, Some("{}"));
    assert_eq!(a.status, 409, "answered already: {}", a.body);
    let g = api.json(None, "GET", "/sessions/{id}/grants", &id3, None);
    assert!(
        g.body.to_string().contains("net:crates.io:443"),
        "{}",
        g.body
    );
    let r = api.json(
        None,
        "DELETE",
        "/sessions/{id}/grants/{g}",
        &format!("{id3}/{grant}"),
        None,
    );
    assert_eq!(r.body["revoked"], json!([grant]), "{}", r.body);
    let second = request_from_inside();
    let aid2 = wait_pending(&mut api);
    let a = api.json(
        None,
        "POST",
        "/approvals/{aid}/deny",
        &aid2.to_string(),
        Some(r#"{"reason":"no"}"#),
    );
    assert_eq!(
        (a.status, &a.body["state"]),
        (200, &json!("denied")),
        "{}",
        a.body
    );
    let out = second.wait_with_output().unwrap();
    let c: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["exit_code"], 3, "{c}");
    let au = api.json(None, "GET", "/sessions/{id}/audit", &id3, None);
    assert_eq!(au.body["verified"]["ok"], true, "{}", au.body["verified"]);
    let a = api.json(Some(USER), "GET", "/sessions/{id}/audit", &id3, None);
    assert_eq!(a.status, 403, "{}", a.body);
    api.json(None, "POST", "/sessions/{id}/kill", &id3, None);

    // Nothing undocumented answers, and even axum's own refusals carry an ErrorBody.
    let error_body = validator(&api.doc, &json!({"$ref": "#/components/schemas/ErrorBody"}));
    for (method, path, status) in [("GET", "/nope", 404), ("PUT", "/sessions", 405)] {
        let a = api.raw(None, method, path, Some(("application/json", "{}")));
        assert_eq!(a.status, status, "{method} {path}: {}", a.body);
        assert!(error_body.is_valid(&a.body), "{method} {path}: {}", a.body);
    }

    let all: BTreeSet<String> = documented_operations(&api.doc)
        .iter()
        .filter(|(p, _)| !on_session_socket(&api.doc, p))
        .map(|(p, m)| {
            api.doc["paths"][p][m]["operationId"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let missed: Vec<_> = all.difference(&api.exercised).collect();
    assert!(
        missed.is_empty(),
        "operations this test never saw succeed: {missed:?}"
    );
}
