//! The Landlock row: the kernel's ABI measured against what the default session plan
//! requires (`agentd_sandbox::fsrules::enforcement`, the same decision the sandbox makes
//! before it starts a session), naming every right the kernel cannot enforce.

use agentd_sandbox::fsrules::{self, Enforcement};
use agentd_sandbox::plan::{Landlock, default_optional_rights};

use super::Check;
use super::probes::{degraded, missing, row};

/// The default plan's Landlock requirements (its rules do not matter here, only rights).
fn default_requirements() -> Landlock {
    Landlock {
        rules: Vec::new(),
        optional: false,
        optional_rights: default_optional_rights(),
    }
}

/// The row for a kernel whose Landlock ABI query gave `abi`.
pub(super) fn check(abi: Result<u32, String>) -> Check {
    let c = row("landlock", true);
    let need = default_requirements();
    let fix = format!(
        "use Linux {}+ (Landlock ABI {}) with CONFIG_SECURITY_LANDLOCK and landlock in lsm=",
        fsrules::linux_for_abi(need.min_abi()),
        need.min_abi()
    );
    let abi = match abi {
        Ok(a) => a,
        Err(e) => {
            return missing(
                c,
                format!("Landlock unavailable ({e}); the default session plan requires it"),
                &fix,
            );
        }
    };
    match fsrules::enforcement(&need, abi) {
        Err(e) => missing(c, format!("Landlock ABI {abi}: {e}"), &fix),
        Ok(Enforcement {
            not_enforced,
            abi: used,
            ..
        }) if not_enforced.is_empty() => Check {
            detail: if used < abi {
                format!(
                    "Landlock ABI {abi}: every filesystem right up to ABI {used} (the newest \
                     this build knows) is enforced"
                )
            } else {
                format!("Landlock ABI {abi}: every filesystem right is enforced")
            },
            ..c
        },
        Ok(Enforcement { not_enforced, .. }) => {
            let names: Vec<String> = not_enforced
                .iter()
                .map(|r| format!("{r} (ABI {})", r.abi()))
                .collect();
            let newest = not_enforced.iter().map(|r| r.abi()).max().unwrap_or(abi);
            degraded(
                c,
                format!("Landlock ABI {abi} cannot enforce {}", names.join(", ")),
                "sessions run without these rights (optional in the default plan; said on \
                 stderr and recorded in session.json); the mount layout hides the host's \
                 /run and /tmp sockets",
                &format!(
                    "use Linux {}+ (Landlock ABI {newest})",
                    fsrules::linux_for_abi(newest)
                ),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
    use super::*;
    use crate::doctor::Status;

    #[test]
    fn every_right_enforced_is_available() {
        let c = check(Ok(10));
        assert_eq!(c.status, Status::Available);
        assert!(c.required);
        assert!(c.detail.contains("ABI 10"), "{}", c.detail);
        let c = check(Ok(11));
        assert_eq!(c.status, Status::Available);
        assert!(c.detail.contains("up to ABI 10"), "{}", c.detail);
    }

    #[test]
    fn the_fallback_kernel_names_the_right_it_cannot_enforce() {
        let c = check(Ok(6));
        assert_eq!(c.status, Status::Degraded);
        assert_eq!(
            c.detail,
            "Landlock ABI 6 cannot enforce resolve_unix (ABI 9)"
        );
        assert_eq!(c.fix.as_deref(), Some("use Linux 7.1+ (Landlock ABI 9)"));
    }

    #[test]
    fn too_old_or_absent_landlock_blocks_the_default_session() {
        let c = check(Ok(4));
        assert_eq!(c.status, Status::Missing);
        assert!(c.detail.contains("ioctl_dev (ABI 5)"), "{}", c.detail);
        assert!(c.fix.unwrap().contains("Linux 6.10+"));
        let c = check(Err("Operation not supported".into()));
        assert_eq!(c.status, Status::Missing);
        assert!(c.detail.contains("requires it"));
    }
}
