//! The kernel side of a session's egress, done from a dedicated thread that joins the
//! session's network namespace (`setns`; a thread may switch network namespaces even in a
//! multi-threaded process) and ends there, so the daemon's other threads never change
//! namespace. In that namespace it:
//! - adds a `local` route for the fake-IP range on `lo` (netlink `RTM_NEWROUTE`), so a
//!   connection to any fake address is delivered to the daemon's wildcard listeners;
//! - binds the listeners: the explicit proxy (HTTP CONNECT, SOCKS5) on 127.0.0.1, the
//!   transparent ports on 0.0.0.0, the DNS stub on 127.0.0.1:53 (UDP). All ports are below
//!   1024, which the agent (no capabilities) can never bind first;
//! - opens a NETLINK_SOCK_DIAG socket, used later to learn the cgroup of the process that
//!   created a client's socket (`INET_DIAG_CGROUP_ID`).
//!
//! The sockets belong to the daemon: nothing inside the sandbox can close or replace them,
//! and when the daemon dies they close, so egress stops with it.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::EgressError;

/// The fake-IP range (benchmark range, RFC 2544): never a real upstream.
pub const FAKE_NET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
pub const FAKE_PREFIX: u8 = 15;
/// The explicit proxy ports on 127.0.0.1 inside the session.
pub const HTTP_PROXY_PORT: u16 = 880;
pub const SOCKS_PORT: u16 = 881;
pub const DNS_PORT: u16 = 53;

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h; not in the libc crate).
pub const SOCK_DIAG_BY_FAMILY: u16 = 20;

/// The TCP state LISTEN (include/net/tcp_states.h).
const TCP_LISTEN: u32 = 10;

/// What the thread hands back.
#[derive(Debug)]
pub struct Sockets {
    pub http: TcpListener,
    pub socks: TcpListener,
    pub transparent: Vec<(u16, TcpListener)>,
    pub dns: UdpSocket,
    pub diag: OwnedFd,
}

fn os(what: &str) -> impl FnOnce(std::io::Error) -> EgressError + '_ {
    move |e| EgressError::Netns {
        what: what.to_string(),
        source: e,
    }
}

fn last(what: &str) -> EgressError {
    EgressError::Netns {
        what: what.to_string(),
        source: std::io::Error::last_os_error(),
    }
}

/// Opens every socket inside the network namespace of `pid` (see the module doc).
pub fn open(pid: i32, transparent_ports: &[u16]) -> Result<Sockets, EgressError> {
    let ports = transparent_ports.to_vec();
    std::thread::Builder::new()
        .name(format!("egress-netns-{pid}"))
        .spawn(move || in_thread(pid, &ports))
        .map_err(os("spawn the netns thread"))?
        .join()
        .map_err(|_| EgressError::Netns {
            what: "the netns thread".into(),
            source: std::io::Error::other("panicked"),
        })?
}

fn in_thread(pid: i32, ports: &[u16]) -> Result<Sockets, EgressError> {
    let path = format!("/proc/{pid}/ns/net");
    let ns = std::fs::File::open(&path).map_err(os(&path))?;
    // SAFETY: setns on a valid namespace fd; affects only this thread, which ends after.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(last("setns into the session's network namespace"));
    }
    add_local_route()?;
    let lo = |port| SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let http = TcpListener::bind(lo(HTTP_PROXY_PORT)).map_err(os("bind the HTTP proxy"))?;
    let socks = TcpListener::bind(lo(SOCKS_PORT)).map_err(os("bind the SOCKS5 proxy"))?;
    let mut transparent = Vec::new();
    for p in ports {
        let l = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, *p))
            .map_err(os("bind a transparent port"))?;
        transparent.push((*p, l));
    }
    let dns = UdpSocket::bind(lo(DNS_PORT)).map_err(os("bind the DNS stub"))?;
    for l in [&http, &socks] {
        l.set_nonblocking(true).map_err(os("nonblocking"))?;
    }
    for (_, l) in &transparent {
        l.set_nonblocking(true).map_err(os("nonblocking"))?;
    }
    dns.set_nonblocking(true).map_err(os("nonblocking"))?;
    let diag = diag_socket()?;
    probe_diag(&diag)?;
    Ok(Sockets {
        http,
        socks,
        transparent,
        dns,
        diag,
    })
}

fn netlink(proto: libc::c_int) -> Result<OwnedFd, EgressError> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(last("netlink socket"));
    }
    // SAFETY: fd is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: setsockopt with a valid timeval of the right size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(last("SO_RCVTIMEO on netlink"));
    }
    Ok(fd)
}

fn diag_socket() -> Result<OwnedFd, EgressError> {
    netlink(libc::NETLINK_SOCK_DIAG)
}

