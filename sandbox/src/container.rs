//! The runtime's side of a session (runs as host root, in the daemon or the
//! `agentd-sandbox` binary): prepares the state dir (a quota-sized disk image holding the
//! overlay's upper and work dirs, `/tmp` and `/home`: [`crate::disk`]), clones the container's first process into new
//! namespaces with clone3 (optionally straight into a cgroup with CLONE_INTO_CGROUP, and
//! with a pidfd), writes its uid/gid maps, hands it the plan, waits, and tears down.
//!
//! The cloned child does only async-signal-safe work ([`child_prologue`], one for both
//! launch paths): it blocks on a pipe until its id maps are written (so it is container
//! root with full capabilities in its namespace when it execs), then execs
//! `/proc/self/exe init` — the container init ([`crate::init`]) — which reads the plan from
//! fd 3, builds the container, says so on the handshake socket (fd 4) and waits for the
//! runtime's go ([`wait_ready`], [`go`]) before it starts the agent.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use nix::mount::MntFlags;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::plan::SessionPlan;
use crate::{BindProblem, Error};

use cgctl::clone3::{CLONE_INTO_CGROUP, CloneArgs};

/// The fd on which the init receives the plan.
pub const PLAN_FD: RawFd = 3;

/// Creates the state dir (owned by container root, 0700) and in it the session layer: an
/// image of `size_bytes` (the session's disk quota, [`crate::disk`]) mounted at `layer/`,
/// holding `upper/` (owned by the agent's host uid with the repo root's group and mode, so
/// the merged workspace looks like the repo; the agent's uid is the repo's owner unless the
/// caller chose another one for a root-owned repo, whose root the agent can then write),
/// `work/`, and the container's `tmp/` and `home/`; then `rootfs/` (owned by container
/// root, which mounts the overlay). On error nothing stays mounted.
pub fn prepare_state(plan: &SessionPlan) -> Result<(), Error> {
    let r = prepare_layer(plan);
    if r.is_err() {
        let _ = crate::disk::unmount(&plan.workspace.state);
    }
    r
}

fn prepare_layer(plan: &SessionPlan) -> Result<(), Error> {
    let ws = &plan.workspace;
    let root = plan.ids.root_host_id;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&ws.state)
        .map_err(|e| Error::sys(format!("mkdir {}", ws.state.display()), e))?;
    std::os::unix::fs::chown(&ws.state, Some(root), Some(root))
        .map_err(|e| Error::sys(format!("chown {}", ws.state.display()), e))?;
    crate::disk::create(&ws.state, ws.size_bytes)?;
    let layer = crate::disk::layer_dir(&ws.state);
    std::os::unix::fs::chown(&layer, Some(root), Some(root))
        .map_err(|e| Error::sys(format!("chown {}", layer.display()), e))?;
    std::fs::set_permissions(&layer, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::sys(format!("chmod {}", layer.display()), e))?;
    let repo_meta = std::fs::metadata(&ws.repo)
        .map_err(|e| Error::sys(format!("stat {}", ws.repo.display()), e))?;
    use std::os::unix::fs::MetadataExt;
    for (dir, owner, gid, mode) in [
        (
            plan.upper_dir(),
            plan.ids.agent_host_id,
            // Another uid than the repo's owner (a root-owned repo): the repo's group is not
            // mapped in the container, and overlayfs checks writes to the upper dir with the
            // mounter's (container root's) creds, whose DAC override needs both ids mapped.
            if repo_meta.uid() == plan.ids.agent_host_id {
                repo_meta.gid()
            } else {
                plan.ids.agent_host_id
            },
            repo_meta.mode() & 0o7777,
        ),
        (plan.work_dir(), root, root, 0o700),
        (plan.layer_tmp_dir(), root, root, 0o1777),
        (plan.layer_home_dir(), root, root, 0o755),
        (plan.rootfs_dir(), root, root, 0o755),
    ] {
        std::fs::create_dir(&dir).map_err(|e| Error::sys(format!("mkdir {}", dir.display()), e))?;
        std::os::unix::fs::chown(&dir, Some(owner), Some(gid))
            .map_err(|e| Error::sys(format!("chown {}", dir.display()), e))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::sys(format!("chmod {}", dir.display()), e))?;
    }
    Ok(())
}

