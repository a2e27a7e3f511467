//! The replay's processes. `replay-agent` is one session's agent: it holds the task's agent
//! memory as the schedule says and starts each tool call at its time, either as a plain
//! child (arms a and b) or through `$SHELL -c` (arm c: inside an agentd session that is
//! agentd-shim, so each call gets its own cgroup with the declared intent). `replay-call`
//! is one tool call: it follows its memory steps and exits at its end. Memory is anonymous
//! mmap in 1 MiB chunks, every page touched; the time to map and touch each chunk is the
//! allocation latency (wall time: it includes waiting for a CPU). Calls report on stdout (one
//! JSON line) to the agent, which reports the session on its own stdout. A call the recording
//! shows ended before the next event is waited for, and the rest of the schedule shifts by
//! the delay: a slow VM stretches the task, it never overlaps calls that did not overlap.

use std::io::Read as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::plan::{self, Plan, Step};

const CHUNK: usize = 1 << 20;

/// Memory held in 1 MiB anonymous mappings.
struct Held {
    chunks: Vec<*mut libc::c_void>,
    /// Microseconds to map and touch each chunk allocated so far.
    lat_us: Vec<u32>,
}

impl Held {
    fn new() -> Held {
        Held {
            chunks: Vec::new(),
            lat_us: Vec::new(),
        }
    }

    /// Grows or shrinks to `mib` MiB; an error when the kernel refuses a mapping.
    fn set(&mut self, mib: u32) -> Result<()> {
        let want = mib as usize;
        while self.chunks.len() < want {
            let t = Instant::now();
            // SAFETY: an anonymous private mapping; no pointer is passed in.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    CHUNK,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                bail!("mmap of 1 MiB failed: {}", std::io::Error::last_os_error());
            }
            for off in (0..CHUNK).step_by(4096) {
                // SAFETY: `off` is inside the CHUNK-byte mapping just created, writable.
                unsafe { p.cast::<u8>().add(off).write_volatile(1) };
            }
            self.lat_us
                .push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
            self.chunks.push(p);
        }
        while self.chunks.len() > want {
            if let Some(p) = self.chunks.pop() {
                // SAFETY: `p` came from mmap with length CHUNK and is unmapped only here.
                unsafe { libc::munmap(p, CHUNK) };
            }
        }
        Ok(())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.set(0);
    }
}

/// What a call prints.
#[derive(Debug, Serialize, Deserialize)]
struct CallOut {
    lat_us: Vec<u32>,
}

/// What the agent prints at the end (one JSON line).
#[derive(Debug, Serialize, Deserialize)]
pub struct AgentOut {
    pub task: String,
    pub wall_ms: u64,
    pub calls: u64,
    /// Calls that ended by SIGKILL (or 137: a shell reporting it).
    pub calls_killed: u64,
    /// Calls that failed otherwise.
    pub calls_failed: u64,
    pub lat_us: Vec<u32>,
}

