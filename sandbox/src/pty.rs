//! Relaying a pty for `agentd-sandbox exec --pty`: this process's stdin goes to the pty's
//! controlling side, the command's output comes back to stdout, until the command exits
//! (its pidfd becomes readable) and the pty has no more output. While attached, a local
//! terminal on stdin is in raw mode ([`RawMode`], restored on every way out that runs
//! code: return, error, unwinding, and SIGTERM/SIGHUP/SIGINT/SIGQUIT, which are forwarded
//! to the command instead of killing us), and its window size follows the local one
//! (SIGWINCH, taken through a signalfd).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};

use crate::Error;

/// The local terminal's window size, when `fd` is a terminal.
pub fn window_size(fd: BorrowedFd<'_>) -> Option<libc::winsize> {
    // SAFETY: an all-zero winsize is valid; TIOCGWINSZ fills it.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a winsize into the live `ws`.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (r == 0).then_some(ws)
}

/// Sets the pty's window size (the kernel then sends SIGWINCH to its foreground job).
pub fn set_window_size(master: BorrowedFd<'_>, ws: &libc::winsize) -> Result<(), Error> {
    // SAFETY: TIOCSWINSZ reads a winsize from the live `ws`.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, ws) } < 0 {
        return Err(Error::sys(
            "set the pty window size",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// The local terminal in raw mode while this value lives: keys (^C, ^Z, ^D included) go to
/// the command's pty unchanged, and its line discipline does the echo and editing.
#[derive(Debug)]
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Switches stdin to raw mode when it is a terminal (`None` otherwise).
    pub fn enter_stdin() -> Result<Option<RawMode>, Error> {
        let stdin = std::io::stdin();
        let fd = stdin.as_fd();
        // SAFETY: isatty on a descriptor number only.
        if unsafe { libc::isatty(fd.as_raw_fd()) } != 1 {
            return Ok(None);
        }
        let saved = tcgetattr(fd).map_err(|e| Error::sys("tcgetattr stdin", e))?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(fd, SetArg::TCSANOW, &raw).map_err(|e| Error::sys("tcsetattr stdin", e))?;
        Ok(Some(RawMode { saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // TCSADRAIN: what the command wrote is shown in raw mode before the modes change.
        let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSADRAIN, &self.saved);
    }
}

/// Signals the relay takes itself while attached: the window size, and the ones that would
/// otherwise end this process without restoring the terminal (forwarded to the command).
const TAKEN: [Signal; 5] = [
    Signal::SIGWINCH,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
];

/// Blocks [`TAKEN`] and delivers them on a signalfd; the old mask comes back on drop.
struct TakenSignals {
    fd: SignalFd,
    old: SigSet,
}

impl TakenSignals {
    fn take() -> Result<TakenSignals, Error> {
        let mut set = SigSet::empty();
        for s in TAKEN {
            set.add(s);
        }
        let mut old = SigSet::empty();
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old))
            .map_err(|e| Error::sys("sigprocmask", e))?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(|e| Error::sys("signalfd", e))?;
        Ok(TakenSignals { fd, old })
    }
}

impl Drop for TakenSignals {
    fn drop(&mut self) {
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&self.old), None);
    }
}

/// Sends `sig` to the process of `pidfd` (race-free: never a recycled pid); an unknown
/// signal number or a process already gone is ignored.
pub(crate) fn send_signal(pidfd: &OwnedFd, sig: libc::c_int) {
    if let Some(s) = rustix::process::Signal::from_named_raw(sig) {
        let _ = rustix::process::pidfd_send_signal(pidfd, s);
    }
}

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

/// Relays until the command behind `pidfd` has exited and its output is drained, with a
/// local terminal on stdin in raw mode meanwhile ([`RawMode`], restored when this returns,
/// errors included), taking SIGWINCH (the local window size is copied to the pty) and
/// forwarding SIGTERM, SIGHUP, SIGINT and SIGQUIT to the command.
pub fn relay(master: &OwnedFd, pidfd: &OwnedFd) -> Result<(), Error> {
    let m = master.as_raw_fd();
    // Signals first, then raw mode: no window in which a SIGTERM could end this process with
    // the terminal raw. Drop order (reverse): the terminal is restored, then the mask.
    let signals = TakenSignals::take()?;
    let _raw = RawMode::enter_stdin()?;
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
            libc::pollfd {
                fd: signals.fd.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // Once the command is gone, only drain what the pty still holds (no waiting).
        let timeout = if exited { 0 } else { -1 };
        // SAFETY: poll on a live array of four pollfds.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 4, timeout) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::sys("poll", e));
        }
        if fds[3].revents & libc::POLLIN != 0 {
            while let Ok(Some(info)) = signals.fd.read_signal() {
                let sig = info.ssi_signo as libc::c_int;
                if sig == libc::SIGWINCH {
                    if let Some(ws) = window_size(std::io::stdin().as_fd()) {
                        set_window_size(master.as_fd(), &ws)?;
                    }
                } else {
                    send_signal(pidfd, sig);
                }
            }
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
