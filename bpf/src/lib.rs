//! agentd's eBPF programs and their loaders.
//!
//! BPF C lives in `src/bpf/*.bpf.c` with the shared `intf.h`; `build.rs` compiles it with
//! clang into CO-RE objects and generates libbpf-rs skeletons in OUT_DIR. Later issues add the
//! sched_ext scheduler, memory policy and BPF LSM hooks here; today the crate has the syscall
//! counter that proves the toolchain on a real kernel, and BTF feature probes.

pub mod btf;
pub mod probe;
pub mod syscount;
