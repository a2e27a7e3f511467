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
