//! Tool calls from outside: `POST /v1/sessions/{id}/calls` gives the call its own
//! `calls/<n>` cgroup with the limits the policy resolves for its argv and declared intent
//! (an intent only lowers them), runs it inside the session container with
//! an `ExecRequest` (argv, cwd, env, cgroup `calls/<n>`), handed to the session's call
//! spawner when its runtime started one (`spawn`, one exec per call) or else to
//! `agentd-sandbox exec --request-fd 3` (see `sessions` for why the binary), enforces
//! the timeout by killing the call's cgroup, and returns the exit status, the buffered
//! output and cgctl's report; the journal keeps the call and its report. Every call, from
//! here, from the shim or re-adopted, ends through [`finish`].

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use agentd_sandbox::launch::{ExecRequest, Sandbox};
use axum::Json;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Path as UrlPath, Query, State as AxState};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;

use super::apply::{self, CallEnd, Exit};
use super::sessions::{Live, visible};
use super::stream::{Ndjson, Utf8Carry};
use super::systemd::RemoveSystemdEnv as _;
use super::{ApiError, Daemon, Peer, State};
use crate::api::{
    CallInfo, CallKilled, CallLimits, CallRequest, SessionState, StreamEvent, StreamQuery, now,
};

/// Output kept per stream in the answer; the rest is cut (the call is not slowed).
const OUTPUT_CAP: usize = 1 << 20;

