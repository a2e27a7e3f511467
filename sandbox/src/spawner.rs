//! The per-session call spawner: one process per session, started by the runtime right
//! after the container, already inside the session's user, mount, pid, net, ipc and uts
//! namespaces, that forks each tool call on the daemon's request straight into its call
//! cgroup (clone3 `CLONE_INTO_CGROUP | CLONE_PIDFD`) and applies the call's confinement in
//! the child before the one exec of the call: the tool's. It replaces, per call, the exec of
//! `agentd-sandbox exec` and its namespace joins and seccomp compile. Design and threat
//! model: `docs/spawner.md`.
//!
//! Channel: a `SOCK_SEQPACKET` Unix socket bound at `<state>/spawner.sock` in the host's
//! mount namespace before the spawner joins the session's (so nothing inside the container
//! can reach it: the state dir is hidden there), owned by host root, mode 0600. One
//! connection per call: the daemon sends one [`SpawnRequest`] packet carrying the call's
//! cgroup directory fd and its stdin, stdout and stderr as `SCM_RIGHTS`; the spawner
//! answers [`Reply::Started`] (with the call's pidfd attached) or [`Reply::Error`], then
//! [`Reply::Exited`] when the call ends. A daemon restart just connects again.
//!
//! [`client`] is the daemon's side (plain blocking calls; the daemon runs them on a blocking
//! thread and waits for the exit packet on the connection's fd).

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    self, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr,
};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::confine::Confinement;
use crate::plan::{Landlock, Rlimit, SessionPlan};

pub mod child;
pub mod client;

/// The socket's file name in the session's state dir.
pub const SOCKET: &str = "spawner.sock";

/// Largest request packet (argv + env of one call).
pub const MAX_PACKET: usize = 256 * 1024;

/// Descriptors a request carries, in this order.
pub const REQUEST_FDS: usize = 4;

/// One call, as the daemon asks for it. The descriptors travel beside it: the call's cgroup
/// directory, then its stdin, stdout and stderr.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpawnRequest {
    /// The command; argv[0] is looked up in the session's PATH unless it has a `/`.
    pub argv: Vec<String>,
    /// Environment on top of the session's (the daemon checks the names against the policy).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory inside the container (default: the workspace).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Resource limits lowered for this call (never raised above the session's).
    #[serde(default)]
    pub rlimits: BTreeMap<String, Rlimit>,
    /// A further Landlock layer for this call: it can only narrow the session's rules.
    #[serde(default)]
    pub landlock: Option<Landlock>,
}

/// What the spawner answers on a call's connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reply {
    /// The call runs (its exec succeeded); its pidfd is attached. `pid` is in the spawner's
    /// pid namespace, which is the runtime's (the daemon's).
    Started { pid: i32 },
    /// The call could not start (nothing runs).
    Error { error: String },
    /// The call ended: shell-style exit code (128+signal when killed).
    Exited { code: i32 },
}

/// The session's confinement, prepared once (the seccomp program compiled once, not per
/// call), plus what every call's exec needs.
#[derive(Debug)]
pub struct Prepared {
    plan: SessionPlan,
    seccomp: Vec<u8>,
}

impl Prepared {
    /// Compiles what every call of `plan` needs.
    pub fn new(plan: &SessionPlan) -> Result<Prepared, Error> {
        Ok(Prepared {
            plan: plan.clone(),
            seccomp: crate::seccomp::compile(&crate::seccomp::build(&plan.seccomp)?)?,
        })
    }

    /// The confinement of one call: the session's, with the call's rlimits lowered.
    pub fn confinement(&self, req: &SpawnRequest) -> Result<Confinement, Error> {
        Ok(Confinement {
            agent_id: self.plan.ids.agent_id,
            rlimits: merge_rlimits(&self.plan.rlimits, &req.rlimits)?,
            landlock: self.plan.effective_landlock(),
            seccomp: self.seccomp.clone(),
        })
    }
}

/// The session's rlimits with a call's lowered ones (pure: a call can only lower a limit; a
/// name the sandbox does not know is an error, as in the plan).
pub fn merge_rlimits(
    session: &BTreeMap<String, Rlimit>,
    call: &BTreeMap<String, Rlimit>,
) -> Result<BTreeMap<String, Rlimit>, Error> {
    let mut out = session.clone();
    for (name, lim) in call {
        if crate::confine::rlimit_resource(name).is_none() {
            return Err(Error::Plan(format!("unknown rlimit {name:?} in a call")));
        }
        let e = out.entry(name.clone()).or_insert(Rlimit {
            soft: u64::MAX,
            hard: u64::MAX,
        });
        e.hard = e.hard.min(lim.hard);
        e.soft = e.soft.min(lim.soft).min(e.hard);
    }
    Ok(out)
}

