//! Network rules: the `[network]` section as resolved data (`NetworkPlan`) and the pure
//! decision the egress proxy asks for every connection: (destination name or address, port,
//! the calling command) → allow or deny, naming the rule that decided.
//!
//! Rule text (`network.allow`, `network.deny`, `network.grant.allow`):
//! - `name` (exact) or `*.suffix` (any name strictly below `suffix`), optionally `:port` or
//!   `:*`; without a port a name rule covers 80 and 443 (http and https).
//! - an IPv4 address or CIDR (`10.77.0.0/24`, `10.77.0.2:8080`): names those addresses. This
//!   is the only way to reach a private, loopback, link-local or metadata address (whether
//!   written literally or resolved from an allowed name): rebinding-safe by construction.
//! - `@registry`: a well-known set of package-registry hosts (`REGISTRY_HOSTS`).
//!
//! Precedence: deny > ask > allow; nothing matching means deny. `ask` (network.ask and
//! `net:` ask capabilities) makes the proxy park the connection and file a request in the
//! approval queue (docs/capabilities.md). Grants add allow rules for calls whose argv
//! matches their patterns; an ask rule still beats them.

use std::fmt;
use std::net::Ipv4Addr;

use serde::Serialize;

use crate::layer::{ArgvPattern, CompiledPattern, Origin};

/// Hosts behind each `@registry` set.
pub const REGISTRY_HOSTS: [(&str, &[&str]); 5] = [
    (
        "crates",
        &["crates.io", "index.crates.io", "static.crates.io"],
    ),
    ("pypi", &["pypi.org", "files.pythonhosted.org"]),
    ("npm", &["registry.npmjs.org"]),
    ("debian", &["deb.debian.org", "security.debian.org"]),
    ("go", &["proxy.golang.org", "sum.golang.org"]),
];

/// Ports a rule without `:port` covers.
pub const DEFAULT_PORTS: [u16; 2] = [80, 443];

/// Which ports a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ports {
    /// 80 and 443.
    Web,
    Any,
    One(u16),
}

impl Ports {
    pub fn covers(self, port: u16) -> bool {
        match self {
            Ports::Web => DEFAULT_PORTS.contains(&port),
            Ports::Any => true,
            Ports::One(p) => p == port,
        }
    }
}

/// What a rule names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Target {
    /// One exact name (lower case, no trailing dot).
    Exact { name: String },
    /// Any name strictly below `suffix`.
    Suffix { suffix: String },
    /// IPv4 addresses `addr/prefix`.
    Cidr { addr: Ipv4Addr, prefix: u8 },
}

/// One parsed rule (a registry set expands to several).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct NetPattern {
    pub target: Target,
    pub ports: Ports,
}

/// Parses rule text; `@registry` expands. The error says what is wrong.
pub fn parse_rule(s: &str) -> Result<Vec<NetPattern>, String> {
    if let Some(set) = s.strip_prefix('@') {
        let (_, hosts) = REGISTRY_HOSTS
            .iter()
            .find(|(n, _)| *n == set)
            .ok_or_else(|| {
                let known: Vec<&str> = REGISTRY_HOSTS.iter().map(|(n, _)| *n).collect();
                format!("unknown registry set `{s}` (known: @{})", known.join(", @"))
            })?;
        return Ok(hosts
            .iter()
            .map(|h| NetPattern {
                target: Target::Exact {
                    name: (*h).to_string(),
                },
                ports: Ports::Web,
            })
            .collect());
    }
    // A CIDR's `/` comes before any `:port`.
    let (host, ports) = match s.rsplit_once(':') {
        Some((h, "*")) => (h, Ports::Any),
        Some((h, p)) => match p.parse::<u16>() {
            Ok(n) if n > 0 => (h, Ports::One(n)),
            _ => return Err(format!("bad port `{p}` in `{s}`")),
        },
        None => (s, Ports::Web),
    };
    if host.contains(':') || host.starts_with('[') {
        return Err(format!(
            "`{s}`: IPv6 destinations are not supported (sessions get IPv4 only)"
        ));
    }
    if let Some((a, p)) = host.split_once('/') {
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("`{a}` in `{s}` is not an IPv4 address"))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|n| *n <= 32)
            .ok_or_else(|| format!("bad prefix length `/{p}` in `{s}`"))?;
        let masked = mask(addr, prefix);
        if masked != addr {
            return Err(format!(
                "`{host}` has host bits set; write `{masked}/{prefix}`"
            ));
        }
        return Ok(vec![NetPattern {
            target: Target::Cidr { addr, prefix },
            ports,
        }]);
    }
    if let Ok(addr) = host.parse::<Ipv4Addr>() {
        return Ok(vec![NetPattern {
            target: Target::Cidr { addr, prefix: 32 },
            ports,
        }]);
    }
    let (wild, bare) = match host.strip_prefix("*.") {
        Some(b) => (true, b),
        None => (false, host),
    };
    let ok = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !ok {
        return Err(format!("`{s}` is not a domain"));
    }
    let name = bare.to_ascii_lowercase();
    let target = if wild {
        Target::Suffix { suffix: name }
    } else {
        Target::Exact { name }
    };
    Ok(vec![NetPattern { target, ports }])
}

