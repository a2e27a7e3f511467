//! `agentctl checkpoints | diff | undo | commit | discard`: the session layer's history,
//! its diff, undo to a checkpoint, commit to the repo, discard (see `docs/undo.md`).

use clap::Subcommand;

use crate::attach::sess;
use crate::client::Client;
use crate::server::undo::{
    CheckpointInfo, CommitAnswer, CommitRequest, DiffAnswer, UndoAnswer, UndoRequest,
};

/// The undo commands (flattened into agentctl's command list).
#[derive(Debug, Subcommand)]
pub enum UndoCmd {
    /// List a session's checkpoints (one before every tool call, and on demand).
    Checkpoints {
        session: String,
        /// Take one now (the session must be running), with this reason.
        #[arg(long)]
        take: Option<String>,
    },
    /// Show what the session changed: unified diff for text, a line for binary files.
    /// Default: from the session's start to its layer now.
    Diff {
        session: String,
        /// Only what tool call N changed.
        #[arg(long, conflicts_with_all = ["from", "to"])]
        call: Option<u64>,
        /// From checkpoint A (default 0, the start).
        #[arg(long)]
        from: Option<u64>,
        /// To checkpoint B (default: the layer now).
        #[arg(long)]
        to: Option<u64>,
        /// Only the list of paths.
        #[arg(long)]
        stat: bool,
    },
    /// Restore the session's workspace to checkpoint N (the session frozen meanwhile; only
    /// paths the session wrote change; a checkpoint of the state before is saved first).
    Undo {
        session: String,
        #[arg(long)]
        to: u64,
    },
    /// Apply the session's changes to the real repo, atomically per file and crash-safely
    /// as a whole; refused, listing the paths, when the repo changed under them.
    Commit {
        session: String,
        /// Only these paths (files or directories, relative to the workspace).
        #[arg(long, num_args = 1..)]
        paths: Vec<String>,
        #[arg(long)]
        message: Option<String>,
        /// Instead of writing the repo's files, export the history as commits on this new
        /// branch of the workspace's git repo (one per tool call, its argv the message;
        /// working tree, index and current branch untouched).
        #[arg(long, conflicts_with_all = ["paths", "message"])]
        git_branch: Option<String>,
    },
    /// Throw the session's changes away (back to checkpoint 0, the session's start).
    Discard { session: String },
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<(), String> {
    let s = serde_json::to_string_pretty(v).map_err(|e| e.to_string())?;
    println!("{s}");
    Ok(())
}

fn table(list: &[CheckpointInfo]) -> String {
    let mut out = format!(
        "{:>5}  {:>5}  {:>7}  {:>10}  {:>10}  REASON\n",
        "ID", "CALL", "FILES", "BYTES", "CREATED"
    );
    for c in list {
        out.push_str(&format!(
            "{:>5}  {:>5}  {:>7}  {:>10}  {:>10}  {}\n",
            c.id,
            c.call.map_or("-".into(), |n| n.to_string()),
            c.files,
            c.bytes,
            c.created_at,
            c.reason
        ));
    }
    out
}

/// Runs one undo command; the exit code.
pub async fn run(c: &Client, cmd: UndoCmd, json: bool) -> Result<u8, String> {
    let e = |e: crate::client::ClientError| e.to_string();
    match cmd {
        UndoCmd::Checkpoints { session, take } => {
            if let Some(reason) = take {
                let cp: CheckpointInfo = c
                    .post(
                        &format!("{}/checkpoints", sess(&session)),
                        &serde_json::json!({ "reason": reason }),
                    )
                    .await
                    .map_err(e)?;
                if json {
                    print_json(&cp)?;
                } else {
                    crate::term::out(&table(std::slice::from_ref(&cp)));
                }
                return Ok(0);
            }
            let list: Vec<CheckpointInfo> = c
                .get(&format!("{}/checkpoints", sess(&session)))
                .await
                .map_err(e)?;
            if json {
                print_json(&list)?;
            } else {
                crate::term::out(&table(&list));
            }
            Ok(0)
        }
        UndoCmd::Diff {
            session,
            call,
            from,
            to,
            stat,
        } => {
            let mut q = vec![format!("stat={stat}")];
            if let Some(n) = call {
                q.push(format!("call={n}"));
            }
            if let Some(a) = from {
                q.push(format!("from={a}"));
            }
            if let Some(b) = to {
                q.push(format!("to={b}"));
            }
            let d: DiffAnswer = c
                .get(&format!("{}/diff?{}", sess(&session), q.join("&")))
                .await
                .map_err(e)?;
            if json {
                print_json(&d)?;
            } else if stat {
                let mut out = String::new();
                for f in &d.files {
                    let ch = serde_json::to_value(f.change).map_err(|e| e.to_string())?;
                    out.push_str(&format!(
                        "{:<13} {}{}\n",
                        ch.as_str().unwrap_or("?"),
                        f.path,
                        if f.binary { " (binary)" } else { "" }
                    ));
                }
                out.push_str(&format!("{} path(s) changed\n", d.files.len()));
                crate::term::out(&out);
            } else {
                crate::term::out(&d.diff);
            }
            Ok(0)
        }
        UndoCmd::Undo { session, to } => {
            let a: UndoAnswer = c
                .post(&format!("{}/undo", sess(&session)), &UndoRequest { to })
                .await
                .map_err(e)?;
            if json {
                print_json(&a)?;
            } else {
                println!(
                    "restored checkpoint {} ({} path(s) changed; the state before is checkpoint {})",
                    a.to,
                    a.paths.len(),
                    a.saved
                );
            }
            Ok(0)
        }
        UndoCmd::Commit {
            session,
            paths,
            message,
            git_branch,
        } => {
            let req = CommitRequest {
                paths,
                message,
                git_branch,
            };
            let a: CommitAnswer = c
                .post(&format!("{}/commit", sess(&session)), &req)
                .await
                .map_err(e)?;
            if json {
                print_json(&a)?;
            } else if let Some(g) = &a.git {
                println!(
                    "branch {} at {}: {} commit(s) on {}{}",
                    g.branch,
                    g.head,
                    g.commits,
                    g.base
                        .as_deref()
                        .unwrap_or("no parent (the repo had no commit)"),
                    if g.skipped > 0 {
                        format!(
                            "; {} fifo(s)/socket(s) left out (git cannot hold them)",
                            g.skipped
                        )
                    } else {
                        String::new()
                    }
                );
            } else {
                for p in &a.paths {
                    println!("{p}");
                }
                println!(
                    "committed checkpoint {}: {} path(s) written to the repo",
                    a.checkpoint,
                    a.paths.len()
                );
            }
            Ok(0)
        }
        UndoCmd::Discard { session } => {
            let a: UndoAnswer = c
                .post(&format!("{}/discard", sess(&session)), &())
                .await
                .map_err(e)?;
            if json {
                print_json(&a)?;
            } else {
                println!(
                    "discarded {} path(s); the state before is checkpoint {}",
                    a.paths.len(),
                    a.saved
                );
            }
            Ok(0)
        }
    }
}
