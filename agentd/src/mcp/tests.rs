//! The server end to end over in-memory pipes, with a fake daemon: the JSON-RPC gate, the
//! SDK's handling of unknown methods, schema validation errors, exec's answer with progress,
//! and cancellation killing the call. (The real daemon and a real client: tests/tests/mcp.rs
//! in the VM.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Notify, mpsc};

use super::backend::Backend;
use super::screen;
use super::server::McpServer;
use crate::api::{CallInfo, CallLimits, CallRequest, CallState, StreamEvent};
use crate::client::ClientError;

#[derive(Default)]
struct Fake {
    killed: Mutex<Vec<u64>>,
    kill: Notify,
    ran: Mutex<Vec<CallRequest>>,
}

fn info(n: u64, argv: &[String]) -> CallInfo {
    CallInfo::running(
        "s1",
        n,
        argv,
        Default::default(),
        CallLimits {
            memory: 64 << 20,
            cpu_class: agentd_policy::CpuClass::Latency,
            cpu_weight: 200,
            timeout_s: 60,
            pids: 64,
            rule: None,
            notes: vec![],
        },
    )
}

impl Backend for Arc<Fake> {
    async fn get(&self, suffix: &str) -> Result<Value, ClientError> {
        Ok(match suffix {
            "" => json!({"id": "s1", "state": "running", "limits": {"memory": 1 << 30}}),
            "/calls" => json!([]),
            _ => {
                return Err(ClientError::Api {
                    status: hyper::StatusCode::CONFLICT,
                    reason: "not running".into(),
                });
            }
        })
    }

    async fn post(&self, suffix: &str, _body: Value) -> Result<Value, ClientError> {
        let n: u64 = suffix
            .strip_prefix("/calls/")
            .and_then(|s| s.strip_suffix("/kill"))
            .and_then(|s| s.parse().ok())
            .expect("only kills are posted");
        self.killed.lock().unwrap().push(n);
        self.kill.notify_one();
        Ok(json!({"session": "s1", "n": n}))
    }

    async fn run(
        &self,
        req: CallRequest,
        events: mpsc::UnboundedSender<StreamEvent>,
    ) -> Result<(), ClientError> {
        self.ran.lock().unwrap().push(req.clone());
        let n = self.ran.lock().unwrap().len() as u64;
        let mut c = info(n, &req.argv);
        let _ = events.send(StreamEvent::Started(Box::new(c.clone())));
        let _ = events.send(StreamEvent::Stdout("hello\n".into()));
        c.state = CallState::Exited;
        if req.argv.iter().any(|a| a == "sleep") {
            self.kill.notified().await;
            c.exit_code = Some(137);
        } else {
            c.exit_code = Some(0);
            let mut r = cgctl::Report {
                path: String::new(),
                limits: Default::default(),
                wall_ms: 5,
                stats: Default::default(),
            };
            r.stats.cpu.usage_usec = 3000;
            c.report = Some(r);
        }
        let _ = events.send(StreamEvent::Call(Box::new(c)));
        Ok(())
    }
}

/// A client's end of the pipes.
struct Wire {
    tx: tokio::io::WriteHalf<tokio::io::DuplexStream>,
    rx: BufReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>,
    /// Notifications seen while waiting for answers.
    notes: Vec<Value>,
}

impl Wire {
    async fn send_raw(&mut self, line: &[u8]) {
        self.tx.write_all(line).await.unwrap();
        self.tx.write_all(b"\n").await.unwrap();
    }

    async fn send(&mut self, v: Value) {
        self.send_raw(v.to_string().as_bytes()).await;
    }

    /// The next answer (a message with an id or an error), keeping notifications aside.
    async fn answer(&mut self) -> Value {
        loop {
            let mut l = String::new();
            let read = tokio::time::timeout(Duration::from_secs(10), self.rx.read_line(&mut l));
            assert!(
                read.await.expect("an answer within 10 s").unwrap() > 0,
                "EOF"
            );
            let v: Value = serde_json::from_str(&l).unwrap();
            if v.get("method").is_some() && v.get("id").is_none() {
                self.notes.push(v);
                continue;
            }
            return v;
        }
    }

    async fn request(&mut self, id: u64, method: &str, params: Value) -> Value {
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        let a = self.answer().await;
        assert_eq!(a["id"], id, "{a}");
        a
    }
}

async fn start() -> (Wire, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let server = McpServer::new(fake.clone(), "s1".into(), "/work/repo".into());
    let (client, ours) = tokio::io::duplex(1 << 16);
    let (ours_rd, ours_wr) = tokio::io::split(ours);
    tokio::spawn(super::serve_streams(server, ours_rd, ours_wr));
    let (rd, wr) = tokio::io::split(client);
    let mut w = Wire {
        tx: wr,
        rx: BufReader::new(rd),
        notes: vec![],
    };
    let init = w
        .request(
            0,
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "test", "version": "0"}}),
        )
        .await;
    assert_eq!(init["result"]["serverInfo"]["name"], "agentd", "{init}");
    w.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await;
    (w, fake)
}

