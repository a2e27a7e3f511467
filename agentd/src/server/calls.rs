//! Tool calls from outside: `POST /v1/sessions/{id}/calls` gives the call its own
//! `calls/<n>` cgroup with the limits the policy resolves for its argv and declared intent
//! (an intent only lowers them), runs it inside the session container with
//! `agentd-sandbox exec --cgroup calls/<n>` (see `sessions` for why the binary), enforces
//! the timeout by killing the call's cgroup, and returns the exit status, the buffered
//! output and cgctl's report; the journal keeps the call and its report.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use agentd_policy::{CallPlan, CpuClass};
use axum::Json;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Path as UrlPath, Query, State as AxState};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;

use super::sessions::{Live, visible};
use super::stream::{Ndjson, Utf8Carry};
use super::systemd::RemoveSystemdEnv as _;
use super::{ApiError, Peer, State};
use crate::api::{
    CallInfo, CallKilled, CallLimits, CallRequest, CallState, SessionState, StreamEvent,
    StreamQuery, now,
};

/// Output kept per stream in the answer; the rest is cut (the call is not slowed).
const OUTPUT_CAP: usize = 1 << 20;

/// cpu.weight per CPU class (default 100): latency work is served first under contention.
pub fn cpu_weight(class: CpuClass) -> u16 {
    match class {
        CpuClass::Latency => 200,
        CpuClass::Batch => 50,
    }
}

/// The cgroup limits and their API view for one resolved call.
pub fn call_limits(p: &CallPlan) -> (CallLimits, cgctl::Limits) {
    let weight = cpu_weight(p.cpu_class.value);
    let mut notes = Vec::new();
    let mut note = |what: &str, cap: Option<String>, clamped: Option<String>, allowed: String| {
        if let Some(c) = cap {
            notes.push(format!("{what}: capped by {c}"));
        }
        if let Some(d) = clamped {
            notes.push(format!(
                "{what}: declared {d} lowered to the policy limit {allowed}"
            ));
        }
    };
    note(
        "memory",
        p.memory.capped_by.as_ref().map(ToString::to_string),
        p.memory.declared_clamped.map(|v| v.to_string()),
        p.memory.allowed.to_string(),
    );
    note(
        "timeout",
        p.timeout.capped_by.as_ref().map(ToString::to_string),
        p.timeout.declared_clamped.map(|v| v.to_string()),
        p.timeout.allowed.to_string(),
    );
    note(
        "pids",
        p.pids.capped_by.as_ref().map(ToString::to_string),
        p.pids.declared_clamped.map(|v| v.to_string()),
        p.pids.allowed.to_string(),
    );
    let view = CallLimits {
        memory: p.memory.value.0,
        cpu_class: p.cpu_class.value.to_string(),
        cpu_weight: weight,
        timeout_s: p.timeout.value.0,
        pids: p.pids.value,
        rule: p.rule.clone(),
        notes,
    };
    let cg = cgctl::Limits {
        memory_max: Some(cgctl::Max::Limit(view.memory)),
        // The whole call dies together on OOM: no half-killed build left running.
        memory_oom_group: Some(true),
        cpu_weight: Some(weight),
        pids_max: Some(cgctl::Max::Limit(u64::from(view.pids))),
        ..cgctl::Limits::default()
    };
    (view, cg)
}

/// The command actually run: `env -C cwd -- K=V … argv` when a cwd or env is given (the
/// sandbox's exec starts commands in the workspace with the session environment).
pub fn wrapped_argv(req: &CallRequest) -> Vec<String> {
    if req.cwd.is_none() && req.env.is_empty() {
        return req.argv.clone();
    }
    let mut v = vec!["/usr/bin/env".to_string()];
    if let Some(cwd) = &req.cwd {
        v.push("-C".into());
        v.push(cwd.display().to_string());
    }
    // After `--` env takes NAME=VALUE words, then the command (whose name has no `=`).
    v.push("--".into());
    for (k, val) in &req.env {
        v.push(format!("{k}={val}"));
    }
    v.extend(req.argv.iter().cloned());
    v
}

fn check_request(live: &Live, req: &CallRequest) -> Result<(), ApiError> {
    if req.argv.is_empty() || req.argv[0].contains('=') {
        return Err(ApiError::BadRequest(
            "argv is empty or its program contains `=`: give a command".into(),
        ));
    }
    if let Some(cwd) = &req.cwd
        && !cwd.is_absolute()
    {
        return Err(ApiError::BadRequest(format!(
            "cwd {} must be an absolute path inside the container",
            cwd.display()
        )));
    }
    for k in req.env.keys() {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(ApiError::BadRequest(format!("bad environment name {k:?}")));
        }
        if !live.plan.env_allowed(k) {
            return Err(ApiError::BadRequest(format!(
                "environment variable {k} is not allowed into the session by its policy"
            )));
        }
    }
    Ok(())
}

