//! Connection handling: accept, attribute (sock_diag → cgroup → call), read what the
//! client asks for (bounded in size and time), decide (policy), answer a refusal the
//! client understands (HTTP 403 with a JSON reason, a TLS alert, an SSH disconnect, a
//! reset), or resolve + connect upstream and relay, then audit. Also the fake-IP DNS stub.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agentd_policy::{Dest, NetEffect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::http_connect::{self, ProxyRequest};
use super::{ConnRecord, SessionEgress, dns, netns, sni, socks5};

/// Time a client gets to send what it asks for (slowloris bound).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Upstream connect and resolution bounds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DNS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an upstream answer is reused. Short, and safe against rebinding: the address
/// check runs on every connection, on the address actually connected to.
pub const DNS_CACHE_TTL: Duration = Duration::from_secs(30);
const DNS_CACHE_MAX: usize = 4096;

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Http,
    Socks,
    Transparent(u16),
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Accepts forever; each connection runs in its own task, bounded by the session's slots.
pub async fn serve(eg: Arc<SessionEgress>, l: TcpListener, via: Via) {
    loop {
        let Ok((sock, peer)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = eg.slots.clone().try_acquire_owned() else {
            // Over the bound: refuse at once (a reset), never queue.
            reset_on_close(&sock);
            continue;
        };
        let eg = eg.clone();
        tokio::spawn(async move {
            handle(&eg, sock, peer, via).await;
            drop(permit);
        });
        // Let the new connection's task run first (it sits in this worker's next-task
        // slot): accepting again now would spend a system call that finds nothing on the
        // new connection's critical path.
        tokio::task::yield_now().await;
    }
}

/// SO_LINGER 0: closing sends a reset at once (a fast, unambiguous refusal). Never blocks:
/// a zero linger discards instead of waiting.
fn reset_on_close(sock: &TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a valid socket fd with a linger struct of the right size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const l).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Ends a refused connection so that the client reads the answer: half-close, then
/// discard what the client still sends (bounded in bytes and time). Closing with unread
/// input would make the kernel send a reset, which may overtake the answer.
async fn linger_close(sock: &mut TcpStream) {
    let _ = sock.shutdown().await;
    let mut sink = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    let mut left = 64 * 1024usize;
    while left > 0 {
        match tokio::time::timeout_at(deadline, sock.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => break,
        }
    }
}

/// State of one connection, filled as it goes; audited once at the end.
struct Conn {
    rec: ConnRecord,
    start: Instant,
    argv: Option<Vec<String>>,
}

impl Conn {
    fn deny(&mut self, rule: String) {
        self.rec.decision = "deny".into();
        self.rec.rule = rule;
    }
}

async fn handle(eg: &SessionEgress, mut sock: TcpStream, peer: SocketAddr, via: Via) {
    let _ = sock.set_nodelay(true);
    let local = sock.local_addr().ok();
    let call = match (peer, local) {
        (SocketAddr::V4(p), Some(SocketAddr::V4(l))) => eg.call_of(p, l),
        _ => None,
    };
    let argv = call.and_then(|n| eg.argv(n));
    if let Some(n) = call {
        *eg.call_active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(n)
            .or_default() += 1;
    }
    let mut c = Conn {
        rec: ConnRecord {
            session: eg.session.clone(),
            call,
            via: match via {
                Via::Http => "http-connect",
                Via::Socks => "socks5",
                Via::Transparent(_) => "transparent",
            }
            .into(),
            dest: String::new(),
            port: 0,
            upstream: None,
            decision: "deny".into(),
            rule: String::new(),
            bytes_up: 0,
            bytes_down: 0,
            started_at_ms: now_ms(),
            duration_ms: 0,
        },
        start: Instant::now(),
        argv,
    };
    let r = match via {
        Via::Http => http(eg, &mut sock, &mut c).await,
        Via::Socks => socks(eg, &mut sock, &mut c).await,
        Via::Transparent(port) => transparent(eg, &mut sock, &mut c, local, port).await,
    };
    match r {
        Some((up, pending)) => relay(sock, up, pending, eg, &mut c).await,
        // Other transparent ports were refused with a reset (SO_LINGER 0): nothing to read.
        None if c.rec.decision == "deny"
            && !matches!(via, Via::Transparent(p) if ![80, 443, 22].contains(&p)) =>
        {
            linger_close(&mut sock).await
        }
        None => {}
    }
    c.rec.duration_ms = c.start.elapsed().as_millis() as u64;
    if let Some(n) = c.rec.call {
        let mut m = eg.per_call.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.entry(n).or_default();
        e.0 += c.rec.bytes_up;
        e.1 += c.rec.bytes_down;
        e.2 += 1;
        drop(m);
        let mut a = eg.call_active.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = a.get_mut(&n) {
            *k = k.saturating_sub(1);
            if *k == 0 {
                a.remove(&n);
            }
        }
    }
    (eg.audit)(&c.rec);
}

/// Reads into `buf` until `done` says it has enough, within `HEAD_TIMEOUT` and `max` bytes.
async fn read_until<T, E>(
    sock: &mut TcpStream,
    buf: &mut Vec<u8>,
    max: usize,
    mut done: impl FnMut(&[u8]) -> Result<Option<T>, E>,
) -> Result<T, String>
where
    E: std::fmt::Display,
{
    let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
    loop {
        match done(buf) {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        if buf.len() >= max {
            return Err(format!("no complete request within {max} bytes"));
        }
        let mut chunk = [0u8; 4096];
        let room = (max - buf.len()).min(chunk.len());
        match tokio::time::timeout_at(deadline, sock.read(&mut chunk[..room])).await {
            Err(_) => {
                return Err(format!(
                    "the client sent no complete request within {}s",
                    HEAD_TIMEOUT.as_secs()
                ));
            }
            Ok(Ok(0)) => return Err("the client closed the connection".into()),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e.to_string()),
        }
    }
}

/// A destination written by the client: an IPv4 literal, an IPv6 literal (refused), or a
/// name.
fn dest_of(host: &str) -> Result<Dest<'_>, String> {
    if host.starts_with('[') || host.contains(':') {
        return Err(format!(
            "IPv6 destination {host} refused: sessions have IPv4 egress only"
        ));
    }
    Ok(match host.parse::<Ipv4Addr>() {
        Ok(a) => Dest::Addr(a),
        Err(_) => Dest::Name(host),
    })
}

