//! The daemon–sandbox contract: the typed documents a caller hands the `agentd-sandbox`
//! runtime, and the one place their command lines are built.
//!
//! A session starts from a [`RunRequest`] (the whole [`SessionPlan`], the agent's argv, its
//! cgroup), a tool call from an [`ExecRequest`] (argv, cwd, env, cgroup). Each is passed as
//! JSON in a sealed-off memfd on fd [`REQUEST_FD`] of the runtime (the way Codex hands its
//! sandbox policy to its Linux helper), so nothing about the session is spelled as flags
//! and every field added to the plan reaches the runtime without touching a caller. The
//! daemon, the benchmarks and the tests all build their commands through [`Sandbox`].
//!
//! Start handshake (`--sync-fd`, a Unix stream socket on fd [`SYNC_FD`]): the runtime
//! writes [`READY`] once the container's mounts and pivot_root are done and `session.json`
//! is written, then waits for [`GO`] before the init starts the agent. So a caller can
//! bind sockets inside the container (the daemon's shim socket) before the agent looks
//! for them, with no polling on either side. EOF instead of [`READY`] means the runtime
//! failed (its stderr says why); EOF instead of [`GO`] kills the session.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::plan::SessionPlan;

/// The fd on which the runtime reads its request.
pub const REQUEST_FD: RawFd = 3;
/// The fd of the start handshake socket.
pub const SYNC_FD: RawFd = 4;
/// Runtime → caller: the container is mounted and recorded; the agent has not started.
pub const READY: u8 = b'R';
/// Caller → runtime: start the agent.
pub const GO: u8 = b'G';

/// Everything `agentd-sandbox run` needs to start a session. New fields take serde
/// defaults, so older callers keep working.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRequest {
    /// The session plan.
    pub plan: SessionPlan,
    /// The agent's command (argv[0] looked up in the plan's PATH).
    pub argv: Vec<String>,
    /// The cgroup directory the container starts in (clone3 CLONE_INTO_CGROUP).
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// Keep the state dir mounted after the session (remove it with `destroy`).
    #[serde(default)]
    pub keep_state: bool,
}

/// One command to run inside a running session (`agentd-sandbox exec`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The session's state dir (holds its `session.json`).
    pub state: PathBuf,
    /// The command.
    pub argv: Vec<String>,
    /// Working directory inside (default: the plan's cwd, else the workspace).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Variables set on top of the session's environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The cgroup directory the command starts in (clone3 CLONE_INTO_CGROUP).
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// Give the command a pty of the session (stdin/stdout relayed).
    #[serde(default)]
    pub pty: bool,
}

impl ExecRequest {
    /// A request for `argv` in the session whose state dir is `state`, nothing else set.
    pub fn new(state: &Path, argv: &[String]) -> ExecRequest {
        ExecRequest {
            state: state.to_path_buf(),
            argv: argv.to_vec(),
            cwd: None,
            env: BTreeMap::new(),
            cgroup: None,
            pty: false,
        }
    }

    /// Checks what the runtime would refuse, before it is started.
    pub fn validate(&self) -> Result<(), Error> {
        if self.argv.is_empty() {
            return Err(Error::NoCommand);
        }
        if let Some(cwd) = &self.cwd
            && !cwd.is_absolute()
        {
            return Err(Error::RelativeCwd { cwd: cwd.clone() });
        }
        for k in self.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(Error::BadEnvName { name: k.clone() });
            }
        }
        Ok(())
    }
}

/// The default disk quota of a session (size of its layer image).
pub const DEFAULT_DISK_BYTES: u64 = 256 << 20;
/// The default host uid (= gid) container root maps to.
pub const DEFAULT_ROOT_HOST_ID: u32 = 100_000;

