//! Relaying a pty for `agentd-sandbox exec --pty`: this process's stdin goes to the pty's
//! controlling side, the command's output comes back to stdout, until the command exits
//! (its pidfd becomes readable) and the pty has no more output.

use std::os::fd::{AsRawFd, OwnedFd};

use crate::Error;

fn copy(from: libc::c_int, to: libc::c_int, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: read into a live buffer of the given length.
    let n = unsafe { libc::read(from, buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return if n == 0 {
            Ok(0)
        } else {
            Err(std::io::Error::last_os_error())
        };
    }
    let mut off = 0usize;
    while off < n as usize {
        // SAFETY: write from the live buffer's filled part.
        let w = unsafe { libc::write(to, buf[off..].as_ptr().cast(), n as usize - off) };
        if w < 0 {
            return Err(std::io::Error::last_os_error());
        }
        off += w as usize;
    }
    Ok(n as usize)
}

/// Relays until the command behind `pidfd` has exited and its output is drained.
pub fn relay(master: &OwnedFd, pidfd: &OwnedFd) -> Result<(), Error> {
    let m = master.as_raw_fd();
    let mut buf = vec![0u8; 16 * 1024];
    let mut stdin_open = true;
    let mut exited = false;
    loop {
        let mut fds = [
            libc::pollfd {
                fd: m,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if stdin_open { 0 } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // Once the command is gone, only drain what the pty still holds (no waiting).
        let timeout = if exited { 0 } else { -1 };
        // SAFETY: poll on a live array of three pollfds.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 3, timeout) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::sys("poll", e));
        }
        if fds[0].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            // EIO: the terminal side is closed (every holder exited).
            match copy(m, 1, &mut buf) {
                Ok(0) | Err(_) => {
                    if exited {
                        return Ok(());
                    }
                }
                Ok(_) => continue,
            }
        } else if exited {
            return Ok(());
        }
        if fds[1].revents & libc::POLLIN != 0 {
            exited = true;
        }
        if fds[2].revents & (libc::POLLIN | libc::POLLHUP) != 0 {
            match copy(0, m, &mut buf) {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(_) => {}
            }
        }
    }
}
