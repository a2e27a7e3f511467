//! `agentctl pool`: the memory pool as a person reads it — capacity and use, pressure, and
//! one line per call with its grant, loan, usage and state (queued, running, frozen, killed).

use super::pool::PoolStatus;

fn mib(b: u64) -> String {
    format!("{:.0}M", b as f64 / 1048576.0)
}

/// The pool as text.
pub fn pool_table(s: &PoolStatus) -> String {
    let v = &s.view;
    let mut out = format!(
        "pool: capacity {} of limit {} ({}), committed {}, free {}, used {}\n\
         agents {}, loans {}, {} queued, {} frozen; {} loans, {} freezes, {} thaws, {} kills\n\
         pressure: {} (fired {}x), some avg10 {}\n",
        mib(v.capacity),
        mib(v.limit),
        s.limit_cgroup,
        mib(v.committed),
        if v.free < 0 {
            format!("-{}", mib(v.free.unsigned_abs()))
        } else {
            mib(v.free as u64)
        },
        mib(s.used),
        mib(v.agents),
        mib(v.loans),
        v.queued,
        v.frozen,
        v.loans_made,
        v.freezes,
        v.thaws,
        v.kills,
        s.pressure_trigger,
        s.pressure_events,
        s.pressure_avg10.map_or("-".into(), |a| format!("{a:.2}%")),
    );
    out.push_str(&format!(
        "{:<14} {:>5} {:<7} {:<8} {:>7} {:>7} {:>7} {:>7}\n",
        "SESSION", "CALL", "PRIO", "STATE", "GRANT", "HIGH", "LOAN", "USAGE"
    ));
    for c in &v.calls {
        let state = match c.state {
            super::ledger::CallState::Queued => "queued",
            super::ledger::CallState::Running if c.starved => "starved",
            super::ledger::CallState::Running => "running",
            super::ledger::CallState::Frozen => "frozen",
            super::ledger::CallState::Killed => "killed",
        };
        let prio = match c.priority {
            super::Priority::Low => "low",
            super::Priority::Normal => "normal",
            super::Priority::High => "high",
        };
        out.push_str(&format!(
            "{:<14} {:>5} {:<7} {:<8} {:>7} {:>7} {:>7} {:>7}\n",
            if c.session.is_empty() {
                "-"
            } else {
                &c.session
            },
            c.n,
            prio,
            state,
            mib(c.grant),
            mib(c.high),
            mib(c.loan),
            mib(c.usage)
        ));
    }
    out
}
