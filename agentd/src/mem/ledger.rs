//! The memory pool's decisions as a pure state machine: who is admitted, who gets a loan, who
//! is frozen next, who is thawed, and (last resort) who is killed. No cgroupfs here: the
//! kernel-facing loop (`pool.rs`) feeds measurements and events in and applies the returned
//! [`Action`]s, so every rule is tested on the host (unit tests and proptests below).
//!
//! The model. The pool has a `capacity` (bytes the daemon may hand out: the host's memory
//! for agents minus a reserve). Every session's agent leaf is reserved at
//! `max(measured usage, baseline)` and is never frozen or throttled. Every admitted call
//! holds a reservation equal to its `memory.high` (its grant, plus loans). A call whose
//! grant does not fit waits in the admission queue (higher priority first, then FIFO). A
//! call that hits its `memory.high` (memory.events `high`) is *starved* and gets a loan of
//! `loan_step` as soon as the pool has it, oldest and highest-priority first. When memory
//! pressure stalls a starved call (PSI trigger), the newest, lowest-priority running
//! borrower is frozen and its unused headroom goes back to the pool; frozen calls are thawed
//! in order when calls end. When the agents' own growth over-commits the pool, running
//! calls' unused headroom is cut (newest first). Only when the pool's real usage comes near
//! the hard limit is the newest, lowest-priority call killed, with the reason.
//!
//! Invariant kept by every operation: admissions, loans and thaws never make the committed
//! total exceed the capacity (tested by proptest).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Bytes.
pub type Bytes = u64;

/// A session's claim on the pool: served first when the pool is short, frozen last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    Normal,
    High,
}

impl Priority {
    /// Parses `low`, `normal` or `high`.
    pub fn parse(s: &str) -> Option<Priority> {
        match s {
            "low" => Some(Priority::Low),
            "normal" => Some(Priority::Normal),
            "high" => Some(Priority::High),
            _ => None,
        }
    }
}

/// One tool call: its session and number.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct CallKey {
    pub session: String,
    pub n: u64,
}

impl std::fmt::Display for CallKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/calls/{}", self.session, self.n)
    }
}

/// The pool's sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PoolConfig {
    /// What the pool hands out (agents' reservations + calls' memory.high).
    pub capacity: Bytes,
    /// The hard limit above the pool (the slice's memory.max); real usage this close to it
    /// (within `kill_margin`) makes the pool kill instead of letting the kernel OOM-kill.
    pub limit: Bytes,
    /// Real usage within this of `limit` triggers the last-resort kill.
    pub kill_margin: Bytes,
    /// One loan.
    pub loan_step: Bytes,
    /// Headroom left above a call's usage when its unused grant is cut.
    pub slack: Bytes,
}

/// Where a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallState {
    Queued,
    Running,
    Frozen,
    /// Killed by the pool; waiting for the kernel to release its memory.
    Killed,
}

/// What the loop must do to the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Let the call start with this memory.high.
    Admit { key: CallKey, high: Bytes },
    /// Write memory.high (a loan, or unused headroom cut).
    SetHigh { key: CallKey, high: Bytes },
    /// cgroup.freeze 1.
    Freeze { key: CallKey },
    /// Write memory.high, then cgroup.freeze 0.
    Thaw { key: CallKey, high: Bytes },
    /// Write the reason to the call's stderr and report, then cgroup.kill.
    Kill { key: CallKey, reason: String },
}

#[derive(Debug, Clone)]
struct Call {
    prio: Priority,
    /// Admission order (request order): smaller is older.
    seq: u64,
    grant: Bytes,
    high: Bytes,
    usage: Bytes,
    state: CallState,
    /// Hit memory.high and waits for a loan.
    starved: bool,
}

impl Call {
    fn loan(&self) -> Bytes {
        self.high.saturating_sub(self.grant)
    }
    /// What the call holds of the pool.
    fn reserved(&self) -> Bytes {
        match self.state {
            CallState::Queued => 0,
            CallState::Running => self.high.max(self.usage),
            CallState::Frozen | CallState::Killed => self.usage.max(self.high),
        }
    }
}