fn mask(a: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let m = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    Ipv4Addr::from(u32::from(a) & m)
}

/// A destination as the proxy knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest<'a> {
    /// A name (from DNS, CONNECT, SOCKS5 or the fake-IP map); lower case, no trailing dot.
    Name(&'a str),
    /// An address literal.
    Addr(Ipv4Addr),
}

impl NetPattern {
    /// Whether the pattern covers `dest:port`.
    pub fn matches(&self, dest: Dest<'_>, port: u16) -> bool {
        self.ports.covers(port)
            && match (&self.target, dest) {
                (Target::Exact { name }, Dest::Name(n)) => name == n,
                (Target::Suffix { suffix }, Dest::Name(n)) => n
                    .strip_suffix(suffix.as_str())
                    .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
                (Target::Cidr { addr, prefix }, Dest::Addr(a)) => mask(a, *prefix) == *addr,
                _ => false,
            }
    }

    /// Whether the pattern names the address `a` (any port).
    pub fn names_addr(&self, a: Ipv4Addr) -> bool {
        matches!(&self.target, Target::Cidr { addr, prefix } if mask(a, *prefix) == *addr)
    }
}

/// One rule of the plan with its origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetRule {
    pub text: String,
    pub origin: Origin,
    #[serde(skip)]
    pub patterns: Vec<NetPattern>,
}

impl NetRule {
    pub fn new(text: &str, origin: Origin) -> Result<NetRule, String> {
        Ok(NetRule {
            text: text.to_string(),
            origin,
            patterns: parse_rule(text)?,
        })
    }

    fn matches(&self, dest: Dest<'_>, port: u16) -> bool {
        self.patterns.iter().any(|p| p.matches(dest, port))
    }
}

/// Extra allow rules for calls whose argv matches.
#[derive(Debug, Clone, Serialize)]
pub struct GrantPlan {
    #[serde(rename = "match")]
    pub patterns: Vec<ArgvPattern>,
    pub allow: Vec<NetRule>,
    pub origin: Origin,
    #[serde(skip)]
    pub compiled: Vec<CompiledPattern>,
}

/// The resolved `[network]` section.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkPlan {
    /// Off: the session's network namespace has loopback only and no proxy.
    pub enabled: bool,
    pub allow: Vec<NetRule>,
    pub deny: Vec<NetRule>,
    /// Destinations that need a person's approval (each connection asks, unless a grant
    /// from an earlier approval covers it).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ask: Vec<NetRule>,
    pub grants: Vec<GrantPlan>,
    /// A relay with no byte either way for this many seconds is closed
    /// (`network.idle_timeout`, default [`DEFAULT_IDLE_TIMEOUT_S`]).
    pub idle_timeout_s: u64,
}

/// The relay idle timeout when no layer sets `network.idle_timeout` (15 minutes: longer
/// than any keep-alive a client expects a proxy to hold, short enough that abandoned
/// connections do not pin the session's connection slots).
pub const DEFAULT_IDLE_TIMEOUT_S: u64 = 900;
/// The largest `network.idle_timeout` a policy may set (24 h).
pub const MAX_IDLE_TIMEOUT_S: u64 = 86_400;

impl NetworkPlan {
    pub fn off() -> NetworkPlan {
        NetworkPlan {
            enabled: false,
            allow: Vec::new(),
            deny: Vec::new(),
            ask: Vec::new(),
            grants: Vec::new(),
            idle_timeout_s: DEFAULT_IDLE_TIMEOUT_S,
        }
    }
}