#[tokio::test]
async fn malformed_unknown_and_oversized_messages_get_json_rpc_errors() {
    let (mut w, _) = start().await;
    w.send_raw(b"{not json").await;
    assert_eq!(w.answer().await["error"]["code"], screen::PARSE_ERROR);
    w.send_raw(br#"{"jsonrpc":"1.0","id":7,"method":"ping"}"#)
        .await;
    let a = w.answer().await;
    assert_eq!(
        (a["id"].clone(), a["error"]["code"].clone()),
        (json!(7), json!(-32600))
    );
    w.send_raw(&vec![b' '; screen::MAX_MESSAGE + 1]).await;
    let a = w.answer().await;
    assert!(
        a["error"]["message"].as_str().unwrap().contains("exceeds"),
        "{a}"
    );
    let a = w.request(8, "no/such/method", json!({})).await;
    assert_eq!(a["error"]["code"], -32601, "{a}");
    // Still serving after all that.
    let a = w.request(9, "tools/list", json!({})).await;
    let names: Vec<_> = a["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["exec", "read_file", "write_file", "list", "status"]);
}

#[tokio::test]
async fn invalid_tool_input_is_an_invalid_params_error_with_the_reason() {
    let (mut w, fake) = start().await;
    let a = w
        .request(
            1,
            "tools/call",
            json!({"name": "exec", "arguments": {"argv": "ls"}}),
        )
        .await;
    assert_eq!(a["error"]["code"], -32602, "{a}");
    assert!(
        a["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("exec: invalid type"),
        "{a}"
    );
    let a = w
        .request(2, "tools/call", json!({"name": "commit", "arguments": {}}))
        .await;
    assert!(
        a["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown tool"),
        "{a}"
    );
    assert!(fake.ran.lock().unwrap().is_empty());
}

#[tokio::test]
async fn exec_answers_output_and_report_with_progress_notes() {
    let (mut w, fake) = start().await;
    let a = w
        .request(
            1,
            "tools/call",
            json!({"name": "exec", "arguments": {"command": "echo hello", "cwd": "src"},
                   "_meta": {"progressToken": "p1"}}),
        )
        .await;
    let r = &a["result"];
    assert_eq!(r["isError"], false, "{a}");
    assert_eq!(r["structuredContent"]["stdout"], "hello\n");
    assert_eq!(r["structuredContent"]["exit_code"], 0);
    assert!(
        r["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("call 1: exit 0 · wall 5ms")
    );
    let req = fake.ran.lock().unwrap()[0].clone();
    assert_eq!(req.argv, ["sh", "-c", "echo hello"]);
    assert_eq!(req.cwd.unwrap(), std::path::Path::new("/work/repo/src"));
    assert!(
        w.notes.iter().any(
            |n| n["method"] == "notifications/progress" && n["params"]["progressToken"] == "p1"
        ),
        "{:?}",
        w.notes
    );
}

#[tokio::test]
async fn cancelling_a_call_kills_its_cgroup() {
    let (mut w, fake) = start().await;
    w.send(json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                  "params": {"name": "exec", "arguments": {"argv": ["sleep", "600"]}}}))
        .await;
    // Let the call start, then cancel it as a client does.
    for _ in 0..100 {
        if !fake.ran.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    w.send(
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                  "params": {"requestId": 5, "reason": "user"}}),
    )
    .await;
    for _ in 0..500 {
        if !fake.killed.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(*fake.killed.lock().unwrap(), [1]);
    // The server goes on.
    let a = w.request(6, "tools/list", json!({})).await;
    assert!(a["result"]["tools"].is_array(), "{a}");
}

/// One POST to the HTTP app on a loopback port: (status, body).
async fn post(addr: std::net::SocketAddr, body: &'static str) -> (u16, String) {
    use http_body_util::{BodyExt, Full};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake::<_, Full<hyper::body::Bytes>>(
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::post("/mcp")
        .header("host", format!("127.0.0.1:{}", addr.port()))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(Full::new(hyper::body::Bytes::from_static(body.as_bytes())))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn streamable_http_screens_bodies_and_serves_initialize() {
    let server = McpServer::new(Arc::new(Fake::default()), "s1".into(), "/w".into());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, super::http_app(server)).await });
    let (status, body) = post(addr, "{nope").await;
    assert_eq!(status, 400, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], screen::PARSE_ERROR, "{body}");
    let (status, body) = post(addr, r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#).await;
    assert_eq!((status, body.contains("batches")), (400, true), "{body}");
    let (status, body) = post(
        addr,
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"serverInfo\"") && body.contains("agentd"),
        "{body}"
    );
}