/// The sandbox request for `req` (its cgroup set once created): refused with a reason
/// when the runtime would refuse it or the policy does not let an env name in.
fn exec_request(live: &Live, req: &CallRequest) -> Result<ExecRequest, ApiError> {
    if req.argv.first().is_some_and(|a| a.contains('=')) {
        return Err(ApiError::BadArgv {
            why: "the program contains `=`: give a command",
        });
    }
    let mut exec = ExecRequest::new(&live.sandbox_state, &req.argv);
    exec.cwd = req.cwd.clone();
    exec.env = req.env.clone();
    exec.validate()
        .map_err(|source| ApiError::BadExec { source })?;
    if let Some(k) = req.env.keys().find(|k| !live.plan.env_allowed(k)) {
        return Err(ApiError::EnvNotAllowed { name: k.clone() });
    }
    Ok(exec)
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
            return Err(ApiError::NotRunning {
                id: id.clone(),
                state: s.state.as_str(),
            });
        }
    };
    let exec = exec_request(&live, &req)?;
    let plan = live.plan.call(&req.argv, &req.intent);
    let (view, mut cg_limits) = apply::call_limits(&plan);
    let n = live.next_call.fetch_add(1, Ordering::SeqCst) + 1;
    super::undo::before_call(&d, &live, n).await;
    live.inflight.fetch_add(1, Ordering::SeqCst);
    // The memory pool's admission: waits while the call's grant does not fit.
    let grant = super::mempool::admit(&d, &live, n, &plan, &mut cg_limits).await;
    if !q.stream {
        let r = run_call(&d, &live, n, &req, exec, view, &cg_limits, grant, None).await;
        live.inflight.fetch_sub(1, Ordering::SeqCst);
        return r.map(|c| Json(c).into_response());
    }
    let (etx, mut erx) = mpsc::channel::<StreamEvent>(64);
    let (mut out, resp) = Ndjson::new();
    tokio::spawn(async move {
        let r = run_call(
            &d,
            &live,
            n,
            &req,
            exec,
            view,
            &cg_limits,
            grant,
            Some(etx.clone()),
        )
        .await;
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

#[allow(clippy::too_many_arguments)] // the call's parts, each used once
async fn run_call(
    d: &State,
    live: &Arc<Live>,
    n: u64,
    req: &CallRequest,
    mut exec: ExecRequest,
    view: CallLimits,
    cg_limits: &cgctl::Limits,
    grant: Option<super::mempool::Grant>,
    events: Events,
) -> Result<CallInfo, ApiError> {
    let mut info = CallInfo::running(&live.id, n, &req.argv, req.intent.clone(), view);
    info.via = Some(crate::api::CallVia::Api);
    live.start_call(d, &info)?;
    let call = match live.cg.create_call(n, cg_limits) {
        Ok(c) => c,
        Err(source) => {
            let why = format!("call cgroup: {source}");
            finish(d, None, info, Exit::Failed(why), false, grant).await?;
            return Err(ApiError::CallCgroup { n, source });
        }
    };
    super::mempool::attach(&grant, call.cgroup());
    // Before the clone3 into it: the scheduler's class and the accounting watch.
    d.sched.call_starting(
        &live.id,
        call.cgroup().path(),
        info.limits.cpu_class,
        info.limits.cpu_weight,
    );
    exec.cgroup = Some(call.cgroup().path().to_path_buf());
    if let Some(tx) = &events {
        // The call's number, before any output: what a client needs to kill it.
        let _ = tx.send(StreamEvent::Started(Box::new(info.clone()))).await;
    }
    // The fast path when the session's runtime started a call spawner (docs/spawner.md):
    // one fork+exec straight into `calls/<n>`; else an `agentd-sandbox exec` per call.
    let ran = if super::spawn::available(live) {
        super::spawn::run(&exec, info.limits.timeout_s, events).await
    } else {
        run_in_sandbox(d, &exec, info.limits.timeout_s, events).await
    };
    let (exit, timed_out) = match ran {
        Ok(o) => (
            Exit::Waited {
                code: o.code,
                stdout: o.stdout,
                stderr: o.stderr,
            },
            o.timed_out,
        ),
        Err(e) => (Exit::Failed(e), false),
    };
    finish(d, Some(call), info, exit, timed_out, grant).await
}

/// The one end of every call, whoever ran it: kills what is left in its cgroup, reads the
/// report and removes `calls/<n>` (blocking cgroupfs work, off the runtime), builds the
/// row ([`apply::finish_call`]), adds the session proxy's byte counts for the call and
/// journals it.
pub async fn finish(
    d: &Daemon,
    call: Option<cgctl::Call>,
    info: CallInfo,
    exit: Exit,
    timed_out: bool,
    grant: Option<super::mempool::Grant>,
) -> Result<CallInfo, ApiError> {
    let sched_id = call
        .as_ref()
        .and_then(|c| crate::sched::cgroup_id(c.cgroup().path()).ok());
    let report = match call {
        Some(call) => Some(
            match tokio::task::spawn_blocking(move || call.finish(Duration::from_secs(10))).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
        ),
        None => None,
    };
    let mut info = apply::finish_call(
        info,
        CallEnd {
            exit,
            timed_out,
            report,
            ended_at: now(),
        },
    );
    super::mempool::finish(grant, &mut info);
    if let Some(id) = sched_id {
        info.cpu_sched = d.sched.call_ended(id, info.limits.cpu_class);
    }
    super::net::annotate_call(d, &mut info).await;
    d.journal(|j| j.put_call(&info))?;
    super::approvals::call_ended(d, &info);
    Ok(info)
}

/// Waits until a call's cgroup is empty, or kills it at `deadline` (wall-clock seconds);
/// true when the timeout killed it. For calls whose process the daemon does not wait for
/// (shim calls, calls a previous daemon started).
pub async fn wait_empty(call: &cgctl::Call, deadline: u64, period: Duration) -> bool {
    while call.cgroup().populated().unwrap_or(false) {
        if now() >= deadline {
            let _ = call.cgroup().kill();
            return true;
        }
        tokio::time::sleep(period).await;
    }
    false
}

pub(super) struct Outcome {
    pub(super) code: Option<i32>,
    pub(super) timed_out: bool,
    pub(super) stdout: String,
    pub(super) stderr: String,
}

/// The runner of calls from outside: `agentd-sandbox exec` with the request, its output
/// pumped, the timeout enforced by killing the call's cgroup.
async fn run_in_sandbox(
    d: &State,
    req: &ExecRequest,
    timeout_s: u64,
    events: Events,
) -> Result<Outcome, String> {
    let cmd = Sandbox::new(&d.cfg.sandbox_bin)
        .exec(req)
        .map_err(|e| e.to_string())?;
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.envs_remove_systemd()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A restarting daemon leaves the call running; the next one records its report.
        .kill_on_drop(false);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", d.cfg.sandbox_bin.display()))?;
    drop(cmd);
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
            if let Some(cg) = &req.cgroup {
                let _ = cgctl::Cgroup::open(cg).and_then(|c| c.kill());
            }
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
        .ok_or_else(|| ApiError::NotLive { id: id.clone() })?;
    let call = live.cg.call(n).map_err(|source| ApiError::CallNotRunning {
        id: id.clone(),
        n,
        source,
    })?;
    call.cgroup().kill().map_err(|source| ApiError::Cgroup {
        what: format!("killing call {n}'s cgroup"),
        source,
    })?;
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