/// Where a call's output goes as it comes: the stream of a `?stream=true` request.
pub(super) type Events = Option<mpsc::Sender<StreamEvent>>;

/// `POST /v1/sessions/{id}/calls`: answers with the finished call; with `?stream=true`, an
/// NDJSON stream of its output as it comes, then the finished call (`{"call":…}`). The call
/// runs to its end and is journalled even if the client goes away.
pub async fn create(
    AxState(d): AxState<State>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<StreamQuery>,
    Json(req): Json<CallRequest>,
) -> Result<Response, ApiError> {
    let s = visible(&d, &peer, &id)?;
    let live = match d.live(&id) {
        Some(l) if l.info().state == SessionState::Running => l,
        _ => {
            return Err(ApiError::Conflict(format!(
                "session {id} is not running (state {})",
                s.state.as_str()
            )));
        }
    };
    check_request(&live, &req)?;
    let plan = live.plan.call(&req.argv, &req.intent);
    let (view, cg_limits) = call_limits(&plan);
    let n = live.next_call.fetch_add(1, Ordering::SeqCst) + 1;
    super::undo::before_call(&d, &live, n).await;
    live.inflight.fetch_add(1, Ordering::SeqCst);
    if !q.stream {
        let r = run_call(&d, &live, n, &req, view, &cg_limits, None).await;
        live.inflight.fetch_sub(1, Ordering::SeqCst);
        return r.map(|c| Json(c).into_response());
    }
    let (etx, mut erx) = mpsc::channel::<StreamEvent>(64);
    let (mut out, resp) = Ndjson::new();
    tokio::spawn(async move {
        let r = run_call(&d, &live, n, &req, view, &cg_limits, Some(etx.clone())).await;
        live.inflight.fetch_sub(1, Ordering::SeqCst);
        let last = match r {
            Ok(c) => StreamEvent::Call(Box::new(c)),
            Err(e) => StreamEvent::Error(e.to_string()),
        };
        let _ = etx.send(last).await;
    });
    tokio::spawn(async move {
        while let Some(ev) = erx.recv().await {
            if !out.send(&ev).await {
                // The client went away; the call goes on (its senders see a closed channel).
                return;
            }
        }
    });
    Ok(resp)
}

async fn run_call(
    d: &State,
    live: &Arc<Live>,
    n: u64,
    req: &CallRequest,
    view: CallLimits,
    cg_limits: &cgctl::Limits,
    events: Events,
) -> Result<CallInfo, ApiError> {
    let mut info = CallInfo::running(&live.id, n, &req.argv, req.intent.clone(), view);
    d.journal(|j| j.put_call(&info))?;
    live.update(d, |s| s.calls = s.calls.max(n))?;
    let call = match live.cg.create_call(n, cg_limits) {
        Ok(c) => c,
        Err(e) => {
            info.state = CallState::Failed;
            info.error = Some(format!("call cgroup: {e}"));
            info.ended_at = Some(now());
            d.journal(|j| j.put_call(&info))?;
            return Err(ApiError::Internal(format!("call {n}: cgroup: {e}")));
        }
    };
    if let Some(tx) = &events {
        // The call's number, before any output: what a client needs to kill it.
        let _ = tx.send(StreamEvent::Started(Box::new(info.clone()))).await;
    }
    let outcome = exec(
        d,
        live,
        call.cgroup().path(),
        req,
        info.limits.timeout_s,
        events,
    )
    .await;
    // Kill leftovers, read the report, remove calls/<n> (blocking cgroupfs work).
    let report = tokio::task::spawn_blocking(move || call.finish(Duration::from_secs(10))).await;
    match report {
        Ok(r) => info.record_report(r),
        Err(e) => info.error = Some(format!("report: {e}")),
    }
    info.ended_at = Some(now());
    match outcome {
        Ok(o) => {
            info.state = if o.timed_out {
                CallState::TimedOut
            } else {
                CallState::Exited
            };
            info.exit_code = o.code;
            info.stdout = Some(o.stdout);
            info.stderr = Some(o.stderr);
        }
        Err(e) => {
            info.state = CallState::Failed;
            info.error = Some(e);
        }
    }
    d.journal(|j| j.put_call(&info))?;
    Ok(info)
}

pub(super) struct Outcome {
    pub(super) code: Option<i32>,
    pub(super) timed_out: bool,
    pub(super) stdout: String,
    pub(super) stderr: String,
}

