//! Undo and damage confinement, daemon side (see `docs/undo.md`): a checkpoint of the
//! session layer before every tool call and on demand, and the routes `checkpoints`,
//! `diff`, `undo`, `commit`, `discard`. The engine is `agentd_sandbox::layer`; this module
//! owns where each session's store lives (`<state>/undo/<id>/`, root only), freezing the
//! session (`cgroup.freeze`) while its layer is read or restored, reaching a running
//! session's merged view (`/proc/<init>/root/<workspace>`) with the owner's fsuid, the
//! final checkpoint when a session ends, and finishing an interrupted commit at start.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use agentd_sandbox::layer::apply::{Root, Source, restore};
use agentd_sandbox::layer::commit::{self, Bases};
use agentd_sandbox::layer::diff::{FileDiff, render};
use agentd_sandbox::layer::store::{Checkpoint, Store, write_durably};
use agentd_sandbox::layer::view::{Content, changes};
use agentd_sandbox::layer::walk::{STAMP_SETTLE_NS, now_ns, quiet_since, walk};
use agentd_sandbox::layer::{LayerError, Manifest};
use axum::Json;
use axum::extract::{ConnectInfo, Path as UrlPath, Query, State as AxState};
use serde::{Deserialize, Serialize};

pub use super::retention::Retention;
use super::sessions::{self, Live};
use super::{ApiError, Daemon, Peer, State};

const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

/// A checkpoint as listed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointInfo {
    pub id: u64,
    pub call: Option<u64>,
    pub created_at: u64,
    pub files: u64,
    pub bytes: u64,
    pub reason: String,
}

impl From<&Checkpoint> for CheckpointInfo {
    fn from(c: &Checkpoint) -> Self {
        CheckpointInfo {
            id: c.id,
            call: c.call,
            created_at: c.created_at,
            files: c.files,
            bytes: c.bytes,
            reason: c.reason.clone(),
        }
    }
}

/// `POST …/checkpoints` body.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct CheckpointRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

/// `GET …/diff` query.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct DiffQuery {
    pub from: Option<u64>,
    pub to: Option<u64>,
    pub call: Option<u64>,
    #[serde(default)]
    pub stat: bool,
}

/// `GET …/diff` answer. `to` is null for "the layer now" (not saved as a checkpoint).
#[derive(Debug, Serialize, Deserialize)]
pub struct DiffAnswer {
    pub from: u64,
    pub to: Option<u64>,
    pub files: Vec<FileDiff>,
    pub diff: String,
}

/// `POST …/undo` body.
#[derive(Debug, Deserialize, Serialize)]
pub struct UndoRequest {
    pub to: u64,
}

/// `POST …/undo` and `…/discard` answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct UndoAnswer {
    /// The checkpoint restored.
    pub to: u64,
    /// The checkpoint saved just before (so the undo itself can be undone).
    pub saved: u64,
    /// Paths changed by the restore.
    pub paths: Vec<String>,
}

/// `POST …/commit` body.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct CommitRequest {
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub message: Option<String>,
    /// Export the history as commits on this new branch instead of writing the repo's
    /// files (docs/undo.md).
    #[serde(default)]
    pub git_branch: Option<String>,
}

/// `POST …/commit` answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct CommitAnswer {
    /// The checkpoint committed.
    pub checkpoint: u64,
    /// Paths written or removed in the repo (none for a `git_branch` export).
    pub paths: Vec<String>,
    /// What a `git_branch` export made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<agentd_sandbox::layer::git::Exported>,
}

pub(super) fn layer_err(e: LayerError) -> ApiError {
    ApiError::Layer(e)
}

/// One lock per session: checkpoints, undo and commit of a session never interleave.
pub(super) fn lock_for(id: &str) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<String, Arc<Mutex<()>>>>> = OnceLock::new();
    let m = LOCKS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
    g.entry(id.to_owned()).or_default().clone()
}

