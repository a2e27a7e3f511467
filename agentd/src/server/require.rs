//! `require = [...]`: a policy's required mechanisms, checked at session start against the
//! doctor's probe of this host. The probe runs once per daemon, the first time a policy
//! requires anything (it loads BPF programs and asks the kernel; hosts do not change
//! mechanisms under a running daemon), and is kept keyed by the policy's [`Mechanism`].
//! A required mechanism that is not fully available (missing, or degraded to a fallback)
//! refuses the session, naming the mechanism, the policy line that requires it and the
//! doctor's reason: a requirement is an error, never a downgrade.

use std::collections::BTreeMap;

use agentd_policy::{Mechanism, Plan};

use crate::doctor::{Check, Status};

/// The doctor's rows by mechanism.
pub type Probe = BTreeMap<Mechanism, Check>;

/// Keys the doctor's report by the policy's mechanism names (`Mechanism::ALL` spells
/// them as the doctor's rows do).
pub fn probe_from(report: &crate::doctor::Report) -> Probe {
    Mechanism::ALL
        .iter()
        .filter_map(|(name, m)| report.check(name).map(|c| (*m, c.clone())))
        .collect()
}

/// Probes this host (once; see the module header).
pub fn host_probe() -> &'static Probe {
    static PROBE: std::sync::OnceLock<Probe> = std::sync::OnceLock::new();
    PROBE.get_or_init(|| probe_from(&crate::doctor::run(&crate::doctor::RealHost::default())))
}

/// Why a session's requirements are not met: one line per unmet mechanism (the session
/// is then refused with [`super::ApiError::RequireUnmet`]).
pub fn unmet(plan: &Plan, probe: &Probe) -> Option<Vec<String>> {
    let lines: Vec<String> = plan
        .require
        .iter()
        .filter_map(|r| {
            let name = Mechanism::ALL
                .iter()
                .find(|(_, m)| *m == r.value)
                .map_or("?", |(n, _)| n);
            let why = match probe.get(&r.value) {
                Some(c) if c.status == Status::Available => return None,
                Some(c) => {
                    let status = match c.status {
                        Status::Degraded => "degraded",
                        _ => "missing",
                    };
                    format!("{status} on this host: {}", c.detail)
                }
                None => "not probed by this build's doctor".to_owned(),
            };
            Some(format!("{name} (required by {}): {why}", r.origin))
        })
        .collect();
    (!lines.is_empty()).then_some(lines)
}

/// Whether this kernel's seccomp offers user notification (exec capture, docs/capture.md).
pub fn user_notif() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail")
        .is_ok_and(|s| s.split_whitespace().any(|a| a == "user_notif"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
    use super::*;
    use crate::api::PolicySource;

    fn plan(require: &str) -> Plan {
        let src = PolicySource {
            name: "repo/.agentd/policy.toml".into(),
            text: format!("version = 1\nrequire = {require}\n"),
        };
        crate::server::sessions::resolve_policy(
            Some(std::path::Path::new("/nonexistent/agentd/policy.toml")),
            Some(&src),
        )
        .unwrap()
    }

    fn check(mechanism: &'static str, status: Status, detail: &str) -> Check {
        Check {
            mechanism,
            status,
            detail: detail.into(),
            fallback: None,
            fix: None,
            required: false,
        }
    }

    fn probe(sched_ext: Status) -> Probe {
        let mut p = Probe::new();
        p.insert(
            Mechanism::SchedExt,
            check("sched_ext", sched_ext, "CONFIG_SCHED_CLASS_EXT is not set"),
        );
        p.insert(
            Mechanism::Landlock,
            check("landlock", Status::Available, "ABI 7"),
        );
        p
    }

    #[test]
    fn a_required_mechanism_the_host_lacks_is_named_with_its_line() {
        let p = plan(r#"["landlock", "sched_ext"]"#);
        for status in [Status::Missing, Status::Degraded] {
            let why = unmet(&p, &probe(status)).unwrap().join("\n");
            assert!(why.contains("sched_ext (required by repo policy"), "{why}");
            assert!(why.contains("policy.toml:2:"), "{why}");
            assert!(why.contains("CONFIG_SCHED_CLASS_EXT"), "{why}");
            assert!(!why.contains("landlock ("), "{why}");
        }
        assert_eq!(unmet(&p, &probe(Status::Available)), None);
    }

    #[test]
    fn nothing_required_needs_no_probe_and_an_unprobed_one_is_refused() {
        assert_eq!(unmet(&plan("[]"), &Probe::new()), None);
        let why = unmet(&plan(r#"["bpf_lsm"]"#), &probe(Status::Available))
            .unwrap()
            .join("\n");
        assert!(
            why.contains("bpf_lsm") && why.contains("not probed"),
            "{why}"
        );
    }

    #[test]
    fn the_doctor_report_is_keyed_by_the_policy_mechanisms() {
        let report = crate::doctor::Report {
            kernel: "6.12".into(),
            checks: vec![
                check("sched_ext", Status::Degraded, "no"),
                check("psi", Status::Available, ""),
            ],
        };
        let p = probe_from(&report);
        assert_eq!(p.len(), 1);
        assert_eq!(p[&Mechanism::SchedExt].status, Status::Degraded);
    }
}
