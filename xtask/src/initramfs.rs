//! The test VM's initramfs: busybox, the kernel modules to load, an init script that builds
//! the VM's root (host root through virtiofs, read-only, under a tmpfs overlay; the workspace
//! writable at its host path), and the command to run. Written as a `newc` cpio archive.

use std::path::Path;

use anyhow::{Context, Result};

use crate::kernel::{Flavour, KernelImage};

/// Marker line the init prints with the command's exit status; the host parses it.
pub const EXIT_SENTINEL: &str = "AGENTD-VM-EXIT=";

/// What the VM runs.
#[derive(Debug)]
pub struct Payload<'a> {
    pub flavour: Flavour,
    pub kernel: &'a KernelImage,
    /// Host path of the workspace, mounted read-write at the same path in the VM.
    pub workspace: &'a Path,
    /// Directories prepended to PATH inside the VM (the project's built binaries).
    pub path_dirs: Vec<String>,
    /// Shell script run as root in the VM's root, from the workspace directory.
    pub script: String,
    /// The binary that becomes PID 1 (`xtask vm-init`); a host path visible in the VM.
    pub init_binary: std::path::PathBuf,
}

/// Builds the whole archive in memory.
pub fn build(payload: &Payload<'_>) -> Result<Vec<u8>> {
    let mut cpio = Cpio::default();
    for dir in [
        "bin",
        "dev",
        "proc",
        "sys",
        "lower",
        "upper",
        "newroot",
        "lib",
        "lib/modules",
    ] {
        cpio.dir(dir);
    }
    cpio.dir("agentd");
    cpio.char_device("dev/console", 5, 1);
    let busybox = std::fs::read("/bin/busybox")
        .context("reading /bin/busybox (cargo xtask deps installs busybox-static)")?;
    cpio.file("bin/busybox", 0o755, &busybox);
    let mut order = String::new();
    for m in &payload.kernel.modules {
        let name = m
            .file_name()
            .context("module path without a name")?
            .to_string_lossy()
            .into_owned();
        let bytes = std::fs::read(m).with_context(|| format!("reading module {}", m.display()))?;
        cpio.file(&format!("lib/modules/{name}"), 0o644, &bytes);
        order.push_str(&name);
        order.push('\n');
    }
    cpio.file("lib/modules/order", 0o644, order.as_bytes());
    cpio.file("init", 0o755, init_script(payload).as_bytes());
    cpio.file("agentd/run.sh", 0o755, payload.script.as_bytes());
    cpio.file("agentd/stage2", 0o755, stage2_script(payload).as_bytes());
    Ok(cpio.finish())
}

/// Single-quotes `s` for sh.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn init_script(p: &Payload<'_>) -> String {
    let ws = sh_quote(&p.workspace.to_string_lossy());
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs dev /dev
exec </dev/null >/dev/console 2>&1
fail() {{ echo "agentd-vm: init: $*"; echo "{EXIT_SENTINEL}125"; sync; poweroff -f; }}
mount -t proc proc /proc || fail "mount /proc"
mount -t sysfs sys /sys || fail "mount /sys"
while read -r m; do [ -n "$m" ] && {{ insmod "/lib/modules/$m" || fail "insmod $m"; }}; done < /lib/modules/order
mount -t virtiofs -o ro hostroot /lower || fail "mount the host root (virtiofs tag hostroot)"
mount -t tmpfs -o mode=755 upper /upper && mkdir -p /upper/u /upper/w || fail "tmpfs upper"
mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w root /newroot || fail "overlay root"
R=/newroot
mount -t proc proc $R/proc || fail "proc"
mount -t sysfs sys $R/sys || fail "sysfs"
mount -t devtmpfs dev $R/dev || fail "devtmpfs"
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts || fail "devpts"
mount -t tmpfs shm $R/dev/shm || fail "shm"
mount -t cgroup2 -o nsdelegate,memory_recursiveprot cgroup2 $R/sys/fs/cgroup || fail "cgroup2"
mount -t bpf bpf $R/sys/fs/bpf || fail "bpffs"
mount -t tracefs tracefs $R/sys/kernel/tracing || fail "tracefs"
mount -t securityfs securityfs $R/sys/kernel/security || fail "securityfs"
mount -t tmpfs -o mode=1777 tmp $R/tmp || fail "tmp"
mount -t tmpfs -o mode=755 run $R/run || fail "run"
# The scratch disk (vm.rs): the VM's only real disk, for state that must not be memory.
for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; sleep 0.5; done
mount -t ext4 /dev/vda $R/var/tmp || fail "mount the scratch disk /dev/vda on /var/tmp"
# The workspace last: it may live under /tmp or /run, which the tmpfs mounts above would hide.
mkdir -p "$R"{ws} && mount -t virtiofs work "$R"{ws} || fail "mount the workspace (virtiofs tag work)"
ip link set lo up
hostname agentd-vm
echo {flavour} > $R/run/agentd-test-vm
cp /agentd/run.sh $R/run/agentd-vm-run.sh
cp /agentd/stage2 $R/run/agentd-vm-init
# switch_root, not chroot: the kernel refuses new user namespaces to a chrooted process
# (its root would differ from its mount namespace's root), and sessions need them.
exec switch_root -c /dev/console $R /bin/sh /run/agentd-vm-init
"#,
        flavour = p.flavour.name(),
    )
}

/// PID 1 after switch_root: `xtask vm-init` (this very binary, visible through the shared
/// host root) runs the payload in a clean environment, reaps orphans, reports, powers off.
fn stage2_script(p: &Payload<'_>) -> String {
    let ws = sh_quote(&p.workspace.to_string_lossy());
    let mut path = p.path_dirs.join(":");
    if !path.is_empty() {
        path.push(':');
    }
    path.push_str("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    let xtask = sh_quote(&p.init_binary.to_string_lossy());
    format!(
        r#"#!/bin/sh
exec /usr/bin/env -i PATH={path} HOME=/root TERM=dumb LANG=C.UTF-8 \
  AGENTD_TEST_VM=1 RUST_BACKTRACE=1 {xtask} vm-init -- \
  /bin/sh -c 'cd {ws} && exec /bin/sh /run/agentd-vm-run.sh'
"#,
        path = sh_quote(&path),
    )
}

/// A `newc` cpio writer (the format the kernel unpacks initramfs archives in).
#[derive(Debug, Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, &[], (0, 0));
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100_000 | perm, data, (0, 0));
    }

    fn char_device(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020_600, &[], (major, minor));
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.ino += 1;
        let namesize = name.len() + 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            namesize as u32,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_entries_are_aligned_and_terminated() {
        let mut c = Cpio::default();
        c.file("a", 0o644, b"hello");
        let out = c.finish();
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 4, 0);
        // header (110) + "a\0" padded to 112 + "hello" padded to 120, then the trailer.
        assert_eq!(&out[120..126], b"070701");
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn quotes_for_sh() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }
}
