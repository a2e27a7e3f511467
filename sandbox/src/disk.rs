//! The session layer on disk: each session's overlay upper and work dirs, and its `/tmp`
//! and `/home`, live on a filesystem of their own — a sparse image file `layer.img` in the
//! session's state dir, formatted ext4 and mounted through a loop device at `layer/`.
//!
//! Why this mechanism (measured; docs/layer.md): the image's size *is* the quota, exact on
//! every write path inside (copy-up, /tmp, /home: ENOSPC from the kernel at the image's
//! end), independent of the host filesystem (no `prjquota` mount option to ask of the
//! host), persistent (the image file survives a daemon restart and a reboot, and is
//! mounted again by [`mount_existing`]), and its pages are ordinary reclaimable page cache,
//! not shmem: a session writing 1 GiB of build output is not charged 1 GiB of memory it
//! cannot give back. The loop device runs with direct I/O where the backing filesystem
//! allows it, so the image's blocks are not cached twice (once in the inner filesystem,
//! once in the backing file). Setup is one `mkfs.ext4` of a sparse file (lazy inode tables
//! and journal: milliseconds) plus one `LOOP_CONFIGURE`.
//!
//! Fail closed: without `/dev/loop-control`, a free loop device or `mkfs.ext4`, the
//! session is refused with a [`DiskError`] that says what is missing; `agentd doctor` has
//! a row for it ([`probe`]).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{MntFlags, MsFlags};

/// The image file in the state dir.
pub const IMAGE: &str = "layer.img";
/// The image's mount point in the state dir.
pub const LAYER: &str = "layer";
/// The smallest quota the image can hold (ext4 needs room for its own metadata).
pub const MIN_BYTES: u64 = 1 << 20;
/// Where `mkfs.ext4` is looked for (the daemon's PATH under systemd may lack sbin).
pub const MKFS: &[&str] = &[
    "/usr/sbin/mkfs.ext4",
    "/sbin/mkfs.ext4",
    "/usr/bin/mkfs.ext4",
];

