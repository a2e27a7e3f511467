//! `agentd-sandbox`: run a command in a session container (`run`), print a session's plan
//! and mount steps (`plan`), remove a kept session's state (`destroy`); `init` is internal
//! (the container's PID 1, re-executed by `run`).

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use agentd_sandbox::{SessionPlan, container};
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(version, about = "agentd session containers")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Args)]
struct SessionArgs {
    /// The repo: the overlay's read-only lower layer, mounted at the same path inside.
    #[arg(long)]
    workspace: PathBuf,
    /// The session state dir (created; must not exist): a tmpfs holding the upper layer.
    #[arg(long)]
    state: PathBuf,
    /// Disk quota of the session (size of the state tmpfs): 256M, 1G, 4096K or bytes.
    #[arg(long, default_value = "256M")]
    disk_size: String,
    /// Host uid (= gid) the agent maps to (default: the workspace's owner; never 0).
    #[arg(long)]
    owner_uid: Option<u32>,
    /// Host uid (= gid) container root maps to (never 0).
    #[arg(long, default_value_t = 100_000)]
    root_uid: u32,
    /// Share the host network instead of a loopback-only namespace.
    #[arg(long)]
    host_net: bool,
    /// Allow io_uring in the seccomp filter.
    #[arg(long)]
    allow_io_uring: bool,
    /// A Landlock right the session requires even though the plan's default marks it
    /// optional (e.g. `resolve_unix`), or `all`; repeatable.
    #[arg(long = "landlock-require", value_name = "RIGHT")]
    landlock_require: Vec<String>,
    /// Use an OCI bundle as the root: DIR/config.json (read with oci-spec) and its rootfs,
    /// bound read-only; the workspace appears at /workspace. The command defaults to
    /// process.args. Fields that would weaken or change confinement are refused.
    #[arg(long, value_name = "DIR")]
    bundle: Option<PathBuf>,
    /// Bind a host file or directory read-only (nosuid, nodev) into the container at
    /// CONTAINER (created when under /tmp, /run or /home); repeatable.
    #[arg(long = "bind-ro", value_name = "HOST:CONTAINER")]
    bind_ro: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run CMD in a new session container; exits with its status.
    Run {
        #[command(flatten)]
        session: SessionArgs,
        /// Keep the state dir (the upper layer) mounted afterwards; remove it with `destroy`.
        #[arg(long)]
        keep_state: bool,
        /// Start the container inside this cgroup directory (clone3 CLONE_INTO_CGROUP).
        #[arg(long)]
        cgroup: Option<PathBuf>,
        /// The command (with --bundle: default process.args).
        #[arg(last = true)]
        cmd: Vec<String>,
    },
    /// Print the plan (JSON) and its mount steps without running anything.
    Plan {
        #[command(flatten)]
        session: SessionArgs,
    },
    /// Run CMD inside a running session (same namespaces and confinement).
    Exec {
        /// The session's state dir (run with --keep-state or still running).
        #[arg(long)]
        state: PathBuf,
        /// Start the command in this cgroup directory (clone3 CLONE_INTO_CGROUP).
        #[arg(long)]
        cgroup: Option<PathBuf>,
        /// Give the command a pty of the session (stdin/stdout relayed) instead of our stdio.
        #[arg(long)]
        pty: bool,
        /// The command.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Run CMD in a running session through its call spawner (one fork+exec, straight into
    /// the cgroup), with this process's stdio; exits with CMD's status.
    Call {
        /// The session's state dir.
        #[arg(long)]
        state: PathBuf,
        /// The call's cgroup directory (clone3 CLONE_INTO_CGROUP).
        #[arg(long)]
        cgroup: PathBuf,
        /// Working directory inside the container (default: the workspace).
        #[arg(long)]
        cwd: Option<PathBuf>,
        /// Extra environment (KEY=VALUE).
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// The command.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Unmount and remove a session state dir.
    Destroy {
        /// The state dir.
        #[arg(long)]
        state: PathBuf,
    },
    /// Internal: the container init.
    #[command(hide = true)]
    Init {
        /// The command.
        #[arg(trailing_var_arg = true)]
        cmd: Vec<String>,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .map(|n| n * mult)
        .map_err(|e| format!("bad size {s:?}: {e}"))
}

fn absolute(p: &Path) -> Result<PathBuf, String> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .map_err(|e| e.to_string())
    }
}

/// `HOST:CONTAINER`; the host side is made absolute and its symlinks resolved (a missing
/// source is an error here, naming it).
fn parse_bind(spec: &str) -> Result<agentd_sandbox::plan::BindRo, String> {
    let (host, inside) = spec
        .split_once(':')
        .ok_or_else(|| format!("--bind-ro {spec:?}: expected HOST:CONTAINER"))?;
    if host.is_empty() || inside.is_empty() {
        return Err(format!("--bind-ro {spec:?}: expected HOST:CONTAINER"));
    }
    let source = Path::new(host)
        .canonicalize()
        .map_err(|e| format!("--bind-ro {spec:?}: source {host}: {e}"))?;
    Ok(agentd_sandbox::plan::BindRo {
        source,
        target: PathBuf::from(inside),
    })
}

/// The plan and, with `--bundle`, the bundle's command.
fn build_plan(a: &SessionArgs) -> Result<(SessionPlan, Option<Vec<String>>), String> {
    let repo = a
        .workspace
        .canonicalize()
        .map_err(|e| format!("{}: {e}", a.workspace.display()))?;
    let state = absolute(&a.state)?;
    let owner = match a.owner_uid {
        Some(u) => u,
        None => std::fs::metadata(&repo).map_err(|e| e.to_string())?.uid(),
    };
    let mut plan = SessionPlan::new(&repo, &state, parse_size(&a.disk_size)?, owner, a.root_uid);
    plan.namespaces.net = !a.host_net;
    for name in &a.landlock_require {
        if name == "all" {
            plan.landlock.optional_rights.clear();
            continue;
        }
        let right = agentd_sandbox::plan::FsRight::from_name(name).ok_or_else(|| {
            let known: Vec<&str> = agentd_sandbox::plan::FsRight::ALL
                .iter()
                .map(|r| r.name())
                .collect();
            format!(
                "--landlock-require {name:?}: unknown right (known: all, {})",
                known.join(", ")
            )
        })?;
        plan.landlock.optional_rights.retain(|r| *r != right);
    }
    for spec in &a.bind_ro {
        plan.bind_ro.push(parse_bind(spec)?);
    }
    plan.seccomp.allow_io_uring = a.allow_io_uring;
    for name in agentd_sandbox::plan::ENV_PASSTHROUGH {
        if let Ok(v) = std::env::var(name) {
            plan.env.insert((*name).to_owned(), v);
        }
    }
    let bundle_cmd = match &a.bundle {
        Some(dir) => Some(
            agentd_sandbox::oci::apply_bundle(&absolute(dir)?, &mut plan)
                .map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    plan.validate()?;
    Ok((plan, bundle_cmd))
}

fn run(
    session: &SessionArgs,
    keep_state: bool,
    cgroup: Option<&Path>,
    cmd: &[String],
) -> Result<i32, String> {
    let (plan, bundle_cmd) = build_plan(session)?;
    let cmd = match (cmd.is_empty(), bundle_cmd) {
        (false, _) => cmd.to_vec(),
        (true, Some(args)) => args,
        (true, None) => return Err("no command: give one after `--`".into()),
    };
    let cmd = cmd.as_slice();
    let cg = match cgroup {
        Some(p) => Some(std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => None,
    };
    container::prepare_state(&plan).map_err(|e| e.to_string())?;
    let result = start_and_wait(&plan, cg.as_ref().map(|f| f.as_raw_fd()), cmd);
    if !keep_state {
        container::destroy_state(&plan.workspace.state).map_err(|e| e.to_string())?;
    }
    result
}

fn start_and_wait(
    plan: &SessionPlan,
    cgroup: Option<std::os::fd::RawFd>,
    cmd: &[String],
) -> Result<i32, String> {
    let c = container::start(plan, cmd, cgroup).map_err(|e| e.to_string())?;
    if let Some(gap) = c.landlock.gap() {
        eprintln!("agentd-sandbox: warning: {gap}");
    }
    // The session's call spawner (docs/spawner.md), forked while this process is still
    // single-threaded; its socket is bound before the record says the session runs.
    let spawner = match agentd_sandbox::spawner::start(plan, c.pid.as_raw()) {
        Ok(s) => s,
        Err(e) => {
            let _ = nix::sys::signal::kill(c.pid, nix::sys::signal::Signal::SIGKILL);
            let _ = container::wait(&c);
            return Err(format!("starting the call spawner: {e}"));
        }
    };
    // For `exec` into this session while it runs.
    let recorded = agentd_sandbox::exec::write_record(&agentd_sandbox::exec::SessionRecord {
        plan: plan.clone(),
        init_pid: c.pid.as_raw(),
        landlock: Some(c.landlock.clone()),
    })
    .map_err(|e| e.to_string());
    let r =
        recorded.and_then(|()| container::wait_forwarding_signals(&c).map_err(|e| e.to_string()));
    // The session is over (or never ran): no spawner outlives it.
    spawner.stop();
    r
}

/// `agentd-sandbox call`: one call through the session's spawner, with our stdio.
fn call(
    state: &Path,
    cgroup: &Path,
    cwd: Option<&Path>,
    env: &[String],
    cmd: &[String],
) -> Result<i32, String> {
    use agentd_sandbox::spawner::{SpawnRequest, client};
    use std::os::fd::AsFd;
    let mut envs = std::collections::BTreeMap::new();
    for kv in env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("--env {kv}: expected KEY=VALUE"))?;
        envs.insert(k.to_string(), v.to_string());
    }
    let req = SpawnRequest {
        argv: cmd.to_vec(),
        env: envs,
        cwd: cwd.map(Path::to_path_buf),
        ..SpawnRequest::default()
    };
    let cg = std::fs::File::open(cgroup).map_err(|e| format!("{}: {e}", cgroup.display()))?;
    let (i, o, e) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    let started = client::start(state, &req, [cg.as_fd(), i.as_fd(), o.as_fd(), e.as_fd()])
        .map_err(|e| e.to_string())?;
    drop(cg);
    client::recv_exit(started.conn.as_fd(), nix::sys::socket::MsgFlags::empty())
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "no exit status".to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match &cli.cmd {
        Cmd::Run {
            session,
            keep_state,
            cgroup,
            cmd,
        } => run(session, *keep_state, cgroup.as_deref(), cmd),
        Cmd::Plan { session } => build_plan(session).and_then(|(p, _)| {
            let json = serde_json::to_string_pretty(&p).map_err(|e| e.to_string())?;
            println!("{json}");
            for s in p.mount_steps() {
                println!("{s}");
            }
            Ok(0)
        }),
        Cmd::Exec {
            state,
            cgroup,
            pty,
            cmd,
        } => if *pty {
            agentd_sandbox::exec::exec_pty(state, cmd, cgroup.as_deref())
        } else {
            agentd_sandbox::exec::exec(state, cmd, cgroup.as_deref())
        }
        .map_err(|e| e.to_string()),
        Cmd::Call {
            state,
            cgroup,
            cwd,
            env,
            cmd,
        } => call(state, cgroup, cwd.as_deref(), env, cmd),
        Cmd::Destroy { state } => container::destroy_state(state)
            .map(|()| 0)
            .map_err(|e| e.to_string()),
        Cmd::Init { .. } => agentd_sandbox::init::run().map_err(|e| e.to_string()),
    };
    match r {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("agentd-sandbox: {e}");
            ExitCode::from(125)
        }
    }
}
