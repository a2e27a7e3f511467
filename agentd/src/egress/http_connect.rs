//! HTTP proxy requests: `CONNECT host:port` and absolute-form requests
//! (`GET http://host/path`) on the explicit proxy port, and the `Host` of an origin-form
//! request on the transparent port 80. Parsing is httparse with a bounded head
//! (`MAX_HEAD`, `MAX_HEADERS`); anything else is a protocol error answered with a 4xx.
//! Fuzzed: target `connect`.

/// The largest request head read before answering 431.
pub const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("http: malformed request head: {0}")]
    Malformed(String),
    #[error("http: request head over {MAX_HEAD} bytes")]
    TooLarge,
    #[error("http: bad target `{0}` (want host:port, or http://host[:port]/path)")]
    Target(String),
    #[error("http: {0} is not supported by the proxy (use CONNECT, or plain http:// URLs)")]
    Method(String),
}

impl HttpError {
    /// The status line this error is answered with.
    pub fn status(&self) -> &'static str {
        match self {
            HttpError::TooLarge => "431 Request Header Fields Too Large",
            HttpError::Method(_) => "405 Method Not Allowed",
            _ => "400 Bad Request",
        }
    }
}

/// What a proxy client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyRequest {
    /// `CONNECT host:port`: a tunnel.
    Connect { host: String, port: u16 },
    /// A plain-http request; `head` is rewritten to origin form (`GET /path`), without
    /// `Proxy-*` headers, with `Connection: close`, to send upstream as is.
    Forward {
        host: String,
        port: u16,
        head: Vec<u8>,
    },
}

/// Splits `host[:port]` (lower-cased host; `[v6]` brackets kept so that the caller can
/// refuse it by name).
pub fn split_authority(s: &str, default_port: u16) -> Result<(String, u16), HttpError> {
    let bad = || HttpError::Target(s.chars().take(200).collect());
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, tail) = rest.split_once(']').ok_or_else(bad)?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if tail.is_empty() => default_port,
            None => return Err(bad()),
        };
        (format!("[{h}]"), port)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad())?),
            None => (s.to_string(), default_port),
        }
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() || port == 0 || host.len() > 253 {
        return Err(bad());
    }
    Ok((host, port))
}

fn parse_head<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
) -> Result<Option<(httparse::Request<'h, 'b>, usize)>, HttpError> {
    let mut req = httparse::Request::new(headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => Ok(Some((req, n))),
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => Err(HttpError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HttpError::TooLarge),
        Err(e) => Err(HttpError::Malformed(e.to_string())),
    }
}

/// Parses a proxy request from the bytes read so far (`None`: need more). Returns the
/// request and the length of its head (bytes after it belong to the tunnel or body).
pub fn parse_proxy_request(buf: &[u8]) -> Result<Option<(ProxyRequest, usize)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let Some((req, n)) = parse_head(buf, &mut headers)? else {
        return Ok(None);
    };
    if n > MAX_HEAD {
        return Err(HttpError::TooLarge);
    }
    let method = req.method.unwrap_or("");
    let target = req.path.unwrap_or("");
    if method.eq_ignore_ascii_case("CONNECT") {
        let (host, port) = split_authority(target, 443)?;
        return Ok(Some((ProxyRequest::Connect { host, port }, n)));
    }
    let Some(rest) = target.strip_prefix("http://") else {
        return Err(if target.starts_with('/') {
            HttpError::Target(target.chars().take(200).collect())
        } else {
            HttpError::Method(format!(
                "{method} {}",
                target.chars().take(100).collect::<String>()
            ))
        });
    };
    let (auth, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    // No userinfo: `http://user@host` is refused rather than guessed at.
    if auth.contains('@') {
        return Err(HttpError::Target(auth.chars().take(200).collect()));
    }
    let (host, port) = split_authority(auth, 80)?;
    let mut head = format!("{method} {path} HTTP/1.1\r\n").into_bytes();
    let mut has_host = false;
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        if name.starts_with("proxy-") || name == "connection" || name == "keep-alive" {
            continue;
        }
        has_host |= name == "host";
        head.extend_from_slice(h.name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(h.value);
        head.extend_from_slice(b"\r\n");
    }
    if !has_host {
        head.extend_from_slice(format!("Host: {auth}\r\n").as_bytes());
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    Ok(Some((ProxyRequest::Forward { host, port, head }, n)))
}

/// The `Host` of an origin-form request (transparent port 80): `Ok(None)` = need more.
pub fn origin_host(buf: &[u8]) -> Result<Option<Option<String>>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let Some((req, _)) = parse_head(buf, &mut headers)? else {
        return Ok(None);
    };
    let host = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .and_then(|v| split_authority(v.trim(), 80).ok())
        .map(|(h, _)| h);
    Ok(Some(host))
}

