//! Booting the test VM: two virtiofsd daemons (host root read-only, workspace read-write),
//! QEMU with the Debian kernel and our initramfs, the serial console streamed to the caller,
//! the exit status taken from the sentinel line, and a hard timeout. Every child is killed
//! when the run ends, and carries PR_SET_PDEATHSIG so none outlives xtask.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::initramfs::{self, EXIT_SENTINEL, Payload};

/// VM settings from the command line.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub memory_mib: u32,
    pub cpus: u32,
    pub timeout: Duration,
    /// Show kernel messages (loglevel 7) instead of only critical ones.
    pub verbose: bool,
}

/// What a run produced.
#[derive(Debug)]
pub struct Outcome {
    /// Exit status of the command inside the VM.
    pub status: i32,
    /// Every console line (without the sentinel), for callers that parse results.
    pub lines: Vec<String>,
    pub elapsed: Duration,
}

/// Boots the VM, runs `payload.script`, streams the console to stdout through `on_line`.
pub fn run(
    cfg: &VmConfig,
    payload: &Payload<'_>,
    mut on_line: impl FnMut(&str),
) -> Result<Outcome> {
    let started = Instant::now();
    let run_dir = RunDir::create(&payload.workspace.join("target/vm/runs"))?;
    let initrd = run_dir.0.join("initrd.cpio");
    std::fs::write(&initrd, initramfs::build(payload)?)?;
    let scratch = scratch_disk(&run_dir.0)?;

    let virtiofsd = crate::deps::virtiofsd_path()?;
    if !virtiofsd.exists() {
        bail!("{} is missing: run `cargo xtask deps`", virtiofsd.display());
    }
    let mut children = Children(Vec::new());
    let root_sock = run_dir.0.join("root.sock");
    let work_sock = run_dir.0.join("work.sock");
    children.spawn(virtiofsd_cmd(&virtiofsd, &root_sock, Path::new("/"), true))?;
    children.spawn(virtiofsd_cmd(
        &virtiofsd,
        &work_sock,
        payload.workspace,
        false,
    ))?;
    wait_for_sockets(&[&root_sock, &work_sock], &mut children)?;

    let mut qemu = qemu_cmd(cfg, payload, &initrd, &root_sock, &work_sock, &scratch);
    qemu.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let qemu_idx = children.spawn(qemu)?;
    let stdout = children.0[qemu_idx].stdout.take().context("qemu stdout")?;
    let stderr = children.0[qemu_idx].stderr.take().context("qemu stderr")?;

    let (tx, rx) = mpsc::channel::<String>();
    let tx2 = tx.clone();
    std::thread::spawn(move || forward_lines(stdout, &tx));
    std::thread::spawn(move || forward_lines(stderr, &tx2));

    let deadline = started + cfg.timeout;
    let mut lines = Vec::new();
    let mut status = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "the VM did not finish within {} s (--timeout); QEMU was killed",
                cfg.timeout.as_secs()
            );
        }
        match rx.recv_timeout(left.min(Duration::from_millis(500))) {
            Ok(line) => {
                if let Some(code) = line.trim().strip_prefix(EXIT_SENTINEL) {
                    status = code.trim().parse::<i32>().ok();
                    continue;
                }
                if is_power_down(&line) {
                    continue;
                }
                on_line(&line);
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let qemu_status = children.0[qemu_idx].wait()?;
    match status {
        Some(status) => Ok(Outcome {
            status,
            lines,
            elapsed: started.elapsed(),
        }),
        None => bail!("the VM stopped without reporting an exit status (QEMU: {qemu_status})"),
    }
}

/// The kernel's last words when the VM powers off: noise in test output.
fn is_power_down(line: &str) -> bool {
    line.trim_end().ends_with("reboot: Power down")
}

fn forward_lines(r: impl std::io::Read, tx: &mpsc::Sender<String>) {
    let mut reader = BufReader::new(r);
    let mut buf = Vec::new();
    while reader.read_until(b'\n', &mut buf).unwrap_or(0) > 0 {
        let line = String::from_utf8_lossy(&buf)
            .trim_end_matches(['\n', '\r'])
            .to_string();
        if tx.send(line).is_err() {
            return;
        }
        buf.clear();
    }
}

fn virtiofsd_cmd(bin: &Path, socket: &Path, dir: &Path, readonly: bool) -> Command {
    let mut c = Command::new(bin);
    c.arg(format!("--socket-path={}", socket.display()))
        .arg(format!("--shared-dir={}", dir.display()))
        .args(["--sandbox=none", "--log-level=error"]);
    // cache=always: the guest may cache metadata and data indefinitely. Nothing on the host
    // changes these trees during a run (never rebuild while a VM runs), and under TCG every
    // FUSE round trip is costly: a dynamically linked exec takes ~60 ms instead of ~400 ms.
    // AGENTD_VM_CACHE=auto restores coherent caching for debugging.
    let cache = std::env::var("AGENTD_VM_CACHE").unwrap_or_else(|_| "always".into());
    c.arg(format!("--cache={cache}"));
    if readonly {
        // Host submounts (/proc, /sys, …) appear as plain directories: the VM mounts its own
        // over them, and an overlay cannot take announced submounts as its lower layer.
        c.args(["--readonly", "--no-announce-submounts"]);
    }
    c.stdin(Stdio::null());
    c
}

/// Size of the VM's scratch disk (a sparse file: only what the tests write takes room).
const SCRATCH_BYTES: u64 = 16 << 30;

/// The VM's scratch disk: a sparse ext4 image in the run dir (removed with it), mounted at
/// `/var/tmp` in the VM. Everything else in the VM is memory; tests that need a real disk
/// (session layers whose pages must be page cache, not shmem) put their state there.
fn scratch_disk(run_dir: &Path) -> Result<PathBuf> {
    let path = run_dir.join("scratch.img");
    let f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    f.set_len(SCRATCH_BYTES)?;
    drop(f);
    let st = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-m",
            "0",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1",
        ])
        .arg(&path)
        .status()
        .context("mkfs.ext4 (e2fsprogs) for the VM's scratch disk")?;
    if !st.success() {
        bail!("mkfs.ext4 {} failed: {st}", path.display());
    }
    Ok(path)
}

