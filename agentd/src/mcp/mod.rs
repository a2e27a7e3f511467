//! `agentctl mcp`: a Model Context Protocol server that lets an agent running outside
//! agentd (next to its model API) run every tool call inside one agentd session. It attaches
//! to a session (`--session ID`) or creates one (`--workspace DIR [--policy FILE]`) through the
//! daemon's API, then serves MCP on stdio, or Streamable HTTP on a Unix socket or a loopback
//! port (`--http`). See docs/mcp.md.
//!
//! Submodules: [`screen`] (the JSON-RPC gate, fuzzed), [`frame`] (transports around the
//! SDK), [`tools`] (inputs, schemas, validation), [`report`] (answers), [`backend`] (the
//! daemon), [`server`] (the rmcp handler).

pub mod backend;
pub mod frame;
pub mod report;
pub mod screen;
pub mod server;
pub mod tools;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use rmcp::ServiceExt;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio::sync::mpsc;

use crate::api::{self, CreateSession, PolicySource, SessionInfo};
use crate::attach::sess;
use crate::client::Client;
use backend::Daemon;
use server::McpServer;

/// The agent command of a session `agentctl mcp` creates: nothing runs in the agent's leaf
/// (the agent is outside); the session lives until its policy's timeout or until killed.
pub const IDLE_AGENT: [&str; 2] = ["sleep", "infinity"];

/// `agentctl mcp` options.
#[derive(Debug, Clone)]
pub struct Options {
    /// The daemon's socket.
    pub socket: PathBuf,
    /// Attach to this running session.
    pub session: Option<String>,
    /// Or create one on this workspace (default: the current directory).
    pub workspace: Option<PathBuf>,
    /// With this repo policy (default `.agentd/policy.toml` of the workspace if present).
    pub policy: Option<PathBuf>,
    /// Serve Streamable HTTP here (`unix:PATH` or a loopback `IP:PORT`) instead of stdio.
    pub http: Option<String>,
    /// Leave a session this server created running when it exits.
    pub keep: bool,
}

/// Where `--http` serves.
#[derive(Debug, Clone, PartialEq)]
pub enum HttpAt {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

/// Parses `--http`: `unix:PATH`, or `IP:PORT` on a loopback address only (the server steers
/// a session with its user's rights: it must not be reachable from elsewhere).
pub fn parse_http(s: &str) -> Result<HttpAt, String> {
    if let Some(p) = s.strip_prefix("unix:") {
        if p.is_empty() {
            return Err("--http unix:PATH needs a path".into());
        }
        return Ok(HttpAt::Unix(PathBuf::from(p)));
    }
    let s2 = s.replace("localhost:", "127.0.0.1:");
    let addr: SocketAddr = s2
        .parse()
        .map_err(|e| format!("--http {s}: expected unix:PATH or IP:PORT ({e})"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "--http {s}: only a loopback address (127.0.0.1, ::1) or a Unix socket; this \
             server runs commands in your session and has no authentication of its own"
        ));
    }
    Ok(HttpAt::Tcp(addr))
}

/// Runs the server until the client goes away (stdio) or SIGINT/SIGTERM (HTTP).
pub async fn run(o: Options) -> Result<(), String> {
    let http = o.http.as_deref().map(parse_http).transpose()?;
    let client = Client::new(&o.socket);
    let (session, created) = match &o.session {
        Some(id) => {
            let s: SessionInfo = client.get(&sess(id)).await.map_err(|e| e.to_string())?;
            if s.state.ended() {
                return Err(format!(
                    "session {id} is {}: attach to a running session",
                    s.state.as_str()
                ));
            }
            (s, false)
        }
        None => (create(&client, &o).await?, true),
    };
    eprintln!(
        "agentctl mcp: session {} ({}; workspace {}){}",
        session.id,
        if created { "created" } else { "attached" },
        session.workspace.display(),
        if created && !o.keep {
            "; killed when this server exits (--keep leaves it)"
        } else {
            ""
        }
    );
    let server = McpServer::new(
        Daemon {
            client: client.clone(),
            session: session.id.clone(),
        },
        session.id.clone(),
        session.workspace.clone(),
    );
    let served = match http {
        None => serve_stdio(server).await,
        Some(at) => serve_http(server, at).await,
    };
    if created && !o.keep {
        let _ = client
            .post::<_, SessionInfo>(&format!("{}/kill", sess(&session.id)), &())
            .await;
    }
    served
}

