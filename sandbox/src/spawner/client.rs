//! The daemon's side of the spawner channel (blocking; the daemon runs [`start`] on a
//! blocking thread and may wait for [`Reply::Exited`] on the connection however it likes,
//! e.g. readiness on [`Started::conn`] then [`try_recv_exit`]).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType};

use super::{
    Error, INLINE_REQUEST, REQUEST_FDS, REQUEST_IN_MEMFD, Reply, SOCKET, addr_in, open_dir,
    recv_packet, send_packet,
};
use crate::launch::ExecRequest;

/// A call the spawner started: the connection its exit will come on, its pid (in the
/// daemon's pid namespace) and its pidfd.
#[derive(Debug)]
pub struct Started {
    /// The call's connection (its exit comes on it).
    pub conn: OwnedFd,
    /// The call's pid.
    pub pid: i32,
    /// A pidfd for the call.
    pub pidfd: OwnedFd,
    /// The session's state dir (for errors).
    state: std::path::PathBuf,
}

/// Whether the session in `state` has a spawner socket (sessions started by an older
/// runtime do not).
pub fn available(state: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(state.join(SOCKET)).is_ok_and(|m| m.file_type().is_socket())
}

/// Asks the spawner of the session in `req.state` to start `req` with `fds` = [the call's
/// cgroup directory (the one `req.cgroup` names), stdin, stdout, stderr]; returns once the
/// call's exec succeeded (or with the spawner's error: then nothing runs).
pub fn start(req: &ExecRequest, fds: [BorrowedFd<'_>; REQUEST_FDS]) -> Result<Started, Error> {
    let state = &req.state;
    let dir = open_dir(state)?;
    let conn = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| Error::sys("socket", e))?;
    socket::connect(conn.as_raw_fd(), &addr_in(dir.as_fd())?)
        .map_err(|e| Error::sys(format!("connect to {}", state.join(SOCKET).display()), e))?;
    drop(dir);
    let json = serde_json::to_vec(req).map_err(|source| Error::Json {
        what: "request",
        source,
    })?;
    let raw = fds.map(|f| f.as_raw_fd());
    if json.len() > INLINE_REQUEST {
        let memfd = crate::launch::request_memfd(req)?;
        let mut with = raw.to_vec();
        with.push(memfd.as_raw_fd());
        send_packet(conn.as_fd(), REQUEST_IN_MEMFD, &with)?;
    } else {
        send_packet(conn.as_fd(), &json, &raw)?;
    }
    let protocol = |what| Error::Protocol {
        state: state.clone(),
        what,
    };
    let (data, mut got) = recv_packet(conn.as_fd(), MsgFlags::empty())?
        .ok_or_else(|| protocol("it closed the connection without an answer"))?;
    match parse(&data)? {
        Reply::Started { pid } => {
            let pidfd = got.pop().ok_or_else(|| protocol("it sent no pidfd"))?;
            Ok(Started {
                conn,
                pid,
                pidfd,
                state: state.clone(),
            })
        }
        Reply::Error { error } => Err(Error::Refused {
            state: state.clone(),
            reason: error,
        }),
        Reply::Exited { .. } => Err(protocol("an exit before the start")),
    }
}

fn parse(data: &[u8]) -> Result<Reply, Error> {
    serde_json::from_slice(data).map_err(|source| Error::Json {
        what: "reply",
        source,
    })
}

/// Reads the call's exit code from its connection. `flags` = `MSG_DONTWAIT` after a
/// readiness wait (then `Ok(None)` means not yet), empty to block.
fn recv_exit(state: &Path, conn: BorrowedFd<'_>, flags: MsgFlags) -> Result<Option<i32>, Error> {
    match recv_packet(conn, flags) {
        Ok(Some((data, _))) => match parse(&data)? {
            Reply::Exited { code } => Ok(Some(code)),
            _ => Err(Error::Protocol {
                state: state.to_path_buf(),
                what: "a second start on one call",
            }),
        },
        Ok(None) => Err(Error::Protocol {
            state: state.to_path_buf(),
            what: "it closed the call's connection before its exit (the session ended)",
        }),
        Err(e) if e.would_block() => Ok(None),
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
    recv_exit(&started.state, started.conn.as_fd(), MsgFlags::empty())?.ok_or_else(|| {
        Error::Protocol {
            state: started.state.clone(),
            what: "no exit status",
        }
    })
}

/// The call's exit code if it has come (`Ok(None)`: not yet), for a caller that waits for
/// the readability of [`Started::conn`] itself (an async runtime).
pub fn try_recv_exit(started: &Started) -> Result<Option<i32>, Error> {
    recv_exit(&started.state, started.conn.as_fd(), MsgFlags::MSG_DONTWAIT)
}
