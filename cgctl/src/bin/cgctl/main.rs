//! `cgctl`: look at the agentd cgroup tree from outside — `tree` (sessions and calls with
//! live figures), `stat PATH` (one cgroup's full statistics) and `top` (a refreshing view
//! sorted by memory, per tool call, like systemd-cgtop). Read-only: it never changes
//! cgroups, so it is safe to point at a production root.

mod rows;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use cgctl::{Cgroup, Root, fs::Kernel};
use clap::{Parser, Subcommand};

/// Inspect agentd's per-session, per-tool-call cgroups.
#[derive(Debug, Parser)]
#[command(name = "cgctl", version)]
struct Cli {
    /// The agentd root cgroup (default: agentd.slice found under the cgroup2 mount).
    #[arg(long, global = true, value_name = "PATH")]
    root: Option<PathBuf>,
    /// Machine-readable output (JSON; `top` prints one JSON document per refresh).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Sessions and their calls with live memory and CPU.
    Tree,
    /// Full statistics of one cgroup (absolute, or relative to the root).
    Stat {
        /// The cgroup.
        path: PathBuf,
    },
    /// Refreshing view of all sessions' cgroups sorted by memory.
    Top {
        /// Print one refresh and exit.
        #[arg(long)]
        once: bool,
        /// Exit after this many refreshes.
        #[arg(long, short = 'n', value_name = "N")]
        iterations: Option<u64>,
        /// Seconds between refreshes (CPU% is measured over this interval).
        #[arg(long, short = 'd', default_value_t = 1.0)]
        delay: f64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cgctl: {e}");
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error>;

fn root_path(cli: &Cli) -> Result<PathBuf, BoxError> {
    Ok(match &cli.root {
        Some(p) => p.clone(),
        None => cgctl::discover::default_root()?,
    })
}

fn run(cli: &Cli) -> Result<(), BoxError> {
    match &cli.cmd {
        Cmd::Tree => {
            let root = Root::open(root_path(cli)?, Arc::new(Kernel))?;
            let tree = rows::tree(&root)?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&tree)?);
            } else {
                print!("{}", rows::render_tree(&tree));
            }
        }
        Cmd::Stat { path } => {
            let full = if path.is_absolute() {
                path.clone()
            } else {
                root_path(cli)?.join(path)
            };
            let cg = Cgroup::open(&full)?;
            let stats = cg.stats()?;
            if cli.json {
                let doc = serde_json::json!({
                    "path": full.display().to_string(),
                    "populated": cg.populated()?,
                    "stats": stats,
                });
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                print!("{}", rows::render_stat(&full, cg.populated()?, &stats));
            }
        }
        Cmd::Top {
            once,
            iterations,
            delay,
        } => top(cli, *once, *iterations, *delay)?,
    }
    Ok(())
}

fn top(cli: &Cli, once: bool, iterations: Option<u64>, delay: f64) -> Result<(), BoxError> {
    if !(delay.is_finite() && delay > 0.0) {
        return Err("--delay must be a positive number of seconds".into());
    }
    let delay = Duration::from_secs_f64(delay);
    let root_dir = root_path(cli)?;
    let root = Root::open(&root_dir, Arc::new(Kernel))?;
    let limit = if once { Some(1) } else { iterations };
    let interactive = limit.is_none() && std::io::stdout().is_terminal();
    let mut prev = rows::sample(&root)?;
    let mut prev_at = std::time::Instant::now();
    let mut done = 0u64;
    let mut out = std::io::stdout().lock();
    while limit.is_none_or(|n| done < n) {
        std::thread::sleep(delay);
        let now = rows::sample(&root)?;
        let elapsed = prev_at.elapsed();
        prev_at = std::time::Instant::now();
        let table = rows::top_rows(&prev, &now, elapsed);
        if cli.json {
            writeln!(out, "{}", serde_json::to_string(&table)?)?;
        } else {
            if interactive {
                // Home + clear, like top: redraw in place.
                write!(out, "\x1b[H\x1b[2J")?;
            }
            write!(out, "{}", rows::render_top(root_dir.as_path(), &table))?;
        }
        out.flush()?;
        prev = now;
        done += 1;
    }
    Ok(())
}