/// Everything the blocking work needs about one session.
#[derive(Debug, Clone)]
pub struct Sess {
    pub id: String,
    pub workspace: PathBuf,
    pub store_dir: PathBuf,
    pub upper: PathBuf,
    /// The running session (None once it ended).
    pub live: Option<Arc<Live>>,
    /// Its `[undo]` policy.
    pub retention: Retention,
}

/// The store of session `id` under the daemon's state dir.
pub fn store_dir(state_dir: &Path, id: &str) -> PathBuf {
    state_dir.join("undo").join(id)
}

impl Sess {
    fn of(d: &Daemon, id: &str, workspace: &Path) -> Sess {
        Sess {
            id: id.to_owned(),
            workspace: workspace.to_path_buf(),
            store_dir: store_dir(&d.cfg.state_dir, id),
            upper: agentd_sandbox::plan::upper_of(&d.cfg.state_dir.join("sessions").join(id)),
            live: d.live(id),
            retention: match d.live(id) {
                Some(l) => Retention::of(l.plan.session.undo.as_ref()),
                None => Retention::of_journal(d, id),
            },
        }
    }

    pub(super) fn store(&self) -> Result<Store, ApiError> {
        if let Some(p) = self.store_dir.parent() {
            std::fs::create_dir_all(p).map_err(|source| ApiError::Io {
                what: "create",
                path: p.to_path_buf(),
                source,
            })?;
        }
        let s = Store::open(&self.store_dir).map_err(layer_err)?;
        if s.next_id().map_err(layer_err)? == 0 {
            s.save(&Checkpoint {
                id: 0,
                call: None,
                created_at: crate::api::now(),
                files: 0,
                bytes: 0,
                reason: "session start".into(),
                manifest: Manifest::default(),
            })
            .map_err(layer_err)?;
            // The commit HEAD is at: the base of a `--git-branch` export.
            super::undo_git::record_base(self);
        }
        Ok(s)
    }

    fn bases_path(&self) -> PathBuf {
        self.store_dir.join("bases.json")
    }

    fn intent_path(&self) -> PathBuf {
        self.store_dir.join("intent.json")
    }

    pub(super) fn lower(&self) -> Result<Root, ApiError> {
        Root::open(&self.workspace).map_err(layer_err)
    }

    /// The owner's ids (the workspace's), for writes through the merged view and the repo.
    pub(super) fn owner_ids(&self) -> Result<(u32, u32), ApiError> {
        let md = std::fs::metadata(&self.workspace).map_err(|source| ApiError::Io {
            what: "stat",
            path: self.workspace.clone(),
            source,
        })?;
        Ok((md.uid(), md.gid()))
    }

    /// The running session's merged view, seen from the host.
    fn merged(&self, live: &Live) -> Result<PathBuf, ApiError> {
        let pid = sessions::read_record(&live.sandbox_state)?.init_pid;
        let rel = self.workspace.strip_prefix("/").unwrap_or(&self.workspace);
        Ok(PathBuf::from(format!("/proc/{pid}/root")).join(rel))
    }
}

/// Freezes a running session for the guard's lifetime.
pub(super) struct Frozen<'a>(Option<&'a Live>);