/// Fails unless sock_diag answers for TCP here (the inet_diag and tcp_diag modules, which
/// a kernel normally autoloads): without it no connection could be attributed to its call.
/// Dumps the listening TCP sockets (ours) and reads to NLMSG_DONE.
fn probe_diag(fd: &OwnedFd) -> Result<(), EgressError> {
    let mut p = vec![libc::AF_INET as u8, libc::IPPROTO_TCP as u8, 0, 0];
    p.extend_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    p.extend_from_slice(&[0u8; 48]);
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    let msg = nlmsg(SOCK_DIAG_BY_FAMILY, flags, &p);
    let fail = |why: String| {
        EgressError::Netns {
        what: "sock_diag (attribution of connections to calls; needs the inet_diag and tcp_diag modules)".into(),
        source: std::io::Error::other(why),
    }
    };
    let mut buf = vec![0u8; 16 * 1024];
    let mut n = roundtrip(fd, &msg, &mut buf).map_err(|e| fail(e.to_string()))?;
    for _ in 0..64 {
        let mut i = 0;
        while i + 16 <= n {
            let len = u32::from_ne_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]) as usize;
            let ty = u16::from_ne_bytes([buf[i + 4], buf[i + 5]]);
            if ty == libc::NLMSG_DONE as u16 {
                return Ok(());
            }
            if ty == libc::NLMSG_ERROR as u16 {
                let e = buf
                    .get(i + 16..i + 20)
                    .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                return Err(fail(std::io::Error::from_raw_os_error(-e).to_string()));
            }
            if len < 16 {
                break;
            }
            i += (len + 3) & !3;
        }
        // SAFETY: recv into a valid, writable buffer.
        let r = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if r <= 0 {
            return Err(fail(std::io::Error::last_os_error().to_string()));
        }
        n = r as usize;
    }
    Err(fail("no end of the dump".into()))
}

/// Sends one netlink request and returns the answer's bytes.
pub fn roundtrip(fd: &OwnedFd, msg: &[u8], buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: send from a valid slice.
    let n = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: recv into a valid, writable slice.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn nlmsg(ty: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + payload.len());
    m.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(payload);
    m
}

/// The `RTM_NEWROUTE` message for `local FAKE_NET/FAKE_PREFIX dev <ifindex>` (pure: tested).
pub fn local_route_msg(ifindex: u32) -> Vec<u8> {
    let mut p = vec![
        libc::AF_INET as u8,
        FAKE_PREFIX,
        0,
        0,
        libc::RT_TABLE_LOCAL,
        libc::RTPROT_STATIC,
        libc::RT_SCOPE_HOST,
        libc::RTN_LOCAL,
    ];
    p.extend_from_slice(&0u32.to_ne_bytes());
    p.extend_from_slice(&8u16.to_ne_bytes());
    p.extend_from_slice(&libc::RTA_DST.to_ne_bytes());
    p.extend_from_slice(&FAKE_NET.octets());
    p.extend_from_slice(&8u16.to_ne_bytes());
    p.extend_from_slice(&libc::RTA_OIF.to_ne_bytes());
    p.extend_from_slice(&ifindex.to_ne_bytes());
    let flags =
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
    nlmsg(libc::RTM_NEWROUTE, flags, &p)
}

fn add_local_route() -> Result<(), EgressError> {
    // SAFETY: a NUL-terminated name.
    let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    if lo == 0 {
        return Err(last("if_nametoindex(lo)"));
    }
    let fd = netlink(libc::NETLINK_ROUTE)?;
    let mut buf = [0u8; 512];
    let n = roundtrip(&fd, &local_route_msg(lo), &mut buf).map_err(os("RTM_NEWROUTE"))?;
    // The ack: nlmsghdr (type NLMSG_ERROR) + errno (0 = success, negative = error).
    let ty = buf.get(4..6).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    let err = buf
        .get(16..20)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    match (n >= 20, ty, err) {
        (true, Some(t), Some(0)) if t == libc::NLMSG_ERROR as u16 => Ok(()),
        // A daemon restarting re-adopts the session: the route is already there.
        (true, Some(t), Some(e)) if t == libc::NLMSG_ERROR as u16 && -e == libc::EEXIST => Ok(()),
        (true, Some(_), Some(e)) => Err(EgressError::Netns {
            what: format!("route local {FAKE_NET}/{FAKE_PREFIX} dev lo"),
            source: std::io::Error::from_raw_os_error(-e),
        }),
        _ => Err(EgressError::Netns {
            what: "RTM_NEWROUTE".into(),
            source: std::io::Error::other("short netlink answer"),
        }),
    }
}

/// The `SOCK_DIAG_BY_FAMILY` request for the TCP socket whose local end is `client` and
/// whose remote end is `server` (pure: tested).
pub fn diag_request(client: SocketAddrV4, server: SocketAddrV4) -> Vec<u8> {
    let mut p = vec![libc::AF_INET as u8, libc::IPPROTO_TCP as u8, 0, 0];
    p.extend_from_slice(&u32::MAX.to_ne_bytes());
    p.extend_from_slice(&client.port().to_be_bytes());
    p.extend_from_slice(&server.port().to_be_bytes());
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&client.ip().octets());
    p.extend_from_slice(&addr);
    addr[..4].copy_from_slice(&server.ip().octets());
    p.extend_from_slice(&addr);
    p.extend_from_slice(&0u32.to_ne_bytes());
    p.extend_from_slice(&u32::MAX.to_ne_bytes());
    p.extend_from_slice(&u32::MAX.to_ne_bytes());
    nlmsg(SOCK_DIAG_BY_FAMILY, libc::NLM_F_REQUEST as u16, &p)
}

