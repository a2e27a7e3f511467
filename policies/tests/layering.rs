//! Layering and host caps: host → profile → repo → command line; refusals name the host cap;
//! clamps record the cap; declared intent only lowers. Plus the proptest laws.

mod common;

use agentd_policy::layer::{
    ArgvPattern, CallLayer, Caps, Layer, LayerKind, Mechanism, Origin, Rule, Val,
};
use agentd_policy::{
    CpuClass, Decider, DeclaredIntent, DiagnosticKind as K, Duration, Size, merge,
};
use common::*;
use proptest::prelude::*;

const HOST_4G: &str = "version = 1\n[resources.max]\nmemory = \"4GiB\"\ncall_timeout = \"20m\"\n";

#[test]
fn repo_asking_more_memory_than_host_cap_is_refused() {
    let d = errors(
        Some(HOST_4G),
        "version = 1\n[resources]\nmemory = \"6GiB\"\n",
    );
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_diag(
        &d[0],
        K::ExceedsHostCap,
        ".agentd/policy.toml:3:10",
        "`resources.memory = 6GiB` exceeds the host cap: host policy /etc/agentd/policy.toml: resources.max.memory = 4GiB",
    );
    assert!(d[0].hint.as_deref().unwrap().contains("at most 4GiB"));
}

#[test]
fn repo_intent_rule_above_host_cap_is_refused() {
    let text = "version = 1\n[[intent]]\nname = \"big\"\nmatch = [\"big\"]\nmemory = \"8GiB\"\ntimeout = \"1h\"\n";
    let d = errors(Some(HOST_4G), text);
    let got: Vec<String> = d
        .iter()
        .map(|d| format!("{}:{} {}", d.line, d.column, d.message))
        .collect();
    assert_eq!(
        got,
        [
            "5:10 `intent.memory = 8GiB` exceeds the host cap: host policy /etc/agentd/policy.toml: resources.max.memory = 4GiB",
            "6:11 `intent.timeout = 1h` exceeds the host cap: host policy /etc/agentd/policy.toml: resources.max.call_timeout = 20m",
        ]
    );
}

#[test]
fn command_line_cannot_exceed_host_cap_either() {
    let Err(e) = load(
        Some(HOST_4G),
        "version = 1\n",
        &[],
        &["resources.memory = \"5GiB\""],
    ) else {
        panic!()
    };
    let d = &e.diagnostics()[0];
    assert_eq!(d.kind, K::ExceedsHostCap);
    assert_eq!(d.file, "<command line>");
}

#[test]
fn without_host_file_the_builtin_caps_bind() {
    let d = errors(None, "version = 1\n[resources]\nmemory = \"32GiB\"\n");
    assert_eq!(
        d[0].message,
        "`resources.memory = 32GiB` exceeds the host cap: built-in host defaults: resources.max.memory = 16GiB"
    );
}

#[test]
fn profile_values_above_host_cap_are_clamped_and_reported() {
    // default profile: 8GiB session; host: 4GiB cap → clamp, not refusal.
    let p = load(Some(HOST_4G), "version = 1\n", &[], &[]).unwrap();
    let m = &p.session.memory;
    assert_eq!(m.value.to_string(), "4GiB");
    assert_eq!(m.from.file, "profile:default");
    let cap = m.capped_by.as_ref().unwrap();
    assert_eq!(
        cap.to_string(),
        "host policy /etc/agentd/policy.toml: resources.max.memory = 4GiB"
    );
    // test-runner's 30m timeout is clamped by the host's call_timeout.
    let call = p.call(&["cargo", "test"], &DeclaredIntent::default());
    assert_eq!(call.timeout.value.to_string(), "20m");
    assert_eq!(
        call.timeout.capped_by.as_ref().unwrap().origin.key,
        "resources.max.call_timeout"
    );
}

#[test]
fn call_limits_are_clamped_by_the_session_cap_of_a_later_layer() {
    let p = plan("version = 1\n[resources]\nmemory = \"2GiB\"\n");
    let call = p.call(&["cargo", "test"], &DeclaredIntent::default());
    assert_eq!(call.memory.value.to_string(), "2GiB");
    assert_eq!(call.memory.allowed.to_string(), "2GiB");
    let cap = call.memory.capped_by.as_ref().unwrap();
    assert_eq!(
        (cap.origin.layer, cap.origin.key.as_str()),
        (LayerKind::Repo, "resources.memory")
    );
    assert!(matches!(&call.memory.decided_by, Decider::Rule { name, .. } if name == "test-runner"));
}