async fn exec(
    d: &State,
    live: &Live,
    cgroup: &Path,
    req: &CallRequest,
    timeout_s: u64,
    events: Events,
) -> Result<Outcome, String> {
    // The fast path: the session's spawner forks the tool into the call cgroup (one exec).
    if super::spawn::available(live) {
        return super::spawn::exec(live, cgroup, req, timeout_s, events).await;
    }
    let mut child = tokio::process::Command::new(&d.cfg.sandbox_bin)
        .arg("exec")
        .arg("--state")
        .arg(&live.sandbox_state)
        .arg("--cgroup")
        .arg(cgroup)
        .arg("--")
        .args(wrapped_argv(req))
        .envs_remove_systemd()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A restarting daemon leaves the call running; the next one records its report.
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", d.cfg.sandbox_bin.display()))?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let waiting = async {
        let kept = pump(stdout, stderr, events).await;
        (kept, child.wait().await)
    };
    tokio::pin!(waiting);
    let timeout = Duration::from_secs(timeout_s.max(1));
    let ((kept, status), timed_out) = tokio::select! {
        o = &mut waiting => (o, false),
        () = tokio::time::sleep(timeout) => {
            // The timeout kills the call's cgroup (everything the call started); the exec
            // process then reports the signal and exits.
            let _ = cgctl::Cgroup::open(cgroup).and_then(|c| c.kill());
            ((&mut waiting).await, true)
        }
    };
    let status = status.map_err(|e| format!("waiting for the call: {e}"))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(Outcome {
        code: status.code().or_else(|| status.signal().map(|s| 128 + s)),
        timed_out,
        stdout: String::from_utf8_lossy(&kept[0]).into_owned(),
        stderr: String::from_utf8_lossy(&kept[1]).into_owned(),
    })
}

/// Reads the call's stdout and stderr until both end: forwards each piece as it comes to
/// `events` (while its receiver listens) and keeps the first [`OUTPUT_CAP`] bytes of each
/// for the answer (the call is never slowed by the cap).
pub(super) async fn pump<O, E>(
    stdout: Option<O>,
    stderr: Option<E>,
    mut events: Events,
) -> [Vec<u8>; 2]
where
    O: tokio::io::AsyncRead + Unpin,
    E: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut kept = [Vec::new(), Vec::new()];
    let mut carry = [Utf8Carry::default(), Utf8Carry::default()];
    let (mut out, mut err) = (stdout, stderr);
    let (mut a, mut b) = ([0u8; 8192], [0u8; 8192]);
    while out.is_some() || err.is_some() {
        let (i, r) = tokio::select! {
            r = async { out.as_mut()?.read(&mut a).await.ok() }, if out.is_some() => (0, r),
            r = async { err.as_mut()?.read(&mut b).await.ok() }, if err.is_some() => (1, r),
        };
        let data = match r {
            Some(n) if n > 0 => {
                if i == 0 {
                    &a[..n]
                } else {
                    &b[..n]
                }
            }
            _ => {
                if i == 0 {
                    out = None
                } else {
                    err = None
                }
                continue;
            }
        };
        let room = OUTPUT_CAP.saturating_sub(kept[i].len());
        kept[i].extend_from_slice(&data[..data.len().min(room)]);
        if let Some(tx) = &events {
            let text = carry[i].push(data);
            let ev = if i == 0 {
                StreamEvent::Stdout(text)
            } else {
                StreamEvent::Stderr(text)
            };
            if tx.send(ev).await.is_err() {
                events = None;
            }
        }
    }
    kept
}

/// `POST /v1/sessions/{id}/calls/{n}/kill`: kills everything in the running call's cgroup
/// (`cgroup.kill`); the call then ends (exit 137) and is journalled as usual. 409 when call
/// `n` has no cgroup (it ended, or never existed).
pub async fn kill(
    AxState(d): AxState<State>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    UrlPath((id, n)): UrlPath<(String, u64)>,
) -> Result<Json<CallKilled>, ApiError> {
    visible(&d, &peer, &id)?;
    let live = d
        .live(&id)
        .ok_or_else(|| ApiError::Conflict(format!("session {id} is not running")))?;
    let call = live
        .cg
        .call(n)
        .map_err(|e| ApiError::Conflict(format!("call {n} of session {id} is not running: {e}")))?;
    call.cgroup()
        .kill()
        .map_err(|e| ApiError::Internal(format!("killing call {n}'s cgroup: {e}")))?;
    Ok(Json(CallKilled { session: id, n }))
}

/// `GET /v1/sessions/{id}/calls`: the calls with their reports.
pub async fn list(
    AxState(d): AxState<State>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Vec<CallInfo>>, ApiError> {
    visible(&d, &peer, &id)?;
    Ok(Json(d.journal(|j| j.calls(&id))?))
}