/// (exec candidates, argv, envp, cwd) of one call.
pub type ExecStrings = (Vec<CString>, Vec<CString>, Vec<CString>, CString);

/// One received packet: its bytes and the descriptors it carried.
pub type Packet = (Vec<u8>, Vec<OwnedFd>);

/// The exec candidates for argv[0] (execvp's search over the session's PATH, done before
/// the fork), the environment (the session's, then the call's) and the working directory.
pub fn exec_strings(plan: &SessionPlan, req: &SpawnRequest) -> Result<ExecStrings, Error> {
    let cstr = |s: &str| CString::new(s).map_err(|e| Error::Plan(e.to_string()));
    let Some(prog) = req.argv.first() else {
        return Err(Error::Plan("no command".into()));
    };
    let args: Vec<CString> = req.argv.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?;
    let mut env = plan.env.clone();
    for (k, v) in &req.env {
        if k.is_empty() || k.contains('=') {
            return Err(Error::Plan(format!("bad environment name {k:?}")));
        }
        env.insert(k.clone(), v.clone());
    }
    let envs: Vec<CString> = env
        .iter()
        .map(|(k, v)| cstr(&format!("{k}={v}")))
        .collect::<Result<_, _>>()?;
    let candidates: Vec<CString> = if prog.contains('/') {
        vec![cstr(prog)?]
    } else {
        let path = env.get("PATH").map_or("/usr/bin:/bin", String::as_str);
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| cstr(&format!("{d}/{prog}")))
            .collect::<Result<_, _>>()?
    };
    let cwd = match &req.cwd {
        Some(c) if !c.is_absolute() => {
            return Err(Error::Plan(format!("cwd {} is not absolute", c.display())));
        }
        Some(c) => c.clone(),
        None => plan.workspace.mount_at.clone(),
    };
    Ok((candidates, args, envs, cstr(&cwd.to_string_lossy())?))
}

/// `/proc/self/fd/<dir>/spawner.sock`: short whatever the state dir's length (a Unix
/// socket path has 108 bytes).
fn addr_in(dir: BorrowedFd<'_>) -> Result<UnixAddr, Error> {
    UnixAddr::new(&format!("/proc/self/fd/{}/{SOCKET}", dir.as_raw_fd()) as &str)
        .map_err(|e| Error::sys("spawner socket address", e))
}

fn pidfd_open(pid: i32) -> Result<OwnedFd, Error> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(Error::sys(
            format!("pidfd_open {pid}"),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

fn open_dir(state: &Path) -> Result<OwnedFd, Error> {
    nix::fcntl::open(
        state,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| Error::sys(format!("open {}", state.display()), e))
}

/// Sends one packet with descriptors attached (never SIGPIPE: a gone daemon is not ours
/// to die of).
pub fn send_packet(sock: BorrowedFd<'_>, data: &[u8], fds: &[RawFd]) -> Result<(), Error> {
    let iov = [IoSlice::new(data)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    socket::sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
        .map_err(|e| Error::sys("spawner: send", e))?;
    Ok(())
}

/// Receives one packet and the descriptors it carries; `Ok(None)` at end of stream.
pub fn recv_packet(sock: BorrowedFd<'_>, flags: MsgFlags) -> Result<Option<Packet>, Error> {
    let mut buf = vec![0u8; MAX_PACKET];
    let mut space = nix::cmsg_space!([RawFd; REQUEST_FDS]);
    let (n, fds, truncated) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = socket::recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            flags | MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| Error::sys("spawner: receive", e))?;
        let mut fds = Vec::new();
        for c in msg.cmsgs().map_err(|e| Error::sys("spawner: cmsg", e))? {
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
        return Err(Error::Plan(
            "spawner: a packet or its descriptors were cut (too large)".into(),
        ));
    }
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    buf.truncate(n);
    Ok(Some((buf, fds)))
}

/// A started spawner, as the runtime keeps it: stopped (killed and reaped) when the
/// session's init has exited.
#[derive(Debug)]
pub struct Spawner {
    /// Its pid (a child of the runtime, in the runtime's pid namespace).
    pub pid: nix::unistd::Pid,
}

impl Spawner {
    /// Reaps the spawner once the session's init has exited: it reports its last calls'
    /// exits and leaves by itself; after 5 s it is killed.
    pub fn stop(self) {
        use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
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

/// Starts the spawner of the session whose init is `init_pid` (called by the runtime right
/// after [`crate::container::start`], while it is still single-threaded: the spawner is a
/// plain fork of it). The socket is bound here, in the host's mount namespace, before the
/// fork, so a daemon may connect as soon as this returns.
pub fn start(plan: &SessionPlan, init_pid: i32) -> Result<Spawner, Error> {
    let prepared = Prepared::new(plan)?;
    let init = pidfd_open(init_pid)?;
    let dir = open_dir(&plan.workspace.state)?;
    let listener = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| Error::sys("spawner: socket", e))?;
    let path = plan.workspace.state.join(SOCKET);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::sys(format!("rm {}", path.display()), e)),
    }
    // Host root's, 0600: nothing but host root may connect (umask for the bind, then chmod
    // to be sure whatever the umask was).
    // SAFETY: umask only changes this process's file-creation mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = socket::bind(listener.as_raw_fd(), &addr_in(dir.as_fd())?);
    // SAFETY: as above, restoring it.
    unsafe { libc::umask(old) };
    bound.map_err(|e| Error::sys(format!("bind {}", path.display()), e))?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| Error::sys(format!("chmod {}", path.display()), e))?;
    socket::listen(
        &listener,
        socket::Backlog::new(128).unwrap_or(socket::Backlog::MAXCONN),
    )
    .map_err(|e| Error::sys("spawner: listen", e))?;
    drop(dir);
    // SAFETY: the runtime is single-threaded here (checked by the caller's design: it runs
    // before any thread is spawned), so the child may run ordinary Rust code.
    match unsafe { nix::unistd::fork() }.map_err(|e| Error::sys("fork the spawner", e))? {
        nix::unistd::ForkResult::Parent { child } => Ok(Spawner { pid: child }),
        nix::unistd::ForkResult::Child => {
            let code = match serve(&prepared, &init, &listener) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("agentd-sandbox: spawner: {e}");
                    1
                }
            };
            // SAFETY: end the fork child without running the runtime's exit path.
            unsafe { libc::_exit(code) }
        }
    }
}