fn sleep_until(t0: Instant, ms: u64) {
    let at = t0 + Duration::from_millis(ms);
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

/// `replay-call`: follow `steps`, exit at `end_ms`, print the latencies.
pub fn call(steps: &str, end_ms: u64) -> Result<()> {
    let steps = plan::parse_steps(steps)?;
    let t0 = Instant::now();
    let mut held = Held::new();
    for (t, mib) in steps {
        sleep_until(t0, t);
        held.set(mib)?;
    }
    sleep_until(t0, end_ms);
    let out = CallOut {
        lat_us: std::mem::take(&mut held.lat_us),
    };
    drop(held);
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

struct Running {
    /// The call's recorded end.
    end_ms: u64,
    child: Child,
}

/// `replay-agent`: run the plan; `mode` is `child` or `shell`.
pub fn run(plan_path: &Path, mode: &str) -> Result<()> {
    let text = std::fs::read_to_string(plan_path)
        .with_context(|| format!("reading {}", plan_path.display()))?;
    let plan: Plan = serde_json::from_str(&text).context("parsing the plan")?;
    let me = std::env::current_exe().context("locating agentd-bench")?;
    let shell = match mode {
        "child" => None,
        "shell" => Some(std::env::var("SHELL").context("SHELL is not set")?),
        other => bail!("--calls must be child or shell, not {other:?}"),
    };
    // Events in time order: agent memory steps and call starts.
    enum Ev<'a> {
        Mem(Step),
        Call(&'a plan::CallPlan),
    }
    let mut evs: Vec<(u64, Ev<'_>)> = plan.agent.iter().map(|s| (s.0, Ev::Mem(*s))).collect();
    evs.extend(plan.calls.iter().map(|c| (c.start_ms, Ev::Call(c))));
    evs.sort_by_key(|e| e.0);

    let t0 = Instant::now();
    // How far the replay runs behind the schedule: when the agent had to wait for a call
    // that the recording shows ended before the next event, later events shift by as much,
    // so a slow machine stretches the timeline instead of overlapping calls that never
    // overlapped (which would invent memory peaks the task never had).
    let mut lag = 0u64;
    let mut held = Held::new();
    let mut running: Vec<Running> = Vec::new();
    let mut out = AgentOut {
        task: plan.task.clone(),
        wall_ms: 0,
        calls: 0,
        calls_killed: 0,
        calls_failed: 0,
        lat_us: Vec::new(),
    };
    for (t, ev) in &evs {
        sleep_until(t0, *t + lag);
        wait_ended(&mut running, &mut out, Some(*t))?;
        let late = elapsed_ms(t0).saturating_sub(*t + lag);
        lag += late;
        match ev {
            Ev::Mem((_, mib)) => held.set(*mib)?,
            Ev::Call(c) => {
                let dur = c.end_ms - c.start_ms;
                let steps = plan::steps_arg(&c.steps);
                let mut cmd = match &shell {
                    None => {
                        let mut cmd = Command::new(&me);
                        cmd.args(["replay-call", "--steps", &steps, "--end-ms"])
                            .arg(dur.to_string());
                        cmd
                    }
                    Some(sh) => {
                        let mut cmd = Command::new(sh);
                        cmd.arg("-c").arg(format!(
                            "exec {} replay-call --steps {steps} --end-ms {dur}",
                            me.display()
                        ));
                        // The recorded peak as the call's declared memory, plus the slack
                        // for the shim, the shell and the worker's own pages.
                        cmd.env(
                            "AGENTD_INTENT",
                            format!("memory={}M", c.peak_mib + super::SLACK_MIB),
                        );
                        cmd
                    }
                };
                let child = cmd
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting a tool call")?;
                out.calls += 1;
                running.push(Running {
                    end_ms: c.end_ms,
                    child,
                });
            }
        }
    }
    sleep_until(t0, plan.end_ms + lag);
    wait_ended(&mut running, &mut out, None)?;
    out.lat_us.extend_from_slice(&held.lat_us);
    drop(held);
    out.wall_ms = elapsed_ms(t0);
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

fn elapsed_ms(t0: Instant) -> u64 {
    u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Waits for the calls the recording shows ended by `by_ms` (all calls when `None`) and
/// collects their reports.
fn wait_ended(running: &mut Vec<Running>, out: &mut AgentOut, by_ms: Option<u64>) -> Result<()> {
    let mut i = 0;
    while i < running.len() {
        if by_ms.is_some_and(|t| running[i].end_ms > t) {
            i += 1;
            continue;
        }
        let mut r = running.swap_remove(i);
        let mut text = String::new();
        if let Some(mut so) = r.child.stdout.take() {
            let _ = so.read_to_string(&mut text);
        }
        let st = r.child.wait()?;
        use std::os::unix::process::ExitStatusExt;
        if st.signal() == Some(libc::SIGKILL) || st.code() == Some(137) {
            out.calls_killed += 1;
        } else if !st.success() {
            out.calls_failed += 1;
        }
        if let Some(c) = text
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<CallOut>(l).ok())
        {
            out.lat_us.extend(c.lat_us);
        }
    }
    Ok(())
}
