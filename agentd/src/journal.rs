//! The journal: SQLite (WAL) rows for sessions and tool calls with their reports, written by
//! the daemon at each state change so that what happened survives the daemon. Columns that
//! are queried are columns; nested data (argv, limits, intent, the cgctl report) is JSON.
//!
//! Access is synchronous behind a mutex held for one statement: every statement is a
//! single-row insert/update or a small select, far below the cost of starting a process.
//!
//! **Schema versions.** `PRAGMA user_version` is the number of [`MIGRATIONS`] applied;
//! [`Journal::open`] applies the missing ones in order, each in its own transaction with
//! its version bump, and refuses a journal newer than this daemon. To add a table or a
//! column, append ONE entry to [`MIGRATIONS`] (a SQL batch, e.g.
//! `"CREATE TABLE checkpoints (session_id TEXT NOT NULL, n INTEGER NOT NULL, …);"`) and
//! a test that reads what it adds; never edit, reorder or remove a shipped entry (journals
//! in the field have run it).

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

mod caps;
mod net;

use crate::api::{CallInfo, CallState, PolicySource, SessionInfo, SessionState};

/// Journal errors, carrying the database path or the row.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("journal: {what}: {source}")]
    Sql {
        what: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("journal: bad row {what}: {detail}")]
    Row { what: String, detail: String },
    #[error(
        "journal {path}: schema version {found} is newer than this daemon's ({known}): \
         refusing to run an older daemon on it"
    )]
    Newer {
        path: PathBuf,
        found: usize,
        known: usize,
    },
}

type Result<T> = std::result::Result<T, JournalError>;

/// The schema, one migration per entry: entry `i` takes a journal from version `i` to
/// `i + 1` (see the module header for how to add one).
pub const MIGRATIONS: &[&str] = &[
    // 1: sessions, the policy text each was started with, tool calls. `IF NOT EXISTS`:
    // journals from before versioning (user_version 0) already have these tables.
    "
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    owner_uid INTEGER NOT NULL,
    state TEXT NOT NULL,
    removed INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    info TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS session_policy (
    id TEXT PRIMARY KEY,
    policy TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS calls (
    session_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    state TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    info TEXT NOT NULL,
    PRIMARY KEY (session_id, n)
);
",
    // 2: what each session runs with, resolved at its start: the host policy text then in
    // force, the resolved policy plan (JSON) and the sandbox plan handed to the runtime.
    // Re-adoption resolves from these texts (not from today's host file) and checks it
    // gets the same plan.
    "
CREATE TABLE session_plan (
    id TEXT PRIMARY KEY,
    host_policy TEXT,
    plan TEXT NOT NULL,
    sandbox TEXT NOT NULL
);
",
    // 3: one row per connection the egress proxy handled (allowed or denied), written
    // when the connection ends, append-only (`journal::net`).
    "
CREATE TABLE net_connections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    call INTEGER,
    via TEXT NOT NULL,
    dest TEXT NOT NULL,
    port INTEGER NOT NULL,
    upstream TEXT,
    decision TEXT NOT NULL,
    rule TEXT NOT NULL,
    bytes_up INTEGER NOT NULL,
    bytes_down INTEGER NOT NULL,
    started_at_ms INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL
);
CREATE INDEX net_connections_session ON net_connections (session_id, call);
",
    // 4: capability grants, approval requests and the hash-chained audit trail with its
    // per-session head (`journal::caps`, docs/capabilities.md).
    "
CREATE TABLE cap_grants (
    session_id TEXT NOT NULL,
    id INTEGER NOT NULL,
    grant_json TEXT NOT NULL,
    PRIMARY KEY (session_id, id)
);
CREATE TABLE approvals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    state TEXT NOT NULL,
    info TEXT NOT NULL
);
CREATE INDEX approvals_session ON approvals (session_id);
CREATE TABLE audit (
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
);
CREATE TABLE audit_head (
    session_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
);
",
];

/// What a session runs with, as journalled at its start.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanRow {
    /// The host policy text in force at the start (`None`: no host file, built-in caps).
    pub host_policy: Option<String>,
    /// The resolved policy plan, as JSON.
    pub plan: serde_json::Value,
    /// The sandbox plan the runtime got.
    pub sandbox: agentd_sandbox::SessionPlan,
}

/// The open journal.
#[derive(Debug)]
pub struct Journal {
    conn: Connection,
}

fn sql(what: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> JournalError {
    let what = what.into();
    move |source| JournalError::Sql { what, source }
}

fn to_json<T: serde::Serialize>(what: &str, v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| JournalError::Row {
        what: what.to_string(),
        detail: e.to_string(),
    })
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| JournalError::Row {
        what: what.to_string(),
        detail: e.to_string(),
    })
}

