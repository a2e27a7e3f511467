//! `cargo xtask`: the project's automation — install build dependencies, run the privileged
//! tests in a QEMU VM on a real Debian kernel, run any command in that VM, run every test.

mod apt;
mod bench;
mod build;
mod deps;
mod initramfs;
mod install;
mod kernel;
mod run;
mod vm;
mod vm_init;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::initramfs::{Payload, sh_quote};
use crate::kernel::Flavour;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "agentd development automation")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install build and test dependencies (Debian packages, QEMU, virtiofsd, VM kernels).
    Deps,
    /// Build the privileged tests and run them inside the VM.
    VmTest {
        #[command(flatten)]
        vm: VmArgs,
        /// Only tests whose name contains this (libtest filter).
        filter: Option<String>,
        /// Show the tests' own output (libtest --nocapture): measured figures, progress.
        #[arg(long)]
        nocapture: bool,
    },
    /// Run a command inside the VM (host root shared read-only, workspace writable, the
    /// project's binaries on PATH) and exit with its status.
    VmRun {
        #[command(flatten)]
        vm: VmArgs,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Every test: unit tests on the host, then the privileged tests in the VM on both kernels.
    Test {
        /// VM settings for both boots.
        #[command(flatten)]
        vm: VmArgs,
    },
    /// Run the benchmarks (docs/benchmarks.md) in the VM; print and write the report.
    Bench {
        #[command(flatten)]
        vm: VmArgs,
        /// Small run counts (CI): under 5 minutes including the VM boot.
        #[arg(long)]
        quick: bool,
        /// Measure the debug build (default with --quick: CI has it built already).
        #[arg(long, conflicts_with = "release")]
        dev: bool,
        /// Measure the release build (default without --quick).
        #[arg(long)]
        release: bool,
        /// Only these benchmarks: calls, lifecycle, footprint, checkpoint, replay.
        names: Vec<String>,
    },
    /// Build (release) and install the binaries, systemd units, the `agentd` group,
    /// completions and man pages.
    Install {
        /// Install prefix as the running system sees it.
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
        /// Stage the install under this directory instead of the live system.
        #[arg(long)]
        destdir: Option<PathBuf>,
        /// Install the debug build (quicker to build; for trying things out).
        #[arg(long)]
        debug: bool,
    },
    /// (inside the VM) PID 1: run the payload, reap orphans, report, power off.
    #[command(hide = true)]
    VmInit {
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Debug, Args, Clone)]
struct VmArgs {
    /// Kernel to boot.
    #[arg(long, value_enum, default_value = "sched-ext")]
    kernel: Flavour,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 2048)]
    memory: u32,
    /// Guest CPUs.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Hard limit for the whole VM run, in seconds.
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
    /// Show kernel messages on the console.
    #[arg(long)]
    verbose: bool,
}

