//! The server name of a TLS ClientHello, read from the first bytes a client sends: the
//! handshake message is reassembled across TLS records (and so across TCP segments: the
//! caller feeds what it has read so far and gets `NeedMore` until the message is whole).
//! Bounded (`MAX_HELLO`), bounds-checked, never panics (fuzzed: target `sni`).

/// The largest ClientHello accepted (post-quantum key shares make real ones ~2 KiB).
pub const MAX_HELLO: usize = 32 * 1024;

/// A fatal `access_denied` alert (TLS record, version 1.2 on the wire).
pub const ALERT_ACCESS_DENIED: [u8; 7] = [21, 3, 3, 0, 2, 2, 49];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// More bytes are needed.
    NeedMore,
    /// A whole ClientHello; its server name when it has one.
    Done(Option<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SniError {
    #[error("tls: not a TLS handshake (first byte {0:#04x})")]
    NotTls(u8),
    #[error("tls: the first handshake message is type {0}, not a ClientHello")]
    NotHello(u8),
    #[error("tls: ClientHello of {0} bytes exceeds the {MAX_HELLO}-byte bound")]
    TooLong(usize),
    #[error("tls: malformed ClientHello ({0})")]
    Malformed(&'static str),
}

/// Reassembles the handshake bytes carried by the records in `buf`; returns the whole
/// ClientHello body when complete.
fn handshake_bytes(buf: &[u8]) -> Result<Option<Vec<u8>>, SniError> {
    let mut hs = Vec::new();
    let mut i = 0;
    loop {
        let Some(hdr) = buf.get(i..i + 5) else {
            return Ok(None);
        };
        if hdr[0] != 22 {
            return Err(SniError::NotTls(hdr[0]));
        }
        if hdr[1] != 3 {
            return Err(SniError::Malformed("record version"));
        }
        let len = usize::from(u16::from_be_bytes([hdr[3], hdr[4]]));
        if len == 0 || len > 16 * 1024 + 2048 {
            return Err(SniError::Malformed("record length"));
        }
        let Some(frag) = buf.get(i + 5..i + 5 + len) else {
            return Ok(None);
        };
        hs.extend_from_slice(frag);
        i += 5 + len;
        if hs.len() >= 4 {
            if hs[0] != 1 {
                return Err(SniError::NotHello(hs[0]));
            }
            let want = (usize::from(hs[1]) << 16) | (usize::from(hs[2]) << 8) | usize::from(hs[3]);
            if want > MAX_HELLO {
                return Err(SniError::TooLong(want));
            }
            if hs.len() >= 4 + want {
                hs.truncate(4 + want);
                return Ok(Some(hs.split_off(4)));
            }
        }
        if hs.len() > MAX_HELLO + 4 {
            return Err(SniError::TooLong(hs.len()));
        }
    }
}

struct Rd<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], SniError> {
        let s = self
            .b
            .get(self.i..self.i + n)
            .ok_or(SniError::Malformed(what))?;
        self.i += n;
        Ok(s)
    }
    fn u8(&mut self, what: &'static str) -> Result<usize, SniError> {
        Ok(usize::from(self.take(1, what)?[0]))
    }
    fn u16(&mut self, what: &'static str) -> Result<usize, SniError> {
        let s = self.take(2, what)?;
        Ok(usize::from(u16::from_be_bytes([s[0], s[1]])))
    }
}

