//! [`EventWatcher`]: an async stream of memory and cgroup events for a subtree, for the
//! daemon's memory policy. The kernel announces every change of `memory.events` and
//! `cgroup.events` with an inotify IN_MODIFY (its documented notification mechanism for
//! these files); the watcher turns changes into typed [`Event`]s by diffing the counters,
//! and follows cgroups created and removed below the subtree through directory watches.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::inotify::{self, ReadFlags, WatchFlags};
use serde::Serialize;
use tokio::io::unix::AsyncFd;

use crate::error::{Error, Result};
use crate::stats::{MemoryEvents, parse_flat_keyed};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum EventKind {
    /// memory.high was exceeded again (the cgroup is being throttled); `total` is the
    /// counter after the change.
    MemoryHigh {
        /// memory.events `high`.
        total: u64,
    },
    /// Usage hit memory.max.
    MemoryMax {
        /// memory.events `max`.
        total: u64,
    },
    /// The OOM killer was invoked in the cgroup.
    Oom {
        /// memory.events `oom`.
        total: u64,
    },
    /// The OOM killer killed process(es).
    OomKill {
        /// memory.events `oom_kill`.
        total: u64,
    },
    /// The subtree became populated.
    Populated,
    /// The last process of the subtree exited.
    Emptied,
    /// The cgroup finished freezing.
    Frozen,
    /// The cgroup was thawed.
    Thawed,
    /// A cgroup appeared below the watched subtree (now watched too).
    Created,
    /// A cgroup below the watched subtree was removed.
    Removed,
}

/// One event of one cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// The cgroup.
    pub path: PathBuf,
    /// What happened.
    pub kind: EventKind,
}

#[derive(Debug, Clone)]
enum Watch {
    Dir(PathBuf),
    Memory(PathBuf),
    Cgroup(PathBuf),
}

/// Async watcher of a cgroup subtree; call [`EventWatcher::next`] in a loop.
#[derive(Debug)]
pub struct EventWatcher {
    fd: AsyncFd<OwnedFd>,
    watches: HashMap<i32, Watch>,
    memory: HashMap<PathBuf, MemoryEvents>,
    state: HashMap<PathBuf, (u64, u64)>,
    pending: VecDeque<Event>,
}

const MEMORY_EVENTS: &str = "memory.events";
const CGROUP_EVENTS: &str = "cgroup.events";

impl EventWatcher {
    /// Watches `subtree` and every cgroup below it. Must be called inside a tokio runtime
    /// with I/O enabled. Only changes after this call are reported.
    pub fn new(subtree: impl AsRef<Path>) -> Result<EventWatcher> {
        let ino = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
            .map_err(|e| Error::io("inotify_init1", e))?;
        // SAFETY: `ino` is an OwnedFd moved into the AsyncFd: it stays open and refers to the
        // same inotify instance until the AsyncFd is dropped, and as_raw_fd never changes.
        let fd = unsafe { AsyncFd::register_with_interest(ino, tokio::io::Interest::READABLE) }
            .map_err(|e| Error::io("registering inotify with tokio", io::Error::from(e)))?;
        let mut w = EventWatcher {
            fd,
            watches: HashMap::new(),
            memory: HashMap::new(),
            state: HashMap::new(),
            pending: VecDeque::new(),
        };
        w.add_cgroup(subtree.as_ref(), false)?;
        Ok(w)
    }

