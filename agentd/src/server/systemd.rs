//! systemd integration without a library: socket activation (`LISTEN_PID`/`LISTEN_FDS`, the
//! listening socket as fd 3) and readiness notification (`NOTIFY_SOCKET`: `READY=1`,
//! `STATUS=…`, `STOPPING=1` datagrams). Both protocols are a few lines; see sd_listen_fds(3)
//! and sd_notify(3). Units: `agentd/systemd/agentd.{service,socket}`.

use std::os::fd::FromRawFd;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener};

/// The first fd systemd passes.
const SD_LISTEN_FDS_START: i32 = 3;

/// Environment variables of both protocols, removed from the daemon's children.
pub const ENV: &[&str] = &[
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
];

/// The listening socket systemd passed us, if it did (and it is meant for this pid).
pub fn listener() -> Option<UnixListener> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.parse().ok()?;
    let n: i32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    if pid != std::process::id() || n < 1 {
        return None;
    }
    let fd = SD_LISTEN_FDS_START;
    // Our children (runtimes, calls) must not inherit the API socket.
    // SAFETY: fcntl on an fd number systemd says is ours; F_SETFD only sets FD_CLOEXEC.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return None;
    }
    // SAFETY: per the protocol, fd 3 is an open listening socket handed to this process,
    // owned by nobody else here; wrapping it once transfers that ownership.
    Some(unsafe { UnixListener::from_raw_fd(fd) })
}

/// Sends `state` to the service manager when one asked for notifications; errors are
/// reported to stderr and otherwise ignored (notification is advisory).
pub fn notify(state: &str) {
    let Ok(path) = std::env::var("NOTIFY_SOCKET") else {
        return;
    };
    let addr = match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())
        }
        None => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|a| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &a));
    if let Err(e) = sent {
        super::log::warn(&format!("notifying systemd at {path}: {e}"));
    }
}

/// Strips the protocols' variables from a child's environment (they name our fds/socket).
pub trait RemoveSystemdEnv {
    fn envs_remove_systemd(&mut self) -> &mut Self;
}

impl RemoveSystemdEnv for tokio::process::Command {
    fn envs_remove_systemd(&mut self) -> &mut Self {
        for k in ENV {
            self.env_remove(k);
        }
        self
    }
}
