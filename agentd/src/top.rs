//! `agentctl top`: a live, refreshing view of the running sessions and their running tool
//! calls (like `cgctl top` / systemd-cgtop, but in agentd's terms: session, agent leaf, call
//! n with its command). Each refresh asks the daemon for `GET /v1/stats` (the same figures
//! as `agentctl stats`); CPU is a percentage of one CPU over the refresh interval, computed
//! here from the difference of two samples (pure: [`rows`], unit-tested). Sessions are
//! ordered by memory, largest first; within a session: the session total, the agent leaf,
//! then its calls by number. A last line names who schedules the sessions' tasks.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::api::{self, SessionStats, Usage};
use crate::client::Client;
use crate::ctl::bytes;

/// One line of the view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopRow {
    pub session: String,
    /// `session`, `agent` or `call <n>`.
    pub what: String,
    /// CPU use over the last interval, % of one CPU (None on the first sample of a cgroup).
    pub cpu_pct: Option<f64>,
    pub memory: Option<u64>,
    pub memory_peak: Option<u64>,
    pub pids: Option<u64>,
    pub oom_kills: u64,
    /// The call's command (empty for the session and agent rows).
    pub command: String,
}

fn key(session: &str, what: &str) -> String {
    format!("{session}/{what}")
}

fn cpu_by_key(list: &[SessionStats]) -> HashMap<String, u64> {
    let mut m = HashMap::new();
    for s in list {
        m.insert(key(&s.id, "session"), s.usage.cpu_usage_usec);
        m.insert(key(&s.id, "agent"), s.agent.cpu_usage_usec);
        for c in &s.calls {
            m.insert(key(&s.id, &format!("call {}", c.n)), c.usage.cpu_usage_usec);
        }
    }
    m
}

/// The rows of one refresh, from the previous sample, this one and the time between them.
pub fn rows(prev: &[SessionStats], now: &[SessionStats], elapsed: Duration) -> Vec<TopRow> {
    let before = cpu_by_key(prev);
    let secs = elapsed.as_secs_f64();
    let row = |session: &str, what: String, u: &Usage, command: String| {
        let cpu_pct = before.get(&key(session, &what)).and_then(|b| {
            (secs > 0.0).then(|| u.cpu_usage_usec.saturating_sub(*b) as f64 / 1e4 / secs)
        });
        TopRow {
            session: session.to_string(),
            what,
            cpu_pct,
            memory: u.memory_current,
            memory_peak: u.memory_peak,
            pids: u.pids_current,
            oom_kills: u.oom_kills,
            command,
        }
    };
    let mut sessions: Vec<&SessionStats> = now.iter().collect();
    sessions.sort_by(|a, b| {
        b.usage
            .memory_current
            .cmp(&a.usage.memory_current)
            .then_with(|| a.id.cmp(&b.id))
    });
    let mut out = Vec::new();
    for s in sessions {
        out.push(row(&s.id, "session".into(), &s.usage, String::new()));
        out.push(row(&s.id, "agent".into(), &s.agent, String::new()));
        let mut calls: Vec<_> = s.calls.iter().collect();
        calls.sort_by_key(|c| c.n);
        for c in calls {
            out.push(row(
                &s.id,
                format!("call {}", c.n),
                &c.usage,
                c.argv.join(" "),
            ));
        }
    }
    out
}

/// The text of one refresh: a summary line, then the table.
pub fn render(rows: &[TopRow]) -> String {
    let sessions = rows.iter().filter(|r| r.what == "session").count();
    let calls = rows.iter().filter(|r| r.what.starts_with("call ")).count();
    let mut out = format!("agentd: {sessions} sessions running, {calls} calls running\n");
    out.push_str(&format!(
        "{:<14} {:<10} {:>6} {:>9} {:>9} {:>5} {:>4}  {}\n",
        "SESSION", "WHAT", "CPU%", "MEM", "MEM.PEAK", "PIDS", "OOM", "COMMAND"
    ));
    let opt = |v: Option<u64>| v.map_or("-".to_string(), bytes);
    for r in rows {
        let _ = writeln!(
            out,
            "{:<14} {:<10} {:>6} {:>9} {:>9} {:>5} {:>4}  {}",
            r.session,
            r.what,
            r.cpu_pct.map_or("-".to_string(), |c| format!("{c:.1}")),
            opt(r.memory),
            opt(r.memory_peak),
            r.pids.map_or("-".to_string(), |p| p.to_string()),
            r.oom_kills,
            r.command
        );
    }
    out
}

/// Who schedules the sessions' tasks, read from /sys/kernel/sched_ext (docs/scheduler.md).
pub fn scheduler_line() -> String {
    let what = match agentd_bpf::sched::attached() {
        Some(n) if n == agentd_bpf::sched::OPS_NAME => {
            "agentd (sched_ext, partial mode: session tasks only)".to_owned()
        }
        Some(other) => format!("{other} (another BPF scheduler; agentd's is not attached)"),
        None if std::path::Path::new(agentd_bpf::sched::STATE_FILE).exists() => {
            "fair class (sched_ext present, agentd's scheduler not attached: see `agentd \
             doctor`)"
                .to_owned()
        }
        None => "fair class with cpu.weight/cpu.max (this kernel has no sched_ext)".to_owned(),
    };
    format!("scheduler: {what}\n")
}

