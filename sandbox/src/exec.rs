//! Exec into a running session: join the init's namespaces through its pidfd (user first,
//! so the rest are permitted; pid applies to our children), start the command as a child
//! with the session's confinement (same caps drop, no_new_privs, rlimits, Landlock,
//! seccomp), optionally in a given cgroup, and wait for it.
//!
//! The runtime records what exec needs in the state dir (readable by host root only):
//! `session.json` ({plan, init pid}). The command is created with clone3 (cgctl's
//! [`cgctl::clone3`]) straight into the given cgroup (`CLONE_INTO_CGROUP`, a directory fd
//! opened before joining the mount namespace, where the cgroup tree is read-only), with a
//! pidfd handed back to the caller.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::confine::Confinement;
use crate::launch::ExecRequest;
use crate::plan::SessionPlan;

/// What `run` leaves in the state dir for `exec`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The plan the session runs with.
    pub plan: SessionPlan,
    /// The init's pid in the runtime's pid namespace.
    pub init_pid: i32,
    /// What Landlock enforces in this session (the kernel's ABI, the handled rights, the
    /// optional rights it cannot enforce).
    #[serde(default)]
    pub landlock: Option<crate::fsrules::Enforcement>,
}

/// File name of the record in the state dir.
pub const RECORD: &str = "session.json";

/// Writes the record (mode 0600, root).
pub fn write_record(rec: &SessionRecord) -> Result<(), Error> {
    let p = rec.plan.workspace.state.join(RECORD);
    let json = serde_json::to_vec(rec).map_err(|e| Error::json("the session record", e))?;
    std::fs::write(&p, json).map_err(|e| Error::sys(format!("write {}", p.display()), e))
}

/// Reads the record of the session whose state dir is `state`.
pub fn read_record(state: &Path) -> Result<SessionRecord, Error> {
    let p = state.join(RECORD);
    let s = std::fs::read(&p).map_err(|e| Error::sys(format!("read {}", p.display()), e))?;
    serde_json::from_slice(&s).map_err(|e| Error::json(format!("{}", p.display()), e))
}

/// A pidfd for `pid` (the session's init, by its host pid).
pub fn pidfd_open(pid: i32) -> Result<OwnedFd, Error> {
    let err = |e: std::io::Error| Error::sys(format!("pidfd_open {pid}"), e);
    let p = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| err(std::io::Error::from_raw_os_error(libc::ESRCH)))?;
    rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).map_err(|e| err(e.into()))
}

/// A command started inside a session by [`spawn`]: its pid (in the caller's pid
/// namespace) and a pidfd for it (poll it for exit, signal it race-free).
#[derive(Debug)]
pub struct ExecChild {
    /// The command's pid.
    pub pid: nix::unistd::Pid,
    /// A pidfd for the command, from clone3 `CLONE_PIDFD`.
    pub pidfd: OwnedFd,
}

/// The command's standard descriptors: `None` inherits the caller's, `Some(fd)` uses that
/// descriptor (one end of a pipe, a pty's follower side, /dev/null).
pub type ExecStdio = [Option<OwnedFd>; 3];

/// Starts `req` in the session recorded in its state dir and hands back its pid and pidfd.
///
/// The calling process joins the session's user, mount, pid, net, ipc and uts namespaces
/// through the init's pidfd, so it must be single-threaded (joining a user namespace
/// requires it) and must not need its own namespaces afterwards: the `agentd-sandbox exec`
/// binary, or a helper process forked by the daemon. The command is then created with
/// clone3 `CLONE_PIDFD`, and with `CLONE_INTO_CGROUP` into `req.cgroup` when given, so it
/// never runs outside its call cgroup; the child joins the session's cgroup namespace,
/// sets up its stdio and working directory, and applies the agent's confinement before
/// exec, with the session's environment plus `req.env`.
pub fn spawn(req: &ExecRequest, stdio: ExecStdio) -> Result<ExecChild, Error> {
    spawn_inner(req, Io::Fds(stdio)).map(|(c, _)| c)
}

/// Like [`spawn`], with the command's stdin, stdout and stderr on a new pty of the
/// session's own devpts instance (the command gets it as its controlling terminal, in a
/// new session); returns the pty's controlling side for the caller to relay.
pub fn spawn_pty(req: &ExecRequest) -> Result<(ExecChild, OwnedFd), Error> {
    match spawn_inner(req, Io::Pty)? {
        (c, Some(master)) => Ok((c, master)),
        (_, None) => Err(Error::NoPty),
    }
}