/// Unmounts the session layer and removes the state dir with its image. Idempotent: a
/// missing dir is fine.
pub fn destroy_state(state: &Path) -> Result<(), Error> {
    if !state.exists() {
        return Ok(());
    }
    crate::disk::unmount(state)?;
    // A state dir of an older build was a tmpfs itself.
    match nix::mount::umount2(state, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
        Err(e) => return Err(Error::sys(format!("umount {}", state.display()), e)),
    }
    std::fs::remove_dir_all(state).map_err(|e| Error::sys(format!("rm -r {}", state.display()), e))
}

/// A started container: its init's pid (in our pid namespace) and a pidfd for it.
#[derive(Debug)]
pub struct Container {
    /// The init's pid.
    pub pid: Pid,
    /// A pidfd for the init (poll it, or signal it race-free).
    pub pidfd: OwnedFd,
    /// What Landlock enforces for the agent on this kernel (decided before the clone; the
    /// agent's confinement applies exactly this or fails).
    pub landlock: crate::fsrules::Enforcement,
    /// The runtime's end of the start handshake with the init.
    pub sync: std::os::unix::net::UnixStream,
}

/// The namespace flags for a plan.
pub fn clone_flags(plan: &SessionPlan) -> u64 {
    let mut f = libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWPID;
    let ns = &plan.namespaces;
    if ns.net {
        f |= libc::CLONE_NEWNET;
    }
    if ns.ipc {
        f |= libc::CLONE_NEWIPC;
    }
    if ns.uts {
        f |= libc::CLONE_NEWUTS;
    }
    if ns.cgroup {
        f |= libc::CLONE_NEWCGROUP;
    }
    f as u64
}

/// The uid_map/gid_map text: container root → an unprivileged host id, agent → the owner.
pub fn id_map(plan: &SessionPlan) -> String {
    format!(
        "0 {} 1\n{} {} 1\n",
        plan.ids.root_host_id, plan.ids.agent_id, plan.ids.agent_host_id
    )
}

/// Starts the container init for `plan`, which will run `argv` (the state dir must be
/// prepared). `cgroup`: a cgroup directory fd to start the init in (CLONE_INTO_CGROUP).
/// The init builds the container, then waits: see [`wait_ready`] and [`go`].
pub fn start(
    plan: &SessionPlan,
    argv: &[String],
    cgroup: Option<RawFd>,
) -> Result<Container, Error> {
    plan.validate()?;
    check_bind_sources(plan)?;
    // Fail closed before any namespace exists: a right the plan requires that this kernel
    // cannot enforce refuses the session here, with the right and the ABI named.
    let landlock =
        crate::fsrules::enforcement(&plan.effective_landlock(), crate::fsrules::kernel_abi()?)?;
    let launch = crate::init::Launch {
        plan: plan.clone(),
        argv: argv.to_vec(),
    };
    let json = serde_json::to_vec(&launch).map_err(|e| Error::json("the launch", e))?;
    // Everything the child touches is prepared before the clone: it must not allocate.
    let exe = CString::new("/proc/self/exe").map_err(Error::nul)?;
    let arg0 = CString::new("agentd-sandbox").map_err(Error::nul)?;
    let arg1 = CString::new("init").map_err(Error::nul)?;
    let argv = [arg0.as_ptr(), arg1.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    // The plan pipe and the init's end of the start handshake, numbered above every fd the
    // child installs them on (so its dup2s never clobber one another).
    let high =
        |fd: OwnedFd| rustix::io::fcntl_dupfd_cloexec(&fd, 10).map_err(|e| Error::sys("dup", e));
    let (rd, wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))?;
    let rd = high(rd)?;
    let (ours, theirs) =
        std::os::unix::net::UnixStream::pair().map_err(|e| Error::sys("socketpair", e))?;
    let theirs = high(theirs.into())?;
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: clone_flags(plan) | libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    if let Some(fd) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd as u64;
    }
    let fds = ChildFds {
        plan: rd.as_raw_fd(),
        sync: theirs.as_raw_fd(),
    };
    // A single-threaded runtime (the `agentd-sandbox` binary) may run the init's Rust code
    // straight in the clone3 child, which is then an ordinary fork child; that saves the
    // second exec of this binary (the largest part of a session's start under emulation).
    // A multi-threaded caller (the daemon) gets the async-signal-safe path: exec the init.
    let in_process = single_threaded();
    // SAFETY: clone3 without CLONE_VM or a stack behaves like fork. The child branch below
    // only calls async-signal-safe functions (read, setgroups/setresgid/setresuid, prctl,
    // dup2, execve, _exit) on memory prepared before the call, and never returns into Rust
    // code.
    let ret = match unsafe { cgctl::clone3::clone3(&mut args) } {
        Ok(pid) => pid,
        Err(e) => return Err(Error::sys("clone3", e)),
    };
    if ret == 0 {
        // SAFETY: child of a fork-like clone; async-signal-safe calls only (see above).
        unsafe { child_prologue(fds) };
        if in_process {
            // SAFETY: child of a fork-like clone of a single-threaded process: it may run
            // any code; `child_in_process` never returns.
            unsafe { child_in_process(&launch) }
        }
        // SAFETY: as above; execve replaces the process or we _exit.
        unsafe {
            libc::execve(exe.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(122);
        }
    }
    drop((rd, theirs));
    let pid = Pid::from_raw(ret);
    // SAFETY: CLONE_PIDFD stored a fresh descriptor owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let container = Container {
        pid,
        pidfd,
        landlock,
        sync: ours,
    };
    let map = id_map(plan);
    let write_maps = || -> std::io::Result<()> {
        std::fs::write(format!("/proc/{ret}/uid_map"), &map)?;
        std::fs::write(format!("/proc/{ret}/gid_map"), &map)
    };
    if let Err(e) = write_maps() {
        kill(&container);
        return Err(Error::sys("writing the id maps", e));
    }
    let mut w = std::fs::File::from(wr);
    // The child blocks for the first byte, then (exec'd init) reads the plan to EOF (the
    // write end closes when `w` drops). The in-process init already has the plan.
    let sent = if in_process {
        w.write_all(b"G")
    } else {
        w.write_all(b"G").and_then(|()| w.write_all(&json))
    };
    if let Err(e) = sent {
        kill(&container);
        return Err(Error::sys("sending the plan", e));
    }
    Ok(container)
}

