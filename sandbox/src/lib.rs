//! agentd session containers.
//!
//! A [`SessionPlan`] (pure data, [`plan`]) is turned into ordered mount [`Step`]s; the
//! runtime ([`container`]) clones a child into new user/mount/pid/net/ipc/uts/cgroup
//! namespaces, maps its ids, and re-executes this crate's binary as the container init
//! ([`init`]), which performs the steps through the [`sys::Sys`] seam, pivots into the new
//! root, and starts the agent confined by [`confine`] (capabilities, no_new_privs, rlimits,
//! Landlock from [`fsrules`], seccomp from [`seccomp`]). See `docs/sandbox.md`.

pub mod capture;
pub mod confine;
pub mod container;
pub mod disk;
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

pub use plan::{PlanError, SessionPlan, Step};

/// Everything that can go wrong setting up or running a session container.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The plan is not acceptable.
    #[error("invalid session plan: {0}")]
    Plan(#[from] plan::PlanError),
    /// The request names no command.
    #[error("invalid session plan: no command")]
    NoCommand,
    /// A working directory that is not absolute.
    #[error("invalid session plan: cwd {} must be an absolute path inside the container", cwd.display())]
    RelativeCwd {
        /// The cwd asked for.
        cwd: std::path::PathBuf,
    },
    /// An environment variable name the kernel cannot carry.
    #[error("invalid session plan: bad environment name {name:?}")]
    BadEnvName {
        /// The name.
        name: String,
    },
    /// A string for the kernel (argv, env, a path) holds a NUL byte.
    #[error("invalid session plan: {value:?} contains a NUL byte")]
    Nul {
        /// The string, up to the NUL.
        value: String,
        /// The conversion's error.
        #[source]
        source: std::ffi::NulError,
    },
    /// An rlimit name the runtime does not know.
    #[error("invalid session plan: rlimit {name}")]
    UnknownRlimit {
        /// The name.
        name: String,
    },
    /// A read-only bind whose host source is missing or not a file or directory.
    #[error("invalid session plan: read-only bind {}:{}: source {}: {problem}",
        source_path.display(), target.display(), source_path.display())]
    BindSource {
        /// The bind's host path.
        source_path: std::path::PathBuf,
        /// Where it would be bound.
        target: std::path::PathBuf,
        /// What is wrong with the source.
        problem: BindProblem,
    },
    /// A descriptor passed on the command line that overlaps stdin/stdout/stderr.
    #[error("invalid session plan: {what} fd {fd}: must be above the standard descriptors")]
    LowFd {
        /// Which descriptor (request, sync).
        what: &'static str,
        /// Its number.
        fd: i32,
    },
    /// The command line lacks a flag this mode needs.
    #[error("invalid session plan: give {flag}")]
    MissingFlag {
        /// The flag.
        flag: &'static str,
    },
    /// A JSON document (request, record, launch) that does not (de)serialize.
    #[error("invalid session plan: {what}: {source}")]
    Json {
        /// Which document.
        what: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// `exec` asked for the session's pty, and the session has none.
    #[error("no pty was allocated")]
    NoPty,
    /// The init's parent never said go.
    #[error("the runtime did not start the agent")]
    NotStarted,
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
    #[error("seccomp: {what}: {source}")]
    Seccomp {
        /// The libseccomp step (or the syscall being added).
        what: String,
        /// Its error.
        #[source]
        source: libseccomp::error::SeccompError,
    },
    /// The exported seccomp program is not a whole number of BPF instructions.
    #[error("seccomp: bad program size {size}")]
    SeccompProgram {
        /// Its size in bytes.
        size: usize,
    },
    /// The kernel does not enforce Landlock and the plan requires it.
    #[error(
        "landlock: the kernel does not enforce Landlock (not built, or not in the lsm= list) \
         and the plan requires it"
    )]
    LandlockUnavailable,
    /// The kernel's Landlock ABI lacks rights the plan requires.
    #[error(
        "landlock: the plan requires {rights} but this kernel has Landlock ABI {kernel_abi} \
         (the plan needs ABI {min_abi}); use Linux {linux}+ or mark the right optional in the \
         plan (landlock.optional_rights)"
    )]
    LandlockAbi {
        /// The rights missing, by name.
        rights: String,
        /// The kernel's ABI.
        kernel_abi: u32,
        /// The ABI the plan needs.
        min_abi: u32,
        /// The first Linux version with that ABI.
        linux: &'static str,
    },
    /// Building or applying the Landlock ruleset failed (`path`: the rule's path, if any).
    #[error("landlock: {}{source}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    Landlock {
        /// The rule being added, if the failure is a rule's.
        path: Option<std::path::PathBuf>,
        /// The crate's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The kernel enforced less of the ruleset than the plan asked.
    #[error("landlock: the kernel (ABI {kernel_abi}) enforced the ruleset only as {status}")]
    LandlockPartial {
        /// The kernel's ABI.
        kernel_abi: u32,
        /// What it enforced.
        status: String,
    },
    /// The session layer's disk image could not be set up.
    #[error(transparent)]
    Disk(#[from] disk::DiskError),
}

/// What is wrong with a read-only bind's source.
#[derive(Debug, thiserror::Error)]
pub enum BindProblem {
    /// It cannot be stat'ed.
    #[error("{0}")]
    Stat(#[source] std::io::Error),
    /// It is a symlink (refused rather than followed).
    #[error("is not a regular file or directory (a symlink: name the path it points to)")]
    Symlink,
    /// A device, socket or fifo.
    #[error("is not a regular file or directory (a device, socket or fifo)")]
    Special,
}

impl Error {
    /// An [`Error::Json`] about `what`.
    pub fn json(what: impl Into<String>, source: serde_json::Error) -> Error {
        Error::Json {
            what: what.into(),
            source,
        }
    }

    /// An [`Error::Nul`] for `value`.
    pub fn nul(source: std::ffi::NulError) -> Error {
        Error::Nul {
            value: String::from_utf8_lossy(&source.clone().into_vec()[..source.nul_position()])
                .into_owned(),
            source,
        }
    }

    /// An [`Error::Sys`] from anything convertible to an io::Error.
    pub fn sys(what: impl Into<String>, e: impl Into<std::io::Error>) -> Error {
        Error::Sys {
            what: what.into(),
            source: e.into(),
        }
    }
}
