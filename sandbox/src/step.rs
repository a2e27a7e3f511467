//! The mount-namespace setup steps a [`crate::SessionPlan`] turns into
//! ([`crate::SessionPlan::mount_steps`]) and their display form (what `agentd-sandbox plan`
//! prints, what the golden test compares, what a failing step's error names).

use std::fmt;
use std::path::PathBuf;

/// One mount-namespace setup step, performed in order by the container init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `mount --make-rprivate /`.
    MakePrivate,
    /// `mount --rbind source target`.
    BindRoot {
        /// The root to bind: `/` (the host root) or a bundle's rootfs.
        source: PathBuf,
        /// Mount point (the rootfs dir).
        target: PathBuf,
    },
    /// Bind `target` onto itself if needed and set MOUNT_ATTR_RDONLY (recursively or not).
    ReadOnly {
        /// The mount (or path, bound onto itself first when not recursive).
        target: PathBuf,
        /// Apply to all submounts.
        recursive: bool,
    },
    /// A tmpfs (nosuid,nodev).
    Tmpfs {
        /// Mount point.
        target: PathBuf,
        /// Root directory mode.
        mode: u32,
        /// `size=` (None: the kernel default of half the RAM).
        size_bytes: Option<u64>,
        /// Mounted read-only (an empty mask).
        read_only: bool,
    },
    /// `mkdir -p`, optionally chown to an inside uid/gid.
    MkdirAll {
        /// Directory.
        path: PathBuf,
        /// Mode of created dirs.
        mode: u32,
        /// Inside uid (= gid) to own the last component.
        owner: Option<u32>,
    },
    /// overlayfs (userxattr: it is mounted inside a user namespace).
    Overlay {
        /// Read-only lower layer (the repo).
        lower: PathBuf,
        /// Upper layer.
        upper: PathBuf,
        /// Work dir.
        work: PathBuf,
        /// Mount point.
        target: PathBuf,
    },
    /// procfs (nosuid,nodev,noexec) for the container's pid namespace.
    Proc {
        /// Mount point.
        target: PathBuf,
    },
    /// Create an empty file at `target` and bind `source` onto it.
    BindFile {
        /// Host file.
        source: PathBuf,
        /// File inside.
        target: PathBuf,
    },
    /// Bind a host file or directory (recursively) read-only, nosuid, nodev. With `create`
    /// the destination (a file or directory like the source) and its parents are made
    /// first; otherwise it must exist.
    BindRo {
        /// Host path.
        source: PathBuf,
        /// Destination (pre-pivot path).
        target: PathBuf,
        /// Create the destination (it is on the container's own tmpfs).
        create: bool,
    },
    /// Bind a host directory writable (nosuid, nodev): the session layer's `tmp/` and
    /// `home/` at /tmp and /home.
    Bind {
        /// Host directory.
        source: PathBuf,
        /// Destination (pre-pivot path; a mount point of the read-only root).
        target: PathBuf,
    },
    /// `ln -s to link`.
    Symlink {
        /// Link contents.
        to: PathBuf,
        /// Link path.
        link: PathBuf,
    },
    /// A new devpts instance (ptmxmode=0666).
    Devpts {
        /// Mount point.
        target: PathBuf,
    },
    /// Mask: /dev/null over a file, an empty read-only tmpfs over a directory; a path that
    /// does not exist is skipped (it cannot be reached either).
    Mask {
        /// Path.
        target: PathBuf,
    },
    /// pivot_root into `new_root`, detach the old root, chdir /.
    PivotRoot {
        /// The new root.
        new_root: PathBuf,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::MakePrivate => write!(f, "make-rprivate /"),
            Step::BindRoot { source, target } => {
                write!(f, "rbind {} {}", source.display(), target.display())
            }
            Step::ReadOnly { target, recursive } => write!(
                f,
                "read-only{} {}",
                if *recursive { " -R" } else { "" },
                target.display()
            ),
            Step::Tmpfs {
                target,
                mode,
                size_bytes,
                read_only,
            } => {
                write!(f, "tmpfs {} mode={mode:o}", target.display())?;
                if let Some(s) = size_bytes {
                    write!(f, " size={s}")?;
                }
                if *read_only {
                    write!(f, " ro")?;
                }
                Ok(())
            }
            Step::MkdirAll { path, mode, owner } => {
                write!(f, "mkdir -p {} mode={mode:o}", path.display())?;
                if let Some(o) = owner {
                    write!(f, " owner={o}")?;
                }
                Ok(())
            }
            Step::Overlay {
                lower,
                upper,
                work,
                target,
            } => write!(
                f,
                "overlay {} lower={} upper={} work={}",
                target.display(),
                lower.display(),
                upper.display(),
                work.display()
            ),
            Step::Proc { target } => write!(f, "proc {}", target.display()),
            Step::BindFile { source, target } => {
                write!(f, "bind-file {} {}", source.display(), target.display())
            }
            Step::BindRo {
                source,
                target,
                create,
            } => {
                write!(f, "bind-ro {} {}", source.display(), target.display())?;
                if *create {
                    write!(f, " create")?;
                }
                Ok(())
            }
            Step::Bind { source, target } => {
                write!(f, "bind {} {}", source.display(), target.display())
            }
            Step::Symlink { to, link } => {
                write!(f, "symlink {} -> {}", link.display(), to.display())
            }
            Step::Devpts { target } => write!(f, "devpts {}", target.display()),
            Step::Mask { target } => write!(f, "mask {}", target.display()),
            Step::PivotRoot { new_root } => write!(f, "pivot_root {}", new_root.display()),
        }
    }
}
