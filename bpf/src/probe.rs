//! Live probes of what the running kernel lets us load: each asks the kernel to load a
//! trivial program of a type (libbpf's `libbpf_probe_bpf_prog_type`), which is the only honest
//! answer — an active LSM list or a config option does not mean a load will be allowed.

use libbpf_rs::ProgramType;

/// Program types agentd relies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// BPF LSM programs (side-effect gating hooks).
    Lsm,
    /// struct_ops programs (sched_ext schedulers, memcg ops).
    StructOps,
    /// cgroup connect hooks (transparent proxying).
    CgroupSockAddr,
}

impl Feature {
    fn program_type(self) -> ProgramType {
        match self {
            Feature::Lsm => ProgramType::Lsm,
            Feature::StructOps => ProgramType::StructOps,
            Feature::CgroupSockAddr => ProgramType::CgroupSockAddr,
        }
    }
}

/// Whether the kernel loads programs of this type for us: `Ok(true)` loadable, `Ok(false)`
/// unknown to the kernel, `Err` with the kernel's refusal (EPERM without CAP_BPF, or when a
/// security policy forbids it).
pub fn loadable(feature: Feature) -> Result<bool, String> {
    feature
        .program_type()
        .is_supported()
        .map_err(|e| e.to_string())
}
