//! Parsing of cgroup v2 statistics files (flat-keyed files, `io.stat`, PSI) and the
//! per-call [`Report`]. Parsers are pure functions over the file text so they are tested
//! against samples; [`Stats::read`] gathers them from a live (or fake) cgroup.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cgroup::Cgroup;
use crate::error::{Error, Result};
use crate::limits::Limits;

/// Parses a flat-keyed file (`key value` per line: memory.events, memory.stat, cpu.stat,
/// cgroup.events, pids.events). Lines whose value is not a number are skipped: the kernel
/// adds keys over time and this must not break on them.
pub fn parse_flat_keyed(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (k, v) = line.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// `memory.events` counters (cumulative since the cgroup was created).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryEvents {
    /// Times reclaim ran below memory.low protection.
    pub low: u64,
    /// Times usage exceeded memory.high (the process was throttled).
    pub high: u64,
    /// Times usage hit memory.max.
    pub max: u64,
    /// Times the OOM killer was invoked.
    pub oom: u64,
    /// Processes killed by the OOM killer.
    pub oom_kill: u64,
    /// Group OOM kills (memory.oom.group), kernel 5.19+.
    pub oom_group_kill: u64,
}

impl MemoryEvents {
    /// Parses `memory.events`.
    pub fn parse(text: &str) -> MemoryEvents {
        let m = parse_flat_keyed(text);
        let g = |k: &str| m.get(k).copied().unwrap_or(0);
        MemoryEvents {
            low: g("low"),
            high: g("high"),
            max: g("max"),
            oom: g("oom"),
            oom_kill: g("oom_kill"),
            oom_group_kill: g("oom_group_kill"),
        }
    }
}

/// Key `memory.stat` fields, in bytes (page-fault fields are counts). Missing fields (older
/// kernels) read as 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryStat {
    /// Anonymous memory (heap, stacks, private mappings).
    pub anon: u64,
    /// Page cache.
    pub file: u64,
    /// Kernel memory in total.
    pub kernel: u64,
    /// Kernel stacks.
    pub kernel_stack: u64,
    /// Page tables.
    pub pagetables: u64,
    /// Socket buffers.
    pub sock: u64,
    /// Shared memory / tmpfs.
    pub shmem: u64,
    /// Mapped page cache.
    pub file_mapped: u64,
    /// Dirty page cache.
    pub file_dirty: u64,
    /// Page faults.
    pub pgfault: u64,
    /// Major page faults.
    pub pgmajfault: u64,
}

impl MemoryStat {
    /// Parses `memory.stat`.
    pub fn parse(text: &str) -> MemoryStat {
        let m = parse_flat_keyed(text);
        let g = |k: &str| m.get(k).copied().unwrap_or(0);
        MemoryStat {
            anon: g("anon"),
            file: g("file"),
            kernel: g("kernel"),
            kernel_stack: g("kernel_stack"),
            pagetables: g("pagetables"),
            sock: g("sock"),
            shmem: g("shmem"),
            file_mapped: g("file_mapped"),
            file_dirty: g("file_dirty"),
            pgfault: g("pgfault"),
            pgmajfault: g("pgmajfault"),
        }
    }
}

/// `cpu.stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuStat {
    /// Total CPU time in microseconds.
    pub usage_usec: u64,
    /// User CPU time.
    pub user_usec: u64,
    /// System CPU time.
    pub system_usec: u64,
    /// cpu.max enforcement periods elapsed.
    pub nr_periods: u64,
    /// Periods in which the cgroup was throttled.
    pub nr_throttled: u64,
    /// Total throttled time.
    pub throttled_usec: u64,
}

impl CpuStat {
    /// Parses `cpu.stat`.
    pub fn parse(text: &str) -> CpuStat {
        let m = parse_flat_keyed(text);
        let g = |k: &str| m.get(k).copied().unwrap_or(0);
        CpuStat {
            usage_usec: g("usage_usec"),
            user_usec: g("user_usec"),
            system_usec: g("system_usec"),
            nr_periods: g("nr_periods"),
            nr_throttled: g("nr_throttled"),
            throttled_usec: g("throttled_usec"),
        }
    }
}

/// `io.stat` summed over all devices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoStat {
    /// Bytes read.
    pub rbytes: u64,
    /// Bytes written.
    pub wbytes: u64,
    /// Read operations.
    pub rios: u64,
    /// Write operations.
    pub wios: u64,
    /// Bytes discarded.
    pub dbytes: u64,
}

