//! `commit --git-branch NAME` (docs/undo.md, "Export to a git branch"): the session's
//! checkpoint history as commits on a new branch of the workspace's repo, instead of
//! writing the working tree. The layer is checkpointed first (frozen, as for a commit),
//! then each pair of consecutive checkpoints whose merged views differ becomes one commit,
//! its subject the argv of the tool call that ran between them, on top of the commit HEAD
//! was at when the session's first checkpoint was taken. The git side is
//! `agentd_sandbox::layer::git`.

use std::collections::HashMap;

use agentd_sandbox::layer::Manifest;
use agentd_sandbox::layer::apply::StoreSource;
use agentd_sandbox::layer::git::{self, Exported, Git, Step};
use agentd_sandbox::layer::view::changes;

use super::ApiError;
use super::undo::{Frozen, Sess, latest, layer_err, layer_now, lock_for, save};

/// Where the session's base commit is recorded (beside its checkpoints).
fn base_path(s: &Sess) -> std::path::PathBuf {
    s.store_dir.join("git-base")
}

/// git in the session's workspace, as the workspace's owner.
fn git_of(s: &Sess) -> Result<Git, ApiError> {
    Ok(Git {
        dir: s.workspace.clone(),
        owner: Some(s.owner_ids()?),
    })
}

/// Records the workspace repo's HEAD as the session's base (at its checkpoint 0). Best
/// effort: a workspace that is not a git repo (or git missing) records nothing, and an
/// export then bases on HEAD at export time.
pub fn record_base(s: &Sess) {
    let head = git_of(s).ok().and_then(|g| g.head().ok().flatten());
    if let Some(h) = head {
        let _ = agentd_sandbox::layer::store::write_durably(&base_path(s), h.as_bytes());
    }
}

/// Exports session `s`'s history to branch `branch`. `argv` is each call's argv by number
/// (from the journal), for the messages.
pub fn export(
    s: &Sess,
    branch: &str,
    argv: &HashMap<u64, Vec<String>>,
) -> Result<Exported, ApiError> {
    let g = git_of(s)?;
    // The cheap refusals before anything is frozen or saved.
    g.check_name(branch)?;
    g.prefix()?;
    g.check_new_branch(branch)?;
    let lock = lock_for(&s.id);
    let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
    let store = s.store()?;
    {
        let _f = Frozen::new(s.live.as_deref())?;
        let now = layer_now(s, &store)?;
        if now != latest(&store)?.manifest {
            save(
                s,
                &store,
                now,
                None,
                format!("export to git branch {branch}"),
            )?;
        }
    }
    let lower = s.lower()?;
    let mut prev: Option<agentd_sandbox::layer::store::Checkpoint> = None;
    let mut steps = Vec::new();
    for id in store.ids().map_err(layer_err)? {
        let Some(c) = store.load(id).map_err(layer_err)? else {
            continue; // pruned: its changes fold into the next step
        };
        let empty = Manifest::default();
        let from = prev.as_ref().map_or(&empty, |p| &p.manifest);
        let ch = changes(from, &c.manifest, Some(&lower)).map_err(layer_err)?;
        if !ch.is_empty() {
            steps.push(Step {
                message: message(&s.id, prev.as_ref(), &c, argv),
                time: c.created_at,
                changes: ch,
            });
        }
        prev = Some(c);
    }
    let base = std::fs::read_to_string(base_path(s)).ok();
    let src = StoreSource {
        store: &store,
        lower: Some(&lower),
    };
    let author = format!("agentd session {} <agentd@localhost>", s.id);
    Ok(git::export(
        &g,
        branch,
        base.as_deref().map(str::trim),
        &steps,
        &author,
        &src,
    )?)
}

/// A step's message: the call that ran between the two checkpoints (its argv), else the
/// checkpoint's reason; the body names the checkpoints.
fn message(
    session: &str,
    from: Option<&agentd_sandbox::layer::store::Checkpoint>,
    to: &agentd_sandbox::layer::store::Checkpoint,
    argv: &HashMap<u64, Vec<String>>,
) -> String {
    let call = from.and_then(|f| f.call);
    let subject = match call.and_then(|n| argv.get(&n).map(|a| (n, a))) {
        Some((_, a)) if !a.is_empty() => git::argv_subject(a),
        Some((n, _)) => format!("call {n}"),
        None => format!("changes up to checkpoint {} ({})", to.id, to.reason),
    };
    let from_desc = from.map_or("the session's start".to_owned(), |f| {
        format!("checkpoint {} ({})", f.id, f.reason)
    });
    let mut body = format!(
        "{subject}\n\nagentd session {session}: {from_desc} -> checkpoint {} ({})",
        to.id, to.reason
    );
    if let Some(n) = call {
        body.push_str(&format!("\nTool call: {n}"));
    }
    body.push('\n');
    body
}

/// The argv of each call of session `id`, for [`export`].
pub fn argv_of(d: &super::Daemon, id: &str) -> Result<HashMap<u64, Vec<String>>, ApiError> {
    Ok(d.journal(|j| j.calls(id))?
        .into_iter()
        .map(|c| (c.n, c.argv))
        .collect())
}