/// What the init hands over with its READY.
#[derive(Debug)]
pub struct Ready {
    /// The exec-capture listener, when the plan captures execs (docs/capture.md).
    pub capture: Option<OwnedFd>,
}

/// Waits until the init has built the container (mounts, pivot_root; the agent is not
/// started yet). `None`: the init exited first (its stderr said why; [`wait`] for it).
pub fn wait_ready(c: &Container) -> Result<Option<Ready>, Error> {
    use std::os::fd::AsFd;
    match crate::capture::recv_byte_and_fd(c.sync.as_fd()) {
        Ok(Some((crate::launch::READY, capture))) => Ok(Some(Ready { capture })),
        Ok(_) => Ok(None),
        Err(e) => Err(Error::sys("waiting for the container init", e)),
    }
}

/// Lets the init start the agent (after [`wait_ready`]).
pub fn go(c: &Container) -> Result<(), Error> {
    (&c.sync)
        .write_all(&[crate::launch::GO])
        .map_err(|e| Error::sys("starting the agent", e))
}

/// Where the clone3 child finds its descriptors (both close-on-exec, numbered ≥ 10).
#[derive(Clone, Copy)]
struct ChildFds {
    plan: RawFd,
    sync: RawFd,
}

/// The clone3 child's first steps, the same on both launch paths: wait until the runtime
/// has written the id maps (the first byte on the plan pipe), become container root (the
/// child still has the host ids it was cloned with, unmapped here, and needs root in its
/// namespace so the init keeps the full capability set), then ask to die with the runtime
/// (after the id change, which would clear it), and install the plan pipe on [`PLAN_FD`]
/// and the handshake on [`crate::init::SYNC_FD`] for the init. Raw syscalls: this is a fork
/// child (no libc setxid broadcast wanted). Returns only when all of it worked.
///
/// # Safety
/// Only in the child of a fork-like clone; async-signal-safe calls only.
unsafe fn child_prologue(fds: ChildFds) {
    // SAFETY: integer-only syscalls on this process, on descriptors it owns.
    unsafe {
        let mut b = 0u8;
        if libc::read(fds.plan, (&mut b as *mut u8).cast(), 1) != 1 {
            libc::_exit(120);
        }
        if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) < 0
            || libc::syscall(libc::SYS_setresgid, 0, 0, 0) < 0
            || libc::syscall(libc::SYS_setresuid, 0, 0, 0) < 0
        {
            libc::_exit(123);
        }
        // The runtime going away takes the whole session with it.
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        // dup2 leaves the targets open across exec (the sources stay close-on-exec).
        if libc::dup2(fds.plan, PLAN_FD) < 0 || libc::dup2(fds.sync, crate::init::SYNC_FD) < 0 {
            libc::_exit(121);
        }
    }
}