impl IoStat {
    /// Parses `io.stat` (`MAJ:MIN key=value ...` per device) and sums the devices.
    pub fn parse(text: &str) -> IoStat {
        let mut s = IoStat::default();
        for line in text.lines() {
            for field in line.split_whitespace().skip(1) {
                let Some((k, v)) = field.split_once('=') else {
                    continue;
                };
                let Ok(v) = v.parse::<u64>() else { continue };
                let slot = match k {
                    "rbytes" => &mut s.rbytes,
                    "wbytes" => &mut s.wbytes,
                    "rios" => &mut s.rios,
                    "wios" => &mut s.wios,
                    "dbytes" => &mut s.dbytes,
                    _ => continue,
                };
                *slot = slot.saturating_add(v);
            }
        }
        s
    }
}

/// One PSI line (`some` or `full`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PsiLine {
    /// Percentage of the last 10 s with stalls.
    pub avg10: f64,
    /// ... last 60 s.
    pub avg60: f64,
    /// ... last 300 s.
    pub avg300: f64,
    /// Total stall time in microseconds.
    pub total_usec: u64,
}

/// A `*.pressure` file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Psi {
    /// Some tasks stalled.
    pub some: PsiLine,
    /// All non-idle tasks stalled (absent for cpu on kernels before 5.13).
    pub full: Option<PsiLine>,
}

impl Psi {
    /// Parses a `*.pressure` file.
    pub fn parse(text: &str) -> Option<Psi> {
        let mut some = None;
        let mut full = None;
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let kind = it.next();
            let mut l = PsiLine::default();
            for field in it {
                let (k, v) = field.split_once('=')?;
                match k {
                    "avg10" => l.avg10 = v.parse().ok()?,
                    "avg60" => l.avg60 = v.parse().ok()?,
                    "avg300" => l.avg300 = v.parse().ok()?,
                    "total" => l.total_usec = v.parse().ok()?,
                    _ => {}
                }
            }
            match kind {
                Some("some") => some = Some(l),
                Some("full") => full = Some(l),
                _ => {}
            }
        }
        Some(Psi { some: some?, full })
    }
}

/// Memory figures of a cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryStats {
    /// memory.current.
    pub current: u64,
    /// memory.peak (kernel 5.19+; None before).
    pub peak: Option<u64>,
    /// memory.swap.current, when swap accounting exists.
    pub swap_current: Option<u64>,
    /// memory.events.
    pub events: MemoryEvents,
    /// memory.stat key fields.
    pub stat: MemoryStat,
}

/// pids figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidsStats {
    /// pids.current.
    pub current: u64,
    /// pids.peak (kernel 6.1+).
    pub peak: Option<u64>,
    /// pids.events `max`: forks refused by pids.max.
    pub max_events: u64,
}

/// Pressure stall information of a cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Pressure {
    /// memory.pressure.
    pub memory: Option<Psi>,
    /// cpu.pressure.
    pub cpu: Option<Psi>,
    /// io.pressure.
    pub io: Option<Psi>,
}

/// Everything readable about one cgroup at one moment. Controllers that are not enabled
/// on the cgroup give `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Memory controller figures.
    pub memory: Option<MemoryStats>,
    /// cpu.stat (always present: usage is core accounting).
    pub cpu: CpuStat,
    /// pids controller figures.
    pub pids: Option<PidsStats>,
    /// io.stat summed.
    pub io: Option<IoStat>,
    /// PSI.
    pub pressure: Pressure,
}

fn number(cg: &Cgroup, file: &str) -> Result<Option<u64>> {
    let Some(text) = cg.read_opt(file)? else {
        return Ok(None);
    };
    text.trim().parse().map(Some).map_err(|e| Error::Parse {
        path: cg.path().join(file),
        detail: format!("{:?}: {e}", text.trim()),
    })
}

impl Stats {
    /// Reads all statistics of `cg`.
    pub fn read(cg: &Cgroup) -> Result<Stats> {
        let memory = match number(cg, "memory.current")? {
            None => None,
            Some(current) => Some(MemoryStats {
                current,
                peak: number(cg, "memory.peak")?,
                swap_current: number(cg, "memory.swap.current")?,
                events: MemoryEvents::parse(&cg.read_opt("memory.events")?.unwrap_or_default()),
                stat: MemoryStat::parse(&cg.read_opt("memory.stat")?.unwrap_or_default()),
            }),
        };
        let pids = match number(cg, "pids.current")? {
            None => None,
            Some(current) => Some(PidsStats {
                current,
                peak: number(cg, "pids.peak")?,
                max_events: cg
                    .read_opt("pids.events")?
                    .map(|t| parse_flat_keyed(&t).get("max").copied().unwrap_or(0))
                    .unwrap_or(0),
            }),
        };
        let psi = |f: &str| -> Result<Option<Psi>> {
            // Reading a pressure file fails with EOPNOTSUPP when PSI is disabled at boot
            // (psi=0): that is "no PSI", not an error of the cgroup.
            Ok(match cg.read_opt(f) {
                Ok(t) => t.as_deref().and_then(Psi::parse),
                Err(Error::Read { source, .. })
                    if source.raw_os_error() == Some(libc::EOPNOTSUPP) =>
                {
                    None
                }
                Err(e) => return Err(e),
            })
        };
        Ok(Stats {
            memory,
            cpu: CpuStat::parse(&cg.read_opt("cpu.stat")?.unwrap_or_default()),
            pids,
            io: cg.read_opt("io.stat")?.map(|t| IoStat::parse(&t)),
            pressure: Pressure {
                memory: psi("memory.pressure")?,
                cpu: psi("cpu.pressure")?,
                io: psi("io.pressure")?,
            },
        })
    }
}

