//! The agentd hierarchy: [`Root`] (`agentd.slice` or a test root) → [`Session`]
//! (`session-<id>`, with the `agent` leaf for the agent's own processes and the `calls`
//! parent) → [`Call`] (`calls/<n>`, one leaf per tool call). Controllers are enabled on
//! every inner node and processes live only in leaves (cgroup v2's no-internal-process
//! rule). Also the startup sweep of leftovers from dead sessions.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cgroup::{CONTROLLERS, Cgroup};
use crate::error::{Error, Result};
use crate::fs::Backend;
use crate::limits::Limits;
use crate::stats::Report;

/// Default name of the daemon's root cgroup inside its delegated subtree.
pub const DEFAULT_ROOT_NAME: &str = "agentd.slice";
/// Prefix of session cgroups.
pub const SESSION_PREFIX: &str = "session-";
/// Leaf of a session holding the agent's own processes.
pub const AGENT_LEAF: &str = "agent";
/// Parent of a session's call cgroups.
pub const CALLS_DIR: &str = "calls";

/// Checks a session id: 1–64 characters of `[A-Za-z0-9_-]`, so it is a safe single path
/// component and reads unambiguously in `session-<id>`.
pub fn validate_session_id(id: &str) -> Result<()> {
    let bad = |why| Error::InvalidName {
        what: "session id",
        name: id.to_string(),
        why,
    };
    if id.is_empty() || id.len() > 64 {
        return Err(bad("must be 1 to 64 characters"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(bad("only ASCII letters, digits, '-' and '_' are allowed"));
    }
    Ok(())
}

/// The cgroup name of a session.
pub fn session_dir(id: &str) -> Result<String> {
    validate_session_id(id)?;
    Ok(format!("{SESSION_PREFIX}{id}"))
}

/// The session id of a cgroup name, if it names a session.
pub fn parse_session_dir(name: &str) -> Option<&str> {
    let id = name.strip_prefix(SESSION_PREFIX)?;
    validate_session_id(id).ok().map(|()| id)
}

/// The call number of a `calls/<n>` name (canonical decimal only, so `007` is foreign).
pub fn parse_call_dir(name: &str) -> Option<u64> {
    let n: u64 = name.parse().ok()?;
    (n.to_string() == name).then_some(n)
}

/// The daemon's root of the hierarchy.
#[derive(Debug, Clone)]
pub struct Root {
    cg: Cgroup,
}

impl Root {
    /// Opens `path`, creating it if needed, and enables the agentd controllers on its
    /// parent and on it. The parent must hold no processes unless it is the cgroup2 mount's
    /// root (the daemon moves itself into a leaf of its delegated subtree first).
    pub fn create(path: impl AsRef<Path>, backend: Arc<dyn Backend>) -> Result<Root> {
        let path = path.as_ref();
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(Error::InvalidName {
                what: "root path",
                name: path.display().to_string(),
                why: "needs a parent directory and a name",
            });
        };
        let parent = Cgroup::open_with(parent, backend)?;
        parent.enable_controllers(&CONTROLLERS)?;
        let cg = parent.child_or_create(&name.to_string_lossy())?;
        cg.enable_controllers(&CONTROLLERS)?;
        Ok(Root { cg })
    }

    /// Opens an existing root without changing it (for observers such as the CLI).
    pub fn open(path: impl Into<PathBuf>, backend: Arc<dyn Backend>) -> Result<Root> {
        Ok(Root {
            cg: Cgroup::open_with(path, backend)?,
        })
    }

    /// The root cgroup.
    pub fn cgroup(&self) -> &Cgroup {
        &self.cg
    }

    /// Creates session `id` with the session-wide `limits` (the cap all its calls share),
    /// its `agent` leaf and its `calls` parent.
    pub fn create_session(&self, id: &str, limits: &Limits) -> Result<Session> {
        let name = session_dir(id)?;
        let cg = self.cg.create_child(&name)?;
        let built = (|| {
            cg.set_limits(limits)?;
            cg.enable_controllers(&CONTROLLERS)?;
            let agent = cg.create_child(AGENT_LEAF)?;
            let calls = cg.create_child(CALLS_DIR)?;
            calls.enable_controllers(&CONTROLLERS)?;
            Ok((agent, calls))
        })();
        match built {
            Ok((agent, calls)) => Ok(Session {
                id: id.to_string(),
                cg,
                agent,
                calls,
            }),
            Err(e) => {
                // Leave nothing half-built behind; the original error is what matters.
                let _ = cg.clear(Duration::from_secs(5));
                let _ = self.cg.remove_child(&name);
                Err(e)
            }
        }
    }

    /// Opens the existing session `id` (after a daemon restart).
    pub fn session(&self, id: &str) -> Result<Session> {
        let cg = self.cg.child(&session_dir(id)?)?;
        let agent = cg.child(AGENT_LEAF)?;
        let calls = cg.child(CALLS_DIR)?;
        Ok(Session {
            id: id.to_string(),
            cg,
            agent,
            calls,
        })
    }

    /// Ids of the sessions present under the root.
    pub fn session_ids(&self) -> Result<Vec<String>> {
        Ok(self
            .cg
            .children()?
            .iter()
            .filter_map(|n| parse_session_dir(n).map(str::to_string))
            .collect())
    }

    /// Kills everything in session `id` and removes its cgroups bottom-up.
    pub fn remove_session(&self, id: &str, timeout: Duration) -> Result<()> {
        let name = session_dir(id)?;
        let cg = self.cg.child(&name)?;
        cg.clear(timeout)?;
        drop(cg);
        self.cg.remove_child(&name)
    }

    /// Startup sweep: removes every session whose id `is_dead` says is dead (for example
    /// "not in the journal"): kill, wait until empty, rmdir bottom-up. Cgroups under the
    /// root that are not sessions are left alone and listed as foreign.
    pub fn sweep(&self, is_dead: impl Fn(&str) -> bool, timeout: Duration) -> Result<SweepReport> {
        let plan = plan_sweep(&self.cg.children()?, is_dead);
        let mut removed = Vec::new();
        for name in &plan.remove {
            let cg = self.cg.child(name)?;
            if cg.populated()? {
                cg.kill()?;
                cg.wait_empty(timeout)?;
            }
            let tree = list_tree(&cg)?;
            drop(cg);
            for rel in removal_order(name, &tree) {
                let (parent, leaf) = match rel.parent() {
                    Some(p) if !p.as_os_str().is_empty() => (self.cg.path().join(p), rel.clone()),
                    _ => (self.cg.path().to_path_buf(), rel.clone()),
                };
                let parent = Cgroup::open_with(parent, self.cg.backend().clone())?;
                let leaf = leaf
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                parent.remove_child(&leaf)?;
                removed.push(rel.display().to_string());
            }
        }
        Ok(SweepReport {
            removed_sessions: plan
                .remove
                .iter()
                .filter_map(|n| parse_session_dir(n).map(str::to_string))
                .collect(),
            removed_cgroups: removed,
            kept_sessions: plan.keep,
            foreign: plan.foreign,
        })
    }
}

/// What the startup sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    /// Ids of the dead sessions removed.
    pub removed_sessions: Vec<String>,
    /// Every cgroup removed, relative to the root, in removal order.
    pub removed_cgroups: Vec<String>,
    /// Ids of live sessions left in place.
    pub kept_sessions: Vec<String>,
    /// Children of the root that are not sessions (left alone).
    pub foreign: Vec<String>,
}

