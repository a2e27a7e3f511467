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

pub mod vm;

/// Environment variable the VM init exports to everything it runs.
pub const VM_ENV: &str = "AGENTD_TEST_VM";
/// File the VM init writes (content: the kernel flavour, see [`vm::Kernel`]).
pub const VM_MARKER: &str = "/run/agentd-test-vm";
