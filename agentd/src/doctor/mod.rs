//! `agentd doctor`: probes the host and says, per mechanism of DESIGN.md's table, whether it
//! is available, degraded (a fallback runs, named) or missing, with the reason and the fix.
//!
//! Probes read files through [`Host`] (so unit tests use a fake /proc and /sys tree) and ask
//! the kernel through its live probes (user namespaces, Landlock ABI, clone3, BPF loads).

mod cgroup;
mod host;
mod landlock;
mod probes;

use serde::Serialize;

pub use host::{Host, LiveProbes, RealHost};

/// How a mechanism runs on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The kernel mechanism is there and usable.
    Available,
    /// A named fallback runs instead; sessions start, with less protection or precision.
    Degraded,
    /// Neither the mechanism nor a fallback: sessions that need it are refused.
    Missing,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Available => "available",
            Status::Degraded => "degraded",
            Status::Missing => "missing",
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Mechanism name, as a policy's `require = [...]` spells it.
    pub mechanism: &'static str,
    pub status: Status,
    /// What was found (or why it is not usable).
    pub detail: String,
    /// What runs instead when degraded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// How to get the mechanism.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// A default session cannot start without it.
    pub required: bool,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `uname -r`.
    pub kernel: String,
    pub checks: Vec<Check>,
}

impl Report {
    /// Required mechanisms that are missing.
    pub fn blockers(&self) -> Vec<&Check> {
        self.checks
            .iter()
            .filter(|c| c.required && c.status == Status::Missing)
            .collect()
    }

    /// Whether a default session can run here.
    pub fn ready(&self) -> bool {
        self.blockers().is_empty()
    }

    /// The row for `mechanism`.
    pub fn check(&self, mechanism: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.mechanism == mechanism)
    }

    /// Human-readable table with reasons and fixes.
    pub fn render(&self) -> String {
        let mut s = format!("agentd doctor: kernel {}\n\n", self.kernel);
        for c in &self.checks {
            let req = if c.required { "required" } else { "optional" };
            s.push_str(&format!(
                "{:<20} {:<10} {:<9} {}\n",
                c.mechanism,
                c.status.label(),
                req,
                c.detail
            ));
            if let Some(f) = &c.fallback {
                s.push_str(&format!("{:<42}fallback: {f}\n", ""));
            }
            if let Some(f) = &c.fix {
                s.push_str(&format!("{:<42}fix: {f}\n", ""));
            }
        }
        let blockers = self.blockers();
        if blockers.is_empty() {
            s.push_str("\nready: a default session can run on this host\n");
        } else {
            let names: Vec<&str> = blockers.iter().map(|c| c.mechanism).collect();
            s.push_str(&format!(
                "\nNOT READY: a default session needs {} (see above)\n",
                names.join(", ")
            ));
        }
        s
    }
}

/// Runs every probe.
pub fn run(host: &dyn Host) -> Report {
    Report {
        kernel: host.kernel_release(),
        checks: probes::all(host),
    }
}