#[test]
fn declared_intent_lowers_but_never_raises() {
    let p = plan("version = 1\n");
    let lower = DeclaredIntent {
        memory: Some(Size(1 << 30)),
        cpu_class: Some(CpuClass::Batch),
        ..Default::default()
    };
    let call = p.call(&["git", "status"], &lower);
    assert_eq!(
        call.memory.value,
        Size(512 << 20),
        "declared 1GiB is above the rule's 512MiB"
    );
    assert_eq!(call.memory.declared_clamped, Some(Size(1 << 30)));
    assert_eq!(call.cpu_class.value, CpuClass::Batch);
    assert_eq!(call.cpu_class.decided_by, Decider::Declared);

    let raise = DeclaredIntent {
        memory: Some(Size(100 << 30)),
        cpu_class: Some(CpuClass::Latency),
        timeout: Some(Duration(99_999)),
        pids: Some(1),
    };
    let call = p.call(&["cargo", "build"], &raise);
    assert_eq!(call.memory.value.to_string(), "4GiB");
    assert_eq!(
        call.cpu_class.value,
        CpuClass::Batch,
        "latency would raise a batch rule"
    );
    assert_eq!(call.cpu_class.declared_clamped, Some(CpuClass::Latency));
    assert_eq!(call.timeout.value.to_string(), "30m");
    assert_eq!(call.pids.value, 1);
}

#[test]
fn repo_rules_are_tried_before_profile_rules() {
    let p = plan(
        "version = 1\n[[intent]]\nname = \"my-tests\"\nmatch = [\"cargo test\"]\nmemory = \"3GiB\"\n",
    );
    let call = p.call(&["cargo", "test"], &DeclaredIntent::default());
    assert_eq!(call.rule.as_deref(), Some("my-tests"));
    assert_eq!(call.memory.value.to_string(), "3GiB");
    // Fields the repo rule leaves unset fall back to resources.call defaults.
    assert_eq!(call.cpu_class.value, CpuClass::Latency);
    assert!(matches!(call.cpu_class.decided_by, Decider::Default { .. }));
}

#[test]
fn require_accumulates_across_layers() {
    let p = plan("version = 1\nextends = \"ci\"\nrequire = [\"sched_ext\"]\n");
    let names: Vec<Mechanism> = p.require.iter().map(|m| m.value).collect();
    assert_eq!(
        names,
        [
            Mechanism::Cgroup2,
            Mechanism::Userns,
            Mechanism::Overlayfs,
            Mechanism::SchedExt
        ]
    );
}

// ---- proptest laws ----

fn origin(i: u8) -> Origin {
    Origin {
        layer: LayerKind::Repo,
        file: format!("f{i}"),
        line: usize::from(i),
        column: 1,
        key: "k".into(),
    }
}

fn val<T: std::fmt::Debug + Clone>(
    s: impl Strategy<Value = T>,
) -> impl Strategy<Value = Option<Val<T>>> {
    proptest::option::of((s, 0u8..4).prop_map(|(value, i)| Val {
        value,
        origin: origin(i),
    }))
}

fn call_layer() -> impl Strategy<Value = CallLayer> {
    (
        val((1u64..1 << 36).prop_map(Size)),
        val(prop_oneof![Just(CpuClass::Batch), Just(CpuClass::Latency)]),
        val((1u64..86_400).prop_map(Duration)),
        val(1u32..10_000),
    )
        .prop_map(|(memory, cpu_class, timeout, pids)| CallLayer {
            memory,
            cpu_class,
            timeout,
            pids,
        })
}

fn layer() -> impl Strategy<Value = Layer> {
    let rule = (
        prop::sample::select(vec!["a", "b", "c"]),
        call_layer(),
        0u8..4,
    )
        .prop_map(|(n, limits, i)| Rule {
            name: n.to_string(),
            patterns: vec![ArgvPattern {
                text: format!("{n} x"),
            }],
            limits,
            origin: origin(i),
        });
    let mech = prop::sample::select(Mechanism::ALL.iter().map(|(_, m)| *m).collect::<Vec<_>>());
    let names = prop::sample::select(vec!["A", "B", "C*"]);
    (
        (
            prop::collection::vec(val(mech).prop_filter_map("some", |v| v), 0..3),
            val(prop::collection::vec(
                names.clone().prop_map(String::from),
                0..3,
            )),
        ),
        (
            prop::collection::vec(
                val(names.prop_map(String::from)).prop_filter_map("some", |v| v),
                0..3,
            ),
            val((1u64..86_400).prop_map(Duration)),
        ),
        (
            val((1u64..1 << 36).prop_map(Size)),
            val(1u32..100_000),
            call_layer(),
            val((1u64..1 << 36).prop_map(Size)),
            val(1u32..100_000),
        ),
        (prop::collection::vec(rule, 0..3), val(any::<bool>())),
    )
        .prop_map(
            |(
                (require, env),
                (env_deny, session_timeout),
                (memory, pids, call, cap_mem, cap_pids),
                (intents, network_enabled),
            )| Layer {
                require,
                env,
                env_deny,
                session_timeout,
                memory,
                cpu: None,
                pids,
                disk: None,
                call,
                priority: None,
                pool: Default::default(),
                caps: Caps {
                    memory: cap_mem,
                    pids: cap_pids,
                    ..Caps::default()
                },
                intents,
                network_enabled,
            },
        )
}