/// Why the on-disk session layer could not be set up or mounted.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// A file operation on the image or its mount point failed.
    #[error("session disk: {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// No `mkfs.ext4` on this host.
    #[error(
        "session disk: mkfs.ext4 not found (looked in {searched}): the session layer is an \
         ext4 image, install e2fsprogs"
    )]
    NoMkfs {
        /// The paths looked at.
        searched: String,
    },
    /// `mkfs.ext4` failed.
    #[error("session disk: mkfs.ext4 {path} failed ({status}): {stderr}")]
    Mkfs {
        /// The image.
        path: PathBuf,
        /// Its exit status.
        status: String,
        /// What it said.
        stderr: String,
    },
    /// No loop device could be had.
    #[error(
        "session disk: no loop device for {path}: {detail} (the session layer is an image \
         on a loop device: load the `loop` module, check /dev/loop-control)"
    )]
    NoLoop {
        /// The image.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// The quota cannot hold a filesystem.
    #[error("session disk: quota {bytes} bytes is below the minimum of {MIN_BYTES}")]
    TooSmall {
        /// The quota asked for.
        bytes: u64,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DiskError + 'a {
    move |source| DiskError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// `state/layer.img`.
pub fn image_path(state: &Path) -> PathBuf {
    state.join(IMAGE)
}

/// `state/layer`: where the image is mounted (upper, work, tmp, home live in it).
pub fn layer_dir(state: &Path) -> PathBuf {
    state.join(LAYER)
}

/// Whether `dir` is a mount point (its device differs from its parent's).
pub fn is_mounted(dir: &Path) -> bool {
    let (Ok(d), Some(Ok(p))) = (
        std::fs::symlink_metadata(dir),
        dir.parent().map(std::fs::symlink_metadata),
    ) else {
        return false;
    };
    d.is_dir() && d.dev() != p.dev()
}

/// The `mkfs.ext4` of this host.
fn mkfs_path() -> Result<&'static Path, DiskError> {
    MKFS.iter()
        .map(Path::new)
        .find(|p| p.exists())
        .ok_or_else(|| DiskError::NoMkfs {
            searched: MKFS.join(", "),
        })
}

/// Creates `state/layer.img` of `bytes` (sparse), formats it and mounts it at
/// `state/layer` (nosuid, nodev). The state dir must exist. On error nothing is left
/// mounted (the image file may remain; [`unmount`] and removing the state dir clean up).
pub fn create(state: &Path, bytes: u64) -> Result<(), DiskError> {
    if bytes < MIN_BYTES {
        return Err(DiskError::TooSmall { bytes });
    }
    let mkfs = mkfs_path()?;
    let image = image_path(state);
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&image)
        .map_err(io("create", &image))?;
    f.set_len(bytes).map_err(io("truncate", &image))?;
    drop(f);
    // Lazy inode tables and journal: the file is sparse, so they read as zeros already
    // (the kernel is told not to zero them later either: `noinit_itable`). No reserved
    // blocks: the whole quota is the session's.
    let out = Command::new(mkfs)
        .args([
            "-q",
            "-F",
            "-m",
            "0",
            "-L",
            "agentd-layer",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
        ])
        .arg(&image)
        .output()
        .map_err(io("run mkfs.ext4 on", &image))?;
    if !out.status.success() {
        return Err(DiskError::Mkfs {
            path: image,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    mount_image(state)
}

/// Mounts the image of a state dir whose layer is not mounted (after a reboot, or when
/// the host went down with the session): `Ok(true)` when it mounted it, `Ok(false)` when
/// there is no image or it is mounted already.
pub fn mount_existing(state: &Path) -> Result<bool, DiskError> {
    if !image_path(state).is_file() || is_mounted(&layer_dir(state)) {
        return Ok(false);
    }
    mount_image(state).map(|()| true)
}

fn mount_image(state: &Path) -> Result<(), DiskError> {
    let image = image_path(state);
    let dir = layer_dir(state);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io("mkdir", &dir)(e)),
    }
    // The loop device stays open until the mount holds it: with AUTOCLEAR it detaches
    // itself when its last user (the mount) goes, so nothing has to remember it.
    let (dev, path) = loop_attach(&image)?;
    nix::mount::mount(
        Some(&path),
        &dir,
        Some("ext4"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("noinit_itable"),
    )
    .map_err(|e| DiskError::Io {
        what: "mount the image on",
        path: dir.clone(),
        source: e.into(),
    })?;
    drop(dev);
    Ok(())
}

/// Unmounts `state/layer` (lazily: a session's mount namespace may still hold it; the
/// loop device detaches when the last holder goes). A layer not mounted is fine.
pub fn unmount(state: &Path) -> Result<(), DiskError> {
    let dir = layer_dir(state);
    if !is_mounted(&dir) {
        return Ok(());
    }
    match nix::mount::umount2(&dir, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(DiskError::Io {
            what: "umount",
            path: dir,
            source: e.into(),
        }),
    }
}

// <linux/loop.h>
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;

/// `struct loop_info64`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Attaches `image` to a free loop device (AUTOCLEAR, direct I/O where the backing
/// filesystem allows it); returns the open device and its path.
fn loop_attach(image: &Path) -> Result<(File, PathBuf), DiskError> {
    let no_loop = |detail: String| DiskError::NoLoop {
        path: image.to_path_buf(),
        detail,
    };
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/loop-control")
        .map_err(|e| no_loop(format!("open /dev/loop-control: {e}")))?;
    let backing = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(image)
        .map_err(io("open", image))?;
    // Another process may take the free device between GET_FREE and CONFIGURE (EBUSY):
    // ask again.
    let mut last = String::new();
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(no_loop(format!(
                "LOOP_CTL_GET_FREE: {}",
                std::io::Error::last_os_error()
            )));
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| no_loop(format!("open {}: {e}", path.display())))?;
        // Direct I/O first; a backing filesystem without it (tmpfs on older kernels)
        // refuses the flag on some kernels: then buffered.
        let mut errno = None;
        for flags in [LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO, LO_FLAGS_AUTOCLEAR] {
            let cfg = loop_config(backing.as_raw_fd(), flags, image);
            // SAFETY: LOOP_CONFIGURE reads one `struct loop_config`, which `cfg` is
            // (repr(C), the kernel's layout), alive for the call.
            let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &cfg) };
            if r == 0 {
                return Ok((dev, path));
            }
            let e = std::io::Error::last_os_error();
            last = format!("LOOP_CONFIGURE {}: {e}", path.display());
            errno = e.raw_os_error();
            if errno != Some(libc::EINVAL) {
                break;
            }
        }
        if errno != Some(libc::EBUSY) {
            return Err(no_loop(last));
        }
    }
    Err(no_loop(last))
}

fn loop_config(fd: i32, flags: u32, image: &Path) -> LoopConfig {
    let mut name = [0u8; 64];
    let bytes = image.as_os_str().as_encoded_bytes();
    let n = bytes.len().min(63);
    name[..n].copy_from_slice(&bytes[..n]);
    LoopConfig {
        fd: fd as u32,
        block_size: 0,
        info: LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: flags,
            lo_file_name: name,
            lo_crypt_name: [0; 64],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        },
        reserved: [0; 8],
    }
}

/// Whether this host can give sessions an on-disk layer, for `doctor`: `Ok(detail)` or
/// the reason it cannot (a session would be refused with it).
pub fn probe() -> Result<String, String> {
    let mkfs = mkfs_path().map_err(|e| e.to_string())?;
    let ctl = Path::new("/dev/loop-control");
    if let Err(e) = OpenOptions::new().read(true).write(true).open(ctl) {
        return Err(format!(
            "cannot open {}: {e} (load the `loop` module)",
            ctl.display()
        ));
    }
    Ok(format!(
        "a sparse ext4 image per session on a loop device ({})",
        mkfs.display()
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code
    use super::*;

    #[test]
    fn the_loop_structures_have_the_kernels_layout() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 8 + 232 + 64);
    }

    #[test]
    fn a_quota_too_small_is_refused_before_anything_is_created() {
        let d = tempfile::tempdir().unwrap();
        let e = create(d.path(), 4096).unwrap_err();
        assert!(matches!(e, DiskError::TooSmall { bytes: 4096 }), "{e}");
        assert!(!image_path(d.path()).exists());
    }

    #[test]
    fn a_plain_directory_is_not_a_mount_point() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(layer_dir(d.path())).unwrap();
        assert!(!is_mounted(&layer_dir(d.path())));
        assert!(!is_mounted(&d.path().join("missing")));
        assert!(
            !mount_existing(d.path()).unwrap(),
            "no image: nothing to mount"
        );
    }
}
