//! `agentd-sandbox`: run a command in a session container (`run`, which also starts the
//! session's call spawner), run a command in a running session (`exec`: its own namespace
//! joins; `call`: through the session's spawner, one fork+exec), print a session's plan and
//! mount steps (`plan`), remove a kept session's state (`destroy`); `init` is internal (the
//! container's PID 1, re-executed by `run`).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::io::Write;
use std::os::unix::net::UnixStream;

use agentd_sandbox::launch::{self, ExecRequest, RunRequest};
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
    /// Read the whole request (a `launch::RunRequest`: plan, command, cgroup) as JSON from
    /// this fd instead of building it from the flags below: how programs start sessions.
    #[arg(long, value_name = "FD", conflicts_with_all = ["workspace", "state", "bundle", "bind_ro", "landlock_require", "owner_uid", "host_net", "allow_io_uring", "capture_exec"])]
    plan_fd: Option<i32>,
    /// The repo: the overlay's read-only lower layer, mounted at the same path inside.
    #[arg(long, required_unless_present = "plan_fd")]
    workspace: Option<PathBuf>,
    /// The session state dir (created; must not exist): holds the layer image (upper layer, /tmp, /home).
    #[arg(long, required_unless_present = "plan_fd")]
    state: Option<PathBuf>,
    /// Disk quota of the session (size of its layer image): 256M, 1GiB, 4096K or bytes
    /// (K/M/G = KiB/MiB/GiB; KB/MB/GB are 1000-based, as in policies).
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
    /// Capture every exec of the agent's processes (docs/capture.md): each waits until a
    /// client of `<state>/capture.sock` (the daemon) has placed it in a call.
    #[arg(long)]
    capture_exec: bool,
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
        /// The start handshake (a Unix socket, see `launch`): `R` once the container is
        /// up, then the agent starts on `G`.
        #[arg(long, value_name = "FD")]
        sync_fd: Option<i32>,
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
        /// Read the request (a `launch::ExecRequest`: state, command, cwd, env, cgroup) as
        /// JSON from this fd instead of the flags: how programs run calls.
        #[arg(long, value_name = "FD", conflicts_with_all = ["state", "cgroup", "pty", "cmd"])]
        request_fd: Option<i32>,
        /// The session's state dir (run with --keep-state or still running).
        #[arg(long, required_unless_present = "request_fd")]
        state: Option<PathBuf>,
        /// Start the command in this cgroup directory (clone3 CLONE_INTO_CGROUP).
        #[arg(long)]
        cgroup: Option<PathBuf>,
        /// Give the command a pty of the session (stdin/stdout relayed) instead of our stdio.
        #[arg(long)]
        pty: bool,
        /// The command.
        #[arg(last = true, required_unless_present = "request_fd")]
        cmd: Vec<String>,
    },
    /// Run CMD in a running session through its call spawner (one fork+exec, straight into
    /// the cgroup), with this process's stdio; exits with CMD's status.
    Call {
        /// Read the request (a `launch::ExecRequest`, its cgroup set) as JSON from this fd
        /// instead of the flags.
        #[arg(long, value_name = "FD", conflicts_with_all = ["state", "cgroup", "cwd", "env", "cmd"])]
        request_fd: Option<i32>,
        /// The session's state dir.
        #[arg(long, required_unless_present = "request_fd")]
        state: Option<PathBuf>,
        /// The call's cgroup directory (clone3 CLONE_INTO_CGROUP).
        #[arg(long, required_unless_present = "request_fd")]
        cgroup: Option<PathBuf>,
        /// Working directory inside the container (default: the plan's cwd, else the
        /// workspace).
        #[arg(long)]
        cwd: Option<PathBuf>,
        /// Extra environment (KEY=VALUE).
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// The command.
        #[arg(last = true, required_unless_present = "request_fd")]
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

/// `--disk-size`: the one size parser of the project (the policy's: K/M/G/T and KiB…TiB
/// are 1024-based, KB…TB 1000-based), so a size means the same here as in a policy.
fn parse_size(s: &str) -> Result<u64, String> {
    agentd_policy::units::parse_size(s)
        .map(|v| v.0)
        .map_err(|e| format!("--disk-size: {e}"))
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

/// The request from `--plan-fd`, or the plan from the flags (the command left empty).
fn build_request(a: &SessionArgs) -> Result<RunRequest, String> {
    if let Some(fd) = a.plan_fd {
        let req: RunRequest = launch::read_request(fd).map_err(|e| e.to_string())?;
        req.plan.validate().map_err(|e| e.to_string())?;
        return Ok(req);
    }
    let (plan, bundle_cmd) = build_plan(a)?;
    Ok(RunRequest {
        plan,
        argv: bundle_cmd.unwrap_or_default(),
        cgroup: None,
        keep_state: false,
    })
}

/// The plan and, with `--bundle`, the bundle's command.
fn build_plan(a: &SessionArgs) -> Result<(SessionPlan, Option<Vec<String>>), String> {
    let (Some(workspace), Some(state)) = (&a.workspace, &a.state) else {
        return Err("give --workspace and --state, or --plan-fd".into());
    };
    let mut plan = launch::default_plan(workspace, state).map_err(|e| e.to_string())?;
    plan.workspace.size_bytes = parse_size(&a.disk_size)?;
    if let Some(u) = a.owner_uid {
        plan.ids.agent_host_id = u;
    }
    plan.ids.root_host_id = a.root_uid;
    plan.namespaces.net = !a.host_net;
    plan.capture_exec = a.capture_exec;
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
    let bundle_cmd = match &a.bundle {
        Some(dir) => Some(
            agentd_sandbox::oci::apply_bundle(&absolute(dir)?, &mut plan)
                .map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    plan.validate().map_err(|e| e.to_string())?;
    Ok((plan, bundle_cmd))
}

fn run(
    session: &SessionArgs,
    keep_state: bool,
    cgroup: Option<&Path>,
    sync_fd: Option<i32>,
    cmd: &[String],
) -> Result<i32, String> {
    let mut req = build_request(session)?;
    if !cmd.is_empty() {
        req.argv = cmd.to_vec();
    }
    if req.argv.is_empty() {
        return Err("no command: give one after `--`".into());
    }
    req.keep_state |= keep_state;
    if let Some(p) = cgroup {
        req.cgroup = Some(p.to_path_buf());
    }
    let sync = sync_fd
        .map(launch::sync_socket)
        .transpose()
        .map_err(|e| e.to_string())?;
    let cg = match &req.cgroup {
        Some(p) => Some(std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => None,
    };
    container::prepare_state(&req.plan).map_err(|e| e.to_string())?;
    let result = start_and_wait(&req, cg.as_ref().map(|f| f.as_raw_fd()), sync);
    if !req.keep_state {
        container::destroy_state(&req.plan.workspace.state).map_err(|e| e.to_string())?;
    }
    result
}

fn start_and_wait(
    req: &RunRequest,
    cgroup: Option<std::os::fd::RawFd>,
    sync: Option<UnixStream>,
) -> Result<i32, String> {
    let plan = &req.plan;
    let c = container::start(plan, &req.argv, cgroup).map_err(|e| e.to_string())?;
    if let Some(gap) = c.landlock.gap() {
        eprintln!("agentd-sandbox: warning: {gap}");
    }
    let Some(ready) = container::wait_ready(&c).map_err(|e| e.to_string())? else {
        // The init failed building the container and said why on stderr.
        return container::wait(&c).map_err(|e| e.to_string());
    };
    if plan.capture_exec && ready.capture.is_none() {
        let _ = nix::sys::signal::kill(c.pid, nix::sys::signal::Signal::SIGKILL);
        let _ = container::wait(&c);
        return Err("exec capture: the init sent no seccomp listener".into());
    }
    // The session's call spawner (docs/spawner.md), forked once the container is built
    // (it joins the finished mount namespace) and while this process is still
    // single-threaded; its socket is bound before the record and READY say the session runs.
    let spawner = match agentd_sandbox::spawner::start(plan, &c, ready.capture) {
        Ok(s) => s,
        Err(e) => {
            let _ = nix::sys::signal::kill(c.pid, nix::sys::signal::Signal::SIGKILL);
            let _ = container::wait(&c);
            return Err(format!("starting the call spawner: {e}"));
        }
    };
    let r = serve_session(plan, &c, sync);
    // The session is over (or never ran): no spawner outlives it.
    if r.is_err() {
        let _ = nix::sys::signal::kill(c.pid, nix::sys::signal::Signal::SIGKILL);
    }
    spawner.stop();
    r
}

/// Records the session, completes the start handshake, starts the agent and waits.
fn serve_session(
    plan: &SessionPlan,
    c: &container::Container,
    sync: Option<UnixStream>,
) -> Result<i32, String> {
    // For `exec` into this session while it runs: written once the container is built, so
    // whoever finds it can exec at once.
    agentd_sandbox::exec::write_record(&agentd_sandbox::exec::SessionRecord {
        plan: plan.clone(),
        init_pid: c.pid.as_raw(),
        landlock: Some(c.landlock.clone()),
    })
    .map_err(|e| e.to_string())?;
    if let Some(mut s) = sync {
        let answer = s
            .write_all(&[launch::READY])
            .and_then(|()| launch::read_byte(&mut s));
        if !matches!(answer, Ok(Some(launch::GO))) {
            let _ = nix::sys::signal::kill(c.pid, nix::sys::signal::Signal::SIGKILL);
            let _ = container::wait(c);
            return Err("the caller went away before starting the agent".into());
        }
    }
    container::go(c).map_err(|e| e.to_string())?;
    container::wait_forwarding_signals(c).map_err(|e| e.to_string())
}

/// `agentd-sandbox call`: one call through the session's spawner, with our stdio.
fn call(req: &ExecRequest) -> Result<i32, String> {
    use agentd_sandbox::spawner::client;
    use std::os::fd::AsFd;
    let cgroup = req
        .cgroup
        .as_deref()
        .ok_or("a call through the spawner needs its cgroup (--cgroup)")?;
    let cg = std::fs::File::open(cgroup).map_err(|e| format!("{}: {e}", cgroup.display()))?;
    let (i, o, e) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    let started = client::start(req, [cg.as_fd(), i.as_fd(), o.as_fd(), e.as_fd()])
        .map_err(|e| e.to_string())?;
    drop(cg);
    client::wait_exit(&started).map_err(|e| e.to_string())
}

/// The exec request from `--request-fd`, or from the flags.
fn exec_request(
    fd: Option<i32>,
    state: Option<&Path>,
    cgroup: Option<&Path>,
    pty: bool,
    cmd: &[String],
) -> Result<ExecRequest, agentd_sandbox::Error> {
    if let Some(fd) = fd {
        return launch::read_request(fd);
    }
    let state = state.ok_or(agentd_sandbox::Error::MissingFlag { flag: "--state" })?;
    let mut req = ExecRequest::new(state, cmd);
    req.cgroup = cgroup.map(Path::to_path_buf);
    req.pty = pty;
    Ok(req)
}

/// The call request from `--request-fd`, or from the flags.
fn call_request(
    fd: Option<i32>,
    state: Option<&Path>,
    cgroup: Option<&Path>,
    cwd: &Option<PathBuf>,
    env: &[String],
    cmd: &[String],
) -> Result<ExecRequest, String> {
    let mut req = exec_request(fd, state, cgroup, false, cmd).map_err(|e| e.to_string())?;
    if fd.is_some() {
        return Ok(req);
    }
    req.cwd = cwd.clone();
    for kv in env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("--env {kv}: expected KEY=VALUE"))?;
        req.env.insert(k.to_string(), v.to_string());
    }
    req.validate().map_err(|e| e.to_string())?;
    Ok(req)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match &cli.cmd {
        Cmd::Run {
            session,
            keep_state,
            cgroup,
            sync_fd,
            cmd,
        } => run(session, *keep_state, cgroup.as_deref(), *sync_fd, cmd),
        Cmd::Plan { session } => build_request(session).map(|r| r.plan).and_then(|p| {
            let json = serde_json::to_string_pretty(&p).map_err(|e| e.to_string())?;
            println!("{json}");
            for s in p.mount_steps() {
                println!("{s}");
            }
            Ok(0)
        }),
        Cmd::Exec {
            request_fd,
            state,
            cgroup,
            pty,
            cmd,
        } => exec_request(*request_fd, state.as_deref(), cgroup.as_deref(), *pty, cmd)
            .and_then(|req| agentd_sandbox::exec::exec(&req))
            .map_err(|e| e.to_string()),
        Cmd::Call {
            request_fd,
            state,
            cgroup,
            cwd,
            env,
            cmd,
        } => call_request(
            *request_fd,
            state.as_deref(),
            cgroup.as_deref(),
            cwd,
            env,
            cmd,
        )
        .and_then(|req| call(&req)),
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