/// What the proxy does with one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetEffect {
    Allow,
    /// Park the connection and ask a person (the approval queue).
    Ask,
    Deny,
}

/// A decision and the rule (text and origin) or reason behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetDecision {
    pub effect: NetEffect,
    /// `network.deny "x" (repo policy .agentd/policy.toml:4:9)` or why nothing matched.
    pub rule: String,
}

impl fmt::Display for NetDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = match self.effect {
            NetEffect::Allow => "allowed",
            NetEffect::Ask => "held for approval",
            NetEffect::Deny => "denied",
        };
        write!(f, "{e} by {}", self.rule)
    }
}

fn named(r: &NetRule) -> String {
    format!("{} `{}` ({})", r.origin.key, r.text, r.origin)
}

/// Addresses never reached unless a rule names them: private (RFC 1918), loopback,
/// link-local (169.254/16, which holds cloud metadata), CGNAT, this-network, benchmark
/// (the sessions' fake-IP range), multicast, reserved, broadcast.
pub fn special_addr(a: Ipv4Addr) -> Option<&'static str> {
    let o = a.octets();
    if a.is_loopback() {
        Some("loopback")
    } else if a.is_private() {
        Some("private")
    } else if a.is_link_local() {
        Some("link-local (cloud metadata lives here)")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("shared (CGNAT)")
    } else if o[0] == 0 {
        Some("this-network")
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        Some("benchmark (agentd's fake-IP range)")
    } else if a.is_multicast() || o[0] >= 240 {
        Some("multicast or reserved")
    } else {
        None
    }
}

impl fmt::Display for NetworkPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.enabled {
            return f.write_str("off");
        }
        write!(
            f,
            "via the egress proxy ({} allow, {} deny, {} ask, {} grant rules)",
            self.allow.len(),
            self.deny.len(),
            self.ask.len(),
            self.grants.len()
        )
    }
}

impl NetworkPlan {
    /// One line for `policy explain`: what a call with `argv` may reach.
    pub fn describe_for<S: AsRef<str>>(&self, argv: &[S]) -> String {
        if !self.enabled {
            return "no network (network.enabled = false)".into();
        }
        let mut allow: Vec<&str> = self.allow.iter().map(|r| r.text.as_str()).collect();
        for g in &self.grants {
            if g.compiled.iter().any(|c| c.matches(argv)) {
                allow.extend(g.allow.iter().map(|r| r.text.as_str()));
            }
        }
        let deny: Vec<&str> = self.deny.iter().map(|r| r.text.as_str()).collect();
        let ask: Vec<String> = self
            .ask
            .iter()
            .map(|r| format!("{} ({})", r.text, r.origin))
            .collect();
        let list = |what: &str, v: &[String]| {
            if v.is_empty() {
                String::new()
            } else {
                format!(", {what} [{}]", v.join(", "))
            }
        };
        let deny: Vec<String> = deny.iter().map(|s| s.to_string()).collect();
        format!(
            "allow [{}]{}{}",
            allow.join(", "),
            list("ask", &ask),
            list("deny", &deny)
        )
    }

    /// Decides `dest:port` for a call with `argv` (`None`: the agent itself, outside any
    /// call). deny > ask > allow; a grant counts only for matching calls; no match denies.
    pub fn decide<S: AsRef<str>>(
        &self,
        dest: Dest<'_>,
        port: u16,
        argv: Option<&[S]>,
    ) -> NetDecision {
        if !self.enabled {
            return NetDecision {
                effect: NetEffect::Deny,
                rule: "network.enabled = false".into(),
            };
        }
        if let Some(r) = self.deny.iter().find(|r| r.matches(dest, port)) {
            return NetDecision {
                effect: NetEffect::Deny,
                rule: named(r),
            };
        }
        if let Some(r) = self.ask.iter().find(|r| r.matches(dest, port)) {
            return NetDecision {
                effect: NetEffect::Ask,
                rule: named(r),
            };
        }
        if let Some(r) = self.allow.iter().find(|r| r.matches(dest, port)) {
            return NetDecision {
                effect: NetEffect::Allow,
                rule: named(r),
            };
        }
        if let Some(argv) = argv {
            for g in &self.grants {
                if !g.compiled.iter().any(|c| c.matches(argv)) {
                    continue;
                }
                if let Some(r) = g.allow.iter().find(|r| r.matches(dest, port)) {
                    return NetDecision {
                        effect: NetEffect::Allow,
                        rule: named(r),
                    };
                }
            }
        }
        let what = match dest {
            Dest::Name(n) => format!("{n}:{port}"),
            Dest::Addr(a) => format!("{a}:{port}"),
        };
        NetDecision {
            effect: NetEffect::Deny,
            rule: format!("no network rule allows {what} (network.allow, network.grant)"),
        }
    }