    /// The next event.
    pub async fn next(&mut self) -> Result<Event> {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(e);
            }
            let mut guard = self
                .fd
                .readable()
                .await
                .map_err(|e| Error::io("waiting for inotify", e))?;
            match guard.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut buf[..])?)) {
                Ok(Ok(n)) => self.handle(&buf[..n]),
                Ok(Err(e)) => return Err(Error::io("reading inotify", e)),
                Err(_would_block) => continue,
            }
        }
    }

    fn add_cgroup(&mut self, dir: &Path, announce: bool) -> Result<()> {
        let flags = WatchFlags::CREATE | WatchFlags::DELETE | WatchFlags::ONLYDIR;
        match inotify::add_watch(self.fd.get_ref(), dir, flags) {
            Ok(wd) => {
                self.watches.insert(wd, Watch::Dir(dir.to_path_buf()));
            }
            // Removed before we got to it: nothing to watch.
            Err(rustix::io::Errno::NOENT) if announce => return Ok(()),
            Err(e) => return Err(Error::io("inotify_add_watch on a cgroup", e)),
        }
        if announce {
            self.pending.push_back(Event {
                path: dir.to_path_buf(),
                kind: EventKind::Created,
            });
        }
        self.add_file(dir, MEMORY_EVENTS);
        self.add_file(dir, CGROUP_EVENTS);
        if let Ok(rd) = std::fs::read_dir(dir) {
            let mut subs: Vec<PathBuf> = rd
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect();
            subs.sort();
            for s in subs {
                self.add_cgroup(&s, announce)?;
            }
        }
        Ok(())
    }

    /// Watches one events file if the cgroup has it (memory.events needs the memory
    /// controller) and records its current state as the baseline.
    fn add_file(&mut self, dir: &Path, file: &str) {
        let path = dir.join(file);
        let Ok(wd) = inotify::add_watch(self.fd.get_ref(), &path, WatchFlags::MODIFY) else {
            return;
        };
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if file == MEMORY_EVENTS {
            self.memory
                .insert(dir.to_path_buf(), MemoryEvents::parse(&text));
            self.watches.insert(wd, Watch::Memory(dir.to_path_buf()));
        } else {
            self.state
                .insert(dir.to_path_buf(), populated_frozen(&text));
            self.watches.insert(wd, Watch::Cgroup(dir.to_path_buf()));
        }
    }

    fn handle(&mut self, mut bytes: &[u8]) {
        // struct inotify_event { int wd; u32 mask; u32 cookie; u32 len; char name[len]; }
        while bytes.len() >= 16 {
            let word = |i: usize| {
                let mut w = [0u8; 4];
                w.copy_from_slice(&bytes[i..i + 4]);
                w
            };
            let wd = i32::from_ne_bytes(word(0));
            let mask = ReadFlags::from_bits_retain(u32::from_ne_bytes(word(4)));
            let len = u32::from_ne_bytes(word(12)) as usize;
            let Some(raw_name) = bytes.get(16..16 + len) else {
                break;
            };
            let name = String::from_utf8_lossy(raw_name)
                .trim_end_matches('\0')
                .to_string();
            bytes = &bytes[16 + len..];
            self.handle_one(wd, mask, &name);
        }
    }

    fn handle_one(&mut self, wd: i32, mask: ReadFlags, name: &str) {
        if mask.contains(ReadFlags::IGNORED) {
            self.watches.remove(&wd);
            return;
        }
        let Some(watch) = self.watches.get(&wd).cloned() else {
            return;
        };
        match watch {
            Watch::Dir(dir) => {
                let child = dir.join(name);
                if mask.contains(ReadFlags::CREATE | ReadFlags::ISDIR) {
                    let _ = self.add_cgroup(&child, true);
                } else if mask.contains(ReadFlags::CREATE)
                    && (name == MEMORY_EVENTS || name == CGROUP_EVENTS)
                {
                    // A fake cgroupfs creates the files after the directory.
                    self.add_file(&dir, name);
                } else if mask.contains(ReadFlags::DELETE | ReadFlags::ISDIR) {
                    self.forget(&child);
                    self.pending.push_back(Event {
                        path: child,
                        kind: EventKind::Removed,
                    });
                }
            }
            Watch::Memory(dir) => {
                let Ok(text) = std::fs::read_to_string(dir.join(MEMORY_EVENTS)) else {
                    return;
                };
                let new = MemoryEvents::parse(&text);
                let old = self.memory.insert(dir.clone(), new).unwrap_or_default();
                for kind in memory_changes(&old, &new) {
                    self.pending.push_back(Event {
                        path: dir.clone(),
                        kind,
                    });
                }
            }
            Watch::Cgroup(dir) => {
                let Ok(text) = std::fs::read_to_string(dir.join(CGROUP_EVENTS)) else {
                    return;
                };
                let new = populated_frozen(&text);
                let old = self.state.insert(dir.clone(), new).unwrap_or((0, 0));
                for kind in cgroup_changes(old, new) {
                    self.pending.push_back(Event {
                        path: dir.clone(),
                        kind,
                    });
                }
            }
        }
    }

    /// Drops every watch of a removed cgroup and its descendants.
    fn forget(&mut self, gone: &Path) {
        let wds: Vec<i32> = self
            .watches
            .iter()
            .filter(|(_, w)| match w {
                Watch::Dir(p) | Watch::Memory(p) | Watch::Cgroup(p) => p.starts_with(gone),
            })
            .map(|(wd, _)| *wd)
            .collect();
        for wd in wds {
            let _ = inotify::remove_watch(self.fd.get_ref(), wd);
            self.watches.remove(&wd);
        }
        self.memory.retain(|p, _| !p.starts_with(gone));
        self.state.retain(|p, _| !p.starts_with(gone));
    }
}

fn populated_frozen(text: &str) -> (u64, u64) {
    let m = parse_flat_keyed(text);
    (
        m.get("populated").copied().unwrap_or(0),
        m.get("frozen").copied().unwrap_or(0),
    )
}

/// The events implied by a change of memory.events counters.
pub fn memory_changes(old: &MemoryEvents, new: &MemoryEvents) -> Vec<EventKind> {
    let mut out = Vec::new();
    if new.high > old.high {
        out.push(EventKind::MemoryHigh { total: new.high });
    }
    if new.max > old.max {
        out.push(EventKind::MemoryMax { total: new.max });
    }
    if new.oom > old.oom {
        out.push(EventKind::Oom { total: new.oom });
    }
    if new.oom_kill > old.oom_kill {
        out.push(EventKind::OomKill {
            total: new.oom_kill,
        });
    }
    out
}

/// The events implied by a change of cgroup.events `(populated, frozen)`.
pub fn cgroup_changes(old: (u64, u64), new: (u64, u64)) -> Vec<EventKind> {
    let mut out = Vec::new();
    match (old.0, new.0) {
        (0, p) if p != 0 => out.push(EventKind::Populated),
        (p, 0) if p != 0 => out.push(EventKind::Emptied),
        _ => {}
    }
    match (old.1, new.1) {
        (0, f) if f != 0 => out.push(EventKind::Frozen),
        (f, 0) if f != 0 => out.push(EventKind::Thawed),
        _ => {}
    }
    out
}
