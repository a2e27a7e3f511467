//! Shared helpers for agentd's integration tests.
//!
//! Privileged tests run only inside the agentd test VM (`cargo xtask vm-test`), whose init
//! writes [`VM_MARKER`] and exports [`VM_ENV`]. Such tests are written as
//!
//! ```ignore
//! #[test]
//! #[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
//! fn oom_kills_the_allocator() {
//!     let vm = agentd_tests::vm::enter();
//!     ...
//! }
//! ```
//!
//! so that a plain `cargo test` on a development machine lists each of them as ignored, by
//! name, with the reason; the VM runs them with `--ignored`. [`vm::enter`] refuses to go on
//! outside the VM: privileged tests create cgroups and mounts, which must never happen on
//! the host.

// Test-support code: failing loudly (panic/expect) is how it reports a broken test setup.
#![allow(clippy::panic, clippy::expect_used)]

pub mod pty;
pub mod vm;

/// Environment variable the VM init exports to everything it runs.
pub const VM_ENV: &str = "AGENTD_TEST_VM";
/// File the VM init writes (content: the kernel flavour, see [`vm::Kernel`]).
pub const VM_MARKER: &str = "/run/agentd-test-vm";

use std::path::PathBuf;

/// Path of a binary of this workspace (`agentd`, `cgctl`, …) built next to the running test
/// executable (`target/<profile>/deps/<test>` → `target/<profile>/<name>`). `cargo xtask
/// vm-test` builds every workspace binary before it boots the VM.
pub fn project_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let bin = profile_dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: build the workspace binaries first (cargo build --workspace --bins)",
        bin.display()
    );
    bin
}

/// A soak size from the environment (`cargo xtask vm-test` exports the `AGENTD_*` sizes into
/// the VM, docs/test-vm.md), else `default`; at least `min`, so a typo'd small value still
/// exercises the test.
pub fn soak_size(name: &str, default: u64, min: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .max(min)
}

/// Processes (`pid: command line`) whose command line mentions `needle`, the daemon's own
/// `… serve …` excepted (its command line names the binaries it runs): what a test expects
/// to be gone once a session or call has ended.
pub fn processes_running(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) && !c.contains(" serve ") {
                out.push(format!("{name}: {c}"));
            }
        }
    }
    out
}

/// Waits until `path` exists (a session's `session.json`, a socket), failing the test with
/// `what` after `timeout`.
pub fn wait_for_path(path: &std::path::Path, timeout: std::time::Duration, what: &str) {
    let t = std::time::Instant::now();
    while !path.exists() {
        assert!(
            t.elapsed() < timeout,
            "{what}: {} did not appear",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Removes an emptied cgroup directory, retrying EBUSY for up to 10 s: a call's last task
/// leaves its cgroup a moment after its exit is reported (reaped by another process, the
/// spawner), and until then rmdir says busy.
pub fn remove_cgroup_dir(path: &std::path::Path) {
    let t = std::time::Instant::now();
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return,
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY)
                    && t.elapsed() < std::time::Duration::from_secs(10) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("rmdir {}: {e}", path.display()),
        }
    }
}