/// A complete HTTP error answer with a JSON body (the reason names the rule).
pub fn error_response(status: &str, reason: &str) -> Vec<u8> {
    let body = serde_json::json!({ "error": reason, "by": "agentd egress proxy" }).to_string();
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nX-Agentd-Egress: denied\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_and_forward() {
        let r =
            parse_proxy_request(b"CONNECT Web.Test:443 HTTP/1.1\r\nHost: web.test:443\r\n\r\nxx")
                .unwrap();
        assert_eq!(
            r,
            Some((
                ProxyRequest::Connect {
                    host: "web.test".into(),
                    port: 443
                },
                53
            ))
        );
        let r = parse_proxy_request(b"GET http://web.test:8080/a?b HTTP/1.1\r\nHost: web.test:8080\r\nProxy-Connection: keep-alive\r\n\r\n").unwrap();
        let Some((ProxyRequest::Forward { host, port, head }, _)) = r else {
            panic!("{r:?}")
        };
        assert_eq!((host.as_str(), port), ("web.test", 8080));
        let head = String::from_utf8(head).unwrap();
        assert!(
            head.starts_with("GET /a?b HTTP/1.1\r\nHost: web.test:8080\r\n"),
            "{head}"
        );
        assert!(!head.contains("Proxy-"), "{head}");
        assert!(head.ends_with("Connection: close\r\n\r\n"), "{head}");
        assert_eq!(
            parse_proxy_request(b"CONNECT web.test:443 HTTP/1.1\r\n").unwrap(),
            None
        );
    }

    #[test]
    fn bad_requests_are_errors() {
        for bad in [
            &b"CONNECT web.test:x HTTP/1.1\r\n\r\n"[..],
            b"CONNECT :443 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01\x00\x05hello",
            b"GET http://u@h/ HTTP/1.1\r\n\r\n",
            b"BREW ftp://x HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                parse_proxy_request(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let big = format!("CONNECT a:1 HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(
            parse_proxy_request(big.as_bytes()),
            Err(HttpError::TooLarge)
        );
        let many: String = (0..100).map(|i| format!("X{i}: y\r\n")).collect();
        let req = format!("CONNECT a:1 HTTP/1.1\r\n{many}\r\n");
        assert_eq!(
            parse_proxy_request(req.as_bytes()),
            Err(HttpError::TooLarge)
        );
        assert_eq!(
            split_authority("[::1]:443", 80).unwrap(),
            ("[::1]".into(), 443)
        );
    }

    #[test]
    fn origin_host_reads_host() {
        assert_eq!(
            origin_host(b"GET / HTTP/1.1\r\nHost: Web.Test\r\n\r\n").unwrap(),
            Some(Some("web.test".into()))
        );
        assert_eq!(origin_host(b"GET / HTTP/1.1\r\n\r\n").unwrap(), Some(None));
        assert_eq!(origin_host(b"GET / HT").unwrap(), None);
        let r = String::from_utf8(error_response("403 Forbidden", "no rule")).unwrap();
        assert!(
            r.starts_with("HTTP/1.1 403 Forbidden\r\n")
                && r.ends_with("\"by\":\"agentd egress proxy\",\"error\":\"no rule\"}")
                || r.contains("\"error\":\"no rule\""),
            "{r}"
        );
    }
}
