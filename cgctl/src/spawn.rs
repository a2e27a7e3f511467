//! Starting a process directly inside a cgroup: `clone3(CLONE_INTO_CGROUP)` with the
//! cgroup's directory fd, then execve in the child, so the process never runs a single
//! instruction outside its call cgroup (no window in which its memory is charged elsewhere
//! or it escapes a kill). When the kernel (or a seccomp filter) has no clone3, the child is
//! forked and moves itself by writing `0` to `cgroup.procs` before exec; that fallback is
//! reported in [`Child::placement`], never silent.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use rustix::fs::{Mode, OFlags};

use crate::cgroup::Cgroup;
use crate::error::{Error, Result};

/// Where a child's stdin/stdout/stderr come from.
#[derive(Debug, Default)]
pub enum Stdio {
    /// The parent's descriptor.
    #[default]
    Inherit,
    /// /dev/null.
    Null,
    /// This descriptor (for example one end of a pipe).
    Fd(OwnedFd),
}

/// How the child got into its cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Born inside it via clone3(CLONE_INTO_CGROUP).
    Clone3,
    /// Forked in the parent's cgroup, then moved itself via cgroup.procs before exec
    /// (clone3 was unavailable, or the fallback was forced).
    ProcsFallback {
        /// Why clone3 was not used.
        reason: String,
    },
}

/// A `std::process::Command`-like builder whose `spawn_into` starts the program inside a
/// given cgroup.
#[derive(Debug)]
pub struct Command {
    program: OsString,
    args: Vec<OsString>,
    env_clear: bool,
    env: BTreeMap<OsString, Option<OsString>>,
    cwd: Option<PathBuf>,
    stdio: [Stdio; 3],
    force_fallback: bool,
}

impl Command {
    /// A command running `program` (searched in PATH when it has no `/`).
    pub fn new(program: impl AsRef<OsStr>) -> Command {
        Command {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env_clear: false,
            env: BTreeMap::new(),
            cwd: None,
            stdio: [Stdio::Inherit, Stdio::Inherit, Stdio::Inherit],
            force_fallback: false,
        }
    }