impl<'a> Frozen<'a> {
    pub(super) fn new(live: Option<&'a Live>) -> Result<Frozen<'a>, ApiError> {
        if let Some(l) = live {
            l.cg.cgroup()
                .freeze(FREEZE_TIMEOUT)
                .map_err(|source| ApiError::Cgroup {
                    what: format!("freezing session {}", l.id),
                    source,
                })?;
        }
        Ok(Frozen(live))
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        // The thaw is not waited for: writing 0 clears the freeze of the whole subtree
        // before the write returns (a call cgroup created next is not born frozen), and the
        // tasks wake on their own; waiting for `frozen 0` cost every call ~10 ms under TCG.
        if let Some(l) = self.0
            && let Err(e) = l.cg.cgroup().thaw_nowait()
        {
            super::log::error(&format!("thawing session {}: {e}", l.id));
        }
    }
}

pub(super) fn latest(store: &Store) -> Result<Checkpoint, ApiError> {
    let ids = store.ids().map_err(layer_err)?;
    let Some(id) = ids.last() else {
        return Err(ApiError::NoCheckpointYet);
    };
    store
        .load(*id)
        .map_err(layer_err)?
        .ok_or(ApiError::CheckpointVanished { id: *id })
}

fn resolve(store: &Store, s: &Sess, id: u64) -> Result<Checkpoint, ApiError> {
    if let Some(c) = store.load(id).map_err(layer_err)? {
        return Ok(c);
    }
    if store.pruned(id) {
        return Err(ApiError::Pruned {
            session: s.id.clone(),
            id,
            retention: s.retention.describe(),
        });
    }
    Err(ApiError::NoCheckpoint {
        session: s.id.clone(),
        id,
    })
}

/// The layer now (caller froze a running session): a walk of the upper dir, or the last
/// checkpoint once the session ended and its layer is gone.
pub(super) fn layer_now(s: &Sess, store: &Store) -> Result<Manifest, ApiError> {
    let prev = latest(store)?;
    if s.live.is_some() && s.upper.is_dir() {
        walk(&s.upper, store, Some(&prev.manifest)).map_err(layer_err)
    } else {
        Ok(prev.manifest)
    }
}

/// Saves `m` as the next checkpoint, records the bases of new paths, prunes.
pub(super) fn save(
    s: &Sess,
    store: &Store,
    m: Manifest,
    call: Option<u64>,
    reason: String,
) -> Result<Checkpoint, ApiError> {
    save_pinning(s, store, m, call, reason, None)
}

/// [`save`], keeping `pinned`'s objects even if pruning drops every checkpoint that
/// refers to them (an undo's target, about to be restored).
fn save_pinning(
    s: &Sess,
    store: &Store,
    m: Manifest,
    call: Option<u64>,
    reason: String,
    pinned: Option<&Manifest>,
) -> Result<Checkpoint, ApiError> {
    let id = store.next_id().map_err(layer_err)?;
    let (files, bytes) = m.totals();
    let mut bases: Bases = match std::fs::read(s.bases_path()) {
        Ok(b) => serde_json::from_slice(&b).map_err(|source| ApiError::Json {
            what: "the commit bases",
            source,
        })?,
        Err(_) => Bases::new(),
    };
    let before = bases.len();
    commit::record_bases(&mut bases, &m, &s.lower()?).map_err(layer_err)?;
    if bases.len() != before {
        let json = serde_json::to_vec(&bases).map_err(|source| ApiError::Json {
            what: "the commit bases",
            source,
        })?;
        write_durably(&s.bases_path(), &json).map_err(layer_err)?;
    }
    let cp = Checkpoint {
        id,
        call,
        created_at: crate::api::now(),
        files,
        bytes,
        reason,
        manifest: m,
    };
    store.save(&cp).map_err(layer_err)?;
    let ids = store.ids().map_err(layer_err)?;
    let r = &s.retention;
    // Only an age limit needs the times (the record's mtime: it is written once).
    let stamped: Vec<(u64, u64)> = if r.max_age_s.is_some() {
        let mut v = Vec::with_capacity(ids.len());
        for i in &ids {
            v.push((
                *i,
                store.saved_at(*i).map_err(layer_err)?.unwrap_or(u64::MAX),
            ));
        }
        v
    } else if ids.len() > r.keep + 1 {
        ids.iter().map(|i| (*i, 0)).collect()
    } else {
        Vec::new()
    };
    let prune = r.to_prune(&stamped, crate::api::now());
    if !prune.is_empty() {
        for old in prune {
            store.prune(old).map_err(layer_err)?;
        }
        let keep: Vec<String> = pinned
            .map(|p| p.objects().map(str::to_owned).collect())
            .unwrap_or_default();
        store.gc(&keep).map_err(layer_err)?;
    }
    Ok(cp)
}

/// A live session's last frozen walk (docs/undo.md, "Quiet checkpoints"): the checkpoint
/// it became (or the latest quiet one after it) and the real-time clock while the session
/// was frozen, with a monotonic reading to notice the clock being set back.
#[derive(Debug, Clone, Copy)]
pub struct QuietRef {
    checkpoint: u64,
    walked_ns: i128,
    walked_at: std::time::Instant,
}

/// How far the real-time clock may run behind the monotonic one since the frozen walk
/// before quiet checkpoints stop being trusted (a clock set back could stamp a change
/// before the walk).
const CLOCK_STEP_NS: i128 = 100_000_000;

/// The manifest of the latest checkpoint if nothing in the live session's layer changed
/// since its last frozen walk, checked without freezing ([`quiet_since`]); `None` when a
/// frozen walk is needed (something changed, another checkpoint came in between, the clock
/// was set back, or the check failed).
fn quiet_manifest(s: &Sess, store: &Store) -> Result<Option<Manifest>, ApiError> {
    let Some(live) = s.live.as_deref() else {
        return Ok(None);
    };
    let Some(q) = *live.quiet.lock().unwrap_or_else(|p| p.into_inner()) else {
        return Ok(None);
    };
    let prev = latest(store)?;
    let expected_now =
        q.walked_ns + i128::try_from(q.walked_at.elapsed().as_nanos()).unwrap_or(i128::MAX);
    if prev.id != q.checkpoint || now_ns() < expected_now - CLOCK_STEP_NS || !s.upper.is_dir() {
        return Ok(None);
    }
    // A change after the frozen walk has a ctime of at least the walk's time less the
    // filesystem's granularity and the coarse clock's lag: the stamp rule's settle time.
    match quiet_since(&s.upper, q.walked_ns - STAMP_SETTLE_NS) {
        Ok(true) => Ok(Some(prev.manifest)),
        Ok(false) | Err(_) => Ok(None),
    }
}

/// Takes a checkpoint of session `s`: frozen while its layer is read, unless nothing in the
/// layer changed since the last frozen walk (then that walk's manifest, without a freeze).
pub fn take(s: &Sess, call: Option<u64>, reason: String) -> Result<Checkpoint, ApiError> {
    let lock = lock_for(&s.id);
    let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
    let store = s.store()?;
    if let Some(m) = quiet_manifest(s, &store)? {
        let cp = save(s, &store, m, call, reason)?;
        if let Some(live) = s.live.as_deref()
            && let Some(q) = live
                .quiet
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_mut()
        {
            q.checkpoint = cp.id;
        }
        return Ok(cp);
    }
    let (m, walked) = {
        let _f = Frozen::new(s.live.as_deref())?;
        // Read once frozen: every change before it is in the walk, every one after it
        // (after the thaw) is stamped no earlier than this less the settle time.
        let walked = (now_ns(), std::time::Instant::now());
        (layer_now(s, &store)?, walked)
    };
    let cp = save(s, &store, m, call, reason)?;
    if let Some(live) = s.live.as_deref() {
        *live.quiet.lock().unwrap_or_else(|p| p.into_inner()) = Some(QuietRef {
            checkpoint: cp.id,
            walked_ns: walked.0,
            walked_at: walked.1,
        });
    }
    Ok(cp)
}

/// Runs `f` on a fresh thread whose filesystem ids are the owner's (writes through the
/// merged view must create inodes whose ids the session's user namespace maps; the repo's
/// new files belong to its owner). The thread ends with `f`, so no id leaks.
fn as_owner<T: Send>(
    ids: (u32, u32),
    f: impl FnOnce() -> Result<T, ApiError> + Send,
) -> Result<T, ApiError> {
    std::thread::scope(|sc| {
        sc.spawn(|| {
            // SAFETY: setfsgid/setfsuid take plain ids and only change this thread's
            // filesystem credentials.
            unsafe {
                libc::setfsgid(ids.1);
                libc::setfsuid(ids.0);
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(ApiError::Thread { what: "restore" }))
    })
}

/// Object and lower reads from a thread running with the owner's fsuid: each open is done
/// as root (fsuid 0 again for the call: the store is root's alone), the read through the
/// open descriptor.
struct RootReads<'a> {
    store: &'a Store,
    lower: &'a Root,
    owner: u32,
}

impl Source for RootReads<'_> {
    fn open(&self, content: &Content, path: &str) -> Result<Box<dyn std::io::Read>, LayerError> {
        // SAFETY: as in as_owner; back to the owner's fsuid right after the open.
        unsafe { libc::setfsuid(0) };
        let r: Result<Box<dyn std::io::Read>, LayerError> = match content {
            Content::Object(h) => self
                .store
                .read(h)
                .map(|v| Box::new(std::io::Cursor::new(v)) as Box<dyn std::io::Read>),
            Content::Lower => self
                .lower
                .open_read(path)
                .map(|f| Box::new(f) as Box<dyn std::io::Read>),
        };
        // SAFETY: as above.
        unsafe { libc::setfsuid(self.owner) };
        r
    }
}

/// Restores session `s` to checkpoint `to` (frozen throughout; through the merged view of
/// a running session; an ended session just gets `to`'s layer as its newest checkpoint).
pub fn undo(s: &Sess, to: u64, reason: &str) -> Result<UndoAnswer, ApiError> {
    let lock = lock_for(&s.id);
    let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
    let store = s.store()?;
    let target = resolve(&store, s, to)?;
    let _f = Frozen::new(s.live.as_deref())?;
    let now = layer_now(s, &store)?;
    let saved = save_pinning(
        s,
        &store,
        now.clone(),
        None,
        format!("before {reason}"),
        Some(&target.manifest),
    )?;
    let lower = s.lower()?;
    let plan = changes(&now, &target.manifest, Some(&lower)).map_err(layer_err)?;
    let paths: Vec<String> = plan.iter().map(|c| c.path.clone()).collect();
    match &s.live {
        Some(live) if s.upper.is_dir() => {
            let merged = s.merged(live)?;
            // The agent's host id (uid and gid maps are the same): the only one besides
            // container root that the session's user namespace maps.
            let ids = (live.agent_uid, live.agent_uid);
            as_owner(ids, || {
                let view = Root::open(&merged).map_err(layer_err)?;
                let src = RootReads {
                    store: &store,
                    lower: &lower,
                    owner: ids.0,
                };
                restore(&view, &plan, &src, false).map_err(layer_err)
            })?;
            // The layer as it is now (the restore wrote through the overlay).
            let m = walk(&s.upper, &store, Some(&now)).map_err(layer_err)?;
            save(s, &store, m, None, format!("{reason} (restored)"))?;
        }
        _ => {
            save(s, &store, target.manifest.clone(), None, reason.to_owned())?;
        }
    }
    Ok(UndoAnswer {
        to,
        saved: saved.id,
        paths,
    })
}

/// Commits session `s`'s layer (or `paths` of it) to the repo.
pub fn commit_session(s: &Sess, req: &CommitRequest) -> Result<CommitAnswer, ApiError> {
    let lock = lock_for(&s.id);
    let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
    let store = s.store()?;
    // A running session stays frozen for the whole commit.
    let _f = Frozen::new(s.live.as_deref())?;
    let now = layer_now(s, &store)?;
    let cp = save(s, &store, now, None, "commit".into())?;
    let bases: Bases = match std::fs::read(s.bases_path()) {
        Ok(b) => serde_json::from_slice(&b).map_err(|source| ApiError::Json {
            what: "the commit bases",
            source,
        })?,
        Err(_) => Bases::new(),
    };
    let repo = s.lower()?;
    let plan = commit::plan(&cp.manifest, &bases, &repo, &req.paths).map_err(layer_err)?;
    if !plan.conflicts.is_empty() {
        return Err(ApiError::CommitConflicts {
            conflicts: plan.conflicts,
        });
    }
    commit::write_intent(&plan, &s.intent_path()).map_err(layer_err)?;
    let ids = s.owner_ids()?;
    as_owner(ids, || {
        let src = RootReads {
            store: &store,
            lower: &repo,
            owner: ids.0,
        };
        commit::run(&plan.ops, &repo, &src, &mut || Ok(())).map_err(layer_err)
    })?;
    std::fs::remove_file(s.intent_path()).map_err(|source| ApiError::Io {
        what: "remove",
        path: s.intent_path(),
        source,
    })?;
    // What was committed is the repo's state now: the base of a later commit.
    let mut bases = bases;
    for c in &plan.ops {
        bases.insert(c.path.clone(), c.new.clone());
    }
    let json = serde_json::to_vec(&bases).map_err(|source| ApiError::Json {
        what: "the commit bases",
        source,
    })?;
    write_durably(&s.bases_path(), &json).map_err(layer_err)?;
    Ok(CommitAnswer {
        checkpoint: cp.id,
        paths: plan.ops.iter().map(|c| c.path.clone()).collect(),
        git: None,
    })
}

/// Paths whose merged state in the session's latest checkpoint differs from the repo now
/// (what a commit would write); 0 without a store.
pub fn uncommitted(state_dir: &Path, id: &str, workspace: &Path) -> Result<usize, ApiError> {
    let dir = store_dir(state_dir, id);
    if !dir.is_dir() {
        return Ok(0);
    }
    let store = Store::open(&dir).map_err(layer_err)?;
    let Ok(cp) = latest(&store) else {
        return Ok(0);
    };
    let repo = Root::open(workspace).map_err(layer_err)?;
    Ok(changes(&Manifest::default(), &cp.manifest, Some(&repo))
        .map_err(layer_err)?
        .len())
}

/// Before a tool call: a checkpoint (errors are logged, never fail the call: the call is
/// the agent's work, the checkpoint our record of it; the log names what was lost).
pub async fn before_call(d: &State, live: &Arc<Live>, n: u64) {
    // `undo.checkpoint = "off"`: none before calls.
    if !Retention::of(live.plan.session.undo.as_ref()).per_call {
        return;
    }
    let workspace = live.info().workspace;
    let mut s = Sess::of(d, &live.id, &workspace);
    s.live = Some(live.clone());
    let r =
        tokio::task::spawn_blocking(move || take(&s, Some(n), format!("before call {n}"))).await;
    match r {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => super::log::error(&format!("checkpoint before call {n} of {}: {e}", live.id)),
        Err(e) => super::log::error(&format!("checkpoint before call {n} of {}: {e}", live.id)),
    }
}

/// When a session's agent has exited: the final checkpoint from its kept layer, then the
/// layer's state dir is destroyed (the store keeps what a commit needs).
pub fn session_ended(state_dir: &Path, id: &str, workspace: &Path, retention: Retention) {
    let st = state_dir.join("sessions").join(id);
    let s = Sess {
        id: id.to_owned(),
        workspace: workspace.to_path_buf(),
        store_dir: store_dir(state_dir, id),
        upper: agentd_sandbox::plan::upper_of(&st),
        live: None,
        retention,
    };
    if s.upper.is_dir() {
        let lock = lock_for(id);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let r = s.store().and_then(|store| {
            let prev = latest(&store)?;
            let m = walk(&s.upper, &store, Some(&prev.manifest)).map_err(layer_err)?;
            save(&s, &store, m, None, "session end".into())
        });
        if let Err(e) = r {
            super::log::error(&format!("final checkpoint of session {id}: {e}"));
        }
    }
    if let Err(e) = agentd_sandbox::container::destroy_state(&st) {
        super::log::error(&format!("removing the state of session {id}: {e}"));
    }
}

/// At daemon start: finishes every commit a crash interrupted, and takes the final
/// checkpoint of sessions that ended while no daemon ran (their layer was kept).
pub fn recover_all(d: &Daemon, live: &[String]) {
    let Ok(rows) = d.journal(|j| j.sessions(None)) else {
        return;
    };
    for row in rows {
        let s = Sess::of(d, &row.id, &row.workspace);
        if s.intent_path().exists() {
            let r = s.store().and_then(|store| {
                // This daemon becomes a writer of the intent before it writes, so the temp
                // files of a killed run (its own too, if it is killed) are swept next time.
                let Some(intent) = commit::resume_intent(&s.intent_path()).map_err(layer_err)?
                else {
                    return Ok(());
                };
                let repo = s.lower()?;
                let ids = s.owner_ids()?;
                as_owner(ids, || {
                    commit::sweep_temps(&repo, &intent).map_err(layer_err)?;
                    let src = RootReads {
                        store: &store,
                        lower: &repo,
                        owner: ids.0,
                    };
                    commit::run(&intent.ops, &repo, &src, &mut || Ok(())).map_err(layer_err)
                })?;
                std::fs::remove_file(s.intent_path()).map_err(|source| ApiError::Io {
                    what: "remove",
                    path: s.intent_path(),
                    source,
                })
            });
            match r {
                Ok(()) => super::log::info(&format!(
                    "finished the interrupted commit of session {}",
                    row.id
                )),
                Err(e) => {
                    super::log::error(&format!("interrupted commit of session {}: {e}", row.id))
                }
            }
        }
        if live.contains(&row.id) {
            continue;
        }
        // A session the host went down with (reboot, power loss): its layer image is
        // still in its state dir, not mounted. Mount it to take its final checkpoint.
        let st = d.cfg.state_dir.join("sessions").join(&row.id);
        if let Err(e) = agentd_sandbox::disk::mount_existing(&st) {
            super::log::error(&format!("the layer of session {}: {e}", row.id));
        }
        if s.upper.is_dir() {
            session_ended(&d.cfg.state_dir, &row.id, &row.workspace, s.retention);
        }
    }
}

/// `DELETE /v1/sessions/{id}` query.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct RemoveQuery {
    #[serde(default)]
    pub force: bool,
}

