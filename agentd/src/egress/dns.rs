//! DNS wire format, only what the fake-IP stub and the daemon's upstream resolver need:
//! parse one question from a query, answer it (one A record, an empty answer, NXDOMAIN,
//! SERVFAIL), build an A query, read the A records of an answer (CNAME chains skipped,
//! compression pointers followed with a hop bound). Every read is bounds-checked: a
//! malformed packet is an error, never a panic (fuzzed: `agentd/fuzz`, target `dns`).

use std::net::Ipv4Addr;

/// Record types the stub treats specially.
pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const CLASS_IN: u16 = 1;

/// Why a packet was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("dns: packet too short ({0} bytes)")]
    Short(usize),
    #[error("dns: not a standard query (flags {0:#06x})")]
    NotQuery(u16),
    #[error("dns: {0} questions (exactly one supported)")]
    Questions(u16),
    #[error("dns: bad name: {0}")]
    Name(&'static str),
    #[error("dns: answer id {got} does not match the query's {want}")]
    Id { got: u16, want: u16 },
    #[error("dns: upstream answered rcode {0}")]
    Rcode(u8),
}

/// One parsed question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// Lower case, dot-separated, no trailing dot.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// Whether the client asked for recursion (echoed).
    pub rd: bool,
    /// The question section as sent (echoed in the answer).
    question: Vec<u8>,
}

fn u16_at(b: &[u8], i: usize) -> Result<u16, DnsError> {
    match (b.get(i), b.get(i + 1)) {
        (Some(h), Some(l)) => Ok(u16::from_be_bytes([*h, *l])),
        _ => Err(DnsError::Short(b.len())),
    }
}

/// Reads a name at `i` (no compression: questions never need it); returns it and the end.
fn read_plain_name(b: &[u8], mut i: usize) -> Result<(String, usize), DnsError> {
    let mut name = String::new();
    loop {
        let len = usize::from(*b.get(i).ok_or(DnsError::Short(b.len()))?);
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return Err(DnsError::Name(
                "label longer than 63 or a compression pointer",
            ));
        }
        let label = b.get(i..i + len).ok_or(DnsError::Short(b.len()))?;
        if !label
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
        {
            return Err(DnsError::Name(
                "label with characters outside [A-Za-z0-9_-]",
            ));
        }
        if !name.is_empty() {
            name.push('.');
        }
        name.extend(label.iter().map(|c| char::from(c.to_ascii_lowercase())));
        if name.len() > 253 {
            return Err(DnsError::Name("longer than 253 bytes"));
        }
        i += len;
    }
    if name.is_empty() {
        return Err(DnsError::Name("the root"));
    }
    Ok((name, i))
}

/// Skips a possibly compressed name at `i`; returns the offset after it.
fn skip_name(b: &[u8], mut i: usize) -> Result<usize, DnsError> {
    for _ in 0..128 {
        let len = *b.get(i).ok_or(DnsError::Short(b.len()))?;
        if len & 0xc0 == 0xc0 {
            return Ok(i + 2);
        }
        if len & 0xc0 != 0 {
            return Err(DnsError::Name("reserved label type"));
        }
        i += 1 + usize::from(len);
        if len == 0 {
            return Ok(i);
        }
    }
    Err(DnsError::Name("too many labels"))
}

/// Parses a query with exactly one question.
pub fn parse_query(b: &[u8]) -> Result<Query, DnsError> {
    if b.len() < 12 {
        return Err(DnsError::Short(b.len()));
    }
    let id = u16_at(b, 0)?;
    let flags = u16_at(b, 2)?;
    // QR must be 0 (a query) and the opcode 0 (standard).
    if flags & 0x8000 != 0 || (flags >> 11) & 0xf != 0 {
        return Err(DnsError::NotQuery(flags));
    }
    let qd = u16_at(b, 4)?;
    if qd != 1 {
        return Err(DnsError::Questions(qd));
    }
    let (name, end) = read_plain_name(b, 12)?;
    let qtype = u16_at(b, end)?;
    let qclass = u16_at(b, end + 2)?;
    Ok(Query {
        id,
        name,
        qtype,
        qclass,
        rd: flags & 0x0100 != 0,
        question: b.get(12..end + 4).ok_or(DnsError::Short(b.len()))?.to_vec(),
    })
}

