//! Host tests of the pool's decisions: worked examples of each rule and proptest laws over
//! random event sequences (capacity never over-committed by the pool's own decisions, only
//! calls are ever frozen or killed, freeze and thaw orders, liveness of the queue).

use super::*;
use proptest::prelude::*;

const M: Bytes = 1 << 20;

fn cfg(capacity_mib: u64) -> PoolConfig {
    PoolConfig {
        capacity: capacity_mib * M,
        limit: (capacity_mib + 32) * M,
        kill_margin: 8 * M,
        loan_step: 16 * M,
        slack: 4 * M,
    }
}

fn key(s: &str, n: u64) -> CallKey {
    CallKey {
        session: s.into(),
        n,
    }
}

fn admitted(a: &[Action]) -> Vec<(CallKey, Bytes)> {
    a.iter()
        .filter_map(|a| match a {
            Action::Admit { key, high } => Some((key.clone(), *high)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_grant_that_fits_is_admitted_with_high_equal_to_the_grant() {
    let mut l = Ledger::new(cfg(256));
    l.add_session("a", Priority::Normal, 32 * M);
    let a = l.request(key("a", 1), 64 * M);
    assert_eq!(admitted(&a), vec![(key("a", 1), 64 * M)]);
    assert_eq!(l.committed(), 96 * M);
}

#[test]
fn a_grant_that_does_not_fit_waits_and_is_admitted_when_memory_returns() {
    let mut l = Ledger::new(cfg(128));
    l.add_session("a", Priority::Normal, 0);
    l.add_session("b", Priority::Normal, 0);
    assert_eq!(admitted(&l.request(key("a", 1), 100 * M)).len(), 1);
    assert!(admitted(&l.request(key("b", 1), 64 * M)).is_empty());
    assert_eq!(l.state(&key("b", 1)), Some(CallState::Queued));
    assert_eq!(l.view().queued, 1);
    let a = l.finish(&key("a", 1));
    assert_eq!(admitted(&a), vec![(key("b", 1), 64 * M)]);
}

#[test]
fn the_queue_serves_high_priority_first_then_in_order() {
    let mut l = Ledger::new(cfg(100));
    l.add_session("lo", Priority::Low, 0);
    l.add_session("hi", Priority::High, 0);
    l.request(key("lo", 1), 90 * M);
    l.request(key("lo", 2), 50 * M);
    l.request(key("hi", 1), 50 * M);
    let a = l.finish(&key("lo", 1));
    assert_eq!(
        admitted(&a),
        vec![(key("hi", 1), 50 * M), (key("lo", 2), 50 * M)]
    );
}

#[test]
fn a_throttled_call_borrows_a_step_and_the_loan_returns_when_it_ends() {
    let mut l = Ledger::new(cfg(256));
    l.add_session("a", Priority::Normal, 0);
    l.request(key("a", 1), 32 * M);
    let a = l.high_event(&key("a", 1), 32 * M);
    assert_eq!(
        a,
        vec![Action::SetHigh {
            key: key("a", 1),
            high: 48 * M
        }]
    );
    assert_eq!(l.view().loans, 16 * M);
    l.finish(&key("a", 1));
    assert_eq!(l.committed(), 0);
}

#[test]
fn no_loan_without_free_memory_and_pressure_freezes_the_newest_borrower() {
    let mut l = Ledger::new(cfg(128));
    l.add_session("a", Priority::Normal, 0);
    l.add_session("b", Priority::Normal, 0);
    l.request(key("a", 1), 48 * M);
    l.request(key("b", 1), 48 * M);
    // b borrows the rest of the pool, then both are throttled.
    l.high_event(&key("b", 1), 48 * M);
    l.high_event(&key("b", 1), 64 * M);
    assert_eq!(l.free(), 0);
    assert!(l.high_event(&key("a", 1), 48 * M).is_empty());
    l.call_usage(&key("b", 1), 70 * M);
    let a = l.pressure();
    // b (newer, a borrower) is frozen; its headroom above its usage (80 - 70) returns, and
    // the oldest starved call (a) gets no loan yet (10 MiB free < one 16 MiB step).
    assert_eq!(a, vec![Action::Freeze { key: key("b", 1) }]);
    assert_eq!(l.state(&key("b", 1)), Some(CallState::Frozen));
    // a ends: b is thawed with one step of room.
    let a = l.finish(&key("a", 1));
    assert_eq!(
        a,
        vec![Action::Thaw {
            key: key("b", 1),
            high: 86 * M
        }]
    );
}

#[test]
fn pressure_never_freezes_a_higher_priority_call_for_a_lower_one() {
    let mut l = Ledger::new(cfg(96));
    l.add_session("lo", Priority::Low, 0);
    l.add_session("hi", Priority::High, 0);
    l.request(key("hi", 1), 48 * M);
    l.request(key("lo", 1), 48 * M);
    l.high_event(&key("hi", 1), 48 * M);
    l.high_event(&key("lo", 1), 48 * M);
    // hi is served first: lo is the victim even though it is not newer than... it is newer
    // and lower: frozen.
    assert_eq!(l.pressure(), vec![Action::Freeze { key: key("lo", 1) }]);
    // A starved low-priority call alone never freezes the high one.
    let mut l = Ledger::new(cfg(96));
    l.add_session("lo", Priority::Low, 0);
    l.add_session("hi", Priority::High, 0);
    l.request(key("lo", 1), 48 * M);
    l.request(key("hi", 1), 48 * M);
    l.high_event(&key("lo", 1), 48 * M);
    assert!(l.pressure().is_empty());
}

#[test]
fn agents_growing_cut_the_newest_calls_unused_headroom() {
    let mut l = Ledger::new(cfg(128));
    l.add_session("a", Priority::Normal, 0);
    l.request(key("a", 1), 48 * M);
    l.request(key("a", 2), 48 * M);
    l.call_usage(&key("a", 1), 10 * M);
    l.call_usage(&key("a", 2), 10 * M);
    let a = l.agent_usage("a", 52 * M, None);
    // 20 MiB over: the newest call (2) is cut first, to its usage + slack at most.
    assert_eq!(
        a,
        vec![Action::SetHigh {
            key: key("a", 2),
            high: 28 * M
        }]
    );
    assert!(l.free() >= 0);
}

#[test]
fn near_the_hard_limit_the_newest_lowest_priority_call_is_killed_with_a_reason() {
    let mut l = Ledger::new(cfg(128));
    l.add_session("hi", Priority::High, 0);
    l.add_session("lo", Priority::Low, 0);
    l.request(key("lo", 1), 32 * M);
    l.request(key("hi", 1), 32 * M);
    assert!(l.real_usage(100 * M).is_empty());
    let a = l.real_usage(155 * M);
    match a.as_slice() {
        [Action::Kill { key: k, reason }] => {
            assert_eq!(k, &key("lo", 1));
            assert!(reason.contains("last resort"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // One kill at a time: the next waits until the killed call's memory is gone.
    assert!(l.real_usage(155 * M).is_empty());
    assert_eq!(l.view().kills, 1);
}

#[test]
fn a_grant_larger_than_the_pool_is_capped_and_starts_alone() {
    let mut l = Ledger::new(cfg(64));
    l.add_session("a", Priority::Normal, 16 * M);
    let a = l.request(key("a", 1), 1 << 30);
    assert_eq!(admitted(&a), vec![(key("a", 1), 48 * M)]);
}

#[derive(Debug, Clone)]
enum Op {
    Request(u8, u8, u16),
    High(u8, u16),
    Usage(u8, u16),
    Agent(u8, u16),
    Pressure,
    Real(u16),
    Finish(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..4, 0u8..12, 1u16..200).prop_map(|(s, n, g)| Op::Request(s, n, g)),
        (0u8..12, 0u16..300).prop_map(|(n, u)| Op::High(n, u)),
        (0u8..12, 0u16..300).prop_map(|(n, u)| Op::Usage(n, u)),
        (0u8..4, 0u16..200).prop_map(|(s, u)| Op::Agent(s, u)),
        Just(Op::Pressure),
        (0u16..700).prop_map(Op::Real),
        (0u8..12).prop_map(Op::Finish),
    ]
}

fn sess(i: u8) -> String {
    format!("s{i}")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    /// Whatever happens: the pool's own decisions (admissions, loans, thaws) never push the
    /// committed total over the capacity; only known calls are ever frozen or killed (agents
    /// never); each call is admitted at most once; frozen calls are thawed oldest first
    /// within a priority; and once every admitted call has ended, the queue moves.
    #[test]
    fn pool_laws(ops in proptest::collection::vec(op(), 1..80)) {
        let mut l = Ledger::new(cfg(512));
        for i in 0..4u8 {
            let p = [Priority::Low, Priority::Normal, Priority::High, Priority::Normal][i as usize];
            l.add_session(&sess(i), p, 8 * M);
        }
        let mut keys: BTreeMap<u8, CallKey> = BTreeMap::new();
        let mut ever_admitted: std::collections::BTreeSet<CallKey> = Default::default();
        let mut next_n = 0u64;
        for o in ops {
            let before = l.free();
            let acts = match o {
                Op::Request(s, n, g) => {
                    if keys.contains_key(&n) { continue; }
                    next_n += 1;
                    let k = CallKey { session: sess(s), n: next_n };
                    keys.insert(n, k.clone());
                    l.request(k, u64::from(g) * M)
                }
                Op::High(n, u) => match keys.get(&n) {
                    Some(k) => l.high_event(&k.clone(), u64::from(u) * M),
                    None => continue,
                },
                Op::Usage(n, u) => {
                    if let Some(k) = keys.get(&n) {
                        l.call_usage(&k.clone(), u64::from(u) * M);
                    }
                    continue;
                }
                Op::Agent(s, u) => l.agent_usage(&sess(s), u64::from(u) * M, None),
                Op::Pressure => l.pressure(),
                Op::Real(u) => l.real_usage(u64::from(u) * M),
                Op::Finish(n) => match keys.remove(&n) {
                    Some(k) => l.finish(&k),
                    None => continue,
                },
            };
            let mut thawed: Vec<(Priority, u64)> = Vec::new();
            let mut grew = false;
            for a in &acts {
                match a {
                    Action::Admit { key, .. } => {
                        prop_assert!(ever_admitted.insert(key.clone()), "admitted twice: {key}");
                        grew = true;
                    }
                    Action::Thaw { key, .. } => {
                        let c = &l.calls[key];
                        thawed.push((c.prio, c.seq));
                        grew = true;
                    }
                    Action::SetHigh { key, .. } | Action::Freeze { key } | Action::Kill { key, .. } => {
                        prop_assert!(l.calls.contains_key(key), "action on unknown {key}");
                        prop_assert!(key.session.starts_with('s'));
                    }
                }
            }
            // Decisions that hand memory out never over-commit (a deficit from the agents'
            // own growth is allowed, but the pool does not deepen it).
            if grew {
                prop_assert!(l.free() >= 0 || l.free() >= before.min(0), "free {} before {}", l.free(), before);
            }
            for w in thawed.windows(2) {
                prop_assert!((std::cmp::Reverse(w[0].0), w[0].1) < (std::cmp::Reverse(w[1].0), w[1].1));
            }
        }
        // Liveness: end every admitted call; the queue then drains one after another.
        for _ in 0..64 {
            let running: Vec<CallKey> = l.calls.iter()
                .filter(|(_, c)| c.state != CallState::Queued)
                .map(|(k, _)| k.clone()).collect();
            if running.is_empty() && l.calls.is_empty() { break; }
            if running.is_empty() {
                prop_assert!(false, "queued calls left with nothing running: {:?}", l.view());
            }
            for k in running { l.finish(&k); }
        }
        prop_assert!(l.calls.is_empty(), "{:?}", l.view());
    }
}

#[test]
fn a_frozen_call_is_killed_only_when_the_oldest_stays_starved_with_nothing_to_free() {
    let mut l = Ledger::new(cfg(96));
    l.add_session("a", Priority::Normal, 0);
    l.add_session("b", Priority::Normal, 0);
    l.request(key("a", 1), 48 * M);
    l.request(key("b", 1), 48 * M);
    l.high_event(&key("a", 1), 48 * M);
    l.high_event(&key("b", 1), 48 * M);
    // b is frozen (nothing of it returns: it used its whole grant); a stays starved.
    assert_eq!(l.pressure(), vec![Action::Freeze { key: key("b", 1) }]);
    for _ in 1..STUCK_LIMIT {
        l.high_event(&key("a", 1), 48 * M);
        assert!(l.pressure().is_empty());
    }
    l.high_event(&key("a", 1), 48 * M);
    let a = l.pressure();
    match a.as_slice() {
        [Action::Kill { key: k, reason }] => {
            assert_eq!(k, &key("b", 1));
            assert!(
                reason.contains("frozen to let older calls finish"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_frozen_call_stays_frozen_while_older_calls_borrow() {
    let mut l = Ledger::new(cfg(128));
    l.add_session("a", Priority::Normal, 0);
    l.add_session("b", Priority::Normal, 0);
    l.request(key("a", 1), 40 * M);
    l.request(key("b", 1), 80 * M);
    l.call_usage(&key("b", 1), 10 * M);
    // 8 MiB free, less than one 16 MiB loan: a stays starved at its grant.
    l.high_event(&key("a", 1), 40 * M);
    assert_eq!(l.free(), 8 * M as i64);
    let a = l.pressure();
    // b is frozen; its 70 MiB of headroom goes to a, step by step, and b is NOT thawed.
    assert_eq!(a[0], Action::Freeze { key: key("b", 1) });
    assert!(!a.iter().any(|x| matches!(x, Action::Thaw { .. })), "{a:?}");
    for u in [56, 64, 72] {
        let a = l.high_event(&key("a", 1), u * M);
        assert!(!a.iter().any(|x| matches!(x, Action::Thaw { .. })), "{a:?}");
    }
    assert_eq!(l.state(&key("b", 1)), Some(CallState::Frozen));
    let a = l.finish(&key("a", 1));
    assert_eq!(
        a,
        vec![Action::Thaw {
            key: key("b", 1),
            high: 26 * M
        }]
    );
}
