//! Loader for `sched.bpf.c`, agentd's sched_ext scheduler (docs/scheduler.md): probes the
//! kernel through BTF, sets the partial-mode flag from the kernel's own enum, loads and
//! attaches the struct_ops link, and then keeps only what the daemon needs: the link (dropping
//! or [`Scheduler::detach`]ing it ends the scheduler, and every SCHED_EXT task goes back to the
//! fair class), the `calls` map it writes classes into, and the `.bss` map for counters and
//! the kernel's exit reason.

use std::mem::MaybeUninit;
use std::time::Duration;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, MapHandle};

use crate::btf::{KernelBtf, VMLINUX_BTF, features};

mod skel {
    #![allow(
        clippy::all,
        clippy::pedantic,
        missing_docs,
        missing_debug_implementations
    )]
    // Generated code: libbpf-cargo's skeleton panics on impossible object layouts.
    #![allow(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
    #![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]
    include!(concat!(env!("OUT_DIR"), "/sched.skel.rs"));
}

/// The ops name the kernel shows in /sys/kernel/sched_ext/root/ops.
pub const OPS_NAME: &str = "agentd";
/// Session slots the scheduler keeps apart (slot 0: cgroups it was not told about).
pub const SLOTS: u32 = 64;
/// The SCHED_EXT policy number (uapi `SCHED_EXT`).
pub const SCHED_EXT: i32 = 7;
/// sched_ext's state file: `enabled` while a BPF scheduler is attached.
pub const STATE_FILE: &str = "/sys/kernel/sched_ext/state";
/// The attached scheduler's name.
pub const OPS_FILE: &str = "/sys/kernel/sched_ext/root/ops";

/// Kfuncs the program calls: a kernel without one of them cannot load it.
pub const KFUNCS: &[&str] = &[
    "scx_bpf_dsq_insert",
    "scx_bpf_dsq_insert_vtime",
    "scx_bpf_dsq_move_to_local",
    "scx_bpf_create_dsq",
    "scx_bpf_dsq_nr_queued",
    "scx_bpf_select_cpu_dfl",
    "scx_bpf_kick_cpu",
];

/// Errors probing, loading or driving the scheduler.
#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    #[error(transparent)]
    Btf(#[from] crate::btf::BtfError),
    #[error("this kernel has no sched_ext (no `{0}` in its BTF)")]
    NotSupported(&'static str),
    #[error("this kernel's sched_ext lacks the kfunc `{0}` the scheduler calls")]
    MissingKfunc(&'static str),
    #[error("another BPF scheduler (`{0}`) is attached")]
    Busy(String),
    #[error("opening the scheduler's BPF object: {0}")]
    Open(#[source] libbpf_rs::Error),
    #[error("the scheduler's object has no {0} (skeleton out of date?)")]
    MissingSection(&'static str),
    #[error("loading the scheduler into the kernel (needs CAP_BPF and CAP_SYS_ADMIN): {0}")]
    Load(#[source] libbpf_rs::Error),
    #[error("attaching the scheduler's struct_ops: {0}")]
    Attach(#[source] libbpf_rs::Error),
    #[error("scheduler map `{map}`: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: libbpf_rs::Error,
    },
}

/// Tunables written into the program before it loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Slice of a latency task (short: it is preempted back soon anyway).
    pub slice_latency: Duration,
    /// Slice of a batch task (long: fewer switches for builds).
    pub slice_batch: Duration,
    /// Whole latency slices in a row after which a latency task is queued as batch.
    pub demote_after: u32,
    /// Latency dispatches in a row on a CPU after which waiting batch work goes first once.
    pub lat_burst: u32,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            slice_latency: Duration::from_millis(3),
            slice_batch: Duration::from_millis(20),
            demote_after: 4,
            lat_burst: 8,
        }
    }
}

/// A cgroup's scheduling class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Served first; a latency wake-up preempts batch work.
    Latency,
    /// Builds, tests: long slices, after latency.
    Batch,
}

/// What the daemon tells the scheduler about one cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The session's slot, 1..[`SLOTS`] (0 is refused: it is the unknown cgroups' slot).
    pub slot: u32,
    pub class: Class,
    /// The cgroup's share within its session (cpu.weight scale, 1..=10000).
    pub call_weight: u32,
    /// The session's share among sessions (cpu.weight scale).
    pub session_weight: u32,
}

