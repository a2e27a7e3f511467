//! The memory pool's kernel-facing loop: feeds the [`Ledger`] with what cgroupfs says and
//! applies its [`Action`]s. Inputs: memory.events `high` of every call (inotify through
//! cgctl's [`EventWatcher`], with a 200 ms re-read as a safety net for a notification that
//! raced a new cgroup), a PSI trigger on the daemon's root (`memory.pressure`, polled on a
//! thread of its own), and a 200 ms sample of the sessions' and calls' memory.current and of
//! the hard limit's. Outputs: memory.high written with O_NONBLOCK (a loan never stalls the
//! loop in reclaim), cgroup.freeze, cgroup.kill with the reason written to the call's stderr
//! first, and memory.min/low of each agent leaf following its measured usage. Calls wait
//! for admission in [`MemPool::admit`] before their cgroup exists.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::ledger::{Action, Bytes, CallKey, CallState, Ledger, PoolConfig, PoolView, Priority};
use crate::server::log;

/// The pool's settings (host policy `[resources.pool]`; `None` = derived from the limit).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PoolSettings {
    /// Hard limit the pool lives under; `None`: the lowest memory.max above the daemon's
    /// root, else the host's MemTotal.
    pub limit: Option<Bytes>,
    /// Kept back from the limit for the kernel, the daemon and overshoot.
    pub reserve: Option<Bytes>,
    /// One loan.
    pub loan_step: Option<Bytes>,
    /// PSI trigger: stall (ms) per 1 s window of `some` memory pressure on the root.
    pub pressure_stall_ms: Option<u64>,
}

/// Why the pool could not start.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("memory pool: {what} {path}: {source}")]
    Cgroup {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: cgctl::Error,
    },
    #[error("memory pool: no limit: no memory.max above {0} and no MemTotal in /proc/meminfo")]
    NoLimit(PathBuf),
    #[error("memory pool: the reserve ({reserve} bytes) leaves nothing of the limit ({limit})")]
    TooSmall { limit: Bytes, reserve: Bytes },
}

/// What `agentctl pool` and `GET /v1/pool` show.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolStatus {
    #[serde(flatten)]
    pub view: PoolView,
    /// The cgroup whose memory.max is the limit, and its memory.current.
    pub limit_cgroup: String,
    pub used: Bytes,
    /// The PSI trigger and how often it fired.
    pub pressure_trigger: String,
    pub pressure_events: u64,
    /// `avg10` of `some` memory pressure on the root, percent.
    pub pressure_avg10: Option<f64>,
}

struct CallSlot {
    cg: Option<cgctl::Cgroup>,
    waiter: Option<oneshot::Sender<Bytes>>,
    kill_reason: Option<String>,
    high_events: u64,
}

struct AgentSlot {
    session: cgctl::Cgroup,
    agent: cgctl::Cgroup,
    protected: Bytes,
}

struct Inner {
    ledger: Ledger,
    calls: HashMap<CallKey, CallSlot>,
    agents: HashMap<String, AgentSlot>,
    pressure_events: u64,
    used: Bytes,
}

/// The pool (one per daemon).
pub struct MemPool {
    root: PathBuf,
    limit_cg: cgctl::Cgroup,
    trigger: String,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for MemPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MemPool({})", self.root.display())
    }
}

/// Outside the sessions (the daemon, runtimes) in the limit's cgroup: reserved as an agent.
const OUTSIDE: &str = "";

fn read_u64(cg: &cgctl::Cgroup, file: &str) -> Option<Bytes> {
    cg.read(file).ok()?.trim().parse().ok()
}

