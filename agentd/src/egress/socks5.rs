//! SOCKS5 (RFC 1928), the subset a proxy for `ALL_PROXY=socks5h://…` needs: the greeting
//! (no-authentication only), one CONNECT request (IPv4, domain name; IPv6 parsed and then
//! refused by policy), and the replies. Everything else is a protocol error answered with
//! the matching reply code. Fuzzed: target `socks5`.

use std::net::{Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SocksError {
    #[error("socks5: version {0}, not 5")]
    Version(u8),
    #[error("socks5: the client offers no 'no authentication' method")]
    NoMethod,
    #[error("socks5: command {0} not supported (only CONNECT)")]
    Command(u8),
    #[error("socks5: address type {0} not supported")]
    AddrType(u8),
    #[error("socks5: malformed request ({0})")]
    Malformed(&'static str),
}

impl SocksError {
    /// The reply code that answers this error.
    pub fn reply_code(&self) -> u8 {
        match self {
            SocksError::Command(_) => REP_COMMAND,
            SocksError::AddrType(_) => REP_ADDR_TYPE,
            _ => REP_FAILURE,
        }
    }
}

pub const REP_OK: u8 = 0;
pub const REP_FAILURE: u8 = 1;
pub const REP_NOT_ALLOWED: u8 = 2;
pub const REP_HOST_UNREACHABLE: u8 = 4;
pub const REP_REFUSED: u8 = 5;
pub const REP_COMMAND: u8 = 7;
pub const REP_ADDR_TYPE: u8 = 8;

/// Where a CONNECT goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocksTarget {
    Name(String, u16),
    V4(Ipv4Addr, u16),
    V6(Ipv6Addr, u16),
}

/// Parses the greeting; `Ok(Some(len))` when complete and no-auth is offered.
pub fn parse_greeting(b: &[u8]) -> Result<Option<usize>, SocksError> {
    let Some(&v) = b.first() else { return Ok(None) };
    if v != 5 {
        return Err(SocksError::Version(v));
    }
    let Some(&n) = b.get(1) else { return Ok(None) };
    let Some(methods) = b.get(2..2 + usize::from(n)) else {
        return Ok(None);
    };
    if methods.contains(&0) {
        Ok(Some(2 + usize::from(n)))
    } else {
        Err(SocksError::NoMethod)
    }
}

/// The answer to a greeting: no authentication, or no acceptable method.
pub fn greeting_reply(ok: bool) -> [u8; 2] {
    [5, if ok { 0 } else { 0xff }]
}

/// Parses a request; `Ok(Some((target, len)))` when complete.
pub fn parse_request(b: &[u8]) -> Result<Option<(SocksTarget, usize)>, SocksError> {
    let Some(hdr) = b.get(..4) else {
        if let Some(&v) = b.first()
            && v != 5
        {
            return Err(SocksError::Version(v));
        }
        return Ok(None);
    };
    if hdr[0] != 5 {
        return Err(SocksError::Version(hdr[0]));
    }
    if hdr[2] != 0 {
        return Err(SocksError::Malformed("reserved byte"));
    }
    if hdr[1] != 1 {
        return Err(SocksError::Command(hdr[1]));
    }
    let port_at =
        |i: usize| -> Option<u16> { b.get(i..i + 2).map(|p| u16::from_be_bytes([p[0], p[1]])) };
    match hdr[3] {
        1 => {
            let (Some(a), Some(p)) = (b.get(4..8), port_at(8)) else {
                return Ok(None);
            };
            Ok(Some((
                SocksTarget::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]), p),
                10,
            )))
        }
        3 => {
            let Some(&n) = b.get(4) else { return Ok(None) };
            let n = usize::from(n);
            let (Some(name), Some(p)) = (b.get(5..5 + n), port_at(5 + n)) else {
                return Ok(None);
            };
            if n == 0
                || !name
                    .iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'))
            {
                return Err(SocksError::Malformed("domain name"));
            }
            let s: String = name
                .iter()
                .map(|c| char::from(c.to_ascii_lowercase()))
                .collect();
            Ok(Some((
                SocksTarget::Name(s.trim_end_matches('.').to_string(), p),
                7 + n,
            )))
        }
        4 => {
            let (Some(a), Some(p)) = (b.get(4..20), port_at(20)) else {
                return Ok(None);
            };
            let mut o = [0u8; 16];
            o.copy_from_slice(a);
            Ok(Some((SocksTarget::V6(Ipv6Addr::from(o), p), 22)))
        }
        t => Err(SocksError::AddrType(t)),
    }
}

/// A reply with code `rep` and an all-zero bound address.
pub fn reply(rep: u8) -> [u8; 10] {
    [5, rep, 0, 1, 0, 0, 0, 0, 0, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_and_requests() {
        assert_eq!(parse_greeting(&[5, 2, 2, 0]), Ok(Some(4)));
        assert_eq!(parse_greeting(&[5, 2, 2]), Ok(None));
        assert_eq!(parse_greeting(&[5, 1, 2]), Err(SocksError::NoMethod));
        assert_eq!(parse_greeting(b"GET"), Err(SocksError::Version(b'G')));
        let mut r = vec![5, 1, 0, 3, 8];
        r.extend_from_slice(b"Web.Test");
        r.extend_from_slice(&443u16.to_be_bytes());
        assert_eq!(
            parse_request(&r),
            Ok(Some((SocksTarget::Name("web.test".into(), 443), 15)))
        );
        assert_eq!(parse_request(&r[..9]), Ok(None));
        assert_eq!(
            parse_request(&[5, 1, 0, 1, 10, 0, 0, 1, 0, 80]),
            Ok(Some((SocksTarget::V4(Ipv4Addr::new(10, 0, 0, 1), 80), 10)))
        );
        assert_eq!(parse_request(&[5, 2, 0, 1]), Err(SocksError::Command(2)));
        assert_eq!(parse_request(&[5, 1, 0, 9]), Err(SocksError::AddrType(9)));
        assert_eq!(
            parse_request(&[5, 1, 0, 3, 0, 0, 80]),
            Err(SocksError::Malformed("domain name"))
        );
        assert_eq!(SocksError::Command(2).reply_code(), REP_COMMAND);
    }
}
