//! The crate's error type: every variant names the cgroup file involved, and writes carry
//! the value written, so a failure in the daemon's log says exactly what was attempted.

use std::io;
use std::path::PathBuf;

/// Errors from cgroupfs operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing `value` to a cgroup interface file failed.
    #[error("writing {value:?} to {path}: {source}")]
    Write {
        /// The interface file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// Reading a cgroup interface file failed.
    #[error("reading {path}: {source}")]
    Read {
        /// The interface file.
        path: PathBuf,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// Opening, creating or removing a cgroup directory failed.
    #[error("{op} {path}: {source}")]
    Dir {
        /// What was attempted (`open`, `mkdir`, `rmdir`, `list`).
        op: &'static str,
        /// The cgroup directory.
        path: PathBuf,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// An interface file held something this crate could not parse.
    #[error("parsing {path}: {detail}")]
    Parse {
        /// The interface file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// A limit needs a controller that is not available in this cgroup.
    #[error("controller {controller} is not available in {path} (knob {knob})")]
    MissingController {
        /// The cgroup.
        path: PathBuf,
        /// The controller (`memory`, `cpu`, `pids`, `io`).
        controller: String,
        /// The knob that needed it.
        knob: String,
    },
    /// The controller is there but the kernel lacks this knob (for example `memory.swap.max`
    /// without swap accounting, or `io.weight` without an io scheduler that honours it).
    #[error("the kernel has no {knob} in {path}")]
    UnsupportedKnob {
        /// The cgroup.
        path: PathBuf,
        /// The interface file that is missing.
        knob: String,
    },
    /// A name is not valid for the agentd hierarchy.
    #[error("invalid {what} {name:?}: {why}")]
    InvalidName {
        /// `session id`, `call number`, ...
        what: &'static str,
        /// The rejected name.
        name: String,
        /// Why.
        why: &'static str,
    },
    /// A wait (frozen, empty) did not finish in time.
    #[error("timed out after {waited_ms} ms waiting for {what} in {path}")]
    Timeout {
        /// The cgroup.
        path: PathBuf,
        /// What was awaited (`frozen 1`, `populated 0`).
        what: &'static str,
        /// How long was waited.
        waited_ms: u128,
    },
    /// No usable cgroup v2 hierarchy (or no agentd root in it) on this host.
    #[error("{0}")]
    NoHierarchy(String),
    /// Spawning a process into a cgroup failed.
    #[error("spawning {program:?} into {path}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The target cgroup.
        path: PathBuf,
        /// The failure (from clone3/fork, or errno reported by the child before exec).
        #[source]
        source: io::Error,
    },
    /// Other I/O (inotify, poll, pipes).
    #[error("{what}: {source}")]
    Io {
        /// What was attempted.
        what: &'static str,
        /// The failure.
        #[source]
        source: io::Error,
    },
}

/// Shorthand for this crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(what: &'static str, source: impl Into<io::Error>) -> Error {
        Error::Io {
            what,
            source: source.into(),
        }
    }
}