/// Decides and, when allowed, resolves + connects. `Err` carries the refusal reason.
async fn decide_connect(
    eg: &SessionEgress,
    c: &mut Conn,
    host: &str,
    port: u16,
) -> Result<TcpStream, String> {
    c.rec.dest = host.to_string();
    c.rec.port = port;
    let dest = dest_of(host)?;
    let d = eg.plan.decide(dest, port, c.argv.as_deref());
    c.rec.rule = d.rule.clone();
    match d.effect {
        NetEffect::Allow => {}
        NetEffect::Deny => return Err(format!("agentd policy: {host}:{port} {d}")),
        NetEffect::Ask => {
            let why = ask(eg, c, host, port, &d.rule).await?;
            c.rec.rule = format!("{} — {why}", d.rule);
        }
    }
    let (s, to) = connect_upstream(eg, dest, host, port).await?;
    c.rec.upstream = Some(to.to_string());
    c.rec.decision = "allow".into();
    Ok(s)
}

/// Resolves (the daemon's DNS), checks the address against the policy's special ranges
/// and connects: the address checked is the address connected to (rebinding-safe).
async fn connect_upstream(
    eg: &SessionEgress,
    dest: Dest<'_>,
    host: &str,
    port: u16,
) -> Result<(TcpStream, SocketAddrV4), String> {
    let addrs = match dest {
        Dest::Addr(a) => vec![a],
        Dest::Name(n) => eg.resolve(n).await?,
    };
    let mut why = format!("{host} has no IPv4 address");
    for a in addrs {
        if let Err(e) = eg.plan.upstream_addr(a) {
            why = format!("agentd policy: {e}");
            continue;
        }
        let to = SocketAddrV4::new(a, port);
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok((s, to));
            }
            Ok(Err(e)) => why = format!("upstream {to}: {e}"),
            Err(_) => why = format!("upstream {to}: connect timed out"),
        }
    }
    Err(why)
}

/// Parks the connection on the approval queue: `Ok(why)` connects, `Err(why)` refuses.
async fn ask(
    eg: &SessionEgress,
    c: &Conn,
    host: &str,
    port: u16,
    rule: &str,
) -> Result<String, String> {
    (eg.asker)(super::AskFor {
        call: c.rec.call,
        host: host.to_string(),
        port,
        rule: rule.to_string(),
        via: c.rec.via.clone(),
    })
    .await
    .map_err(|e| format!("{e} (ask rule: {rule})"))
}

