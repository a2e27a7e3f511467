//! `agentctl`: the user's CLI for agentd. Talks to the daemon's Unix socket (HTTP/JSON);
//! `doctor` and `policy …` run locally (same library functions as `agentd doctor` and
//! `agentd-policy`). `--json` on every command prints the API's JSON instead of text.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use agentd::api::{
    self, CallInfo, CallRequest, CreateSession, Health, Logs, PolicySource, SessionInfo,
    SessionState, SessionStats,
};
use agentd::attach::{self, sess};
use agentd::client::{Client, ClientError};
use agentd::ctl;
use agentd::routes;
use clap::{CommandFactory, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "agentctl",
    version,
    about = "Launch and steer sandboxed AI-agent sessions"
)]
struct Cli {
    /// The daemon's socket.
    #[arg(long, global = true, env = "AGENTD_SOCKET", default_value = api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Machine-readable output (the API's JSON).
    #[arg(long, global = true)]
    json: bool,
    /// Print control characters from inside the sandbox (agent output, call argv) as they
    /// are even to a terminal; by default they are shown escaped (`\x1b`) there.
    #[arg(long, global = true)]
    raw: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start a session running CMD in a sandbox, attached: its output printed as it comes,
    /// this terminal's stdin forwarded, exiting with its status (128+signal if signalled);
    /// Ctrl-C kills the session. With --detach, print the session id. As root with no
    /// daemon answering, starts a daemon inside this process for this one session.
    Run {
        /// Repo policy file (default: .agentd/policy.toml in the workspace if present, else
        /// the `default` profile).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// The repo to work on (default: the current directory).
        #[arg(long)]
        workspace: Option<PathBuf>,
        /// Return once the session runs; print its id.
        #[arg(long, short)]
        detach: bool,
        /// Run the agent as this host uid instead of the workspace's owner (root only; never
        /// 0): the way to run on a root-owned workspace.
        #[arg(long, value_name = "UID")]
        user: Option<u32>,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Run one tool call in a session, in its own cgroup; print its output and report.
    Exec {
        session: String,
        /// Declared intent, e.g. memory=64M,cpu=batch,timeout=60 (only lowers policy limits).
        #[arg(long, default_value = "")]
        intent: String,
        /// Working directory inside the container.
        #[arg(long)]
        cwd: Option<PathBuf>,
        /// Extra environment (KEY=VALUE), allowed by the session's policy.
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// List running and stopped sessions (yours; all for root); --all adds ended ones.
    Ps {
        /// Also list sessions that have ended (exited, killed, failed).
        #[arg(long, short)]
        all: bool,
    },
    /// A live, refreshing view of running sessions and their calls (CPU%, memory, pids).
    Top {
        /// Seconds between refreshes.
        #[arg(long, short, default_value_t = 2.0)]
        delay: f64,
        /// Stop after N refreshes (default: until interrupted).
        #[arg(long, short = 'n')]
        iterations: Option<u64>,
        /// One refresh, then exit.
        #[arg(long)]
        once: bool,
    },
    /// Live memory, CPU, pids and IO of running sessions (or one) and their running calls.
    Stats { session: Option<String> },
    /// The host's memory pool: grants, loans, queued and frozen calls, pressure (root).
    Pool,
    /// A session's tool calls with their reports.
    Calls { session: String },
    /// A session's network connections per call (destination, decision, rule, bytes).
    Net { session: String },
    /// Kill a session (the agent and every call).
    Kill { session: String },
    /// Remove a session (killed first if it runs).
    Rm {
        session: String,
        /// Also when the session has uncommitted changes (they are lost).
        #[arg(long)]
        force: bool,
    },
    #[command(flatten)]
    Undo(agentd::undo_cli::UndoCmd),
    #[command(flatten)]
    Caps(agentd::caps_cli::CapsCmd),
    /// Inspect one session.
    Inspect { session: String },
    /// A session's output so far (the last 8 MiB of each stream).
    Logs {
        session: String,
        /// Keep printing new output until the session ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Print a shell completion script for agentctl.
    Completions { shell: clap_complete::Shell },
    /// Write agentctl's man pages (one per subcommand) into DIR.
    Man {
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Serve the Model Context Protocol (stdio, or Streamable HTTP with --http) so an agent
    /// outside runs its tool calls in a session: exec, read_file, write_file, list, status
    /// (docs/mcp.md). Attaches to --session, or creates a session on --workspace.
    Mcp {
        /// Attach to this running session.
        #[arg(long, conflicts_with_all = ["workspace", "policy", "keep"])]
        session: Option<String>,
        /// Create a session on this repo (default: the current directory).
        #[arg(long)]
        workspace: Option<PathBuf>,
        /// Its repo policy (default: .agentd/policy.toml in the workspace if present).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Serve Streamable HTTP at /mcp on `unix:PATH` (mode 0600) or a loopback IP:PORT.
        #[arg(long, value_name = "unix:PATH|IP:PORT")]
        http: Option<String>,
        /// Leave the created session running when this server exits.
        #[arg(long)]
        keep: bool,
    },
    /// Probe this host: which mechanism runs in which mode.
    Doctor,
    /// Check and explain policy files (locally, no daemon needed).
    Policy {
        /// Host policy instead of /etc/agentd/policy.toml.
        #[arg(long, global = true, value_name = "FILE")]
        host: Option<PathBuf>,
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCmd {
    /// Validate and resolve a policy; print the summary or every error with file:line:column.
    Check {
        #[arg(default_value = agentd_policy::REPO_POLICY)]
        file: PathBuf,
    },
    /// The limits policy gives a command, and which layer or cap decided each.
    Explain {
        file: PathBuf,
        /// Declared intent, e.g. memory=64M,cpu=batch.
        #[arg(long, default_value = "")]
        intent: String,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// The JSON Schema of policy files.
    Schema,
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<(), String> {
    let s = serde_json::to_string_pretty(v).map_err(|e| e.to_string())?;
    println!("{s}");
    Ok(())
}

fn policy_output(o: agentd_policy::cli::Output) -> Result<u8, String> {
    agentd::term::out(&o.stdout);
    agentd::term::err(&o.stderr);
    Ok(o.code.clamp(0, 255) as u8)
}

async fn run(cli: Cli) -> Result<u8, String> {
    let c = Client::new(&cli.socket);
    let json = cli.json;
    agentd::term::set_raw(cli.raw);
    let e = |e: agentd::client::ClientError| e.to_string();
    match cli.cmd {
        Cmd::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "agentctl", &mut buf);
            let script = String::from_utf8_lossy(&buf).into_owned();
            if json {
                print_json(&serde_json::json!({ "shell": shell.to_string(), "script": script }))?;
            } else {
                print!("{script}");
            }
            Ok(0)
        }
        Cmd::Man { dir } => {
            let written = ctl::write_man_pages(Cli::command(), &dir)?;
            if json {
                print_json(&written)?;
            } else {
                for p in written {
                    println!("{}", p.display());
                }
            }
            Ok(0)
        }
        Cmd::Pool => {
            let p: agentd::server::mempool::PoolAnswer =
                c.get(&routes::POOL.at(&[])).await.map_err(e)?;
            if json {
                print_json(&p)?;
            } else if let Some(p) = &p.pool {
                print!("{}", agentd::mem::table::pool_table(p));
            } else {
                println!(
                    "no memory pool: the host policy has no `[resources.pool] enabled = true`"
                );
            }
            Ok(0)
        }
        Cmd::Net { session } => {
            let list: Vec<agentd::egress::ConnRecord> = c
                .get(&routes::SESSION_NET.at(&[&session]))
                .await
                .map_err(e)?;
            if json {
                print_json(&list)?;
            } else {
                print!("{}", ctl::net_table(&list));
            }
            Ok(0)
        }
        Cmd::Stats { session } => {
            let list: Vec<SessionStats> = match session {
                Some(id) => vec![c.get(&routes::SESSION_STATS.at(&[&id])).await.map_err(e)?],
                None => c.get(&routes::STATS.at(&[])).await.map_err(e)?,
            };
            if json {
                print_json(&list)?;
            } else {
                agentd::term::out(&ctl::stats_table(&list));
            }
            Ok(0)
        }
        Cmd::Run {
            policy,
            workspace,
            detach,
            user,
            cmd,
        } => {
            let ws = match workspace {
                Some(w) => w,
                None => std::env::current_dir().map_err(|e| e.to_string())?,
            };
            let ws = std::path::absolute(&ws).map_err(|e| format!("{}: {e}", ws.display()))?;
            let default_policy = ws.join(agentd_policy::REPO_POLICY);
            let policy = match policy {
                Some(p) => Some(p),
                None => default_policy.exists().then_some(default_policy),
            };
            // Read the policy here, with the user's rights: the daemon never opens it.
            let policy = match policy {
                Some(p) => Some(PolicySource {
                    name: p.display().to_string(),
                    text: std::fs::read_to_string(&p)
                        .map_err(|e| format!("policy {}: {e}", p.display()))?,
                }),
                None => None,
            };
            let req = CreateSession {
                workspace: ws,
                policy,
                argv: cmd,
                stdin: !detach,
                user,
            };
            let path = routes::SESSIONS.at(&[]);
            let first = c.post::<_, SessionInfo>(&path, &req).await;
            // No daemon, but root and attached: a daemon in this process for this session.
            let (c, mut inproc) = match first {
                Err(ClientError::NoDaemon { .. }) if attach::is_root() && !detach => {
                    let (d, c) = attach::InProcess::start().await?;
                    eprintln!(
                        "agentctl: no daemon on {}: running one inside this process \
                         (state {}, until the session ends)",
                        cli.socket.display(),
                        d.dir.display()
                    );
                    (c, Some(d))
                }
                _ => (c, None),
            };
            let s: Result<SessionInfo, String> = match (&inproc, first) {
                (None, r) => r.map_err(e),
                (Some(_), _) => c.post(&path, &req).await.map_err(e),
            };
            let code = match s {
                Ok(s) if detach => {
                    if json {
                        print_json(&s)?;
                    } else {
                        println!("{}", s.id);
                    }
                    Ok(0)
                }
                Ok(s) => {
                    if !json {
                        eprintln!("agentctl: session {} running", s.id);
                    }
                    let code = attach::attach(&c, &s, json).await.map_err(e);
                    if inproc.is_some()
                        && !json
                        && let Ok(calls) = c.get::<Vec<CallInfo>>(&routes::CALLS.at(&[&s.id])).await
                    {
                        // Nothing will be left to ask afterwards: show the calls now.
                        agentd::term::err(&ctl::calls_table(&calls));
                    }
                    code
                }
                Err(err) => Err(err),
            };
            if let Some(d) = inproc.as_mut() {
                d.stop().await;
            }
            code
        }
        Cmd::Exec {
            session,
            intent,
            cwd,
            env,
            cmd,
        } => {
            let intent = ctl::parse_intent(&intent).map_err(|e| e.to_string())?;
            let mut envs = BTreeMap::new();
            for kv in env {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| format!("--env {kv}: expected KEY=VALUE"))?;
                envs.insert(k.to_string(), v.to_string());
            }
            let req = CallRequest {
                argv: cmd,
                cwd,
                env: envs,
                intent,
            };
            let call: CallInfo = if json {
                let call = c
                    .post(&routes::CALLS.at(&[&session]), &req)
                    .await
                    .map_err(e)?;
                print_json(&call)?;
                call
            } else {
                let call = attach::exec_streamed(&c, &session, &req)
                    .await
                    .map_err(e)?
                    .ok_or("the daemon's stream ended before the call's report")?;
                agentd::term::err(&ctl::call_report(&call));
                call
            };
            Ok(call.exit_code.unwrap_or(125).clamp(0, 255) as u8)
        }
        Cmd::Ps { all } => {
            let mut list: Vec<SessionInfo> = c.get(&routes::SESSIONS.at(&[])).await.map_err(e)?;
            if !all {
                // Stopped sessions hold work a person has to commit or discard.
                list.retain(|s| !s.state.ended() || s.state == SessionState::Stopped);
            }
            if json {
                print_json(&list)?;
            } else {
                agentd::term::out(&ctl::sessions_table(&list));
            }
            Ok(0)
        }
        Cmd::Top {
            delay,
            iterations,
            once,
        } => {
            let o = agentd::top::TopOpts {
                delay,
                iterations: if once { Some(1) } else { iterations },
                json,
            };
            agentd::top::run(&c, &o).await?;
            Ok(0)
        }
        Cmd::Calls { session } => {
            let list: Vec<CallInfo> = c.get(&routes::CALLS.at(&[&session])).await.map_err(e)?;
            if json {
                print_json(&list)?;
            } else {
                agentd::term::out(&ctl::calls_table(&list));
            }
            Ok(0)
        }
        Cmd::Kill { session } => {
            let s: SessionInfo = c
                .post(&routes::SESSION_KILL.at(&[&session]), &())
                .await
                .map_err(e)?;
            show_session(&s, json)
        }
        Cmd::Undo(u) => agentd::undo_cli::run(&c, u, json).await,
        Cmd::Caps(k) => agentd::caps_cli::run(&c, k, json).await,
        Cmd::Rm { session, force } => {
            let q = if force { "?force=true" } else { "" };
            let s: SessionInfo = c
                .delete(&format!("{}{q}", sess(&session)))
                .await
                .map_err(e)?;
            if json {
                print_json(&s)?;
            } else {
                println!("{}", s.id);
            }
            Ok(0)
        }
        Cmd::Inspect { session } => {
            let s: SessionInfo = c.get(&sess(&session)).await.map_err(e)?;
            // Text and JSON are the same here: the full record.
            print_json(&s)?;
            Ok(0)
        }
        Cmd::Logs {
            session,
            follow: true,
        } => {
            attach::follow(&c, &session, json).await.map_err(e)?;
            Ok(0)
        }
        Cmd::Logs { session, .. } => {
            let l: Logs = c
                .get(&routes::SESSION_LOGS.at(&[&session]))
                .await
                .map_err(e)?;
            if json {
                print_json(&l)?;
            } else {
                agentd::term::out(&l.stdout);
                agentd::term::err(&l.stderr);
            }
            Ok(0)
        }
        Cmd::Mcp {
            session,
            workspace,
            policy,
            http,
            keep,
        } => {
            let o = agentd::mcp::Options {
                socket: cli.socket.clone(),
                session,
                workspace,
                policy,
                http,
                keep,
            };
            agentd::mcp::run(o).await.map(|()| 0)
        }
        Cmd::Doctor => {
            let report = agentd::doctor::run(&agentd::doctor::RealHost::new());
            if json {
                print_json(&report)?;
            } else {
                print!("{}", report.render());
            }
            // Say whether the daemon answers too (not an error when it does not).
            match c.get::<Health>(&routes::HEALTH.at(&[])).await {
                Ok(h) if !json => println!(
                    "daemon: agentd {} on {} (cgroup root {})",
                    h.version,
                    c.socket().display(),
                    h.cgroup_root
                ),
                Err(err) if !json => println!("daemon: {err}"),
                _ => {}
            }
            Ok(if report.ready() { 0 } else { 1 })
        }
        Cmd::Policy { host, cmd } => {
            let o = ctl::PolicyOpts { host, json };
            match cmd {
                PolicyCmd::Check { file } => policy_output(ctl::policy_check(&o, &file)),
                PolicyCmd::Explain { file, intent, cmd } => {
                    let intent = ctl::parse_intent(&intent).map_err(|e| e.to_string())?;
                    policy_output(ctl::policy_explain(&o, &file, &cmd, &intent))
                }
                PolicyCmd::Schema => policy_output(ctl::policy_schema()),
            }
        }
    }
}

fn show_session(s: &SessionInfo, json: bool) -> Result<u8, String> {
    if json {
        print_json(s)?;
    } else {
        agentd::term::out(&ctl::sessions_table(std::slice::from_ref(s)));
    }
    Ok(0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Two workers: enough for the client, and for the daemon a root `run` may start here.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agentctl: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let r = rt.block_on(run(cli));
    // A stdin-forwarding thread may be blocked on the terminal: do not wait for it.
    rt.shutdown_background();
    match r {
        Ok(code) => ExitCode::from(code),
        Err(msg) => {
            // A daemon's reason may quote the session's stderr.
            agentd::term::err(&format!("agentctl: {msg}\n"));
            ExitCode::from(2)
        }
    }
}