enum Io {
    Fds(ExecStdio),
    Pty,
}

/// Opens a pty in the current mount namespace's /dev/ptmx: (controlling side, terminal side).
fn open_pty() -> Result<(OwnedFd, OwnedFd), Error> {
    let ptmx = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/ptmx")
        .map_err(|e| Error::sys("open /dev/ptmx", e))?;
    let master = OwnedFd::from(ptmx);
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int; TIOCGPTPEER returns a new descriptor for the
    // terminal side of this very pty (no path lookup, so no race with other ptys).
    let peer = unsafe {
        if libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) < 0 {
            return Err(Error::sys("unlock pty", std::io::Error::last_os_error()));
        }
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if peer < 0 {
        return Err(Error::sys(
            "open the pty peer",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: a fresh descriptor owned by nobody else.
    Ok((master, unsafe { OwnedFd::from_raw_fd(peer) }))
}

/// What one command's exec needs, built before any fork (the child must not allocate
/// more than the confinement itself does): the exec candidates for argv[0] (execvp's
/// search over the session's PATH), argv, the environment (the session's, then the
/// request's), the working directory and the agent's confinement. The one builder for
/// `exec` and the call spawner, so both start a command exactly alike.
#[derive(Debug)]
pub struct Prepared {
    candidates: Vec<CString>,
    args: Vec<CString>,
    envs: Vec<CString>,
    cwd: CString,
    confinement: Confinement,
    /// argv[0], for errors.
    program: String,
}

/// The agent's confinement of `plan`, its seccomp program compiled as `seccomp` (the
/// spawner compiles it once per session, `exec` once per command).
pub fn confinement(plan: &SessionPlan, seccomp: Vec<u8>) -> Confinement {
    Confinement {
        agent_id: plan.ids.agent_id,
        rlimits: plan.rlimits.clone(),
        landlock: plan.effective_landlock(),
        seccomp,
        sched_ext: plan.sched_ext,
    }
}

/// The compiled seccomp program of `plan`.
pub fn compile_seccomp(plan: &SessionPlan) -> Result<Vec<u8>, Error> {
    crate::seccomp::compile(&crate::seccomp::build(&plan.seccomp)?)
}

/// Prepares `req` for the session of `plan` (see [`Prepared`]).
pub fn prepare(plan: &SessionPlan, req: &ExecRequest, seccomp: Vec<u8>) -> Result<Prepared, Error> {
    req.validate()?;
    let argv = &req.argv;
    let cstr = |s: &str| CString::new(s).map_err(Error::nul);
    let args: Vec<CString> = argv.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?;
    let mut env = plan.env.clone();
    env.extend(req.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let envs: Vec<CString> = env
        .iter()
        .map(|(k, v)| cstr(&format!("{k}={v}")))
        .collect::<Result<_, _>>()?;
    // execvp's search, done here: the child gets the plan's PATH, not ours.
    let candidates: Vec<CString> = if argv[0].contains('/') {
        vec![cstr(&argv[0])?]
    } else {
        let path = env.get("PATH").map_or("/usr/bin:/bin", String::as_str);
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| cstr(&format!("{d}/{}", argv[0])))
            .collect::<Result<_, _>>()?
    };
    let cwd = req
        .cwd
        .as_ref()
        .or(plan.cwd.as_ref())
        .unwrap_or(&plan.workspace.mount_at);
    Ok(Prepared {
        candidates,
        args,
        envs,
        cwd: cstr(&cwd.to_string_lossy())?,
        confinement: confinement(plan, seccomp),
        program: argv[0].clone(),
    })
}

fn spawn_inner(req: &ExecRequest, io: Io) -> Result<(ExecChild, Option<OwnedFd>), Error> {
    req.validate()?;
    // Opened before joining the mount namespace, where the cgroup tree is read-only.
    let cg = match &req.cgroup {
        Some(p) => Some(
            std::fs::File::open(p).map_err(|e| Error::sys(format!("open {}", p.display()), e))?,
        ),
        None => None,
    };
    let rec = read_record(&req.state)?;
    let plan = rec.plan;
    let pidfd = pidfd_open(rec.init_pid)?;
    let flags = crate::container::clone_flags(&plan) as libc::c_int;
    // The cgroup namespace is joined by the child after clone3: CLONE_INTO_CGROUP checks
    // the target against the caller's cgroup namespace, and the call cgroup need not lie
    // under the session init's cgroup-namespace root.
    let ns_now = flags & !libc::CLONE_NEWCGROUP;
    // SAFETY: setns with a valid pidfd and namespace flags; it changes only this process.
    if unsafe { libc::setns(pidfd.as_raw_fd(), ns_now) } < 0 {
        return Err(Error::sys(
            "setns into the session",
            std::io::Error::last_os_error(),
        ));
    }
    let prepared = prepare(&plan, req, compile_seccomp(&plan)?)?;
    // The pty comes from the session's devpts (we are in its mount namespace now).
    let (stdio, master, tty) = match io {
        Io::Fds(stdio) => (stdio, None, false),
        Io::Pty => {
            let (master, peer) = open_pty()?;
            // The command starts with the local terminal's size (later changes follow
            // through SIGWINCH in the relay).
            if let Some(ws) = crate::pty::window_size(std::io::stdin().as_fd()) {
                crate::pty::set_window_size(master.as_fd(), &ws)?;
            }
            let fds = [
                Some(peer.try_clone().map_err(|e| Error::sys("dup pty", e))?),
                Some(peer.try_clone().map_err(|e| Error::sys("dup pty", e))?),
                Some(peer),
            ];
            (fds, Some(master), true)
        }
    };
    let child = start_in_session(
        &prepared,
        pidfd.as_fd(),
        flags & libc::CLONE_NEWCGROUP != 0,
        cg.as_ref().map(|f| f.as_fd()),
        stdio,
        tty,
    )?;
    Ok((child, master))
}

/// Starts a prepared command from a process already in the session's namespaces (all but
/// the cgroup one): clone3 `CLONE_PIDFD`, with `CLONE_INTO_CGROUP` into `cgroup` when
/// given, so it never runs outside its call cgroup; the child joins the session's cgroup
/// namespace (through `init`, the init's pidfd) when `join_cgroup_ns`, installs `stdio`,
/// starts a session of its own (with `tty`: the pty on stdin becomes its controlling
/// terminal), changes to the working directory, applies the agent's confinement and
/// execs. Returns once the exec succeeded (a failure before it comes back as the errno).
/// The caller must be single-threaded.
pub fn start_in_session(
    p: &Prepared,
    init: BorrowedFd<'_>,
    join_cgroup_ns: bool,
    cgroup: Option<BorrowedFd<'_>>,
    stdio: ExecStdio,
    tty: bool,
) -> Result<ExecChild, Error> {
    use cgctl::clone3::{CLONE_INTO_CGROUP, CLONE_PIDFD, CloneArgs};
    let ptrs = |v: &[CString]| -> Vec<*const libc::c_char> {
        v.iter()
            .map(|c| c.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect()
    };
    let (argp, envp) = (ptrs(&p.args), ptrs(&p.envs));
    // Sources moved above 2 first, so dup2 onto 0..2 never clobbers another source.
    let mut high: [Option<OwnedFd>; 3] = [None, None, None];
    for (i, fd) in stdio.into_iter().enumerate() {
        if let Some(fd) = fd {
            high[i] = Some(
                nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))
                    .map(|raw| {
                        // SAFETY: F_DUPFD_CLOEXEC returned a fresh descriptor we own.
                        unsafe { OwnedFd::from_raw_fd(raw) }
                    })
                    .map_err(|e| Error::sys("dup stdio", e))?,
            );
        }
    }
    // The child reports a failure before exec as an errno on this CLOEXEC pipe.
    let (err_r, err_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))?;
    let mut child_pidfd: libc::c_int = -1;
    let mut args3 = CloneArgs {
        flags: CLONE_PIDFD,
        pidfd: &raw mut child_pidfd as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    if let Some(cg) = cgroup {
        args3.flags |= CLONE_INTO_CGROUP;
        args3.cgroup = cg.as_raw_fd() as u64;
    }
    // SAFETY: fork-like clone3 (no CLONE_VM, no stack) of this single-threaded process;
    // `child_pidfd` outlives the call. The child never returns from its branch.
    let pid = unsafe { cgctl::clone3::clone3(&mut args3) }
        .map_err(|e| Error::sys("clone3 into the session", e))?;
    if pid == 0 {
        let fail = |errno: i32| -> ! {
            let b = errno.to_ne_bytes();
            // SAFETY: write and _exit on a valid fd and buffer; never returns.
            unsafe {
                libc::write(err_w.as_raw_fd(), b.as_ptr().cast(), b.len());
                libc::_exit(127)
            }
        };
        let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        // SAFETY: we are the fork-like child of a single-threaded process: setns, dup2 and
        // chdir act on this process only, on descriptors and strings prepared above.
        unsafe {
            if join_cgroup_ns && libc::setns(init.as_raw_fd(), libc::CLONE_NEWCGROUP) < 0 {
                fail(errno());
            }
            for (target, fd) in high.iter().enumerate() {
                if let Some(fd) = fd
                    && libc::dup2(fd.as_raw_fd(), target as libc::c_int) < 0
                {
                    fail(errno());
                }
            }
            // Nothing the runtime inherited above stdio reaches the command: a descriptor
            // leaked into the daemon or the spawner (issue 18). CLOEXEC, not close, so the
            // error pipe still reports a failed exec.
            if libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) < 0
            {
                fail(errno());
            }
            // Always a new session, so the caller's terminal is never the command's
            // controlling terminal (no TIOCSTI injection, /dev/tty is ENXIO: the
            // CVE-2017-5226 pattern); with --pty the new pty becomes it (job control, isatty).
            if libc::setsid() < 0 || (tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0) {
                fail(errno());
            }
            if libc::chdir(p.cwd.as_ptr()) < 0 {
                fail(errno());
            }
        }
        if let Err(e) = p.confinement.apply() {
            eprintln!("agentd-sandbox: confining the command: {e}");
            fail(match &e {
                Error::Sys { source, .. } => source.raw_os_error().unwrap_or(libc::EPERM),
                _ => libc::EPERM,
            });
        }
        let mut last = libc::ENOENT;
        for exe in &p.candidates {
            // SAFETY: execve with NUL-terminated strings and pointer arrays built above.
            unsafe { libc::execve(exe.as_ptr(), argp.as_ptr(), envp.as_ptr()) };
            let e = errno();
            // Like execvp: keep searching past a missing or unsearchable candidate.
            if e != libc::ENOENT && e != libc::ENOTDIR {
                last = e;
                if e != libc::EACCES {
                    break;
                }
            }
        }
        fail(last)
    }
    drop(err_w);
    drop(high);
    // SAFETY: CLONE_PIDFD stored a fresh descriptor owned by nobody else.
    let child_pidfd = unsafe { OwnedFd::from_raw_fd(child_pidfd) };
    let child = ExecChild {
        pid: nix::unistd::Pid::from_raw(pid),
        pidfd: child_pidfd,
    };
    let status = cgctl::spawn::read_exec_errno(&err_r)
        .map_err(|e| Error::sys("reading the exec status", e))?;
    if let Some(errno) = status {
        let _ = nix::sys::wait::waitpid(child.pid, None);
        return Err(Error::sys(
            format!("starting {}", p.program),
            std::io::Error::from_raw_os_error(errno),
        ));
    }
    Ok(child)
}

/// Runs `req` in its session (see [`spawn`]) with the caller's stdio, or on a pty when
/// `req.pty` ([`spawn_pty`]: relays this process's stdin to the pty and the pty's output
/// to stdout until the command exits; a terminal on stdin is in raw mode meanwhile and
/// restored afterwards, its window size is the pty's). Returns the exit code. Must be
/// called from a single-threaded process (joining a user namespace requires it).
pub fn exec(req: &ExecRequest) -> Result<i32, Error> {
    if !req.pty {
        let child = spawn(req, [None, None, None])?;
        return crate::container::wait_pid(child.pid);
    }
    let (child, master) = spawn_pty(req)?;
    // The relay puts a local terminal in raw mode and restores it however it ends; if it
    // fails, the command does not outlive this exec.
    if let Err(e) = crate::pty::relay(&master, &child.pidfd) {
        let _ = nix::sys::signal::kill(child.pid, nix::sys::signal::Signal::SIGKILL);
        let _ = crate::container::wait_pid(child.pid);
        return Err(e);
    }
    crate::container::wait_pid(child.pid)
}
