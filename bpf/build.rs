//! Compiles `src/bpf/*.bpf.c` with clang (`BPF_CLANG`, default clang-19) into CO-RE objects and
//! generates their libbpf-rs skeletons in OUT_DIR.

use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

/// BPF programs of this crate: (source stem, skeleton file).
const PROGRAMS: &[&str] = &["syscount", "sched", "callacct"];

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    let clang = std::env::var("BPF_CLANG").unwrap_or_else(|_| "clang-19".to_string());
    println!("cargo:rerun-if-env-changed=BPF_CLANG");
    println!("cargo:rerun-if-changed=src/bpf/intf.h");
    println!("cargo:rerun-if-changed=src/bpf/scx_min.h");
    for name in PROGRAMS {
        let src = format!("src/bpf/{name}.bpf.c");
        println!("cargo:rerun-if-changed={src}");
        let result = SkeletonBuilder::new()
            .source(&src)
            .clang(&clang)
            // uapi headers (linux/bpf.h) come from the host's linux-libc-dev; asm/ is
            // multiarch.
            .clang_args([
                "-Wall",
                "-Werror",
                "-I/usr/include/x86_64-linux-gnu",
                "-Isrc/bpf",
                "-D__TARGET_ARCH_x86",
            ])
            .build_and_generate(out.join(format!("{name}.skel.rs")));
        if let Err(e) = result {
            // A build script reports failure by exiting non-zero with the reason on stderr.
            eprintln!("error: building {src} with {clang} failed: {e:#}");
            eprintln!("hint: `cargo xtask deps` installs clang-19 (or set BPF_CLANG)");
            std::process::exit(1);
        }
    }
}