/// Checks a TLS ClientHello at the start of `buf` (if the client speaks TLS): its SNI must
/// be `name`. Reads more of the hello when needed.
async fn check_sni(sock: &mut TcpStream, buf: &mut Vec<u8>, name: &str) -> Result<(), String> {
    if buf.is_empty() {
        // Read the first flight (the hello) if the client sends one right away.
        let mut first = [0u8; 4096];
        match tokio::time::timeout(Duration::from_millis(500), sock.read(&mut first)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&first[..n]),
            // Server-speaks-first protocols (or a silent client): nothing to check.
            _ => return Ok(()),
        }
    }
    if buf.first() != Some(&22) {
        return Ok(());
    }
    let got = read_until(sock, buf, sni::MAX_HELLO + 4096, |b| match sni::parse(b) {
        Ok(sni::Hello::NeedMore) => Ok(None),
        Ok(sni::Hello::Done(s)) => Ok(Some(s)),
        Err(e) => Err(e),
    })
    .await?;
    match got {
        Some(s) if s == name => Ok(()),
        Some(s) => Err(format!(
            "agentd policy: TLS server name {s} does not match the destination {name}"
        )),
        None => Err(format!(
            "agentd policy: TLS ClientHello without a server name (destination {name})"
        )),
    }
}

async fn http(
    eg: &SessionEgress,
    sock: &mut TcpStream,
    c: &mut Conn,
) -> Option<(TcpStream, Vec<u8>)> {
    let mut buf = Vec::new();
    let req = read_until(
        sock,
        &mut buf,
        http_connect::MAX_HEAD,
        http_connect::parse_proxy_request,
    )
    .await;
    let (req, n) = match req {
        Ok(v) => v,
        Err(e) => {
            let status = if e.contains("over") || e.contains("within 16384") {
                "431 Request Header Fields Too Large"
            } else if e.contains("not supported") {
                "405 Method Not Allowed"
            } else {
                "400 Bad Request"
            };
            c.deny(format!("protocol error: {e}"));
            let _ = sock
                .write_all(&http_connect::error_response(status, &e))
                .await;
            return None;
        }
    };
    let rest = buf.split_off(n);
    let (host, port, forward) = match req {
        ProxyRequest::Connect { host, port } => (host, port, None),
        ProxyRequest::Forward { host, port, head } => {
            c.rec.via = "http-forward".into();
            (host, port, Some(head))
        }
    };
    let up = match decide_connect(eg, c, &host, port).await {
        Ok(up) => up,
        Err(e) => {
            c.deny(e.clone());
            let _ = sock
                .write_all(&http_connect::error_response("403 Forbidden", &e))
                .await;
            return None;
        }
    };
    match forward {
        Some(mut head) => {
            head.extend_from_slice(&rest);
            Some((up, head))
        }
        None => {
            let ok = b"HTTP/1.1 200 Connection established\r\n\r\n";
            tunnel_open(sock, c, ok, &host, rest).await.map(|r| (up, r))
        }
    }
}

/// SNI check for a tunnel to a name (an address literal has no name to match).
async fn name_check(sock: &mut TcpStream, buf: &mut Vec<u8>, host: &str) -> Result<(), String> {
    if host.parse::<Ipv4Addr>().is_ok() {
        return Ok(());
    }
    check_sni(sock, buf, host).await
}

async fn socks(
    eg: &SessionEgress,
    sock: &mut TcpStream,
    c: &mut Conn,
) -> Option<(TcpStream, Vec<u8>)> {
    let mut buf = Vec::new();
    let n = match read_until(sock, &mut buf, 258, socks5::parse_greeting).await {
        Ok(n) => n,
        Err(e) => {
            c.deny(format!("protocol error: {e}"));
            let _ = sock.write_all(&socks5::greeting_reply(false)).await;
            return None;
        }
    };
    buf.drain(..n);
    if sock.write_all(&socks5::greeting_reply(true)).await.is_err() {
        return None;
    }
    let mut code = socks5::REP_FAILURE;
    let got = read_until(sock, &mut buf, 262, |b| {
        socks5::parse_request(b).inspect_err(|e| code = e.reply_code())
    })
    .await;
    let (target, n) = match got {
        Ok(v) => v,
        Err(e) => {
            c.deny(format!("protocol error: {e}"));
            let _ = sock.write_all(&socks5::reply(code)).await;
            return None;
        }
    };
    let rest = buf.split_off(n);
    let (host, port) = match target {
        socks5::SocksTarget::Name(h, p) => (h, p),
        socks5::SocksTarget::V4(a, p) => (a.to_string(), p),
        socks5::SocksTarget::V6(a, p) => (format!("[{a}]"), p),
    };
    let up = match decide_connect(eg, c, &host, port).await {
        Ok(up) => up,
        Err(e) => {
            let rep = if e.starts_with("agentd policy") || e.starts_with("IPv6") {
                socks5::REP_NOT_ALLOWED
            } else {
                socks5::REP_HOST_UNREACHABLE
            };
            c.deny(e);
            let _ = sock.write_all(&socks5::reply(rep)).await;
            return None;
        }
    };
    let ok = socks5::reply(socks5::REP_OK);
    tunnel_open(sock, c, &ok, &host, rest)
        .await
        .map(|r| (up, r))
}