impl Journal {
    /// Opens (creating) the journal at `path` in WAL mode.
    pub fn open(path: &Path) -> Result<Journal> {
        let conn = Connection::open(path).map_err(|source| JournalError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        // WAL: readers never block the writer, and a crash loses at most the last commit.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql("journal_mode=WAL"))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql("synchronous"))?;
        let mut j = Journal { conn };
        j.migrate(path)?;
        Ok(j)
    }

    /// The schema version (`PRAGMA user_version`).
    pub fn version(&self) -> Result<usize> {
        let v: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql("user_version"))?;
        Ok(usize::try_from(v).unwrap_or(usize::MAX))
    }

    /// Applies the migrations this journal has not run yet.
    fn migrate(&mut self, path: &Path) -> Result<()> {
        let found = self.version()?;
        if found > MIGRATIONS.len() {
            return Err(JournalError::Newer {
                path: path.to_path_buf(),
                found,
                known: MIGRATIONS.len(),
            });
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(found) {
            let what = format!("migration {}", i + 1);
            let tx = self.conn.transaction().map_err(sql(what.clone()))?;
            tx.execute_batch(m).map_err(sql(what.clone()))?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(sql(what.clone()))?;
            tx.commit().map_err(sql(what))?;
        }
        Ok(())
    }

    /// Keeps what a session runs with (see [`PlanRow`]).
    pub fn put_plan(&self, id: &str, row: &PlanRow) -> Result<()> {
        let plan = to_json("plan", &row.plan)?;
        let sandbox = to_json("sandbox plan", &row.sandbox)?;
        self.conn
            .execute(
                "INSERT OR REPLACE INTO session_plan (id, host_policy, plan, sandbox)
                 VALUES (?1, ?2, ?3, ?4)",
                params![id, row.host_policy, plan, sandbox],
            )
            .map_err(sql(format!("put plan {id}")))?;
        Ok(())
    }

    /// What session `id` runs with (`None`: started by a daemon before schema 2).
    pub fn plan(&self, id: &str) -> Result<Option<PlanRow>> {
        let row: Option<(Option<String>, String, String)> = self
            .conn
            .query_row(
                "SELECT host_policy, plan, sandbox FROM session_plan WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(sql(format!("plan {id}")))?;
        row.map(|(host_policy, plan, sandbox)| {
            Ok(PlanRow {
                host_policy,
                plan: from_json(&format!("plan {id}"), &plan)?,
                sandbox: from_json(&format!("sandbox plan {id}"), &sandbox)?,
            })
        })
        .transpose()
    }

    /// The journal mode in force (for tests: `wal`).
    pub fn mode(&self) -> Result<String> {
        self.conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(sql("journal_mode"))
    }

    /// Inserts or replaces a session row.
    pub fn put_session(&self, s: &SessionInfo) -> Result<()> {
        let info = to_json("session", s)?;
        self.conn
            .prepare_cached(
                "INSERT INTO sessions (id, owner_uid, state, created_at, info)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(id) DO UPDATE SET state = ?3, info = ?5",
            )
            .and_then(|mut st| {
                st.execute(params![
                    s.id,
                    s.owner_uid,
                    s.state.as_str(),
                    s.created_at as i64,
                    info
                ])
            })
            .map_err(sql(format!("put session {}", s.id)))?;
        Ok(())
    }

    /// Keeps the policy text a session was started with (re-resolved on re-adoption).
    pub fn put_policy(&self, id: &str, policy: Option<&PolicySource>) -> Result<()> {
        let text = to_json("policy", &policy)?;
        self.conn
            .execute(
                "INSERT OR REPLACE INTO session_policy (id, policy) VALUES (?1, ?2)",
                params![id, text],
            )
            .map_err(sql(format!("put policy {id}")))?;
        Ok(())
    }

    /// The policy a session was started with (`None`: the default profile).
    pub fn policy(&self, id: &str) -> Result<Option<PolicySource>> {
        let s: Option<String> = self
            .conn
            .query_row(
                "SELECT policy FROM session_policy WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql(format!("policy {id}")))?;
        match s {
            Some(s) => from_json(&format!("policy {id}"), &s),
            None => Ok(None),
        }
    }

    /// Marks a session removed (`agentctl rm`): hidden from listings, rows kept for audit.
    pub fn remove_session(&self, id: &str) -> Result<()> {
        self.conn
            .execute("UPDATE sessions SET removed = 1 WHERE id = ?1", params![id])
            .map_err(sql(format!("remove session {id}")))?;
        Ok(())
    }

    /// One session (removed ones included only when `removed`).
    pub fn session(&self, id: &str) -> Result<Option<SessionInfo>> {
        let s: Option<String> = self
            .conn
            .query_row(
                "SELECT info FROM sessions WHERE id = ?1 AND removed = 0",
                params![id],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql(format!("session {id}")))?;
        s.map(|s| from_json(&format!("session {id}"), &s))
            .transpose()
    }

    /// Sessions not removed, oldest first; only `owner`'s when given.
    pub fn sessions(&self, owner: Option<u32>) -> Result<Vec<SessionInfo>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT info FROM sessions WHERE removed = 0 AND (?1 IS NULL OR owner_uid = ?1)
                 ORDER BY created_at, id",
            )
            .map_err(sql("list sessions"))?;
        let rows = st
            .query_map(params![owner], |r| r.get::<_, String>(0))
            .map_err(sql("list sessions"))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(from_json("session", &r.map_err(sql("list sessions"))?)?);
        }
        Ok(out)
    }