/// The resource report of one tool call, read just before its cgroup is removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The call's cgroup path.
    pub path: String,
    /// The limits the call ran under.
    pub limits: Limits,
    /// Wall time from cgroup creation to the report, in milliseconds.
    pub wall_ms: u64,
    /// The statistics.
    pub stats: Stats,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_events_parse_and_ignore_unknown_keys() {
        let e = MemoryEvents::parse(
            "low 0\nhigh 17\nmax 3\noom 1\noom_kill 1\noom_group_kill 1\nsock_throttled 0\n",
        );
        assert_eq!(
            e,
            MemoryEvents {
                low: 0,
                high: 17,
                max: 3,
                oom: 1,
                oom_kill: 1,
                oom_group_kill: 1
            }
        );
        assert_eq!(MemoryEvents::parse("high 2\n").oom_group_kill, 0);
    }

    #[test]
    fn memory_stat_key_fields() {
        let s = MemoryStat::parse(
            "anon 209715200\nfile 4096\nkernel 1048576\nkernel_stack 16384\nsock 0\n\
             shmem 0\nfile_mapped 0\nfile_dirty 0\npgfault 51234\npgmajfault 2\nthp_fault_alloc 0\n",
        );
        assert_eq!(s.anon, 200 << 20);
        assert_eq!(s.kernel, 1 << 20);
        assert_eq!(s.pgfault, 51234);
        assert_eq!(s.pgmajfault, 2);
        assert_eq!(s.pagetables, 0);
    }

    #[test]
    fn cpu_stat_parses_all_fields() {
        let c = CpuStat::parse(
            "usage_usec 1003000\nuser_usec 1000000\nsystem_usec 3000\ncore_sched.force_idle_usec 0\n\
             nr_periods 10\nnr_throttled 4\nthrottled_usec 250000\nnr_bursts 0\nburst_usec 0\n",
        );
        assert_eq!(
            c,
            CpuStat {
                usage_usec: 1_003_000,
                user_usec: 1_000_000,
                system_usec: 3000,
                nr_periods: 10,
                nr_throttled: 4,
                throttled_usec: 250_000
            }
        );
    }

    #[test]
    fn io_stat_sums_devices() {
        let s = IoStat::parse(
            "8:16 rbytes=1024 wbytes=2048 rios=1 wios=2 dbytes=0 dios=0\n\
             253:0 rbytes=4096 wbytes=0 rios=3 wios=0 dbytes=512 dios=1\n",
        );
        assert_eq!(
            s,
            IoStat {
                rbytes: 5120,
                wbytes: 2048,
                rios: 4,
                wios: 2,
                dbytes: 512
            }
        );
        assert_eq!(IoStat::parse(""), IoStat::default());
    }

    #[test]
    fn psi_parses_some_and_full() {
        let p = Psi::parse(
            "some avg10=1.50 avg60=0.30 avg300=0.05 total=123456\n\
             full avg10=0.75 avg60=0.10 avg300=0.00 total=6543\n",
        )
        .unwrap();
        assert_eq!(p.some.avg10, 1.5);
        assert_eq!(p.some.total_usec, 123_456);
        assert_eq!(p.full.unwrap().avg10, 0.75);
        let cpu_old = Psi::parse("some avg10=0.00 avg60=0.00 avg300=0.00 total=9\n").unwrap();
        assert!(cpu_old.full.is_none());
        assert!(Psi::parse("").is_none());
        assert!(Psi::parse("some avg10=x\n").is_none());
    }

    #[test]
    fn flat_keyed_skips_garbage() {
        let m = parse_flat_keyed("populated 1\nfrozen 0\nweird\nname text\n");
        assert_eq!(m.get("populated"), Some(&1));
        assert_eq!(m.get("frozen"), Some(&0));
        assert_eq!(m.len(), 2);
    }
}
