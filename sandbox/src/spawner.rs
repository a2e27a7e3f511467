//! The per-session call spawner: one process per session, forked by the runtime once the
//! container is built, already inside the session's user, mount, pid, net, ipc and uts
//! namespaces, that starts each tool call on the daemon's request straight into its call
//! cgroup (clone3 `CLONE_INTO_CGROUP | CLONE_PIDFD`) with the agent's confinement applied
//! in the child before the one exec of the call: the tool's. It replaces, per call, the
//! exec of `agentd-sandbox exec`, its namespace joins and its seccomp compile; the child is
//! started by the very code `exec` uses ([`crate::exec::start_in_session`] on a
//! [`crate::exec::Prepared`] from the same [`ExecRequest`]), so a call has the same
//! confinement whichever way it starts. Design and threat model: `docs/spawner.md`.
//!
//! Channel: a `SOCK_SEQPACKET` Unix socket bound at `<state>/spawner.sock` in the host's
//! mount namespace before the spawner joins the session's (nothing inside the container
//! can reach it: the state dir is not in its mount namespace), owned by host root, mode
//! 0600. One connection per call: the daemon sends one [`ExecRequest`] packet (JSON, its
//! `cgroup` naming the directory) carrying the call's cgroup directory fd and its stdin,
//! stdout and stderr as `SCM_RIGHTS`; the spawner answers [`Reply::Started`] (the call's
//! pidfd attached) or [`Reply::Error`], then [`Reply::Exited`] when the call ends. A
//! daemon restart just connects again.
//!
//! [`client`] is the daemon's side (plain blocking calls; the daemon runs them on a blocking
//! thread and waits for the exit packet on the connection's fd).

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    self, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr,
};
use serde::{Deserialize, Serialize};

use crate::launch::ExecRequest;
use crate::plan::SessionPlan;

pub mod client;

/// The socket's file name in the session's state dir.
pub const SOCKET: &str = "spawner.sock";

/// Largest request packet (argv + env of one call).
pub const MAX_PACKET: usize = 256 * 1024;

/// A request whose JSON is longer goes in a sealed memfd instead, attached after the four
/// descriptors with [`REQUEST_IN_MEMFD`] as the packet: a socket's send buffer (208 KiB by
/// default) is smaller than a call's argv may be (the kernel allows 2 MiB).
pub const INLINE_REQUEST: usize = 64 * 1024;

/// The packet of a request carried in a memfd.
pub const REQUEST_IN_MEMFD: &[u8] = b"memfd";

/// Largest request read from a memfd (argv and env within the kernel's limits, as JSON).
pub const MAX_REQUEST: u64 = 16 << 20;

/// Descriptors a request carries, in this order: the call's cgroup directory, its stdin,
/// stdout and stderr.
pub const REQUEST_FDS: usize = 4;

