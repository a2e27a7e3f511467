//! The journal's capability tables (migration 4 of [`super::MIGRATIONS`]): `cap_grants`
//! (each grant as JSON, rewritten when it is used up or revoked), `approvals` (each request
//! and its answer) and the hash-chained `audit` table with its per-session `audit_head`
//! (`caps::audit`). Audit appends are durable before they return: the commit runs with
//! `synchronous = FULL` (the WAL is fsync'd), so the effect a record authorizes is released
//! only after it is on disk.

use rusqlite::{OptionalExtension, params};

use super::{Journal, Result, from_json, sql, to_json};
use crate::caps::audit::Record;
use crate::caps::{ApprovalInfo, Grant};

impl Journal {
    /// Inserts or rewrites a grant.
    pub fn put_grant(&self, g: &Grant) -> Result<()> {
        let body = to_json("grant", g)?;
        self.conn
            .prepare_cached(
                "INSERT INTO cap_grants (session_id, id, grant_json) VALUES (?1, ?2, ?3)
                 ON CONFLICT(session_id, id) DO UPDATE SET grant_json = ?3",
            )
            .and_then(|mut st| st.execute(params![g.session, g.id as i64, body]))
            .map(|_| ())
            .map_err(sql(format!("put grant {}/{}", g.session, g.id)))
    }