/// One call in flight: its connection (None once the daemon went away) and pidfd.
struct Running {
    conn: Option<OwnedFd>,
    pidfd: OwnedFd,
}

/// The spawner's life: join the session, then serve until the init exits.
fn serve(p: &Prepared, init: &OwnedFd, listener: &OwnedFd) -> Result<(), Error> {
    // SAFETY: integer-only prctls on this process: die with the runtime; no core dumps and
    // no ptrace by anyone but host root.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
    // Nothing of the runtime's stays open here but the listener, the init's pidfd and
    // stderr (the session's log, for our own errors); stdin and stdout become /dev/null.
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
    // The runtime's other descriptors (the agent leaf's dir, its log files, the agent's
    // stdin): not the spawner's business. All but what it serves with are closed.
    let keep = [listener.as_raw_fd(), init.as_raw_fd()];
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
    let flags = crate::container::clone_flags(&p.plan) as libc::c_int;
    // The cgroup namespace is joined by each call's child after its clone3 (see `exec`).
    // SAFETY: setns with a valid pidfd; it changes only this (single-threaded) process.
    if unsafe { libc::setns(init.as_raw_fd(), flags & !libc::CLONE_NEWCGROUP) } < 0 {
        return Err(Error::sys(
            "spawner: setns into the session",
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
        fds.extend(
            running
                .values()
                .map(|r| PollFd::new(r.pidfd.as_fd(), PollFlags::POLLIN)),
        );
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::sys("spawner: poll", e)),
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
            waiting.clear();
            finish(running);
            return Ok(());
        }
        let nw = waiting.len();
        let done_pidfds: Vec<RawFd> = running
            .values()
            .zip(&ready[2 + nw..])
            .filter(|(_, r)| **r)
            .map(|(r, _)| r.pidfd.as_raw_fd())
            .collect();
        let mut still = Vec::new();
        for (conn, r) in waiting.drain(..).zip(&ready[2..2 + nw]) {
            if !*r {
                still.push(conn);
                continue;
            }
            if let Some(run) = handle_request(p, init, conn) {
                running.insert(run.pidfd.as_raw_fd(), run);
            }
        }
        waiting = still;
        for fd in done_pidfds {
            if let Some(run) = running.remove(&fd) {
                let code = reap(&run.pidfd);
                if let Some(conn) = run.conn {
                    let reply = Reply::Exited { code };
                    if let Ok(json) = serde_json::to_vec(&reply) {
                        let _ = send_packet(conn.as_fd(), &json, &[]);
                    }
                }
            }
        }
        if ready[1] {
            match socket::accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                // SAFETY: accept4 returned a fresh descriptor owned by nobody else.
                Ok(fd) => waiting.push(unsafe { OwnedFd::from_raw_fd(fd) }),
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                Err(e) => return Err(Error::sys("spawner: accept", e)),
            }
        }
    }
}

