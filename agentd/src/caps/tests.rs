//! The capability table's laws over random grant sets, delegations and requests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::sync::{Arc, Mutex};

use proptest::prelude::*;

use super::*;

const PATTERNS: &[&str] = &[
    "net:a.ex.com:443",
    "net:a.ex.com",
    "net:*.ex.com",
    "net:*.ex.com:*",
    "net:ex.com:*",
    "net:x.org:22",
    "net:10.77.0.0/24:*",
    "net:10.77.0.2:80",
    "fs:/repo/**:read,write",
    "fs:/repo/**:write",
    "fs:/repo/src/**:read",
    "fs:/repo/a.txt:read",
    "exec:/usr/bin/git",
    "exec:/usr/bin/*",
    "secret:TOKEN",
];

const REQUESTS: &[&str] = &[
    "net:a.ex.com:443",
    "net:a.ex.com:80",
    "net:b.ex.com:443",
    "net:ex.com:22",
    "net:x.org:22",
    "net:10.77.0.2:80",
    "net:10.77.0.9:443",
    "fs:/repo/a.txt:read",
    "fs:/repo/a.txt:write",
    "fs:/repo/src/m.rs:read",
    "fs:/etc/passwd:read",
    "exec:/usr/bin/git",
    "exec:/usr/bin/curl",
    "secret:TOKEN",
];

fn effect() -> impl Strategy<Value = Effect> {
    prop_oneof![Just(Effect::Allow), Just(Effect::Ask), Just(Effect::Deny)]
}

fn subject() -> impl Strategy<Value = Subject> {
    prop_oneof![Just(Subject::Session), (1u64..3).prop_map(Subject::Call)]
}

fn scope() -> impl Strategy<Value = Scope> {
    prop_oneof![Just(Scope::Once), Just(Scope::Call), Just(Scope::Session)]
}

fn new_grant() -> impl Strategy<Value = NewGrant> {
    (
        0..PATTERNS.len(),
        subject(),
        effect(),
        scope(),
        proptest::option::of(1u32..4),
        proptest::option::of(50u64..150),
    )
        .prop_map(|(p, subject, effect, scope, uses, exp)| NewGrant {
            subject,
            resource: PATTERNS[p].to_string(),
            effect,
            scope,
            uses: if scope == Scope::Once { Some(1) } else { uses },
            expires_at_ms: exp,
            origin: "test".into(),
        })
}

fn req(i: usize) -> Request {
    Request::parse(REQUESTS[i]).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, rng_seed: proptest::test_runner::RngSeed::Fixed(12), ..ProptestConfig::default() })]

    /// The decision is the strongest effect among the live grants that hold the caller and
    /// cover the request; a deny is never turned into anything else by more allows.
    #[test]
    fn deny_beats_ask_beats_allow(
        grants in proptest::collection::vec(new_grant(), 0..8),
        extra in proptest::collection::vec(new_grant(), 0..4),
        r in 0..REQUESTS.len(),
        call in proptest::option::of(1u64..3),
        now in 0u64..200,
    ) {
        let mut t = Table::default();
        for g in &grants {
            t.add("s", g.clone(), 0).unwrap();
        }
        let rq = req(r);
        let want = grants.iter().filter(|g| {
            g.subject.holds(call)
                && g.expires_at_ms.is_none_or(|e| now < e)
                && Resource::parse(&g.resource).unwrap().covers(&rq)
        }).map(|g| g.effect.rank()).max();
        let got = t.decide(call, &rq, now).map(|d| d.effect.rank());
        prop_assert_eq!(got, want);
        if got == Some(2) {
            for g in extra {
                let g = NewGrant { effect: Effect::Allow, ..g };
                t.add("s", g, 0).unwrap();
            }
            prop_assert_eq!(t.decide(call, &rq, now).map(|d| d.effect), Some(Effect::Deny));
        }
    }

    /// A delegated grant never reaches anything its parent does not: every request the
    /// child allows for a caller, the parent covered for that caller.
    #[test]
    fn delegation_only_narrows(
        parent in new_grant(),
        child in new_grant(),
        r in 0..REQUESTS.len(),
        call in proptest::option::of(1u64..3),
    ) {
        let mut t = Table::default();
        let p = t.add("s", parent.clone(), 0).unwrap();
        if let Ok(c) = t.delegate("s", p.id, child.clone(), 0) {
            let rq = req(r);
            let pr = Resource::parse(&p.resource).unwrap();
            let cr = Resource::parse(&c.resource).unwrap();
            if cr.covers(&rq) && c.subject.holds(call) {
                prop_assert!(pr.covers(&rq), "{} ⊄ {} for {}", c.resource, p.resource, rq);
                prop_assert!(p.subject.holds(call));
            }
            prop_assert!(c.effect.rank() >= p.effect.rank());
            if let Some(pu) = p.uses { prop_assert!(c.uses.is_some_and(|u| u <= pu)); }
            if let Some(pe) = p.expires_at_ms { prop_assert!(c.expires_at_ms.is_some_and(|e| e <= pe)); }
        }
    }

    /// Revoking a grant revokes exactly it and its descendants.
    #[test]
    fn revoking_a_parent_revokes_its_children(
        chain in proptest::collection::vec((new_grant(), 0usize..8), 1..12),
        pick in 0usize..12,
    ) {
        let mut t = Table::default();
        let root = t.add("s", NewGrant {
            subject: Subject::Session,
            resource: "net:*.ex.com:*".into(),
            effect: Effect::Allow,
            scope: Scope::Session,
            uses: None,
            expires_at_ms: None,
            origin: "root".into(),
        }, 0).unwrap();
        let mut ids = vec![root.id];
        for (g, p) in chain {
            let parent = ids[p % ids.len()];
            if let Ok(c) = t.delegate("s", parent, g, 0) {
                ids.push(c.id);
            }
        }
        let target = ids[pick % ids.len()];
        let revoked = t.revoke("s", target).unwrap();
        let descends = |mut id: u64| loop {
            if id == target { return true; }
            match t.get(id).and_then(|g| g.parent) { Some(p) => id = p, None => return false }
        };
        for id in &ids {
            let g = t.get(*id).unwrap();
            prop_assert_eq!(g.revoked, descends(*id), "grant {}", id);
            prop_assert_eq!(revoked.contains(id), descends(*id));
        }
    }
}