/// What goes wrong on the spawner's side or its channel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call on the channel or the spawner's process failed.
    #[error("spawner: {what}: {source}")]
    Sys {
        /// What was being done (with the path when there is one).
        what: String,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// A packet did not fit (its bytes or its descriptors were cut).
    #[error(
        "spawner: a packet of {bytes} bytes or its descriptors were cut (the limit is {MAX_PACKET} bytes, {REQUEST_FDS} descriptors)"
    )]
    Truncated {
        /// Its size as received.
        bytes: usize,
    },
    /// A request with the wrong number of descriptors.
    #[error(
        "spawner: a request carries {REQUEST_FDS} descriptors (cgroup, stdin, stdout, stderr), this one {got}"
    )]
    Descriptors {
        /// How many it carried.
        got: usize,
    },
    /// A packet that is not the JSON it should be.
    #[error("spawner: bad {what} packet: {source}")]
    Json {
        /// Request or reply.
        what: &'static str,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A request for another session than the spawner's.
    #[error("spawner of {ours}: the request names the session in {theirs}")]
    WrongSession {
        /// The spawner's state dir.
        ours: PathBuf,
        /// The request's.
        theirs: PathBuf,
    },
    /// A request the spawner does not serve (a pty: `agentd-sandbox exec --pty`).
    #[error("spawner: a call on a pty is started by `agentd-sandbox exec`, not the spawner")]
    Pty,
    /// The request has no cgroup (every call through the spawner has its own).
    #[error("spawner: the request for {program:?} names no cgroup")]
    NoCgroup {
        /// argv[0].
        program: String,
    },
    /// The spawner answered that the call could not start (its reason).
    #[error("the spawner of {state}: {reason}")]
    Refused {
        /// The session's state dir.
        state: PathBuf,
        /// What the spawner said.
        reason: String,
    },
    /// The spawner answered out of order, or closed the connection early.
    #[error("the spawner of {state}: {what}")]
    Protocol {
        /// The session's state dir.
        state: PathBuf,
        /// What happened.
        what: &'static str,
    },
    /// Preparing or starting the command (the sandbox's own errors).
    #[error(transparent)]
    Sandbox(#[from] crate::Error),
}

impl Error {
    fn sys(what: impl Into<String>, source: impl Into<std::io::Error>) -> Error {
        Error::Sys {
            what: what.into(),
            source: source.into(),
        }
    }

    /// Whether this is the "nothing to read yet" of a non-blocking receive.
    pub fn would_block(&self) -> bool {
        matches!(self, Error::Sys { source, .. } if source.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// What the spawner answers on a call's connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reply {
    /// The call runs (its exec succeeded); its pidfd is attached. `pid` is in the spawner's
    /// pid namespace, which is the runtime's (the daemon's).
    Started {
        /// The call's pid.
        pid: i32,
    },
    /// The call could not start (nothing runs).
    Error {
        /// Why.
        error: String,
    },
    /// The call ended: shell-style exit code (128+signal when killed).
    Exited {
        /// The code.
        code: i32,
    },
}

/// One received packet: its bytes and the descriptors it carried.
pub type Packet = (Vec<u8>, Vec<OwnedFd>);

/// `/proc/self/fd/<dir>/spawner.sock`: short whatever the state dir's length (a Unix
/// socket path has 108 bytes).
fn addr_in(dir: BorrowedFd<'_>) -> Result<UnixAddr, Error> {
    addr_named(dir, SOCKET)
}

/// `/proc/self/fd/<dir>/<name>`.
fn addr_named(dir: BorrowedFd<'_>, name: &str) -> Result<UnixAddr, Error> {
    UnixAddr::new(&format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()) as &str)
        .map_err(|e| Error::sys("the socket address", e))
}

/// Connects a `SOCK_SEQPACKET` socket to `<state>/<name>` (blocking, close-on-exec).
pub(crate) fn connect_seqpacket(state: &Path, name: &str) -> Result<OwnedFd, crate::Error> {
    let io = |what: String, e: nix::errno::Errno| crate::Error::Sys {
        what,
        source: e.into(),
    };
    let dir = open_dir(state).map_err(|e| crate::Error::Sys {
        what: format!("open {}", state.display()),
        source: std::io::Error::other(e.to_string()),
    })?;
    let conn = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| io("socket".into(), e))?;
    let addr = UnixAddr::new(&format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()) as &str)
        .map_err(|e| io("the socket address".into(), e))?;
    socket::connect(conn.as_raw_fd(), &addr)
        .map_err(|e| io(format!("connect to {}", state.join(name).display()), e))?;
    Ok(conn)
}

fn open_dir(state: &Path) -> Result<OwnedFd, Error> {
    nix::fcntl::open(
        state,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| Error::sys(format!("open {}", state.display()), e))
}

