//! The HTTP/JSON API's types, shared by the daemon (`agentd serve`) and the client
//! (`agentctl`), so both sides agree on one definition. Routes (see `docs/daemon.md`):
//!
//! | method | path | body → answer |
//! |---|---|---|
//! | GET | `/v1/health` | → [`Health`] |
//! | POST | `/v1/sessions` | [`CreateSession`] → [`SessionInfo`] (running) |
//! | GET | `/v1/sessions` | → `[SessionInfo]` (the caller's; all for root) |
//! | GET | `/v1/sessions/{id}` | → [`SessionInfo`] |
//! | POST | `/v1/sessions/{id}/wait` | → [`SessionInfo`] once the agent has exited |
//! | GET | `/v1/sessions/{id}/logs` | → [`Logs`] (the agent's stdout/stderr so far) |
//! | POST | `/v1/sessions/{id}/kill` | → [`SessionInfo`] |
//! | DELETE | `/v1/sessions/{id}` | → [`SessionInfo`] (killed if running, then removed) |
//! | POST | `/v1/sessions/{id}/calls` | [`CallRequest`] → [`CallInfo`] (after the call ended) |
//! | GET | `/v1/sessions/{id}/calls` | → `[CallInfo]` |
//! | POST | `/v1/sessions/{id}/calls/{n}/kill` | → [`CallKilled`] (the running call's cgroup killed) |
//!
//! Errors are a 4xx/5xx status with an [`ErrorBody`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use agentd_policy::{CpuClass, DeclaredIntent};
use serde::{Deserialize, Serialize};

/// API version prefix of every route.
pub const PREFIX: &str = "/v1";

/// Default socket path of the daemon.
pub const DEFAULT_SOCKET: &str = "/run/agentd/agentd.sock";

/// Body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    /// Daemon version.
    pub version: String,
    /// The uid the daemon sees for this caller (SO_PEERCRED).
    pub caller_uid: u32,
    /// The cgroup root the daemon owns.
    pub cgroup_root: String,
}

/// A policy file's text, sent by the client (which reads it with the user's rights, so the
/// daemon never opens user-chosen paths as root).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicySource {
    /// The file name shown in diagnostics.
    pub name: String,
    /// The TOML text.
    pub text: String,
}

/// `POST /v1/sessions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateSession {
    /// The repo (absolute path): the overlay's read-only lower layer.
    pub workspace: PathBuf,
    /// The repo policy; `None` means the `default` profile.
    #[serde(default)]
    pub policy: Option<PolicySource>,
    /// The agent command.
    pub argv: Vec<String>,
    /// Give the agent a stdin that `POST /v1/sessions/{id}/stdin` feeds (an attached
    /// `agentctl run`); otherwise its stdin is empty (/dev/null-like).
    #[serde(default)]
    pub stdin: bool,
    /// Run the agent as this host uid instead of the workspace's owner (root callers only,
    /// never 0): the way to run on a root-owned workspace (`agentctl run --user UID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<u32>,
}

/// One line of a streamed answer: `application/x-ndjson`, one JSON object per line,
/// externally tagged: `{"stdout":"…"}`, `{"stderr":"…"}`, then exactly one final
/// `{"call":{…}}` (a streamed call), `{"session":{…}}` (a followed session) or
/// `{"error":"…"}`. Output is text (invalid UTF-8 is replaced; a character split across
/// reads is kept whole). A streamed call first sends `{"started":{…}}` (the running call,
/// with its number and limits) once its cgroup exists, so a client can kill it
/// (`POST …/calls/{n}/kill`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamEvent {
    Started(Box<CallInfo>),
    Stdout(String),
    Stderr(String),
    Call(Box<CallInfo>),
    Session(Box<SessionInfo>),
    Error(String),
}

/// `POST /v1/sessions/{id}/calls/{n}/kill`: the running call whose cgroup was killed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallKilled {
    pub session: String,
    pub n: u64,
}

/// `POST /v1/sessions/{id}/stdin`: how many bytes reached the agent's stdin before the
/// request body ended (then the agent reads end-of-file).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StdinDone {
    pub bytes: u64,
}

/// `?follow=true` on `GET …/logs`, `?stream=true` on `POST …/calls`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StreamQuery {
    #[serde(default)]
    pub follow: bool,
    #[serde(default)]
    pub stream: bool,
}

