//! One call's process, created by the spawner: clone3 straight into the call's cgroup
//! (`CLONE_INTO_CGROUP`, so not one instruction runs elsewhere) with a pidfd; in the child,
//! join the session's cgroup namespace, take the call's stdio, start a new session (setsid,
//! as `exec` does), chdir, apply exactly the
//! agent's confinement ([`Confinement::apply`], the same code the init and `exec` run),
//! then the call's own Landlock layer if it has one (a further layer only narrows), and
//! exec the tool. A failure before exec comes back as an errno on a CLOEXEC pipe.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use cgctl::clone3::{CLONE_INTO_CGROUP, CLONE_PIDFD, CloneArgs};

use super::{Prepared, REQUEST_FDS, SpawnRequest, exec_strings};
use crate::Error;

/// Starts `req` with `fds` = [cgroup dir, stdin, stdout, stderr]; returns its pid (in the
/// spawner's pid namespace) and pidfd once its exec succeeded.
pub fn spawn(
    p: &Prepared,
    init: &OwnedFd,
    req: &SpawnRequest,
    fds: [OwnedFd; REQUEST_FDS],
) -> Result<(i32, OwnedFd), Error> {
    let confinement = p.confinement(req)?;
    let (candidates, args, envs, cwd) = exec_strings(&p.plan, req)?;
    let narrow = req.landlock.clone();
    let ptrs = |v: &[std::ffi::CString]| -> Vec<*const libc::c_char> {
        v.iter()
            .map(|c| c.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect()
    };
    let (argp, envp) = (ptrs(&args), ptrs(&envs));
    let join_cgroup_ns = p.plan.namespaces.cgroup;
    let [cg, stdin, stdout, stderr] = fds;
    let (err_r, err_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))?;
    let mut pidfd: libc::c_int = -1;
    let mut args3 = CloneArgs {
        flags: CLONE_PIDFD | CLONE_INTO_CGROUP,
        pidfd: &raw mut pidfd as u64,
        cgroup: cg.as_raw_fd() as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    // SAFETY: fork-like clone3 (no CLONE_VM, no stack) of the single-threaded spawner;
    // `pidfd` outlives the call. The child never returns from its branch.
    let pid = unsafe { cgctl::clone3::clone3(&mut args3) }
        .map_err(|e| Error::sys("clone3 into the call cgroup", e))?;
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
        // SAFETY: the fork-like child of a single-threaded process: setns, dup2 and chdir
        // act on this process only. The received descriptors are all above 2 (0-2 are
        // taken in the spawner), so no dup2 clobbers another source.
        unsafe {
            if join_cgroup_ns && libc::setns(init.as_raw_fd(), libc::CLONE_NEWCGROUP) < 0 {
                fail(errno());
            }
            for (target, fd) in [&stdin, &stdout, &stderr].into_iter().enumerate() {
                if libc::dup2(fd.as_raw_fd(), target as libc::c_int) < 0 {
                    fail(errno());
                }
            }
            // A session of its own, as every exec'd command (no controlling terminal of the
            // caller's to reach: issue 18).
            if libc::setsid() < 0 {
                fail(errno());
            }
            if libc::chdir(cwd.as_ptr()) < 0 {
                fail(errno());
            }
        }
        let errno_of = |e: &Error| match e {
            Error::Sys { source, .. } => source.raw_os_error().unwrap_or(libc::EPERM),
            _ => libc::EPERM,
        };
        if let Err(e) = confinement.apply() {
            eprintln!("agentd-sandbox: confining the call: {e}");
            fail(errno_of(&e));
        }
        if let Some(l) = &narrow
            && let Err(e) = crate::fsrules::restrict(l)
        {
            eprintln!("agentd-sandbox: the call's Landlock layer: {e}");
            fail(errno_of(&e));
        }
        let mut last = libc::ENOENT;
        for exe in &candidates {
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
    drop((cg, stdin, stdout, stderr));
    // SAFETY: CLONE_PIDFD stored a fresh descriptor owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match nix::unistd::read(&err_r, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::sys("reading the exec status", e)),
        }
    }
    if got == 4 {
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        return Err(Error::sys(
            format!("starting {}", req.argv[0]),
            std::io::Error::from_raw_os_error(i32::from_ne_bytes(buf)),
        ));
    }
    Ok((pid, pidfd))
}
