//! Typed resource limits for a cgroup and their exact cgroupfs spelling. Turning a
//! [`Limits`] into `(file, value)` writes is pure, so it is unit-tested without a kernel;
//! applying them (and refusing knobs the kernel lacks) is [`crate::Cgroup::set_limits`].

use std::fmt;

use serde::{Deserialize, Serialize};

/// A value that may be unlimited (`max` in cgroupfs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Max {
    /// A finite limit (bytes, pids, ...).
    Limit(u64),
    /// No limit (`max`).
    Unlimited,
}

impl fmt::Display for Max {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Max::Limit(n) => write!(f, "{n}"),
            Max::Unlimited => f.write_str("max"),
        }
    }
}

/// `cpu.max`: at most `quota_usec` of CPU time per `period_usec` (None = unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuMax {
    /// Microseconds of CPU per period, `None` for `max`.
    pub quota_usec: Option<u64>,
    /// Period in microseconds (kernel default 100000).
    pub period_usec: u64,
}

impl CpuMax {
    /// A quota expressed in CPUs (1.5 = one and a half CPUs) over the default 100 ms period.
    pub fn cpus(cpus: f64) -> CpuMax {
        let period = 100_000u64;
        // Float → int: quota is clamped to the kernel's minimum of 1000 us.
        let quota = (cpus * period as f64).round().max(1000.0) as u64;
        CpuMax {
            quota_usec: Some(quota),
            period_usec: period,
        }
    }
}

/// One `io.max` line for a block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoMax {
    /// Device major number.
    pub major: u32,
    /// Device minor number.
    pub minor: u32,
    /// Read bytes per second.
    pub rbps: Option<u64>,
    /// Write bytes per second.
    pub wbps: Option<u64>,
    /// Read IOs per second.
    pub riops: Option<u64>,
    /// Write IOs per second.
    pub wiops: Option<u64>,
}

/// Limits for one cgroup. `None` leaves the kernel's current value alone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// `memory.max`: hard limit; exceeding it after reclaim OOM-kills inside the cgroup.
    pub memory_max: Option<Max>,
    /// `memory.high`: throttle-and-reclaim threshold (never kills).
    pub memory_high: Option<Max>,
    /// `memory.min`: hard protection from reclaim, in bytes (the agent leaf's baseline).
    #[serde(default)]
    pub memory_min: Option<u64>,
    /// `memory.low`: best-effort protection from reclaim, in bytes.
    pub memory_low: Option<u64>,
    /// `memory.swap.max`.
    pub memory_swap_max: Option<Max>,
    /// `memory.oom.group`: an OOM kill takes every process of the cgroup.
    pub memory_oom_group: Option<bool>,
    /// `cpu.max`.
    pub cpu_max: Option<CpuMax>,
    /// `cpu.weight` (1..=10000, default 100).
    pub cpu_weight: Option<u16>,
    /// `pids.max`.
    pub pids_max: Option<Max>,
    /// `io.max`, one entry per device.
    pub io_max: Vec<IoMax>,
    /// `io.weight` default weight (1..=10000).
    pub io_weight: Option<u16>,
}

/// One write a [`Limits`] turns into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Knob {
    /// Controller that provides the file.
    pub controller: &'static str,
    /// Interface file.
    pub file: &'static str,
    /// Exact value to write.
    pub value: String,
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "max".to_string(), |n| n.to_string())
}

