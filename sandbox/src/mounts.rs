//! Performs the plan's mount [`Step`]s through the [`Sys`] seam, in order, stopping at the
//! first failure with the step named in the error.

use std::path::Path;

use nix::mount::MsFlags;

use crate::Error;
use crate::plan::Step;
use crate::sys::Sys;

/// Apply `steps` in order.
pub fn apply(sys: &dyn Sys, steps: &[Step]) -> Result<(), Error> {
    for step in steps {
        apply_one(sys, step).map_err(|source| Error::Step {
            step: step.to_string(),
            source,
        })?;
    }
    Ok(())
}

fn apply_one(sys: &dyn Sys, step: &Step) -> std::io::Result<()> {
    let safe = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    match step {
        Step::MakePrivate => sys.mount(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None,
        ),
        Step::BindRoot { source, target } => sys.mount(
            Some(source),
            target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        ),
        Step::ReadOnly { target, recursive } => {
            if !*recursive {
                // A path that is not a mount of its own (/proc/sys) becomes one first, so
                // the attribute applies to it alone.
                if sys.is_dir(target).is_none() {
                    return Ok(());
                }
                sys.mount(Some(target), target, None, MsFlags::MS_BIND, None)?;
            }
            sys.set_read_only(target, *recursive)
        }
        Step::Tmpfs {
            target,
            mode,
            size_bytes,
            read_only,
        } => {
            let mut data = format!("mode={mode:o}");
            if let Some(s) = size_bytes {
                data.push_str(&format!(",size={s}"));
            }
            let mut flags = safe;
            if *read_only {
                flags |= MsFlags::MS_RDONLY;
            }
            sys.mount(
                Some(Path::new("tmpfs")),
                target,
                Some("tmpfs"),
                flags,
                Some(&data),
            )
        }
        Step::MkdirAll { path, mode, owner } => {
            sys.mkdir_all(path, *mode)?;
            if let Some(id) = owner {
                sys.chown(path, *id)?;
            }
            Ok(())
        }
        Step::Overlay {
            lower,
            upper,
            work,
            target,
        } => {
            // userxattr: overlay metadata in user.* xattrs, as required in a user namespace.
            let data = format!(
                "lowerdir={},upperdir={},workdir={},userxattr",
                lower.display(),
                upper.display(),
                work.display()
            );
            sys.mount(
                Some(Path::new("overlay")),
                target,
                Some("overlay"),
                safe,
                Some(&data),
            )
        }
        Step::Proc { target } => sys.mount(
            Some(Path::new("proc")),
            target,
            Some("proc"),
            safe | MsFlags::MS_NOEXEC,
            None,
        ),
        Step::BindFile { source, target } => {
            sys.touch(target)?;
            sys.mount(Some(source), target, None, MsFlags::MS_BIND, None)
        }
        Step::BindRo {
            source,
            target,
            create,
        } => bind_ro(sys, source, target, *create),
        // A bind keeps the source mount's flags: the layer is mounted nosuid,nodev.
        Step::Bind { source, target } => {
            sys.mount(Some(source), target, None, MsFlags::MS_BIND, None)
        }
        Step::Symlink { to, link } => sys.symlink(to, link),
        Step::Devpts { target } => {
            sys.mkdir_all(target, 0o755)?;
            sys.mount(
                Some(Path::new("devpts")),
                target,
                Some("devpts"),
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                Some("newinstance,ptmxmode=0666,mode=0620"),
            )
        }
        Step::Mask { target } => match sys.is_dir(target) {
            None => Ok(()),
            Some(true) => sys.mount(
                Some(Path::new("tmpfs")),
                target,
                Some("tmpfs"),
                safe | MsFlags::MS_RDONLY,
                Some("size=0k,mode=0755"),
            ),
            Some(false) => sys.mount(
                Some(Path::new("/dev/null")),
                target,
                None,
                MsFlags::MS_BIND,
                None,
            ),
        },
        Step::PivotRoot { new_root } => sys.pivot_root(new_root),
    }
}

