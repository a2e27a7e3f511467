//! Exec capture: every program a process of the agent's leaf execs becomes a tool call
//! (docs/capture.md), whatever the agent uses to spawn it (a shell, `subprocess`,
//! `posix_spawn`, `vfork`, `fexecve` of a memfd).
//!
//! Mechanism: a seccomp filter with `SECCOMP_RET_USER_NOTIF` on `execve` and `execveat`,
//! loaded by the container init on itself before it tells the runtime the container is
//! built (so the agent and everything it forks inherit it; a seccomp filter can never be
//! removed), its listener passed to the runtime with READY and from there, by fork, to the
//! session's call spawner, which is the supervisor ([`Supervisor`]). An exec from the agent
//! leaf blocks in the kernel at syscall entry, before anything of the new program exists;
//! the spawner reads its argv and `AGENTD_INTENT` from the task's memory and hands the
//! event (with a pidfd) to the daemon over `<state>/capture.sock`; the daemon creates
//! `calls/<n>`, moves the task there, answers `placed`; only then does the spawner let the
//! syscall continue, in the new cgroup. No user code of the new program runs before that,
//! and nothing the agent does (SIGCONT, SIGKILL, another thread rewriting argv) lets the
//! exec proceed in the leaf: the kernel holds it until the supervisor answers, and a dead
//! supervisor (its listener closed) makes every exec fail with ENOSYS (fail closed).
//!
//! Exempt, answered at once without the daemon: the agent's runtime (the task group of
//! the session's first exec, i.e. the agent the init started, and its later execs in
//! place), and every process not in the agent leaf (already inside a call: descendants of
//! a call stay in it).
//!
//! What is read from the task's memory (argv, the intent) is advisory: another thread may
//! change it after it was read. It picks the call's intent rule, which an agent could get
//! anyway by running that program; whether the exec becomes a call never depends on it.

use std::collections::BTreeMap;
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use libseccomp::{ScmpAction, ScmpFilterContext, ScmpSyscall};
use nix::sys::socket::{self, MsgFlags, SockFlag};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::spawner::{recv_packet, send_packet};

/// The capture socket's file name in the session's state dir (the daemon's side).
pub const SOCKET: &str = "capture.sock";

/// Most argv words read from a task (the rest is dropped from the record, not from the
/// exec).
const MAX_WORDS: usize = 4096;
/// Most bytes of argv read from a task (the record fits in one packet).
const MAX_ARGV_BYTES: usize = 64 * 1024;
/// Most environment entries scanned for `AGENTD_INTENT`.
const MAX_ENV: usize = 4096;
/// The variable a command declares its intent in (as for the shim).
const INTENT_VAR: &[u8] = b"AGENTD_INTENT=";

/// What the spawner sends the daemon on the capture connection, with the task's pidfd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    /// A process of the agent leaf is blocked in an exec: place it in a new call.
    Exec {
        /// The notification's id (the answer names it).
        id: u64,
        /// The task group's pid in the host's pid namespace.
        pid: i32,
        /// The program's argv as the task passed it (advisory, see the module header).
        argv: Vec<String>,
        /// Its `AGENTD_INTENT`, if its environment has one.
        #[serde(default)]
        intent: Option<String>,
    },
}

/// What the daemon answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Answer {
    /// The task is in its call's cgroup: let the exec go on.
    Placed {
        /// The event's id.
        id: u64,
        /// The call's number.
        n: u64,
    },
    /// No call could be made: the exec fails with EPERM (fail closed).
    Refused {
        /// The event's id.
        id: u64,
        /// Why (the daemon logs it).
        error: String,
    },
}

fn sys(what: impl Into<String>, e: impl Into<std::io::Error>) -> Error {
    Error::Sys {
        what: what.into(),
        source: e.into(),
    }
}

/// The capture filter's program: notify on execve and execveat, allow the rest (a
/// syscall of another architecture is killed, libseccomp's default for a foreign arch).
pub fn program() -> Result<Vec<u8>, Error> {
    let se = |what: &str| {
        let what = what.to_string();
        move |source| Error::Seccomp { what, source }
    };
    let mut ctx = ScmpFilterContext::new(ScmpAction::Allow).map_err(se("capture filter"))?;
    for name in ["execve", "execveat"] {
        let nr = ScmpSyscall::from_name(name).map_err(se(name))?;
        ctx.add_rule(ScmpAction::Notify, nr).map_err(se(name))?;
    }
    crate::seccomp::compile(&ctx)
}