/// Lifecycle of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// Container being set up.
    Starting,
    /// The agent runs; calls are accepted.
    Running,
    /// The agent exited by itself.
    Exited,
    /// Killed through the API.
    Killed,
    /// Could not start, or was lost with its daemon and left nothing to keep.
    Failed,
    /// Its processes died while no daemon watched them (the host went down, or they could
    /// not be re-adopted after a restart), and its session layer was kept: diffable,
    /// committable and discardable like an ended session (docs/undo.md).
    Stopped,
}

impl SessionState {
    /// The journal spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Starting => "starting",
            SessionState::Running => "running",
            SessionState::Exited => "exited",
            SessionState::Killed => "killed",
            SessionState::Failed => "failed",
            SessionState::Stopped => "stopped",
        }
    }

    /// Parses the journal spelling.
    pub fn parse(s: &str) -> Option<SessionState> {
        Some(match s {
            "starting" => SessionState::Starting,
            "running" => SessionState::Running,
            "exited" => SessionState::Exited,
            "killed" => SessionState::Killed,
            "failed" => SessionState::Failed,
            "stopped" => SessionState::Stopped,
            _ => return None,
        })
    }

    /// The agent no longer runs.
    pub fn ended(self) -> bool {
        !matches!(self, SessionState::Starting | SessionState::Running)
    }
}

/// The session-wide limits policy resolved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionLimits {
    /// memory.max of `session-<id>`, bytes.
    pub memory: u64,
    /// CPU bandwidth, thousandths of a core.
    pub cpu_millis: u64,
    /// pids.max.
    pub pids: u32,
    /// Session timeout, seconds.
    pub timeout_s: u64,
    /// memory.max of the agent's own leaf (`session-<id>/agent`): the policy's default call
    /// memory, so what the agent forks without the shim gets no more than a call.
    #[serde(default)]
    pub agent_memory: u64,
    /// cpu.max of the agent leaf, thousandths of a core (at most one CPU).
    #[serde(default)]
    pub agent_cpu_millis: u64,
    /// pids.max of the agent leaf (the policy's default call pids).
    #[serde(default)]
    pub agent_pids: u32,
}

/// A session as listed and inspected.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionInfo {
    pub id: String,
    /// The uid that created it (it alone, and root, may see and steer it).
    pub owner_uid: u32,
    pub workspace: PathBuf,
    pub argv: Vec<String>,
    pub state: SessionState,
    /// The agent's exit code (128+signal when killed by a signal).
    pub exit_code: Option<i32>,
    /// Unix seconds.
    pub created_at: u64,
    pub ended_at: Option<u64>,
    /// `session-<id>` in cgroupfs.
    pub cgroup: String,
    pub limits: SessionLimits,
    /// Tool calls so far.
    pub calls: u64,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The host uid (= gid) its container root maps to, its own among sessions (absent for a
    /// session from before per-session ids: those all used 100000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_uid: Option<u32>,
}

/// `GET /v1/sessions/{id}/logs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Logs {
    pub stdout: String,
    pub stderr: String,
}

/// `POST /v1/sessions/{id}/calls`: one tool call from outside the session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallRequest {
    pub argv: Vec<String>,
    /// Working directory inside the container (default: the workspace).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Extra environment; every name must pass the policy's env allowlist.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// What the caller declares; may only lower what policy allows.
    #[serde(default)]
    pub intent: DeclaredIntent,
}

/// The limits a call ran under, as policy and intent resolved them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallLimits {
    /// memory.max, bytes.
    pub memory: u64,
    /// `latency` or `batch`.
    pub cpu_class: CpuClass,
    /// cpu.weight derived from the class.
    pub cpu_weight: u16,
    /// Seconds before the call's cgroup is killed.
    pub timeout_s: u64,
    /// pids.max.
    pub pids: u32,
    /// The intent rule that matched, if any.
    pub rule: Option<String>,
    /// Human notes: caps and clamped declarations (from the policy's call plan).
    #[serde(default)]
    pub notes: Vec<String>,
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CallState {
    Running,
    /// The command exited (see `exit_code`; 128+n means signal n, e.g. 137 = OOM kill).
    Exited,
    /// Its timeout expired and its cgroup was killed.
    TimedOut,
    /// It could not be started.
    Failed,
}

impl CallState {
    /// The journal spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CallState::Running => "running",
            CallState::Exited => "exited",
            CallState::TimedOut => "timed-out",
            CallState::Failed => "failed",
        }
    }

    /// Parses the journal spelling.
    pub fn parse(s: &str) -> Option<CallState> {
        Some(match s {
            "running" => CallState::Running,
            "exited" => CallState::Exited,
            "timed-out" => CallState::TimedOut,
            "failed" => CallState::Failed,
            _ => return None,
        })
    }
}