/// Each read-only bind's source must be an existing regular file or directory on the host
/// (checked here, as host root, so the error names the path before any namespace exists; a
/// symlink is refused rather than followed, so the plan names what is actually bound).
pub fn check_bind_sources(plan: &SessionPlan) -> Result<(), Error> {
    for b in &plan.bind_ro {
        let what = |problem| Error::BindSource {
            source_path: b.source.clone(),
            target: b.target.clone(),
            problem,
        };
        let md = std::fs::symlink_metadata(&b.source).map_err(|e| what(BindProblem::Stat(e)))?;
        if !(md.is_file() || md.is_dir()) {
            return Err(what(if md.is_symlink() {
                BindProblem::Symlink
            } else {
                BindProblem::Special
            }));
        }
    }
    Ok(())
}

/// Whether this process has exactly one thread (then a fork child may allocate).
fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|d| d.count() == 1)
}

/// The clone3 child of a single-threaded runtime, after [`child_prologue`]: runs the init
/// ([`crate::init::run_launch`]) without a new exec.
///
/// # Safety
/// Only in the child of a fork-like clone of a single-threaded process; never returns.
unsafe fn child_in_process(launch: &crate::init::Launch) -> ! {
    // SAFETY: integer-only syscalls on this process.
    unsafe {
        // The id change made us non-dumpable; an exec'd init would be dumpable again
        // (so its /proc files belong to container root, not to host root).
        libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
        // Nothing of the runtime's (the cgroup dir fd, the plan pipe, the caller's files)
        // stays open in the container but the handshake: the exec path closes them
        // through O_CLOEXEC.
        libc::close(PLAN_FD);
        libc::syscall(
            libc::SYS_close_range,
            (crate::init::SYNC_FD + 1) as u32,
            u32::MAX,
            0u32,
        );
    }
    let code = match crate::init::sync_fd().and_then(|s| crate::init::run_launch(launch.clone(), s))
    {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agentd-sandbox: {e}");
            125
        }
    };
    let _ = std::io::stdout().flush();
    // SAFETY: _exit ends this child without unwinding into the runtime's stack or running
    // the runtime's exit handlers.
    unsafe { libc::_exit(code.clamp(0, 255)) }
}

fn kill(c: &Container) {
    let _ = nix::sys::signal::kill(c.pid, nix::sys::signal::Signal::SIGKILL);
    let _ = waitpid(c.pid, None);
}

/// Waits for the init; returns a shell-style exit code (128+signal when killed).
pub fn wait(c: &Container) -> Result<i32, Error> {
    wait_pid(c.pid)
}

/// Waits for a child process; returns a shell-style exit code (128+signal when killed).
pub fn wait_pid(pid: Pid) -> Result<i32, Error> {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::sys("waitpid", e)),
        }
    }
}

/// Like [`wait`], forwarding SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to this process to
/// the init (which forwards them to the agent), through the pidfd so a recycled pid is never
/// signalled. Call after [`start`]: the signals are blocked in the calling thread and taken
/// by a helper thread.
pub fn wait_forwarding_signals(c: &Container) -> Result<i32, Error> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        set.add(s);
    }
    set.thread_block()
        .map_err(|e| Error::sys("blocking signals", e))?;
    let pidfd = c
        .pidfd
        .try_clone()
        .map_err(|e| Error::sys("dup pidfd", e))?;
    std::thread::spawn(move || {
        while let Ok(sig) = set.wait() {
            crate::pty::send_signal(&pidfd, sig as libc::c_int);
        }
    });
    wait(c)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
    use super::*;

    #[test]
    fn maps_never_include_host_root() {
        let p = SessionPlan::new(Path::new("/r"), Path::new("/s"), 1 << 30, 1000, 100_000);
        assert_eq!(id_map(&p), "0 100000 1\n1000 1000 1\n");
    }

    #[test]
    fn all_namespaces_by_default_and_net_optional() {
        let mut p = SessionPlan::new(Path::new("/r"), Path::new("/s"), 1 << 30, 1000, 100_000);
        let all = (libc::CLONE_NEWUSER
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWCGROUP) as u64;
        assert_eq!(clone_flags(&p), all);
        p.namespaces.net = false;
        assert_eq!(clone_flags(&p) & libc::CLONE_NEWNET as u64, 0);
    }
}