/// Which children of the root a sweep removes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepPlan {
    /// Session directory names to remove.
    pub remove: Vec<String>,
    /// Ids of live sessions.
    pub keep: Vec<String>,
    /// Names that are not sessions.
    pub foreign: Vec<String>,
}

/// Sorts the children of the root into dead sessions, live sessions and foreign entries.
pub fn plan_sweep(children: &[String], is_dead: impl Fn(&str) -> bool) -> SweepPlan {
    let mut plan = SweepPlan::default();
    for name in children {
        match parse_session_dir(name) {
            Some(id) if is_dead(id) => plan.remove.push(name.clone()),
            Some(id) => plan.keep.push(id.to_string()),
            None => plan.foreign.push(name.clone()),
        }
    }
    plan
}

/// A cgroup subtree listing (names only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeNode {
    /// Child cgroups by name.
    pub children: Vec<(String, TreeNode)>,
}

/// Lists the subtree below `cg`.
pub fn list_tree(cg: &Cgroup) -> Result<TreeNode> {
    let mut node = TreeNode::default();
    for name in cg.children()? {
        let child = cg.child(&name)?;
        node.children.push((name, list_tree(&child)?));
    }
    Ok(node)
}

/// Paths (relative to the root) to rmdir so that every cgroup goes after its children:
/// a post-order walk ending with `top` itself.
pub fn removal_order(top: &str, tree: &TreeNode) -> Vec<PathBuf> {
    fn walk(prefix: &Path, node: &TreeNode, out: &mut Vec<PathBuf>) {
        for (name, child) in &node.children {
            let p = prefix.join(name);
            walk(&p, child, out);
            out.push(p);
        }
    }
    let mut out = Vec::new();
    walk(Path::new(top), tree, &mut out);
    out.push(PathBuf::from(top));
    out
}