/// The lowest memory.max at or above `root`, with its cgroup; else MemTotal and `root`.
fn hard_limit(root: &Path) -> Result<(Bytes, cgctl::Cgroup), PoolError> {
    let mut best: Option<(Bytes, PathBuf)> = None;
    let mut p = Some(root);
    while let Some(dir) = p {
        if !dir.starts_with("/sys/fs/cgroup") || dir == Path::new("/sys/fs/cgroup") {
            break;
        }
        if let Ok(t) = std::fs::read_to_string(dir.join("memory.max"))
            && let Ok(v) = t.trim().parse::<Bytes>()
            && best.as_ref().is_none_or(|b| v < b.0)
        {
            best = Some((v, dir.to_path_buf()));
        }
        p = dir.parent();
    }
    let (limit, path) = match best {
        Some(b) => b,
        None => {
            let total = std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("MemTotal:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                })
                .ok_or_else(|| PoolError::NoLimit(root.to_path_buf()))?;
            (total * 1024, root.to_path_buf())
        }
    };
    let cg = cgctl::Cgroup::open(&path).map_err(|source| PoolError::Cgroup {
        what: "opening",
        path: path.clone(),
        source,
    })?;
    Ok((limit, cg))
}

/// The pool's sizes from the settings and the limit.
pub fn pool_config(s: &PoolSettings, limit: Bytes) -> Result<PoolConfig, PoolError> {
    const MIB: Bytes = 1 << 20;
    let reserve = s.reserve.unwrap_or((limit / 16).max(16 * MIB));
    if reserve >= limit {
        return Err(PoolError::TooSmall { limit, reserve });
    }
    let loan_step = s
        .loan_step
        .unwrap_or((limit / 32).clamp(4 * MIB, 256 * MIB));
    Ok(PoolConfig {
        capacity: limit - reserve,
        limit,
        kill_margin: reserve / 2,
        loan_step,
        slack: loan_step / 2,
    })
}

/// `(session id, call number)` of a cgroup path `…/session-<id>/calls/<n>`.
fn parse_call(path: &Path) -> Option<CallKey> {
    let n = cgctl::tree::parse_call_dir(&path.file_name()?.to_string_lossy())?;
    let calls = path.parent()?;
    if calls.file_name()? != cgctl::tree::CALLS_DIR {
        return None;
    }
    let sess = calls.parent()?.file_name()?.to_string_lossy().into_owned();
    Some(CallKey {
        session: cgctl::tree::parse_session_dir(&sess)?.to_string(),
        n,
    })
}

impl MemPool {
    /// Sizes the pool under `root`'s hard limit, registers the PSI trigger (fails closed:
    /// a pool without pressure notification could not freeze in time) and starts the loop.
    pub fn start(root: &Path, settings: &PoolSettings) -> Result<Arc<MemPool>, PoolError> {
        let (found, limit_cg) = hard_limit(root)?;
        let limit = settings.limit.map_or(found, |l| l.min(found));
        let cfg = pool_config(settings, limit)?;
        let stall = Duration::from_millis(settings.pressure_stall_ms.unwrap_or(100));
        let trigger = cgctl::psi::Trigger::new(
            root,
            "memory.pressure",
            cgctl::psi::Stall::Some,
            stall,
            Duration::from_secs(1),
        )
        .map_err(|source| PoolError::Cgroup {
            what: "PSI trigger on",
            path: root.join("memory.pressure"),
            source,
        })?;
        let mut ledger = Ledger::new(cfg);
        ledger.add_session(OUTSIDE, Priority::High, 0);
        let pool = Arc::new(MemPool {
            root: root.to_path_buf(),
            limit_cg,
            trigger: format!(
                "some {} ms per 1 s on {}",
                stall.as_millis(),
                trigger.path().display()
            ),
            inner: Mutex::new(Inner {
                ledger,
                calls: HashMap::new(),
                agents: HashMap::new(),
                pressure_events: 0,
                used: 0,
            }),
        });
        log::info(&format!(
            "memory pool: capacity {} MiB under a limit of {} MiB ({}), loans of {} MiB, PSI {}",
            cfg.capacity >> 20,
            cfg.limit >> 20,
            pool.limit_cg.path().display(),
            cfg.loan_step >> 20,
            pool.trigger
        ));
        let weak = Arc::downgrade(&pool);
        std::thread::Builder::new()
            .name("agentd-psi".into())
            .spawn(move || psi_loop(weak, trigger))
            .map_err(|e| PoolError::Cgroup {
                what: "starting the PSI thread for",
                path: root.to_path_buf(),
                source: cgctl::Error::Io {
                    what: "thread",
                    source: e,
                },
            })?;
        tokio::spawn(tick_loop(Arc::downgrade(&pool)));
        tokio::spawn(event_loop(Arc::downgrade(&pool), root.to_path_buf()));
        Ok(pool)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A session joins: its agent leaf is reserved at its usage and protected, never frozen.
    pub fn add_session(&self, id: &str, prio: Priority, session: cgctl::Cgroup) {
        let agent = session.child(cgctl::tree::AGENT_LEAF).ok();
        let mut g = self.lock();
        g.ledger.add_session(id, prio, 0);
        if let Some(agent) = agent {
            g.agents.insert(
                id.to_string(),
                AgentSlot {
                    session,
                    agent,
                    protected: 0,
                },
            );
        }
    }

    /// The session ended.
    pub fn remove_session(&self, id: &str) {
        let mut g = self.lock();
        g.agents.remove(id);
        g.calls.retain(|k, _| k.session != id);
        let acts = g.ledger.remove_session(id);
        apply(&mut g, acts);
    }

    /// Waits until the call's grant fits the pool; returns its memory.high.
    pub async fn admit(&self, key: CallKey, grant: Bytes) -> Option<Bytes> {
        let (tx, rx) = oneshot::channel();
        {
            let mut g = self.lock();
            g.calls.insert(
                key.clone(),
                CallSlot {
                    cg: None,
                    waiter: Some(tx),
                    kill_reason: None,
                    high_events: 0,
                },
            );
            let acts = g.ledger.request(key, grant);
            apply(&mut g, acts);
        }
        rx.await.ok()
    }

    /// The call's cgroup exists (created with the admitted memory.high): the pool may act on
    /// it; a change decided meanwhile is applied now.
    pub fn attach(&self, key: &CallKey, cg: cgctl::Cgroup, admitted: Bytes) {
        let mut g = self.lock();
        let (high, state) = (g.ledger.high(key), g.ledger.state(key));
        if let Some(h) = high
            && h != admitted
        {
            let _ = cg.write_nonblock("memory.high", &h.to_string());
        }
        if state == Some(CallState::Frozen) {
            let _ = cg.freeze_nowait();
        }
        if let Some(s) = g.calls.get_mut(key) {
            s.cg = Some(cg);
        }
    }

    /// The call ended (or never started): its memory returns. The kill reason, if the pool
    /// killed it.
    pub fn finish(&self, key: &CallKey) -> Option<String> {
        let mut g = self.lock();
        let slot = g.calls.remove(key);
        let acts = g.ledger.finish(key);
        apply(&mut g, acts);
        slot.and_then(|s| s.kill_reason)
    }

    /// The pool as `agentctl top` shows it.
    pub fn status(&self) -> PoolStatus {
        let g = self.lock();
        let avg10 = std::fs::read_to_string(self.root.join("memory.pressure"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("some"))?
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("avg10="))?
                    .parse()
                    .ok()
            });
        PoolStatus {
            view: g.ledger.view(),
            limit_cgroup: self.limit_cg.path().display().to_string(),
            used: g.used,
            pressure_trigger: self.trigger.clone(),
            pressure_events: g.pressure_events,
            pressure_avg10: avg10,
        }
    }

    fn on_high(&self, key: &CallKey) {
        let mut g = self.lock();
        let Some(cg) = g.calls.get(key).and_then(|s| s.cg.clone()) else {
            return;
        };
        let usage = read_u64(&cg, "memory.current").unwrap_or(0);
        let acts = g.ledger.high_event(key, usage);
        apply(&mut g, acts);
    }

    fn on_pressure(&self) {
        let mut g = self.lock();
        g.pressure_events += 1;
        let acts = g.ledger.pressure();
        apply(&mut g, acts);
    }

    /// One sample of every cgroup the pool follows.
    fn tick(&self) {
        let mut g = self.lock();
        let mut acts = Vec::new();
        let mut starved = Vec::new();
        let mut in_calls: HashMap<String, Bytes> = HashMap::new();
        for (k, s) in g.calls.iter_mut() {
            let Some(cg) = &s.cg else { continue };
            let usage = read_u64(cg, "memory.current").unwrap_or(0);
            *in_calls.entry(k.session.clone()).or_default() += usage;
            let high = cg
                .read("memory.events")
                .map(|t| cgctl::stats::MemoryEvents::parse(&t).high)
                .unwrap_or(0);
            if high > s.high_events {
                s.high_events = high;
                starved.push((k.clone(), usage));
            }
        }
        for (k, usage) in starved {
            acts.extend(g.ledger.high_event(&k, usage));
        }
        let keys: Vec<CallKey> = g.calls.keys().cloned().collect();
        for k in keys {
            if let Some(cg) = g.calls.get(&k).and_then(|s| s.cg.clone()) {
                let u = read_u64(&cg, "memory.current").unwrap_or(0);
                g.ledger.call_usage(&k, u);
            }
        }
        let mut sessions_total = 0;
        let ids: Vec<String> = g.agents.keys().cloned().collect();
        for id in ids {
            let Some(a) = g.agents.get_mut(&id) else {
                continue;
            };
            let total = read_u64(&a.session, "memory.current").unwrap_or(0);
            sessions_total += total;
            let agent = total.saturating_sub(in_calls.get(&id).copied().unwrap_or(0));
            // Protection follows the agent's measured usage in steps of 4 MiB (not a write
            // per sample): reclaim by the limit's pressure never takes the agent's pages.
            let want = agent.next_multiple_of(4 << 20);
            if want != a.protected {
                let ok = a
                    .agent
                    .write_nonblock("memory.min", &want.to_string())
                    .is_ok()
                    && a.agent
                        .write_nonblock("memory.low", &want.to_string())
                        .is_ok();
                if ok {
                    a.protected = want;
                }
            }
            acts.extend(g.ledger.agent_usage(&id, agent, None));
        }
        let used = read_u64(&self.limit_cg, "memory.current").unwrap_or(0);
        g.used = used;
        acts.extend(
            g.ledger
                .agent_usage(OUTSIDE, used.saturating_sub(sessions_total), None),
        );
        acts.extend(g.ledger.real_usage(used));
        apply(&mut g, acts);
    }
}