/// Refuses (409) to remove a session with uncommitted changes unless `force`; with
/// `force`, its store goes too.
pub async fn check_removable(
    d: &State,
    row: &crate::api::SessionInfo,
    force: bool,
) -> Result<(), ApiError> {
    let (sd, id, ws) = (
        d.cfg.state_dir.clone(),
        row.id.clone(),
        row.workspace.clone(),
    );
    if force {
        return blocking(move || {
            let dir = store_dir(&sd, &id);
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ApiError::Io {
                    what: "remove",
                    path: dir,
                    source: e,
                }),
                _ => Ok(()),
            }
        })
        .await;
    }
    let n = blocking(move || uncommitted(&sd, &id, &ws)).await?;
    if n > 0 {
        return Err(ApiError::Uncommitted {
            id: row.id.clone(),
            changes: n,
        });
    }
    Ok(())
}

fn sess_for(d: &Daemon, peer: &Peer, id: &str) -> Result<Sess, ApiError> {
    let row = sessions::visible(d, peer, id)?;
    Ok(Sess::of(d, id, &row.workspace))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|source| ApiError::Join { source })?
}

/// `GET /v1/sessions/{id}/checkpoints`.
pub async fn list(
    AxState(d): AxState<State>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Vec<CheckpointInfo>>, ApiError> {
    let s = sess_for(&d, &peer, &id)?;
    blocking(move || {
        let store = s.store()?;
        let mut out = Vec::new();
        for i in store.ids().map_err(layer_err)? {
            if let Some(c) = store.load(i).map_err(layer_err)? {
                out.push(CheckpointInfo::from(&c));
            }
        }
        Ok(Json(out))
    })
    .await
}

/// `POST /v1/sessions/{id}/checkpoints`.
pub async fn create(
    AxState(d): AxState<State>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    UrlPath(id): UrlPath<String>,
    body: Option<Json<CheckpointRequest>>,
) -> Result<Json<CheckpointInfo>, ApiError> {
    let s = sess_for(&d, &peer, &id)?;
    if s.live.is_none() {
        return Err(ApiError::LayerNotLive { id: id.clone() });
    }
    let reason = body
        .and_then(|b| b.0.reason)
        .unwrap_or_else(|| "on demand".into());
    blocking(move || take(&s, None, reason).map(|c| Json(CheckpointInfo::from(&c)))).await
}

/// `GET /v1/sessions/{id}/diff`.
pub async fn diff(
    AxState(d): AxState<State>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<DiffQuery>,
) -> Result<Json<DiffAnswer>, ApiError> {
    let s = sess_for(&d, &peer, &id)?;
    if q.call.is_some() && (q.from.is_some() || q.to.is_some()) {
        return Err(ApiError::BadQuery {
            field: "call",
            why: "give either call or from/to, not both",
        });
    }
    blocking(move || {
        let store = s.store()?;
        let (from, to) = match q.call {
            Some(n) => {
                let ids = store.ids().map_err(layer_err)?;
                let mut found = None;
                let mut next = None;
                for i in ids {
                    let Some(c) = store.load(i).map_err(layer_err)? else {
                        continue;
                    };
                    if found.is_some() {
                        next = Some(i);
                        break;
                    }
                    if c.call == Some(n) {
                        found = Some(i);
                    }
                }
                let Some(f) = found else {
                    return Err(ApiError::NoCheckpointBefore {
                        session: id.clone(),
                        call: n,
                    });
                };
                (f, next)
            }
            None => (q.from.unwrap_or(0), q.to),
        };
        let a = resolve(&store, &s, from)?;
        let b = match to {
            Some(t) => resolve(&store, &s, t)?.manifest,
            None => {
                let lock = lock_for(&s.id);
                let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
                let _f = Frozen::new(s.live.as_deref())?;
                layer_now(&s, &store)?
            }
        };
        let lower = s.lower()?;
        let c = changes(&a.manifest, &b, Some(&lower)).map_err(layer_err)?;
        let (files, diff) = render(&c, &store, Some(&lower), q.stat).map_err(layer_err)?;
        Ok(Json(DiffAnswer {
            from,
            to,
            files,
            diff,
        }))
    })
    .await
}

/// `POST /v1/sessions/{id}/undo`.
pub async fn undo_route(
    AxState(d): AxState<State>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    UrlPath(id): UrlPath<String>,
    Json(req): Json<UndoRequest>,
) -> Result<Json<UndoAnswer>, ApiError> {
    let s = sess_for(&d, &peer, &id)?;
    blocking(move || undo(&s, req.to, &format!("undo to {}", req.to)).map(Json)).await
}

/// `POST /v1/sessions/{id}/discard`: back to the session's start (checkpoint 0).
pub async fn discard(
    AxState(d): AxState<State>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<UndoAnswer>, ApiError> {
    let s = sess_for(&d, &peer, &id)?;
    blocking(move || undo(&s, 0, "discard").map(Json)).await
}

/// `POST /v1/sessions/{id}/commit`.
pub async fn commit_route(
    AxState(d): AxState<State>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    UrlPath(id): UrlPath<String>,
    body: Option<Json<CommitRequest>>,
) -> Result<Json<CommitAnswer>, ApiError> {
    let s = sess_for(&d, &peer, &id)?;
    let req = body.map(|b| b.0).unwrap_or_default();
    if let Some(branch) = req.git_branch.clone() {
        if !req.paths.is_empty() || req.message.is_some() {
            return Err(ApiError::BadQuery {
                field: "git_branch",
                why: "a git-branch export takes the whole history (one commit per tool \
                      call, its argv the message): no paths or message",
            });
        }
        let argv = super::undo_git::argv_of(&d, &id)?;
        return blocking(move || {
            let e = super::undo_git::export(&s, &branch, &argv)?;
            let store = s.store()?;
            Ok(Json(CommitAnswer {
                checkpoint: latest(&store)?.id,
                paths: Vec::new(),
                git: Some(e),
            }))
        })
        .await;
    }
    blocking(move || commit_session(&s, &req).map(Json)).await
}