/// One tool call, as returned by `POST …/calls` and listed by `GET …/calls`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallInfo {
    pub session: String,
    /// The call number (`calls/<n>`).
    pub n: u64,
    /// The command's words as recorded: at most [`ARGV_RECORD_BYTES`] of them (the command
    /// itself gets them all).
    pub argv: Vec<String>,
    /// Bytes of argv not recorded (the record's bound: an agent's 2 MB command lines,
    /// hundreds of times, must not grow the journal without end); absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv_cut: Option<u64>,
    pub intent: DeclaredIntent,
    pub limits: CallLimits,
    pub state: CallState,
    pub exit_code: Option<i32>,
    /// The kernel OOM-killed something in the call's cgroup.
    pub oom_killed: bool,
    pub started_at: u64,
    pub ended_at: Option<u64>,
    /// cgctl's report (wall time, CPU, memory peak, IO, pids, memory events).
    pub report: Option<cgctl::Report>,
    /// What the host's memory pool did for the call (docs/memory.md); absent without a pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_pool: Option<PoolOutcome>,
    /// The call's connections through the session's egress proxy (docs/egress.md); absent
    /// when the session's network is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<CallNet>,
    /// The call's CPU time on and off CPU and its run-queue wait, counted by the per-call
    /// accounting BPF program (docs/scheduler.md); absent when it could not load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_sched: Option<CallSched>,
    /// How the call was made: `api` (from outside), `shim` (the agent's `$SHELL -c`) or
    /// `exec` (an exec captured in the kernel, docs/capture.md); absent in rows of older
    /// daemons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<CallVia>,
    /// Only in the answer to `POST …/calls` (not kept in the journal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How a call was made (`CallInfo::via`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallVia {
    /// `POST …/calls` (`agentctl exec`, MCP).
    Api,
    /// The agent's `$SHELL -c` (the shim).
    Shim,
    /// An exec of a process in the agent's leaf, captured in the kernel.
    Exec,
}

impl CallVia {
    pub fn as_str(self) -> &'static str {
        match self {
            CallVia::Api => "api",
            CallVia::Shim => "shim",
            CallVia::Exec => "exec",
        }
    }
}

/// The memory pool's part in a call: its admitted grant (memory.high), the memory.max loans
/// could reach, and the reason it was killed as the pool's last resort.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolOutcome {
    pub grant: u64,
    pub memory_max: u64,
    pub killed: Option<String>,
}

/// A call's scheduling, as the per-call accounting program saw it (all its tasks, summed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallSched {
    /// Who scheduled it: `agentd` (agentd's sched_ext scheduler) or `fair` (the kernel's).
    pub scheduler: String,
    /// The class it was given: `latency` or `batch`.
    pub class: CpuClass,
    /// Time on a CPU, microseconds.
    pub on_cpu_us: u64,
    /// Time runnable but waiting for a CPU (run-queue wait), microseconds.
    pub runq_wait_us: u64,
    /// The longest single run-queue wait, microseconds.
    pub runq_wait_max_us: u64,
    /// Time blocked (sleeping, waiting for I/O), microseconds.
    pub off_cpu_us: u64,
    /// Times a task of the call was switched onto a CPU.
    pub runs: u64,
    /// Wake-ups of its tasks.
    pub wakeups: u64,
}

/// A call's traffic through the egress proxy, counted by the proxy itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallNet {
    /// Connections the call opened (allowed and refused).
    pub connections: u64,
    /// Bytes the call sent upstream.
    pub bytes_up: u64,
    /// Bytes the call received.
    pub bytes_down: u64,
}

impl CallInfo {
    /// A call that starts now (journalled before it runs, so a crash leaves a trace).
    pub fn running(
        session: &str,
        n: u64,
        argv: &[String],
        intent: DeclaredIntent,
        limits: CallLimits,
    ) -> CallInfo {
        let (argv, argv_cut) = recorded_argv(argv);
        CallInfo {
            session: session.to_string(),
            n,
            argv,
            argv_cut,
            intent,
            limits,
            state: CallState::Running,
            exit_code: None,
            oom_killed: false,
            started_at: now(),
            ended_at: None,
            report: None,
            memory_pool: None,
            net: None,
            cpu_sched: None,
            via: None,
            stdout: None,
            stderr: None,
            error: None,
        }
    }
}

/// How much of a call's argv its record keeps (its words' bytes, a NUL each).
pub const ARGV_RECORD_BYTES: usize = 64 << 10;