async fn create(client: &Client, o: &Options) -> Result<SessionInfo, String> {
    let ws = match &o.workspace {
        Some(w) => w.clone(),
        None => std::env::current_dir().map_err(|e| e.to_string())?,
    };
    let ws = std::path::absolute(&ws).map_err(|e| format!("{}: {e}", ws.display()))?;
    let default_policy = ws.join(agentd_policy::REPO_POLICY);
    let policy = match &o.policy {
        Some(p) => Some(p.clone()),
        None => default_policy.exists().then_some(default_policy),
    };
    // Read with the user's rights: the daemon never opens it.
    let policy = match policy {
        Some(p) => Some(PolicySource {
            name: p.display().to_string(),
            text: std::fs::read_to_string(&p)
                .map_err(|e| format!("policy {}: {e}", p.display()))?,
        }),
        None => None,
    };
    let req = CreateSession {
        workspace: ws,
        policy,
        argv: IDLE_AGENT.iter().map(|s| s.to_string()).collect(),
        stdin: false,
        // The agent runs as the workspace's owner (as for `agentctl run` without --user).
        user: None,
    };
    client
        .post(&format!("{}/sessions", api::PREFIX), &req)
        .await
        .map_err(|e| e.to_string())
}

/// MCP over stdin/stdout, every incoming line screened first ([`frame::pump_in`]).
pub async fn serve_stdio<B: backend::Backend>(server: McpServer<B>) -> Result<(), String> {
    serve_streams(server, tokio::io::stdin(), tokio::io::stdout()).await
}

/// MCP over any pair of byte streams (stdio; host tests use in-memory pipes).
pub async fn serve_streams<B, R, W>(server: McpServer<B>, input: R, output: W) -> Result<(), String>
where
    B: backend::Backend,
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (ours, sdk) = tokio::io::duplex(1 << 20);
    let (ours_rd, ours_wr) = tokio::io::split(ours);
    let (sdk_rd, sdk_wr) = tokio::io::split(sdk);
    let (tx, rx) = mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(frame::write_out(output, rx));
    let reader = tokio::spawn(frame::pump_in(input, ours_wr, tx.clone()));
    let forward = tokio::spawn(frame::pump_sdk_out(ours_rd, tx));
    let running = server
        .serve((sdk_rd, sdk_wr))
        .await
        .map_err(|e| format!("MCP session: {e}"))?;
    let end = running.waiting().await;
    reader.abort();
    let _ = forward.await;
    let _ = writer.await;
    end.map(|_| ()).map_err(|e| format!("MCP session: {e}"))
}

/// Streamable HTTP at `/mcp` on a Unix socket (mode 0600) or a loopback port, until
/// SIGINT/SIGTERM.
pub async fn serve_http<B: backend::Backend>(
    server: McpServer<B>,
    at: HttpAt,
) -> Result<(), String> {
    let svc = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default().with_max_request_body_bytes(screen::MAX_MESSAGE),
    );
    let app = axum::Router::new()
        .route_service("/mcp", svc)
        .layer(axum::middleware::from_fn(frame::guard_http));
    let stop = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    };
    match at {
        HttpAt::Unix(path) => {
            let l = tokio::net::UnixListener::bind(&path)
                .map_err(|e| format!("--http unix:{}: {e}", path.display()))?;
            // Only its user may connect: the socket steers the session.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("chmod 0600 {}: {e}", path.display()))?;
            eprintln!(
                "agentctl mcp: Streamable HTTP on unix:{} at /mcp",
                path.display()
            );
            let r = axum::serve(l, app).with_graceful_shutdown(stop).await;
            let _ = std::fs::remove_file(&path);
            r.map_err(|e| format!("serving {}: {e}", path.display()))
        }
        HttpAt::Tcp(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("--http {addr}: {e}"))?;
            let local = l.local_addr().map_err(|e| e.to_string())?;
            eprintln!("agentctl mcp: Streamable HTTP on http://{local}/mcp");
            axum::serve(l, app)
                .with_graceful_shutdown(stop)
                .await
                .map_err(|e| format!("serving {addr}: {e}"))
        }
    }
}

#[cfg(test)]
mod tests;
