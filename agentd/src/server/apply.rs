//! From a resolved policy [`Plan`] to what the kernel-facing crates apply, and from what a
//! call's runner saw to the call's journal row. Pure: no cgroupfs, no processes, no
//! clock; the handlers (`sessions`, `calls`, `shim`, `adopt`) do the I/O around it, and
//! every rule here is host-tested in seconds (`cargo test -p agentd apply`).
//!
//! - [`sandbox_plan`]: the policy plan + the session's context → the `SessionPlan` the
//!   sandbox runtime takes (the one typed document of the daemon–sandbox contract);
//! - [`session_limits`], [`agent_limits`], [`call_limits`], [`cpu_weight`]: the cgroup
//!   limits of `session-<id>`, its `agent` leaf and each `calls/<n>`;
//! - [`finish_call`]: the one place a call's end becomes its row, whichever runner
//!   started it (the sandbox exec from outside, the shim from inside, a call the previous
//!   daemon started) — a new runner (e.g. an in-container spawner) reports a [`CallEnd`].

use std::path::PathBuf;

use agentd_policy::{CallPlan, CpuClass, Plan};
use agentd_sandbox::SessionPlan;
use agentd_sandbox::plan::BindRo;

use crate::api::{CallInfo, CallLimits, CallState, SessionLimits};

/// Where the shim binary is bound (read-only) in every container: the agent's `$SHELL`.
pub const SHIM_IN_CONTAINER: &str = "/run/agentd/bin/agentd-shim";

/// The shim socket's path as the agent sees it (`$AGENTD_SHIM_SOCKET`).
pub const SOCKET_IN_CONTAINER: &str = "/run/agentd-shim.sock";

/// The session's disk quota (size of its layer image) when the policy sets none.
pub const DISK_BYTES: u64 = agentd_policy::plan::DEFAULT_DISK_BYTES;

/// The session's disk quota: `resources.disk` (within `resources.max.disk`), else
/// [`DISK_BYTES`].
pub fn disk_bytes(plan: &Plan) -> u64 {
    plan.session.disk.as_ref().map_or(DISK_BYTES, |l| l.value.0)
}

/// What a session's sandbox plan depends on besides its policy.
#[derive(Debug, Clone)]
pub struct SessionContext {
    /// The repo (canonical): the overlay's lower layer, at the same path inside.
    pub workspace: PathBuf,
    /// The sandbox state dir (`<state>/sessions/<id>`).
    pub state: PathBuf,
    /// The agent's host uid (the workspace's owner).
    pub agent_uid: u32,
    /// The host uid (= gid) the container's root maps to: the session's own
    /// (`super::ids`), never 0.
    pub root_uid: u32,
    /// The shim binary on the host (bound at [`SHIM_IN_CONTAINER`]).
    pub shim_bin: PathBuf,
    /// The session's resolv.conf on the host (naming the egress DNS stub), written by the
    /// daemon for a session with the network on; bound over `/etc/resolv.conf`.
    pub resolv_conf: Option<PathBuf>,
    /// The kernel has sched_ext: session tasks get SCHED_EXT (docs/scheduler.md).
    pub sched_ext: bool,
}

/// The sandbox plan of a session: the coding-agent default container (host root
/// read-only: `session.root = "host"` is all this build resolves), the shim bound at one
/// fixed path (a host path under /tmp, /run or a home would be invisible inside) and named
/// by `$SHELL` and `$AGENTD_SHIM_SOCKET`.
///
/// Network: always a new, empty network namespace (loopback only). With `network.enabled`
/// the daemon later opens its egress listeners inside it (`crate::egress`), and the plan
/// gets what makes tools use them: the stub resolver's resolv.conf over /etc/resolv.conf
/// and the proxy variables (`crate::egress::proxy_env`) in the environment, which the
/// runtime gives the agent and every call (`exec` starts from the session's environment).
pub fn sandbox_plan(plan: &Plan, cx: &SessionContext) -> SessionPlan {
    let mut p = SessionPlan::new(
        &cx.workspace,
        &cx.state,
        disk_bytes(plan),
        cx.agent_uid,
        cx.root_uid,
    );
    // Off or through the proxy, the session never shares the host's network.
    p.namespaces.net = true;
    p.sched_ext = cx.sched_ext;
    p.capture_exec = plan.session.capture == agentd_policy::CaptureMode::Exec;
    p.bind_ro.push(BindRo {
        source: cx.shim_bin.clone(),
        target: PathBuf::from(SHIM_IN_CONTAINER),
    });
    p.env
        .insert("SHELL".to_owned(), SHIM_IN_CONTAINER.to_owned());
    p.env.insert(
        "AGENTD_SHIM_SOCKET".to_owned(),
        SOCKET_IN_CONTAINER.to_owned(),
    );
    if plan.session.network.enabled {
        if let Some(f) = &cx.resolv_conf {
            p.bind_ro.push(BindRo {
                source: f.clone(),
                target: PathBuf::from("/etc/resolv.conf"),
            });
        }
        p.env.extend(crate::egress::proxy_env());
    }
    p
}

/// cpu.weight per CPU class (default 100): latency work is served first under contention.
pub fn cpu_weight(class: CpuClass) -> u16 {
    match class {
        CpuClass::Latency => 200,
        CpuClass::Batch => 50,
    }
}