impl VmArgs {
    fn config(&self) -> vm::VmConfig {
        vm::VmConfig {
            memory_mib: self.memory,
            cpus: self.cpus,
            timeout: Duration::from_secs(self.timeout),
            verbose: self.verbose,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cmd: Cmd) -> Result<u8> {
    if let Cmd::VmInit { command } = &cmd {
        vm_init::run(command);
    }
    let ws = workspace_root()?;
    match cmd {
        Cmd::Deps => deps::install(&ws).map(|()| 0),
        Cmd::VmTest {
            vm,
            filter,
            nocapture,
        } => {
            let run = vm_test(&ws, &vm, filter.as_deref(), nocapture)?;
            println!(
                "vm-test ({}): {} passed, {} failed",
                vm.kernel.name(),
                run.passed,
                run.failed
            );
            Ok(exit_byte(run.status))
        }
        Cmd::VmRun { vm, command } => vm_run(&ws, &vm, &command).map(exit_byte),
        Cmd::Test { vm } => test_all(&ws, &vm),
        Cmd::Bench {
            vm,
            quick,
            dev,
            release,
            names,
        } => {
            // --quick measures the debug build CI has already built, unless --release.
            let dev = dev || (quick && !release);
            bench::run(
                &ws,
                &vm,
                &bench::BenchArgs {
                    quick,
                    dev,
                    names: &names,
                },
            )
        }
        Cmd::Install {
            prefix,
            destdir,
            debug,
        } => install(&ws, prefix, destdir, debug).map(|()| 0),
        Cmd::VmInit { .. } => Ok(0),
    }
}

fn install(ws: &Path, prefix: PathBuf, destdir: Option<PathBuf>, debug: bool) -> Result<()> {
    if !prefix.is_absolute() {
        anyhow::bail!("--prefix must be absolute (got {})", prefix.display());
    }
    let live = destdir.is_none();
    if live && !deps::is_root() {
        anyhow::bail!(
            "installing into the live system needs root (or stage it with --destdir DIR)"
        );
    }
    let built = build::install_binaries(!debug)?;
    let layout = install::Layout { prefix, destdir };
    let items = install::plan(&layout, &built, &ws.join("agentd/systemd"))?;
    install::apply(&layout, &items)?;
    if live {
        install::activate(&layout)?;
    }
    Ok(())
}

fn exit_byte(status: i32) -> u8 {
    u8::try_from(status).unwrap_or(1)
}

/// The soak sizes of the long VM tests (docs/test-vm.md): the VM's payload runs in a clean
/// environment, so the ones set on the host are exported into its script explicitly.
pub const SOAK_VARS: &[&str] = &[
    "AGENTD_SANDBOX_SESSIONS",
    "AGENTD_CGCTL_CYCLES",
    "AGENTD_TEST_SESSIONS",
    "AGENTD_TEST_CALLS",
    "AGENTD_SPAWNER_CALLS",
    "AGENTD_UNDO_CASES",
    "AGENTD_TORN_RUNS",
    "AGENTD_COMMIT_KILLS",
    "AGENTD_COMMIT_KILL_SEED",
    "PROPTEST_RNG_SEED",
];

fn soak_exports() -> String {
    let mut out = String::new();
    for name in SOAK_VARS {
        if let Ok(v) = std::env::var(name) {
            out.push_str(&format!("export {name}={}\n", sh_quote(&v)));
            out.push_str(&format!("echo \"agentd-vm: {name}=${name}\"\n"));
        }
    }
    out
}

/// What one boot of the privileged tests gave.
struct VmTestOutcome {
    passed: u64,
    failed: u64,
    failed_names: Vec<String>,
    status: i32,
}

/// Builds and runs the privileged tests in one boot.
fn vm_test(
    ws: &Path,
    args: &VmArgs,
    filter: Option<&str>,
    nocapture: bool,
) -> Result<VmTestOutcome> {
    let bins = build::workspace_binaries()?;
    let tests = build::privileged_tests()?;
    let mut script = String::from("rc=0\necho \"agentd-vm: kernel $(uname -r)\"\n");
    script.push_str(&soak_exports());
    for t in &tests {
        let t = sh_quote(&t.to_string_lossy());
        let f = filter.map(sh_quote).unwrap_or_default();
        let nc = if nocapture { "--nocapture" } else { "" };
        script.push_str(&format!(
            "echo \"agentd-vm: running {t}\"\n{t} --ignored --test-threads=1 {nc} {f} || rc=1\n"
        ));
    }
    script.push_str("exit $rc\n");
    let outcome = boot(ws, args, &bins, script)?;
    let (passed, failed, ignored) = build::tally(&outcome.lines);
    let failed_names = build::failed_tests(&outcome.lines);
    println!(
        "vm-test: kernel {} ({}, {}): {passed} passed, {failed} failed, {ignored} ignored, {} binaries, {:.1} s",
        kernel_version(ws, args.kernel)?,
        args.kernel.name(),
        vm::accel_name(),
        tests.len(),
        outcome.elapsed.as_secs_f64()
    );
    for name in &failed_names {
        println!("vm-test: FAILED on {}: {name}", args.kernel.name());
    }
    Ok(VmTestOutcome {
        passed,
        failed,
        failed_names,
        status: outcome.status,
    })
}

fn vm_run(ws: &Path, args: &VmArgs, command: &[String]) -> Result<i32> {
    let bins = build::workspace_binaries()?;
    let quoted: Vec<String> = command.iter().map(|a| sh_quote(a)).collect();
    let script = format!("exec {}\n", quoted.join(" "));
    Ok(boot(ws, args, &bins, script)?.status)
}

fn boot(ws: &Path, args: &VmArgs, bins: &[PathBuf], script: String) -> Result<vm::Outcome> {
    let kernel = kernel::prepare(ws, args.kernel)?;
    let mut path_dirs: Vec<String> = bins
        .iter()
        .filter_map(|b| b.parent())
        .map(|d| d.to_string_lossy().into_owned())
        .collect();
    path_dirs.dedup();
    eprintln!(
        "vm: booting {} ({}, {}) with {} MiB, {} CPUs",
        kernel.version,
        args.kernel.name(),
        vm::accel_name(),
        args.memory,
        args.cpus
    );
    let payload = Payload {
        flavour: args.kernel,
        kernel: &kernel,
        workspace: ws,
        path_dirs,
        script,
        init_binary: std::env::current_exe().context("locating the xtask binary")?,
    };
    vm::run(&args.config(), &payload, |line| println!("{line}"))
}

fn kernel_version(ws: &Path, flavour: Flavour) -> Result<String> {
    Ok(kernel::prepare(ws, flavour)?.version)
}

/// Unit tests on the host, then the privileged tests on both kernels.
fn test_all(ws: &Path, args: &VmArgs) -> Result<u8> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let host_ok = Command::new(&cargo)
        .args(["test", "--workspace"])
        .status()
        .context("running cargo test")?
        .success();
    let mut totals = (0, 0);
    let mut failures = Vec::new();
    let mut all_ok = host_ok;
    for flavour in Flavour::ALL {
        let a = VmArgs {
            kernel: flavour,
            ..args.clone()
        };
        let run = vm_test(ws, &a, None, true)?;
        if run.passed == 0 {
            eprintln!(
                "xtask test: no privileged test passed on the {} kernel",
                flavour.name()
            );
            all_ok = false;
        }
        totals.0 += run.passed;
        totals.1 += run.failed;
        all_ok &= run.status == 0;
        failures.extend(
            run.failed_names
                .into_iter()
                .map(|name| format!("{}: {name}", flavour.name())),
        );
    }
    println!(
        "xtask test: host unit tests {}; VM tests on both kernels:",
        if host_ok { "passed" } else { "FAILED" }
    );
    println!("vm-tests: {} passed, {} failed", totals.0, totals.1);
    for failure in &failures {
        println!("vm-tests: FAILED {failure}");
    }
    Ok(if all_ok { 0 } else { 1 })
}

fn workspace_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .context("xtask has no parent directory")
}
