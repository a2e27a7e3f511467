//! What a tool call answers, built from the daemon's answer: bounded output (first and last
//! halves kept, the cut said), the call's resource report, and the reason class of a
//! failure (OOM, timeout, pids limit, refused, cancelled) so an agent can tell "my command
//! failed" from "agentd stopped it". Pure, host-tested.

use std::collections::VecDeque;

use rmcp::model::{CallToolResult, ContentBlock};
use serde_json::json;

use crate::api::{CallInfo, CallState};
use crate::client::ClientError;
use crate::ctl::bytes;

/// A stream's output as it comes, keeping at most `limit` bytes: the first half and the
/// last half.
#[derive(Debug)]
pub struct Capture {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    head_max: usize,
    tail_max: usize,
    total: u64,
}

impl Capture {
    /// Keeps the first and last `limit / 2` bytes.
    pub fn new(limit: usize) -> Capture {
        let head_max = limit.div_ceil(2);
        Capture::with(head_max, limit - head_max)
    }

    /// Keeps only the first `limit` bytes (file contents).
    pub fn head(limit: usize) -> Capture {
        Capture::with(limit, 0)
    }

    fn with(head_max: usize, tail_max: usize) -> Capture {
        Capture {
            head: Vec::new(),
            tail: VecDeque::new(),
            head_max,
            tail_max,
            total: 0,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        let room = self.head_max.saturating_sub(self.head.len());
        let (h, rest) = data.split_at(room.min(data.len()));
        self.head.extend_from_slice(h);
        if self.tail_max == 0 {
            return;
        }
        self.tail.extend(rest);
        let over = self.tail.len().saturating_sub(self.tail_max);
        self.tail.drain(..over);
    }

    /// Bytes seen in all.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes not kept.
    pub fn cut(&self) -> u64 {
        self.total - (self.head.len() + self.tail.len()) as u64
    }

    /// The kept text, with a marker where the cut is.
    pub fn text(&self) -> String {
        let mut s = String::from_utf8_lossy(&self.head).into_owned();
        if self.cut() > 0 && self.tail_max > 0 {
            s.push_str(&format!("\n[… {} bytes cut …]\n", self.cut()));
        }
        let (a, b) = self.tail.as_slices();
        s.push_str(&String::from_utf8_lossy(&[a, b].concat()));
        s
    }
}

/// Why agentd (not the command itself) stopped or refused a call.
pub fn reason(c: &CallInfo, cancelled: bool) -> Option<(&'static str, String)> {
    if cancelled {
        return Some((
            "cancelled",
            format!(
                "cancelled by the client: call {}'s cgroup was killed (exit {})",
                c.n,
                code(c)
            ),
        ));
    }
    if c.oom_killed {
        return Some((
            "oom",
            format!(
                "OOM: the call used all of its memory.max {} and the kernel killed its cgroup \
                 (exit {}); declare more with intent.memory if the policy allows, or use less",
                bytes(c.limits.memory),
                code(c)
            ),
        ));
    }
    match c.state {
        CallState::TimedOut => {
            return Some((
                "timeout",
                format!(
                    "timeout: the call ran past its {}s limit and its cgroup was killed",
                    c.limits.timeout_s
                ),
            ));
        }
        CallState::Failed => {
            return Some((
                "failed",
                format!(
                    "agentd could not run the call: {}",
                    c.error.as_deref().unwrap_or("no reason given")
                ),
            ));
        }
        CallState::Running | CallState::Exited => {}
    }
    let pids_peak = c
        .report
        .as_ref()
        .and_then(|r| r.stats.pids)
        .and_then(|p| p.peak);
    if c.exit_code != Some(0) && pids_peak.is_some_and(|p| p >= u64::from(c.limits.pids)) {
        return Some((
            "pids-limit",
            format!(
                "limit hit: the call reached its pids.max {} (fork/clone failed); declare \
                 intent.pids or start fewer processes",
                c.limits.pids
            ),
        ));
    }
    None
}

fn code(c: &CallInfo) -> String {
    c.exit_code.map_or("unknown".into(), |e| e.to_string())
}

/// One line of figures from the report.
pub fn figures(c: &CallInfo) -> String {
    let r = c.report.as_ref();
    let mut s = format!(
        "call {}: {}",
        c.n,
        match c.exit_code {
            Some(e) => format!("exit {e}"),
            None => c.state.as_str().to_string(),
        }
    );
    if let Some(r) = r {
        s.push_str(&format!(" · wall {}ms", r.wall_ms));
        s.push_str(&format!(" · cpu {}ms", r.stats.cpu.usage_usec / 1000));
    }
    if let Some(p) = r.and_then(|r| r.stats.memory).and_then(|m| m.peak) {
        s.push_str(&format!(" · memory peak {}", bytes(p)));
    }
    s.push_str(&format!(
        " (memory.max {}, {} cpu, timeout {}s, pids {})",
        bytes(c.limits.memory),
        c.limits.cpu_class,
        c.limits.timeout_s,
        c.limits.pids
    ));
    s
}

/// The answer to `exec`.
pub fn exec_result(c: &CallInfo, out: &Capture, err: &Capture, cancelled: bool) -> CallToolResult {
    let why = reason(c, cancelled);
    let mut text = String::new();
    if let Some((_, w)) = &why {
        text.push_str(w);
        text.push('\n');
    }
    text.push_str(&figures(c));
    for (name, cap) in [("stdout", out), ("stderr", err)] {
        text.push_str(&format!("\n--- {name} ({} bytes", cap.total()));
        if cap.cut() > 0 {
            text.push_str(&format!(", {} cut from the middle", cap.cut()));
        }
        text.push_str(") ---\n");
        text.push_str(&cap.text());
    }
    let structured = json!({
        "call": c.n,
        "state": c.state,
        "exit_code": c.exit_code,
        "oom_killed": c.oom_killed,
        "reason": why.as_ref().map(|w| w.0),
        "stdout": out.text(),
        "stderr": err.text(),
        "stdout_bytes": out.total(),
        "stderr_bytes": err.total(),
        "truncated": out.cut() > 0 || err.cut() > 0,
        "limits": c.limits,
        "report": c.report,
    });
    let mut r = if why.is_some() {
        CallToolResult::error(vec![ContentBlock::text(text)])
    } else {
        CallToolResult::success(vec![ContentBlock::text(text)])
    };
    r.structured_content = Some(structured);
    r
}

/// A refusal by the daemon (policy, bad input, session not running) as an error result: the
/// agent reads the reason and can adapt.
pub fn refused(tool: &str, e: &ClientError) -> CallToolResult {
    let class = match e {
        ClientError::Api { status, .. } if status.as_u16() == 400 => "denied",
        ClientError::Api { status, .. } if status.as_u16() == 403 => "forbidden",
        ClientError::Api { status, .. } if status.as_u16() == 409 => "session-not-running",
        _ => "daemon",
    };
    let mut r = CallToolResult::error(vec![ContentBlock::text(format!("{tool}: {e}"))]);
    r.structured_content = Some(json!({"reason": class, "error": e.to_string()}));
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use crate::api::CallLimits;

    fn call(state: CallState, exit: Option<i32>, oom: bool) -> CallInfo {
        let mut c = CallInfo::running(
            "s",
            3,
            &["x".to_string()],
            Default::default(),
            CallLimits {
                memory: 64 << 20,
                cpu_class: agentd_policy::CpuClass::Batch,
                cpu_weight: 50,
                timeout_s: 30,
                pids: 16,
                rule: None,
                notes: vec![],
            },
        );
        c.state = state;
        c.exit_code = exit;
        c.oom_killed = oom;
        c
    }

    #[test]
    fn capture_keeps_both_ends_and_counts_the_cut() {
        let mut c = Capture::new(10);
        for chunk in [&b"0123"[..], b"456789abcdef", b"XYZ"] {
            c.push(chunk);
        }
        assert_eq!((c.total(), c.cut()), (19, 9));
        assert_eq!(c.text(), "01234\n[… 9 bytes cut …]\nefXYZ");
        let mut h = Capture::head(4);
        h.push(b"abcdef");
        assert_eq!((h.text().as_str(), h.cut()), ("abcd", 2));
        let mut small = Capture::new(100);
        small.push(b"all of it");
        assert_eq!((small.text().as_str(), small.cut()), ("all of it", 0));
    }

    #[test]
    fn reasons_name_what_agentd_did() {
        let oom = call(CallState::Exited, Some(137), true);
        let r = exec_result(&oom, &Capture::new(8), &Capture::new(8), false);
        assert_eq!(r.is_error, Some(true));
        assert_eq!(r.structured_content.as_ref().unwrap()["reason"], "oom");
        let ContentBlock::Text(t) = &r.content[0] else {
            panic!("text")
        };
        assert!(
            t.text
                .starts_with("OOM: the call used all of its memory.max 64"),
            "{}",
            t.text
        );
        assert_eq!(
            reason(&call(CallState::TimedOut, Some(137), false), false)
                .unwrap()
                .0,
            "timeout"
        );
        assert_eq!(
            reason(&call(CallState::Failed, None, false), false)
                .unwrap()
                .0,
            "failed"
        );
        assert_eq!(reason(&oom, true).unwrap().0, "cancelled");
        let mut forked = call(CallState::Exited, Some(1), false);
        let mut report = cgctl::Report {
            path: String::new(),
            limits: Default::default(),
            wall_ms: 0,
            stats: Default::default(),
        };
        report.stats.pids = Some(cgctl::stats::PidsStats {
            peak: Some(16),
            ..Default::default()
        });
        forked.report = Some(report);
        assert_eq!(reason(&forked, false).unwrap().0, "pids-limit");
        let plain = call(CallState::Exited, Some(1), false);
        assert!(reason(&plain, false).is_none());
        let r = exec_result(&plain, &Capture::new(8), &Capture::new(8), false);
        assert_eq!(r.is_error, Some(false));
    }
}