impl Entry {
    /// The `struct sched_call` bytes (intf.h: u64 vtime, u32 slot, cls, call_weight,
    /// session_weight; native endian, no padding).
    fn to_bytes(self) -> [u8; 24] {
        let mut b = [0u8; 24];
        let cls: u32 = match self.class {
            Class::Batch => 0,
            Class::Latency => 1,
        };
        b[8..12].copy_from_slice(&self.slot.to_ne_bytes());
        b[12..16].copy_from_slice(&cls.to_ne_bytes());
        b[16..20].copy_from_slice(&self.call_weight.clamp(1, 10000).to_ne_bytes());
        b[20..24].copy_from_slice(&self.session_weight.clamp(1, 10000).to_ne_bytes());
        b
    }
}

/// The scheduler's counters and, once the kernel ended it, why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub enq_latency: u64,
    pub enq_batch: u64,
    pub enq_unknown: u64,
    pub direct_idle: u64,
    pub demoted: u64,
    pub kicks: u64,
    pub starve_guard: u64,
    pub dispatched: u64,
    /// The kernel's exit reason, when it ended the scheduler (error, watchdog, unload).
    pub exit: Option<String>,
}

/// Whether this kernel can run the scheduler: sched_ext's ops type, the partial-mode flag
/// and every kfunc the program calls, all looked up in BTF. Returns the partial flag's value.
pub fn probe(btf: &KernelBtf) -> Result<u64, SchedError> {
    if !btf.has_struct(features::SCHED_EXT_OPS) {
        return Err(SchedError::NotSupported(features::SCHED_EXT_OPS));
    }
    let partial = btf
        .enum_value("scx_ops_flags", "SCX_OPS_SWITCH_PARTIAL")
        .ok_or(SchedError::NotSupported("SCX_OPS_SWITCH_PARTIAL"))?;
    if let Some(k) = KFUNCS.iter().find(|k| !btf.has_func(k)) {
        return Err(SchedError::MissingKfunc(k));
    }
    Ok(partial)
}

/// The name of the BPF scheduler attached now, if any.
pub fn attached() -> Option<String> {
    let state = std::fs::read_to_string(STATE_FILE).ok()?;
    if state.trim() != "enabled" {
        return None;
    }
    Some(
        std::fs::read_to_string(OPS_FILE)
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned()),
    )
}

/// The loaded scheduler.
#[derive(Debug)]
pub struct Scheduler {
    link: Option<Link>,
    calls: MapHandle,
    bss: MapHandle,
}

