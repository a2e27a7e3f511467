//! Loader for `syscount.bpf.c`: counts the syscalls one process makes while attached.

use std::mem::MaybeUninit;

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};

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
    include!(concat!(env!("OUT_DIR"), "/syscount.skel.rs"));
}

/// Errors loading or attaching the program.
#[derive(Debug, thiserror::Error)]
pub enum SyscountError {
    #[error("opening the syscount BPF object: {0}")]
    Open(#[source] libbpf_rs::Error),
    #[error("loading the syscount BPF program into the kernel (needs CAP_BPF): {0}")]
    Load(#[source] libbpf_rs::Error),
    #[error("the syscount object has no {0} map (skeleton out of date?)")]
    MissingSection(&'static str),
    #[error("attaching syscount to raw tracepoint sys_enter: {0}")]
    Attach(#[source] libbpf_rs::Error),
}

/// Runs `f` with the counter attached for process `tgid`; returns `f`'s result and the count.
pub fn count_syscalls_of<T>(tgid: u32, f: impl FnOnce() -> T) -> Result<(T, u64), SyscountError> {
    let mut storage = MaybeUninit::uninit();
    let mut open = skel::SyscountSkelBuilder::default()
        .open(&mut storage)
        .map_err(SyscountError::Open)?;
    let rodata = open
        .maps
        .rodata_data
        .as_deref_mut()
        .ok_or(SyscountError::MissingSection(".rodata"))?;
    rodata.target_tgid = tgid;
    let mut loaded = open.load().map_err(SyscountError::Load)?;
    loaded.attach().map_err(SyscountError::Attach)?;
    let value = f();
    let count = loaded
        .maps
        .bss_data
        .as_deref()
        .ok_or(SyscountError::MissingSection(".bss"))?
        .stats
        .syscalls;
    Ok((value, count))
}