#[derive(Debug, Clone)]
struct Agent {
    prio: Priority,
    usage: Bytes,
    baseline: Bytes,
}

/// A call as `agentctl top` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallView {
    pub session: String,
    pub n: u64,
    pub priority: Priority,
    pub state: CallState,
    pub grant: Bytes,
    pub high: Bytes,
    pub loan: Bytes,
    pub usage: Bytes,
    pub starved: bool,
}

/// The pool as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolView {
    pub capacity: Bytes,
    pub limit: Bytes,
    pub committed: Bytes,
    pub free: i64,
    pub agents: Bytes,
    pub loans: Bytes,
    pub queued: usize,
    pub frozen: usize,
    pub calls: Vec<CallView>,
    /// Freezes, thaws, loans and kills so far.
    pub freezes: u64,
    pub thaws: u64,
    pub loans_made: u64,
    pub kills: u64,
}

/// The state machine.
#[derive(Debug, Clone)]
pub struct Ledger {
    cfg: PoolConfig,
    agents: BTreeMap<String, Agent>,
    calls: BTreeMap<CallKey, Call>,
    next_seq: u64,
    freezes: u64,
    thaws: u64,
    loans_made: u64,
    kills: u64,
    /// Pressure events in a row in which the first starved call could get nothing.
    stuck: u32,
}

/// Pressure events in a row without any progress (no loan, no call ended) after which the
/// newest frozen call is killed: freezing stops growth but frees nothing without swap, so
/// when every other call is frozen or starved, only a kill lets the oldest one finish.
pub const STUCK_LIMIT: u32 = 5;

/// Sort key of [`serve_order`].
type ServeKey = (std::cmp::Reverse<Priority>, u64);
/// Sort key of [`victim_order`].
type VictimKey = (Priority, bool, std::cmp::Reverse<u64>);

/// Serving order: higher priority first, then older.
fn serve_order(c: &Call) -> ServeKey {
    (std::cmp::Reverse(c.prio), c.seq)
}

/// Victim order: lower priority first, borrowers before non-borrowers, then newer.
fn victim_order(c: &Call) -> VictimKey {
    (c.prio, c.loan() == 0, std::cmp::Reverse(c.seq))
}

impl Ledger {
    pub fn new(cfg: PoolConfig) -> Ledger {
        Ledger {
            cfg,
            agents: BTreeMap::new(),
            calls: BTreeMap::new(),
            next_seq: 0,
            freezes: 0,
            thaws: 0,
            loans_made: 0,
            kills: 0,
            stuck: 0,
        }
    }

    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    /// Agents' reservations plus admitted calls'.
    pub fn committed(&self) -> Bytes {
        let a: Bytes = self.agents.values().map(|a| a.usage.max(a.baseline)).sum();
        a + self.calls.values().map(Call::reserved).sum::<Bytes>()
    }

    /// Capacity minus committed (negative when the agents over-commit the pool).
    pub fn free(&self) -> i64 {
        self.cfg.capacity as i64 - self.committed() as i64
    }

    /// A session joins with its priority and its agent's baseline.
    pub fn add_session(&mut self, id: &str, prio: Priority, baseline: Bytes) {
        self.agents.insert(
            id.to_string(),
            Agent {
                prio,
                usage: 0,
                baseline,
            },
        );
    }

    /// The session ended: its agent and every call of it leave the pool.
    pub fn remove_session(&mut self, id: &str) -> Vec<Action> {
        self.agents.remove(id);
        self.calls.retain(|k, _| k.session != id);
        self.settle_with(true)
    }

    /// The agent leaf's measured usage (and a new baseline, if the loop measured one).
    pub fn agent_usage(&mut self, id: &str, usage: Bytes, baseline: Option<Bytes>) -> Vec<Action> {
        if let Some(a) = self.agents.get_mut(id) {
            a.usage = usage;
            if let Some(b) = baseline {
                a.baseline = b;
            }
        }
        self.settle()
    }

