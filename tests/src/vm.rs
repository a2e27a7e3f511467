//! Where a privileged test is running: inside the agentd test VM, and on which kernel.

use std::path::Path;

use crate::{VM_ENV, VM_MARKER};

/// The kernel flavour the VM booted (`cargo xtask vm-test --kernel …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Debian trixie-backports cloud kernel (7.x): sched_ext, BPF LSM, Landlock, cgroup v2.
    SchedExt,
    /// Debian trixie cloud kernel 6.12: no sched_ext; used to test degraded modes.
    Fallback,
}

impl Kernel {
    /// The name used on the xtask command line and in the VM marker.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::SchedExt => "sched-ext",
            Kernel::Fallback => "fallback",
        }
    }

    /// Parses the marker / command-line name.
    pub fn from_name(name: &str) -> Option<Kernel> {
        match name.trim() {
            "sched-ext" => Some(Kernel::SchedExt),
            "fallback" => Some(Kernel::Fallback),
            _ => None,
        }
    }
}

/// Facts about the VM a privileged test runs in.
#[derive(Debug, Clone, Copy)]
pub struct Vm {
    /// Which kernel booted.
    pub kernel: Kernel,
}

/// Returns the VM facts when running inside the agentd test VM, `None` elsewhere.
pub fn detect() -> Option<Vm> {
    std::env::var_os(VM_ENV)?;
    let marker = std::fs::read_to_string(Path::new(VM_MARKER)).ok()?;
    Some(Vm {
        kernel: Kernel::from_name(&marker)?,
    })
}

/// Entry point of every privileged test: returns the VM facts, and panics with a clear
/// message when called outside the VM (for example by `cargo test -- --ignored` on a
/// development machine), before the test can touch host cgroups or mounts.
pub fn enter() -> Vm {
    match detect() {
        Some(vm) => vm,
        None => panic!(
            "refusing to run a privileged test outside the agentd test VM \
             ({VM_ENV} unset or {VM_MARKER} missing): run `cargo xtask vm-test`"
        ),
    }
}
