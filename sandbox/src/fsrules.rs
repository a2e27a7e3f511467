//! Landlock from the plan's filesystem rules, fail closed: [`enforcement`] decides (purely,
//! from the plan and the kernel's ABI) which rights the ruleset handles; a right the plan
//! requires that the kernel's ABI cannot enforce is an error naming it and the ABI, unless
//! the plan marks it optional. [`restrict`] then applies exactly that set with the crate's
//! hard-requirement mode and insists the kernel enforces all of it, so what the runtime
//! records in `session.json` is what the agent runs under. A rule path that does not exist
//! is an error unless the rule is optional.

use landlock::{
    AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus,
};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::plan::{FsAccess, FsRight, Landlock};

/// The newest ABI this code (and the landlock crate) knows: a newer kernel is used at this
/// ABI.
pub const ABI_KNOWN: u32 = 10;

/// The first Linux release with Landlock ABI `abi` (for messages and `agentd doctor`).
pub fn linux_for_abi(abi: u32) -> &'static str {
    match abi {
        0 | 1 => "5.13",
        2 => "5.19",
        3 => "6.2",
        4 => "6.7",
        5 => "6.10",
        6 => "6.12",
        7 => "6.15",
        8 => "7.0",
        9 => "7.1",
        _ => "7.2",
    }
}

/// What Landlock will enforce for a plan on this kernel (recorded in `session.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enforcement {
    /// The kernel's Landlock ABI (0: Landlock not built or not enabled).
    pub kernel_abi: u32,
    /// The ABI the ruleset is built at (the kernel's, capped at [`ABI_KNOWN`]; 0 when no
    /// ruleset is applied).
    pub abi: u32,
    /// The lowest ABI that enforces every right the plan requires.
    pub min_abi: u32,
    /// Rights the ruleset handles: outside the rules' paths they are denied.
    pub handled: Vec<FsRight>,
    /// Optional rights this kernel cannot enforce: not restricted in this session.
    pub not_enforced: Vec<FsRight>,
}

impl Enforcement {
    /// A one-line statement of what is not enforced, when something is not.
    pub fn gap(&self) -> Option<String> {
        if self.abi == 0 {
            return Some(format!(
                "Landlock is not available on this kernel (ABI {}); the plan marks it \
                 optional: filesystem rights come from the mount layout only",
                self.kernel_abi
            ));
        }
        if self.not_enforced.is_empty() {
            return None;
        }
        Some(format!(
            "Landlock ABI {} cannot enforce {} (optional in the plan): not restricted",
            self.kernel_abi,
            names(&self.not_enforced)
        ))
    }
}

