//! `agentd-policy`: the small stand-alone policy CLI (check, explain, schema, profiles). All
//! logic is in `agentd_policy::cli`; `agentctl policy …` will call the same functions.

use std::path::PathBuf;
use std::process::ExitCode;

use agentd_policy::cli::{self, Output};
use agentd_policy::units::{parse_duration, parse_size};
use agentd_policy::{CpuClass, DeclaredIntent, FileKind, LoadOptions, REPO_POLICY, RealFs};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "agentd-policy",
    version,
    about = "Check and explain agentd policy files"
)]
struct Args {
    /// Host policy (default /etc/agentd/policy.toml; a missing file means built-in defaults).
    #[arg(long, global = true, value_name = "FILE")]
    host: Option<PathBuf>,
    /// Load profiles from this directory instead of the copies built into the binary.
    #[arg(long, global = true, value_name = "DIR")]
    profile_dir: Option<PathBuf>,
    /// Command-line override layer, one TOML assignment each: --set 'resources.memory="2GiB"'.
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Validate and resolve a policy; print errors with file:line:column.
    Check {
        #[arg(default_value = REPO_POLICY)]
        file: PathBuf,
        /// What FILE is: a repo policy, a profile, or a host policy (which may set `max` caps).
        #[arg(long = "as", value_name = "KIND", default_value = "repo", value_parser = parse_kind)]
        kind: FileKind,
    },
    /// Show the intent and limits policy gives a command, and which layer decided each.
    Explain {
        file: PathBuf,
        /// Declared memory (may only lower the limit).
        #[arg(long, value_parser = |s: &str| parse_size(s))]
        memory: Option<agentd_policy::Size>,
        /// Declared CPU class: latency or batch.
        #[arg(long, value_parser = parse_class)]
        cpu_class: Option<CpuClass>,
        /// Declared timeout.
        #[arg(long, value_parser = |s: &str| parse_duration(s))]
        timeout: Option<agentd_policy::Duration>,
        /// Declared pids limit.
        #[arg(long)]
        pids: Option<u32>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print the JSON Schema of policy files (for editor completion).
    Schema,
    /// List shipped profiles and what this build enforces.
    Profiles,
}

fn parse_class(s: &str) -> Result<CpuClass, String> {
    match s {
        "latency" => Ok(CpuClass::Latency),
        "batch" => Ok(CpuClass::Batch),
        _ => Err(format!("`{s}` is not a CPU class (latency or batch)")),
    }
}

fn parse_kind(s: &str) -> Result<FileKind, String> {
    match s {
        "repo" => Ok(FileKind::Repo),
        "profile" => Ok(FileKind::Profile),
        "host" => Ok(FileKind::Host),
        _ => Err(format!("`{s}` is not a file kind (repo, profile or host)")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut opts = LoadOptions {
        host: args.host,
        profile_dir: args.profile_dir,
        overrides: args.overrides,
        file_kind: FileKind::Repo,
    };
    let out: Output = match args.cmd {
        Cmd::Check { file, kind } => {
            opts.file_kind = kind;
            cli::check(&RealFs, &opts, &file, args.json)
        }
        Cmd::Explain {
            file,
            memory,
            cpu_class,
            timeout,
            pids,
            command,
        } => {
            let declared = DeclaredIntent {
                memory,
                cpu_class,
                timeout,
                pids,
            };
            cli::explain(&RealFs, &opts, &file, &command, &declared, args.json)
        }
        Cmd::Schema => cli::schema(),
        Cmd::Profiles => cli::profiles(args.json),
    };
    print!("{}", out.stdout);
    eprint!("{}", out.stderr);
    ExitCode::from(u8::try_from(out.code).unwrap_or(2))
}
