//! The daemon's side of CPU scheduling (docs/scheduler.md): owns agentd's sched_ext scheduler
//! (`agentd_bpf::sched`, loaded at daemon start when the kernel's BTF has sched_ext) and the
//! per-call accounting program (`agentd_bpf::callacct`, on every kernel). It gives each live
//! session a slot and weight, writes each cgroup's class (the agent leaf: latency; a call:
//! its resolved CPU class) into the scheduler's map before the first task enters it, watches
//! the call's cgroup for accounting, and turns the figures into the call's `cpu_sched`.
//!
//! cpu.weight and cpu.max are written for every call whatever happens here
//! (`server::apply`), so a scheduler that fails to load, or that the kernel ejects, leaves
//! the fair class with the same relative weights. Nothing here fails a session or a call:
//! the scheduler is an optional mechanism (`agentd doctor`'s `sched_ext` row says why it is
//! not running).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

use agentd_bpf::callacct::{CallAcct, Figures};
use agentd_bpf::sched::{self as bsched, Class, Entry, SchedError, Scheduler};
use agentd_policy::CpuClass;

use crate::mem::Priority;
use serde::Serialize;

use crate::api::CallSched;

/// The scheduler's state, as `agentd doctor`, `agentctl top` and `GET /v1/sched` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "state", content = "detail")]
pub enum State {
    /// Attached in partial mode.
    Loaded,
    /// The kernel has no sched_ext: the fair class with cpu.weight/cpu.max (the fallback).
    NotSupported(String),
    /// sched_ext is there but the scheduler did not load or attach.
    Failed(String),
    /// It ran, and the kernel ended it (error, watchdog) or it was detached.
    Ejected(String),
}

/// What the daemon holds.
#[derive(Debug)]
pub struct Sched {
    sched: Mutex<Option<Scheduler>>,
    load: State,
    kernel_ext: bool,
    acct: Result<CallAcct, String>,
    slots: Mutex<HashMap<String, (u32, u32)>>,
}

/// The session weight of a priority (cpu.weight scale): the scheduler's first level.
pub fn session_weight(p: Priority) -> u32 {
    match p {
        Priority::Low => 50,
        Priority::Normal => 100,
        Priority::High => 200,
    }
}

/// A cgroup's id as the scheduler keys it: its cgroupfs inode number.
pub fn cgroup_id(path: &Path) -> std::io::Result<u64> {
    Ok(std::fs::metadata(path)?.ino())
}

