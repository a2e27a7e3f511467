//! `agentctl`: the user's CLI for agentd. Talks to the daemon's Unix socket (HTTP/JSON);
//! `doctor` and `policy …` run locally (same library functions as `agentd doctor` and
//! `agentd-policy`). `--json` on every command prints the API's JSON instead of text.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use agentd::api::{
    self, CallInfo, CallRequest, CreateSession, Health, Logs, PolicySource, SessionInfo,
};
use agentd::client::Client;
use agentd::ctl;
use clap::{Parser, Subcommand};

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
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start a session running CMD in a sandbox; wait for it and print its output, exiting
    /// with its status (or print the session id with --detach).
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
    /// List sessions (yours; all for root).
    Ps,
    /// A session's tool calls with their reports.
    Calls { session: String },
    /// Kill a session (the agent and every call).
    Kill { session: String },
    /// Remove a session (killed first if it runs).
    Rm { session: String },
    /// Inspect one session.
    Inspect { session: String },
    /// A session's output so far.
    Logs { session: String },
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
    print!("{}", o.stdout);
    eprint!("{}", o.stderr);
    Ok(o.code.clamp(0, 255) as u8)
}

fn sess(id: &str) -> String {
    format!("{}/sessions/{id}", api::PREFIX)
}

async fn run(cli: Cli) -> Result<u8, String> {
    let c = Client::new(&cli.socket);
    let json = cli.json;
    let e = |e: agentd::client::ClientError| e.to_string();
    match cli.cmd {
        Cmd::Run {
            policy,
            workspace,
            detach,
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
            };
            let path = format!("{}/sessions", api::PREFIX);
            let s: SessionInfo = c.post(&path, &req).await.map_err(e)?;
            if detach {
                if json {
                    print_json(&s)?;
                } else {
                    println!("{}", s.id);
                }
                return Ok(0);
            }
            eprintln!("agentctl: session {} running", s.id);
            let s: SessionInfo = c
                .post(&format!("{}/wait", sess(&s.id)), &())
                .await
                .map_err(e)?;
            let logs: Logs = c.get(&format!("{}/logs", sess(&s.id))).await.map_err(e)?;
            if json {
                print_json(&serde_json::json!({ "session": s, "logs": logs }))?;
            } else {
                print!("{}", logs.stdout);
                eprint!("{}", logs.stderr);
            }
            Ok(s.exit_code.unwrap_or(125).clamp(0, 255) as u8)
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
            let call: CallInfo = c
                .post(&format!("{}/calls", sess(&session)), &req)
                .await
                .map_err(e)?;
            if json {
                print_json(&call)?;
            } else {
                print!("{}", call.stdout.as_deref().unwrap_or_default());
                eprint!("{}", call.stderr.as_deref().unwrap_or_default());
                eprint!("{}", ctl::call_report(&call));
            }
            Ok(call.exit_code.unwrap_or(125).clamp(0, 255) as u8)
        }
        Cmd::Ps => {
            let list: Vec<SessionInfo> = c
                .get(&format!("{}/sessions", api::PREFIX))
                .await
                .map_err(e)?;
            if json {
                print_json(&list)?;
            } else {
                print!("{}", ctl::sessions_table(&list));
            }
            Ok(0)
        }
        Cmd::Calls { session } => {
            let list: Vec<CallInfo> = c
                .get(&format!("{}/calls", sess(&session)))
                .await
                .map_err(e)?;
            if json {
                print_json(&list)?;
            } else {
                print!("{}", ctl::calls_table(&list));
            }
            Ok(0)
        }
        Cmd::Kill { session } => {
            let s: SessionInfo = c
                .post(&format!("{}/kill", sess(&session)), &())
                .await
                .map_err(e)?;
            show_session(&s, json)
        }
        Cmd::Rm { session } => {
            let s: SessionInfo = c.delete(&sess(&session)).await.map_err(e)?;
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
        Cmd::Logs { session } => {
            let l: Logs = c
                .get(&format!("{}/logs", sess(&session)))
                .await
                .map_err(e)?;
            if json {
                print_json(&l)?;
            } else {
                print!("{}", l.stdout);
                eprint!("{}", l.stderr);
            }
            Ok(0)
        }
        Cmd::Doctor => {
            let report = agentd::doctor::run(&agentd::doctor::RealHost::new());
            if json {
                print_json(&report)?;
            } else {
                print!("{}", report.render());
            }
            // Say whether the daemon answers too (not an error when it does not).
            match c.get::<Health>(&format!("{}/health", api::PREFIX)).await {
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
        print!("{}", ctl::sessions_table(std::slice::from_ref(s)));
    }
    Ok(0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agentctl: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(msg) => {
            eprintln!("agentctl: {msg}");
            ExitCode::from(2)
        }
    }
}
