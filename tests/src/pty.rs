//! A pseudo-terminal for tests that need a real terminal on the other side: a program's
//! output to a terminal (escaping), a controlling terminal (TIOCSTI, job control).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A new pty: (controlling side, terminal side).
pub fn open() -> (OwnedFd, OwnedFd) {
    let (mut m, mut s) = (-1, -1);
    // SAFETY: openpty writes two descriptors; name, termios and winsize are NULL.
    let r = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: fresh descriptors owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) }
}

/// Runs `cmd` with the terminal side of a new pty as its stdin, stdout and stderr and as
/// the controlling terminal of its own session (what a shell gives a command); returns the
/// bytes the terminal showed until the command ended and its status (120 s bound).
pub fn run_on_terminal(mut cmd: Command) -> (Vec<u8>, ExitStatus) {
    let (m, s) = open();
    let dup = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup the pty"));
    cmd.stdin(dup(&s)).stdout(dup(&s)).stderr(dup(&s));
    // SAFETY: setsid and TIOCSCTTY act on the child only, before exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn on a terminal");
    drop(s);
    let mut out = Vec::new();
    let t = Instant::now();
    loop {
        let mut p = libc::pollfd {
            fd: m.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one live pollfd.
        let ready = unsafe { libc::poll(&mut p, 1, 200) };
        if ready > 0 {
            let mut buf = [0u8; 4096];
            // SAFETY: read into a live buffer of that length.
            let n = unsafe { libc::read(m.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break; // EIO: every terminal side is closed
            }
            out.extend_from_slice(&buf[..n as usize]);
            continue;
        }
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no end after 120 s: {:?}",
            String::from_utf8_lossy(&out)
        );
    }
    let st = child.wait().expect("wait");
    eprintln!("--- terminal ({st})\n{}", String::from_utf8_lossy(&out));
    (out, st)
}