/// The coding-agent default plan for `repo` (canonicalized) with its state dir at `state`
/// (made absolute): the agent maps to the repo's owner, container root to
/// [`DEFAULT_ROOT_HOST_ID`], the disk quota is [`DEFAULT_DISK_BYTES`], and the caller's
/// [`crate::plan::ENV_PASSTHROUGH`] variables are passed in. What `agentd-sandbox run
/// --workspace R --state S` starts, and what the tests and benchmarks start by fd.
pub fn default_plan(repo: &Path, state: &Path) -> Result<SessionPlan, Error> {
    use std::os::unix::fs::MetadataExt;
    let repo = repo
        .canonicalize()
        .map_err(|e| Error::sys(format!("workspace {}", repo.display()), e))?;
    let state = if state.is_absolute() {
        state.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::sys("the current directory", e))?
            .join(state)
    };
    let owner = std::fs::metadata(&repo)
        .map_err(|e| Error::sys(format!("stat {}", repo.display()), e))?
        .uid();
    let mut plan = SessionPlan::new(
        &repo,
        &state,
        DEFAULT_DISK_BYTES,
        owner,
        DEFAULT_ROOT_HOST_ID,
    );
    for name in crate::plan::ENV_PASSTHROUGH {
        if let Ok(v) = std::env::var(name) {
            plan.env.insert((*name).to_owned(), v);
        }
    }
    Ok(plan)
}

impl RunRequest {
    /// `argv` in the [`default_plan`] of `repo`, its state at `state`.
    pub fn default_for(repo: &Path, state: &Path, argv: &[&str]) -> Result<RunRequest, Error> {
        Ok(RunRequest {
            plan: default_plan(repo, state)?,
            argv: argv.iter().map(|a| (*a).to_owned()).collect(),
            cgroup: None,
            keep_state: false,
        })
    }
}

/// The runtime binary and the one builder of its command lines.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// Path of `agentd-sandbox`.
    pub bin: PathBuf,
}

impl Sandbox {
    /// The runtime at `bin`.
    pub fn new(bin: impl Into<PathBuf>) -> Sandbox {
        Sandbox { bin: bin.into() }
    }

    /// `agentd-sandbox run --plan-fd 3 [--sync-fd 4]` with `req` on fd 3 and, when given,
    /// the runtime's end of the start handshake on fd 4. The descriptors live in the
    /// command until it is dropped: drop it right after spawning, so the caller's copy of
    /// `sync` closes and EOF means the runtime is gone.
    pub fn run(&self, req: &RunRequest, sync: Option<OwnedFd>) -> Result<Command, Error> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("run").arg("--plan-fd").arg(REQUEST_FD.to_string());
        let mut fds = vec![(request_memfd(req)?, REQUEST_FD)];
        if let Some(s) = sync {
            cmd.arg("--sync-fd").arg(SYNC_FD.to_string());
            fds.push((high_fd(s)?, SYNC_FD));
        }
        pass_fds(&mut cmd, fds);
        Ok(cmd)
    }

    /// `agentd-sandbox exec --request-fd 3` with `req` on fd 3.
    pub fn exec(&self, req: &ExecRequest) -> Result<Command, Error> {
        req.validate()?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("exec")
            .arg("--request-fd")
            .arg(REQUEST_FD.to_string());
        pass_fds(&mut cmd, vec![(request_memfd(req)?, REQUEST_FD)]);
        Ok(cmd)
    }

    /// `agentd-sandbox destroy --state DIR`.
    pub fn destroy(&self, state: &Path) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("destroy").arg("--state").arg(state);
        cmd
    }
}

/// A sealed memfd holding `v` as JSON, rewound, duplicated above the stdio and handshake
/// fds (so installing it on [`REQUEST_FD`] never clobbers another source).
pub(crate) fn request_memfd<T: Serialize>(v: &T) -> Result<OwnedFd, Error> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let json = serde_json::to_vec(v).map_err(|e| Error::json("the request", e))?;
    let fd = rustix::fs::memfd_create(
        "agentd-sandbox-request",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .map_err(|e| Error::sys("memfd_create", e))?;
    let mut f = std::fs::File::from(fd);
    f.write_all(&json)
        .map_err(|e| Error::sys("writing the request", e))?;
    let fd = OwnedFd::from(f);
    rustix::fs::fcntl_add_seals(
        &fd,
        SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
    )
    .map_err(|e| Error::sys("sealing the request", e))?;
    rustix::fs::seek(&fd, rustix::fs::SeekFrom::Start(0))
        .map_err(|e| Error::sys("rewinding the request", e))?;
    high_fd(fd)
}

/// `fd` duplicated to a number of at least 10, close-on-exec.
fn high_fd(fd: OwnedFd) -> Result<OwnedFd, Error> {
    rustix::io::fcntl_dupfd_cloexec(&fd, 10).map_err(|e| Error::sys("dup", e))
}