/// One agent session's cgroups.
#[derive(Debug, Clone)]
pub struct Session {
    id: String,
    cg: Cgroup,
    agent: Cgroup,
    calls: Cgroup,
}

impl Session {
    /// The session id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `session-<id>`: limits here cap the whole session.
    pub fn cgroup(&self) -> &Cgroup {
        &self.cg
    }

    /// The `agent` leaf for the agent's own processes.
    pub fn agent(&self) -> &Cgroup {
        &self.agent
    }

    /// The `calls` parent.
    pub fn calls(&self) -> &Cgroup {
        &self.calls
    }

    /// Creates the leaf `calls/<n>` with `limits`. On a limit error the leaf is removed
    /// again and the error returned.
    pub fn create_call(&self, n: u64, limits: &Limits) -> Result<Call> {
        let name = n.to_string();
        let cg = self.calls.create_child(&name)?;
        if let Err(e) = cg.set_limits(limits) {
            drop(cg);
            let _ = self.calls.remove_child(&name);
            return Err(e);
        }
        Ok(Call {
            n,
            cg,
            parent: self.calls.clone(),
            limits: limits.clone(),
            created: Instant::now(),
        })
    }

    /// Opens the existing call `n` (its limits read back as unknown/default).
    pub fn call(&self, n: u64) -> Result<Call> {
        Ok(Call {
            n,
            cg: self.calls.child(&n.to_string())?,
            parent: self.calls.clone(),
            limits: Limits::default(),
            created: Instant::now(),
        })
    }

    /// Numbers of the calls present.
    pub fn call_numbers(&self) -> Result<Vec<u64>> {
        let mut v: Vec<u64> = self
            .calls
            .children()?
            .iter()
            .filter_map(|n| parse_call_dir(n))
            .collect();
        v.sort_unstable();
        Ok(v)
    }
}

/// One tool call's leaf cgroup.
#[derive(Debug)]
pub struct Call {
    n: u64,
    cg: Cgroup,
    parent: Cgroup,
    limits: Limits,
    created: Instant,
}

impl Call {
    /// The call number.
    pub fn number(&self) -> u64 {
        self.n
    }

    /// The call's cgroup (its fd goes to clone3, see [`crate::Command::spawn_into`]).
    pub fn cgroup(&self) -> &Cgroup {
        &self.cg
    }

    /// The limits the call was created with.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Changes the call's limits while it runs (for example raising memory.high).
    pub fn set_limits(&mut self, limits: &Limits) -> Result<()> {
        self.cg.set_limits(limits)?;
        self.limits = limits.clone();
        Ok(())
    }

    /// The resource report as of now.
    pub fn report(&self) -> Result<Report> {
        Ok(Report {
            path: self.cg.path().display().to_string(),
            limits: self.limits.clone(),
            wall_ms: u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX),
            stats: self.cg.stats()?,
        })
    }

    /// Ends the call: kills what is left, waits until the cgroup is empty, reads the
    /// report, and removes the cgroup.
    pub fn finish(self, timeout: Duration) -> Result<Report> {
        if self.cg.populated()? {
            self.cg.kill()?;
            self.cg.wait_empty(timeout)?;
        }
        let report = self.report()?;
        self.cg.clear(timeout)?;
        let name = self.n.to_string();
        let parent = self.parent;
        drop(self.cg);
        parent.remove_child(&name)?;
        Ok(report)
    }
}