/// Sends one packet with descriptors attached (never SIGPIPE: a gone peer is not ours to
/// die of).
pub fn send_packet(sock: BorrowedFd<'_>, data: &[u8], fds: &[RawFd]) -> Result<(), Error> {
    let iov = [IoSlice::new(data)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    socket::sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
        .map_err(|e| Error::sys("send", e))?;
    Ok(())
}

/// Receives one packet and the descriptors it carries; `Ok(None)` at end of stream.
pub fn recv_packet(sock: BorrowedFd<'_>, flags: MsgFlags) -> Result<Option<Packet>, Error> {
    let mut buf = vec![0u8; MAX_PACKET];
    let mut space = nix::cmsg_space!([RawFd; REQUEST_FDS + 1]);
    let (n, fds, truncated) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = socket::recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            flags | MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| Error::sys("receive", e))?;
        let mut fds = Vec::new();
        for c in msg.cmsgs().map_err(|e| Error::sys("cmsg", e))? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for fd in raw {
                    // SAFETY: SCM_RIGHTS installed these descriptors in this process just
                    // now; each is owned once, here.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        let truncated = msg
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
        (msg.bytes, fds, truncated)
    };
    if truncated {
        return Err(Error::Truncated { bytes: n });
    }
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    buf.truncate(n);
    Ok(Some((buf, fds)))
}

/// A started spawner, as the runtime keeps it: stopped (reaped, or killed) when the
/// session's init has exited.
#[derive(Debug)]
pub struct Spawner {
    /// Its pid (a child of the runtime, in the runtime's pid namespace).
    pub pid: nix::unistd::Pid,
    /// Its socket, removed when it stops (a kept state dir keeps no dead socket).
    pub socket: PathBuf,
}

impl Spawner {
    /// Reaps the spawner once the session's init has exited: it reports its last calls'
    /// exits and leaves by itself; after 5 s it is killed. Its socket is removed.
    pub fn stop(self) {
        use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
        let _ = std::fs::remove_file(&self.socket);
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_secs(5) {
            match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                _ => return,
            }
        }
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        let _ = waitpid(self.pid, None);
    }
}

/// Binds the listening socket at `<state>/spawner.sock`: host root's, mode 0600.
fn listen(state: &Path) -> Result<(OwnedFd, PathBuf), Error> {
    listen_named(state, SOCKET)
}

/// Binds a listening `SOCK_SEQPACKET` socket at `<state>/<name>` (the capture socket too).
pub(crate) fn bind_seqpacket(state: &Path, name: &str) -> Result<OwnedFd, crate::Error> {
    listen_named(state, name)
        .map(|(fd, _)| fd)
        .map_err(|e| crate::Error::Sys {
            what: format!("{}", state.join(name).display()),
            source: std::io::Error::other(e.to_string()),
        })
}

fn listen_named(state: &Path, name: &str) -> Result<(OwnedFd, PathBuf), Error> {
    let dir = open_dir(state)?;
    let listener = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| Error::sys("socket", e))?;
    let path = state.join(name);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::sys(format!("rm {}", path.display()), e)),
    }
    // Nothing but host root may connect (umask for the bind, then chmod to be sure
    // whatever the umask was).
    // SAFETY: umask only changes this process's file-creation mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = socket::bind(listener.as_raw_fd(), &addr_named(dir.as_fd(), name)?);
    // SAFETY: as above, restoring it.
    unsafe { libc::umask(old) };
    bound.map_err(|e| Error::sys(format!("bind {}", path.display()), e))?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| Error::sys(format!("chmod {}", path.display()), e))?;
    socket::listen(
        &listener,
        socket::Backlog::new(128).unwrap_or(socket::Backlog::MAXCONN),
    )
    .map_err(|e| Error::sys("listen", e))?;
    Ok((listener, path))
}

