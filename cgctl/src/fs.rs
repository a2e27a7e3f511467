//! The syscall seam: every mutation of cgroupfs (mkdir, rmdir, writes to interface files)
//! goes through a [`Backend`], so the same tree logic runs against the kernel's cgroupfs
//! ([`Kernel`]) or against a plain directory that imitates it ([`Fake`]) in unit tests.
//! Reads are plain `openat` + `read` in both cases and live here too.

use std::fmt;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, Mode, OFlags};

/// The mutating cgroupfs operations, relative to a cgroup directory fd.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Creates the child cgroup `name` of `parent`.
    fn mkdir(&self, parent: BorrowedFd<'_>, name: &str) -> io::Result<()>;
    /// Removes the (empty, childless) child cgroup `name` of `parent`.
    fn rmdir(&self, parent: BorrowedFd<'_>, name: &str) -> io::Result<()>;
    /// Writes `value` to the interface file `file` of the cgroup `dir`, in one write(2)
    /// (cgroupfs parses each write as a whole).
    fn write(&self, dir: BorrowedFd<'_>, file: &str, value: &str) -> io::Result<()>;
    /// Like [`Backend::write`], opened with O_NONBLOCK: a memory.high/max write then does not
    /// reclaim synchronously in the writer (kernels with the non-blocking limit option; older
    /// kernels ignore the flag, and raising a limit never reclaims anyway).
    fn write_nonblock(&self, dir: BorrowedFd<'_>, file: &str, value: &str) -> io::Result<()> {
        self.write(dir, file, value)
    }
    /// True for the fake: waits that need the kernel to act (kill, freeze) are emulated.
    fn is_fake(&self) -> bool {
        false
    }
}

/// The kernel's cgroupfs.
#[derive(Debug, Default, Clone, Copy)]
pub struct Kernel;

impl Backend for Kernel {
    fn mkdir(&self, parent: BorrowedFd<'_>, name: &str) -> io::Result<()> {
        rustix::fs::mkdirat(parent, name, Mode::from_bits_truncate(0o755))?;
        Ok(())
    }

    fn rmdir(&self, parent: BorrowedFd<'_>, name: &str) -> io::Result<()> {
        rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)?;
        Ok(())
    }

    fn write(&self, dir: BorrowedFd<'_>, file: &str, value: &str) -> io::Result<()> {
        let fd = rustix::fs::openat(dir, file, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())?;
        write_all_once(&fd, value)
    }

    fn write_nonblock(&self, dir: BorrowedFd<'_>, file: &str, value: &str) -> io::Result<()> {
        let fd = rustix::fs::openat(
            dir,
            file,
            OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        )?;
        write_all_once(&fd, value)
    }
}

/// One write(2) of the whole value: cgroupfs takes each write as one command, so a short
/// write is an error rather than something to continue.
fn write_all_once(fd: &OwnedFd, value: &str) -> io::Result<()> {
    let n = rustix::io::write(fd, value.as_bytes())?;
    if n != value.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short write: {n} of {} bytes", value.len()),
        ));
    }
    Ok(())
}

/// Reads a whole interface file of the cgroup `dir`.
pub(crate) fn read_file(dir: BorrowedFd<'_>, file: &str) -> io::Result<String> {
    let fd = rustix::fs::openat(dir, file, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    let mut s = String::new();
    std::fs::File::from(fd).read_to_string(&mut s)?;
    Ok(s)
}

/// Whether the cgroup `dir` has the interface file `file`.
pub(crate) fn has_file(dir: BorrowedFd<'_>, file: &str) -> bool {
    rustix::fs::statat(dir, file, AtFlags::empty()).is_ok()
}

/// Opens a cgroup directory relative to `dir` (a real, non-O_PATH fd: clone3 needs one).
pub(crate) fn open_dir(dir: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )?)
}

