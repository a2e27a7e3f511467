//! Landlock from the plan's filesystem rules, at the best ABI the kernel has (the crate's
//! best-effort mode drops only access rights the kernel does not know). Not silent: a
//! ruleset the kernel does not enforce at all, or a rule path that does not exist, is an
//! error unless the plan marks it optional.

use landlock::{
    ABI, Access, AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus,
};

use crate::Error;
use crate::plan::{FsAccess, Landlock};

/// The newest ABI this crate knows; older kernels get the subset they support.
const ABI_TARGET: ABI = ABI::V10;

/// How the ruleset ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every requested right is enforced.
    Full,
    /// Enforced, without rights newer than the kernel's ABI.
    Partial,
    /// Not enforced (only allowed when the plan says optional).
    NotEnforced,
}

/// Restricts the calling thread (and its future children).
pub fn restrict(cfg: &Landlock) -> Result<Outcome, Error> {
    let e = |what: String| Error::Landlock(what);
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(ABI_TARGET))
        .map_err(|x| e(x.to_string()))?
        .create()
        .map_err(|x| e(x.to_string()))?;
    for rule in &cfg.rules {
        let fd = match PathFd::new(&rule.path) {
            Ok(fd) => fd,
            Err(_) if rule.optional => continue,
            Err(x) => return Err(e(format!("{}: {x}", rule.path.display()))),
        };
        let access = match rule.access {
            FsAccess::ReadExec => AccessFs::from_read(ABI_TARGET),
            FsAccess::ReadWrite => AccessFs::from_all(ABI_TARGET),
        };
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, access))
            .map_err(|x| e(format!("{}: {x}", rule.path.display())))?;
    }
    let status = ruleset.restrict_self().map_err(|x| e(x.to_string()))?;
    let outcome = match status.ruleset {
        RulesetStatus::FullyEnforced => Outcome::Full,
        RulesetStatus::PartiallyEnforced => Outcome::Partial,
        RulesetStatus::NotEnforced => Outcome::NotEnforced,
    };
    if outcome == Outcome::NotEnforced && !cfg.optional {
        return Err(e(
            "the kernel does not enforce Landlock (not in the LSM list?) and the plan requires it"
                .into(),
        ));
    }
    Ok(outcome)
}