/// Parses as much of a client's first bytes as there is.
pub fn parse(buf: &[u8]) -> Result<Hello, SniError> {
    if let Some(first) = buf.first()
        && *first != 22
    {
        return Err(SniError::NotTls(*first));
    }
    let Some(body) = handshake_bytes(buf)? else {
        if buf.len() > MAX_HELLO + 4096 {
            return Err(SniError::TooLong(buf.len()));
        }
        return Ok(Hello::NeedMore);
    };
    let mut r = Rd { b: &body, i: 0 };
    r.take(2 + 32, "version and random")?;
    let sid = r.u8("session id")?;
    r.take(sid, "session id")?;
    let cs = r.u16("cipher suites")?;
    r.take(cs, "cipher suites")?;
    let comp = r.u8("compression")?;
    r.take(comp, "compression")?;
    if r.i == body.len() {
        return Ok(Hello::Done(None));
    }
    let ext_len = r.u16("extensions")?;
    let exts = r.take(ext_len, "extensions")?;
    let mut e = Rd { b: exts, i: 0 };
    while e.i < exts.len() {
        let ty = e.u16("extension type")?;
        let len = e.u16("extension length")?;
        let data = e.take(len, "extension data")?;
        if ty != 0 {
            continue;
        }
        let mut s = Rd { b: data, i: 0 };
        let list = s.u16("server name list")?;
        let list = s.take(list, "server name list")?;
        let mut l = Rd { b: list, i: 0 };
        while l.i < list.len() {
            let kind = l.u8("server name type")?;
            let n = l.u16("server name length")?;
            let name = l.take(n, "server name")?;
            if kind == 0 {
                let ok = !name.is_empty()
                    && name
                        .iter()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'));
                if !ok {
                    return Err(SniError::Malformed("server name characters"));
                }
                let s: String = name
                    .iter()
                    .map(|c| char::from(c.to_ascii_lowercase()))
                    .collect();
                return Ok(Hello::Done(Some(s.trim_end_matches('.').to_string())));
            }
        }
    }
    Ok(Hello::Done(None))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ClientHello carrying `sni`, as one record.
    pub fn hello(sni: &str) -> Vec<u8> {
        let mut ext = Vec::new();
        let name = sni.as_bytes();
        ext.extend_from_slice(&0u16.to_be_bytes());
        ext.extend_from_slice(&((name.len() + 5) as u16).to_be_bytes());
        ext.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
        ext.push(0);
        ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
        ext.extend_from_slice(name);
        // Padding extension so that the hello is big enough to split.
        ext.extend_from_slice(&21u16.to_be_bytes());
        ext.extend_from_slice(&300u16.to_be_bytes());
        ext.extend_from_slice(&[0; 300]);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0);
        body.extend_from_slice(&[0, 2, 0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1, 0];
        hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
        hs.extend_from_slice(&body);
        let mut rec = vec![22, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    /// The same hello split into two records at `at` bytes of handshake data.
    fn split_records(rec: &[u8], at: usize) -> Vec<u8> {
        let hs = &rec[5..];
        let mut out = Vec::new();
        for part in [&hs[..at], &hs[at..]] {
            out.extend_from_slice(&[22, 3, 1]);
            out.extend_from_slice(&(part.len() as u16).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    #[test]
    fn reads_sni_whole_split_and_streamed() {
        let h = hello("Web.Test");
        assert_eq!(parse(&h), Ok(Hello::Done(Some("web.test".into()))));
        let two = split_records(&h, 50);
        assert_eq!(parse(&two), Ok(Hello::Done(Some("web.test".into()))));
        for cut in 0..two.len() {
            assert_eq!(parse(&two[..cut]), Ok(Hello::NeedMore), "cut {cut}");
        }
    }

    /// A real ClientHello (Python's OpenSSL 3, TLS 1.3, key shares): also the fuzz seed.
    #[test]
    fn reads_a_real_openssl_hello_in_every_split() {
        let h = include_bytes!("../../fuzz/seeds/sni/hello");
        assert_eq!(parse(h), Ok(Hello::Done(Some("web.test".into()))));
        let two = split_records(h, 100);
        assert_eq!(parse(&two), Ok(Hello::Done(Some("web.test".into()))));
        for cut in 0..h.len() {
            assert_eq!(parse(&h[..cut]), Ok(Hello::NeedMore));
        }
    }

    #[test]
    fn refuses_non_tls_and_garbage() {
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n"),
            Err(SniError::NotTls(b'G'))
        ));
        assert!(matches!(
            parse(&[22, 3, 1, 0, 4, 2, 0, 0, 0]),
            Err(SniError::NotHello(2))
        ));
        assert!(matches!(
            parse(&[22, 3, 1, 0, 4, 1, 0xff, 0, 0]),
            Err(SniError::TooLong(_))
        ));
        let mut h = hello("a.b");
        let n = h.len();
        h[n - 310] = 0xff;
        let _ = parse(&h);
        for n in 0..64 {
            let junk: Vec<u8> = (0..n)
                .map(|i| if i == 0 { 22 } else { (i * 91 + 3) as u8 })
                .collect();
            let _ = parse(&junk);
        }
    }
}
