//! The API contract, `docs/api.yaml` (OpenAPI 3.1), against the implementation:
//! - on the host: the document is well-formed (every `$ref` resolves, every operation has an
//!   id and JSON answers with schemas) and documents exactly the routes the daemon registers
//!   (read from the router's source, so a new route cannot ship undocumented);
//! - in the test VM: every documented operation is sent to a real `agentd serve`, each answer's
//!   status must be one the document lists for that operation and its body must validate
//!   against the listed schema; error answers (400, 403, 404, 409) included. Requests go through
//!   `curl --unix-socket`, so the 403 case can come from another uid for real (SO_PEERCRED).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];
/// The uid that owns the test repo; it is not the session's owner, so it gets 403.
const OTHER_UID: u32 = 1000;

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

/// Every `(path, method)` the daemon's router registers, read from its source: each
/// `.route(&format!("{p}/…"), get(…).post(…))` of `agentd/src/server/*.rs`.
fn registered_routes() -> BTreeSet<(String, String)> {
    let dir = workspace_root().join("agentd/src/server");
    let mut routes = BTreeSet::new();
    for entry in fs::read_dir(&dir).unwrap() {
        let text = fs::read_to_string(entry.unwrap().path()).unwrap();
        for chunk in text.split(".route(").skip(1) {
            let Some(rest) = chunk.trim_start().strip_prefix("&format!(\"{p}") else {
                continue;
            };
            let (path, handlers) = rest.split_once('"').unwrap();
            let handlers = handlers.split(".route(").next().unwrap();
            let handlers = handlers.split(';').next().unwrap();
            let path = path.replace("{{", "{").replace("}}", "}");
            for m in METHODS {
                let calls = handlers
                    .match_indices(&format!("{m}("))
                    .filter(|(i, _)| *i == 0 || !handlers.as_bytes()[i - 1].is_ascii_alphanumeric())
                    .count();
                if calls > 0 {
                    routes.insert((path.clone(), m.to_string()));
                }
            }
        }
    }
    assert!(!routes.is_empty(), "no routes found in {}", dir.display());
    routes
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
            let schema = &resolve(&doc, r)["content"]["application/json"]["schema"];
            assert!(schema.is_object(), "{method} {path} {code}: no JSON schema");
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

/// One answer of the daemon.
struct Answer {
    status: u16,
    body: Value,
}

/// A daemon on a temp socket, state dir and cgroup root, for the conformance test.
struct Daemon {
    _dir: tempfile::TempDir,
    root: PathBuf,
    repo: PathBuf,
    socket: PathBuf,
    cgroup_root: PathBuf,
    child: Child,
    doc: Value,
    /// `operationId`s answered with a documented 2xx so far.
    exercised: BTreeSet<String>,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("agentd-api-")
            .tempdir_in("/tmp")
            .unwrap();
        let root = dir.path().to_path_buf();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        let repo = root.join("repo");
        fs::create_dir(&repo).unwrap();
        fs::write(repo.join("README"), "sample repo\n").unwrap();
        std::os::unix::fs::chown(&repo, Some(OTHER_UID), Some(OTHER_UID)).unwrap();
        std::os::unix::fs::chown(repo.join("README"), Some(OTHER_UID), Some(OTHER_UID)).unwrap();
        let socket = root.join("agentd.sock");
        let cgroup_root =
            PathBuf::from(format!("/sys/fs/cgroup/agentd-api-{}", std::process::id()));
        let child = Command::new(agentd_tests::project_binary("agentd"))
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .args(["--socket-mode", "0666"])
            .arg("--state-dir")
            .arg(root.join("state"))
            .arg("--cgroup-root")
            .arg(&cgroup_root)
            .arg("--host-policy")
            .arg(root.join("no-host-policy.toml"))
            .arg("--sandbox-bin")
            .arg(agentd_tests::project_binary("agentd-sandbox"))
            .arg("--shim-bin")
            .arg(agentd_tests::project_binary("agentd-shim"))
            .spawn()
            .unwrap();
        let d = Daemon {
            _dir: dir,
            root,
            repo,
            socket,
            cgroup_root,
            child,
            doc: document(),
            exercised: BTreeSet::new(),
        };
        let t = Instant::now();
        while d.raw(None, "GET", "/health", None).status != 200 {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "daemon did not come up"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        d
    }

    /// Sends a request through curl (as `uid` when given) and returns the answer.
    fn raw(&self, uid: Option<u32>, method: &str, path: &str, body: Option<&str>) -> Answer {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "120", "-X", method, "--unix-socket"])
            .arg(&self.socket)
            .args(["-w", "\n%{http_code}"]);
        if body.is_some() {
            cmd.args([
                "-H",
                "content-type: application/json",
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
        stdin.write_all(body.unwrap_or("").as_bytes()).unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        let status = code.trim().parse().unwrap_or(0);
        let body = serde_json::from_str(body).unwrap_or(Value::String(body.to_string()));
        Answer { status, body }
    }

    /// Sends a documented operation and checks the answer against the document: its status
    /// must be listed for `(template, method)`, and its body must match that status's schema.
    fn call(
        &mut self,
        uid: Option<u32>,
        method: &str,
        template: &str,
        id: &str,
        body: Option<&str>,
    ) -> Answer {
        let path = template.replace("{id}", id);
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
        let schema = resolve(&self.doc, response)["content"]["application/json"]["schema"].clone();
        let v = validator(&self.doc, &schema);
        let errors: Vec<String> = v
            .iter_errors(&a.body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {path} answered {} with a body that does not match docs/api.yaml: \
             {errors:?}\nbody: {}",
            a.status,
            a.body
        );
        if (200..300).contains(&a.status) {
            self.exercised
                .insert(op["operationId"].as_str().unwrap().to_string());
        }
        a
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = fs::write(self.cgroup_root.join("cgroup.kill"), "1");
        let sessions = self.root.join("state/sessions");
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30)
            && fs::read_dir(&sessions).is_ok_and(|mut r| r.next().is_some())
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        remove_tree(&self.cgroup_root);
    }
}

/// The answer of listSessions contains session `id`.
fn lists(sessions: &Value, id: &str) -> bool {
    sessions.as_array().unwrap().iter().any(|s| s["id"] == id)
}

/// Removes a cgroup directory tree, children first.
fn remove_tree(p: &Path) {
    if let Ok(entries) = fs::read_dir(p) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(p);
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn api_every_documented_operation_answers_as_documented() {
    let _vm = agentd_tests::vm::enter();
    let mut d = Daemon::start();
    let repo = d.repo.to_str().unwrap().to_string();

    let h = d.call(None, "GET", "/health", "", None);
    assert_eq!(h.body["caller_uid"], 0);
    let h = d.call(Some(OTHER_UID), "GET", "/health", "", None);
    assert_eq!(h.body["caller_uid"], OTHER_UID);

    // Bad input is a 400 with a reason, whatever is wrong with it.
    for bad in [
        "{not json",
        "{}",
        r#"{"workspace": "/nonexistent-agentd-api", "argv": ["true"]}"#,
        r#"{"workspace": "relative", "argv": ["true"]}"#,
    ] {
        let a = d.call(None, "POST", "/sessions", "", Some(bad));
        assert_eq!(a.status, 400, "POST /sessions {bad}: {}", a.body);
    }
    let bad_policy = json!({
        "workspace": repo, "argv": ["true"],
        "policy": {"name": ".agentd/policy.toml", "text": "version = 1\n[resources]\nmemroy = \"1G\"\n"}
    });
    let a = d.call(None, "POST", "/sessions", "", Some(&bad_policy.to_string()));
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
    let s = d.call(None, "POST", "/sessions", "", Some(&create.to_string()));
    assert_eq!(s.status, 200, "{}", s.body);
    assert_eq!(s.body["state"], "running");
    let id = s.body["id"].as_str().unwrap().to_string();

    let l = d.call(None, "GET", "/sessions", "", None);
    assert!(lists(&l.body, &id));
    let l = d.call(Some(OTHER_UID), "GET", "/sessions", "", None);
    assert!(!lists(&l.body, &id));
    d.call(None, "GET", "/sessions/{id}", &id, None);
    let nf = d.call(None, "GET", "/sessions/{id}", "no-such-session", None);
    assert_eq!(nf.status, 404);
    for (method, template) in [
        ("GET", "/sessions/{id}"),
        ("GET", "/sessions/{id}/logs"),
        ("GET", "/sessions/{id}/calls"),
        ("POST", "/sessions/{id}/kill"),
        ("DELETE", "/sessions/{id}"),
    ] {
        let a = d.call(Some(OTHER_UID), method, template, &id, None);
        assert_eq!(
            a.status, 403,
            "{method} {template} as uid {OTHER_UID}: {}",
            a.body
        );
    }
    let a = d.call(
        Some(OTHER_UID),
        "POST",
        "/sessions/{id}/calls",
        &id,
        Some(r#"{"argv":["true"]}"#),
    );
    assert_eq!(a.status, 403);

    let call = json!({"argv": ["sh", "-c", "echo out; echo err >&2; exit 3"], "intent": {"memory": "64M"}});
    let c = d.call(
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
    for bad in [
        r#"{"argv": []}"#,
        r#"{"argv": ["true"], "intent": {"memory": "lots"}}"#,
        r#"{"argv": ["true"], "env": {"LD_PRELOAD": "/x.so"}}"#,
        r#"{"argv": "true"}"#,
    ] {
        let a = d.call(None, "POST", "/sessions/{id}/calls", &id, Some(bad));
        assert_eq!(a.status, 400, "POST calls {bad}: {}", a.body);
    }
    let calls = d.call(None, "GET", "/sessions/{id}/calls", &id, None);
    assert_eq!(calls.body.as_array().unwrap().len(), 1, "{}", calls.body);
    d.call(None, "GET", "/sessions/{id}/logs", &id, None);

    let k = d.call(None, "POST", "/sessions/{id}/kill", &id, None);
    assert_eq!(k.body["state"], "killed");
    let a = d.call(
        None,
        "POST",
        "/sessions/{id}/calls",
        &id,
        Some(r#"{"argv":["true"]}"#),
    );
    assert_eq!(a.status, 409, "a call into a killed session: {}", a.body);
    let w = d.call(None, "POST", "/sessions/{id}/wait", &id, None);
    assert!(w.body["ended_at"].is_u64());
    d.call(None, "DELETE", "/sessions/{id}", &id, None);
    let l = d.call(None, "GET", "/sessions", "", None);
    assert!(!lists(&l.body, &id));

    // Nothing undocumented answers, and even axum's own refusals carry an ErrorBody.
    let error_body = validator(&d.doc, &json!({"$ref": "#/components/schemas/ErrorBody"}));
    for (method, path, status) in [("GET", "/nope", 404), ("PUT", "/sessions", 405)] {
        let a = d.raw(None, method, path, Some("{}"));
        assert_eq!(a.status, status, "{method} {path}: {}", a.body);
        assert!(error_body.is_valid(&a.body), "{method} {path}: {}", a.body);
    }

    let all: BTreeSet<String> = documented_operations(&d.doc)
        .iter()
        .map(|(p, m)| {
            d.doc["paths"][p][m]["operationId"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let missed: Vec<_> = all.difference(&d.exercised).collect();
    assert!(
        missed.is_empty(),
        "operations this test never saw succeed: {missed:?}"
    );
}