impl Scheduler {
    /// Probes, loads and attaches (see [`probe`]). With `attach` false the program is only
    /// loaded (verified) and dropped: the doctor's live check.
    pub fn load(cfg: &Config, attach: bool) -> Result<Option<Scheduler>, SchedError> {
        let btf = KernelBtf::load(std::path::Path::new(VMLINUX_BTF))?;
        let partial = probe(&btf)?;
        if let Some(other) = attached()
            && (attach || other != OPS_NAME)
        {
            return Err(SchedError::Busy(other));
        }
        let mut storage = MaybeUninit::uninit();
        let mut open = skel::SchedSkelBuilder::default()
            .open(&mut storage)
            .map_err(SchedError::Open)?;
        let ro = open
            .maps
            .rodata_data
            .as_deref_mut()
            .ok_or(SchedError::MissingSection(".rodata"))?;
        ro.slice_latency_ns = nanos(cfg.slice_latency);
        ro.slice_batch_ns = nanos(cfg.slice_batch);
        ro.demote_after = cfg.demote_after.max(1);
        ro.lat_burst = cfg.lat_burst.max(1);
        ro.nr_cpus = libbpf_rs::num_possible_cpus()
            .ok()
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(1);
        // Partial mode: only SCHED_EXT tasks (the sessions') are ours.
        open.struct_ops.agentd_ops_mut().flags |= partial;
        let mut loaded = open.load().map_err(SchedError::Load)?;
        if !attach {
            return Ok(None);
        }
        let link = loaded
            .maps
            .agentd_ops
            .attach_struct_ops()
            .map_err(SchedError::Attach)?;
        let handle = |map: &libbpf_rs::MapMut<'_>, name| {
            MapHandle::try_from(map).map_err(|source| SchedError::Map { map: name, source })
        };
        let calls = handle(&loaded.maps.calls, "calls")?;
        let bss = handle(&loaded.maps.bss, ".bss")?;
        // The skeleton (and its object) go now; the link keeps the programs and maps.
        Ok(Some(Scheduler {
            link: Some(link),
            calls,
            bss,
        }))
    }

    /// Tells the scheduler `cgroup_id`'s class and weights; before any task enters it.
    pub fn set(&self, cgroup_id: u64, e: Entry) -> Result<(), SchedError> {
        self.calls
            .update(&cgroup_id.to_ne_bytes(), &e.to_bytes(), MapFlags::ANY)
            .map_err(|source| SchedError::Map {
                map: "calls",
                source,
            })
    }

    /// Forgets a cgroup (its call ended); a missing entry is fine.
    pub fn forget(&self, cgroup_id: u64) {
        let _ = self.calls.delete(&cgroup_id.to_ne_bytes());
    }

    /// Whether the kernel still runs it (no exit recorded, the link held).
    pub fn attached(&self) -> bool {
        self.link.is_some() && self.stats().map(|s| s.exit.is_none()).unwrap_or(false)
    }

    /// Detaches: the kernel ends the scheduler and SCHED_EXT tasks return to the fair class.
    pub fn detach(&mut self) {
        self.link = None;
    }

    /// The counters and exit state.
    pub fn stats(&self) -> Result<Stats, SchedError> {
        let raw = self
            .bss
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| SchedError::Map {
                map: ".bss",
                source,
            })?
            .ok_or(SchedError::MissingSection(".bss"))?;
        let size = std::mem::size_of::<skel::types::bss>();
        if raw.len() < size {
            return Err(SchedError::MissingSection(".bss"));
        }
        // SAFETY: `raw` holds at least size_of::<bss>() bytes of the map's value, whose
        // layout is the skeleton's `bss` (generated from the same object's BTF); every field
        // is a plain integer, so any bytes are a valid value; read_unaligned copes with the
        // Vec's alignment.
        let bss: skel::types::bss = unsafe { std::ptr::read_unaligned(raw.as_ptr().cast()) };
        let s = bss.stats;
        let exit = (bss.exited != 0).then(|| {
            let bytes: Vec<u8> = bss
                .exit_reason
                .iter()
                .take_while(|c| **c != 0)
                .map(|c| c.to_ne_bytes()[0])
                .collect();
            format!(
                "{} (exit code {})",
                String::from_utf8_lossy(&bytes),
                bss.exit_code
            )
        });
        Ok(Stats {
            enq_latency: s.enq_latency,
            enq_batch: s.enq_batch,
            enq_unknown: s.enq_unknown,
            direct_idle: s.direct_idle,
            demoted: s.demoted,
            kicks: s.kicks,
            starve_guard: s.starve_guard,
            dispatched: s.dispatched,
            exit,
        })
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code
    use super::*;

    #[test]
    fn an_entry_has_the_c_layout() {
        let b = Entry {
            slot: 3,
            class: Class::Latency,
            call_weight: 0,
            session_weight: 20000,
        }
        .to_bytes();
        assert_eq!(b.len(), std::mem::size_of::<skel::types::sched_call>());
        assert_eq!(&b[0..8], &[0; 8]);
        assert_eq!(u32::from_ne_bytes(b[8..12].try_into().unwrap()), 3);
        assert_eq!(u32::from_ne_bytes(b[12..16].try_into().unwrap()), 1);
        // Weights are clamped to cpu.weight's range.
        assert_eq!(u32::from_ne_bytes(b[16..20].try_into().unwrap()), 1);
        assert_eq!(u32::from_ne_bytes(b[20..24].try_into().unwrap()), 10000);
    }
}
