//! Kernel feature probes through BTF: a feature exists when the kernel's BTF has its types,
//! whatever the version number says (the scx convention).

use std::path::{Path, PathBuf};

/// The running kernel's BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Why BTF could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read kernel BTF from {path}: {source}")]
pub struct BtfError {
    pub path: PathBuf,
    #[source]
    pub source: libbpf_rs::Error,
}

/// A loaded BTF blob to query.
pub struct KernelBtf {
    btf: libbpf_rs::btf::Btf<'static>,
}

impl std::fmt::Debug for KernelBtf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KernelBtf")
    }
}

impl KernelBtf {
    /// Loads BTF from `path` (normally [`VMLINUX_BTF`]).
    pub fn load(path: &Path) -> Result<KernelBtf, BtfError> {
        libbpf_rs::btf::Btf::from_path(path)
            .map(|btf| KernelBtf { btf })
            .map_err(|source| BtfError {
                path: path.to_path_buf(),
                source,
            })
    }

    /// Whether a struct (or union) type of this name exists.
    pub fn has_struct(&self, name: &str) -> bool {
        self.btf
            .type_by_name::<libbpf_rs::btf::types::Struct<'_>>(name)
            .is_some()
            || self
                .btf
                .type_by_name::<libbpf_rs::btf::types::Union<'_>>(name)
                .is_some()
    }

    /// Whether a function (a kfunc, a kernel function) of this name exists.
    pub fn has_func(&self, name: &str) -> bool {
        self.btf
            .type_by_name::<libbpf_rs::btf::types::Func<'_>>(name)
            .is_some()
    }

    /// The value of `member` of the enum named `enum_name` (32- or 64-bit), if both exist:
    /// how a flag whose number may change between kernels is looked up.
    pub fn enum_value(&self, enum_name: &str, member: &str) -> Option<u64> {
        use libbpf_rs::btf::types::{Enum, Enum64};
        let want = std::ffi::OsStr::new(member);
        if let Some(e) = self.btf.type_by_name::<Enum64<'_>>(enum_name) {
            return e
                .iter()
                .find(|m| m.name == Some(want))
                .and_then(|m| u64::try_from(m.value).ok());
        }
        let e = self.btf.type_by_name::<Enum<'_>>(enum_name)?;
        e.iter()
            .find(|m| m.name == Some(want))
            .and_then(|m| u64::try_from(m.value).ok())
    }
}

/// Types whose presence marks a feature.
pub mod features {
    /// sched_ext: the struct_ops type a BPF scheduler implements.
    pub const SCHED_EXT_OPS: &str = "sched_ext_ops";
    /// memcg BPF struct_ops (RFC series, not upstream): the ops table a memory policy fills.
    pub const MEMCG_BPF_OPS: &str = "memcg_bpf_ops";
    /// BPF LSM: the program context type of LSM hooks exists with CONFIG_BPF_LSM.
    pub const BPF_LSM_HOOKS: &str = "bpf_lsm_hooks_dummy";
}