/// Values a generated repo policy may set: memory/call memory (MiB), pids, call timeout (s).
#[derive(Debug, Clone, Copy)]
struct Knobs {
    memory: u64,
    call_memory: u64,
    pids: u32,
    timeout: u64,
    rule_memory: u64,
}

fn knobs() -> impl Strategy<Value = Knobs> {
    (
        1u64..40_000,
        1u64..40_000,
        1u32..20_000,
        1u64..20_000,
        1u64..40_000,
    )
        .prop_map(|(memory, call_memory, pids, timeout, rule_memory)| Knobs {
            memory,
            call_memory: call_memory.min(memory),
            pids,
            timeout,
            rule_memory,
        })
}

fn repo_text(k: Knobs) -> String {
    format!(
        "version = 1\n[resources]\nmemory = \"{}M\"\npids = {}\n[resources.call]\nmemory = \"{}M\"\ntimeout = {}\n[[intent]]\nname = \"r\"\nmatch = [\"cargo test\"]\nmemory = \"{}M\"\n",
        k.memory, k.pids, k.call_memory, k.timeout, k.rule_memory
    )
}

fn host_text(mem_mib: u64, pids: u32, call_timeout: u64) -> String {
    format!(
        "version = 1\n[resources.max]\nmemory = \"{mem_mib}M\"\ncall_memory = \"{mem_mib}M\"\npids = {pids}\ncall_timeout = {call_timeout}\n"
    )
}

const ARGVS: [&[&str]; 4] = [
    &["cargo", "test"],
    &["cargo", "build"],
    &["git", "log"],
    &["./x"],
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn layering_is_associative(a in layer(), b in layer(), c in layer()) {
        prop_assert_eq!(merge(&merge(&a, &b), &c), merge(&a, &merge(&b, &c)));
    }

    #[test]
    fn tightening_never_loosens(k in knobs(), f in (1u64..=100, 1u64..=100, 1u64..=100, 1u64..=100, 1u64..=100)) {
        let shrink = |v: u64, pct: u64| (v * pct / 100).max(1);
        let tight = Knobs {
            memory: shrink(k.memory, f.0),
            call_memory: shrink(k.call_memory, f.1).min(shrink(k.memory, f.0)),
            pids: u32::try_from(shrink(u64::from(k.pids), f.2)).unwrap(),
            timeout: shrink(k.timeout, f.3),
            rule_memory: shrink(k.rule_memory, f.4),
        };
        let host = host_text(8192, 4096, 3600);
        let loose = load(Some(&host), &repo_text(k), &[], &[]);
        let strict = load(Some(&host), &repo_text(tight), &[], &[]);
        // A tighter policy is refused only if the looser one is too.
        if loose.is_ok() { prop_assert!(strict.is_ok(), "{:?}", strict.err()); }
        if let (Ok(l), Ok(t)) = (loose, strict) {
            prop_assert!(t.session.memory.value <= l.session.memory.value);
            prop_assert!(t.session.pids.value <= l.session.pids.value);
            for argv in ARGVS {
                let (cl, ct) = (l.call(argv, &DeclaredIntent::default()), t.call(argv, &DeclaredIntent::default()));
                prop_assert!(ct.memory.value <= cl.memory.value, "{argv:?}");
                prop_assert!(ct.timeout.value <= cl.timeout.value, "{argv:?}");
                prop_assert!(ct.pids.value <= cl.pids.value, "{argv:?}");
            }
        }
    }

    #[test]
    fn repo_layer_never_exceeds_host_caps(
        k in knobs(),
        cap_mem in 1u64..40_000, cap_pids in 1u32..20_000, cap_timeout in 1u64..20_000,
        declared_mem in proptest::option::of(1u64..1 << 40),
    ) {
        let host = host_text(cap_mem, cap_pids, cap_timeout);
        let over = k.memory > cap_mem || k.call_memory > cap_mem || k.rule_memory > cap_mem
            || k.pids > cap_pids || k.timeout > cap_timeout;
        match load(Some(&host), &repo_text(k), &[], &[]) {
            Ok(p) => {
                prop_assert!(!over, "a value above the host cap was accepted");
                prop_assert!(p.session.memory.value.0 <= cap_mem << 20);
                prop_assert!(p.session.pids.value <= cap_pids);
                let declared = DeclaredIntent { memory: declared_mem.map(Size), ..Default::default() };
                for argv in ARGVS {
                    let c = p.call(argv, &declared);
                    prop_assert!(c.memory.value.0 <= cap_mem << 20);
                    prop_assert!(c.memory.value <= p.session.memory.value);
                    prop_assert!(c.pids.value <= cap_pids);
                    prop_assert!(c.timeout.value.0 <= cap_timeout);
                }
            }
            Err(e) => {
                prop_assert!(over, "refused without exceeding a cap: {e}");
                prop_assert!(e.diagnostics().iter().all(|d| d.kind == K::ExceedsHostCap && d.message.contains("host policy /etc/agentd/policy.toml: resources.max.")), "{e}");
            }
        }
    }
}
