//! Host tests of [`super`]: each shipped profile → sandbox plan and limits (insta
//! snapshots under `snapshots/`), and every way a call can end → its row.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::path::{Path, PathBuf};

use super::*;
use crate::api::{CallInfo, CallState, PolicySource};

/// The shipped profiles a session can start with today, by name, resolved as the daemon
/// resolves a session's policy (built-in host defaults: the host file named does not
/// exist). A profile using a key this build does not enforce is refused at session
/// start: that is checked, and it gets no snapshot until it resolves.
fn profiles() -> Vec<(String, Plan)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/profiles");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".toml").map(str::to_owned)
        })
        .collect();
    names.sort();
    assert!(names.len() >= 4, "{names:?}");
    let mut out = Vec::new();
    for name in names {
        match try_profile(&name) {
            Ok(p) => out.push((name, p)),
            Err(e) => assert!(e.contains("is not enforced by this build"), "{name}: {e}"),
        }
    }
    assert!(out.iter().any(|(n, _)| n == "default") && out.iter().any(|(n, _)| n == "strict"));
    // The egress proxy enforces `[network]`: `build` starts, with its network on.
    assert!(
        out.iter()
            .any(|(n, p)| n == "build" && p.session.network.enabled)
    );
    out
}

fn try_profile(name: &str) -> Result<Plan, String> {
    let src = PolicySource {
        name: "repo/.agentd/policy.toml".into(),
        text: format!("version = 1\nextends = \"{name}\"\n"),
    };
    crate::server::sessions::resolve_policy(
        Some(Path::new("/nonexistent/agentd/policy.toml")),
        Some(&src),
    )
    .map_err(|e| e.to_string())
}

fn profile(name: &str) -> Plan {
    try_profile(name).unwrap()
}

fn context() -> SessionContext {
    SessionContext {
        workspace: PathBuf::from("/home/dev/repo"),
        state: PathBuf::from("/var/lib/agentd/sessions/0123456789ab"),
        agent_uid: 1000,
        root_uid: 100_000,
        shim_bin: PathBuf::from("/usr/libexec/agentd/agentd-shim"),
        resolv_conf: Some(PathBuf::from(
            "/var/lib/agentd/egress/0123456789ab.resolv.conf",
        )),
        sched_ext: false,
    }
}

#[test]
fn each_profile_gives_a_valid_sandbox_plan() {
    for (name, plan) in profiles() {
        let p = sandbox_plan(&plan, &context());
        p.validate().unwrap();
        assert!(
            p.namespaces.net,
            "{name}: the session never shares the host network"
        );
        assert_eq!(p.env["SHELL"], SHIM_IN_CONTAINER);
        assert_eq!(p.env["AGENTD_SHIM_SOCKET"], SOCKET_IN_CONTAINER);
        assert_eq!(p.bind_ro[0].target, Path::new(SHIM_IN_CONTAINER));
        // A network session: the stub resolver and the proxy variables; else neither.
        let net = plan.session.network.enabled;
        assert_eq!(
            p.bind_ro
                .iter()
                .any(|b| b.target == Path::new("/etc/resolv.conf")),
            net,
            "{name}"
        );
        assert_eq!(
            p.env.get("HTTPS_PROXY").map(String::as_str),
            net.then_some("http://127.0.0.1:880"),
            "{name}"
        );
        insta::assert_json_snapshot!(format!("sandbox_plan_{name}"), p);
    }
}

#[test]
fn each_profile_gives_its_session_agent_and_call_limits() {
    for (name, plan) in profiles() {
        let (session, session_cg) = session_limits(&plan);
        let agent = agent_limits(&plan, session.cpu_millis);
        // No session swaps, whatever the host has.
        assert_eq!(session_cg.memory_swap_max, Some(cgctl::Max::Limit(0)));
        // The agent leaf never exceeds one CPU nor what a default call gets.
        assert!(agent.cpu_millis <= 1000 && agent.cpu_millis <= session.cpu_millis);
        assert_eq!(agent.memory, plan.call_defaults.memory.value.0);
        assert_eq!(agent.cgroup.cpu_weight, Some(cpu_weight(CpuClass::Batch)));
        let calls: Vec<_> = [&["cargo", "build"][..], &["sh", "-c", "ls"], &["pytest"]]
            .iter()
            .map(|argv| {
                let (view, cg) = call_limits(&plan.call(argv, &Default::default()));
                assert_eq!(cg.memory_max, Some(cgctl::Max::Limit(view.memory)));
                assert_eq!(cg.memory_oom_group, Some(true));
                assert!(view.memory <= session.memory, "{name} {argv:?}");
                (argv.join(" "), view)
            })
            .collect();
        insta::assert_json_snapshot!(
            format!("limits_{name}"),
            serde_json::json!({
                "session": session,
                "session_cgroup": format!("{session_cg:?}"),
                "agent_cgroup": format!("{:?}", agent.cgroup),
                "calls": calls,
            })
        );
    }
}

