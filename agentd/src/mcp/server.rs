//! The MCP server proper (an rmcp [`ServerHandler`]): tools that run as calls of one agentd
//! session (exec, the file tools, status), resources (the session, its calls), progress
//! notifications from the call's streamed output, and cancellation that kills the call's
//! cgroup through `POST …/calls/{n}/kill`. Nothing here touches the host's files or cgroups:
//! every action is a daemon API request, with the rights of `agentctl mcp`'s user.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    InitializeResult, ListResourcesResult, ListToolsResult, PaginatedRequestParams,
    ProgressNotificationParam, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult,
    Resource, ResourceContents, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::backend::Backend;
use super::report::{self, Capture};
use super::tools::{self, ExecArgs, ListArgs, NoArgs, ReadFileArgs, WriteFileArgs};
use crate::api::{CallInfo, CallRequest, StreamEvent};
use crate::client::ClientError;

/// Least time between two progress notifications of one call.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// How long a cancelled call may take to end after its cgroup was killed before the tool
/// answers anyway (it never hangs on a daemon that does not answer).
const CANCEL_GRACE: Duration = Duration::from_secs(15);

/// The server for one session; cheap to clone (one per HTTP client).
#[derive(Debug)]
pub struct McpServer<B> {
    inner: Arc<Inner<B>>,
}

impl<B> Clone for McpServer<B> {
    fn clone(&self) -> Self {
        McpServer {
            inner: self.inner.clone(),
        }
    }
}

#[derive(Debug)]
struct Inner<B> {
    backend: B,
    session: String,
    /// The workspace's path (the same inside the sandbox).
    workspace: PathBuf,
}

/// How a call ended, as the tools see it.
struct Ran {
    call: CallInfo,
    out: Capture,
    err: Capture,
    cancelled: bool,
}

impl<B: Backend> McpServer<B> {
    pub fn new(backend: B, session: String, workspace: PathBuf) -> McpServer<B> {
        McpServer {
            inner: Arc::new(Inner {
                backend,
                session,
                workspace,
            }),
        }
    }

