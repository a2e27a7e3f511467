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
use axum::extract::{Path as UrlPath, State as AxState};

use super::sessions::{Live, visible};
use super::systemd::RemoveSystemdEnv as _;
use super::{ApiError, Peer, State};
use crate::api::{CallInfo, CallLimits, CallRequest, CallState, SessionState, now};

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

fn cut(mut b: Vec<u8>) -> String {
    b.truncate(OUTPUT_CAP);
    String::from_utf8_lossy(&b).into_owned()
}

/// `POST /v1/sessions/{id}/calls`.
pub async fn create(
    AxState(d): AxState<State>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    UrlPath(id): UrlPath<String>,
    Json(req): Json<CallRequest>,
) -> Result<Json<CallInfo>, ApiError> {
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
    live.inflight.fetch_add(1, Ordering::SeqCst);
    let r = run_call(&d, &live, n, &req, view, &cg_limits).await;
    live.inflight.fetch_sub(1, Ordering::SeqCst);
    r.map(Json)
}

async fn run_call(
    d: &State,
    live: &Arc<Live>,
    n: u64,
    req: &CallRequest,
    view: CallLimits,
    cg_limits: &cgctl::Limits,
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
    let outcome = exec(d, live, call.cgroup().path(), req, info.limits.timeout_s).await;
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

struct Outcome {
    code: Option<i32>,
    timed_out: bool,
    stdout: String,
    stderr: String,
}

async fn exec(
    d: &State,
    live: &Live,
    cgroup: &Path,
    req: &CallRequest,
    timeout_s: u64,
) -> Result<Outcome, String> {
    let child = tokio::process::Command::new(&d.cfg.sandbox_bin)
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
    let waiting = child.wait_with_output();
    tokio::pin!(waiting);
    let timeout = Duration::from_secs(timeout_s.max(1));
    let (out, timed_out) = tokio::select! {
        o = &mut waiting => (o, false),
        () = tokio::time::sleep(timeout) => {
            // The timeout kills the call's cgroup (everything the call started); the exec
            // process then reports the signal and exits.
            let _ = cgctl::Cgroup::open(cgroup).and_then(|c| c.kill());
            ((&mut waiting).await, true)
        }
    };
    let out = out.map_err(|e| format!("waiting for the call: {e}"))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(Outcome {
        code: out
            .status
            .code()
            .or_else(|| out.status.signal().map(|s| 128 + s)),
        timed_out,
        stdout: cut(out.stdout),
        stderr: cut(out.stderr),
    })
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