/// Starts the spawner of the session `c` (called by the runtime once the init said the
/// container is built, while the runtime is still single-threaded: the spawner is a plain
/// fork of it). The socket is bound here, in the host's mount namespace, before the fork,
/// so a daemon may connect as soon as this returns. `capture`: the init's exec-capture
/// listener (docs/capture.md), which the spawner supervises; `<state>/capture.sock` is
/// bound for the daemon then.
pub fn start(
    plan: &SessionPlan,
    c: &crate::container::Container,
    capture: Option<OwnedFd>,
) -> Result<Spawner, Error> {
    // Compiled once for the session's whole life, not per call.
    let seccomp = crate::exec::compile_seccomp(plan)?;
    let init = c
        .pidfd
        .try_clone()
        .map_err(|e| Error::sys("dup the init's pidfd", e))?;
    let (listener, socket) = listen(&plan.workspace.state)?;
    let capture = match capture {
        Some(notify) => Some(CaptureFds {
            notify,
            procfs: crate::capture::open_procfs()?,
            listener: crate::capture::listen(&plan.workspace.state)?,
            init_pid: c.pid.as_raw(),
        }),
        None => None,
    };
    let runtime = nix::unistd::getpid();
    // SAFETY: the runtime is single-threaded here (it forks the spawner before it starts
    // its signal thread), so the child may run ordinary Rust code.
    match unsafe { nix::unistd::fork() }.map_err(|e| Error::sys("fork", e))? {
        nix::unistd::ForkResult::Parent { child } => Ok(Spawner { pid: child, socket }),
        nix::unistd::ForkResult::Child => {
            // First of all: die with the runtime. A fork child does not inherit the death
            // signal, and a runtime already gone (SIGKILL before this line) is caught by the
            // parent check.
            // SAFETY: integer-only prctl on this process.
            unsafe {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                );
            }
            if nix::unistd::getppid() != runtime {
                // SAFETY: end the fork child without running the runtime's exit path.
                unsafe { libc::_exit(1) }
            }
            let code = match serve(plan, seccomp, &init, &listener, capture) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("agentd-sandbox: {e}");
                    1
                }
            };
            // SAFETY: end the fork child without running the runtime's exit path.
            unsafe { libc::_exit(code) }
        }
    }
}

/// What the spawner needs to supervise exec capture (docs/capture.md).
struct CaptureFds {
    /// The init's seccomp listener.
    notify: OwnedFd,
    /// The host's /proc, opened before the spawner joins the session's mount namespace.
    procfs: OwnedFd,
    /// `<state>/capture.sock`.
    listener: OwnedFd,
    /// The init's pid (host pid namespace): its cgroup is the agent leaf.
    init_pid: i32,
}

/// One call in flight: its connection and pidfd.
struct Running {
    conn: OwnedFd,
    pidfd: OwnedFd,
}