/// Applies the ledger's decisions to the kernel. A cgroup that disappeared meanwhile (the
/// call ended) is no error: its `finish` follows.
fn apply(g: &mut Inner, acts: Vec<Action>) {
    for a in acts {
        match a {
            Action::Admit { key, high } => {
                if let Some(tx) = g.calls.get_mut(&key).and_then(|s| s.waiter.take()) {
                    let _ = tx.send(high);
                }
            }
            Action::SetHigh { key, high } => {
                if let Some(cg) = g.calls.get(&key).and_then(|s| s.cg.as_ref()) {
                    let _ = cg.write_nonblock("memory.high", &high.to_string());
                }
            }
            Action::Freeze { key } => {
                if let Some(cg) = g.calls.get(&key).and_then(|s| s.cg.as_ref()) {
                    let _ = cg.freeze_nowait();
                    log::info(&format!("memory pool: froze {key} (pressure)"));
                }
            }
            Action::Thaw { key, high } => {
                if let Some(cg) = g.calls.get(&key).and_then(|s| s.cg.as_ref()) {
                    let _ = cg.write_nonblock("memory.high", &high.to_string());
                    let _ = cg.thaw_nowait();
                    log::info(&format!("memory pool: thawed {key}"));
                }
            }
            Action::Kill { key, reason } => {
                log::warn(&reason);
                if let Some(s) = g.calls.get_mut(&key) {
                    if let Some(cg) = &s.cg {
                        tell_stderr(cg, &reason);
                        // A frozen cgroup is killed too (cgroup.kill thaws to deliver).
                        let _ = cg.kill();
                    }
                    s.kill_reason = Some(reason);
                }
            }
        }
    }
}

