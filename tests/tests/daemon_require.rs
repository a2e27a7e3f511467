//! `require = [...]` enforced at session start (VM): a policy requiring sched_ext is refused
//! on the fallback kernel (6.12, no sched_ext) with an answer naming sched_ext and the
//! policy line, and accepted on the sched_ext kernel (7.x), where the session runs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod daemon_common;

use std::fs;

use agentd_tests::vm::{self, Kernel};
use daemon_common::*;

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn daemon_require_sched_ext_is_refused_without_it_and_accepted_with_it() {
    let vm = vm::enter();
    let d = Daemon::start();
    let policy = d.root.join("require.toml");
    fs::write(&policy, "version = 1\nrequire = [\"sched_ext\"]\n").unwrap();
    let out = d.run(&[
        "run",
        "--detach",
        "--policy",
        policy.to_str().unwrap(),
        "--workspace",
        d.repo.to_str().unwrap(),
        "--",
        "sleep",
        "30",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    match vm.kernel {
        Kernel::Fallback => {
            assert!(
                !out.status.success(),
                "a session requiring sched_ext started on 6.12"
            );
            assert!(stderr.contains("sched_ext (required by"), "{stderr}");
            assert!(stderr.contains("require.toml:2:"), "{stderr}");
            assert!(
                stderr.contains("409"),
                "a 4xx answer names the status: {stderr}"
            );
            // Nothing was created for the refused session.
            let listed = d.json(&["ps"]);
            assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
        }
        Kernel::SchedExt => {
            assert!(
                out.status.success(),
                "refused on a sched_ext kernel: {stderr}"
            );
            let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
            let s = d.json(&["inspect", &id]);
            assert_eq!(s["state"], "running", "{s}");
            assert!(d.run(&["kill", &id]).status.success());
        }
    }
}
