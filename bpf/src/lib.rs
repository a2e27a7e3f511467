//! agentd's eBPF programs and their loaders.
//!
//! BPF C lives in `src/bpf/*.bpf.c` with the shared `intf.h` (and `scx_min.h`, the kernel
//! types and sched_ext kfuncs we use, as CO-RE shadows); `build.rs` compiles it with clang
//! into CO-RE objects and generates libbpf-rs skeletons in OUT_DIR. Programs: the syscall
//! counter that proves the toolchain, agentd's sched_ext scheduler ([`sched`]), per-call CPU
//! accounting ([`callacct`]); BTF feature probes in [`btf`].

pub mod btf;
pub mod callacct;
pub mod probe;
pub mod sched;
pub mod syscount;
