//! The syscall seam for mount-namespace setup: the [`Sys`] trait (youki's Syscall style),
//! its real implementation [`LinuxSys`], and [`mounts::apply`](crate::mounts::apply) written
//! against the trait so the step-to-syscall mapping is unit-tested with a recorder.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use nix::mount::{MntFlags, MsFlags};

/// The kernel operations the mount setup needs.
pub trait Sys {
    /// mount(2).
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()>;
    /// mount_setattr(2) with MOUNT_ATTR_RDONLY set, AT_RECURSIVE when asked.
    fn set_read_only(&self, target: &Path, recursive: bool) -> io::Result<()>;
    /// mount_setattr(2) with MOUNT_ATTR_RDONLY, NOSUID and NODEV set (a read-only bind), on
    /// the mount at `target` and, with `recursive`, its submounts.
    fn seal(&self, target: &Path, recursive: bool) -> io::Result<()>;
    /// `mkdir -p` with `mode` on created directories.
    fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()>;
    /// chown (uid = gid = id).
    fn chown(&self, path: &Path, id: u32) -> io::Result<()>;
    /// Create an empty file (mode 0644) if missing.
    fn touch(&self, path: &Path) -> io::Result<()>;
    /// symlink(2).
    fn symlink(&self, to: &Path, link: &Path) -> io::Result<()>;
    /// Whether `path` is a directory (for masks); `None` when it does not exist.
    fn is_dir(&self, path: &Path) -> Option<bool>;
    /// chdir(new_root); pivot_root(".", "."); umount2(".", MNT_DETACH); chdir("/").
    fn pivot_root(&self, new_root: &Path) -> io::Result<()>;
}

/// The real kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSys;

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

/// mount_setattr(2) setting `attr_set` on `target` (and its submounts with `recursive`).
fn mount_setattr(target: &Path, attr_set: u64, recursive: bool) -> io::Result<()> {
    let c = cpath(target)?;
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: `c` is a valid NUL-terminated path and `attr` a properly sized, live
    // mount_attr; the kernel only reads both.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c.as_ptr(),
            flags as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Sys for LinuxSys {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data).map_err(io::Error::from)
    }

    fn set_read_only(&self, target: &Path, recursive: bool) -> io::Result<()> {
        mount_setattr(target, MOUNT_ATTR_RDONLY, recursive)
    }

    fn seal(&self, target: &Path, recursive: bool) -> io::Result<()> {
        mount_setattr(
            target,
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            recursive,
        )
    }

    fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
    }

    fn chown(&self, path: &Path, id: u32) -> io::Result<()> {
        std::os::unix::fs::chown(path, Some(id), Some(id))
    }

    fn touch(&self, path: &Path) -> io::Result<()> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o644))
    }

    fn symlink(&self, to: &Path, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(to, link)
    }

    fn is_dir(&self, path: &Path) -> Option<bool> {
        std::fs::symlink_metadata(path).ok().map(|m| m.is_dir())
    }

    fn pivot_root(&self, new_root: &Path) -> io::Result<()> {
        nix::unistd::chdir(new_root)?;
        // pivot_root(".", "."): the old root ends up stacked under the new one and is then
        // detached, so no directory for it is needed in the read-only new root.
        nix::unistd::pivot_root(".", ".")?;
        nix::mount::umount2(".", MntFlags::MNT_DETACH)?;
        nix::unistd::chdir("/")?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A recorder standing in for the kernel in unit tests.
    use super::*;
    use std::cell::RefCell;

    #[derive(Debug, Default)]
    pub struct Recorder {
        pub calls: RefCell<Vec<String>>,
        /// Paths that exist as directories (everything else: files; listed in `missing`:
        /// absent).
        pub missing: Vec<String>,
    }

    impl Recorder {
        fn log(&self, s: String) {
            self.calls.borrow_mut().push(s);
        }
    }

    impl Sys for Recorder {
        fn mount(
            &self,
            source: Option<&Path>,
            target: &Path,
            fstype: Option<&str>,
            flags: MsFlags,
            data: Option<&str>,
        ) -> io::Result<()> {
            self.log(format!(
                "mount {:?} {} {:?} {:?} {:?}",
                source.map(|s| s.display().to_string()),
                target.display(),
                fstype,
                flags,
                data
            ));
            Ok(())
        }
        fn set_read_only(&self, target: &Path, recursive: bool) -> io::Result<()> {
            self.log(format!("setattr-ro {} {recursive}", target.display()));
            Ok(())
        }
        fn seal(&self, target: &Path, recursive: bool) -> io::Result<()> {
            self.log(format!("seal {} {recursive}", target.display()));
            Ok(())
        }
        fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()> {
            self.log(format!("mkdir {} {mode:o}", path.display()));
            Ok(())
        }
        fn chown(&self, path: &Path, id: u32) -> io::Result<()> {
            self.log(format!("chown {} {id}", path.display()));
            Ok(())
        }
        fn touch(&self, path: &Path) -> io::Result<()> {
            self.log(format!("touch {}", path.display()));
            Ok(())
        }
        fn symlink(&self, to: &Path, link: &Path) -> io::Result<()> {
            self.log(format!("symlink {} {}", to.display(), link.display()));
            Ok(())
        }
        fn is_dir(&self, path: &Path) -> Option<bool> {
            let s = path.display().to_string();
            if self.missing.iter().any(|m| s.ends_with(m.as_str())) {
                return None;
            }
            Some(!s.contains("kcore") && !s.contains("keys") && !s.ends_with("_list"))
        }
        fn pivot_root(&self, new_root: &Path) -> io::Result<()> {
            self.log(format!("pivot_root {}", new_root.display()));
            Ok(())
        }
    }
}