fn qemu_cmd(
    cfg: &VmConfig,
    payload: &Payload<'_>,
    initrd: &Path,
    root_sock: &Path,
    work_sock: &Path,
    scratch: &Path,
) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    let mem = format!("{}M", cfg.memory_mib);
    c.args([
        "-machine",
        "q35",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
    ]);
    c.args(accel_args());
    c.args(["-smp", &cfg.cpus.to_string(), "-m", &mem]);
    // virtiofs needs guest memory the daemons can map.
    c.args([
        "-object",
        &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
    ]);
    c.args(["-numa", "node,memdev=mem", "-serial", "stdio"]);
    for (id, sock, tag) in [("fs0", root_sock, "hostroot"), ("fs1", work_sock, "work")] {
        c.args([
            "-chardev",
            &format!("socket,id={id},path={}", sock.display()),
        ]);
        c.args([
            "-device",
            &format!("vhost-user-fs-pci,chardev={id},tag={tag}"),
        ]);
    }
    c.args([
        "-drive",
        &format!(
            "file={},if=none,id=scratch,format=raw,cache=unsafe",
            scratch.display()
        ),
        "-device",
        "virtio-blk-pci,drive=scratch",
    ]);
    c.arg("-kernel").arg(&payload.kernel.vmlinuz);
    c.arg("-initrd").arg(initrd);
    let loglevel = if cfg.verbose {
        "loglevel=7"
    } else {
        "quiet loglevel=2"
    };
    c.args([
        "-append",
        &format!(
            "console=ttyS0 {loglevel} cgroup_no_v1=all \
             lsm=lockdown,capability,landlock,yama,bpf panic=-1"
        ),
    ]);
    c
}

/// KVM only where it can boot stock kernels: hardware virtualisation flags in cpuinfo and no
/// KVM-PVM module (stock kernels die on PVM); otherwise multi-threaded TCG.
fn accel_args() -> Vec<&'static str> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    if hw && !pvm && Path::new("/dev/kvm").exists() {
        vec!["-accel", "kvm", "-cpu", "host"]
    } else {
        vec!["-accel", "tcg,thread=multi", "-cpu", "max"]
    }
}

/// A human name for the accelerator in use.
pub fn accel_name() -> &'static str {
    if accel_args()[1] == "kvm" {
        "KVM"
    } else {
        "TCG"
    }
}

fn wait_for_sockets(socks: &[&Path], children: &mut Children) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(10);
    while !socks.iter().all(|s| s.exists()) {
        for c in &mut children.0 {
            if let Some(st) = c.try_wait()? {
                bail!("virtiofsd exited early: {st}");
            }
        }
        if Instant::now() > until {
            bail!("virtiofsd did not create its sockets within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Child processes killed and reaped on drop.
struct Children(Vec<Child>);

impl Children {
    fn spawn(&mut self, mut cmd: Command) -> Result<usize> {
        // SAFETY: the closure runs in the forked child before exec and calls only prctl, which
        // is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", crate::run::describe(&cmd)))?;
        self.0.push(child);
        Ok(self.0.len() - 1)
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A per-run directory (initramfs, sockets) removed on drop.
struct RunDir(PathBuf);

impl RunDir {
    fn create(parent: &Path) -> Result<RunDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = parent.join(format!("{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(RunDir(dir))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