/// The agent leaf's CPU bandwidth: at most one CPU (and never more than the session's).
const AGENT_CPU_MILLIS: u64 = 1000;

/// The agent leaf's limits, in the API's words and as cgroup limits.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentLimits {
    pub memory: u64,
    pub pids: u32,
    pub cpu_millis: u64,
    pub cgroup: cgctl::Limits,
}

/// The limits of the agent's own leaf (`session-<id>/agent`): what the agent forks without
/// the shim stays there, so it gets no more than a call with the policy's defaults would
/// (memory.max and pids.max of `resources.call`), the batch CPU weight (never the latency
/// class's priority) and at most one CPU. So skipping the shim gains nothing.
pub fn agent_limits(plan: &Plan, session_cpu_millis: u64) -> AgentLimits {
    let memory = plan.call_defaults.memory.value.0;
    let pids = plan.call_defaults.pids.value;
    let cpu_millis = AGENT_CPU_MILLIS.min(session_cpu_millis);
    AgentLimits {
        memory,
        pids,
        cpu_millis,
        cgroup: cgctl::Limits {
            memory_max: Some(cgctl::Max::Limit(memory)),
            pids_max: Some(cgctl::Max::Limit(u64::from(pids))),
            cpu_weight: Some(cpu_weight(CpuClass::Batch)),
            cpu_max: Some(cgctl::CpuMax::cpus(cpu_millis as f64 / 1000.0)),
            ..cgctl::Limits::default()
        },
    }
}

/// The session's limits (API view) and the caps of `session-<id>`. memory.swap.max is 0:
/// a session's memory is what memory.max says, never that plus the host's swap (no policy
/// key grants swap yet; the kernel applies it to every leaf below).
pub fn session_limits(plan: &Plan) -> (SessionLimits, cgctl::Limits) {
    let s = &plan.session;
    let agent = agent_limits(plan, s.cpu.value.0);
    let lim = SessionLimits {
        memory: s.memory.value.0,
        cpu_millis: s.cpu.value.0,
        pids: s.pids.value,
        timeout_s: s.timeout.value.0,
        agent_memory: agent.memory,
        agent_cpu_millis: agent.cpu_millis,
        agent_pids: agent.pids,
    };
    let cg = cgctl::Limits {
        memory_max: Some(cgctl::Max::Limit(lim.memory)),
        memory_swap_max: Some(cgctl::Max::Limit(0)),
        cpu_max: Some(cgctl::CpuMax::cpus(lim.cpu_millis as f64 / 1000.0)),
        pids_max: Some(cgctl::Max::Limit(u64::from(lim.pids))),
        ..cgctl::Limits::default()
    };
    (lim, cg)
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
        cpu_class: p.cpu_class.value,
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

/// How a call's process ended, as its runner knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The runner waited for it (a call from outside): its status and kept output.
    Waited {
        code: Option<i32>,
        stdout: String,
        stderr: String,
    },
    /// A shim call: the status its shim reported, if it did.
    Reported(Option<i32>),
    /// Started by a previous daemon, whose waiter died with it: a status a shim reported
    /// to this daemon, if any.
    Orphaned(Option<i32>),
    /// It could not be run, or its cgroup was lost: why.
    Failed(String),
}

/// Everything known when a call's cgroup is empty.
#[derive(Debug)]
pub struct CallEnd {
    pub exit: Exit,
    /// Its timeout expired and its cgroup was killed.
    pub timed_out: bool,
    /// What `cgctl::Call::finish` read (or why it could not); `None` when there was no
    /// cgroup to read.
    pub report: Option<Result<cgctl::Report, String>>,
    /// The wall-clock second it ended.
    pub ended_at: u64,
}

/// The exit status the kernel's OOM killer gives (128 + SIGKILL).
const OOM_EXIT: i32 = 137;

/// The finished row of a call: its report, state, exit status and output.
pub fn finish_call(mut info: CallInfo, end: CallEnd) -> CallInfo {
    match end.report {
        Some(Ok(r)) => {
            info.oom_killed = r
                .stats
                .memory
                .is_some_and(|m| m.events.oom_kill > 0 || m.events.oom_group_kill > 0);
            info.report = Some(r);
        }
        Some(Err(e)) => info.error = Some(format!("report: {e}")),
        None => {}
    }
    info.ended_at = Some(end.ended_at);
    info.state = if end.timed_out {
        CallState::TimedOut
    } else {
        CallState::Exited
    };
    let orphaned = matches!(end.exit, Exit::Orphaned(_));
    info.exit_code = match end.exit {
        Exit::Waited {
            code,
            stdout,
            stderr,
        } => {
            info.stdout = Some(stdout);
            info.stderr = Some(stderr);
            code
        }
        Exit::Reported(c) | Exit::Orphaned(c) => c,
        Exit::Failed(why) => {
            info.state = CallState::Failed;
            info.error = Some(why);
            None
        }
    };
    if info.exit_code.is_none() && info.oom_killed && info.state != CallState::Failed {
        info.exit_code = Some(OOM_EXIT);
    }
    if orphaned && info.exit_code.is_none() && info.error.is_none() {
        info.error =
            Some("the daemon restarted during the call: its exit status is unknown".into());
    }
    info
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
