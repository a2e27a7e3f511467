//! From a recorded task (`../shared/traces/agent-tasks.jsonl`, format in its README) to a
//! replay schedule: time divided by the time scale, MiB divided by the memory scale. The
//! agent's own memory follows the samples outside tool calls and holds its level during a
//! call; a call's memory is what the container held above that level while it ran (its
//! samples), or, for a call shorter than the 1 Hz sampling, its recorded `peak_mb` as one
//! burst. The call's intent (arm c) and the session's static limit (arm b) come from the
//! recorded peaks.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One line of the trace file.
#[derive(Debug, Clone, Deserialize)]
pub struct Task {
    pub task: String,
    pub model: String,
    /// `[t seconds, MiB, cpu %]`.
    pub samples: Vec<(f64, f64, f64)>,
    pub calls: Vec<TraceCall>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TraceCall {
    pub t: f64,
    pub dur: f64,
    pub tool: String,
    #[serde(default)]
    pub peak_mb: Option<f64>,
}

impl Task {
    pub fn duration_s(&self) -> f64 {
        self.samples.last().map(|s| s.0).unwrap_or(0.0)
    }
}

/// Reads the trace; an error names the file and line.
pub fn load(path: &Path) -> Result<Vec<Task>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}

/// How a trace is replayed.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Scale {
    /// Recorded seconds per replayed second.
    pub time: f64,
    /// Recorded MiB per replayed MiB.
    pub memory: f64,
}

/// A memory level from a time on, relative to the schedule's start.
pub type Step = (u64, u32);

/// One replayed tool call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallPlan {
    pub tool: String,
    pub start_ms: u64,
    pub end_ms: u64,
    /// Memory above the agent's level, relative to the call's start.
    pub steps: Vec<Step>,
    /// The call's recorded peak above the agent's level (scaled), MiB.
    pub peak_mib: u32,
}

/// A session's schedule, read by `agentd-bench replay-agent`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub task: String,
    /// The agent's own memory.
    pub agent: Vec<Step>,
    pub calls: Vec<CallPlan>,
    pub end_ms: u64,
    /// The task's recorded peak (scaled), MiB.
    pub peak_mib: u32,
}

fn mib(v: f64, scale: &Scale) -> u32 {
    (v.max(0.0) / scale.memory).round() as u32
}

fn ms(t: f64, scale: &Scale) -> u64 {
    (t.max(0.0) * 1000.0 / scale.time).round() as u64
}

/// Drops steps that repeat the previous level.
fn dedup(steps: Vec<Step>) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::with_capacity(steps.len());
    for s in steps {
        if out.last().is_none_or(|l| l.1 != s.1) {
            out.push(s);
        }
    }
    out
}

/// The replay schedule of `task`.
pub fn plan(task: &Task, scale: &Scale) -> Plan {
    let in_call = |t: f64| task.calls.iter().any(|c| t >= c.t && t <= c.t + c.dur);
    let agent = dedup(
        task.samples
            .iter()
            .filter(|s| !in_call(s.0))
            .map(|s| (ms(s.0, scale), mib(s.1, scale)))
            .collect(),
    );
    let level_at = |t: f64| {
        task.samples
            .iter()
            .rfind(|s| s.0 <= t && !in_call(s.0))
            .map(|s| s.1)
            .unwrap_or(0.0)
    };
    let calls = task
        .calls
        .iter()
        .map(|c| {
            let base = level_at(c.t);
            let start = ms(c.t, scale);
            let end = ms(c.t + c.dur, scale).max(start + 1);
            let inside: Vec<Step> = task
                .samples
                .iter()
                .filter(|s| s.0 >= c.t && s.0 <= c.t + c.dur)
                .map(|s| (ms(s.0, scale).saturating_sub(start), mib(s.1 - base, scale)))
                .collect();
            let peak = c.peak_mb.map(|p| mib(p - base, scale)).unwrap_or(0);
            let steps = if inside.is_empty() {
                // Shorter than the sampling interval: the recorded peak as one burst.
                vec![(0, peak)]
            } else {
                dedup(inside)
            };
            let peak_mib = steps.iter().map(|s| s.1).max().unwrap_or(0).max(peak);
            CallPlan {
                tool: c.tool.clone(),
                start_ms: start,
                end_ms: end,
                steps,
                peak_mib,
            }
        })
        .collect::<Vec<_>>();
    let peak = task.samples.iter().map(|s| s.1).fold(0.0, f64::max);
    let end_ms =
        ms(task.duration_s(), scale).max(calls.iter().map(|c| c.end_ms).max().unwrap_or(0));
    Plan {
        task: format!("{} ({})", task.task, task.model),
        agent,
        calls,
        end_ms,
        peak_mib: mib(peak, scale),
    }
}

/// `ms:MiB,…` for the call worker's command line.
pub fn steps_arg(steps: &[Step]) -> String {
    steps
        .iter()
        .map(|(t, m)| format!("{t}:{m}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses [`steps_arg`]'s format.
pub fn parse_steps(s: &str) -> Result<Vec<Step>> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (t, m) = p
                .split_once(':')
                .with_context(|| format!("step {p:?} is not ms:MiB"))?;
            Ok((
                t.parse().with_context(|| format!("step {p:?}: bad ms"))?,
                m.parse().with_context(|| format!("step {p:?}: bad MiB"))?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> Task {
        serde_json::from_str(
            r#"{"task":"t","model":"m",
                "samples":[[0,40,0],[1,40,0],[2,140,0],[3,240,0],[4,40,0],[5,80,0]],
                "calls":[{"t":1.5,"dur":2.0,"tool":"Bash","peak_mb":240},
                         {"t":4.2,"dur":0.1,"tool":"Read","peak_mb":60}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn agent_holds_its_level_and_calls_get_what_is_above_it() {
        let p = plan(
            &task(),
            &Scale {
                time: 10.0,
                memory: 4.0,
            },
        );
        // Samples at 2 and 3 s are inside the first call: the agent skips them.
        assert_eq!(p.agent, vec![(0, 10), (500, 20)]);
        let c = &p.calls[0];
        assert_eq!((c.start_ms, c.end_ms), (150, 350));
        // (140-40)/4 = 25 at 2 s (50 ms into the call), (240-40)/4 = 50 at 3 s.
        assert_eq!(c.steps, vec![(50, 25), (150, 50)]);
        assert_eq!(c.peak_mib, 50);
        // No sample inside the 0.1 s call: its peak above the agent (60-40)/4 = 5 as a burst.
        let r = &p.calls[1];
        assert_eq!(r.steps, vec![(0, 5)]);
        assert_eq!((r.start_ms, r.end_ms), (420, 430));
        assert_eq!(p.end_ms, 500);
        assert_eq!(p.peak_mib, 60);
    }

    #[test]
    fn steps_round_trip_and_errors() {
        let s = vec![(0, 1), (250, 30)];
        assert_eq!(parse_steps(&steps_arg(&s)).unwrap(), s);
        assert!(parse_steps("10").is_err());
        assert!(parse_steps("a:1").is_err());
    }

    #[test]
    fn the_shipped_trace_parses() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/traces/agent-tasks.jsonl");
        if p.exists() {
            let tasks = load(&p).unwrap();
            assert!(tasks.len() > 10);
            for t in &tasks {
                let pl = plan(
                    t,
                    &Scale {
                        time: 50.0,
                        memory: 4.0,
                    },
                );
                assert!(pl.end_ms > 0 && pl.peak_mib > 0, "{}", t.task);
            }
        }
    }
}
