//! [`Cgroup`]: a handle on one cgroup directory (an O_DIRECTORY fd plus its path for
//! messages and inotify). Owns the generic cgroup v2 operations: interface-file I/O,
//! controllers, limits, placement by pid, freeze/thaw, kill, waiting for `cgroup.events`
//! conditions without busy loops, removal bottom-up, and statistics.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::inotify;

use crate::error::{Error, Result};
use crate::fs::{self, Backend, Kernel};
use crate::limits::Limits;
use crate::stats::{Stats, parse_flat_keyed};

/// Controllers agentd enables down its tree, where the kernel offers them.
pub const CONTROLLERS: [&str; 4] = ["cpu", "io", "memory", "pids"];

/// One cgroup directory.
#[derive(Debug, Clone)]
pub struct Cgroup {
    path: PathBuf,
    dir: Arc<OwnedFd>,
    backend: Arc<dyn Backend>,
}

impl Cgroup {
    /// Opens an existing cgroup of the kernel's cgroupfs.
    pub fn open(path: impl Into<PathBuf>) -> Result<Cgroup> {
        Cgroup::open_with(path, Arc::new(Kernel))
    }

    /// Opens an existing cgroup through `backend` (a [`fs::Fake`] in tests).
    pub fn open_with(path: impl Into<PathBuf>, backend: Arc<dyn Backend>) -> Result<Cgroup> {
        let path = path.into();
        let dir = rustix::fs::open(
            &path,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| Error::Dir {
            op: "open",
            path: path.clone(),
            source: e.into(),
        })?;
        Ok(Cgroup {
            path,
            dir: Arc::new(dir),
            backend,
        })
    }

    /// The cgroup's path (absolute when opened with an absolute path).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cgroup's directory fd, for `clone3(CLONE_INTO_CGROUP)`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// The backend this handle writes through.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The cgroup's name (last path component).
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Reads an interface file.
    pub fn read(&self, file: &str) -> Result<String> {
        fs::read_file(self.fd(), file).map_err(|source| Error::Read {
            path: self.path.join(file),
            source,
        })
    }

