//! The journal's `net_connections` table: one row per connection the egress proxy handled
//! (allowed or denied), written when the connection ends, append-only. The table is
//! migration 3 of [`super::MIGRATIONS`].

use rusqlite::params;

use super::{Journal, Result, sql};
use crate::egress::ConnRecord;

impl Journal {
    /// Appends one audited connection.
    pub fn put_connection(&self, r: &ConnRecord) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO net_connections (session_id, call, via, dest, port, upstream, \
                 decision, rule, bytes_up, bytes_down, started_at_ms, duration_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    r.session,
                    r.call.map(|c| c as i64),
                    r.via,
                    r.dest,
                    r.port,
                    r.upstream,
                    r.decision,
                    r.rule,
                    r.bytes_up as i64,
                    r.bytes_down as i64,
                    r.started_at_ms as i64,
                    r.duration_ms as i64
                ])
            })
            .map(|_| ())
            .map_err(sql("insert net_connections"))
    }

    /// Appends audited connections in one transaction.
    pub fn put_connections(&self, rows: &[ConnRecord]) -> Result<()> {
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(sql("begin net_connections"))?;
        for r in rows {
            self.put_connection(r)?;
        }
        tx.commit().map_err(sql("commit net_connections"))
    }

    /// A session's connections, oldest first (at most `limit`).
    pub fn connections(&self, session: &str, limit: u32) -> Result<Vec<ConnRecord>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT session_id, call, via, dest, port, upstream, decision, rule, bytes_up, \
                 bytes_down, started_at_ms, duration_ms FROM net_connections \
                 WHERE session_id = ?1 ORDER BY id LIMIT ?2",
            )
            .map_err(sql("select net_connections"))?;
        let rows = st
            .query_map(params![session, limit], |r| {
                Ok(ConnRecord {
                    session: r.get(0)?,
                    call: r.get::<_, Option<i64>>(1)?.map(|c| c as u64),
                    via: r.get(2)?,
                    dest: r.get(3)?,
                    port: r.get(4)?,
                    upstream: r.get(5)?,
                    decision: r.get(6)?,
                    rule: r.get(7)?,
                    bytes_up: r.get::<_, i64>(8)? as u64,
                    bytes_down: r.get::<_, i64>(9)? as u64,
                    started_at_ms: r.get::<_, i64>(10)? as u64,
                    duration_ms: r.get::<_, i64>(11)? as u64,
                })
            })
            .map_err(sql("select net_connections"))?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .map_err(sql("read net_connections"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code
    use super::*;

    fn rec(session: &str, call: Option<u64>, dest: &str) -> ConnRecord {
        ConnRecord {
            session: session.into(),
            call,
            via: "transparent".into(),
            dest: dest.into(),
            port: 443,
            upstream: Some("10.0.0.1:443".into()),
            decision: "allow".into(),
            rule: "network.allow[0]".into(),
            bytes_up: 517,
            bytes_down: 4096,
            started_at_ms: 1_700_000_000_000,
            duration_ms: 12,
        }
    }

    #[test]
    fn migration_3_keeps_connections_per_session_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("j.db")).unwrap();
        j.put_connections(&[rec("a", Some(1), "x.test"), rec("b", None, "y.test")])
            .unwrap();
        j.put_connection(&rec("a", None, "z.test")).unwrap();
        let a = j.connections("a", 10).unwrap();
        assert_eq!(
            a,
            vec![rec("a", Some(1), "x.test"), rec("a", None, "z.test")]
        );
        assert_eq!(j.connections("a", 1).unwrap().len(), 1);
        assert!(j.connections("c", 10).unwrap().is_empty());
    }
}