fn names(rights: &[FsRight]) -> String {
    rights
        .iter()
        .map(|r| format!("{r} (ABI {})", r.abi()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The one Landlock ABI probe of the project (the sandbox before each session, and
/// `agentd doctor`): the kernel's answer to `landlock_create_ruleset(NULL, 0, VERSION)`,
/// the errno as is (ENOSYS: not built in; EOPNOTSUPP: not enabled at boot).
pub fn probe_abi() -> std::io::Result<u32> {
    // LANDLOCK_CREATE_RULESET_VERSION: with a NULL attr and size 0 it only returns the ABI.
    const VERSION: libc::c_uint = 1;
    // SAFETY: landlock_create_ruleset with a NULL attribute pointer and size 0 reads no
    // memory and creates nothing; it returns the ABI version or -1 with errno.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            VERSION,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    u32::try_from(r).map_err(|_| std::io::Error::other(format!("unexpected Landlock ABI {r}")))
}

/// The running kernel's Landlock ABI: 0 when Landlock is not built in (ENOSYS) or not
/// enabled at boot (EOPNOTSUPP).
pub fn kernel_abi() -> Result<u32, Error> {
    match probe_abi() {
        Ok(abi) => Ok(abi),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EOPNOTSUPP)) => Ok(0),
        Err(e) => Err(Error::sys("querying the Landlock ABI", e)),
    }
}

/// What the plan's Landlock configuration gets on a kernel of ABI `kernel_abi`, or the
/// error that refuses the session.
pub fn enforcement(cfg: &Landlock, kernel_abi: u32) -> Result<Enforcement, Error> {
    let min_abi = cfg.min_abi();
    if kernel_abi == 0 {
        if cfg.optional {
            return Ok(Enforcement {
                kernel_abi,
                abi: 0,
                min_abi,
                handled: Vec::new(),
                not_enforced: FsRight::ALL.to_vec(),
            });
        }
        return Err(Error::LandlockUnavailable);
    }
    let abi = kernel_abi.min(ABI_KNOWN);
    let (handled, missing): (Vec<FsRight>, Vec<FsRight>) =
        FsRight::ALL.into_iter().partition(|r| r.abi() <= abi);
    let required_missing: Vec<FsRight> = missing
        .iter()
        .copied()
        .filter(|r| !cfg.optional_rights.contains(r))
        .collect();
    if !required_missing.is_empty() {
        return Err(Error::LandlockAbi {
            rights: names(&required_missing),
            kernel_abi,
            min_abi,
            linux: linux_for_abi(min_abi),
        });
    }
    Ok(Enforcement {
        kernel_abi,
        abi,
        min_abi,
        handled,
        not_enforced: missing,
    })
}

fn to_access(r: FsRight) -> AccessFs {
    match r {
        FsRight::Execute => AccessFs::Execute,
        FsRight::WriteFile => AccessFs::WriteFile,
        FsRight::ReadFile => AccessFs::ReadFile,
        FsRight::ReadDir => AccessFs::ReadDir,
        FsRight::RemoveDir => AccessFs::RemoveDir,
        FsRight::RemoveFile => AccessFs::RemoveFile,
        FsRight::MakeChar => AccessFs::MakeChar,
        FsRight::MakeDir => AccessFs::MakeDir,
        FsRight::MakeReg => AccessFs::MakeReg,
        FsRight::MakeSock => AccessFs::MakeSock,
        FsRight::MakeFifo => AccessFs::MakeFifo,
        FsRight::MakeBlock => AccessFs::MakeBlock,
        FsRight::MakeSym => AccessFs::MakeSym,
        FsRight::Refer => AccessFs::Refer,
        FsRight::Truncate => AccessFs::Truncate,
        FsRight::IoctlDev => AccessFs::IoctlDev,
        FsRight::ResolveUnix => AccessFs::ResolveUnix,
    }
}

/// The rights a rule grants, before intersecting with the handled set.
fn granted(access: FsAccess) -> Vec<FsRight> {
    match access {
        FsAccess::ReadExec => vec![FsRight::Execute, FsRight::ReadFile, FsRight::ReadDir],
        FsAccess::ReadWrite => FsRight::ALL.to_vec(),
    }
}

/// Restricts the calling thread (and its future children) as [`enforcement`] decides for
/// this kernel; returns that decision.
pub fn restrict(cfg: &Landlock) -> Result<Enforcement, Error> {
    let enf = enforcement(cfg, kernel_abi()?)?;
    if enf.handled.is_empty() {
        return Ok(enf);
    }
    let e =
        |source: Box<dyn std::error::Error + Send + Sync>| Error::Landlock { path: None, source };
    let at = |path: &std::path::Path, source: Box<dyn std::error::Error + Send + Sync>| {
        Error::Landlock {
            path: Some(path.to_path_buf()),
            source,
        }
    };
    let handled: BitFlags<AccessFs> = enf.handled.iter().map(|r| to_access(*r)).collect();
    // Hard requirement: the crate errors instead of dropping a right it finds unsupported
    // (it cannot, after `enforcement`, unless the kernel lied about its ABI).
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(handled)
        .map_err(|x| e(x.into()))?
        .create()
        .map_err(|x| e(x.into()))?;
    for rule in &cfg.rules {
        let fd = match PathFd::new(&rule.path) {
            Ok(fd) => fd,
            Err(_) if rule.optional => continue,
            Err(x) => return Err(at(&rule.path, x.into())),
        };
        let access: BitFlags<AccessFs> = granted(rule.access)
            .into_iter()
            .filter(|r| enf.handled.contains(r))
            .map(to_access)
            .collect();
        // A file gets only the rights that apply to files (the kernel refuses directory
        // rights beneath a non-directory).
        let access = if std::fs::metadata(&rule.path).is_ok_and(|m| !m.is_dir()) {
            access & AccessFs::from_file(landlock::ABI::V10)
        } else {
            access
        };
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, access))
            .map_err(|x| at(&rule.path, x.into()))?;
    }
    let status = ruleset.restrict_self().map_err(|x| e(x.into()))?;
    if status.ruleset != RulesetStatus::FullyEnforced {
        return Err(Error::LandlockPartial {
            kernel_abi: enf.kernel_abi,
            status: format!("{:?}", status.ruleset),
        });
    }
    Ok(enf)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
    use super::*;
    use crate::plan::SessionPlan;
    use landlock::Access;
    use std::path::Path;

    fn default_landlock() -> Landlock {
        SessionPlan::new(Path::new("/r"), Path::new("/s"), 1 << 30, 1000, 100_000).landlock
    }

    #[test]
    fn the_default_plan_needs_abi_5_and_runs_without_resolve_unix_below_9() {
        let l = default_landlock();
        assert_eq!(l.min_abi(), 5);
        let e = enforcement(&l, 6).unwrap();
        assert_eq!(e.abi, 6);
        assert_eq!(e.not_enforced, vec![FsRight::ResolveUnix]);
        assert!(e.handled.contains(&FsRight::IoctlDev));
        assert!(e.gap().unwrap().contains("resolve_unix (ABI 9)"));
        let e = enforcement(&l, 10).unwrap();
        assert_eq!(e.handled, FsRight::ALL.to_vec());
        assert!(e.not_enforced.is_empty() && e.gap().is_none());
    }

    #[test]
    fn a_required_right_the_kernel_lacks_is_an_error_naming_it_and_the_abi() {
        let mut l = default_landlock();
        l.optional_rights.clear();
        assert_eq!(l.min_abi(), 9);
        let err = enforcement(&l, 6).unwrap_err().to_string();
        assert!(err.contains("resolve_unix (ABI 9)"), "{err}");
        assert!(err.contains("Landlock ABI 6"), "{err}");
        assert!(enforcement(&l, 9).is_ok());
        let err = enforcement(&default_landlock(), 4).unwrap_err().to_string();
        assert!(err.contains("ioctl_dev (ABI 5)"), "{err}");
        assert!(!err.contains("resolve_unix"), "{err}");
    }

    #[test]
    fn no_landlock_is_an_error_unless_the_plan_makes_it_optional() {
        let mut l = default_landlock();
        assert!(enforcement(&l, 0).is_err());
        l.optional = true;
        let e = enforcement(&l, 0).unwrap();
        assert!(e.handled.is_empty());
        assert!(e.gap().unwrap().contains("not available"));
    }

    #[test]
    fn a_newer_kernel_is_used_at_the_known_abi() {
        let e = enforcement(&default_landlock(), 12).unwrap();
        assert_eq!((e.kernel_abi, e.abi), (12, ABI_KNOWN));
    }

    #[test]
    fn rights_and_abis_match_the_landlock_crate() {
        for abi in 1..=ABI_KNOWN {
            let ours: BitFlags<AccessFs> = FsRight::ALL
                .into_iter()
                .filter(|r| r.abi() <= abi)
                .map(to_access)
                .collect();
            let crate_abi = match abi {
                1 => landlock::ABI::V1,
                2 => landlock::ABI::V2,
                3 => landlock::ABI::V3,
                4 => landlock::ABI::V4,
                5 => landlock::ABI::V5,
                6 => landlock::ABI::V6,
                7 => landlock::ABI::V7,
                8 => landlock::ABI::V8,
                9 => landlock::ABI::V9,
                _ => landlock::ABI::V10,
            };
            assert_eq!(ours, AccessFs::from_all(crate_abi), "ABI {abi}");
        }
        for r in FsRight::ALL {
            assert_eq!(FsRight::from_name(r.name()), Some(r));
        }
    }
}