    /// A call asks for `grant` bytes: admitted now (an [`Action::Admit`] in the answer) or
    /// queued until one is returned by a later operation. The grant is capped at the
    /// capacity (a call never waits for more than the pool can ever give).
    pub fn request(&mut self, key: CallKey, grant: Bytes) -> Vec<Action> {
        let prio = self
            .agents
            .get(&key.session)
            .map_or(Priority::Normal, |a| a.prio);
        self.next_seq += 1;
        self.calls.insert(
            key,
            Call {
                prio,
                seq: self.next_seq,
                grant: grant.min(self.cfg.capacity),
                high: 0,
                usage: 0,
                state: CallState::Queued,
                starved: false,
            },
        );
        self.settle()
    }

    /// A call's measured usage (no decision by itself; the next event uses it).
    pub fn call_usage(&mut self, key: &CallKey, usage: Bytes) {
        // A queued call has no cgroup yet: nothing of it can be measured.
        if let Some(c) = self.calls.get_mut(key)
            && c.state != CallState::Queued
        {
            c.usage = usage;
        }
    }

    /// memory.events `high` of a call: it is throttled at its memory.high and wants a loan.
    pub fn high_event(&mut self, key: &CallKey, usage: Bytes) -> Vec<Action> {
        if let Some(c) = self.calls.get_mut(key)
            && c.state == CallState::Running
        {
            c.usage = usage;
            c.starved = true;
        }
        self.settle()
    }

    /// A PSI trigger of the pool fired (calls stall on memory). If a starved call waits
    /// while a newer or lower-priority call runs, the first victim is frozen and its unused
    /// headroom goes to the pool; then loans are made in serving order.
    pub fn pressure(&mut self) -> Vec<Action> {
        let Some((first_key, first)) = self
            .calls
            .iter()
            .filter(|(_, c)| c.state == CallState::Running && c.starved)
            .min_by_key(|(_, c)| serve_order(c))
            .map(|(k, c)| (k.clone(), c.clone()))
        else {
            self.stuck = 0;
            return self.settle();
        };
        let (first_session, first_n) = (first_key.session.clone(), first_key.n);
        let victim = self
            .calls
            .iter()
            .filter(|(_, c)| {
                c.state == CallState::Running
                    && serve_order(c) > serve_order(&first)
                    && c.prio <= first.prio
            })
            .min_by_key(|(_, c)| victim_order(c))
            .map(|(k, _)| k.clone());
        let mut out = Vec::new();
        if let Some(k) = victim
            && let Some(c) = self.calls.get_mut(&k)
        {
            c.state = CallState::Frozen;
            // Frozen, it cannot grow: what it holds is its usage; the rest returns.
            c.high = c.usage;
            c.starved = false;
            self.freezes += 1;
            out.push(Action::Freeze { key: k });
        } else {
            self.stuck += 1;
        }
        let loans_before = self.loans_made;
        out.extend(self.settle());
        if self.loans_made > loans_before {
            self.stuck = 0;
        }
        if self.stuck >= STUCK_LIMIT {
            // Last resort: the newest frozen call of the lowest priority, never a call
            // served before the starved one.
            let victim = self
                .calls
                .iter()
                .filter(|(_, c)| c.state == CallState::Frozen && c.prio <= first.prio)
                .min_by_key(|(_, c)| victim_order(c))
                .map(|(k, _)| k.clone());
            if let Some(k) = victim
                && let Some(c) = self.calls.get_mut(&k)
            {
                c.state = CallState::Killed;
                self.kills += 1;
                self.stuck = 0;
                out.push(Action::Kill {
                    reason: format!(
                        "agentd memory pool: killed {k} as the last resort: it was frozen to \
                         let older calls finish, but the oldest ({first_key}) stayed starved \
                         for {STUCK_LIMIT} pressure windows with nothing left to freeze and \
                         nothing returned to the pool (capacity {} MiB)",
                        self.cfg.capacity >> 20,
                        first_key = CallKey {
                            session: first_session.clone(),
                            n: first_n
                        },
                    ),
                    key: k,
                });
            }
        }
        out
    }