/// Closes every descriptor of this process above 2 but `keep`, and puts /dev/null on
/// stdin and stdout (stderr stays: the session's log, for the spawner's own errors).
fn close_inherited(keep: &[RawFd]) -> Result<(), Error> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| Error::sys("open /dev/null", e))?;
    // SAFETY: dup2 onto 0 and 1 of this process.
    unsafe {
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(null.as_raw_fd(), 1);
    }
    drop(null);
    // The runtime's other descriptors (the init's handshake socket, whose EOF must mean
    // the runtime is gone; the caller's files): not the spawner's business.
    let open: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| Error::sys("read /proc/self/fd", e))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect();
    for fd in open {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: closing a descriptor nothing in this process uses (the runtime's
            // copies were inherited; read_dir's own descriptor is already closed).
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

/// The spawner's life: leave the runtime's terminal session, join the container, then
/// serve until the init exits.
fn serve(
    plan: &SessionPlan,
    seccomp: Vec<u8>,
    init: &OwnedFd,
    listener: &OwnedFd,
    capture: Option<CaptureFds>,
) -> Result<(), Error> {
    // SAFETY: integer-only prctl: no core dumps, and no ptrace by anyone but host root.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    // A session of its own: a Ctrl-C on the terminal the runtime runs in is the agent's
    // to receive (forwarded by the runtime), never the spawner's.
    nix::unistd::setsid().map_err(|e| Error::sys("setsid", e))?;
    let mut keep = vec![listener.as_raw_fd(), init.as_raw_fd()];
    if let Some(c) = &capture {
        keep.extend([
            c.notify.as_raw_fd(),
            c.procfs.as_raw_fd(),
            c.listener.as_raw_fd(),
        ]);
    }
    close_inherited(&keep)?;
    let mut supervisor = match capture {
        Some(c) => Some(crate::capture::Supervisor::new(
            c.notify, c.procfs, c.listener, c.init_pid,
        )?),
        None => None,
    };
    let flags = crate::container::clone_flags(plan) as libc::c_int;
    // The cgroup namespace is joined by each call's child after its clone3 (as `exec`).
    // SAFETY: setns with a valid pidfd; it changes only this (single-threaded) process.
    if unsafe { libc::setns(init.as_raw_fd(), flags & !libc::CLONE_NEWCGROUP) } < 0 {
        return Err(Error::sys(
            "setns into the session",
            std::io::Error::last_os_error(),
        ));
    }
    let mut waiting: Vec<OwnedFd> = Vec::new();
    let mut running: HashMap<RawFd, Running> = HashMap::new();
    loop {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut fds = vec![
            PollFd::new(init.as_fd(), PollFlags::POLLIN),
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
        ];
        fds.extend(
            waiting
                .iter()
                .map(|c| PollFd::new(c.as_fd(), PollFlags::POLLIN)),
        );
        let order: Vec<RawFd> = running.keys().copied().collect();
        fds.extend(
            order
                .iter()
                .filter_map(|k| running.get(k))
                .map(|r| PollFd::new(r.pidfd.as_fd(), PollFlags::POLLIN)),
        );
        let sup_at = fds.len();
        if let Some(s) = &supervisor {
            fds.extend(
                s.fds()
                    .into_iter()
                    .map(|f| PollFd::new(f, PollFlags::POLLIN)),
            );
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::sys("poll", e)),
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        if ready[0] {
            // The init is gone: the session ended, and every call dies with its pid
            // namespace. Report their exits (the last call may be the one that ended the
            // session), take no new request, then go.
            for (_, run) in running {
                report(&run);
            }
            return Ok(());
        }
        if let Some(s) = &mut supervisor {
            s.ready(&ready[sup_at..]);
        }
        let nw = waiting.len();
        for (k, r) in order.iter().zip(&ready[2 + nw..sup_at]) {
            if *r && let Some(run) = running.remove(k) {
                report(&run);
            }
        }
        let mut still = Vec::new();
        for (conn, r) in waiting.drain(..).zip(&ready[2..2 + nw]) {
            if !*r {
                still.push(conn);
                continue;
            }
            if let Some(run) = handle_request(plan, &seccomp, init, conn) {
                running.insert(run.pidfd.as_raw_fd(), run);
            }
        }
        waiting = still;
        if ready[1] {
            match socket::accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                // SAFETY: accept4 returned a fresh descriptor owned by nobody else.
                Ok(fd) => waiting.push(unsafe { OwnedFd::from_raw_fd(fd) }),
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                Err(e) => return Err(Error::sys("accept", e)),
            }
        }
    }
}

/// Reaps an exited call (or waits for one the kernel is killing) and reports its exit on
/// its connection (a daemon that went away gets nothing; the call's cgroup report is the
/// daemon's to read either way).
fn report(run: &Running) {
    let code = reap(&run.pidfd);
    if let Ok(json) = serde_json::to_vec(&Reply::Exited { code }) {
        let _ = send_packet(run.conn.as_fd(), &json, &[]);
    }
}

/// Waits for a call to exit; shell-style code (125: the wait itself failed).
fn reap(pidfd: &OwnedFd) -> i32 {
    // SAFETY: siginfo_t is plain data; waitid fills it for the pidfd's (our child's) exit.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid(P_PIDFD) on a live pidfd of our own child, with a valid siginfo.
    let r = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED,
        )
    };
    if r < 0 {
        return 125;
    }
    // SAFETY: after a successful waitid with WEXITED the status fields are set.
    let (code, status) = (info.si_code, unsafe { info.si_status() });
    if code == libc::CLD_EXITED {
        status
    } else {
        128 + status
    }
}

