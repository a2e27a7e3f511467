//! agentd session containers.
//!
//! A [`SessionPlan`] (pure data, [`plan`]) is turned into ordered mount [`Step`]s; the
//! runtime ([`container`]) clones a child into new user/mount/pid/net/ipc/uts/cgroup
//! namespaces, maps its ids, and re-executes this crate's binary as the container init
//! ([`init`]), which performs the steps through the [`sys::Sys`] seam, pivots into the new
//! root, and starts the agent confined by [`confine`] (capabilities, no_new_privs, rlimits,
//! Landlock from [`fsrules`], seccomp from [`seccomp`]). See `docs/sandbox.md`.

pub mod confine;
pub mod container;
pub mod exec;
pub mod fsrules;
pub mod init;
pub mod launch;
pub mod layer;
pub mod mounts;
pub mod oci;
pub mod plan;
pub mod pty;
pub mod rights;
pub mod seccomp;
pub mod spawner;
pub mod step;
pub mod sys;

pub use plan::{SessionPlan, Step};

/// Everything that can go wrong setting up or running a session container.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The plan is not acceptable.
    #[error("invalid session plan: {0}")]
    Plan(String),
    /// A mount step failed.
    #[error("mount step `{step}` failed: {source}")]
    Step {
        /// The step, as displayed.
        step: String,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// Some other system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: String,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// Building or loading the seccomp filter failed.
    #[error("seccomp: {0}")]
    Seccomp(String),
    /// Landlock could not be enforced as the plan requires.
    #[error("landlock: {0}")]
    Landlock(String),
}

impl Error {
    /// An [`Error::Sys`] from anything convertible to an io::Error.
    pub fn sys(what: impl Into<String>, e: impl Into<std::io::Error>) -> Error {
        Error::Sys {
            what: what.into(),
            source: e.into(),
        }
    }
}