    /// The pool's real usage (the slice's memory.current). Near the hard limit, the newest
    /// lowest-priority call is killed before the kernel's OOM killer picks an agent.
    pub fn real_usage(&mut self, used: Bytes) -> Vec<Action> {
        let mut out = Vec::new();
        let killing = self.calls.values().any(|c| c.state == CallState::Killed);
        if used + self.cfg.kill_margin >= self.cfg.limit && !killing {
            let victim = self
                .calls
                .iter()
                .filter(|(_, c)| matches!(c.state, CallState::Running | CallState::Frozen))
                .min_by_key(|(_, c)| victim_order(c))
                .map(|(k, _)| k.clone());
            if let Some(k) = victim
                && let Some(c) = self.calls.get_mut(&k)
            {
                c.state = CallState::Killed;
                self.kills += 1;
                out.push(Action::Kill {
                    reason: format!(
                        "agentd memory pool: killed {k} as the last resort: the pool's memory \
                         ({} MiB) came within {} MiB of its hard limit ({} MiB) with no call \
                         left to freeze or throttle; this call was the newest of the lowest \
                         priority",
                        used >> 20,
                        self.cfg.kill_margin >> 20,
                        self.cfg.limit >> 20
                    ),
                    key: k,
                });
            }
        }
        out.extend(self.settle());
        out
    }

    /// The call ended: its grant and loans return; frozen calls are thawed in order, loans
    /// made and queued calls admitted.
    pub fn finish(&mut self, key: &CallKey) -> Vec<Action> {
        self.calls.remove(key);
        self.stuck = 0;
        self.settle_with(true)
    }

    /// Whether the call is admitted (running or frozen).
    pub fn state(&self, key: &CallKey) -> Option<CallState> {
        self.calls.get(key).map(|c| c.state)
    }

    /// The call's current memory.high.
    pub fn high(&self, key: &CallKey) -> Option<Bytes> {
        self.calls.get(key).map(|c| c.high)
    }

    fn settle(&mut self) -> Vec<Action> {
        self.settle_with(false)
    }