/// The session is over: waits for every call still known (the kernel is killing them with
/// the pid namespace) and reports each exit to its connection.
fn finish(running: HashMap<RawFd, Running>) {
    for (_, run) in running {
        let code = reap(&run.pidfd);
        if let Some(conn) = run.conn
            && let Ok(json) = serde_json::to_vec(&Reply::Exited { code })
        {
            let _ = send_packet(conn.as_fd(), &json, &[]);
        }
    }
}

/// Waits for an exited call (its pidfd is readable); shell-style code.
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

/// Reads a request from `conn`, starts the call and answers; the call in flight, if any.
fn handle_request(p: &Prepared, init: &OwnedFd, conn: OwnedFd) -> Option<Running> {
    let answer = |reply: &Reply, fds: &[RawFd]| {
        if let Ok(json) = serde_json::to_vec(reply) {
            let _ = send_packet(conn.as_fd(), &json, fds);
        }
    };
    let started = recv_packet(conn.as_fd(), MsgFlags::MSG_DONTWAIT).and_then(|got| {
        let (data, fds) = got.ok_or_else(|| Error::Plan("no request".into()))?;
        let req: SpawnRequest =
            serde_json::from_slice(&data).map_err(|e| Error::Plan(format!("bad request: {e}")))?;
        let fds: [OwnedFd; REQUEST_FDS] = fds.try_into().map_err(|v: Vec<OwnedFd>| {
            Error::Plan(format!(
                "a request carries {REQUEST_FDS} descriptors (cgroup, stdin, stdout, stderr), \
                 this one {}",
                v.len()
            ))
        })?;
        child::spawn(p, init, &req, fds)
    });
    match started {
        Ok((pid, pidfd)) => {
            answer(&Reply::Started { pid }, &[pidfd.as_raw_fd()]);
            Some(Running {
                conn: Some(conn),
                pidfd,
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

    fn lim(soft: u64, hard: u64) -> Rlimit {
        Rlimit { soft, hard }
    }

    #[test]
    fn a_call_only_lowers_rlimits_and_unknown_names_are_refused() {
        let session = BTreeMap::from([("nofile".to_string(), lim(1024, 4096))]);
        let call = BTreeMap::from([
            ("nofile".to_string(), lim(8192, 65536)),
            ("core".to_string(), lim(0, 0)),
        ]);
        let m = merge_rlimits(&session, &call).unwrap();
        assert_eq!(m["nofile"], lim(1024, 4096), "raised above the session's");
        assert_eq!(m["core"], lim(0, 0));
        let low = BTreeMap::from([("nofile".to_string(), lim(64, 128))]);
        assert_eq!(
            merge_rlimits(&session, &low).unwrap()["nofile"],
            lim(64, 128)
        );
        let bad = BTreeMap::from([("bogus".to_string(), lim(1, 1))]);
        assert!(merge_rlimits(&session, &bad).is_err());
    }

    #[test]
    fn exec_strings_search_the_session_path_and_merge_the_env() {
        let mut plan = SessionPlan::new(Path::new("/r"), Path::new("/s"), 1 << 30, 1000, 100_000);
        plan.env.insert("PATH".into(), "/a:/b".into());
        let req = SpawnRequest {
            argv: vec!["tool".into(), "x".into()],
            env: BTreeMap::from([("K".to_string(), "v".to_string())]),
            cwd: Some("/tmp".into()),
            ..SpawnRequest::default()
        };
        let (cands, args, envs, cwd) = exec_strings(&plan, &req).unwrap();
        assert_eq!(cands, [c"/a/tool".to_owned(), c"/b/tool".to_owned()]);
        assert_eq!(args.len(), 2);
        assert!(envs.contains(&c"K=v".to_owned()));
        assert!(envs.contains(&c"PATH=/a:/b".to_owned()));
        assert_eq!(cwd, c"/tmp".to_owned());
        let rel = SpawnRequest {
            argv: vec!["/bin/true".into()],
            cwd: Some("rel".into()),
            ..SpawnRequest::default()
        };
        assert!(exec_strings(&plan, &rel).is_err());
        assert!(exec_strings(&plan, &SpawnRequest::default()).is_err());
    }

    #[test]
    fn replies_and_requests_have_a_stable_json_form() {
        let r = serde_json::to_string(&Reply::Started { pid: 7 }).unwrap();
        assert_eq!(r, r#"{"started":{"pid":7}}"#);
        let r = serde_json::to_string(&Reply::Exited { code: 137 }).unwrap();
        assert_eq!(r, r#"{"exited":{"code":137}}"#);
        let req: SpawnRequest = serde_json::from_str(r#"{"argv":["true"]}"#).unwrap();
        assert_eq!(req.argv, ["true"]);
        assert!(req.env.is_empty() && req.cwd.is_none() && req.landlock.is_none());
    }
}