/// Names of the child directories (= child cgroups) of `dir`, sorted.
pub(crate) fn child_dirs(dir: BorrowedFd<'_>) -> io::Result<Vec<String>> {
    let fd = open_dir(dir, ".")?;
    let mut out = Vec::new();
    let iter = rustix::fs::Dir::read_from(&fd)?;
    for entry in iter {
        let entry = entry?;
        if entry.file_type() != rustix::fs::FileType::Directory {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != "." && name != ".." {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// A plain directory tree that imitates cgroupfs for unit tests. mkdir on a plain
/// filesystem creates no files, so [`Fake::mkdir`] creates the interface files a kernel
/// cgroup with the parent's enabled controllers would have; writes to the files whose kernel
/// semantics the tree logic relies on (`cgroup.subtree_control`, `cgroup.freeze`,
/// `cgroup.kill`, `cgroup.procs`) are emulated. Stats files start at zero; tests overwrite
/// them to simulate a workload.
#[derive(Debug, Default, Clone)]
pub struct Fake {
    /// Interface files the fake "kernel" lacks (for example `memory.swap.max`).
    pub missing_knobs: Vec<String>,
}

impl Fake {
    /// Turns the existing directory `dir` into a fake cgroup whose parent offers
    /// `controllers` (its `cgroup.controllers`).
    pub fn init_root(&self, dir: &std::path::Path, controllers: &[&str]) -> io::Result<()> {
        let fd = rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
        self.populate(fd.as_fd(), &controllers.join(" "))
    }

    fn populate(&self, dir: BorrowedFd<'_>, controllers: &str) -> io::Result<()> {
        let mut files: Vec<(&str, String)> = vec![
            ("cgroup.controllers", format!("{controllers}\n")),
            ("cgroup.subtree_control", "\n".into()),
            ("cgroup.procs", String::new()),
            ("cgroup.events", "populated 0\nfrozen 0\n".into()),
            ("cgroup.freeze", "0\n".into()),
            ("cgroup.kill", String::new()),
            ("cgroup.type", "domain\n".into()),
            (
                "cpu.stat",
                "usage_usec 0\nuser_usec 0\nsystem_usec 0\n".into(),
            ),
            ("cpu.pressure", PSI_ZERO.into()),
            ("memory.pressure", PSI_ZERO.into()),
            ("io.pressure", PSI_ZERO.into()),
        ];
        for c in controllers.split_whitespace() {
            files.extend(controller_files(c));
        }
        for (name, content) in files {
            if self.missing_knobs.iter().any(|m| m == name) {
                continue;
            }
            let fd = rustix::fs::openat(
                dir,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )?;
            write_all_once(&fd, &content)?;
        }
        Ok(())
    }

    fn overwrite(dir: BorrowedFd<'_>, file: &str, value: &str) -> io::Result<()> {
        let fd = rustix::fs::openat(
            dir,
            file,
            OFlags::WRONLY | OFlags::TRUNC | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        write_all_once(&fd, value)
    }
}

const PSI_ZERO: &str = "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n\
                        full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";

/// The files a controller adds to a cgroup, with the kernel's initial contents.
fn controller_files(controller: &str) -> Vec<(&'static str, String)> {
    let v = |pairs: &[(&'static str, &str)]| {
        pairs
            .iter()
            .map(|(k, c)| (*k, (*c).to_string()))
            .collect::<Vec<_>>()
    };
    match controller {
        "memory" => v(&[
            ("memory.current", "0\n"),
            ("memory.peak", "0\n"),
            ("memory.max", "max\n"),
            ("memory.high", "max\n"),
            ("memory.low", "0\n"),
            ("memory.min", "0\n"),
            ("memory.swap.max", "max\n"),
            ("memory.swap.current", "0\n"),
            ("memory.oom.group", "0\n"),
            (
                "memory.events",
                "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
            ),
            (
                "memory.stat",
                "anon 0\nfile 0\nkernel 0\nsock 0\nshmem 0\npgfault 0\npgmajfault 0\n",
            ),
        ]),
        "cpu" => v(&[("cpu.max", "max 100000\n"), ("cpu.weight", "100\n")]),
        "pids" => v(&[
            ("pids.max", "max\n"),
            ("pids.current", "0\n"),
            ("pids.peak", "0\n"),
            ("pids.events", "max 0\n"),
        ]),
        "io" => v(&[
            ("io.max", ""),
            ("io.weight", "default 100\n"),
            ("io.stat", ""),
        ]),
        _ => Vec::new(),
    }
}

impl Backend for Fake {
    fn mkdir(&self, parent: BorrowedFd<'_>, name: &str) -> io::Result<()> {
        rustix::fs::mkdirat(parent, name, Mode::from_bits_truncate(0o755))?;
        let enabled = read_file(parent, "cgroup.subtree_control")?;
        let child = open_dir(parent, name)?;
        self.populate(child.as_fd(), enabled.trim())
    }

    fn rmdir(&self, parent: BorrowedFd<'_>, name: &str) -> io::Result<()> {
        let child = open_dir(parent, name)?;
        if !child_dirs(child.as_fd())?.is_empty() {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        if read_file(child.as_fd(), "cgroup.events")?.contains("populated 1") {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        let mut files = Vec::new();
        let iter = rustix::fs::Dir::read_from(&child)?;
        for entry in iter {
            let entry = entry?;
            if entry.file_type() == rustix::fs::FileType::RegularFile {
                files.push(entry.file_name().to_owned());
            }
        }
        for f in files {
            rustix::fs::unlinkat(&child, f.as_c_str(), AtFlags::empty())?;
        }
        rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)?;
        Ok(())
    }

    fn write(&self, dir: BorrowedFd<'_>, file: &str, value: &str) -> io::Result<()> {
        match file {
            "cgroup.subtree_control" => {
                let available = read_file(dir, "cgroup.controllers")?;
                let mut enabled: Vec<String> = read_file(dir, file)?
                    .split_whitespace()
                    .map(str::to_string)
                    .collect();
                for tok in value.split_whitespace() {
                    let (on, name) = match tok.split_at_checked(1) {
                        Some(("+", n)) => (true, n),
                        Some(("-", n)) => (false, n),
                        _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
                    };
                    if !available.split_whitespace().any(|c| c == name) {
                        return Err(io::Error::from_raw_os_error(libc::ENOENT));
                    }
                    enabled.retain(|c| c != name);
                    if on {
                        enabled.push(name.to_string());
                    }
                }
                Fake::overwrite(dir, file, &format!("{}\n", enabled.join(" ")))
            }
            "cgroup.freeze" => {
                let frozen = value.trim() == "1";
                let events = read_file(dir, "cgroup.events")?;
                let populated = events.contains("populated 1");
                Fake::overwrite(dir, file, &format!("{}\n", u8::from(frozen)))?;
                Fake::overwrite(
                    dir,
                    "cgroup.events",
                    &format!(
                        "populated {}\nfrozen {}\n",
                        u8::from(populated),
                        u8::from(frozen)
                    ),
                )
            }
            "cgroup.kill" => {
                Fake::overwrite(dir, "cgroup.procs", "")?;
                let frozen = read_file(dir, "cgroup.events")?.contains("frozen 1");
                Fake::overwrite(
                    dir,
                    "cgroup.events",
                    &format!("populated 0\nfrozen {}\n", u8::from(frozen)),
                )
            }
            "cgroup.procs" => {
                let mut procs = read_file(dir, file)?;
                procs.push_str(value.trim());
                procs.push('\n');
                Fake::overwrite(dir, file, &procs)
            }
            _ => {
                if self.missing_knobs.iter().any(|m| m == file) {
                    return Err(io::Error::from_raw_os_error(libc::ENOENT));
                }
                Fake::overwrite(dir, file, value)
            }
        }
    }

    fn is_fake(&self) -> bool {
        true
    }
}