impl Sched {
    /// Loads what this kernel supports (never fails: the state says what runs).
    pub fn start() -> Sched {
        let (sched, load, kernel_ext) = match Scheduler::load(&bsched::Config::default(), true) {
            Ok(Some(s)) => (Some(s), State::Loaded, true),
            Ok(None) => (None, State::Failed("loaded but not attached".into()), true),
            Err(e @ SchedError::NotSupported(_)) => {
                (None, State::NotSupported(e.to_string()), false)
            }
            Err(e @ SchedError::Btf(_)) => (None, State::NotSupported(e.to_string()), false),
            Err(e) => (None, State::Failed(e.to_string()), true),
        };
        match &load {
            State::Loaded => {
                crate::server::log::info("sched_ext scheduler `agentd` attached (partial mode)")
            }
            other => crate::server::log::info(&format!(
                "sched_ext scheduler not running ({other:?}); fallback: cpu.weight/cpu.max"
            )),
        }
        let acct = CallAcct::load().map_err(|e| e.to_string());
        if let Err(e) = &acct {
            crate::server::log::info(&format!("per-call CPU accounting off: {e}"));
        }
        Sched {
            sched: Mutex::new(sched),
            load,
            kernel_ext,
            acct,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Nothing loaded (unit tests of the daemon: the host's kernel is never touched).
    pub fn off(why: &str) -> Sched {
        Sched {
            sched: Mutex::new(None),
            load: State::NotSupported(why.to_owned()),
            kernel_ext: false,
            acct: Err(why.to_owned()),
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Whether session tasks should get SCHED_EXT: the kernel has sched_ext (then a
    /// scheduler loaded later, by a restarted daemon, picks them up as well).
    pub fn kernel_ext(&self) -> bool {
        self.kernel_ext
    }

    /// The state now (an attached scheduler the kernel ended shows as ejected).
    pub fn state(&self) -> State {
        let g = self.sched.lock().unwrap_or_else(|p| p.into_inner());
        match (&*g, &self.load) {
            (Some(s), _) => match s.stats() {
                Ok(st) => match st.exit {
                    Some(why) => State::Ejected(why),
                    None if bsched::attached().as_deref() == Some(bsched::OPS_NAME) => {
                        State::Loaded
                    }
                    None => State::Ejected("no longer attached".into()),
                },
                Err(e) => State::Ejected(e.to_string()),
            },
            (None, State::Loaded) => State::Ejected("detached".into()),
            (None, other) => other.clone(),
        }
    }

    /// The scheduler's counters, while it is loaded.
    pub fn stats(&self) -> Option<bsched::Stats> {
        let g = self.sched.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref().and_then(|s| s.stats().ok())
    }

    /// Why accounting is off, if it is.
    pub fn accounting_error(&self) -> Option<&str> {
        self.acct.as_ref().err().map(String::as_str)
    }

    /// Detaches the scheduler (tests, shutdown): session tasks go back to the fair class.
    pub fn detach(&self) {
        let mut g = self.sched.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = g.as_mut() {
            s.detach();
        }
        *g = None;
    }

    /// Live sessions with a slot.
    pub fn sessions(&self) -> usize {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// A session starts (or is re-adopted): a slot, and its agent leaf as latency work.
    pub fn session_started(&self, id: &str, agent_leaf: &Path, priority: Priority) {
        let weight = session_weight(priority);
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((s, _)) = slots.get(id) {
                *s
            } else {
                // Slot 0 is the unknown cgroups'; past the last slot sessions share one.
                let used: Vec<u32> = slots.values().map(|(s, _)| *s).collect();
                let s = (1..bsched::SLOTS)
                    .find(|s| !used.contains(s))
                    .unwrap_or(bsched::SLOTS - 1);
                slots.insert(id.to_owned(), (s, weight));
                s
            }
        };
        self.set(agent_leaf, slot, Class::Latency, 100, weight);
    }

    /// A session ended: its slot is free.
    pub fn session_ended(&self, id: &str) {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    fn set(&self, cg: &Path, slot: u32, class: Class, call_weight: u32, session_weight: u32) {
        let g = self.sched.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = g.as_ref() else { return };
        let entry = Entry {
            slot,
            class,
            call_weight,
            session_weight,
        };
        let r = cgroup_id(cg)
            .map_err(|e| e.to_string())
            .and_then(|id| s.set(id, entry).map_err(|e| e.to_string()));
        if let Err(e) = r {
            crate::server::log::info(&format!("scheduler: cannot classify {}: {e}", cg.display()));
        }
    }

    /// A call's cgroup exists and nothing runs in it yet: its class for the scheduler and
    /// the accounting watch.
    pub fn call_starting(&self, session: &str, cg: &Path, class: CpuClass, weight: u16) {
        let (slot, sw) = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(session)
            .copied()
            .unwrap_or((0, 100));
        let bclass = match class {
            CpuClass::Latency => Class::Latency,
            CpuClass::Batch => Class::Batch,
        };
        self.set(cg, slot, bclass, u32::from(weight), sw);
        if let (Ok(a), Ok(id)) = (&self.acct, cgroup_id(cg))
            && let Err(e) = a.watch(id)
        {
            crate::server::log::info(&format!("accounting: {}: {e}", cg.display()));
        }
    }

    /// The call with cgroup id `id` ended: forgets it and returns its figures (none when
    /// it was not watched).
    pub fn call_ended(&self, id: u64, class: CpuClass) -> Option<CallSched> {
        if let Some(s) = self
            .sched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            s.forget(id);
        }
        let f = self.acct.as_ref().ok()?.take(id)?;
        let scheduler = if self.state() == State::Loaded {
            "agentd"
        } else {
            "fair"
        };
        Some(figures(scheduler, class, f))
    }
}

fn figures(scheduler: &str, class: CpuClass, f: Figures) -> CallSched {
    CallSched {
        scheduler: scheduler.to_owned(),
        class,
        on_cpu_us: f.on_cpu_ns / 1000,
        runq_wait_us: f.runq_wait_ns / 1000,
        runq_wait_max_us: f.runq_wait_max_ns / 1000,
        off_cpu_us: f.off_cpu_ns / 1000,
        runs: f.runs,
        wakeups: f.wakeups,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_become_microseconds() {
        let c = figures(
            "fair",
            CpuClass::Batch,
            Figures {
                on_cpu_ns: 2_500_000,
                runq_wait_ns: 999,
                off_cpu_ns: 1_000,
                runq_wait_max_ns: 7_000,
                runs: 3,
                wakeups: 2,
            },
        );
        assert_eq!((c.on_cpu_us, c.runq_wait_us, c.off_cpu_us), (2500, 0, 1));
        assert_eq!((c.runq_wait_max_us, c.runs, c.wakeups), (7, 3, 2));
    }

    #[test]
    fn priorities_order_session_weights() {
        assert!(session_weight(Priority::Low) < session_weight(Priority::Normal));
        assert!(session_weight(Priority::Normal) < session_weight(Priority::High));
    }
}
