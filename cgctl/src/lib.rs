//! cgroup v2 tree for agentd sessions and tool calls.
//!
//! agentd gives every tool call its own cgroup, because an agent's resource use is driven
//! by individual calls (AgentCgroup measured memory bursts of up to 15x the average inside
//! calls). This crate is a thin layer over cgroupfs with directory fds:
//!
//! - [`Root`] / [`Session`] / [`Call`]: the hierarchy
//!   `agentd.slice/session-<id>/{agent,calls/<n>}` with controllers enabled down the tree;
//! - [`Limits`]: typed knobs, refused with a typed error when the kernel lacks them;
//! - [`Command::spawn_into`]: start a process directly inside a call cgroup (clone3
//!   `CLONE_INTO_CGROUP`), or [`Cgroup::add_pid`] to move an existing one;
//! - [`Cgroup::freeze`], [`Cgroup::thaw`], [`Cgroup::kill`], [`Cgroup::wait_empty`],
//!   [`Call::finish`], [`Root::sweep`]: lifecycle and cleanup;
//! - [`Report`] / [`Stats`]: per-call statistics; [`EventWatcher`]: async memory/cgroup
//!   events of a subtree;
//! - [`fs::Backend`]: the seam that lets all of it run against a fake cgroupfs in tests.
//!
//! The daemon's use, in order:
//!
//! ```no_run
//! use std::{sync::Arc, time::Duration};
//! use cgctl::{fs::Kernel, Command, Limits, Max, Placement, Root};
//!
//! # fn main() -> cgctl::Result<()> {
//! // At startup: own the root, then remove what dead sessions left behind.
//! let root = Root::create("/sys/fs/cgroup/agentd.slice", Arc::new(Kernel))?;
//! let journal_has = |id: &str| id == "live";
//! let swept = root.sweep(|id| !journal_has(id), Duration::from_secs(10))?;
//! # let _ = swept;
//! // Per session: a session-wide cap; the agent's processes go into `agent`.
//! let session = root.create_session("live", &Limits {
//!     memory_max: Some(Max::Limit(8 << 30)),
//!     ..Limits::default()
//! })?;
//! // Per tool call: a leaf with the intent's limits, the tool born inside it.
//! let call = session.create_call(1, &Limits {
//!     memory_high: Some(Max::Limit(1 << 30)),
//!     memory_max: Some(Max::Limit(2 << 30)),
//!     memory_oom_group: Some(true),
//!     ..Limits::default()
//! })?;
//! let mut child = Command::new("cargo").arg("build").spawn_into(call.cgroup())?;
//! if let Placement::ProcsFallback { reason } = child.placement() {
//!     eprintln!("degraded placement: {reason}"); // surface it (doctor, journal)
//! }
//! let _status = child.wait();
//! let report = call.finish(Duration::from_secs(10))?; // kill leftovers, report, rmdir
//! # let _ = report;
//! # Ok(())
//! # }
//! ```

pub mod cgroup;
pub mod clone3;
pub mod discover;
pub mod error;
pub mod events;
pub mod fs;
pub mod limits;
pub mod psi;
pub mod spawn;
pub mod stats;
pub mod tree;

pub use cgroup::{CONTROLLERS, Cgroup};
pub use error::{Error, Result};
pub use events::{Event, EventKind, EventWatcher};
pub use limits::{CpuMax, IoMax, Limits, Max};
pub use spawn::{Child, Command, Placement, Stdio};
pub use stats::{Report, Stats};
pub use tree::{Call, Root, Session, SweepReport};