/// A call's argv as its record keeps it: whole words while they fit in
/// [`ARGV_RECORD_BYTES`], the first that does not cut at a character boundary, and how many
/// bytes were left out.
pub fn recorded_argv(argv: &[String]) -> (Vec<String>, Option<u64>) {
    let total: usize = argv.iter().map(|w| w.len() + 1).sum();
    if total <= ARGV_RECORD_BYTES {
        return (argv.to_vec(), None);
    }
    let mut kept = Vec::new();
    let mut room = ARGV_RECORD_BYTES;
    for w in argv {
        if w.len() < room {
            room -= w.len() + 1;
            kept.push(w.clone());
            continue;
        }
        // The cut word takes its NUL from the room too.
        let mut end = room.saturating_sub(1);
        while !w.is_char_boundary(end) {
            end -= 1;
        }
        if end > 0 {
            kept.push(w[..end].to_string());
        }
        break;
    }
    let kept_bytes: usize = kept.iter().map(|w| w.len() + 1).sum();
    (kept, Some((total - kept_bytes) as u64))
}

/// Now, in Unix seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Live usage of one cgroup, read from cgroupfs when asked (`GET …/stats`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Usage {
    /// The cgroup's path.
    pub cgroup: String,
    /// memory.current, bytes.
    pub memory_current: Option<u64>,
    /// memory.peak, bytes (kernels ≥ 5.19).
    pub memory_peak: Option<u64>,
    /// cpu.stat usage_usec: CPU time used so far.
    pub cpu_usage_usec: u64,
    pub cpu_user_usec: u64,
    pub cpu_system_usec: u64,
    /// pids.current.
    pub pids_current: Option<u64>,
    /// io.stat, summed over devices.
    pub io_read_bytes: Option<u64>,
    pub io_write_bytes: Option<u64>,
    /// memory.events oom_kill so far.
    pub oom_kills: u64,
}

/// A running call's live usage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallStats {
    pub n: u64,
    pub argv: Vec<String>,
    pub usage: Usage,
}

/// `GET /v1/stats` (every running session the caller may see) and
/// `GET /v1/sessions/{id}/stats`: a running session's live usage, its agent leaf's and
/// each running call's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionStats {
    pub id: String,
    pub owner_uid: u32,
    /// The whole session (`session-<id>`: agent and calls).
    pub usage: Usage,
    /// The agent's own leaf.
    pub agent: Usage,
    /// Calls with a cgroup now, by number.
    pub calls: Vec<CallStats>,
}

// The session socket's protocol (`routes::SHIM`, served inside each container for its
// agent's `agentd-shim`; see `server::shim`).

/// `POST /v1/shim/calls` from the shim.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimCall {
    /// The command's words (for the policy's intent rules and the journal).
    pub argv: Vec<String>,
    /// `AGENTD_INTENT` as the shim found it (parsed by the daemon).
    #[serde(default)]
    pub intent: String,
}

/// The answer: the call number, or `nested` (already inside a call: run in place).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimAnswer {
    /// The call the shim is in now (a nested shim: the call it already was in, if known).
    pub n: Option<u64>,
    /// Already inside a call: run in place, no new call.
    pub nested: bool,
    /// The new call's limits.
    pub limits: Option<CallLimits>,
}

/// `POST /v1/shim/calls/{n}/exit`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimExit {
    /// The shell's exit status (128+n for signal n).
    pub code: i32,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code
    use super::*;

    #[test]
    fn a_call_record_keeps_at_most_its_bound_of_argv_and_says_how_much_it_left_out() {
        let short = vec!["cargo".to_string(), "test".to_string()];
        assert_eq!(recorded_argv(&short), (short.clone(), None));
        // 40 words of 48 KiB each (1.9 MB): the record keeps 64 KiB and counts the rest.
        let big: Vec<String> = (0..40)
            .map(|i| format!("{i:02}").repeat(24 << 10))
            .collect();
        let (kept, cut) = recorded_argv(&big);
        let kept_bytes: usize = kept.iter().map(|w| w.len() + 1).sum();
        assert!(kept_bytes <= ARGV_RECORD_BYTES, "{kept_bytes}");
        assert_eq!(kept[0], big[0]);
        let total: usize = big.iter().map(|w| w.len() + 1).sum();
        assert_eq!(cut, Some((total - kept_bytes) as u64));
        // A cut never splits a character.
        let wide = vec!["é".repeat(ARGV_RECORD_BYTES)];
        let (kept, cut) = recorded_argv(&wide);
        assert!(kept[0].chars().all(|c| c == 'é'));
        assert!(cut.unwrap() > 0);
    }
}
