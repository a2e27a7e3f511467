//! PSI triggers on a cgroup (`memory.pressure`, `cpu.pressure`, `io.pressure`): the kernel's
//! way to say "tasks of this subtree stalled at least `stall` within `window`" without the
//! caller polling averages. A trigger is a line written to the pressure file; the same open
//! fd then becomes POLLPRI-readable each time the threshold is crossed (at most once per
//! window), and the trigger lives as long as that fd. See the kernel's
//! Documentation/accounting/psi.rst.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{Mode, OFlags};

use crate::error::{Error, Result};

/// Which stall share the trigger counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    /// Some task of the group stalled.
    Some,
    /// Every non-idle task of the group stalled at once.
    Full,
}

/// The trigger line the kernel parses: `some|full <stall us> <window us>`. The kernel takes
/// windows of 500 ms to 10 s and a stall of at most the window.
pub fn trigger_line(kind: Stall, stall: Duration, window: Duration) -> Result<String> {
    let (s, w) = (stall.as_micros(), window.as_micros());
    if !(500_000..=10_000_000).contains(&w) || s == 0 || s > w {
        return Err(Error::io(
            "PSI trigger",
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "stall {s} us in window {w} us: the window must be 0.5 s to 10 s and the \
                     stall within it"
                ),
            ),
        ));
    }
    let k = match kind {
        Stall::Some => "some",
        Stall::Full => "full",
    };
    Ok(format!("{k} {s} {w}"))
}

/// A registered PSI trigger.
#[derive(Debug)]
pub struct Trigger {
    fd: OwnedFd,
    path: PathBuf,
}

impl Trigger {
    /// Registers `kind stall/window` on `file` (e.g. `memory.pressure`) of the cgroup at
    /// `cgroup`. Fails closed with the path and the kernel's answer (PSI disabled, file
    /// missing, bad values).
    pub fn new(
        cgroup: &Path,
        file: &str,
        kind: Stall,
        stall: Duration,
        window: Duration,
    ) -> Result<Trigger> {
        let path = cgroup.join(file);
        let line = trigger_line(kind, stall, window)?;
        let fd = rustix::fs::open(
            &path,
            OFlags::RDWR | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::Write {
            path: path.clone(),
            value: line.clone(),
            source: e.into(),
        })?;
        // The trigger string includes its terminating NUL, as psi.rst's example writes it.
        let mut bytes = line.clone().into_bytes();
        bytes.push(0);
        rustix::io::write(&fd, &bytes).map_err(|e| Error::Write {
            path: path.clone(),
            value: line,
            source: e.into(),
        })?;
        Ok(Trigger { fd, path })
    }

    /// The pressure file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits up to `timeout` for the trigger to fire; `Ok(true)` when it did. An error
    /// (POLLERR) means the cgroup went away.
    pub fn wait(&self, timeout: Duration) -> Result<bool> {
        let ts = Timespec::try_from(timeout)
            .map_err(|e| Error::io("poll timeout", std::io::Error::other(e)))?;
        let mut fds = [PollFd::new(&self.fd, PollFlags::PRI)];
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(0) | Err(rustix::io::Errno::INTR) => Ok(false),
            Ok(_) => {
                let r = fds[0].revents();
                if r.contains(PollFlags::ERR) {
                    return Err(Error::io(
                        "PSI trigger",
                        std::io::Error::other(format!("{}: POLLERR", self.path.display())),
                    ));
                }
                Ok(r.contains(PollFlags::PRI))
            }
            Err(e) => Err(Error::io("poll on a PSI trigger", e)),
        }
    }

    /// The fd (for an async reactor).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_lines_follow_the_kernel_grammar_and_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(
            trigger_line(Stall::Some, ms(100), ms(1000)).unwrap(),
            "some 100000 1000000"
        );
        assert_eq!(
            trigger_line(Stall::Full, ms(50), ms(500)).unwrap(),
            "full 50000 500000"
        );
        assert!(trigger_line(Stall::Some, ms(100), ms(100)).is_err());
        assert!(trigger_line(Stall::Some, ms(2000), ms(1000)).is_err());
        assert!(trigger_line(Stall::Some, ms(0), ms(1000)).is_err());
        assert!(trigger_line(Stall::Some, ms(100), ms(20_000)).is_err());
    }
}