/// Loads the capture filter on the calling thread (the container init, single-threaded)
/// and returns its listener (close-on-exec). Processes forked afterwards inherit it.
///
/// Not `WAIT_KILLABLE_RECV`: the daemon freezes the session for the checkpoint it takes
/// before every call (docs/undo.md), and a task in a killable wait never reaches the
/// freezer (the freeze timed out in the VM). So a held exec is interrupted by the freeze
/// (or any signal), enters the freezer (or runs a handler of the program it still is),
/// and restarts the syscall, which notifies again: [`Supervisor`] takes that for the same
/// exec (by task group), never as a second call. No code of the new program runs before
/// the answer either way.
pub fn install() -> Result<OwnedFd, Error> {
    let bpf = program()?;
    let mut prog: Vec<libc::sock_filter> = bpf
        .chunks_exact(8)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // Loading a filter needs no_new_privs (or CAP_SYS_ADMIN, which the init has in its
    // namespace; set it anyway: the init never gains privileges by exec).
    // SAFETY: integer-only prctl.
    unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    let flags = libc::SECCOMP_FILTER_FLAG_NEW_LISTENER;
    // SAFETY: `fprog` points at live sock_filter structs for the duration of the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &fprog as *const libc::sock_fprog,
        )
    };
    if fd < 0 {
        return Err(sys(
            "seccomp(SET_MODE_FILTER, NEW_LISTENER) for exec capture",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: the kernel installed this listener (close-on-exec) in this process just now;
    // it is owned once, here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A notification as the kernel gives it.
fn recv_notif(fd: BorrowedFd<'_>) -> std::io::Result<libc::seccomp_notif> {
    // SAFETY: seccomp_notif is plain data; the kernel wants it zeroed.
    let mut n: libc::seccomp_notif = unsafe { std::mem::zeroed() };
    // SAFETY: NOTIF_RECV fills `n` (live, of the right size) from a listener fd.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_RECV, &mut n) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n)
}

/// Answers a notification: continue the syscall (`errno` 0) or fail it with `errno`.
fn respond(fd: BorrowedFd<'_>, id: u64, errno: i32) {
    let resp = libc::seccomp_notif_resp {
        id,
        val: 0,
        error: -errno,
        flags: if errno == 0 {
            libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32
        } else {
            0
        },
    };
    // SAFETY: NOTIF_SEND reads a live response of the right size. ENOENT (the task died
    // meanwhile) is nothing to act on.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SEND, &resp) };
}

/// Whether notification `id` is still pending (its task has not died or been answered):
/// checked after reading the task's memory, so a recycled pid is never read as ours.
fn id_valid(fd: BorrowedFd<'_>, id: u64) -> bool {
    // SAFETY: NOTIF_ID_VALID reads a u64.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_ID_VALID, &id) == 0 }
}

/// Reads up to `buf.len()` bytes at `addr` of process `pid`; how many it could.
fn peek(pid: i32, addr: u64, buf: &mut [u8]) -> usize {
    if addr == 0 || buf.is_empty() {
        return 0;
    }
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: one local iovec over `buf`, one remote range; the kernel checks the remote.
    let r = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    if r < 0 { 0 } else { r as usize }
}

/// A NUL-terminated string at `addr` in `pid`, at most `max` bytes (`None`: unreadable).
fn peek_cstr(pid: i32, addr: u64, max: usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = addr;
    while out.len() < max {
        // Never across a page: a partial read at an unmapped page is a short count, but a
        // read that starts in one fails whole.
        let room = (4096 - (at % 4096)) as usize;
        let mut buf = vec![0u8; room.min(max - out.len()).min(512)];
        let got = peek(pid, at, &mut buf);
        if got == 0 {
            return None;
        }
        if let Some(end) = buf[..got].iter().position(|b| *b == 0) {
            out.extend_from_slice(&buf[..end]);
            return Some(out);
        }
        out.extend_from_slice(&buf[..got]);
        at += got as u64;
    }
    Some(out)
}

/// The pointers of a NULL-terminated array at `addr` in `pid` (at most `max`).
fn peek_ptrs(pid: i32, addr: u64, max: usize) -> Vec<u64> {
    let mut out = Vec::new();
    let mut at = addr;
    while out.len() < max {
        let mut buf = [0u8; 512];
        let got = peek(pid, at, &mut buf) / 8 * 8;
        if got == 0 {
            break;
        }
        for c in buf[..got].chunks_exact(8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            let p = u64::from_ne_bytes(w);
            if p == 0 || out.len() >= max {
                return out;
            }
            out.push(p);
        }
        at += got as u64;
    }
    out
}

/// argv and `AGENTD_INTENT` of an exec blocked at syscall entry (`execve(path, argv, envp)`
/// or `execveat(dirfd, path, argv, envp, flags)`).
fn read_exec(pid: i32, nr: i64, args: &[u64; 6]) -> (Vec<String>, Option<String>) {
    let (argv_at, envp_at) = if nr == libc::SYS_execveat {
        (args[2], args[3])
    } else {
        (args[1], args[2])
    };
    let mut argv = Vec::new();
    let mut bytes = 0;
    for p in peek_ptrs(pid, argv_at, MAX_WORDS) {
        let Some(w) = peek_cstr(pid, p, MAX_ARGV_BYTES - bytes) else {
            break;
        };
        bytes += w.len() + 1;
        argv.push(String::from_utf8_lossy(&w).into_owned());
        if bytes >= MAX_ARGV_BYTES {
            break;
        }
    }
    let mut intent = None;
    for p in peek_ptrs(pid, envp_at, MAX_ENV) {
        let mut head = [0u8; INTENT_VAR.len()];
        if peek(pid, p, &mut head) == head.len() && head == INTENT_VAR {
            intent = peek_cstr(pid, p + head.len() as u64, 4096)
                .map(|v| String::from_utf8_lossy(&v).into_owned());
        }
    }
    (argv, intent)
}

/// A small file of procfs, read through the host's /proc (opened before the spawner
/// joined the session's mount namespace, whose /proc counts the session's pids).
fn read_proc(procfs: BorrowedFd<'_>, pid: i32, name: &str) -> std::io::Result<String> {
    let f = rustix::fs::openat(
        procfs,
        format!("{pid}/{name}"),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    std::io::read_to_string(std::fs::File::from(f))
}

/// The task group of thread `tid`.
fn tgid_of(procfs: BorrowedFd<'_>, tid: i32) -> std::io::Result<i32> {
    let status = read_proc(procfs, tid, "status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no Tgid in /proc/<pid>/status"))
}

/// The cgroup v2 path of `pid` as the host's /proc spells it (`/agentd.slice/…/agent`).
pub fn cgroup_of(procfs: BorrowedFd<'_>, pid: i32) -> std::io::Result<String> {
    let s = read_proc(procfs, pid, "cgroup")?;
    s.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
        .ok_or_else(|| std::io::Error::other("no cgroup v2 line in /proc/<pid>/cgroup"))
}

/// Opens the host's /proc (before the spawner leaves the host's mount namespace).
pub fn open_procfs() -> Result<OwnedFd, Error> {
    rustix::fs::open(
        "/proc",
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| sys("open /proc", e))
}

/// Binds `<state>/capture.sock` (host root's, 0600), where the daemon connects.
pub fn listen(state: &Path) -> Result<OwnedFd, Error> {
    crate::spawner::bind_seqpacket(state, SOCKET)
}

/// An exec held until the daemon has placed it (keyed by its first notification's id,
/// which the event and the answer name).
#[derive(Debug)]
struct Held {
    /// The event as sent.
    packet: Vec<u8>,
    pidfd: OwnedFd,
    pid: i32,
    /// The notification to answer: the first one, or the exec's restart after a fatal
    /// signal's race (then the same task asks again; it gets no second call).
    current: u64,
}

/// The capture supervisor inside the spawner (single-threaded, driven by its poll loop).
#[derive(Debug)]
pub struct Supervisor {
    notify: OwnedFd,
    procfs: OwnedFd,
    listener: OwnedFd,
    /// The daemon's connection (one at a time: a new one replaces the old).
    conn: Option<OwnedFd>,
    /// The agent leaf's cgroup, as /proc/<pid>/cgroup spells it (the init's).
    leaf: String,
    /// The agent runtime's task group (the session's first exec), once seen.
    runtime: Option<i32>,
    held: BTreeMap<u64, Held>,
}

impl Supervisor {
    /// A supervisor for the session whose init is `init_pid` (host pid): its cgroup is
    /// the agent leaf.
    pub fn new(
        notify: OwnedFd,
        procfs: OwnedFd,
        listener: OwnedFd,
        init_pid: i32,
    ) -> Result<Supervisor, Error> {
        let leaf = cgroup_of(procfs.as_fd(), init_pid)
            .map_err(|e| sys(format!("the cgroup of the init {init_pid}"), e))?;
        Ok(Supervisor {
            notify,
            procfs,
            listener,
            conn: None,
            leaf,
            runtime: None,
            held: BTreeMap::new(),
        })
    }

    /// The descriptors the poll loop watches, in the order [`Supervisor::ready`] takes.
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut v = vec![self.notify.as_fd(), self.listener.as_fd()];
        if let Some(c) = &self.conn {
            v.push(c.as_fd());
        }
        v
    }

    /// Acts on the descriptors of [`Supervisor::fds`] that poll found ready.
    pub fn ready(&mut self, ready: &[bool]) {
        if ready.get(2).copied().unwrap_or(false) {
            self.on_answer();
        }
        if ready.first().copied().unwrap_or(false) {
            self.on_notification();
        }
        if ready.get(1).copied().unwrap_or(false) {
            self.on_connect();
        }
    }

    fn on_notification(&mut self) {
        let Ok(n) = recv_notif(self.notify.as_fd()) else {
            // ENOENT: the task died between poll and here.
            return;
        };
        let nfd = self.notify.as_fd();
        let tid = n.pid as i32;
        let Ok(tgid) = tgid_of(self.procfs.as_fd(), tid) else {
            return respond(nfd, n.id, libc::EPERM);
        };
        let runtime = *self.runtime.get_or_insert(tgid);
        if tgid == runtime {
            return respond(nfd, n.id, 0);
        }
        match cgroup_of(self.procfs.as_fd(), tid) {
            Ok(cg) if cg == self.leaf => {}
            Ok(_) => return respond(nfd, n.id, 0),
            Err(_) => return respond(nfd, n.id, libc::EPERM),
        }
        // The same task again (its exec restarted before we received it): still one call.
        if let Some(h) = self.held.values_mut().find(|h| h.pid == tgid) {
            h.current = n.id;
            return;
        }
        let (argv, intent) = read_exec(tid, i64::from(n.data.nr), &n.data.args);
        if !id_valid(nfd, n.id) {
            return;
        }
        let pidfd = match rustix::process::pidfd_open(
            rustix::process::Pid::from_raw(tgid).unwrap_or(rustix::process::Pid::INIT),
            rustix::process::PidfdFlags::empty(),
        ) {
            Ok(fd) => fd,
            Err(_) => return respond(nfd, n.id, libc::EPERM),
        };
        let ev = Event::Exec {
            id: n.id,
            pid: tgid,
            argv,
            intent,
        };
        let Ok(packet) = serde_json::to_vec(&ev) else {
            return respond(nfd, n.id, libc::EPERM);
        };
        let held = Held {
            packet,
            pidfd,
            pid: tgid,
            current: n.id,
        };
        self.send(&held);
        self.held.insert(n.id, held);
    }

    /// Sends a held exec to the daemon, if one is connected (else it waits for one).
    fn send(&mut self, h: &Held) {
        if let Some(c) = &self.conn
            && send_packet(c.as_fd(), &h.packet, &[h.pidfd.as_raw_fd()]).is_err()
        {
            self.conn = None;
        }
    }

    fn on_connect(&mut self) {
        let Ok(fd) = socket::accept4(self.listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) else {
            return;
        };
        // SAFETY: accept4 returned a fresh descriptor owned by nobody else.
        self.conn = Some(unsafe { OwnedFd::from_raw_fd(fd) });
        // A new daemon gets every exec still held (a previous daemon may have died between
        // an event and its answer; it answers `placed` for a task already in a call).
        self.held
            .retain(|_, h| id_valid(self.notify.as_fd(), h.current));
        let ids: Vec<u64> = self.held.keys().copied().collect();
        for id in ids {
            if let Some(h) = self.held.remove(&id) {
                self.send(&h);
                self.held.insert(id, h);
            }
        }
    }

    fn on_answer(&mut self) {
        let Some(c) = &self.conn else { return };
        let answer = match recv_packet(c.as_fd(), MsgFlags::MSG_DONTWAIT) {
            Ok(Some((data, _))) => serde_json::from_slice::<Answer>(&data).ok(),
            Ok(None) => {
                self.conn = None;
                return;
            }
            Err(e) if e.would_block() => return,
            Err(_) => {
                self.conn = None;
                return;
            }
        };
        let nfd = self.notify.as_fd();
        match answer {
            Some(Answer::Placed { id, .. }) => {
                if let Some(h) = self.held.remove(&id) {
                    // Trust, but check: an exec still in the leaf does not run.
                    let moved = cgroup_of(self.procfs.as_fd(), h.pid)
                        .map(|cg| cg != self.leaf)
                        .unwrap_or(false);
                    respond(nfd, h.current, if moved { 0 } else { libc::EPERM });
                }
            }
            Some(Answer::Refused { id, .. }) => {
                if let Some(h) = self.held.remove(&id) {
                    respond(nfd, h.current, libc::EPERM);
                }
            }
            None => {}
        }
    }
}

/// The daemon's side: connects to `<state>/capture.sock` (blocking, close-on-exec).
pub fn connect(state: &Path) -> Result<OwnedFd, Error> {
    crate::spawner::connect_seqpacket(state, SOCKET)
}

/// Reads the next event (and its pidfd) from a capture connection; `Ok(None)` at EOF.
pub fn read_event(conn: BorrowedFd<'_>) -> Result<Option<(Event, OwnedFd)>, Error> {
    loop {
        let Some((data, mut fds)) = recv_packet(conn, MsgFlags::empty()).map_err(|e| match e {
            crate::spawner::Error::Sys { what, source } => Error::Sys { what, source },
            other => sys("capture: receive", std::io::Error::other(other.to_string())),
        })?
        else {
            return Ok(None);
        };
        let ev: Event =
            serde_json::from_slice(&data).map_err(|e| Error::json("capture event", e))?;
        if let Some(fd) = fds.pop() {
            return Ok(Some((ev, fd)));
        }
        // An event without its pidfd cannot be placed safely: skip it (the spawner's
        // sender always attaches one).
    }
}

/// Sends an answer on a capture connection.
pub fn answer(conn: BorrowedFd<'_>, a: &Answer) -> Result<(), Error> {
    let json = serde_json::to_vec(a).map_err(|e| Error::json("capture answer", e))?;
    send_packet(conn, &json, &[])
        .map_err(|e| sys("capture: send", std::io::Error::other(e.to_string())))
}

/// Reads a `recvmsg` with one optional descriptor from a stream socket: the init's READY
/// byte and, with capture on, the listener.
pub fn recv_byte_and_fd(sock: BorrowedFd<'_>) -> std::io::Result<Option<(u8, Option<OwnedFd>)>> {
    let mut b = [0u8; 1];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    loop {
        let mut iov = [IoSliceMut::new(&mut b)];
        let msg = match socket::recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut fd = None;
        for c in msg.cmsgs().map_err(std::io::Error::from)? {
            if let socket::ControlMessageOwned::ScmRights(raw) = c {
                for r in raw {
                    // SAFETY: SCM_RIGHTS installed it in this process just now.
                    let owned = unsafe { OwnedFd::from_raw_fd(r) };
                    if fd.is_none() {
                        fd = Some(owned);
                    }
                }
            }
        }
        if msg.bytes == 0 {
            return Ok(None);
        }
        return Ok(Some((b[0], fd)));
    }
}

/// Writes one byte with a descriptor attached on a stream socket (the init's READY).
pub fn send_byte_and_fd(sock: BorrowedFd<'_>, b: u8, fd: BorrowedFd<'_>) -> std::io::Result<()> {
    let iov = [std::io::IoSlice::new(std::slice::from_ref(&b))];
    let fds = [fd.as_raw_fd()];
    let cmsg = [socket::ControlMessage::ScmRights(&fds)];
    socket::sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
    use super::*;

    #[test]
    fn events_and_answers_have_a_stable_json_form() {
        let e = Event::Exec {
            id: 7,
            pid: 42,
            argv: vec!["ls".into(), "-l".into()],
            intent: Some("memory=64M".into()),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"exec":{"id":7,"pid":42,"argv":["ls","-l"],"intent":"memory=64M"}}"#
        );
        let a: Answer = serde_json::from_str(r#"{"placed":{"id":7,"n":3}}"#).unwrap();
        assert_eq!(a, Answer::Placed { id: 7, n: 3 });
    }

    #[test]
    fn argv_and_intent_are_read_from_a_live_process_memory() {
        // Our own memory, through process_vm_readv on ourselves: the same reads the
        // supervisor makes on a task blocked in execve.
        let words = [
            c"/bin/echo".as_ptr(),
            c"hello world".as_ptr(),
            std::ptr::null(),
        ];
        let env = [
            c"PATH=/bin".as_ptr(),
            c"AGENTD_INTENT=memory=64M".as_ptr(),
            std::ptr::null(),
        ];
        let args = [0, words.as_ptr() as u64, env.as_ptr() as u64, 0, 0, 0];
        let (argv, intent) = read_exec(std::process::id() as i32, libc::SYS_execve, &args);
        assert_eq!(argv, ["/bin/echo", "hello world"]);
        assert_eq!(intent.as_deref(), Some("memory=64M"));
        let at = [0, 0, words.as_ptr() as u64, 0, 0, 0];
        let (argv, intent) = read_exec(std::process::id() as i32, libc::SYS_execveat, &at);
        assert_eq!(argv.len(), 2);
        assert_eq!(intent, None);
    }
}