impl Limits {
    /// The writes these limits need, in a safe order: `memory.high` before `memory.max`
    /// so lowering both never passes through "max below high".
    pub fn knobs(&self) -> Vec<Knob> {
        let mut out = Vec::new();
        let mut k = |controller, file, value: String| {
            out.push(Knob {
                controller,
                file,
                value,
            })
        };
        if let Some(v) = self.memory_min {
            k("memory", "memory.min", v.to_string());
        }
        if let Some(v) = self.memory_low {
            k("memory", "memory.low", v.to_string());
        }
        if let Some(v) = self.memory_high {
            k("memory", "memory.high", v.to_string());
        }
        if let Some(v) = self.memory_max {
            k("memory", "memory.max", v.to_string());
        }
        if let Some(v) = self.memory_swap_max {
            k("memory", "memory.swap.max", v.to_string());
        }
        if let Some(v) = self.memory_oom_group {
            k("memory", "memory.oom.group", u8::from(v).to_string());
        }
        if let Some(v) = self.cpu_max {
            k(
                "cpu",
                "cpu.max",
                format!("{} {}", opt(v.quota_usec), v.period_usec),
            );
        }
        if let Some(v) = self.cpu_weight {
            k("cpu", "cpu.weight", v.to_string());
        }
        if let Some(v) = self.pids_max {
            k("pids", "pids.max", v.to_string());
        }
        for d in &self.io_max {
            k(
                "io",
                "io.max",
                format!(
                    "{}:{} rbps={} wbps={} riops={} wiops={}",
                    d.major,
                    d.minor,
                    opt(d.rbps),
                    opt(d.wbps),
                    opt(d.riops),
                    opt(d.wiops)
                ),
            );
        }
        if let Some(v) = self.io_weight {
            k("io", "io.weight", format!("default {v}"));
        }
        out
    }

    /// Controllers these limits need enabled on the cgroup.
    pub fn controllers(&self) -> Vec<&'static str> {
        let mut c: Vec<&'static str> = self.knobs().iter().map(|k| k.controller).collect();
        c.dedup();
        c.sort_unstable();
        c.dedup();
        c
    }
}

/// Formats bytes for people: `512.0M`, `1.50G`.
pub fn format_bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("T", 1 << 40),
        ("G", 1 << 30),
        ("M", 1 << 20),
        ("K", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if n >= size {
            let v = n as f64 / size as f64;
            return if v >= 100.0 {
                format!("{v:.0}{unit}")
            } else if v >= 10.0 {
                format!("{v:.1}{unit}")
            } else {
                format!("{v:.2}{unit}")
            };
        }
    }
    format!("{n}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knobs_spell_values_like_the_kernel_and_order_high_before_max() {
        let l = Limits {
            memory_max: Some(Max::Limit(64 << 20)),
            memory_high: Some(Max::Limit(48 << 20)),
            memory_oom_group: Some(true),
            cpu_max: Some(CpuMax::cpus(1.5)),
            cpu_weight: Some(50),
            pids_max: Some(Max::Unlimited),
            io_max: vec![IoMax {
                major: 8,
                minor: 0,
                rbps: Some(1_000_000),
                wbps: None,
                riops: None,
                wiops: Some(100),
            }],
            io_weight: Some(200),
            ..Limits::default()
        };
        let knobs: Vec<(&str, String)> = l.knobs().into_iter().map(|k| (k.file, k.value)).collect();
        assert_eq!(
            knobs,
            vec![
                ("memory.high", "50331648".to_string()),
                ("memory.max", "67108864".to_string()),
                ("memory.oom.group", "1".to_string()),
                ("cpu.max", "150000 100000".to_string()),
                ("cpu.weight", "50".to_string()),
                ("pids.max", "max".to_string()),
                (
                    "io.max",
                    "8:0 rbps=1000000 wbps=max riops=max wiops=100".to_string()
                ),
                ("io.weight", "default 200".to_string()),
            ]
        );
        assert_eq!(l.controllers(), vec!["cpu", "io", "memory", "pids"]);
    }

    #[test]
    fn unlimited_cpu_max_and_empty_limits() {
        let l = Limits {
            cpu_max: Some(CpuMax {
                quota_usec: None,
                period_usec: 100_000,
            }),
            ..Limits::default()
        };
        assert_eq!(l.knobs()[0].value, "max 100000");
        assert!(Limits::default().knobs().is_empty());
        assert_eq!(CpuMax::cpus(0.001).quota_usec, Some(1000));
    }

    #[test]
    fn bytes_format_for_people() {
        assert_eq!(format_bytes(0), "0B");
        assert_eq!(format_bytes(1023), "1023B");
        assert_eq!(format_bytes(200 << 20), "200M");
        assert_eq!(format_bytes(3 << 29), "1.50G");
        assert_eq!(format_bytes(15 << 20), "15.0M");
    }
}