    /// Sessions the journal says are live (starting/running).
    pub fn live_sessions(&self) -> Result<Vec<SessionInfo>> {
        Ok(self
            .sessions(None)?
            .into_iter()
            .filter(|s| !s.state.ended())
            .collect())
    }

    /// Inserts or replaces a call row (stdout/stderr are not kept).
    pub fn put_call(&self, c: &CallInfo) -> Result<()> {
        let mut c = c.clone();
        c.stdout = None;
        c.stderr = None;
        let info = to_json("call", &c)?;
        self.conn
            .prepare_cached(
                "INSERT INTO calls (session_id, n, state, started_at, info)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(session_id, n) DO UPDATE SET state = ?3, info = ?5",
            )
            .and_then(|mut st| {
                st.execute(params![
                    c.session,
                    c.n as i64,
                    c.state.as_str(),
                    c.started_at as i64,
                    info
                ])
            })
            .map_err(sql(format!("put call {}/{}", c.session, c.n)))?;
        Ok(())
    }

    /// A call's first row and its session's row (the new call count) in one transaction:
    /// one WAL commit on the call's critical path instead of two, and never a call row
    /// without its session's count.
    pub fn start_call(&self, c: &CallInfo, s: &SessionInfo) -> Result<()> {
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(sql(format!("begin call {}/{}", c.session, c.n)))?;
        self.put_call(c)?;
        self.put_session(s)?;
        tx.commit()
            .map_err(sql(format!("commit call {}/{}", c.session, c.n)))
    }

