//! Egress: a session's only way out of its network namespace, through the daemon.
//!
//! Per session with `network.enabled`, [`SessionEgress::start`] opens (from a thread inside
//! the session's netns, see `netns`) the explicit proxy (HTTP CONNECT + plain http on
//! 127.0.0.1:880, SOCKS5 on 127.0.0.1:881), the fake-IP DNS stub (127.0.0.1:53) and the
//! transparent listeners (0.0.0.0:{80,443,22,rule ports}) behind a `local` route for the
//! fake range 198.18.0.0/15. Every connection is attributed to the tool call whose cgroup
//! created the client socket (sock_diag), decided by the session's `NetworkPlan` (policies
//! crate), checked against what the client actually sends (TLS SNI, HTTP Host), connected
//! by the daemon to an address it resolved itself (special addresses refused unless a rule
//! names them), relayed with byte counts, and audited in the journal. See docs/egress.md.
//!
//! Modules: `dns` (wire format), `http_connect`, `socks5`, `sni` (parsers), `netns` (the
//! kernel side), `proxy` (connection handling), `relay` (splice, idle timeout), `fake` (the
//! name ↔ fake address map).

pub mod dns;
pub mod fake;
pub mod http_connect;
pub mod netns;
pub mod proxy;
pub mod relay;
pub mod sni;
pub mod socks5;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use agentd_policy::NetworkPlan;
use serde::{Deserialize, Serialize};

/// Errors setting egress up.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("egress: {what}: {source}")]
    Netns {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("egress: AGENTD_EGRESS_DNS={value}: not IP:PORT: {source}")]
    DnsEnv {
        value: String,
        #[source]
        source: std::net::AddrParseError,
    },
    #[error("egress: no upstream DNS server: {}: {source}", path.display())]
    ResolvConf {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("egress: no upstream DNS server: no `nameserver` line in {}", path.display())]
    NoNameserver { path: PathBuf },
}

/// Connections handled at once per session; beyond it new ones are refused at once. With
/// the per-connection bounds (`http_connect::MAX_HEAD`, `sni::MAX_HELLO`, two relay pipes
/// of `relay::PIPE_SIZE` kernel memory, or two `relay::COPY_BUF` buffers) this bounds the
/// daemon's memory per session (asserted by the VM test).
pub const MAX_CONNECTIONS: usize = 512;

/// One audited connection (a journal row; `GET /v1/sessions/{id}/net`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnRecord {
    pub session: String,
    /// The tool call whose cgroup made the connection (`None`: the agent itself).
    pub call: Option<u64>,
    /// `transparent`, `http-connect`, `http-forward` or `socks5`.
    pub via: String,
    /// The name (or address) asked for.
    pub dest: String,
    pub port: u16,
    /// The address the daemon connected to.
    pub upstream: Option<String>,
    /// `allow` or `deny`.
    pub decision: String,
    /// The rule that decided, or why the connection was refused.
    pub rule: String,
    /// Client → upstream bytes.
    pub bytes_up: u64,
    /// Upstream → client bytes.
    pub bytes_down: u64,
    pub started_at_ms: u64,
    pub duration_ms: u64,
}

/// Writes an audit record (the daemon's journal).
pub type AuditSink = Arc<dyn Fn(&ConnRecord) + Send + Sync>;
/// The argv of call `n` of this session (the journal).
pub type ArgvOf = Arc<dyn Fn(u64) -> Option<Vec<String>> + Send + Sync>;

/// A connection a rule puts under `ask`, for the approval queue.
#[derive(Debug, Clone)]
pub struct AskFor {
    pub call: Option<u64>,
    pub host: String,
    pub port: u16,
    /// The ask rule (text and origin).
    pub rule: String,
    /// `transparent`, `http-connect`, …
    pub via: String,
}