    /// Adds an argument.
    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Command {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(&mut self, args: I) -> &mut Command {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable.
    pub fn env(&mut self, key: impl AsRef<OsStr>, val: impl AsRef<OsStr>) -> &mut Command {
        self.env
            .insert(key.as_ref().to_owned(), Some(val.as_ref().to_owned()));
        self
    }

    /// Removes an environment variable.
    pub fn env_remove(&mut self, key: impl AsRef<OsStr>) -> &mut Command {
        self.env.insert(key.as_ref().to_owned(), None);
        self
    }

    /// Starts from an empty environment instead of the parent's.
    pub fn env_clear(&mut self) -> &mut Command {
        self.env_clear = true;
        self.env.clear();
        self
    }

    /// Working directory of the child.
    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Command {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    /// Standard input.
    pub fn stdin(&mut self, s: Stdio) -> &mut Command {
        self.stdio[0] = s;
        self
    }

    /// Standard output.
    pub fn stdout(&mut self, s: Stdio) -> &mut Command {
        self.stdio[1] = s;
        self
    }

    /// Standard error.
    pub fn stderr(&mut self, s: Stdio) -> &mut Command {
        self.stdio[2] = s;
        self
    }

    /// Uses the cgroup.procs fallback even when clone3 works (to test that path).
    pub fn force_procs_fallback(&mut self, on: bool) -> &mut Command {
        self.force_fallback = on;
        self
    }

    fn envp(&self) -> Vec<(OsString, OsString)> {
        let mut vars: BTreeMap<OsString, OsString> = if self.env_clear {
            BTreeMap::new()
        } else {
            std::env::vars_os().collect()
        };
        for (k, v) in &self.env {
            match v {
                Some(v) => vars.insert(k.clone(), v.clone()),
                None => vars.remove(k),
            };
        }
        vars.into_iter().collect()
    }

    /// Starts the program inside `cg`. Everything the child needs (paths, argv, envp,
    /// descriptors) is prepared before the clone, because between clone and exec the child
    /// of a multi-threaded parent may only make async-signal-safe calls.
    pub fn spawn_into(&mut self, cg: &Cgroup) -> Result<Child> {
        let err = |source: io::Error| Error::Spawn {
            program: self.program.to_string_lossy().into_owned(),
            path: cg.path().to_path_buf(),
            source,
        };
        let env = self.envp();
        let path_var = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone());
        let exe = resolve(&self.program, path_var.as_deref(), self.cwd.as_deref())
            .ok_or_else(|| err(io::Error::from(io::ErrorKind::NotFound)))?;
        let exe = cstring(exe.as_os_str()).map_err(err)?;
        let argv: Vec<CString> = std::iter::once(&self.program)
            .chain(&self.args)
            .map(|a| cstring(a))
            .collect::<io::Result<_>>()
            .map_err(err)?;
        let envp: Vec<CString> = env
            .iter()
            .map(|(k, v)| {
                let mut kv = k.clone();
                kv.push("=");
                kv.push(v);
                cstring(&kv)
            })
            .collect::<io::Result<_>>()
            .map_err(err)?;
        let cwd = self
            .cwd
            .as_ref()
            .map(|c| cstring(c.as_os_str()))
            .transpose()
            .map_err(err)?;
        // Sources are duplicated to fds >= 3 so dup2 onto 0..2 never clobbers another source.
        let mut stdio_fds: [Option<OwnedFd>; 3] = [None, None, None];
        for (i, s) in self.stdio.iter_mut().enumerate() {
            let src: Option<OwnedFd> = match std::mem::take(s) {
                Stdio::Inherit => None,
                Stdio::Null => Some(
                    rustix::fs::open("/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
                        .map_err(|e| err(e.into()))?,
                ),
                Stdio::Fd(fd) => Some(fd),
            };
            if let Some(src) = src {
                let high = rustix::io::fcntl_dupfd_cloexec(&src, 3).map_err(|e| err(e.into()))?;
                stdio_fds[i] = Some(high);
            }
        }
        let (err_r, err_w) =
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| err(e.into()))?;
        let prep = Prepared {
            exe,
            argv_ptrs: nul_terminated(&argv),
            envp_ptrs: nul_terminated(&envp),
            cwd,
            stdio: [0, 1, 2].map(|i| stdio_fds[i].as_ref().map(|f| f.as_raw_fd())),
            err_w: err_w.as_raw_fd(),
            procs_fd: None,
        };

        let (pid, pidfd, placement) = if self.force_fallback {
            let reason = "forced by force_procs_fallback".to_string();
            let pid = fork_fallback(cg, prep).map_err(err)?;
            (pid, None, Placement::ProcsFallback { reason })
        } else {
            match clone3_into(cg.fd(), &prep) {
                Ok((pid, pidfd)) => (pid, Some(pidfd), Placement::Clone3),
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::E2BIG)) => {
                    let reason = format!("clone3(CLONE_INTO_CGROUP) unavailable: {e}");
                    let pid = fork_fallback(cg, prep).map_err(err)?;
                    (pid, None, Placement::ProcsFallback { reason })
                }
                Err(e) => return Err(err(e)),
            }
        };
        drop(err_w);
        drop(stdio_fds);
        let mut child = Child {
            pid,
            pidfd,
            placement,
            status: None,
        };
        if let Some(errno) = read_exec_errno(&err_r).map_err(err)? {
            let _ = child.wait();
            return Err(err(io::Error::from_raw_os_error(errno)));
        }
        Ok(child)
    }
}