/// Confirms a tunnel to the client (`ok`: the protocol's success reply), then checks the
/// TLS name the client sends against `host`; a mismatch is denied with a TLS alert.
/// Returns the client's bytes read so far (to be relayed upstream).
async fn tunnel_open(
    sock: &mut TcpStream,
    c: &mut Conn,
    ok: &[u8],
    host: &str,
    mut rest: Vec<u8>,
) -> Option<Vec<u8>> {
    sock.write_all(ok).await.ok()?;
    if let Err(e) = name_check(sock, &mut rest, host).await {
        c.deny(e);
        let _ = sock.write_all(&sni::ALERT_ACCESS_DENIED).await;
        return None;
    }
    Some(rest)
}

/// An SSH version line and an unencrypted SSH_MSG_DISCONNECT (reason 1, host not allowed
/// to connect) carrying `why`: what an ssh client prints.
fn ssh_disconnect(why: &str) -> Vec<u8> {
    let mut payload = vec![1u8];
    payload.extend_from_slice(&1u32.to_be_bytes());
    let why = &why.as_bytes()[..why.len().min(1000)];
    payload.extend_from_slice(&(why.len() as u32).to_be_bytes());
    payload.extend_from_slice(why);
    payload.extend_from_slice(&0u32.to_be_bytes());
    // packet_length(4) + padding_length(1) + payload + padding: a multiple of 8, padding ≥ 4.
    let mut pad = 8 - (5 + payload.len()) % 8;
    if pad < 4 {
        pad += 8;
    }
    let mut out = b"SSH-2.0-agentd-egress\r\n".to_vec();
    out.extend_from_slice(&((1 + payload.len() + pad) as u32).to_be_bytes());
    out.push(pad as u8);
    out.extend_from_slice(&payload);
    out.extend(std::iter::repeat_n(0u8, pad));
    out
}

async fn refuse(sock: &mut TcpStream, port: u16, why: &str) {
    match port {
        80 => {
            let _ = sock
                .write_all(&http_connect::error_response("403 Forbidden", why))
                .await;
        }
        443 => {
            let _ = sock.write_all(&sni::ALERT_ACCESS_DENIED).await;
        }
        22 => {
            let _ = sock.write_all(&ssh_disconnect(why)).await;
        }
        // Anything else: a reset, at once.
        _ => {
            reset_on_close(sock);
        }
    }
}