/// Installs each `(source, target)` on `target` in the child just before exec (dup2 clears
/// close-on-exec on the target; the sources are all ≥ 10, above every target).
fn pass_fds(cmd: &mut Command, fds: Vec<(OwnedFd, RawFd)>) {
    // SAFETY: the closure only calls dup2, which is async-signal-safe, on descriptors the
    // closure owns (kept open until the command is dropped).
    unsafe {
        cmd.pre_exec(move || {
            for (src, target) in &fds {
                if libc::dup2(src.as_raw_fd(), *target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Reads a request the caller passed on `fd` (ours from now on).
pub fn read_request<T: for<'de> Deserialize<'de>>(fd: RawFd) -> Result<T, Error> {
    if fd < 3 {
        return Err(Error::LowFd {
            what: "request",
            fd,
        });
    }
    // SAFETY: the caller passed this descriptor for us alone (see `Sandbox`); it is read
    // once, here, and closed.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)
        .map_err(|e| Error::sys(format!("reading the request on fd {fd}"), e))?;
    serde_json::from_slice(&buf).map_err(|e| Error::json(format!("request on fd {fd}"), e))
}

/// Takes ownership of the handshake socket passed on `fd`.
pub fn sync_socket(fd: RawFd) -> Result<std::os::unix::net::UnixStream, Error> {
    if fd < 3 {
        return Err(Error::LowFd { what: "sync", fd });
    }
    // SAFETY: the caller passed this descriptor for us alone; owned once, here.
    let s = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
    rustix::io::fcntl_setfd(&s, rustix::io::FdFlags::CLOEXEC)
        .map_err(|e| Error::sys(format!("sync fd {fd}"), e))?;
    Ok(s)
}

/// Reads one handshake byte; `None` on EOF (the other side is gone).
pub fn read_byte(r: &mut impl Read) -> std::io::Result<Option<u8>> {
    let mut b = [0u8; 1];
    loop {
        match r.read(&mut b) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(b[0])),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
    use super::*;

    fn plan() -> SessionPlan {
        crate::plan::example("/var/lib/agentd/s1")
    }

    #[test]
    fn a_request_goes_through_a_sealed_memfd_intact() {
        let req = RunRequest {
            plan: plan(),
            argv: vec!["echo".into(), "hi".into()],
            cgroup: Some(PathBuf::from("/sys/fs/cgroup/x")),
            keep_state: false,
        };
        let fd = request_memfd(&req).unwrap();
        assert!(fd.as_raw_fd() >= 10);
        // Sealed: nobody holding the fd can change what the runtime reads.
        let mut f = std::fs::File::from(fd.try_clone().unwrap());
        assert!(f.write_all(b"x").is_err());
        let raw = rustix::io::fcntl_dupfd_cloexec(&fd, 3).unwrap();
        let got: RunRequest = read_request(std::os::fd::IntoRawFd::into_raw_fd(raw)).unwrap();
        assert_eq!(got, req);
    }

    #[test]
    fn old_requests_parse_with_defaults() {
        let v = serde_json::json!({"state": "/s", "argv": ["true"]});
        let r: ExecRequest = serde_json::from_value(v).unwrap();
        assert_eq!(r, ExecRequest::new(Path::new("/s"), &["true".into()]));
    }

    #[test]
    fn exec_requests_are_validated_before_the_runtime_starts() {
        let mut r = ExecRequest::new(Path::new("/s"), &[]);
        assert!(r.validate().unwrap_err().to_string().contains("no command"));
        r.argv = vec!["ls".into()];
        r.cwd = Some(PathBuf::from("rel"));
        assert!(r.validate().unwrap_err().to_string().contains("absolute"));
        r.cwd = None;
        r.env.insert("A=B".into(), "x".into());
        assert!(r.validate().unwrap_err().to_string().contains("A=B"));
    }

    #[test]
    fn the_command_lines_name_only_the_fds() {
        let s = Sandbox::new("/usr/lib/agentd/agentd-sandbox");
        let req = RunRequest {
            plan: plan(),
            argv: vec!["true".into()],
            cgroup: None,
            keep_state: false,
        };
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let cmd = s.run(&req, Some(a.into())).unwrap();
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args, ["run", "--plan-fd", "3", "--sync-fd", "4"]);
        let cmd = s
            .exec(&ExecRequest::new(Path::new("/s"), &["ls".into()]))
            .unwrap();
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args, ["exec", "--request-fd", "3"]);
    }
}