/// What `agentctl top` was asked for.
#[derive(Debug, Clone)]
pub struct TopOpts {
    /// Seconds between refreshes (> 0).
    pub delay: f64,
    /// Stop after this many refreshes (None: until interrupted).
    pub iterations: Option<u64>,
    /// One JSON document (the rows) per refresh instead of the table.
    pub json: bool,
}

/// Runs the view: samples, waits `delay`, samples again and prints the rows, repeatedly.
/// On a terminal with no iteration count the screen is redrawn in place.
pub async fn run(c: &Client, o: &TopOpts) -> Result<(), String> {
    if !(o.delay.is_finite() && o.delay > 0.0) {
        return Err("--delay must be a positive number of seconds".into());
    }
    let delay = Duration::from_secs_f64(o.delay);
    let path = format!("{}/stats", api::PREFIX);
    let sample = || async { c.get::<Vec<SessionStats>>(&path).await };
    let mut prev = sample().await.map_err(|e| e.to_string())?;
    let mut prev_at = Instant::now();
    let tty = std::io::stdout().is_terminal();
    let interactive = o.iterations.is_none() && tty;
    let mut done = 0u64;
    while o.iterations.is_none_or(|n| done < n) {
        tokio::time::sleep(delay).await;
        let now = sample().await.map_err(|e| e.to_string())?;
        let table = rows(&prev, &now, prev_at.elapsed());
        prev_at = Instant::now();
        let mut out = std::io::stdout().lock();
        let w = if o.json {
            serde_json::to_string(&table)
                .map_err(|e| e.to_string())
                .and_then(|s| writeln!(out, "{s}").map_err(|e| e.to_string()))
        } else {
            // Home + clear, like top: redraw in place. The commands came from inside a
            // sandbox: their control characters are escaped before a terminal sees them.
            let clear = if interactive { "\x1b[H\x1b[2J" } else { "" };
            let text = format!("{}{}", render(&table), scheduler_line());
            let text = if tty {
                crate::term::escape_controls(&text)
            } else {
                text.into()
            };
            write!(out, "{clear}{text}").map_err(|e| e.to_string())
        };
        w.and_then(|()| out.flush().map_err(|e| e.to_string()))?;
        prev = now;
        done += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
    use super::*;
    use crate::api::CallStats;

    fn usage(mem: u64, cpu_usec: u64) -> Usage {
        Usage {
            cgroup: String::new(),
            memory_current: Some(mem),
            memory_peak: Some(mem * 2),
            cpu_usage_usec: cpu_usec,
            cpu_user_usec: 0,
            cpu_system_usec: 0,
            pids_current: Some(1),
            io_read_bytes: None,
            io_write_bytes: None,
            oom_kills: 0,
        }
    }

    fn sess(id: &str, mem: u64, cpu: u64, calls: &[(u64, u64)]) -> SessionStats {
        SessionStats {
            id: id.into(),
            owner_uid: 1000,
            usage: usage(mem, cpu),
            agent: usage(mem / 2, cpu / 2),
            calls: calls
                .iter()
                .map(|(n, c)| CallStats {
                    n: *n,
                    argv: vec!["make".into(), format!("t{n}")],
                    usage: usage(1 << 20, *c),
                })
                .collect(),
        }
    }

    #[test]
    fn cpu_is_the_difference_over_the_interval_and_new_cgroups_have_none() {
        let prev = [sess("a", 10 << 20, 1_000_000, &[(1, 0)])];
        // 0.5 s later: the session used 250 ms of CPU (50%), call 1 100 ms (20%), call 2 is new.
        let now = [sess("a", 10 << 20, 1_250_000, &[(2, 5), (1, 100_000)])];
        let r = rows(&prev, &now, Duration::from_millis(500));
        let what: Vec<&str> = r.iter().map(|r| r.what.as_str()).collect();
        assert_eq!(what, ["session", "agent", "call 1", "call 2"]);
        assert_eq!(r[0].cpu_pct, Some(50.0));
        assert_eq!(r[1].cpu_pct, Some(25.0));
        assert_eq!(r[2].cpu_pct, Some(20.0));
        assert_eq!(r[3].cpu_pct, None);
        assert_eq!(r[2].command, "make t1");
    }

    #[test]
    fn sessions_are_ordered_by_memory_and_the_summary_counts_them() {
        let now = [
            sess("small", 1 << 20, 0, &[]),
            sess("big", 64 << 20, 0, &[(3, 0)]),
        ];
        let r = rows(&[], &now, Duration::from_secs(1));
        assert_eq!(r[0].session, "big");
        assert_eq!(r[3].session, "small");
        let text = render(&r);
        assert!(
            text.starts_with("agentd: 2 sessions running, 1 calls running\n"),
            "{text}"
        );
        assert!(text.contains("call 3"), "{text}");
        assert!(text.contains("64.0M"), "{text}");
    }
}