async fn transparent(
    eg: &SessionEgress,
    sock: &mut TcpStream,
    c: &mut Conn,
    local: Option<SocketAddr>,
    port: u16,
) -> Option<(TcpStream, Vec<u8>)> {
    c.rec.port = port;
    let name = match local {
        Some(SocketAddr::V4(l)) => eg.fake_lock().name_of(*l.ip()).map(str::to_string),
        _ => None,
    };
    let Some(name) = name else {
        let what = local.map_or("?".to_string(), |l| l.ip().to_string());
        c.rec.dest = what.clone();
        c.deny(format!(
            "agentd policy: {what} is not an address the session's DNS handed out (IP literals are refused)"
        ));
        refuse(sock, port, &c.rec.rule).await;
        return None;
    };
    c.rec.dest = name.clone();
    // Decide before reading: a denied call gets its refusal without sending anything.
    let d = eg.plan.decide(Dest::Name(&name), port, c.argv.as_deref());
    c.rec.rule = d.rule.clone();
    match d.effect {
        NetEffect::Allow => {}
        NetEffect::Deny => {
            let why = format!("agentd policy: {name}:{port} {d}");
            c.deny(why.clone());
            refuse(sock, port, &why).await;
            return None;
        }
        // Parked here, before anything is read: the client waits for the answer.
        NetEffect::Ask => match ask(eg, c, &name, port, &d.rule).await {
            Ok(why) => c.rec.rule = format!("{} — {why}", d.rule),
            Err(why) => {
                c.deny(why.clone());
                refuse(sock, port, &why).await;
                return None;
            }
        },
    }
    // Allowed: check what the client sends (TLS SNI, HTTP Host) while the upstream
    // connection is made, so that the client's first bytes and the upstream handshake
    // overlap instead of adding up (the connect latency the benchmark measures). A failed
    // check drops the upstream connection unused; either failure refuses at once.
    let mut buf = Vec::new();
    let check = async {
        first_flight_matches(sock, &mut buf, port, &name)
            .await
            .map_err(|e| (true, e))
    };
    let connect = async {
        connect_upstream(eg, Dest::Name(&name), &name, port)
            .await
            .map_err(|e| (false, e))
    };
    match tokio::try_join!(check, connect) {
        Ok(((), (up, to))) => {
            c.rec.upstream = Some(to.to_string());
            c.rec.decision = "allow".into();
            Some((up, buf))
        }
        Err((_, e)) => {
            c.deny(e.clone());
            refuse(sock, port, &e).await;
            None
        }
    }
}

/// What a transparent client sends first must match the name its address stands for:
/// the `Host` of a plain-http request on port 80, the SNI of a TLS ClientHello elsewhere
/// (`check_sni`; other protocols pass). What was read is left in `buf`, to be relayed.
async fn first_flight_matches(
    sock: &mut TcpStream,
    buf: &mut Vec<u8>,
    port: u16,
    name: &str,
) -> Result<(), String> {
    if port != 80 {
        return check_sni(sock, buf, name).await;
    }
    match read_until(sock, buf, http_connect::MAX_HEAD, http_connect::origin_host).await {
        Ok(Some(h)) if h == name => Ok(()),
        Ok(Some(h)) => Err(format!(
            "agentd policy: HTTP Host {h} does not match the destination {name}"
        )),
        Ok(None) => Err(format!(
            "agentd policy: HTTP request without Host (destination {name})"
        )),
        Err(e) => Err(format!("protocol error: {e}")),
    }
}

async fn relay(
    client: TcpStream,
    mut up: TcpStream,
    pending: Vec<u8>,
    eg: &SessionEgress,
    c: &mut Conn,
) {
    if !pending.is_empty() {
        if up.write_all(&pending).await.is_err() {
            return;
        }
        c.rec.bytes_up += pending.len() as u64;
    }
    drop(pending);
    let idle = Duration::from_secs(eg.plan.idle_timeout_s);
    let o = super::relay::relay(&client, &up, idle, Some(&eg.pipes)).await;
    c.rec.bytes_up += o.up;
    c.rec.bytes_down += o.down;
    if o.end == super::relay::End::Idle {
        // The audit row says why the connection ended early.
        c.rec.rule = format!(
            "{} — closed after {}s idle (network.idle_timeout)",
            c.rec.rule, eg.plan.idle_timeout_s
        );
    }
}