/// Checks a request against the spawner's session: the same state dir, no pty, a cgroup.
pub fn check_request(plan: &SessionPlan, req: &ExecRequest) -> Result<(), Error> {
    if req.state != plan.workspace.state {
        return Err(Error::WrongSession {
            ours: plan.workspace.state.clone(),
            theirs: req.state.clone(),
        });
    }
    if req.pty {
        return Err(Error::Pty);
    }
    if req.cgroup.is_none() {
        return Err(Error::NoCgroup {
            program: req.argv.first().cloned().unwrap_or_default(),
        });
    }
    req.validate()?;
    Ok(())
}

/// Starts the call a request asks for: `fds` = [cgroup dir, stdin, stdout, stderr].
fn start_call(
    plan: &SessionPlan,
    seccomp: &[u8],
    init: &OwnedFd,
    data: &[u8],
    mut fds: Vec<OwnedFd>,
) -> Result<crate::exec::ExecChild, Error> {
    let from_memfd;
    let data = if data == REQUEST_IN_MEMFD && fds.len() == REQUEST_FDS + 1 {
        let memfd = fds.pop().ok_or(Error::Descriptors { got: 0 })?;
        from_memfd = read_bounded(memfd)?;
        &from_memfd[..]
    } else {
        data
    };
    let req: ExecRequest = serde_json::from_slice(data).map_err(|source| Error::Json {
        what: "request",
        source,
    })?;
    check_request(plan, &req)?;
    let [cg, stdin, stdout, stderr]: [OwnedFd; REQUEST_FDS] = fds
        .try_into()
        .map_err(|v: Vec<OwnedFd>| Error::Descriptors { got: v.len() })?;
    let prepared = crate::exec::prepare(plan, &req, seccomp.to_vec())?;
    let child = crate::exec::start_in_session(
        &prepared,
        init.as_fd(),
        plan.namespaces.cgroup,
        Some(cg.as_fd()),
        [Some(stdin), Some(stdout), Some(stderr)],
        false,
    )?;
    Ok(child)
}

/// The request in a memfd, at most [`MAX_REQUEST`] bytes of it.
fn read_bounded(memfd: OwnedFd) -> Result<Vec<u8>, Error> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::from(memfd)
        .take(MAX_REQUEST + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::sys("reading the request's memfd", e))?;
    if buf.len() as u64 > MAX_REQUEST {
        return Err(Error::Truncated { bytes: buf.len() });
    }
    Ok(buf)
}

