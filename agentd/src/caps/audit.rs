//! The audit trail's hash chain (pure): every record of a session carries its sequence
//! number and the SHA-256 of the previous record, and its own hash covers both, so a record
//! modified, removed or re-ordered breaks the chain from that point. The journal keeps the
//! session's head (last seq and hash) in a separate row written in the same transaction as
//! each record: records cut off the end (truncation, a lost tail after a crash) no longer
//! reach the head. `verify` names the first record that does not fit.
//!
//! Hash input: `seq ‖ at_ms ‖ kind ‖ body ‖ prev` with each field length-prefixed, so no
//! two different records hash the same bytes. The first record's `prev` is the hash of
//! `agentd audit <session>` (a chain cannot be moved to another session).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One audit record (a row of the journal's `audit` table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub session: String,
    /// 1, 2, 3, … per session.
    pub seq: u64,
    pub at_ms: u64,
    /// `session-start`, `session-end`, `call`, `request`, `decision`, `grant`, `revoke`,
    /// `denial`, `net`.
    pub kind: String,
    /// The event as JSON text (hashed as written).
    pub body: String,
    /// Hex SHA-256 of the previous record (or of the session's genesis).
    pub prev: String,
    /// Hex SHA-256 of this record.
    pub hash: String,
}

fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(D[usize::from(x >> 4)] as char);
        s.push(D[usize::from(x & 15)] as char);
    }
    s
}

/// The `prev` of a session's first record.
pub fn genesis(session: &str) -> String {
    hex(&Sha256::digest(
        format!("agentd audit {session}").as_bytes(),
    ))
}

fn field(h: &mut Sha256, b: &[u8]) {
    h.update((b.len() as u64).to_le_bytes());
    h.update(b);
}

/// The hash of a record with these fields.
pub fn hash(seq: u64, at_ms: u64, kind: &str, body: &str, prev: &str) -> String {
    let mut h = Sha256::new();
    h.update(seq.to_le_bytes());
    h.update(at_ms.to_le_bytes());
    field(&mut h, kind.as_bytes());
    field(&mut h, body.as_bytes());
    field(&mut h, prev.as_bytes());
    hex(&h.finalize())
}

impl Record {
    /// The record following `last` (`None`: the session's first).
    pub fn next(
        session: &str,
        last: Option<(u64, &str)>,
        at_ms: u64,
        kind: &str,
        body: String,
    ) -> Record {
        let (seq, prev) = match last {
            Some((s, h)) => (s + 1, h.to_string()),
            None => (1, genesis(session)),
        };
        let hash = hash(seq, at_ms, kind, &body, &prev);
        Record {
            session: session.to_string(),
            seq,
            at_ms,
            kind: kind.to_string(),
            body,
            prev,
            hash,
        }
    }
}

/// The result of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    pub ok: bool,
    /// Records checked.
    pub records: u64,
    /// The first problem found, naming the record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Verifies a session's records (in seq order) against its head (`None`: no head row, i.e.
/// no record was ever written).
pub fn verify(session: &str, records: &[Record], head: Option<(u64, &str)>) -> Verified {
    let bad = |n: u64, why: String| Verified {
        ok: false,
        records: n,
        problem: Some(why),
    };
    let mut prev = genesis(session);
    for (i, r) in records.iter().enumerate() {
        let want = i as u64 + 1;
        if r.seq != want {
            return bad(
                want - 1,
                format!(
                    "record {want} is missing (found seq {} next): removed",
                    r.seq
                ),
            );
        }
        if r.prev != prev {
            return bad(
                want - 1,
                format!(
                    "record {want} does not follow record {}: removed or reordered",
                    want - 1
                ),
            );
        }
        if hash(r.seq, r.at_ms, &r.kind, &r.body, &r.prev) != r.hash {
            return bad(
                want - 1,
                format!("record {want} was modified (its hash does not match)"),
            );
        }
        prev.clone_from(&r.hash);
    }
    let n = records.len() as u64;
    match head {
        None if n == 0 => Verified {
            ok: true,
            records: 0,
            problem: None,
        },
        None => bad(
            n,
            "the chain has records but no head: the head row was removed".into(),
        ),
        Some((s, _)) if s > n => bad(
            n,
            format!("the head says {s} records, {n} remain: truncated after record {n}"),
        ),
        Some((s, h)) if s != n || h != prev => bad(
            n,
            format!("the head (record {s}) does not match the last record {n}"),
        ),
        Some(_) => Verified {
            ok: true,
            records: n,
            problem: None,
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code
    use super::*;

    fn chain(n: u64) -> Vec<Record> {
        let mut out: Vec<Record> = Vec::new();
        for i in 0..n {
            let last = out.last().map(|r| (r.seq, r.hash.as_str()));
            let r = Record::next("s1", last, 1000 + i, "call", format!("{{\"n\":{i}}}"));
            out.push(r);
        }
        out
    }

    fn head(c: &[Record]) -> Option<(u64, &str)> {
        c.last().map(|r| (r.seq, r.hash.as_str()))
    }

    #[test]
    fn an_intact_chain_verifies_and_every_tampering_is_named() {
        let c = chain(50);
        let v = verify("s1", &c, head(&c));
        assert!(v.ok && v.records == 50, "{v:?}");
        assert!(verify("s1", &[], None).ok);
        // Another session's chain does not verify as this one's.
        assert!(!verify("s2", &c, head(&c)).ok);

        let mut m = c.clone();
        m[20].body = "{\"n\":999}".into();
        let v = verify("s1", &m, head(&c));
        assert_eq!(
            v.problem.as_deref(),
            Some("record 21 was modified (its hash does not match)")
        );

        let mut m = c.clone();
        m.remove(20);
        let v = verify("s1", &m, head(&c));
        assert!(v.problem.unwrap().contains("record 21 is missing"));

        // Removed and renumbered: the links give it away.
        let mut m = c.clone();
        m.remove(20);
        for (i, r) in m.iter_mut().enumerate() {
            r.seq = i as u64 + 1;
        }
        let v = verify("s1", &m, head(&c));
        assert!(v.problem.unwrap().contains("does not follow"));

        let t = &c[..40];
        let v = verify("s1", t, head(&c));
        assert_eq!(
            v.problem.as_deref(),
            Some("the head says 50 records, 40 remain: truncated after record 40")
        );
        assert!(!verify("s1", &c, None).ok);
    }
}