    /// Runs one call, streaming: progress to the client while it runs, its cgroup killed if
    /// the client cancels. `Err` is the daemon's refusal (or its absence).
    async fn run(
        &self,
        req: CallRequest,
        mut out: Capture,
        mut err: Capture,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<Ran, ClientError> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let stream = self.inner.backend.run(req, tx);
        tokio::pin!(stream);
        let token = ctx.meta.get_progress_token();
        let mut last_progress: Option<Instant> = None;
        let (mut n, mut end, mut failed) = (None, None, None);
        let (mut streaming, mut cancelled) = (true, false);
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                r = &mut stream, if streaming => {
                    streaming = false;
                    if let Err(e) = r {
                        failed = Some(e);
                    }
                }
                ev = rx.recv() => {
                    let Some(ev) = ev else { break };
                    let mut note = None;
                    match ev {
                        StreamEvent::Started(c) => {
                            n = Some(c.n);
                            if cancelled {
                                self.kill(c.n).await;
                            }
                            note = Some(format!("call {} started: {}", c.n, report::figures(&c)));
                        }
                        StreamEvent::Stdout(t) => {
                            out.push(t.as_bytes());
                            note = t.lines().last().map(str::to_string);
                        }
                        StreamEvent::Stderr(t) => {
                            err.push(t.as_bytes());
                            note = t.lines().last().map(|l| format!("stderr: {l}"));
                        }
                        StreamEvent::Call(c) => end = Some(*c),
                        StreamEvent::Error(e) => {
                            failed = Some(ClientError::Api {
                                status: hyper::StatusCode::INTERNAL_SERVER_ERROR,
                                reason: e,
                            });
                        }
                        StreamEvent::Session(_) => {}
                    }
                    if let (Some(t), Some(msg)) = (&token, note)
                        && last_progress.is_none_or(|l| l.elapsed() >= PROGRESS_EVERY)
                    {
                        last_progress = Some(Instant::now());
                        let p = (out.total() + err.total()) as f64;
                        let _ = ctx
                            .peer
                            .notify_progress(ProgressNotificationParam::new(t.clone(), p).with_message(msg))
                            .await;
                    }
                }
                () = ctx.ct.cancelled(), if !cancelled => {
                    cancelled = true;
                    deadline = Some(tokio::time::Instant::now() + CANCEL_GRACE);
                    if let Some(n) = n {
                        self.kill(n).await;
                    }
                }
                () = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => break,
            }
        }
        match (end, failed) {
            (Some(call), _) => Ok(Ran {
                call,
                out,
                err,
                cancelled,
            }),
            (None, Some(e)) => Err(e),
            (None, None) => Err(ClientError::Api {
                status: hyper::StatusCode::GATEWAY_TIMEOUT,
                reason: if cancelled {
                    format!(
                        "cancelled; call {} did not end within {}s of its cgroup's kill",
                        n.map_or("?".into(), |n| n.to_string()),
                        CANCEL_GRACE.as_secs()
                    )
                } else {
                    "the daemon's stream ended before the call's report".into()
                },
            }),
        }
    }

    async fn kill(&self, n: u64) {
        let _ = self
            .inner
            .backend
            .post(&format!("/calls/{n}/kill"), json!({}))
            .await;
    }

    async fn exec(
        &self,
        a: ExecArgs,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let req = a
            .request(&self.inner.workspace)
            .map_err(|e| McpError::invalid_params(format!("exec: {e}"), None))?;
        let max = a.max_output();
        Ok(
            match self
                .run(req, Capture::new(max), Capture::new(max), ctx)
                .await
            {
                Ok(r) => report::exec_result(&r.call, &r.out, &r.err, r.cancelled),
                Err(e) => report::refused("exec", &e),
            },
        )
    }

    /// A file tool: `argv` runs as a call; its stdout (first `max` bytes) is the answer.
    async fn file_call(
        &self,
        tool: &str,
        path: &str,
        argv: Vec<String>,
        max: usize,
        ctx: &RequestContext<RoleServer>,
    ) -> CallToolResult {
        let req = CallRequest {
            argv,
            cwd: None,
            env: Default::default(),
            intent: Default::default(),
        };
        let r = match self
            .run(req, Capture::head(max + 1), Capture::head(8 << 10), ctx)
            .await
        {
            Ok(r) => r,
            Err(e) => return report::refused(tool, &e),
        };
        if report::reason(&r.call, r.cancelled).is_some() || r.call.exit_code != Some(0) {
            let mut res = report::exec_result(&r.call, &r.out, &r.err, r.cancelled);
            res.is_error = Some(true);
            res.content.insert(
                0,
                ContentBlock::text(format!(
                    "{tool} {path}: refused or failed inside the sandbox: {}",
                    r.err.text().trim()
                )),
            );
            return res;
        }
        let more = r.out.total() > max as u64;
        let mut text = r.out.text();
        if more {
            text.truncate(text.floor_char_boundary(max));
        }
        let mut res = CallToolResult::success(vec![ContentBlock::text(text.clone())]);
        res.structured_content = Some(json!({
            "path": path, "call": r.call.n, "text": text, "truncated": more,
        }));
        if more {
            res.content.push(ContentBlock::text(format!(
                "[{tool}: cut at {max} bytes; the file goes on: read on with offset]"
            )));
        }
        res
    }

    async fn status(&self) -> CallToolResult {
        let b = &self.inner.backend;
        let session = match b.get("").await {
            Ok(s) => s,
            Err(e) => return report::refused("status", &e),
        };
        // Live usage exists only while the session runs (409 afterwards).
        let stats = b.get("/stats").await.ok();
        let calls = b.get("/calls").await.ok();
        let ncalls = calls.as_ref().and_then(Value::as_array).map_or(0, Vec::len);
        let l = &session["limits"];
        let u = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64);
        let mut text = format!(
            "session {} ({}), workspace {}\nlimits: memory {} · cpu {} millicores · pids {} · \
             timeout {}s; agent leaf memory {} · pids {}\ncalls so far: {ncalls}",
            self.inner.session,
            session["state"].as_str().unwrap_or("?"),
            self.inner.workspace.display(),
            u(l, "memory").map_or("-".into(), crate::ctl::bytes),
            u(l, "cpu_millis").unwrap_or(0),
            u(l, "pids").unwrap_or(0),
            u(l, "timeout_s").unwrap_or(0),
            u(l, "agent_memory").map_or("-".into(), crate::ctl::bytes),
            u(l, "agent_pids").unwrap_or(0),
        );
        if let Some(s) = &stats {
            let us = &s["usage"];
            text.push_str(&format!(
                "\nusage now: memory {} · cpu {}ms · pids {} · oom kills {} · running calls {}",
                u(us, "memory_current").map_or("-".into(), crate::ctl::bytes),
                u(us, "cpu_usage_usec").unwrap_or(0) / 1000,
                u(us, "pids_current").map_or("-".into(), |p| p.to_string()),
                u(us, "oom_kills").unwrap_or(0),
                s["calls"].as_array().map_or(0, Vec::len),
            ));
        }
        let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
        r.structured_content = Some(json!({
            "session": session, "stats": stats, "calls": ncalls,
        }));
        r
    }

    fn uri(&self, what: &str) -> String {
        format!("agentd://sessions/{}{what}", self.inner.session)
    }
}

