//! `agentd doctor` on the real kernels of the test VM, through the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::process::Command;

use agentd_tests::vm::{self, Kernel};

fn doctor_json() -> (std::process::ExitStatus, serde_json::Value) {
    let out = Command::new(agentd_tests::project_binary("agentd"))
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json printed no JSON ({e}): {out:?}"));
    (out.status, v)
}

fn status(v: &serde_json::Value, mechanism: &str) -> String {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["mechanism"] == mechanism)
        .unwrap_or_else(|| panic!("no {mechanism} row"))["status"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn doctor_reports_every_required_mechanism_available() {
    let vm = vm::enter();
    let (st, v) = doctor_json();
    assert!(st.success(), "doctor exited {st}: {v:#}");
    for c in v["checks"].as_array().unwrap() {
        // Landlock is checked per kernel below.
        if c["required"] == true && c["mechanism"] != "landlock" {
            assert_eq!(c["status"], "available", "{c:#}");
        }
    }
    for m in ["psi", "bpf", "bpf_lsm", "clone_into_cgroup", "cgroup2"] {
        assert_eq!(status(&v, m), "available", "{m}: {v:#}");
    }
    // Not upstream: probed through BTF, reported as a degradation with its fallback.
    assert_eq!(status(&v, "memcg_bpf_ops"), "degraded");
    let expected = match vm.kernel {
        Kernel::SchedExt => "available",
        Kernel::Fallback => "degraded",
    };
    assert_eq!(status(&v, "sched_ext"), expected);
    // Exec capture: held on both; exit statuses of captured calls from 6.15 (7.x) only.
    assert_eq!(status(&v, "exec_capture"), expected);
    // Landlock: 7.x enforces every right; 6.12 (ABI 6) cannot enforce resolve_unix, which the
    // default plan marks optional: degraded, naming the right.
    assert_eq!(status(&v, "landlock"), expected);
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn doctor_text_names_the_fallback_when_sched_ext_is_absent() {
    let vm = vm::enter();
    let out = Command::new(agentd_tests::project_binary("agentd"))
        .arg("doctor")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("ready: a default session can run on this host"),
        "{text}"
    );
    if vm.kernel == Kernel::Fallback {
        assert!(
            text.contains("fallback: cpu.weight / cpu.max per call"),
            "{text}"
        );
    }
}