    /// Reads an interface file, `None` if this cgroup does not have it.
    pub fn read_opt(&self, file: &str) -> Result<Option<String>> {
        match fs::read_file(self.fd(), file) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Read {
                path: self.path.join(file),
                source,
            }),
        }
    }

    /// Writes an interface file.
    pub fn write(&self, file: &str, value: &str) -> Result<()> {
        self.backend
            .write(self.fd(), file, value)
            .map_err(|source| Error::Write {
                path: self.path.join(file),
                value: value.to_string(),
                source,
            })
    }

    /// Writes an interface file opened with O_NONBLOCK (see [`Backend::write_nonblock`]):
    /// the memory pool moves memory.high without stalling in reclaim.
    pub fn write_nonblock(&self, file: &str, value: &str) -> Result<()> {
        self.backend
            .write_nonblock(self.fd(), file, value)
            .map_err(|source| Error::Write {
                path: self.path.join(file),
                value: value.to_string(),
                source,
            })
    }

    /// Starts freezing the subtree without waiting for `frozen 1` (the pool's loop must not
    /// block; cgroup.events tells when it is done).
    pub fn freeze_nowait(&self) -> Result<()> {
        self.write_knob("cgroup.freeze", "1")
    }

    /// Starts thawing the subtree without waiting.
    pub fn thaw_nowait(&self) -> Result<()> {
        self.write_knob("cgroup.freeze", "0")
    }

    /// Whether this cgroup has the interface file `file`.
    pub fn has(&self, file: &str) -> bool {
        fs::has_file(self.fd(), file)
    }

    /// Opens the existing child cgroup `name`.
    pub fn child(&self, name: &str) -> Result<Cgroup> {
        let path = self.path.join(name);
        let dir = fs::open_dir(self.fd(), name).map_err(|source| Error::Dir {
            op: "open",
            path: path.clone(),
            source,
        })?;
        Ok(Cgroup {
            path,
            dir: Arc::new(dir),
            backend: self.backend.clone(),
        })
    }

    /// Creates the child cgroup `name` (an error if it exists) and opens it.
    pub fn create_child(&self, name: &str) -> Result<Cgroup> {
        self.backend
            .mkdir(self.fd(), name)
            .map_err(|source| Error::Dir {
                op: "mkdir",
                path: self.path.join(name),
                source,
            })?;
        self.child(name)
    }

    /// Opens the child cgroup `name`, creating it if needed.
    pub fn child_or_create(&self, name: &str) -> Result<Cgroup> {
        match self.child(name) {
            Err(Error::Dir { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                self.create_child(name)
            }
            other => other,
        }
    }

    /// Names of the child cgroups, sorted.
    pub fn children(&self) -> Result<Vec<String>> {
        fs::child_dirs(self.fd()).map_err(|source| Error::Dir {
            op: "list",
            path: self.path.clone(),
            source,
        })
    }

    /// Removes the child cgroup `name`, which must be empty and childless.
    pub fn remove_child(&self, name: &str) -> Result<()> {
        self.backend
            .rmdir(self.fd(), name)
            .map_err(|source| Error::Dir {
                op: "rmdir",
                path: self.path.join(name),
                source,
            })
    }

    /// Controllers available to this cgroup (`cgroup.controllers`).
    pub fn controllers(&self) -> Result<Vec<String>> {
        Ok(words(&self.read("cgroup.controllers")?))
    }

    /// Controllers enabled for the children (`cgroup.subtree_control`).
    pub fn subtree_control(&self) -> Result<Vec<String>> {
        Ok(words(&self.read("cgroup.subtree_control")?))
    }

    /// Enables for the children those of `wanted` that this cgroup offers and that are not
    /// enabled yet; returns the controllers enabled for the children afterwards. The
    /// kernel refuses this while the cgroup itself holds processes (no internal processes).
    pub fn enable_controllers(&self, wanted: &[&str]) -> Result<Vec<String>> {
        let available = self.controllers()?;
        let enabled = self.subtree_control()?;
        let missing: Vec<String> = wanted
            .iter()
            .filter(|c| available.iter().any(|a| a == *c) && !enabled.iter().any(|e| e == *c))
            .map(|c| format!("+{c}"))
            .collect();
        if !missing.is_empty() {
            self.write("cgroup.subtree_control", &missing.join(" "))?;
        }
        self.subtree_control()
    }

    /// Applies `limits`. A knob whose controller is not available here is
    /// [`Error::MissingController`]; a knob the kernel lacks although the controller is
    /// there is [`Error::UnsupportedKnob`]. Nothing is skipped silently.
    pub fn set_limits(&self, limits: &Limits) -> Result<()> {
        let knobs = limits.knobs();
        if knobs.is_empty() {
            return Ok(());
        }
        let available = self.controllers()?;
        for knob in knobs {
            if !available.iter().any(|c| c == knob.controller) {
                return Err(Error::MissingController {
                    path: self.path.clone(),
                    controller: knob.controller.to_string(),
                    knob: knob.file.to_string(),
                });
            }
            if !self.has(knob.file) {
                return Err(Error::UnsupportedKnob {
                    path: self.path.clone(),
                    knob: knob.file.to_string(),
                });
            }
            self.write(knob.file, &knob.value)?;
        }
        Ok(())
    }

    /// Pids of the processes in this cgroup (not its descendants).
    pub fn procs(&self) -> Result<Vec<u32>> {
        Ok(self
            .read("cgroup.procs")?
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect())
    }

    /// Moves the process `pid` (all its threads) into this cgroup.
    pub fn add_pid(&self, pid: u32) -> Result<()> {
        self.write("cgroup.procs", &pid.to_string())
    }

    /// `cgroup.events` as key → value.
    pub fn events(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        Ok(parse_flat_keyed(&self.read("cgroup.events")?))
    }

    /// Whether any process lives in this cgroup or below.
    pub fn populated(&self) -> Result<bool> {
        Ok(self.events()?.get("populated").copied().unwrap_or(0) != 0)
    }

    /// Freezes the subtree and waits until the kernel reports `frozen 1`; returns how long
    /// that took.
    pub fn freeze(&self, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        self.write_knob("cgroup.freeze", "1")?;
        self.wait_events("frozen 1", timeout, |e| e.get("frozen") == Some(&1))?;
        Ok(start.elapsed())
    }

    /// Thaws the subtree and waits until the kernel reports `frozen 0`.
    pub fn thaw(&self, timeout: Duration) -> Result<()> {
        self.write_knob("cgroup.freeze", "0")?;
        self.wait_events("frozen 0", timeout, |e| e.get("frozen") == Some(&0))
    }

    /// SIGKILLs every process of the subtree (`cgroup.kill`, Linux 5.14+), including ones
    /// that forked or daemonised, without racing against new forks.
    pub fn kill(&self) -> Result<()> {
        self.write_knob("cgroup.kill", "1")
    }

    /// Waits until no process is left in the subtree (`populated 0`).
    pub fn wait_empty(&self, timeout: Duration) -> Result<()> {
        self.wait_events("populated 0", timeout, |e| e.get("populated") == Some(&0))
    }

    /// Kills the subtree, waits for it to empty, and removes every descendant cgroup
    /// bottom-up (this cgroup itself is removed by its parent's [`Cgroup::remove_child`]).
    pub fn clear(&self, timeout: Duration) -> Result<()> {
        if self.populated()? {
            self.kill()?;
            self.wait_empty(timeout)?;
        }
        for name in self.children()? {
            let child = self.child(&name)?;
            child.clear(timeout)?;
            drop(child);
            self.remove_child(&name)?;
        }
        Ok(())
    }

    /// Reads the statistics of this cgroup.
    pub fn stats(&self) -> Result<Stats> {
        Stats::read(self)
    }

    fn write_knob(&self, file: &str, value: &str) -> Result<()> {
        if !self.has(file) {
            return Err(Error::UnsupportedKnob {
                path: self.path.clone(),
                knob: file.to_string(),
            });
        }
        self.write(file, value)
    }

    /// Waits until `cgroup.events` satisfies `done`. The kernel signals every change of
    /// that file with an inotify IN_MODIFY (kernfs_notify), so this sleeps in poll(2) on
    /// an inotify fd instead of re-reading in a loop.
    fn wait_events(
        &self,
        what: &'static str,
        timeout: Duration,
        done: impl Fn(&std::collections::BTreeMap<String, u64>) -> bool,
    ) -> Result<()> {
        let start = Instant::now();
        let ino = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
            .map_err(|e| Error::io("inotify_init1", e))?;
        // Watch before the first read, so a change between the read and the poll is not lost.
        inotify::add_watch(
            &ino,
            self.path.join("cgroup.events"),
            inotify::WatchFlags::MODIFY,
        )
        .map_err(|e| Error::io("inotify_add_watch on cgroup.events", e))?;
        loop {
            if done(&self.events()?) {
                return Ok(());
            }
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(Error::Timeout {
                    path: self.path.clone(),
                    what,
                    waited_ms: start.elapsed().as_millis(),
                });
            }
            wait_readable(&ino, left)?;
            drain(&ino);
        }
    }
}

/// Sleeps until `fd` is readable or `timeout` passes.
pub(crate) fn wait_readable(fd: &OwnedFd, timeout: Duration) -> Result<()> {
    let ts =
        Timespec::try_from(timeout).map_err(|e| Error::io("poll timeout", io::Error::other(e)))?;
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    match rustix::event::poll(&mut fds, Some(&ts)) {
        Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
        Err(e) => Err(Error::io("poll", e)),
    }
}

/// Discards pending inotify events (only "something changed" matters to the caller).
pub(crate) fn drain(ino: &OwnedFd) {
    let mut buf = [0u8; 4096];
    while matches!(rustix::io::read(ino, &mut buf), Ok(n) if n > 0) {}
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}
