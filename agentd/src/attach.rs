//! `agentctl`'s live commands: an attached `run` (the agent's stdout/stderr printed as they
//! come, this terminal's stdin forwarded, the agent's exit status returned), a streamed
//! `exec`, `logs -f`, and the in-process daemon a root `agentctl run` starts when no daemon
//! answers (a private socket, state dir and cgroup root, all removed afterwards).

use std::io::Read;
use std::path::{Path, PathBuf};

use hyper::Method;
use hyper::body::Bytes;

use crate::api::{self, CallInfo, CallRequest, SessionInfo, StdinDone, StreamEvent};
use crate::client::{Client, ClientError};
use crate::routes;

/// `/v1/sessions/{id}`.
pub fn sess(id: &str) -> String {
    routes::SESSION.at(&[id])
}

/// Prints one event: output to our stdout/stderr as it comes (text mode), or the event as
/// one JSON line (`--json`: NDJSON on stdout).
fn print_event(ev: &StreamEvent, json: bool) {
    if json {
        if let Ok(s) = serde_json::to_string(ev) {
            println!("{s}");
        }
        return;
    }
    match ev {
        StreamEvent::Stdout(t) => crate::term::out(t),
        StreamEvent::Stderr(t) => crate::term::err(t),
        StreamEvent::Error(e) => crate::term::err(&format!("agentctl: {e}\n")),
        StreamEvent::Started(_) | StreamEvent::Call(_) | StreamEvent::Session(_) => {}
    }
}

/// Follows a session's output until it ends; returns its final row.
pub async fn follow(c: &Client, id: &str, json: bool) -> Result<Option<SessionInfo>, ClientError> {
    let mut end = None;
    c.stream::<()>(
        Method::GET,
        &format!("{}?follow=true", routes::SESSION_LOGS.at(&[id])),
        None,
        |ev| {
            print_event(&ev, json);
            if let StreamEvent::Session(s) = ev {
                end = Some(*s);
            }
        },
    )
    .await?;
    Ok(end)
}

/// Forwards this process's stdin to the session's stdin until it ends (a plain thread: a
/// blocked terminal read must not hold the runtime at exit).
fn forward_stdin(c: &Client, id: &str) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 << 10];
        let mut input = std::io::stdin().lock();
        loop {
            match input.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.blocking_send(Bytes::copy_from_slice(&buf[..n])).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let c = c.clone();
    let path = routes::SESSION_STDIN.at(&[id]);
    tokio::spawn(async move {
        if let Err(e) = c.feed::<StdinDone>(&path, rx).await {
            eprintln!("agentctl: forwarding stdin: {e}");
        }
    });
}

/// The attached part of `agentctl run`: stdin forwarded, output followed, Ctrl-C kills the
/// session (once); returns the agent's exit status (128+signal when signalled).
pub async fn attach(c: &Client, s: &SessionInfo, json: bool) -> Result<u8, ClientError> {
    forward_stdin(c, &s.id);
    let killer = {
        let c = c.clone();
        let id = s.id.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("agentctl: interrupted: killing session {id}");
                let _ = c
                    .post::<(), SessionInfo>(&routes::SESSION_KILL.at(&[&id]), &())
                    .await;
            }
        })
    };
    let end = follow(c, &s.id, json).await;
    killer.abort();
    let Some(end) = end? else {
        eprintln!(
            "agentctl: the daemon's stream ended before session {} did (daemon restarted?); \
             it may still run: `agentctl logs -f {}`",
            s.id, s.id
        );
        return Ok(125);
    };
    Ok(end.exit_code.unwrap_or(125).clamp(0, 255) as u8)
}

/// `agentctl exec` in text mode: output printed as it comes, then the report.
pub async fn exec_streamed(
    c: &Client,
    session: &str,
    req: &CallRequest,
) -> Result<Option<CallInfo>, ClientError> {
    let mut end = None;
    c.stream(
        Method::POST,
        &format!("{}?stream=true", routes::CALLS.at(&[session])),
        Some(req),
        |ev| {
            print_event(&ev, false);
            if let StreamEvent::Call(call) = ev {
                end = Some(*call);
            }
        },
    )
    .await?;
    Ok(end)
}

/// Whether this process runs with euid 0 (may start an in-process daemon).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A daemon inside this `agentctl` process for one session (`sudo agentctl run` without a
/// running daemon): private socket, state and cgroup root named after this pid.
#[derive(Debug)]
pub struct InProcess {
    pub dir: PathBuf,
    pub cfg: crate::server::Config,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), crate::server::ServeError>>>,
}

impl InProcess {
    /// Starts it and waits until it answers.
    pub async fn start() -> Result<(InProcess, Client), String> {
        let pid = std::process::id();
        let dir = PathBuf::from(format!("/var/lib/agentd/agentctl-run-{pid}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let cfg = crate::server::Config {
            socket: dir.join("agentd.sock"),
            socket_mode: 0o600,
            state_dir: dir.join("state"),
            cgroup_root: PathBuf::from(format!("/sys/fs/cgroup/agentctl-run-{pid}")),
            host_policy: None,
            sandbox_bin: crate::server::sibling_bin(None, "agentd-sandbox"),
            shim_bin: crate::server::sibling_bin(None, "agentd-shim"),
            container_ids: crate::server::ids::in_process_range(pid),
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(crate::server::serve_until(cfg.clone(), async move {
            let _ = rx.await;
        }));
        let mut me = InProcess {
            dir,
            cfg,
            stop: Some(tx),
            task: Some(task),
        };
        let c = Client::new(&me.cfg.socket);
        for _ in 0..600 {
            if c.get::<api::Health>(&routes::HEALTH.at(&[])).await.is_ok() {
                return Ok((me, c));
            }
            if me.task.as_ref().is_some_and(|t| t.is_finished()) {
                let why = match me.task.take() {
                    Some(t) => match t.await {
                        Ok(Err(e)) => e.to_string(),
                        Ok(Ok(())) => "it stopped".to_string(),
                        Err(e) => e.to_string(),
                    },
                    None => String::new(),
                };
                me.cleanup();
                return Err(format!("the in-process daemon did not start: {why}"));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        me.stop().await;
        Err("the in-process daemon did not answer within 30 s".into())
    }

    /// Stops the daemon and removes what it made (the session has ended by then).
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        self.cleanup();
    }

    fn cleanup(&self) {
        let _ = std::fs::remove_dir(&self.cfg.cgroup_root);
        let state = &self.cfg.state_dir;
        for f in ["journal.db", "journal.db-wal", "journal.db-shm"] {
            let _ = std::fs::remove_file(state.join(f));
        }
        if let Ok(rd) = std::fs::read_dir(state.join("logs")) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        // Sessions run with their state kept (undo): unmount and remove each one; this
        // daemon lives for one session, so its checkpoints go with it.
        if let Ok(rd) = std::fs::read_dir(state.join("sessions")) {
            for e in rd.flatten() {
                if let Err(err) = agentd_sandbox::container::destroy_state(&e.path()) {
                    eprintln!("agentctl: removing {}: {err}", e.path().display());
                }
            }
        }
        let _ = std::fs::remove_dir_all(state.join("undo"));
        // Never recursive: a session dir still there may hold a mount.
        for d in [state.join("logs"), state.join("sessions"), state.clone()] {
            let _ = std::fs::remove_dir(d);
        }
        let _ = std::fs::remove_file(&self.cfg.socket);
        if std::fs::remove_dir(&self.dir).is_err() && Path::new(&self.dir).exists() {
            eprintln!(
                "agentctl: {} was left behind (a session's state is still there)",
                self.dir.display()
            );
        }
    }
}