/// Asks sock_diag for the cgroup of the TCP socket `client` → `server` (see
/// [`diag_request`]). The one socket is shared (the caller holds its lock): an answer a
/// previous lookup gave up on (`SO_RCVTIMEO`) may still be queued, so the queue is drained
/// first and an answer is taken only if it is for this 4-tuple's ports — a stale answer
/// would attribute the connection to another call.
pub fn diag_cgroup(fd: &OwnedFd, client: SocketAddrV4, server: SocketAddrV4) -> Option<u64> {
    let mut buf = [0u8; 1024];
    loop {
        // SAFETY: recv into a valid, writable buffer; MSG_DONTWAIT never blocks.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n <= 0 {
            break;
        }
    }
    let mut n = roundtrip(fd, &diag_request(client, server), &mut buf).ok()?;
    for _ in 0..4 {
        if let Some(id) = parse_diag_cgroup(buf.get(..n)?, client.port(), server.port()) {
            return Some(id);
        }
        // Not ours (or an error): the answer may be queued behind it.
        // SAFETY: recv into a valid, writable buffer; MSG_DONTWAIT never blocks.
        let r = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if r <= 0 {
            return None;
        }
        n = r as usize;
    }
    None
}

/// `INET_DIAG_CGROUP_ID` from a sock_diag answer for the socket whose local port is
/// `sport` and remote port `dport` (`None` when absent, an error, or another socket's).
pub fn parse_diag_cgroup(b: &[u8], sport: u16, dport: u16) -> Option<u64> {
    const INET_DIAG_CGROUP_ID: u16 = 21;
    let len = u32::from_ne_bytes(b.get(0..4)?.try_into().ok()?) as usize;
    let ty = u16::from_ne_bytes(b.get(4..6)?.try_into().ok()?);
    if ty != SOCK_DIAG_BY_FAMILY {
        return None;
    }
    // inet_diag_msg: family, state, timer, retrans, then idiag_sport, idiag_dport (BE).
    let got_sport = u16::from_be_bytes(b.get(20..22)?.try_into().ok()?);
    let got_dport = u16::from_be_bytes(b.get(22..24)?.try_into().ok()?);
    if (got_sport, got_dport) != (sport, dport) {
        return None;
    }
    // nlmsghdr (16) + inet_diag_msg (72), then 4-byte aligned attributes.
    let mut i = 16 + 72;
    let end = len.min(b.len());
    while i + 4 <= end {
        let alen = usize::from(u16::from_ne_bytes(b.get(i..i + 2)?.try_into().ok()?));
        let aty = u16::from_ne_bytes(b.get(i + 2..i + 4)?.try_into().ok()?);
        if alen < 4 {
            return None;
        }
        if aty == INET_DIAG_CGROUP_ID && alen >= 12 {
            return Some(u64::from_ne_bytes(b.get(i + 4..i + 12)?.try_into().ok()?));
        }
        i += (alen + 3) & !3;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_the_kernel_layout() {
        let m = local_route_msg(1);
        assert_eq!(m.len(), 16 + 12 + 8 + 8);
        assert_eq!(&m[16..24], &[2, 15, 0, 0, 255, 4, 254, 2]);
        assert_eq!(&m[32..36], &[198, 18, 0, 0]);
        let d = diag_request(
            "127.0.0.1:40000".parse().unwrap(),
            "198.18.0.3:443".parse().unwrap(),
        );
        assert_eq!(d.len(), 16 + 56);
        assert_eq!(&d[24..28], &[0x9c, 0x40, 0x01, 0xbb]);
        let mut ans = vec![0u8; 16 + 72 + 12];
        let len = ans.len() as u32;
        ans[0..4].copy_from_slice(&len.to_ne_bytes());
        ans[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        ans[88..90].copy_from_slice(&12u16.to_ne_bytes());
        ans[90..92].copy_from_slice(&21u16.to_ne_bytes());
        ans[92..100].copy_from_slice(&4242u64.to_ne_bytes());
        ans[20..22].copy_from_slice(&40000u16.to_be_bytes());
        ans[22..24].copy_from_slice(&443u16.to_be_bytes());
        assert_eq!(parse_diag_cgroup(&ans, 40000, 443), Some(4242));
        // Another socket's answer (a stale one) is never taken.
        assert_eq!(parse_diag_cgroup(&ans, 40001, 443), None);
        assert_eq!(parse_diag_cgroup(&ans[..50], 40000, 443), None);
    }
}