fn invalid(e: String) -> McpError {
    McpError::invalid_params(e, None)
}

impl<B: Backend> ServerHandler for McpServer<B> {
    fn get_info(&self) -> ServerConfig {
        InitializeResult::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
        .with_server_info(Implementation::new("agentd", env!("CARGO_PKG_VERSION")))
        .with_instructions(format!(
            "Every tool runs inside agentd session {} (workspace {}): each exec is one tool \
             call in its own cgroup with the policy's limits; files are read and written \
             through the sandbox. Committing the session's changes or approving grants is \
             done by a person with agentctl, not through this server.",
            self.inner.session,
            self.inner.workspace.display()
        ))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(tools::list()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let args = request.arguments;
        let name = request.name.as_ref();
        let r = match name {
            "exec" => {
                let a = tools::parse::<ExecArgs>(name, args).map_err(invalid)?;
                self.exec(a, &context).await?
            }
            "read_file" => {
                let a = tools::parse::<ReadFileArgs>(name, args).map_err(invalid)?;
                self.file_call(name, &a.path, a.argv(), a.max(), &context)
                    .await
            }
            "write_file" => {
                let a = tools::parse::<WriteFileArgs>(name, args).map_err(invalid)?;
                let mut r = self.file_call(name, &a.path, a.argv(), 0, &context).await;
                if r.is_error != Some(true) {
                    r.content = vec![ContentBlock::text(format!(
                        "wrote {} bytes to {}",
                        a.content.len(),
                        a.path
                    ))];
                }
                r
            }
            "list" => {
                let a = tools::parse::<ListArgs>(name, args).map_err(invalid)?;
                let path = a.path.clone().unwrap_or_else(|| ".".into());
                self.file_call(name, &path, a.argv(), tools::OUTPUT_MAX as usize, &context)
                    .await
            }
            "status" => {
                tools::parse::<NoArgs>(name, args).map_err(invalid)?;
                self.status().await
            }
            other => {
                return Err(McpError::invalid_params(
                    format!(
                        "unknown tool {other:?}; tools/list names the tools (commit and \
                         approve are deliberately not tools: a person does them with agentctl)"
                    ),
                    None,
                ));
            }
        };
        Ok(r.into())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        Ok(ListResourcesResult::with_all_items(vec![
            Resource::new(self.uri(""), "session")
                .with_description("The agentd session: state, workspace, limits (JSON).")
                .with_mime_type("application/json"),
            Resource::new(self.uri("/calls"), "calls")
                .with_description(
                    "The session's tool calls with their limits and resource reports (JSON), \
                     as `agentctl calls` shows them.",
                )
                .with_mime_type("application/json"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let uri = request.uri;
        let suffix = if uri == self.uri("") {
            ""
        } else if uri == self.uri("/calls") {
            "/calls"
        } else {
            return Err(McpError::resource_not_found(
                format!("no resource {uri}; resources/list names them"),
                None,
            ));
        };
        let v = self
            .inner
            .backend
            .get(suffix)
            .await
            .map_err(|e| McpError::internal_error(format!("{uri}: {e}"), None))?;
        let text = serde_json::to_string_pretty(&v)
            .map_err(|e| McpError::internal_error(e.to_string(), None))?;
        Ok(ReadResourceResult::new(vec![
            ResourceContents::text(text, uri).with_mime_type("application/json"),
        ])
        .into())
    }
}
