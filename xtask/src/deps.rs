//! `cargo xtask deps`: installs what builds and tests need on a Debian bookworm machine,
//! idempotently, saying what it installs. Host apt sources are never changed: suites the host
//! does not list are reached through a private apt configuration under `target/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::apt::{PrivateApt, host_codename};
use crate::run::status;

/// Packages from the host's own release (pinned with `-t <codename>`), with why we need them.
const HOST_PACKAGES: &[(&str, &str)] = &[
    (
        "clang-19",
        "compiles the BPF C programs (scx_cargo refuses clang < 18)",
    ),
    ("llvm-19", "llvm-strip for BPF objects"),
    (
        "libelf-dev",
        "libbpf-sys builds libbpf statically against libelf",
    ),
    ("zlib1g-dev", "libbpf-sys"),
    (
        "pkg-config",
        "libbpf-sys and libseccomp-sys find their libraries",
    ),
    ("libseccomp-dev", "the libseccomp crate; virtiofsd"),
    ("libcap-ng-dev", "virtiofsd"),
    ("busybox-static", "the test VM's initramfs"),
    ("zstd", "Debian kernel packages are zstd-compressed"),
    ("xz-utils", "kernel modules are xz-compressed"),
    (
        "bubblewrap",
        "benchmark baseline: a new bwrap sandbox per call",
    ),
    ("crun", "benchmark baseline: crun run/exec"),
    (
        "systemd",
        "systemd-socket-activate (daemon VM tests); systemd-analyze verifies the shipped units",
    ),
    (
        "curl",
        "API conformance test: requests over the daemon's socket as another uid",
    ),
    (
        "golang-go",
        "egress VM test: a Go program (net/http, pure-Go resolver) through the proxy and without it",
    ),
    (
        "python3-venv",
        "the agentctl mcp VM test's client: the official MCP Python SDK in a venv",
    ),
];

/// QEMU comes from `<codename>-backports`: bookworm's 7.2 would replace the machine's
/// qemu-utils 10.
const QEMU_PACKAGE: &str = "qemu-system-x86";

/// The virtiofsd release that shares the host root with the test VM (crates.io).
pub const VIRTIOFSD_VERSION: &str = "1.14.0";

/// Installs everything; prints one line per item saying whether it was already there.
pub fn install(workspace: &Path) -> Result<()> {
    if !is_root() {
        bail!("cargo xtask deps installs Debian packages: run it as root");
    }
    let codename = host_codename()?;
    let missing: Vec<&str> = HOST_PACKAGES
        .iter()
        .filter(|(p, _)| !dpkg_installed(p))
        .map(|(p, _)| *p)
        .collect();
    for (p, why) in HOST_PACKAGES {
        let state = if missing.contains(p) {
            "installing"
        } else {
            "present"
        };
        println!("deps: {p:<16} {state:<10} ({why})");
    }
    let apt_dir = workspace.join("target/apt-host");
    let backports = format!("{codename}-backports");
    let need_qemu = !dpkg_installed(QEMU_PACKAGE);
    println!(
        "deps: {QEMU_PACKAGE:<16} {:<10} (the test VM; from {backports})",
        if need_qemu { "installing" } else { "present" }
    );
    if !missing.is_empty() || need_qemu {
        let apt = PrivateApt::for_installs(&apt_dir, &[&backports])?;
        apt.update()?;
        if !missing.is_empty() {
            apt.install(&codename, &missing)?;
        }
        if need_qemu {
            apt.install(&backports, &[QEMU_PACKAGE])?;
        }
    }
    let vfsd = virtiofsd_path()?;
    if vfsd.exists() {
        println!("deps: virtiofsd       present    ({})", vfsd.display());
    } else {
        println!("deps: virtiofsd       installing (cargo install virtiofsd {VIRTIOFSD_VERSION})");
        let root = vfsd
            .parent()
            .and_then(Path::parent)
            .context("virtiofsd path has no root")?;
        status(
            Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args([
                    "install",
                    "--locked",
                    "--quiet",
                    "--version",
                    VIRTIOFSD_VERSION,
                ])
                .arg("--root")
                .arg(root)
                .arg("virtiofsd")
                // Its own target dir: never contend with the workspace's build lock.
                .env("CARGO_TARGET_DIR", root.join("build")),
        )?;
        std::fs::remove_dir_all(root.join("build")).ok();
    }
    install_mcp_client(workspace)?;
    for flavour in crate::kernel::Flavour::ALL {
        let k = crate::kernel::prepare(workspace, flavour)?;
        println!(
            "deps: kernel {:<10} present    ({})",
            flavour.name(),
            k.version
        );
    }
    Ok(())
}

/// Where virtiofsd is installed: a per-user cache so clean clones on the same machine do not
/// rebuild it (`AGENTD_VIRTIOFSD` overrides).
pub fn virtiofsd_path() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("AGENTD_VIRTIOFSD") {
        return Ok(PathBuf::from(p));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set")?;
    Ok(cache
        .join("agentd/tools")
        .join(format!("virtiofsd-{VIRTIOFSD_VERSION}"))
        .join("bin/virtiofsd"))
}

/// The official MCP Python SDK (PyPI `mcp`), pinned: the client nobody here wrote that the
/// `agentctl mcp` VM test (tests/tests/mcp.rs) drives the server with.
pub const PYTHON_MCP_VERSION: &str = "2.3.0";

/// Its virtualenv, under target/ (the VM sees the host root, so the test finds it there).
pub fn mcp_client_dir(workspace: &Path) -> PathBuf {
    workspace
        .join("target/mcp-client")
        .join(format!("python-mcp-{PYTHON_MCP_VERSION}"))
}

fn install_mcp_client(workspace: &Path) -> Result<()> {
    let dir = mcp_client_dir(workspace);
    let py = dir.join("bin/python");
    let present = Command::new(&py)
        .args(["-c", "import mcp"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        println!("deps: python mcp      present    ({})", dir.display());
        return Ok(());
    }
    println!(
        "deps: python mcp      installing (PyPI mcp=={PYTHON_MCP_VERSION} into {})",
        dir.display()
    );
    status(
        Command::new("/usr/bin/python3")
            .args(["-m", "venv", "--clear"])
            .arg(&dir),
    )?;
    status(Command::new(dir.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        &format!("mcp=={PYTHON_MCP_VERSION}"),
    ]))
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "install ok installed")
        .unwrap_or(false)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