impl SessionEgress {
    pub(crate) fn fake_lock(&self) -> std::sync::MutexGuard<'_, super::fake::FakeMap> {
        self.fake.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The argv of call `n` (cached).
    fn argv(&self, n: u64) -> Option<Vec<String>> {
        if let Some(v) = self
            .argv_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&n)
        {
            return Some(v.clone());
        }
        let v = (self.argv_of)(n)?;
        self.argv_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(n, v.clone());
        Some(v)
    }

    /// The call whose cgroup created the client socket `peer` → `local` (sock_diag).
    pub(crate) fn call_of(&self, peer: SocketAddrV4, local: SocketAddrV4) -> Option<u64> {
        let id = {
            let fd = self.diag.lock().unwrap_or_else(|p| p.into_inner());
            netns::diag_cgroup(&fd, peer, local)?
        };
        if let Some(hit) = self
            .cg_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            return *hit;
        }
        use std::os::unix::fs::MetadataExt;
        let found = std::fs::read_dir(&self.calls_dir)
            .ok()?
            .flatten()
            .find_map(|e| {
                let n = cgctl::tree::parse_call_dir(e.file_name().to_str()?)?;
                (e.metadata().ok()?.ino() == id).then_some(n)
            });
        // A miss is cached too: the socket's cgroup exists now, so if it is not a call's
        // directory it never becomes one (kernfs ids are not reused), and the agent's own
        // connections then cost no directory scan each.
        self.cg_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, found);
        found
    }

    /// Resolves `name` through the daemon's upstream DNS server (A records only).
    pub(crate) async fn resolve(&self, name: &str) -> Result<Vec<Ipv4Addr>, String> {
        let hit = self
            .dns_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .filter(|(_, t)| t.elapsed() < DNS_CACHE_TTL)
            .map(|(v, _)| v.clone());
        if let Some(v) = hit {
            return Ok(v);
        }
        let v = self.resolve_upstream(name).await?;
        let mut c = self.dns_cache.lock().unwrap_or_else(|p| p.into_inner());
        if c.len() >= DNS_CACHE_MAX {
            c.clear();
        }
        c.insert(name.to_string(), (v.clone(), Instant::now()));
        Ok(v)
    }

    async fn resolve_upstream(&self, name: &str) -> Result<Vec<Ipv4Addr>, String> {
        let bind: SocketAddr = if self.cfg.upstream_dns.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()
        .map_err(|e| format!("{e}"))?;
        let s = UdpSocket::bind(bind)
            .await
            .map_err(|e| format!("resolve {name}: {e}"))?;
        s.connect(self.cfg.upstream_dns)
            .await
            .map_err(|e| format!("resolve {name}: {e}"))?;
        let mut idb = [0u8; 2];
        // SAFETY: getrandom writes at most 2 bytes into idb.
        unsafe { libc::getrandom(idb.as_mut_ptr().cast(), 2, 0) };
        let id = u16::from_ne_bytes(idb);
        let q = dns::build_query(id, name);
        let mut buf = [0u8; 1500];
        for _ in 0..2 {
            s.send(&q)
                .await
                .map_err(|e| format!("resolve {name}: {e}"))?;
            match tokio::time::timeout(DNS_TIMEOUT / 2, s.recv(&mut buf)).await {
                Ok(Ok(n)) => match dns::parse_a_records(&buf[..n], id) {
                    Ok(v) if v.is_empty() => return Err(format!("{name}: no such name upstream")),
                    Ok(v) => return Ok(v),
                    Err(dns::DnsError::Id { .. }) => continue,
                    Err(e) => return Err(format!("resolve {name}: {e}")),
                },
                Ok(Err(e)) => return Err(format!("resolve {name}: {e}")),
                Err(_) => continue,
            }
        }
        Err(format!(
            "resolve {name}: upstream DNS {} did not answer",
            self.cfg.upstream_dns
        ))
    }
}

/// The fake-IP DNS stub: A → a fake address for a resolvable name, NOERROR/empty for
/// other types of such a name (AAAA, HTTPS, SVCB: clients use IPv4), NXDOMAIN otherwise.
pub async fn serve_dns(eg: Arc<SessionEgress>, s: UdpSocket) {
    let mut buf = [0u8; 1500];
    loop {
        let Ok((n, from)) = s.recv_from(&mut buf).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(q) = dns::parse_query(&buf[..n]) else {
            continue;
        };
        let a = if q.qclass != dns::CLASS_IN || !eg.plan.resolvable(&q.name) {
            dns::Answer::NxDomain
        } else if q.qtype == dns::TYPE_A {
            match eg.fake_lock().addr_for(&q.name) {
                Some(a) => dns::Answer::A(a),
                None => dns::Answer::ServFail,
            }
        } else {
            dns::Answer::Empty
        };
        let _ = s.send_to(&dns::answer(&q, a), from).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_disconnect_is_a_valid_packet() {
        let p = ssh_disconnect("agentd policy: no rule allows git.test:22");
        let body = &p[b"SSH-2.0-agentd-egress\r\n".len()..];
        let len = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) as usize;
        assert_eq!(body.len(), 4 + len);
        assert_eq!(body.len() % 8, 0);
        assert!(body[4] >= 4);
        assert_eq!(body[5], 1);
    }

    #[test]
    fn dest_refuses_ipv6() {
        assert!(dest_of("[::1]").is_err());
        assert_eq!(
            dest_of("10.0.0.1"),
            Ok(Dest::Addr(Ipv4Addr::new(10, 0, 0, 1)))
        );
        assert_eq!(dest_of("a.test"), Ok(Dest::Name("a.test")));
    }
}
