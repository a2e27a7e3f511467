//! The daemon's side of the spawner channel (blocking; the daemon runs [`start`] on a
//! blocking thread and may wait for [`Reply::Exited`] on the connection however it likes,
//! e.g. readiness on [`Started::conn`] then [`recv_exit`] with `MSG_DONTWAIT`).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType};

use super::{
    REQUEST_FDS, Reply, SOCKET, SpawnRequest, addr_in, open_dir, recv_packet, send_packet,
};
use crate::Error;

/// A call the spawner started: the connection its exit will come on, its pid (in the
/// daemon's pid namespace) and its pidfd.
#[derive(Debug)]
pub struct Started {
    pub conn: OwnedFd,
    pub pid: i32,
    pub pidfd: OwnedFd,
}

/// Whether the session in `state` has a spawner socket (sessions started before the
/// spawner existed, or by an older runtime, do not).
pub fn available(state: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(state.join(SOCKET)).is_ok_and(|m| m.file_type().is_socket())
}

/// Asks the spawner of the session in `state` to start `req` with `fds` = [the call's
/// cgroup directory, stdin, stdout, stderr]; returns once the call's exec succeeded (or
/// with the spawner's error: then nothing runs).
pub fn start(
    state: &Path,
    req: &SpawnRequest,
    fds: [BorrowedFd<'_>; REQUEST_FDS],
) -> Result<Started, Error> {
    let dir = open_dir(state)?;
    let conn = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| Error::sys("spawner: socket", e))?;
    socket::connect(conn.as_raw_fd(), &addr_in(dir.as_fd())?)
        .map_err(|e| Error::sys(format!("connect to {}", state.join(SOCKET).display()), e))?;
    drop(dir);
    let json = serde_json::to_vec(req).map_err(|e| Error::Plan(e.to_string()))?;
    let raw = fds.map(|f| f.as_raw_fd());
    send_packet(conn.as_fd(), &json, &raw)?;
    let (data, mut got) = recv_packet(conn.as_fd(), MsgFlags::empty())?
        .ok_or_else(|| Error::Plan("the spawner closed the connection without an answer".into()))?;
    match parse(&data)? {
        Reply::Started { pid } => {
            let pidfd = got
                .pop()
                .ok_or_else(|| Error::Plan("the spawner sent no pidfd".into()))?;
            Ok(Started { conn, pid, pidfd })
        }
        Reply::Error { error } => Err(Error::Plan(format!("spawner: {error}"))),
        Reply::Exited { .. } => Err(Error::Plan("spawner: exit before start".into())),
    }
}

fn parse(data: &[u8]) -> Result<Reply, Error> {
    serde_json::from_slice(data).map_err(|e| Error::Plan(format!("spawner: bad answer: {e}")))
}

/// Reads the call's exit code from its connection. `flags` = `MSG_DONTWAIT` after a
/// readiness wait (then `Ok(None)` means not yet), empty to block.
pub fn recv_exit(conn: BorrowedFd<'_>, flags: MsgFlags) -> Result<Option<i32>, Error> {
    match recv_packet(conn, flags) {
        Ok(Some((data, _))) => match parse(&data)? {
            Reply::Exited { code } => Ok(Some(code)),
            other => Err(Error::Plan(format!("spawner: unexpected {other:?}"))),
        },
        Ok(None) => Err(Error::Plan(
            "the spawner closed the call's connection before its exit (the session ended)".into(),
        )),
        Err(Error::Sys { source, .. }) if source.kind() == std::io::ErrorKind::WouldBlock => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Opens `/dev/null` for a call's stdin.
pub fn dev_null() -> Result<OwnedFd, Error> {
    let f = std::fs::File::open("/dev/null").map_err(|e| Error::sys("open /dev/null", e))?;
    Ok(OwnedFd::from(f))
}

/// A pipe (read end, write end), both CLOEXEC: the write end goes to the call.
pub fn pipe() -> Result<(OwnedFd, OwnedFd), Error> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a two-int array the kernel fills.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(Error::sys("pipe2", std::io::Error::last_os_error()));
    }
    // SAFETY: pipe2 just returned these two fresh descriptors; each is owned once.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Blocks until the call of `started` exits; its shell-style exit code.
pub fn wait_exit(started: &Started) -> Result<i32, Error> {
    recv_exit(started.conn.as_fd(), MsgFlags::empty())?
        .ok_or_else(|| Error::Plan("spawner: no exit status".into()))
}

/// The call's exit code if it has come (`Ok(None)`: not yet), from [`Started::conn`] (or a
/// duplicate of it); for a caller that waits for its readability itself (an async runtime).
pub fn try_recv_exit(conn: BorrowedFd<'_>) -> Result<Option<i32>, Error> {
    recv_exit(conn, MsgFlags::MSG_DONTWAIT)
}