    /// Whether the fake-IP DNS stub gives `name` an address: yes unless the network is off
    /// or a deny rule covers the name on every port (then NXDOMAIN). A name no rule allows
    /// still resolves, so that the connection reaches the proxy and is refused there with
    /// a reason naming the policy (and audited), and so that per-call grants work.
    pub fn resolvable(&self, name: &str) -> bool {
        if !self.enabled {
            return false;
        }
        let d = Dest::Name(name);
        !self.deny.iter().any(|r| {
            r.patterns
                .iter()
                .any(|p| p.ports == Ports::Any && p.matches(d, 1))
        })
    }

    /// Whether the upstream address `a` (resolved or literal) may be connected to: an
    /// ordinary public address always; a special one only when a rule names it.
    pub fn upstream_addr(&self, a: Ipv4Addr) -> Result<(), String> {
        let Some(class) = special_addr(a) else {
            return Ok(());
        };
        let named = self
            .allow
            .iter()
            .chain(&self.ask)
            .chain(self.grants.iter().flat_map(|g| &g.allow))
            .any(|r| r.patterns.iter().any(|p| p.names_addr(a)));
        if named {
            Ok(())
        } else {
            Err(format!(
                "upstream address {a} is {class}; refused unless a network.allow rule names it (e.g. `{a}/32`)"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::LayerKind;

    fn o(key: &str) -> Origin {
        Origin {
            layer: LayerKind::Repo,
            file: "p.toml".into(),
            line: 3,
            column: 9,
            key: key.into(),
        }
    }

    fn rules(list: &[&str], key: &str) -> Vec<NetRule> {
        list.iter()
            .map(|t| NetRule::new(t, o(key)).unwrap())
            .collect()
    }

    fn plan(allow: &[&str], deny: &[&str]) -> NetworkPlan {
        NetworkPlan {
            enabled: true,
            allow: rules(allow, "network.allow"),
            deny: rules(deny, "network.deny"),
            ask: Vec::new(),
            grants: Vec::new(),
            idle_timeout_s: DEFAULT_IDLE_TIMEOUT_S,
        }
    }

    const NONE: Option<&[&str]> = None;

    #[test]
    fn parse_accepts_names_wildcards_ports_cidrs_and_sets() {
        assert_eq!(parse_rule("@pypi").unwrap().len(), 2);
        assert!(
            parse_rule("@nope")
                .unwrap_err()
                .contains("unknown registry set")
        );
        assert_eq!(parse_rule("Ex.COM").unwrap()[0].ports, Ports::Web);
        assert_eq!(parse_rule("ex.com:22").unwrap()[0].ports, Ports::One(22));
        assert_eq!(parse_rule("*.ex.com:*").unwrap()[0].ports, Ports::Any);
        assert!(parse_rule("ex.com:0").is_err());
        assert!(parse_rule("ex.com:99999").is_err());
        assert!(parse_rule("bad host").is_err());
        assert!(parse_rule("-a.com").is_err());
        assert!(
            parse_rule("10.0.0.1/24")
                .unwrap_err()
                .contains("10.0.0.0/24")
        );
        assert!(parse_rule("10.0.0.0/33").is_err());
        assert!(parse_rule("[::1]:443").unwrap_err().contains("IPv6"));
        assert!(parse_rule("10.77.0.0/24:8080").is_ok());
    }

    #[test]
    fn deny_beats_allow_and_suffix_is_strict() {
        let p = plan(&["*.ex.com", "ex.com:22"], &["bad.ex.com"]);
        let d = |n: &str, port| p.decide(Dest::Name(n), port, NONE).effect;
        assert_eq!(d("a.ex.com", 443), NetEffect::Allow);
        assert_eq!(d("a.b.ex.com", 80), NetEffect::Allow);
        assert_eq!(d("ex.com", 443), NetEffect::Deny);
        assert_eq!(d("ex.com", 22), NetEffect::Allow);
        assert_eq!(d("xex.com", 443), NetEffect::Deny);
        assert_eq!(d("a.ex.com", 8080), NetEffect::Deny);
        let bad = p.decide(Dest::Name("bad.ex.com"), 443, NONE);
        assert_eq!(bad.effect, NetEffect::Deny);
        assert!(
            bad.rule.contains("network.deny `bad.ex.com`"),
            "{}",
            bad.rule
        );
        assert!(bad.rule.contains("p.toml:3:9"), "{}", bad.rule);
    }

    #[test]
    fn grants_apply_only_to_matching_calls() {
        let mut p = plan(&[], &[]);
        p.grants.push(GrantPlan {
            patterns: vec![ArgvPattern {
                text: "pip install".into(),
            }],
            allow: rules(&["@pypi"], "network.grant.allow"),
            origin: o("network.grant"),
            compiled: vec![ArgvPattern::compile("pip install").unwrap()],
        });
        let pypi = Dest::Name("pypi.org");
        assert_eq!(
            p.decide(pypi, 443, Some(&["pip", "install", "x"])).effect,
            NetEffect::Allow
        );
        assert_eq!(p.decide(pypi, 443, Some(&["curl"])).effect, NetEffect::Deny);
        assert_eq!(p.decide(pypi, 443, NONE).effect, NetEffect::Deny);
        assert!(p.resolvable("pypi.org"));
        assert!(p.resolvable("example.org"));
    }

    #[test]
    fn special_upstreams_need_a_rule_naming_them() {
        let p = plan(&["ex.com", "10.77.0.0/24"], &[]);
        assert!(p.upstream_addr("93.184.216.34".parse().unwrap()).is_ok());
        assert!(p.upstream_addr("10.77.0.2".parse().unwrap()).is_ok());
        for a in [
            "10.1.0.1",
            "127.0.0.1",
            "169.254.169.254",
            "192.168.1.1",
            "100.64.0.1",
            "198.18.0.1",
            "0.0.0.0",
            "224.0.0.1",
        ] {
            let e = p.upstream_addr(a.parse().unwrap()).unwrap_err();
            assert!(e.contains("refused unless"), "{a}: {e}");
        }
        let lit = Dest::Addr("10.77.0.9".parse().unwrap());
        assert_eq!(p.decide(lit, 443, NONE).effect, NetEffect::Allow);
        assert_eq!(p.decide(lit, 8080, NONE).effect, NetEffect::Deny);
    }

    #[test]
    fn ask_beats_allow_and_grants_and_deny_beats_ask() {
        let mut p = plan(&["*.ex.com"], &["bad.ex.com"]);
        p.ask = rules(&["*.ex.com:443", "bad.ex.com"], "network.ask");
        p.grants.push(GrantPlan {
            patterns: vec![ArgvPattern { text: "git".into() }],
            allow: rules(&["a.ex.com"], "network.grant.allow"),
            origin: o("network.grant"),
            compiled: vec![ArgvPattern::compile("git").unwrap()],
        });
        let d = |n: &str, port, argv: Option<&[&str]>| p.decide(Dest::Name(n), port, argv).effect;
        assert_eq!(d("a.ex.com", 443, NONE), NetEffect::Ask);
        assert_eq!(d("a.ex.com", 443, Some(&["git", "push"])), NetEffect::Ask);
        assert_eq!(d("a.ex.com", 80, NONE), NetEffect::Allow);
        assert_eq!(d("bad.ex.com", 443, NONE), NetEffect::Deny);
        let a = p.decide(Dest::Name("a.ex.com"), 443, NONE);
        assert!(a.rule.contains("network.ask `*.ex.com:443`"), "{}", a.rule);
        assert!(p.describe_for(&["x"]).contains("ask [*.ex.com:443"));
    }

    #[test]
    fn off_denies_everything() {
        let p = NetworkPlan::off();
        assert_eq!(
            p.decide(Dest::Name("a.com"), 443, NONE).effect,
            NetEffect::Deny
        );
        assert!(!p.resolvable("a.com"));
    }
}
