//! The `agentd` binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "agentd",
    version,
    about = "Sandbox and resource controller for AI agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Probe the host: which mechanism runs in which mode, what is missing and how to fix it.
    /// Exits non-zero when a mechanism a default session needs is missing.
    Doctor {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Run the daemon: the HTTP/JSON API on a Unix socket (see docs/daemon.md). Needs root
    /// and a cgroup v2 hierarchy with controllers.
    Serve {
        /// The API socket.
        #[arg(long, default_value = agentd::api::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Mode of the socket file, octal.
        #[arg(long, default_value = "0660", value_parser = parse_mode)]
        socket_mode: u32,
        /// Journal, logs and session state.
        #[arg(long, default_value = "/var/lib/agentd")]
        state_dir: PathBuf,
        /// The cgroup this daemon owns.
        #[arg(long, default_value = "/sys/fs/cgroup/agentd.slice")]
        cgroup_root: PathBuf,
        /// Host policy (default /etc/agentd/policy.toml; missing = built-in host defaults).
        #[arg(long)]
        host_policy: Option<PathBuf>,
        /// The agentd-sandbox binary (default: next to this binary, else on PATH).
        #[arg(long)]
        sandbox_bin: Option<PathBuf>,
        /// The agentd-shim binary (default: next to this binary).
        #[arg(long)]
        shim_bin: Option<PathBuf>,
        /// Host ids for sessions' container roots, START:COUNT: one per session, checked at
        /// start to overlap no /etc/subuid, /etc/subgid, /etc/passwd or /etc/group entry.
        #[arg(long, default_value = "1879048192:65536", value_parser = parse_container_ids)]
        container_ids: agentd::server::ids::IdRange,
    },
    /// Print a shell completion script for agentd.
    Completions { shell: clap_complete::Shell },
    /// Write agentd's man pages (one per subcommand) into DIR.
    Man {
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
}

fn parse_container_ids(s: &str) -> Result<agentd::server::ids::IdRange, String> {
    agentd::server::ids::IdRange::parse(s).map_err(|e| e.to_string())
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal file mode like 0660"))
}

/// Raises the soft open-files limit to the hard one: every session holds sockets, pidfds,
/// cgroup and log descriptors, and a daemon at EMFILE stops serving every user. Sessions are
/// not affected (the sandbox sets the agent's own `nofile`).
fn raise_nofile() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 || l.rlim_cur >= l.rlim_max {
        return;
    }
    l.rlim_cur = l.rlim_max;
    // SAFETY: setrlimit reads one initialised rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) } != 0 {
        let e = std::io::Error::last_os_error();
        agentd::server::log::warn(&format!("raising the open-files limit: {e}"));
    }
}

/// Marks every descriptor the daemon inherited (above stdio) close-on-exec, before any
/// thread or file of its own exists: a descriptor leaked into the daemon by whoever started
/// it (a shell, a supervisor; systemd's LISTEN_FDS are the daemon's own to use) must never
/// reach a runtime, an agent or a call (issue 18). The exec paths close theirs as well.
fn cloexec_inherited() -> std::io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on this process's fds.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return Ok(());
    }
    // Kernels before 5.11: the same, one descriptor at a time.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD on a descriptor number; a stale one (the read_dir's own) is EBADF.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

fn serve(cfg: agentd::server::Config) -> ExitCode {
    if let Err(e) = cloexec_inherited() {
        agentd::server::log::error(&format!("marking inherited descriptors close-on-exec: {e}"));
        return ExitCode::FAILURE;
    }
    raise_nofile();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            agentd::server::log::error(&format!("cannot start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(agentd::server::serve(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            agentd::server::log::error(&e.to_string());
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "agentd", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man { dir } => match agentd::ctl::write_man_pages(Cli::command(), &dir) {
            Ok(files) => {
                for f in files {
                    println!("{}", f.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("agentd: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve {
            socket,
            socket_mode,
            state_dir,
            cgroup_root,
            host_policy,
            sandbox_bin,
            shim_bin,
            container_ids,
        } => serve(agentd::server::Config {
            socket,
            socket_mode,
            state_dir,
            cgroup_root,
            host_policy,
            sandbox_bin: agentd::server::sibling_bin(sandbox_bin, "agentd-sandbox"),
            shim_bin: agentd::server::sibling_bin(shim_bin, "agentd-shim"),
            container_ids,
        }),
        Command::Doctor { json } => {
            let report = agentd::doctor::run(&agentd::doctor::RealHost::new());
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("agentd: cannot encode the report: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", report.render());
            }
            if report.ready() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