    /// Brings the pool back in balance: cut unused headroom while over-committed, then lend
    /// to starved calls, thaw frozen ones and admit queued ones, each in serving order and
    /// each only with what is free.
    fn settle_with(&mut self, thaw: bool) -> Vec<Action> {
        let mut out = Vec::new();
        // 1. Over-committed (agents grew): cut running calls' unused headroom, victims first.
        let mut deficit = -self.free();
        if deficit > 0 {
            let mut order: Vec<(CallKey, VictimKey)> = self
                .calls
                .iter()
                .filter(|(_, c)| c.state == CallState::Running)
                .map(|(k, c)| (k.clone(), victim_order(c)))
                .collect();
            order.sort_by_key(|o| o.1);
            for (k, _) in order {
                if deficit <= 0 {
                    break;
                }
                let slack = self.cfg.slack;
                let Some(c) = self.calls.get_mut(&k) else {
                    continue;
                };
                let floor = c.usage + slack;
                if c.high > floor {
                    let cut = (c.high - floor).min(deficit as Bytes);
                    c.high -= cut;
                    deficit -= cut as i64;
                    out.push(Action::SetHigh {
                        key: k,
                        high: c.high,
                    });
                }
            }
        }
        // 2. Loans to starved calls, in serving order.
        let step = self.cfg.loan_step;
        let mut starved: Vec<(CallKey, ServeKey)> = self
            .calls
            .iter()
            .filter(|(_, c)| c.state == CallState::Running && c.starved)
            .map(|(k, c)| (k.clone(), serve_order(c)))
            .collect();
        starved.sort_by_key(|o| o.1);
        for (k, _) in starved {
            let free = self.free();
            let Some(c) = self.calls.get_mut(&k) else {
                continue;
            };
            // A loan costs one step above the larger of high and usage (its reservation).
            let base = c.high.max(c.usage);
            if free < step as i64 {
                break;
            }
            c.high = base + step;
            c.starved = false;
            self.loans_made += 1;
            out.push(Action::SetHigh {
                key: k,
                high: c.high,
            });
        }
        // 3. Thaw frozen calls in order (each with one step of room to go on) — only when
        //    memory came back (a call ended, or nothing is starved any more): thawing right
        //    after a freeze would hand the victim back what the freeze was for.
        let thaw = thaw
            || !self
                .calls
                .values()
                .any(|c| c.state == CallState::Running && (c.starved || c.loan() > 0));
        let mut frozen: Vec<(CallKey, ServeKey)> = self
            .calls
            .iter()
            .filter(|(_, c)| c.state == CallState::Frozen)
            .map(|(k, c)| (k.clone(), serve_order(c)))
            .collect();
        frozen.sort_by_key(|o| o.1);
        for (k, _) in frozen.into_iter().filter(|_| thaw) {
            let free = self.free();
            let Some(c) = self.calls.get_mut(&k) else {
                continue;
            };
            let high = c.usage + step;
            let cost = high.saturating_sub(c.reserved());
            if free < cost as i64 {
                break;
            }
            c.high = high;
            c.state = CallState::Running;
            self.thaws += 1;
            out.push(Action::Thaw { key: k, high });
        }
        // 4. Admit queued calls, in serving order; the head blocks the rest (no starvation
        //    of big calls). With nothing else admitted, the head starts with what is free.
        let mut queued: Vec<(CallKey, ServeKey)> = self
            .calls
            .iter()
            .filter(|(_, c)| c.state == CallState::Queued)
            .map(|(k, c)| (k.clone(), serve_order(c)))
            .collect();
        queued.sort_by_key(|o| o.1);
        for (k, _) in queued {
            let free = self.free();
            let alone = !self
                .calls
                .values()
                .any(|c| c.state != CallState::Queued && c.state != CallState::Killed);
            let Some(c) = self.calls.get_mut(&k) else {
                continue;
            };
            let high = if free >= c.grant as i64 {
                c.grant
            } else if alone {
                free.max(0) as Bytes
            } else {
                break;
            };
            c.high = high;
            c.state = CallState::Running;
            out.push(Action::Admit { key: k, high });
        }
        out
    }

    /// The pool for `agentctl top` and the stats API.
    pub fn view(&self) -> PoolView {
        let mut calls: Vec<CallView> = self
            .calls
            .iter()
            .map(|(k, c)| CallView {
                session: k.session.clone(),
                n: k.n,
                priority: c.prio,
                state: c.state,
                grant: c.grant,
                high: c.high,
                loan: c.loan(),
                usage: c.usage,
                starved: c.starved,
            })
            .collect();
        calls.sort_by(|a, b| (&a.session, a.n).cmp(&(&b.session, b.n)));
        PoolView {
            capacity: self.cfg.capacity,
            limit: self.cfg.limit,
            committed: self.committed(),
            free: self.free(),
            agents: self.agents.values().map(|a| a.usage.max(a.baseline)).sum(),
            loans: self
                .calls
                .values()
                .filter(|c| c.state == CallState::Running)
                .map(Call::loan)
                .sum(),
            queued: self
                .calls
                .values()
                .filter(|c| c.state == CallState::Queued)
                .count(),
            frozen: self
                .calls
                .values()
                .filter(|c| c.state == CallState::Frozen)
                .count(),
            calls,
            freezes: self.freezes,
            thaws: self.thaws,
            loans_made: self.loans_made,
            kills: self.kills,
        }
    }
}

#[cfg(test)]
#[path = "ledger_tests.rs"]
mod tests;