/// Decides an `ask` (the daemon's approval queue, `server::approvals::gate`): `Ok(why)`
/// connects, `Err(why)` is refused the way every refusal is. The connection is parked
/// until this resolves.
pub type Asker = Arc<
    dyn Fn(
            AskFor,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send>>
        + Send
        + Sync,
>;

/// Daemon-wide egress settings.
#[derive(Debug, Clone)]
pub struct EgressConfig {
    /// The DNS server the daemon resolves upstream names with.
    pub upstream_dns: SocketAddr,
}

impl EgressConfig {
    /// `AGENTD_EGRESS_DNS=IP:PORT`, else the first `nameserver` of /etc/resolv.conf.
    pub fn from_env() -> Result<EgressConfig, EgressError> {
        if let Ok(v) = std::env::var("AGENTD_EGRESS_DNS") {
            let upstream_dns = v.parse().map_err(|source| EgressError::DnsEnv {
                value: v.clone(),
                source,
            })?;
            return Ok(EgressConfig { upstream_dns });
        }
        let path = PathBuf::from("/etc/resolv.conf");
        let text = std::fs::read_to_string(&path).map_err(|source| EgressError::ResolvConf {
            path: path.clone(),
            source,
        })?;
        let ns = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("nameserver"))
            .find_map(|v| v.trim().parse::<std::net::IpAddr>().ok())
            .ok_or(EgressError::NoNameserver { path })?;
        Ok(EgressConfig {
            upstream_dns: SocketAddr::new(ns, 53),
        })
    }
}

/// The ports the transparent listeners take: 80, 443, 22, and every port a rule names.
pub fn transparent_ports(plan: &NetworkPlan) -> Vec<u16> {
    use agentd_policy::network::Ports;
    let mut v = vec![80u16, 443, 22];
    let rules = plan
        .allow
        .iter()
        .chain(&plan.ask)
        .chain(plan.grants.iter().flat_map(|g| &g.allow));
    for r in rules {
        for p in &r.patterns {
            if let Ports::One(n) = p.ports
                && !v.contains(&n)
                && n != netns::HTTP_PROXY_PORT
                && n != netns::SOCKS_PORT
                && n != netns::DNS_PORT
            {
                v.push(n);
            }
        }
    }
    v
}

/// The environment the agent gets so that proxy-aware tools use the explicit proxy.
pub fn proxy_env() -> Vec<(String, String)> {
    let http = format!("http://127.0.0.1:{}", netns::HTTP_PROXY_PORT);
    let socks = format!("socks5h://127.0.0.1:{}", netns::SOCKS_PORT);
    let mut v = Vec::new();
    for (k, val) in [
        ("HTTP_PROXY", &http),
        ("HTTPS_PROXY", &http),
        ("ALL_PROXY", &socks),
        ("NO_PROXY", &"localhost,127.0.0.1,::1".to_string()),
    ] {
        v.push((k.to_string(), val.clone()));
        v.push((k.to_ascii_lowercase(), val.clone()));
    }
    v
}

/// The resolv.conf the session sees (bound over /etc/resolv.conf).
pub const RESOLV_CONF: &str = "# agentd: names resolve through the daemon's egress DNS stub\nnameserver 127.0.0.1\noptions timeout:1 attempts:2\n";

/// The daemon's callbacks a session's egress uses.
pub struct Hooks {
    pub argv_of: ArgvOf,
    pub audit: AuditSink,
    pub asker: Asker,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks").finish_non_exhaustive()
    }
}

