//! Host unit tests of the API's refusals: the router driven in memory (no socket, the
//! caller's uid injected as connect info), a fake cgroupfs tree in a tempdir (cgctl's
//! `Fake`), a real journal. Nothing here creates a cgroup, mount or process.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::{Config, Daemon, Peer, router};
use crate::api::{SessionInfo, SessionLimits, SessionState};
use crate::journal::Journal;

struct Fixture {
    _dir: tempfile::TempDir,
    daemon: Arc<Daemon>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let cg_parent = dir.path().join("cgroup");
    std::fs::create_dir(&cg_parent).unwrap();
    let fake = cgctl::fs::Fake::default();
    fake.init_root(&cg_parent, &cgctl::CONTROLLERS).unwrap();
    let root = cgctl::Root::create(cg_parent.join("agentd"), Arc::new(fake)).unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let cfg = Config {
        socket: dir.path().join("sock"),
        socket_mode: 0o660,
        state_dir: state.clone(),
        cgroup_root: cg_parent.join("agentd"),
        host_policy: Some(dir.path().join("no-host-policy.toml")),
        sandbox_bin: "/nonexistent/agentd-sandbox".into(),
        shim_bin: "/nonexistent/agentd-shim".into(),
        container_ids: super::ids::IdRange::default(),
    };
    let daemon = Arc::new(Daemon {
        cfg,
        journal: Mutex::new(Journal::open(&state.join("journal.db")).unwrap()),
        root,
        live: Mutex::new(HashMap::new()),
        mem: None,
        sched: crate::sched::Sched::off("unit test"),
        caps: super::approvals::Broker::default(),
        ids_in_flight: Mutex::default(),
    });
    Fixture { _dir: dir, daemon }
}

fn peer(uid: u32) -> Peer {
    Peer {
        uid,
        gid: uid,
        pid: None,
    }
}

async fn call(f: &Fixture, uid: u32, method: &str, path: &str, body: &str) -> (StatusCode, String) {
    let app = router(f.daemon.clone()).layer(MockConnectInfo(peer(uid)));
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn put_session(f: &Fixture, id: &str, owner: u32, state: SessionState) {
    let s = SessionInfo {
        id: id.into(),
        owner_uid: owner,
        workspace: "/w".into(),
        argv: vec!["true".into()],
        state,
        exit_code: None,
        created_at: 1,
        ended_at: None,
        cgroup: "/x".into(),
        limits: SessionLimits {
            memory: 1,
            cpu_millis: 1,
            pids: 1,
            timeout_s: 1,
            agent_memory: 1,
            agent_cpu_millis: 1,
            agent_pids: 1,
        },
        calls: 0,
        error: None,
        container_uid: None,
    };
    f.daemon.journal.lock().unwrap().put_session(&s).unwrap();
}

#[tokio::test]
async fn bad_session_requests_get_400_with_a_reason() {
    let f = fixture();
    let (st, body) = call(
        &f,
        0,
        "POST",
        "/v1/sessions",
        r#"{"workspace":"/","argv":[]}"#,
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(body.contains("argv is empty"), "{body}");
    let (st, body) = call(
        &f,
        0,
        "POST",
        "/v1/sessions",
        r#"{"workspace":"relative/dir","argv":["true"]}"#,
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(body.contains("absolute"), "{body}");
    let (st, body) = call(
        &f,
        0,
        "POST",
        "/v1/sessions",
        r#"{"workspace":"/nonexistent/repo","argv":["true"]}"#,
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(body.contains("/nonexistent/repo"), "{body}");
    // Malformed JSON is refused by the extractor, never a panic.
    let (st, _) = call(&f, 0, "POST", "/v1/sessions", "{not json").await;
    assert!(st.is_client_error(), "{st}");
}

#[tokio::test]
async fn a_refused_policy_is_400_with_its_diagnostics() {
    let f = fixture();
    // A workspace owned by a non-root uid (needs root to chown; skipped otherwise).
    let ws = f.daemon.cfg.state_dir.join("repo");
    std::fs::create_dir(&ws).unwrap();
    if std::os::unix::fs::chown(&ws, Some(1000), Some(1000)).is_err() {
        return;
    }
    let body = serde_json::json!({
        "workspace": ws,
        "argv": ["true"],
        "policy": {"name": "repo.toml", "text": "version = 1\n[resources]\nmemroy = \"1G\"\n"},
    });
    let (st, body) = call(&f, 0, "POST", "/v1/sessions", &body.to_string()).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(
        body.contains("the policy is refused") && body.contains("repo.toml"),
        "{body}"
    );
    // uid 1001 may not start an agent on uid 1000's repo.
    let req = serde_json::json!({"workspace": ws, "argv": ["true"]});
    let (st, body) = call(&f, 1001, "POST", "/v1/sessions", &req.to_string()).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert!(body.contains("belongs to uid 1000"), "{body}");
}

#[tokio::test]
async fn other_uids_get_403_and_see_nothing() {
    let f = fixture();
    put_session(&f, "abc", 0, SessionState::Running);
    for (m, p) in [
        ("GET", "/v1/sessions/abc"),
        ("GET", "/v1/sessions/abc/calls"),
        ("GET", "/v1/sessions/abc/logs"),
        ("POST", "/v1/sessions/abc/kill"),
        ("DELETE", "/v1/sessions/abc"),
    ] {
        let (st, body) = call(&f, 1000, m, p, "").await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{m} {p}: {body}");
        assert!(body.contains("belongs to uid 0"), "{body}");
    }
    let (st, body) = call(&f, 1000, "GET", "/v1/sessions", "").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(body, "[]");
    let (_, body) = call(&f, 0, "GET", "/v1/sessions", "").await;
    assert!(body.contains("\"abc\""), "{body}");
    let (_, body) = call(&f, 1000, "GET", "/v1/health", "").await;
    assert!(body.contains("\"caller_uid\":1000"), "{body}");
}

#[tokio::test]
async fn unknown_and_stopped_sessions_get_404_and_409() {
    let f = fixture();
    let (st, body) = call(&f, 0, "GET", "/v1/sessions/nope", "").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(body.contains("no session nope"), "{body}");
    put_session(&f, "old", 0, SessionState::Exited);
    let (st, body) = call(
        &f,
        0,
        "POST",
        "/v1/sessions/old/calls",
        r#"{"argv":["true"]}"#,
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert!(body.contains("not running"), "{body}");
    let (st, _) = call(&f, 0, "POST", "/v1/sessions/old/kill", "").await;
    assert_eq!(st, StatusCode::CONFLICT);
}

/// The router registers exactly the route table's paths and methods: on each path, a method
/// no route uses is refused with 405 and an `Allow` header listing exactly the table's
/// methods (axum adds HEAD to GET), and none of the table's paths is an unknown route.
#[tokio::test]
async fn routes_answer_exactly_their_methods() {
    let f = fixture();
    for r in crate::routes::DAEMON {
        let path = r.at(&["x", "1"]);
        let app = router(f.daemon.clone()).layer(MockConnectInfo(peer(0)));
        let req = Request::builder()
            .method("PATCH")
            .uri(&path)
            .body(Body::empty())
            .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
        let allow = resp
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        let mut got: Vec<&str> = allow
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty() && *m != "head")
            .collect();
        got.sort_unstable();
        let mut want = r.methods.to_vec();
        want.sort_unstable();
        assert_eq!(got, want, "{path}");
    }
    let (st, body) = call(&f, 0, "GET", "/v1/no-such-route", "").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(body.contains("no such route"), "{body}");
}