#[test]
fn a_declared_intent_only_lowers_a_call() {
    let plan = profile("default");
    let (free, _) = call_limits(&plan.call(&["cargo", "build"], &Default::default()));
    let low = agentd_policy::DeclaredIntent {
        memory: Some(agentd_policy::units::Size(64 << 20)),
        ..Default::default()
    };
    let (lowered, cg) = call_limits(&plan.call(&["cargo", "build"], &low));
    assert_eq!(lowered.memory, 64 << 20);
    assert_eq!(cg.memory_max, Some(cgctl::Max::Limit(64 << 20)));
    let high = agentd_policy::DeclaredIntent {
        memory: Some(agentd_policy::units::Size(free.memory * 4)),
        ..Default::default()
    };
    let (clamped, _) = call_limits(&plan.call(&["cargo", "build"], &high));
    assert_eq!(clamped.memory, free.memory);
    assert!(
        clamped.notes.iter().any(|n| n.contains("lowered")),
        "{:?}",
        clamped.notes
    );
    assert_eq!(cpu_weight(CpuClass::Latency), 200);
}

fn running() -> CallInfo {
    let plan = profile("default");
    let (view, _) = call_limits(&plan.call(&["make"], &Default::default()));
    CallInfo::running("s", 3, &["make".to_string()], Default::default(), view)
}

fn report(oom: bool) -> cgctl::Report {
    let mut stats = cgctl::Stats::default();
    let mut m = cgctl::stats::MemoryStats::default();
    m.events.oom_kill = u64::from(oom);
    stats.memory = Some(m);
    cgctl::Report {
        path: "/sys/fs/cgroup/agentd.slice/session-s/calls/3".into(),
        limits: cgctl::Limits::default(),
        wall_ms: 12,
        stats,
    }
}

fn end(exit: Exit, timed_out: bool, report: Option<Result<cgctl::Report, String>>) -> CallEnd {
    CallEnd {
        exit,
        timed_out,
        report,
        ended_at: 42,
    }
}

#[test]
fn a_waited_call_keeps_its_status_output_and_report() {
    let exit = Exit::Waited {
        code: Some(2),
        stdout: "out".into(),
        stderr: "err".into(),
    };
    let c = finish_call(running(), end(exit, false, Some(Ok(report(false)))));
    assert_eq!(c.state, CallState::Exited);
    assert_eq!(c.exit_code, Some(2));
    assert_eq!(
        (c.stdout.as_deref(), c.stderr.as_deref()),
        (Some("out"), Some("err"))
    );
    assert_eq!(c.ended_at, Some(42));
    assert_eq!(c.report.unwrap().wall_ms, 12);
    assert!(!c.oom_killed && c.error.is_none());
}

#[test]
fn a_timeout_and_an_oom_kill_are_recorded() {
    let c = finish_call(
        running(),
        end(Exit::Reported(None), true, Some(Ok(report(true)))),
    );
    assert_eq!(c.state, CallState::TimedOut);
    assert!(c.oom_killed);
    // No status reported, but the kernel killed it: 128 + SIGKILL.
    assert_eq!(c.exit_code, Some(137));
    let c = finish_call(
        running(),
        end(Exit::Reported(Some(0)), false, Some(Ok(report(false)))),
    );
    assert_eq!((c.state, c.exit_code), (CallState::Exited, Some(0)));
}

#[test]
fn a_call_that_could_not_run_is_failed_with_why() {
    let c = finish_call(
        running(),
        end(
            Exit::Failed("cannot start x".into()),
            false,
            Some(Err("gone".into())),
        ),
    );
    assert_eq!(c.state, CallState::Failed);
    assert_eq!(c.error.as_deref(), Some("cannot start x"));
    assert_eq!(c.exit_code, None);
    let c = finish_call(
        running(),
        end(Exit::Failed("cgroup gone".into()), false, None),
    );
    assert_eq!((c.state, c.report), (CallState::Failed, None));
}

#[test]
fn an_orphaned_call_says_its_status_is_unknown_unless_a_shim_told() {
    let c = finish_call(
        running(),
        end(Exit::Orphaned(None), false, Some(Ok(report(false)))),
    );
    assert_eq!(c.state, CallState::Exited);
    assert!(c.error.unwrap().contains("unknown"));
    let c = finish_call(
        running(),
        end(Exit::Orphaned(Some(1)), false, Some(Ok(report(false)))),
    );
    assert_eq!((c.exit_code, c.error), (Some(1), None));
    let c = finish_call(
        running(),
        end(Exit::Orphaned(None), false, Some(Err("eio".into()))),
    );
    assert_eq!(c.error.as_deref(), Some("report: eio"));
}