/// A running session's egress.
pub struct SessionEgress {
    pub(crate) session: String,
    pub(crate) plan: NetworkPlan,
    pub(crate) fake: Mutex<fake::FakeMap>,
    pub(crate) diag: Mutex<OwnedFd>,
    pub(crate) calls_dir: PathBuf,
    /// cgroup id → call number (kernfs ids are never reused while the daemon runs).
    pub(crate) cg_cache: Mutex<HashMap<u64, Option<u64>>>,
    pub(crate) argv_of: ArgvOf,
    pub(crate) audit: AuditSink,
    pub(crate) asker: Asker,
    pub(crate) cfg: EgressConfig,
    pub(crate) slots: Arc<tokio::sync::Semaphore>,
    /// Argv of each call seen (a call's argv never changes).
    pub(crate) argv_cache: Mutex<HashMap<u64, Vec<String>>>,
    /// Per call: (bytes up, bytes down, connections), for the call report.
    pub(crate) per_call: Mutex<HashMap<u64, (u64, u64, u64)>>,
    /// Per call: connections being handled now (the call's row waits for these only, not
    /// for the agent's own long-lived connections).
    pub(crate) call_active: Mutex<HashMap<u64, u64>>,
    /// Upstream answers, kept `proxy::DNS_CACHE_TTL` (bounded; every use is re-checked).
    pub(crate) dns_cache: Mutex<HashMap<String, (Vec<std::net::Ipv4Addr>, std::time::Instant)>>,
    /// Spare relay pipes (`relay::POOL_MAX` at most).
    pub(crate) pipes: relay::PipePool,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for SessionEgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionEgress")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl SessionEgress {
    /// Opens the session's listeners inside the netns of `init_pid` and starts serving.
    pub fn start(
        session: &str,
        init_pid: i32,
        plan: NetworkPlan,
        calls_dir: PathBuf,
        cfg: EgressConfig,
        hooks: Hooks,
    ) -> Result<Arc<SessionEgress>, EgressError> {
        let Hooks {
            argv_of,
            audit,
            asker,
        } = hooks;
        let s = netns::open(init_pid, &transparent_ports(&plan))?;
        let eg = Arc::new(SessionEgress {
            session: session.to_string(),
            plan,
            fake: Mutex::new(fake::FakeMap::default()),
            diag: Mutex::new(s.diag),
            calls_dir,
            cg_cache: Mutex::new(HashMap::new()),
            argv_of,
            audit,
            asker,
            cfg,
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
            dns_cache: Mutex::new(HashMap::new()),
            pipes: relay::PipePool::default(),
            argv_cache: Mutex::new(HashMap::new()),
            per_call: Mutex::new(HashMap::new()),
            call_active: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
        });
        let mut tasks = Vec::new();
        let wrap = |l: std::net::TcpListener| {
            tokio::net::TcpListener::from_std(l).map_err(|e| EgressError::Netns {
                what: "register a listener".into(),
                source: e,
            })
        };
        tasks.push(tokio::spawn(proxy::serve(
            eg.clone(),
            wrap(s.http)?,
            proxy::Via::Http,
        )));
        tasks.push(tokio::spawn(proxy::serve(
            eg.clone(),
            wrap(s.socks)?,
            proxy::Via::Socks,
        )));
        for (port, l) in s.transparent {
            tasks.push(tokio::spawn(proxy::serve(
                eg.clone(),
                wrap(l)?,
                proxy::Via::Transparent(port),
            )));
        }
        let dns = tokio::net::UdpSocket::from_std(s.dns).map_err(|e| EgressError::Netns {
            what: "register the DNS socket".into(),
            source: e,
        })?;
        tasks.push(tokio::spawn(proxy::serve_dns(eg.clone(), dns)));
        *eg.tasks.lock().unwrap_or_else(|p| p.into_inner()) = tasks;
        Ok(eg)
    }

    /// Stops every listener (the session ended).
    pub fn stop(&self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }

    /// (bytes up, bytes down, connections) of call `n` so far.
    pub fn call_totals(&self, n: u64) -> (u64, u64, u64) {
        self.per_call
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&n)
            .copied()
            .unwrap_or((0, 0, 0))
    }

    /// Connections of call `n` being handled now.
    pub fn call_active(&self, n: u64) -> u64 {
        self.call_active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&n)
            .copied()
            .unwrap_or(0)
    }

    /// Connections being handled now.
    pub fn active(&self) -> usize {
        MAX_CONNECTIONS - self.slots.available_permits()
    }
}

impl Drop for SessionEgress {
    fn drop(&mut self) {
        self.stop();
    }
}