    /// A session's grants by id.
    pub fn grants(&self, session: &str) -> Result<Vec<Grant>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT grant_json FROM cap_grants WHERE session_id = ?1 ORDER BY id")
            .map_err(sql("select grants"))?;
        let rows = st
            .query_map(params![session], |r| r.get::<_, String>(0))
            .map_err(sql("select grants"))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(from_json("grant", &r.map_err(sql("read grants"))?)?);
        }
        Ok(out)
    }

    /// Files a request; returns its id (the row's, unique across sessions).
    pub fn new_approval(&self, a: &ApprovalInfo) -> Result<u64> {
        let body = to_json("approval", a)?;
        self.conn
            .execute(
                "INSERT INTO approvals (session_id, state, info) VALUES (?1, ?2, ?3)",
                params![a.session, a.state.as_str(), body],
            )
            .map_err(sql("insert approval"))?;
        Ok(self.conn.last_insert_rowid() as u64)
    }

    /// Rewrites a request (its answer).
    pub fn put_approval(&self, a: &ApprovalInfo) -> Result<()> {
        let body = to_json("approval", a)?;
        self.conn
            .execute(
                "UPDATE approvals SET state = ?2, info = ?3 WHERE id = ?1",
                params![a.id as i64, a.state.as_str(), body],
            )
            .map(|_| ())
            .map_err(sql(format!("update approval {}", a.id)))
    }

    /// One request.
    pub fn approval(&self, id: u64) -> Result<Option<ApprovalInfo>> {
        let s: Option<String> = self
            .conn
            .query_row(
                "SELECT info FROM approvals WHERE id = ?1",
                params![id as i64],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql(format!("approval {id}")))?;
        s.map(|s| from_json("approval", &s)).transpose()
    }

    /// A session's requests, oldest first.
    pub fn approvals(&self, session: &str) -> Result<Vec<ApprovalInfo>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT info FROM approvals WHERE session_id = ?1 ORDER BY id")
            .map_err(sql("select approvals"))?;
        let rows = st
            .query_map(params![session], |r| r.get::<_, String>(0))
            .map_err(sql("select approvals"))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(from_json("approval", &r.map_err(sql("read approvals"))?)?);
        }
        Ok(out)
    }

    /// Requests still pending in the journal (a daemon restart denies them).
    pub fn pending_approvals(&self) -> Result<Vec<ApprovalInfo>> {
        let mut st = self
            .conn
            .prepare("SELECT info FROM approvals WHERE state = 'pending' ORDER BY id")
            .map_err(sql("select pending approvals"))?;
        let rows = st
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(sql("select pending approvals"))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(from_json("approval", &r.map_err(sql("read approvals"))?)?);
        }
        Ok(out)
    }

    /// Appends one audit record to the session's chain, with its head, in one transaction
    /// committed with `synchronous = FULL`; returns the record.
    pub fn append_audit(
        &self,
        session: &str,
        at_ms: u64,
        kind: &str,
        body: String,
    ) -> Result<Record> {
        let what = || format!("audit {session}");
        self.conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(sql(what()))?;
        let r = self.append_audit_tx(session, at_ms, kind, body);
        // Back to the journal's default for every other statement.
        let _ = self.conn.pragma_update(None, "synchronous", "NORMAL");
        r
    }

    fn append_audit_tx(
        &self,
        session: &str,
        at_ms: u64,
        kind: &str,
        body: String,
    ) -> Result<Record> {
        let what = || format!("audit {session}");
        let tx = self.conn.unchecked_transaction().map_err(sql(what()))?;
        let head = self.audit_head(session)?;
        let r = Record::next(
            session,
            head.as_ref().map(|(s, h)| (*s, h.as_str())),
            at_ms,
            kind,
            body,
        );
        self.conn
            .prepare_cached(
                "INSERT INTO audit (session_id, seq, at_ms, kind, body, prev, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    r.session,
                    r.seq as i64,
                    r.at_ms as i64,
                    r.kind,
                    r.body,
                    r.prev,
                    r.hash
                ])
            })
            .map_err(sql(what()))?;
        self.conn
            .prepare_cached(
                "INSERT INTO audit_head (session_id, seq, hash) VALUES (?1, ?2, ?3)
                 ON CONFLICT(session_id) DO UPDATE SET seq = ?2, hash = ?3",
            )
            .and_then(|mut st| st.execute(params![r.session, r.seq as i64, r.hash]))
            .map_err(sql(what()))?;
        tx.commit().map_err(sql(what()))?;
        Ok(r)
    }

    /// The session's chain head (last seq and hash).
    pub fn audit_head(&self, session: &str) -> Result<Option<(u64, String)>> {
        self.conn
            .prepare_cached("SELECT seq, hash FROM audit_head WHERE session_id = ?1")
            .and_then(|mut st| {
                st.query_row(params![session], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
                })
                .optional()
            })
            .map_err(sql(format!("audit head {session}")))
    }

    /// A session's audit records in seq order.
    pub fn audit(&self, session: &str) -> Result<Vec<Record>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT session_id, seq, at_ms, kind, body, prev, hash FROM audit
                 WHERE session_id = ?1 ORDER BY seq",
            )
            .map_err(sql("select audit"))?;
        let rows = st
            .query_map(params![session], |r| {
                Ok(Record {
                    session: r.get(0)?,
                    seq: r.get::<_, i64>(1)? as u64,
                    at_ms: r.get::<_, i64>(2)? as u64,
                    kind: r.get(3)?,
                    body: r.get(4)?,
                    prev: r.get(5)?,
                    hash: r.get(6)?,
                })
            })
            .map_err(sql("select audit"))?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .map_err(sql("read audit"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code
    use super::*;
    use crate::caps::audit::verify;
    use crate::caps::{ApprovalState, Effect, Scope, Subject};

    #[test]
    fn migration_4_keeps_grants_approvals_and_a_verifiable_audit_chain() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("j.db")).unwrap();
        let g = Grant {
            id: 1,
            session: "s".into(),
            subject: Subject::Call(2),
            resource: "net:web.test:443".into(),
            effect: Effect::Allow,
            scope: Scope::Once,
            uses: Some(1),
            expires_at_ms: None,
            parent: None,
            origin: "approval 1".into(),
            created_at_ms: 5,
            revoked: false,
        };
        j.put_grant(&g).unwrap();
        let mut g2 = g.clone();
        g2.uses = Some(0);
        j.put_grant(&g2).unwrap();
        assert_eq!(j.grants("s").unwrap(), vec![g2]);
        let mut a = ApprovalInfo::pending(
            "s",
            Some(2),
            "net:web.test:443",
            "why",
            "egress",
            "rule",
            1,
            3000,
        );
        a.id = j.new_approval(&a).unwrap();
        assert_eq!(j.pending_approvals().unwrap().len(), 1);
        a.state = ApprovalState::Approved;
        j.put_approval(&a).unwrap();
        assert_eq!(
            j.approval(a.id).unwrap().unwrap().state,
            ApprovalState::Approved
        );
        assert!(j.pending_approvals().unwrap().is_empty());
        assert_eq!(j.approvals("s").unwrap().len(), 1);
        for i in 0..5 {
            j.append_audit("s", i, "call", format!("{{\"n\":{i}}}"))
                .unwrap();
        }
        j.append_audit("t", 1, "call", "{}".into()).unwrap();
        let recs = j.audit("s").unwrap();
        let head = j.audit_head("s").unwrap().unwrap();
        assert!(verify("s", &recs, Some((head.0, &head.1))).ok);
        // Truncation behind the journal's back is caught by the head.
        j.conn
            .execute("DELETE FROM audit WHERE session_id = 's' AND seq = 5", [])
            .unwrap();
        let recs = j.audit("s").unwrap();
        let v = verify("s", &recs, Some((head.0, &head.1)));
        assert!(v.problem.unwrap().contains("truncated after record 4"));
        assert_eq!(j.mode().unwrap(), "wal");
    }
}
