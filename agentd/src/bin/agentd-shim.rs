//! `agentd-shim`: the agent's `$SHELL` inside a session container. Run as `-c CMD …`, it
//! asks the daemon over the session's socket (`$AGENTD_SHIM_SOCKET`) for a call cgroup for
//! CMD (intent from `$AGENTD_INTENT`), is moved into it by the daemon, runs the real shell
//! (`$AGENTD_REAL_SHELL`, default /bin/sh) as its child so everything CMD starts stays in
//! the call, reports the exit status, and exits with it. Anything else (an interactive
//! shell, no socket) runs the real shell in place: the agent's own leaf and its tight limits
//! are then what applies, so skipping the shim gains nothing.
//!
//! Run as `agentd-cap request RESOURCE --reason …` (argv0 `agentd-cap`, or `agentd-shim cap
//! request …`) it files a capability request over the same socket and blocks until it is
//! answered (docs/capabilities.md).
//!
//! Deliberately small and synchronous (one HTTP/1.1 request per connection, `Connection:
//! close`): it runs once per shell command, often under emulation.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use agentd::api::{ShimAnswer, ShimCall, ShimExit};
use agentd::routes;

fn real_shell() -> String {
    std::env::var("AGENTD_REAL_SHELL").unwrap_or_else(|_| "/bin/sh".to_string())
}

/// One POST; returns the status code and body.
fn post(socket: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = UnixStream::connect(socket)?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: agentd\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header end"))?;
    let status = std::str::from_utf8(&resp[..split])
        .ok()
        .and_then(|h| h.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad HTTP status line"))?;
    Ok((status, resp[split + 4..].to_vec()))
}

/// Why a request for a call failed: the daemon said no, or it did not answer (retried).
enum AskError {
    Refused(String),
    Io(String),
}

fn ask(socket: &str, cmd: &str) -> Result<ShimAnswer, AskError> {
    let req = ShimCall {
        // The command's words, for the intent rules (`cargo test …` → test-runner).
        argv: cmd.split_whitespace().map(str::to_string).collect(),
        intent: std::env::var("AGENTD_INTENT").unwrap_or_default(),
    };
    let body = serde_json::to_vec(&req).map_err(|e| AskError::Refused(e.to_string()))?;
    let (status, body) = post(socket, &routes::SHIM_CALLS.at(&[]), &body).map_err(|e| {
        if restarting(&e) {
            AskError::Io(e.to_string())
        } else {
            AskError::Refused(e.to_string())
        }
    })?;
    if status != 200 {
        return Err(AskError::Refused(format!(
            "daemon refused ({status}): {}",
            String::from_utf8_lossy(&body)
        )));
    }
    serde_json::from_slice(&body).map_err(|e| AskError::Refused(e.to_string()))
}

/// The socket is there but nobody answers, or the answer was cut: the daemon is restarting
/// (a missing socket, by contrast, is not this session's).
fn restarting(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused
            | ConnectionReset
            | ConnectionAborted
            | BrokenPipe
            | UnexpectedEof
            | Other
    )
}

/// How long the shim keeps trying to report an exit status while the daemon restarts.
const REPORT_RETRY: Duration = Duration::from_secs(60);