/// Reads a request from `conn`, starts the call and answers; the call in flight, if any.
fn handle_request(
    plan: &SessionPlan,
    seccomp: &[u8],
    init: &OwnedFd,
    conn: OwnedFd,
) -> Option<Running> {
    let answer = |reply: &Reply, fds: &[RawFd]| {
        if let Ok(json) = serde_json::to_vec(reply) {
            let _ = send_packet(conn.as_fd(), &json, fds);
        }
    };
    let started = match recv_packet(conn.as_fd(), MsgFlags::MSG_DONTWAIT) {
        // A client that connected and went away without asking.
        Ok(None) => return None,
        Err(e) if e.would_block() => return None,
        Ok(Some((data, fds))) => start_call(plan, seccomp, init, &data, fds),
        Err(e) => Err(e),
    };
    match started {
        Ok(child) => {
            answer(
                &Reply::Started {
                    pid: child.pid.as_raw(),
                },
                &[child.pidfd.as_raw_fd()],
            );
            Some(Running {
                conn,
                pidfd: child.pidfd,
            })
        }
        Err(e) => {
            answer(
                &Reply::Error {
                    error: e.to_string(),
                },
                &[],
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
    use super::*;

    fn plan() -> SessionPlan {
        SessionPlan::new(Path::new("/r"), Path::new("/s"), 1 << 30, 1000, 100_000)
    }

    #[test]
    fn requests_for_another_session_a_pty_or_no_cgroup_are_refused() {
        let p = plan();
        let mut req = ExecRequest::new(Path::new("/s"), &["true".into()]);
        req.cgroup = Some(PathBuf::from("/sys/fs/cgroup/x/calls/1"));
        check_request(&p, &req).unwrap();
        let mut other = req.clone();
        other.state = PathBuf::from("/t");
        assert!(matches!(
            check_request(&p, &other),
            Err(Error::WrongSession { .. })
        ));
        let mut pty = req.clone();
        pty.pty = true;
        assert!(matches!(check_request(&p, &pty), Err(Error::Pty)));
        let mut nocg = req.clone();
        nocg.cgroup = None;
        let e = check_request(&p, &nocg).unwrap_err();
        assert!(e.to_string().contains("\"true\""), "{e}");
        let mut rel = req;
        rel.cwd = Some(PathBuf::from("rel"));
        assert!(check_request(&p, &rel).is_err());
    }

    #[test]
    fn replies_have_a_stable_json_form() {
        let r = serde_json::to_string(&Reply::Started { pid: 7 }).unwrap();
        assert_eq!(r, r#"{"started":{"pid":7}}"#);
        let r = serde_json::to_string(&Reply::Exited { code: 137 }).unwrap();
        assert_eq!(r, r#"{"exited":{"code":137}}"#);
        let r: Reply = serde_json::from_str(r#"{"error":{"error":"no"}}"#).unwrap();
        assert_eq!(r, Reply::Error { error: "no".into() });
    }

    fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
        socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    #[test]
    fn a_packet_and_its_descriptors_cross_a_seqpacket_pair() {
        let (a, b) = seqpacket_pair();
        let f = std::fs::File::open("/dev/null").unwrap();
        send_packet(a.as_fd(), b"hello", &[f.as_raw_fd()]).unwrap();
        let (data, fds) = recv_packet(b.as_fd(), MsgFlags::empty()).unwrap().unwrap();
        assert_eq!(data, b"hello");
        assert_eq!(fds.len(), 1);
        let e = recv_packet(b.as_fd(), MsgFlags::MSG_DONTWAIT).unwrap_err();
        assert!(e.would_block(), "{e}");
        drop(a);
        assert!(recv_packet(b.as_fd(), MsgFlags::empty()).unwrap().is_none());
    }

    #[test]
    fn a_request_too_big_for_a_packet_crosses_in_a_memfd() {
        let (a, b) = seqpacket_pair();
        let mut req = ExecRequest::new(Path::new("/s"), &["true".to_string()]);
        req.argv
            .extend((0..19).map(|i| format!("{i:02}").repeat(50_000)));
        let json = serde_json::to_vec(&req).unwrap();
        assert!(json.len() > MAX_PACKET);
        let null = std::fs::File::open("/dev/null").unwrap();
        let memfd = crate::launch::request_memfd(&req).unwrap();
        let mut fds = vec![null.as_raw_fd(); REQUEST_FDS];
        fds.push(memfd.as_raw_fd());
        send_packet(a.as_fd(), REQUEST_IN_MEMFD, &fds).unwrap();
        let (data, mut got) = recv_packet(b.as_fd(), MsgFlags::empty()).unwrap().unwrap();
        assert_eq!(data, REQUEST_IN_MEMFD);
        assert_eq!(got.len(), REQUEST_FDS + 1);
        assert_eq!(read_bounded(got.pop().unwrap()).unwrap(), json);
    }
}