/// The parent's side of an exec-status pipe (the child has the close-on-exec write end):
/// `None` at EOF, i.e. the exec succeeded and closed it; `Some(errno)` when the child wrote
/// the errno of what failed before `_exit` (4 bytes, native endian). Used by every fork
/// child that must report why it did not exec (this module, the sandbox's exec).
pub fn read_exec_errno(r: impl std::os::fd::AsFd) -> io::Result<Option<i32>> {
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match rustix::io::read(&r, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok((got == 4).then(|| i32::from_ne_bytes(buf)))
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in argument"))
}

fn nul_terminated(v: &[CString]) -> Vec<*const libc::c_char> {
    v.iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Finds `program` the way execvp would, before the clone (the child cannot search).
fn resolve(program: &OsStr, path: Option<&OsStr>, cwd: Option<&Path>) -> Option<PathBuf> {
    let p = Path::new(program);
    if program.as_bytes().contains(&b'/') {
        return Some(match (p.is_relative(), cwd) {
            (true, Some(cwd)) => cwd.join(p),
            _ => p.to_path_buf(),
        });
    }
    let path = path.map_or_else(
        || OsString::from("/usr/local/bin:/usr/bin:/bin"),
        OsStr::to_owned,
    );
    std::env::split_paths(&path)
        .map(|dir| dir.join(p))
        .find(|cand| {
            rustix::fs::access(cand, rustix::fs::Access::EXEC_OK).is_ok() && cand.is_file()
        })
}

/// Everything the child touches between clone and exec, allocated beforehand.
struct Prepared {
    exe: CString,
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
    cwd: Option<CString>,
    stdio: [Option<RawFd>; 3],
    err_w: RawFd,
    procs_fd: Option<RawFd>,
}

use crate::clone3::{CLONE_INTO_CGROUP, CLONE_PIDFD, CloneArgs};

fn clone3_into(cgroup: BorrowedFd<'_>, prep: &Prepared) -> io::Result<(u32, OwnedFd)> {
    let mut pidfd: libc::c_int = -1;
    let args = CloneArgs {
        flags: CLONE_PIDFD | CLONE_INTO_CGROUP,
        pidfd: &raw mut pidfd as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM and without a new stack behaves like fork: the child
    // gets a copy of the address space and continues here on its own copy of this stack.
    // `args` and `pidfd` outlive the call; the size passed is the struct's size.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw const args,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    if ret == 0 {
        // SAFETY: we are the freshly cloned child; child_exec only makes async-signal-safe
        // calls on memory prepared before the clone and never returns.
        unsafe { child_exec(prep) }
    }
    // SAFETY: with CLONE_PIDFD the kernel stored a new, owned pidfd in `pidfd` for a
    // successful clone.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok((ret as u32, pidfd))
}

fn fork_fallback(cg: &Cgroup, mut prep: Prepared) -> io::Result<u32> {
    let procs = rustix::fs::openat(
        cg.fd(),
        "cgroup.procs",
        OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    prep.procs_fd = Some(procs.as_raw_fd());
    // SAFETY: fork in a possibly multi-threaded process; the child only runs child_exec,
    // which is async-signal-safe and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: as above: we are the forked child.
        unsafe { child_exec(&prep) }
    }
    drop(procs);
    Ok(pid as u32)
}

/// The child between clone and exec.
///
/// # Safety
/// Must only be called in a freshly cloned/forked child; `prep` must hold valid pointers.
unsafe fn child_exec(prep: &Prepared) -> ! {
    let fail = |errno: libc::c_int| -> ! {
        let bytes = errno.to_ne_bytes();
        // SAFETY: write and _exit are async-signal-safe; `bytes` is a valid 4-byte buffer.
        unsafe {
            libc::write(prep.err_w, bytes.as_ptr().cast(), bytes.len());
            libc::_exit(127)
        }
    };
    // SAFETY: errno is thread-local and valid in the child's only thread.
    let errno = || unsafe { *libc::__errno_location() };
    // SAFETY: every call below is async-signal-safe and uses descriptors, strings and
    // pointer arrays prepared (and kept alive) by the parent before the clone.
    unsafe {
        // The parent's blocked signals and ignored SIGPIPE must not leak into the tool.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        if let Some(fd) = prep.procs_fd
            && libc::write(fd, b"0".as_ptr().cast(), 1) != 1
        {
            fail(errno());
        }
        for (target, src) in prep.stdio.iter().enumerate() {
            if let Some(src) = src
                && libc::dup2(*src, target as libc::c_int) < 0
            {
                fail(errno());
            }
        }
        if let Some(cwd) = &prep.cwd
            && libc::chdir(cwd.as_ptr()) < 0
        {
            fail(errno());
        }
        libc::execve(
            prep.exe.as_ptr(),
            prep.argv_ptrs.as_ptr(),
            prep.envp_ptrs.as_ptr(),
        );
        fail(errno())
    }
}

/// A spawned child. Like `std::process::Child`, it is not reaped on drop: call
/// [`Child::wait`].
#[derive(Debug)]
pub struct Child {
    pid: u32,
    pidfd: Option<OwnedFd>,
    placement: Placement,
    status: Option<ExitStatus>,
}

impl Child {
    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// How the child was placed into its cgroup (the daemon must surface a fallback).
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The pidfd (clone3 path only): pollable for exit, safe against pid reuse.
    pub fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(|f| f.as_fd())
    }

    /// Waits for the child to exit and reaps it.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let mut status: libc::c_int = 0;
        loop {
            // SAFETY: waitpid on our own child with a valid out-pointer.
            let r = unsafe { libc::waitpid(self.pid as libc::pid_t, &mut status, 0) };
            if r >= 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        let s = ExitStatus::from_raw(status);
        self.status = Some(s);
        Ok(s)
    }

    /// Reaps the child if it has exited.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid on our own child with a valid out-pointer.
        let r = unsafe { libc::waitpid(self.pid as libc::pid_t, &mut status, libc::WNOHANG) };
        match r {
            0 => Ok(None),
            r if r > 0 => {
                let s = ExitStatus::from_raw(status);
                self.status = Some(s);
                Ok(Some(s))
            }
            _ => Err(io::Error::last_os_error()),
        }
    }

    /// Sends SIGKILL to the child (only; use [`Cgroup::kill`] for the whole call).
    pub fn kill(&mut self) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        if let Some(fd) = &self.pidfd {
            return Ok(rustix::process::pidfd_send_signal(
                fd,
                rustix::process::Signal::KILL,
            )?);
        }
        // SAFETY: plain kill(2) on our own unreaped child (its pid cannot be reused yet).
        if unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