/// Posts the exit status; while the daemon is restarting (socket gone or refusing) retries
/// for up to [`REPORT_RETRY`]: the shim is still in the call's cgroup, so the next daemon
/// (which re-adopts the session and rebinds this socket) waits for it and records the status.
fn report_exit(socket: &str, n: u64, body: &[u8]) -> Result<(), String> {
    let path = routes::SHIM_EXIT.at(&[&n.to_string()]);
    let start = Instant::now();
    loop {
        match post(socket, &path, body) {
            Ok((200, _)) => return Ok(()),
            Ok((status, b)) => {
                return Err(format!(
                    "daemon refused ({status}): {}",
                    String::from_utf8_lossy(&b)
                ));
            }
            Err(e) if start.elapsed() >= REPORT_RETRY => return Err(e.to_string()),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// [`ask`], retried for up to [`REPORT_RETRY`] while the daemon does not answer (it is
/// restarting: the command waits for it rather than run outside a call cgroup). Returns the
/// answer and whether an earlier attempt failed.
fn ask_retrying(socket: &str, cmd: &str) -> Result<(ShimAnswer, bool), String> {
    let start = Instant::now();
    let mut retried = false;
    loop {
        match ask(socket, cmd) {
            Ok(a) => return Ok((a, retried)),
            Err(AskError::Refused(e)) => return Err(e),
            Err(AskError::Io(e)) if start.elapsed() >= REPORT_RETRY => return Err(e),
            Err(AskError::Io(_)) => {
                retried = true;
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
}

/// `agentd-cap request RESOURCE [--reason TEXT]` (the shim run as `agentd-cap`, or
/// `agentd-shim cap request …`): files the request over the session's socket and waits for
/// the answer. Exit 0 approved, 3 denied (or expired), 2 bad usage or no daemon.
fn cap(args: &[String]) -> ExitCode {
    let usage =
        "usage: agentd-cap request RESOURCE [--reason TEXT]   (e.g. net:api.github.com:443)";
    let (Some("request"), Some(resource)) = (args.first().map(String::as_str), args.get(1)) else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    let mut reason = String::new();
    let mut rest = args[2..].iter();
    while let Some(a) = rest.next() {
        match (a.as_str(), rest.next()) {
            ("--reason", Some(r)) => reason.clone_from(r),
            _ => {
                eprintln!("{usage}");
                return ExitCode::from(2);
            }
        }
    }
    // The session's socket is at a fixed path in every container.
    let socket = std::env::var("AGENTD_SHIM_SOCKET")
        .unwrap_or_else(|_| agentd::server::apply::SOCKET_IN_CONTAINER.to_string());
    let body = serde_json::json!({ "resource": resource, "reason": reason }).to_string();
    match post(&socket, &routes::SHIM_REQUESTS.at(&[]), body.as_bytes()) {
        Ok((200, b)) => {
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
            let why = v["why"].as_str().unwrap_or("");
            if v["approved"] == true {
                eprintln!("agentd-cap: {resource}: {why}");
                ExitCode::SUCCESS
            } else {
                eprintln!("agentd-cap: {resource}: {why}");
                ExitCode::from(3)
            }
        }
        Ok((status, b)) => {
            eprintln!(
                "agentd-cap: refused ({status}): {}",
                String::from_utf8_lossy(&b)
            );
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("agentd-cap: {socket}: {e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let argv0 = std::env::args().next().unwrap_or_default();
    if argv0.rsplit('/').next() == Some("agentd-cap") {
        return cap(&args);
    }
    if args.first().map(String::as_str) == Some("cap") {
        return cap(&args[1..]);
    }
    let shell = real_shell();
    let socket = std::env::var("AGENTD_SHIM_SOCKET").ok();
    let cmd = match args.first().map(String::as_str) {
        Some("-c") => args.get(1).cloned(),
        _ => None,
    };
    let (Some(socket), Some(cmd)) = (socket, cmd) else {
        // Not a `-c` command (or no session socket): be the real shell.
        let e = Command::new(&shell).args(&args).exec();
        eprintln!("agentd-shim: exec {shell}: {e}");
        return ExitCode::from(127);
    };
    let n = match ask_retrying(&socket, &cmd) {
        // Already in a call: a nested shell runs in place and reports nothing, unless our
        // own earlier request moved us there and its answer was lost to a daemon restart.
        Ok((a, retried)) if a.nested => a.n.filter(|_| retried),
        Ok((a, _)) => a.n,
        Err(e) => {
            // Run anyway, where we are: the agent's leaf limits apply.
            eprintln!("agentd-shim: no call cgroup for this command: {e}");
            None
        }
    };
    let status = match Command::new(&shell).args(&args).status() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("agentd-shim: running {shell}: {e}");
            return ExitCode::from(127);
        }
    };
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    if let Some(n) = n
        && let Ok(body) = serde_json::to_vec(&ShimExit { code })
        && let Err(e) = report_exit(&socket, n, &body)
    {
        eprintln!("agentd-shim: reporting the exit status of call {n}: {e}");
    }
    ExitCode::from(code.clamp(0, 255) as u8)
}