/// What the stub answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// One A record with this address (TTL 60 s).
    A(Ipv4Addr),
    /// NOERROR with no records (AAAA, HTTPS, SVCB, …: clients fall back to A/IPv4).
    Empty,
    NxDomain,
    ServFail,
}

/// Builds the answer to `q`.
pub fn answer(q: &Query, a: Answer) -> Vec<u8> {
    let rcode: u16 = match a {
        Answer::NxDomain => 3,
        Answer::ServFail => 2,
        _ => 0,
    };
    // QR=1, AA=1, RD echoed, RA=1.
    let flags = 0x8000 | 0x0400 | if q.rd { 0x0100 } else { 0 } | 0x0080 | rcode;
    let ancount: u16 = u16::from(matches!(a, Answer::A(_)));
    let mut out = Vec::with_capacity(12 + q.question.len() + 16);
    out.extend_from_slice(&q.id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&ancount.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&q.question);
    if let Answer::A(ip) = a {
        // A pointer to the question's name at offset 12.
        out.extend_from_slice(&[0xc0, 12]);
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&60u32.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    out
}

/// An A query for `name` (recursion desired).
pub fn build_query(id: u16, name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(18 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&0x0100u16.to_be_bytes());
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        let l = &label.as_bytes()[..label.len().min(63)];
        out.push(l.len() as u8);
        out.extend_from_slice(l);
    }
    out.push(0);
    out.extend_from_slice(&TYPE_A.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out
}

/// The A records of an answer to query `want_id` (empty when the name has none).
pub fn parse_a_records(b: &[u8], want_id: u16) -> Result<Vec<Ipv4Addr>, DnsError> {
    if b.len() < 12 {
        return Err(DnsError::Short(b.len()));
    }
    let id = u16_at(b, 0)?;
    if id != want_id {
        return Err(DnsError::Id {
            got: id,
            want: want_id,
        });
    }
    let flags = u16_at(b, 2)?;
    let rcode = (flags & 0xf) as u8;
    if rcode == 3 {
        return Ok(Vec::new());
    }
    if rcode != 0 {
        return Err(DnsError::Rcode(rcode));
    }
    let qd = u16_at(b, 4)?;
    let an = u16_at(b, 6)?;
    let mut i = 12;
    for _ in 0..qd {
        i = skip_name(b, i)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        i = skip_name(b, i)?;
        let rtype = u16_at(b, i)?;
        let rclass = u16_at(b, i + 2)?;
        let rdlen = usize::from(u16_at(b, i + 8)?);
        let data = b
            .get(i + 10..i + 10 + rdlen)
            .ok_or(DnsError::Short(b.len()))?;
        if rtype == TYPE_A && rclass == CLASS_IN && rdlen == 4 {
            out.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        i += 10 + rdlen;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_answer_roundtrip() {
        let q = build_query(0x1234, "Web.Test");
        let p = parse_query(&q).unwrap();
        assert_eq!(
            (p.id, p.name.as_str(), p.qtype),
            (0x1234, "web.test", TYPE_A)
        );
        let a = answer(&p, Answer::A(Ipv4Addr::new(198, 18, 0, 7)));
        assert_eq!(
            parse_a_records(&a, 0x1234).unwrap(),
            [Ipv4Addr::new(198, 18, 0, 7)]
        );
        assert!(
            parse_a_records(&answer(&p, Answer::Empty), 0x1234)
                .unwrap()
                .is_empty()
        );
        assert!(
            parse_a_records(&answer(&p, Answer::NxDomain), 0x1234)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            parse_a_records(&answer(&p, Answer::ServFail), 0x1234),
            Err(DnsError::Rcode(2))
        );
        assert!(matches!(parse_a_records(&a, 1), Err(DnsError::Id { .. })));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_query(&[]).is_err());
        assert!(parse_query(&[0; 12]).is_err());
        let mut q = build_query(1, "a.b");
        q[12] = 0xc0;
        assert!(parse_query(&q).is_err());
        let mut q = build_query(1, "a.b");
        q.truncate(15);
        assert!(parse_query(&q).is_err());
        for n in 0..40 {
            let junk: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            let _ = parse_query(&junk);
            let _ = parse_a_records(&junk, 0);
        }
    }
}
