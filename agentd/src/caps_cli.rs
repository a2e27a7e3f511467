//! `agentctl approvals | approve | deny | grants | revoke | audit`: the approval queue,
//! a session's capability grants and its hash-chained audit trail (docs/capabilities.md).

use std::fmt::Write as _;

use clap::Subcommand;

use crate::caps::audit::Record;
use crate::caps::{ApprovalInfo, Grant, Scope};
use crate::client::Client;
use crate::routes;
use crate::server::approvals::{AnswerRequest, AuditAnswer, Queue, Revoked};

/// The capability commands (flattened into agentctl's command list).
#[derive(Debug, Subcommand)]
pub enum CapsCmd {
    /// Requests waiting for an answer (your sessions'; all for root). --watch prints each
    /// new request as it is filed, until interrupted.
    Approvals {
        #[arg(long, short)]
        watch: bool,
    },
    /// Approve request ID: the parked operation resumes. --scope: once (this request only,
    /// the default), call (the requesting call, while it runs) or session.
    Approve {
        id: u64,
        #[arg(long, default_value = "once")]
        scope: Scope,
    },
    /// Deny request ID (the operation is refused naming the approval). --scope session:
    /// later requests for the same resource are denied without asking.
    Deny {
        id: u64,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        scope: Option<Scope>,
    },
    /// A session's capability grants (revoked ones marked).
    Grants { session: String },
    /// Revoke grant G of a session, and every grant delegated from it.
    Revoke { session: String, grant: u64 },
    /// A session's audit trail; --verify checks its hash chain (exit 1 when broken).
    Audit {
        session: String,
        #[arg(long)]
        verify: bool,
    },
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<(), String> {
    let s = serde_json::to_string_pretty(v).map_err(|e| e.to_string())?;
    println!("{s}");
    Ok(())
}

/// `agentctl approvals`.
pub fn approvals_table(list: &[ApprovalInfo]) -> String {
    let mut out = format!(
        "{:>5} {:<14} {:>5} {:<11} {:>6}  {:<28} REASON\n",
        "ID", "SESSION", "CALL", "VIA", "LEFT", "RESOURCE"
    );
    let now = crate::caps::now_ms();
    for a in list {
        let left = a.deadline_ms.saturating_sub(now) / 1000;
        let _ = writeln!(
            out,
            "{:>5} {:<14} {:>5} {:<11} {:>5}s  {:<28} {} [{}]",
            a.id,
            a.session,
            a.call.map_or("-".into(), |n| n.to_string()),
            a.via,
            left,
            a.resource,
            a.reason,
            a.rule
        );
    }
    if list.is_empty() {
        out.push_str("no pending requests\n");
    }
    out
}

fn grants_table(list: &[Grant]) -> String {
    let mut out = format!(
        "{:>5} {:<8} {:<9} {:<7} {:>5} {:>6}  {:<28} ORIGIN\n",
        "GRANT", "EFFECT", "SUBJECT", "SCOPE", "USES", "PARENT", "RESOURCE"
    );
    for g in list {
        let _ = writeln!(
            out,
            "{:>5} {:<8} {:<9} {:<7} {:>5} {:>6}  {:<28} {}{}",
            g.id,
            format!("{:?}", g.effect).to_lowercase(),
            g.subject.to_string(),
            g.scope.to_string(),
            g.uses.map_or("-".into(), |u| u.to_string()),
            g.parent.map_or("-".into(), |p| p.to_string()),
            g.resource,
            g.origin,
            if g.revoked { " (revoked)" } else { "" }
        );
    }
    out
}

fn audit_table(list: &[Record]) -> String {
    let mut out = String::new();
    for r in list {
        let _ = writeln!(out, "{:>6} {} {:<13} {}", r.seq, r.at_ms, r.kind, r.body);
    }
    out
}

/// Runs one capability command; the exit code.
pub async fn run(c: &Client, cmd: CapsCmd, json: bool) -> Result<u8, String> {
    let e = |e: crate::client::ClientError| e.to_string();
    match cmd {
        CapsCmd::Approvals { watch: false } => {
            let q: Queue = c.get(&routes::APPROVALS.at(&[])).await.map_err(e)?;
            if json {
                print_json(&q.requests)?;
            } else {
                crate::term::out(&approvals_table(&q.requests));
            }
            Ok(0)
        }
        CapsCmd::Approvals { watch: true } => {
            let mut seen = std::collections::BTreeSet::new();
            let mut version: Option<u64> = None;
            loop {
                let path = match version {
                    Some(v) => format!("{}?wait=60&after={v}", routes::APPROVALS.at(&[])),
                    None => routes::APPROVALS.at(&[]),
                };
                let q: Queue = c.get(&path).await.map_err(e)?;
                version = Some(q.version);
                let new: Vec<ApprovalInfo> = q
                    .requests
                    .into_iter()
                    .filter(|a| seen.insert(a.id))
                    .collect();
                for a in &new {
                    if json {
                        println!("{}", serde_json::to_string(a).map_err(|e| e.to_string())?);
                    } else {
                        let t = approvals_table(std::slice::from_ref(a));
                        crate::term::out(t.lines().nth(1).map_or("", |l| l));
                        crate::term::out("\n");
                    }
                }
            }
        }
        CapsCmd::Approve { id, scope } => {
            let a: ApprovalInfo = c
                .post(
                    &routes::APPROVE.at(&[&id.to_string()]),
                    &AnswerRequest {
                        scope: Some(scope),
                        reason: None,
                    },
                )
                .await
                .map_err(e)?;
            if json {
                print_json(&a)?;
            } else {
                println!(
                    "approval {id}: approved ({} for {}){}",
                    a.resource,
                    scope,
                    a.grant.map_or(String::new(), |g| format!(", grant {g}"))
                );
            }
            Ok(0)
        }
        CapsCmd::Deny { id, reason, scope } => {
            let a: ApprovalInfo = c
                .post(
                    &routes::DENY.at(&[&id.to_string()]),
                    &AnswerRequest { scope, reason },
                )
                .await
                .map_err(e)?;
            if json {
                print_json(&a)?;
            } else {
                println!("approval {id}: denied ({})", a.resource);
            }
            Ok(0)
        }
        CapsCmd::Grants { session } => {
            let list: Vec<Grant> = c.get(&routes::GRANTS.at(&[&session])).await.map_err(e)?;
            if json {
                print_json(&list)?;
            } else {
                crate::term::out(&grants_table(&list));
            }
            Ok(0)
        }
        CapsCmd::Revoke { session, grant } => {
            let r: Revoked = c
                .delete(&routes::GRANT.at(&[&session, &grant.to_string()]))
                .await
                .map_err(e)?;
            if json {
                print_json(&r)?;
            } else {
                println!("revoked grant(s) {:?}", r.revoked);
            }
            Ok(0)
        }
        CapsCmd::Audit { session, verify } => {
            let a: AuditAnswer = c.get(&routes::AUDIT.at(&[&session])).await.map_err(e)?;
            if json {
                print_json(&a)?;
            } else {
                if !verify {
                    crate::term::out(&audit_table(&a.records));
                }
                match &a.verified.problem {
                    None => println!(
                        "audit chain of session {session}: {} record(s), intact",
                        a.verified.records
                    ),
                    Some(p) => println!("audit chain of session {session}: BROKEN: {p}"),
                }
            }
            Ok(if verify && !a.verified.ok { 1 } else { 0 })
        }
    }
}