/// Writes the reason to the stderr of the call's processes (as root, through /proc).
fn tell_stderr(cg: &cgctl::Cgroup, reason: &str) {
    for pid in cg.procs().unwrap_or_default().into_iter().take(1) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/{pid}/fd/2"))
        {
            let _ = writeln!(f, "{reason}");
        }
    }
}

fn psi_loop(pool: Weak<MemPool>, trigger: cgctl::psi::Trigger) {
    loop {
        let fired = trigger.wait(Duration::from_secs(1));
        let Some(p) = pool.upgrade() else { return };
        match fired {
            Ok(true) => p.on_pressure(),
            Ok(false) => {}
            Err(e) => {
                log::error(&format!("memory pool: PSI trigger: {e}"));
                return;
            }
        }
    }
}

async fn tick_loop(pool: Weak<MemPool>) {
    let mut every = tokio::time::interval(Duration::from_millis(200));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(p) = pool.upgrade() else { return };
        // cgroupfs reads are quick but blocking: off the async workers.
        let _ = tokio::task::spawn_blocking(move || p.tick()).await;
    }
}

async fn event_loop(pool: Weak<MemPool>, root: PathBuf) {
    let mut w = match cgctl::EventWatcher::new(&root) {
        Ok(w) => w,
        Err(e) => {
            log::error(&format!(
                "memory pool: watching {}: {e}; loans follow the 200 ms sample only",
                root.display()
            ));
            return;
        }
    };
    loop {
        let Ok(ev) = w.next().await else { return };
        let Some(p) = pool.upgrade() else { return };
        if let cgctl::EventKind::MemoryHigh { .. } = ev.kind
            && let Some(k) = parse_call(&ev.path)
        {
            p.on_high(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_paths_name_their_session_and_number() {
        let k = parse_call(Path::new("/sys/fs/cgroup/x/session-ab_1/calls/12")).unwrap();
        assert_eq!((k.session.as_str(), k.n), ("ab_1", 12));
        assert!(parse_call(Path::new("/sys/fs/cgroup/x/session-a/agent")).is_none());
        assert!(parse_call(Path::new("/sys/fs/cgroup/x/session-a/calls/007")).is_none());
    }

    #[test]
    fn sizes_derive_from_the_limit() {
        let c = pool_config(&PoolSettings::default(), 256 << 20).unwrap();
        assert_eq!(c.capacity, 240 << 20);
        assert_eq!(c.loan_step, 8 << 20);
        assert_eq!(c.kill_margin, 8 << 20);
        assert!(matches!(
            pool_config(
                &PoolSettings {
                    reserve: Some(1 << 30),
                    ..PoolSettings::default()
                },
                256 << 20
            ),
            Err(PoolError::TooSmall { .. })
        ));
    }
}