#[test]
fn a_once_grant_covers_only_its_request_and_is_used_up_exactly_once_under_contention() {
    let rq = Request::parse("net:a.ex.com:443").unwrap();
    let g = NewGrant::approval(&rq, Some(3), Scope::Once, "approval 1".into());
    assert_eq!((g.subject, g.uses), (Subject::Call(3), Some(1)));
    let t = Arc::new(Mutex::new(Table::default()));
    t.lock().unwrap().add("s", g, 0).unwrap();
    // Another port, another host, another call: not this grant's.
    for (call, other) in [
        (Some(3), "net:a.ex.com:80"),
        (Some(3), "net:b.ex.com:443"),
        (Some(4), "net:a.ex.com:443"),
    ] {
        let o = Request::parse(other).unwrap();
        assert_eq!(t.lock().unwrap().decide(call, &o, 1), None, "{other}");
    }
    let hits: usize = (0..16)
        .map(|_| {
            let t = t.clone();
            let rq = rq.clone();
            std::thread::spawn(move || {
                let d = t.lock().unwrap().decide(Some(3), &rq, 1);
                usize::from(d.is_some_and(|d| d.effect == Effect::Allow))
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .sum();
    assert_eq!(hits, 1);
    // `call` from the agent itself (no call) is once; `session` covers every caller.
    let a = NewGrant::approval(&rq, None, Scope::Call, "x".into());
    assert_eq!((a.scope, a.uses), (Scope::Once, Some(1)));
    let s = NewGrant::approval(&rq, Some(3), Scope::Session, "x".into());
    assert_eq!((s.subject, s.uses), (Subject::Session, None));
}

#[test]
fn delegation_refusals_say_why_and_end_call_revokes_call_grants() {
    let mut t = Table::default();
    let base = |resource: &str, subject| NewGrant {
        subject,
        resource: resource.into(),
        effect: Effect::Allow,
        scope: Scope::Session,
        uses: None,
        expires_at_ms: None,
        origin: "t".into(),
    };
    let p = t
        .add("s", base("fs:/repo/**:write", Subject::Session), 0)
        .unwrap();
    let e = t
        .delegate("s", p.id, base("fs:/etc/**:write", Subject::Call(1)), 0)
        .unwrap_err();
    assert!(
        e.to_string().contains("is not within fs:/repo/**:write"),
        "{e}"
    );
    let e = t
        .delegate(
            "s",
            p.id,
            base("fs:/repo/**:read,write", Subject::Call(1)),
            0,
        )
        .unwrap_err();
    assert!(matches!(e, CapsError::Widens { .. }), "{e}");
    let c = t
        .delegate(
            "s",
            p.id,
            base("fs:/repo/src/**:write", Subject::Call(1)),
            0,
        )
        .unwrap();
    assert_eq!(c.parent, Some(p.id));
    assert!(matches!(
        t.add("s", base("fs:/**:write", Subject::Session), 0),
        Err(CapsError::Resource(CapError::Everything { .. }))
    ));
    assert_eq!(t.end_call(1), vec![c.id]);
    let w = Request::parse("fs:/repo/src/x:write").unwrap();
    assert_eq!(t.decide(Some(1), &w, 0).map(|d| d.grant), Some(p.id));
}