    /// The calls of a session in call order.
    pub fn calls(&self, session: &str) -> Result<Vec<CallInfo>> {
        let mut st = self
            .conn
            .prepare("SELECT info FROM calls WHERE session_id = ?1 ORDER BY n")
            .map_err(sql("list calls"))?;
        let rows = st
            .query_map(params![session], |r| r.get::<_, String>(0))
            .map_err(sql("list calls"))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(from_json("call", &r.map_err(sql("list calls"))?)?);
        }
        Ok(out)
    }

    /// Calls still marked running (after a daemon restart they are lost, see docs).
    pub fn running_calls(&self, session: &str) -> Result<Vec<CallInfo>> {
        Ok(self
            .calls(session)?
            .into_iter()
            .filter(|c| c.state == CallState::Running)
            .collect())
    }

    /// Marks a journal-live session that could not be re-adopted failed with a reason.
    pub fn mark_lost(&self, s: SessionInfo, why: &str) -> Result<()> {
        self.mark_ended(s, SessionState::Failed, why)
    }

    /// Marks a journal-live session whose processes are gone but whose layer was kept
    /// `stopped`, with the reason; its running calls failed.
    pub fn mark_stopped(&self, s: SessionInfo, why: &str) -> Result<()> {
        self.mark_ended(s, SessionState::Stopped, why)
    }

    fn mark_ended(&self, mut s: SessionInfo, state: SessionState, why: &str) -> Result<()> {
        s.state = state;
        s.error = Some(why.to_string());
        s.ended_at = Some(crate::api::now());
        self.put_session(&s)?;
        for mut c in self.running_calls(&s.id)? {
            c.state = CallState::Failed;
            c.error = Some(why.to_string());
            self.put_call(&c)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code
    use super::*;
    use crate::api::{CallLimits, SessionLimits};

    fn session(id: &str, owner: u32) -> SessionInfo {
        SessionInfo {
            id: id.into(),
            owner_uid: owner,
            workspace: "/w".into(),
            argv: vec!["sleep".into(), "1".into()],
            state: SessionState::Running,
            exit_code: None,
            created_at: 1,
            ended_at: None,
            cgroup: "/sys/fs/cgroup/x".into(),
            limits: SessionLimits {
                memory: 1,
                cpu_millis: 1000,
                pids: 10,
                timeout_s: 5,
                agent_memory: 1,
                agent_cpu_millis: 1,
                agent_pids: 1,
            },
            calls: 0,
            error: None,
            container_uid: None,
        }
    }

    #[test]
    fn sessions_round_trip_filter_by_owner_and_hide_removed() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("j.db")).unwrap();
        assert_eq!(j.mode().unwrap(), "wal");
        j.put_session(&session("a", 1000)).unwrap();
        j.put_session(&session("b", 1001)).unwrap();
        assert_eq!(j.sessions(None).unwrap().len(), 2);
        assert_eq!(j.sessions(Some(1000)).unwrap()[0].id, "a");
        let mut a = session("a", 1000);
        a.state = SessionState::Exited;
        j.put_session(&a).unwrap();
        assert_eq!(j.live_sessions().unwrap().len(), 1);
        let p = PolicySource {
            name: "p.toml".into(),
            text: "version = 1\n".into(),
        };
        j.put_policy("a", Some(&p)).unwrap();
        assert_eq!(j.policy("a").unwrap().unwrap().text, p.text);
        j.put_policy("b", None).unwrap();
        assert!(j.policy("b").unwrap().is_none());
        j.remove_session("a").unwrap();
        assert!(j.session("a").unwrap().is_none());
        j.mark_lost(session("b", 1001), "daemon restarted").unwrap();
        assert_eq!(j.session("b").unwrap().unwrap().state, SessionState::Failed);
        j.put_session(&session("c", 1001)).unwrap();
        j.mark_stopped(session("c", 1001), "the host went down")
            .unwrap();
        let c = j.session("c").unwrap().unwrap();
        assert_eq!(c.state, SessionState::Stopped);
        assert!(c.state.ended());
        assert_eq!(c.error.as_deref(), Some("the host went down"));
        assert_eq!(SessionState::parse("stopped"), Some(SessionState::Stopped));
    }

    #[test]
    fn start_call_writes_the_call_and_the_session_count_together() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("j.db")).unwrap();
        let mut s = session("a", 1000);
        j.put_session(&s).unwrap();
        s.calls = 7;
        let limits = CallLimits {
            memory: 1 << 20,
            cpu_class: agentd_policy::schema::CpuClass::Batch,
            cpu_weight: 50,
            timeout_s: 5,
            pids: 8,
            rule: None,
            notes: vec![],
        };
        let c = CallInfo::running("a", 7, &["true".to_string()], Default::default(), limits);
        j.start_call(&c, &s).unwrap();
        assert_eq!(j.session("a").unwrap().unwrap().calls, 7);
        assert_eq!(
            j.calls("a")
                .unwrap()
                .iter()
                .map(|c| c.n)
                .collect::<Vec<_>>(),
            [7]
        );
        // The statements are cached: the same call again is an update, not a second row.
        s.calls = 7;
        j.start_call(&c, &s).unwrap();
        assert_eq!(j.calls("a").unwrap().len(), 1);
    }

    #[test]
    fn migrations_bring_an_old_journal_up_and_a_newer_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        // A journal from before versioning: the version 1 tables, user_version 0.
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.execute(
                "INSERT INTO sessions (id, owner_uid, state, created_at, info) VALUES ('old', 1, 'exited', 1, '{}')",
                [],
            )
            .unwrap();
        }
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.version().unwrap(), MIGRATIONS.len());
        let n: i64 = j
            .conn
            .query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1, "the old rows stay");
        let row = PlanRow {
            host_policy: Some("version = 1\n".into()),
            plan: serde_json::json!({"require": []}),
            sandbox: agentd_sandbox::SessionPlan::new(
                Path::new("/w"),
                Path::new("/s"),
                1 << 30,
                1000,
                100_000,
            ),
        };
        j.put_plan("old", &row).unwrap();
        assert_eq!(j.plan("old").unwrap(), Some(row));
        assert_eq!(j.plan("nope").unwrap(), None);
        // Reopening is a no-op.
        drop(j);
        assert_eq!(
            Journal::open(&path).unwrap().version().unwrap(),
            MIGRATIONS.len()
        );
        {
            let c = Connection::open(&path).unwrap();
            c.pragma_update(None, "user_version", 99).unwrap();
        }
        let e = Journal::open(&path).unwrap_err().to_string();
        assert!(e.contains("schema version 99 is newer"), "{e}");
    }
}