/// A read-only bind (see [`Step::BindRo`]): recursive, because a non-recursive bind of a
/// subtree holding locked submounts (the host's, inside our user namespace) is refused; then
/// read-only, nosuid and nodev on the whole bound tree.
fn bind_ro(sys: &dyn Sys, source: &Path, target: &Path, create: bool) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind};
    let src_dir = sys.is_dir(source).ok_or_else(|| {
        Error::new(
            ErrorKind::NotFound,
            format!(
                "source {} does not exist (or container root cannot reach it)",
                source.display()
            ),
        )
    })?;
    if create {
        if src_dir {
            sys.mkdir_all(target, 0o755)?;
        } else {
            if let Some(parent) = target.parent() {
                sys.mkdir_all(parent, 0o755)?;
            }
            sys.touch(target)?;
        }
    }
    match sys.is_dir(target) {
        None => {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "destination {} does not exist in the read-only root (destinations are \
                     created only under the container's own tmpfs: /tmp, /run, /home)",
                    target.display()
                ),
            ));
        }
        Some(d) if d != src_dir => {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "destination {} is a {} but the source is a {}",
                    target.display(),
                    if d { "directory" } else { "file" },
                    if src_dir { "directory" } else { "file" }
                ),
            ));
        }
        Some(_) => {}
    }
    sys.mount(
        Some(source),
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    sys.seal(target, true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
    use super::*;
    use crate::plan::SessionPlan;
    use crate::sys::fake::Recorder;

    fn plan() -> SessionPlan {
        crate::plan::example("/st")
    }

    #[test]
    fn steps_map_to_the_expected_syscalls() {
        let rec = Recorder {
            missing: vec!["/proc/scsi".into()],
            ..Default::default()
        };
        apply(&rec, &plan().mount_steps()).unwrap();
        let calls = rec.calls.borrow();
        let has = |s: &str| calls.iter().any(|c| c == s);
        assert_eq!(
            calls[0],
            "mount None / None MsFlags(MS_REC | MS_PRIVATE) None"
        );
        assert!(has("setattr-ro /st/rootfs true"));
        assert!(has(
            "mount Some(\"overlay\") /st/rootfs/srv/repo Some(\"overlay\") MsFlags(MS_NOSUID | MS_NODEV) Some(\"lowerdir=/srv/repo,upperdir=/st/layer/upper,workdir=/st/layer/work,userxattr\")"
        ));
        // kcore is a file: /dev/null bound over it; acpi a directory: empty ro tmpfs.
        assert!(has(
            "mount Some(\"/dev/null\") /st/rootfs/proc/kcore None MsFlags(MS_BIND) None"
        ));
        assert!(calls.iter().any(
            |c| c.starts_with("mount Some(\"tmpfs\") /st/rootfs/proc/acpi")
                && c.contains("MS_RDONLY")
        ));
        // A missing masked path is skipped, not an error.
        assert!(!calls.iter().any(|c| c.contains("/proc/scsi")));
        // /proc/sys: bound onto itself, then read-only without recursion.
        let b = calls
            .iter()
            .position(|c| c == "mount Some(\"/st/rootfs/proc/sys\") /st/rootfs/proc/sys None MsFlags(MS_BIND) None")
            .unwrap();
        assert_eq!(calls[b + 1], "setattr-ro /st/rootfs/proc/sys false");
        assert!(has("chown /st/rootfs/home/agent 1000"));
        // /tmp and /home are the layer's (on the disk quota), /run a small tmpfs.
        assert!(has(
            "mount Some(\"/st/layer/tmp\") /st/rootfs/tmp None MsFlags(MS_BIND) None"
        ));
        assert!(
            calls
                .iter()
                .any(|c| c.starts_with("mount Some(\"tmpfs\") /st/rootfs/run ")
                    && c.contains("size=67108864"))
        );
        assert_eq!(calls.last().unwrap(), "pivot_root /st/rootfs");
    }

    #[test]
    fn a_read_only_bind_is_created_bound_recursively_and_sealed() {
        let rec = Recorder::default();
        let step = Step::BindRo {
            source: "/usr/lib/agentd".into(),
            target: "/st/rootfs/run/agentd/lib".into(),
            create: true,
        };
        apply(&rec, &[step]).unwrap();
        assert_eq!(
            *rec.calls.borrow(),
            vec![
                "mkdir /st/rootfs/run/agentd/lib 755".to_owned(),
                "mount Some(\"/usr/lib/agentd\") /st/rootfs/run/agentd/lib None MsFlags(MS_BIND | MS_REC) None".to_owned(),
                "seal /st/rootfs/run/agentd/lib true".to_owned(),
            ]
        );
    }

    #[test]
    fn a_read_only_bind_names_a_missing_source_or_destination() {
        let rec = Recorder {
            missing: vec!["/gone".into()],
            ..Default::default()
        };
        let step = |s: &str, t: &str| Step::BindRo {
            source: s.into(),
            target: t.into(),
            create: false,
        };
        let err = apply(&rec, &[step("/gone", "/st/rootfs/opt/x")]).unwrap_err();
        assert!(
            err.to_string().contains("source /gone does not exist"),
            "{err}"
        );
        let err = apply(&rec, &[step("/usr/x", "/st/rootfs/opt/gone")]).unwrap_err();
        assert!(
            err.to_string()
                .contains("destination /st/rootfs/opt/gone does not exist"),
            "{err}"
        );
        assert!(rec.calls.borrow().iter().all(|c| !c.starts_with("mount")));
    }

    #[test]
    fn a_failing_step_is_named_in_the_error() {
        struct Failing;
        impl Sys for Failing {
            fn mount(
                &self,
                _: Option<&Path>,
                t: &Path,
                _: Option<&str>,
                _: MsFlags,
                _: Option<&str>,
            ) -> std::io::Result<()> {
                if t.ends_with("run") {
                    return Err(std::io::Error::from_raw_os_error(libc::EPERM));
                }
                Ok(())
            }
            fn set_read_only(&self, _: &Path, _: bool) -> std::io::Result<()> {
                Ok(())
            }
            fn seal(&self, _: &Path, _: bool) -> std::io::Result<()> {
                Ok(())
            }
            fn mkdir_all(&self, _: &Path, _: u32) -> std::io::Result<()> {
                Ok(())
            }
            fn chown(&self, _: &Path, _: u32) -> std::io::Result<()> {
                Ok(())
            }
            fn touch(&self, _: &Path) -> std::io::Result<()> {
                Ok(())
            }
            fn symlink(&self, _: &Path, _: &Path) -> std::io::Result<()> {
                Ok(())
            }
            fn is_dir(&self, _: &Path) -> Option<bool> {
                Some(true)
            }
            fn pivot_root(&self, _: &Path) -> std::io::Result<()> {
                Ok(())
            }
        }
        let err = apply(&Failing, &plan().mount_steps()).unwrap_err();
        assert!(err.to_string().contains("tmpfs /st/rootfs/run"), "{err}");
    }
}
