//! Capability resources: the canonical typed strings a capability rule, a grant or a
//! request names, parsed, checked and compared. Pure: shared by the policy validator
//! (`[capabilities]` keys) and the daemon's capability table (`agentd/src/caps/`).
//!
//! Patterns (rules and grants):
//! - `fs:GLOB:RIGHTS` — an absolute path glob and rights (`read`, `write`, comma-joined),
//!   e.g. `fs:/repo/**:write`;
//! - `net:RULE` — a network rule (`network::parse_rule`: `host[:port|:*]`, `*.suffix`, CIDR),
//!   e.g. `net:api.github.com:443`;
//! - `exec:GLOB` — an absolute program path (glob), e.g. `exec:/usr/bin/git`;
//! - `secret:NAME` — a named secret, e.g. `secret:GITHUB_TOKEN`.
//!
//! Requests are concrete (no wildcard): `fs:/repo/a.txt:write`, `net:web.test:443`,
//! `exec:/usr/bin/git`, `secret:GITHUB_TOKEN`. A pattern that covers everything of its
//! kind (`fs:/**`, `net:*.com`, `exec:*`, `secret:*`, `net:0.0.0.0/0`) is refused: a rule
//! must say what it is about. [`Resource::narrows`] is conservative: it says yes only when
//! every request the narrower pattern covers is covered by the wider one (property-tested).

use std::fmt;
use std::net::Ipv4Addr;

use globset::{Glob, GlobMatcher};
use serde::Serialize;

use crate::network::{Dest, NetPattern, Ports, Target, parse_rule};

/// Why a resource string is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapError {
    #[error("`{text}`: unknown kind (resources start with `fs:`, `net:`, `exec:` or `secret:`)")]
    Kind { text: String },
    #[error("`{text}`: {why}")]
    Bad { text: String, why: String },
    #[error("`{text}` covers every {kind} resource; name what the rule is about")]
    Everything { text: String, kind: Kind },
}

/// The kind of a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Fs,
    Net,
    Exec,
    Secret,
}

impl Kind {
    /// The enforcement-table key of rules of this kind (`capabilities.net`, …).
    pub fn table_key(self) -> &'static str {
        match self {
            Kind::Fs => "capabilities.fs",
            Kind::Net => "capabilities.net",
            Kind::Exec => "capabilities.exec",
            Kind::Secret => "capabilities.secret",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Fs => "fs",
            Kind::Net => "net",
            Kind::Exec => "exec",
            Kind::Secret => "secret",
        })
    }
}

/// Filesystem rights (a set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Rights {
    pub read: bool,
    pub write: bool,
}

impl Rights {
    fn parse(s: &str) -> Option<Rights> {
        let mut r = Rights {
            read: false,
            write: false,
        };
        for w in s.split(',') {
            match w {
                "read" => r.read = true,
                "write" => r.write = true,
                _ => return None,
            }
        }
        Some(r)
    }

    fn within(self, other: Rights) -> bool {
        (!self.read || other.read) && (!self.write || other.write)
    }
}

impl fmt::Display for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.read, self.write) {
            (true, true) => f.write_str("read,write"),
            (true, false) => f.write_str("read"),
            (false, true) => f.write_str("write"),
            (false, false) => f.write_str("none"),
        }
    }
}

/// A resource pattern (a rule's or a grant's).
#[derive(Debug, Clone)]
pub enum Resource {
    Fs {
        glob: String,
        rights: Rights,
        m: GlobMatcher,
    },
    Net {
        rule: String,
        patterns: Vec<NetPattern>,
    },
    Exec {
        glob: String,
        m: GlobMatcher,
    },
    Secret {
        name: String,
    },
}

impl PartialEq for Resource {
    fn eq(&self, o: &Resource) -> bool {
        self.to_string() == o.to_string()
    }
}

/// A concrete request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Request {
    Fs { path: String, rights: Rights },
    Net { host: String, port: u16 },
    Exec { path: String },
    Secret { name: String },
}

const META: &[char] = &['*', '?', '[', ']', '{', '}'];

fn bad(text: &str, why: impl Into<String>) -> CapError {
    CapError::Bad {
        text: text.to_string(),
        why: why.into(),
    }
}

/// The literal part of a glob before its first metacharacter.
fn literal_prefix(glob: &str) -> &str {
    glob.find(META).map_or(glob, |i| &glob[..i])
}

fn path_glob(text: &str, glob: &str, kind: Kind) -> Result<GlobMatcher, CapError> {
    if !glob.starts_with('/') {
        return Err(bad(text, format!("`{glob}` is not an absolute path")));
    }
    if glob.split('/').any(|c| c == "..") {
        return Err(bad(text, "`..` is not allowed in a resource path"));
    }
    // At least one literal component below `/`: `/**`, `/*`, `/{a,b}` say nothing.
    let lit = literal_prefix(glob);
    if lit.trim_end_matches('/').is_empty() {
        return Err(CapError::Everything {
            text: text.to_string(),
            kind,
        });
    }
    Glob::new(glob)
        .map(|g| g.compile_matcher())
        .map_err(|e| bad(text, format!("bad glob: {}", e.kind())))
}

fn secret_name(text: &str, name: &str) -> Result<(), CapError> {
    if name == "*" || name.contains(META) {
        return Err(CapError::Everything {
            text: text.to_string(),
            kind: Kind::Secret,
        });
    }
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(bad(
            text,
            "secret names look like environment variables: GITHUB_TOKEN",
        ))
    }
}

impl Resource {
    /// Parses a pattern.
    pub fn parse(text: &str) -> Result<Resource, CapError> {
        let (kind, rest) = text
            .split_once(':')
            .ok_or_else(|| CapError::Kind { text: text.into() })?;
        match kind {
            "fs" => {
                let (glob, rights) = rest
                    .rsplit_once(':')
                    .ok_or_else(|| bad(text, "write `fs:/path/glob:read` or `:write`"))?;
                let rights = Rights::parse(rights).ok_or_else(|| {
                    bad(
                        text,
                        format!("rights `{rights}`: use read, write or read,write"),
                    )
                })?;
                let m = path_glob(text, glob, Kind::Fs)?;
                Ok(Resource::Fs {
                    glob: glob.to_string(),
                    rights,
                    m,
                })
            }
            "net" => {
                let patterns = parse_rule(rest).map_err(|e| bad(text, e))?;
                for p in &patterns {
                    let everything = match &p.target {
                        // `*.com`: a whole top-level domain.
                        Target::Suffix { suffix } => !suffix.contains('.'),
                        Target::Cidr { prefix, .. } => *prefix < 8,
                        Target::Exact { .. } => false,
                    };
                    if everything {
                        return Err(CapError::Everything {
                            text: text.into(),
                            kind: Kind::Net,
                        });
                    }
                }
                Ok(Resource::Net {
                    rule: rest.to_string(),
                    patterns,
                })
            }
            "exec" => {
                let m = path_glob(text, rest, Kind::Exec)?;
                Ok(Resource::Exec {
                    glob: rest.to_string(),
                    m,
                })
            }
            "secret" => {
                secret_name(text, rest)?;
                Ok(Resource::Secret {
                    name: rest.to_string(),
                })
            }
            _ => Err(CapError::Kind { text: text.into() }),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Resource::Fs { .. } => Kind::Fs,
            Resource::Net { .. } => Kind::Net,
            Resource::Exec { .. } => Kind::Exec,
            Resource::Secret { .. } => Kind::Secret,
        }
    }

    /// Whether the pattern covers the concrete request.
    pub fn covers(&self, r: &Request) -> bool {
        match (self, r) {
            (Resource::Fs { rights, m, .. }, Request::Fs { path, rights: want }) => {
                want.within(*rights) && m.is_match(path)
            }
            (Resource::Net { patterns, .. }, Request::Net { host, port }) => {
                let dest = match host.parse::<Ipv4Addr>() {
                    Ok(a) => Dest::Addr(a),
                    Err(_) => Dest::Name(host),
                };
                patterns.iter().any(|p| p.matches(dest, *port))
            }
            (Resource::Exec { m, .. }, Request::Exec { path }) => m.is_match(path),
            (Resource::Secret { name }, Request::Secret { name: n }) => name == n,
            _ => false,
        }
    }

    /// Whether every request `self` covers is covered by `wider` (conservative: `false`
    /// when it cannot tell). Delegation and approvals may only narrow.
    pub fn narrows(&self, wider: &Resource) -> bool {
        match (self, wider) {
            (Resource::Secret { name: a }, Resource::Secret { name: b }) => a == b,
            (Resource::Exec { glob: a, .. }, Resource::Exec { glob: b, m }) => glob_within(a, b, m),
            (
                Resource::Fs {
                    glob: a,
                    rights: ra,
                    ..
                },
                Resource::Fs {
                    glob: b,
                    rights: rb,
                    m,
                },
            ) => ra.within(*rb) && glob_within(a, b, m),
            (Resource::Net { patterns: a, .. }, Resource::Net { patterns: b, .. }) => {
                a.iter().all(|p| b.iter().any(|q| net_within(p, q)))
            }
            _ => false,
        }
    }
}

/// `a` ⊆ `b` for path globs: equal, `a` literal and matched by `b`, or `b` = `P/**` with a
/// literal `P` and `a` below `P/`.
fn glob_within(a: &str, b: &str, bm: &GlobMatcher) -> bool {
    if a == b {
        return true;
    }
    if !a.contains(META) {
        return bm.is_match(a);
    }
    if let Some(p) = b.strip_suffix("/**")
        && !p.contains(META)
    {
        return a.starts_with(&format!("{p}/"));
    }
    false
}

fn mask(a: Ipv4Addr, prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::from(a) & (u32::MAX << (32 - u32::from(prefix)))
    }
}

fn ports_within(a: Ports, b: Ports) -> bool {
    match (a, b) {
        (_, Ports::Any) => true,
        (Ports::Web, Ports::Web) => true,
        (Ports::One(p), Ports::Web) => p == 80 || p == 443,
        (Ports::One(p), Ports::One(q)) => p == q,
        _ => false,
    }
}

fn under(name: &str, suffix: &str) -> bool {
    name.strip_suffix(suffix)
        .is_some_and(|h| h.len() > 1 && h.ends_with('.'))
}

fn net_within(a: &NetPattern, b: &NetPattern) -> bool {
    ports_within(a.ports, b.ports)
        && match (&a.target, &b.target) {
            (Target::Exact { name: x }, Target::Exact { name: y }) => x == y,
            (Target::Exact { name: x }, Target::Suffix { suffix: s }) => under(x, s),
            (Target::Suffix { suffix: t }, Target::Suffix { suffix: s }) => t == s || under(t, s),
            (
                Target::Cidr {
                    addr: x,
                    prefix: px,
                },
                Target::Cidr {
                    addr: y,
                    prefix: py,
                },
            ) => px >= py && mask(*x, *py) == u32::from(*y),
            _ => false,
        }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Fs { glob, rights, .. } => write!(f, "fs:{glob}:{rights}"),
            Resource::Net { rule, .. } => write!(f, "net:{rule}"),
            Resource::Exec { glob, .. } => write!(f, "exec:{glob}"),
            Resource::Secret { name } => write!(f, "secret:{name}"),
        }
    }
}

impl Request {
    /// Parses a concrete request (no wildcards; `net:` needs a port).
    pub fn parse(text: &str) -> Result<Request, CapError> {
        let (kind, rest) = text
            .split_once(':')
            .ok_or_else(|| CapError::Kind { text: text.into() })?;
        let no_meta = |s: &str| {
            if s.contains(META) {
                Err(bad(text, "a request names one resource: no wildcards"))
            } else {
                Ok(())
            }
        };
        match kind {
            "fs" => {
                let (path, rights) = rest
                    .rsplit_once(':')
                    .ok_or_else(|| bad(text, "write `fs:/path:read` or `:write`"))?;
                no_meta(path)?;
                let rights =
                    Rights::parse(rights).ok_or_else(|| bad(text, format!("rights `{rights}`")))?;
                path_glob(text, path, Kind::Fs)?;
                Ok(Request::Fs {
                    path: path.to_string(),
                    rights,
                })
            }
            "net" => {
                let (host, port) = rest
                    .rsplit_once(':')
                    .ok_or_else(|| bad(text, "write `net:HOST:PORT`"))?;
                let port: u16 = port
                    .parse()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| bad(text, format!("bad port `{port}`")))?;
                no_meta(host)?;
                let p = parse_rule(&format!("{host}:{port}")).map_err(|e| bad(text, e))?;
                if p.len() != 1 {
                    return Err(bad(text, "a request names one host"));
                }
                Ok(Request::Net {
                    host: host.to_ascii_lowercase(),
                    port,
                })
            }
            "exec" => {
                no_meta(rest)?;
                path_glob(text, rest, Kind::Exec)?;
                Ok(Request::Exec {
                    path: rest.to_string(),
                })
            }
            "secret" => {
                secret_name(text, rest)?;
                Ok(Request::Secret {
                    name: rest.to_string(),
                })
            }
            _ => Err(CapError::Kind { text: text.into() }),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Request::Fs { .. } => Kind::Fs,
            Request::Net { .. } => Kind::Net,
            Request::Exec { .. } => Kind::Exec,
            Request::Secret { .. } => Kind::Secret,
        }
    }

    /// The pattern that covers exactly this request (a one-shot grant's resource).
    pub fn exact(&self) -> Resource {
        // The request parsed, so its own text parses as a pattern naming just it.
        match Resource::parse(&self.to_string()) {
            Ok(r) => r,
            Err(_) => Resource::Secret {
                name: String::new(),
            },
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Fs { path, rights } => write!(f, "fs:{path}:{rights}"),
            Request::Net { host, port } => write!(f, "net:{host}:{port}"),
            Request::Exec { path } => write!(f, "exec:{path}"),
            Request::Secret { name } => write!(f, "secret:{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code
    use super::*;

    #[test]
    fn parse_kinds_and_refuse_everything() {
        for ok in [
            "fs:/repo/**:write",
            "fs:/repo/a.txt:read,write",
            "net:api.github.com:443",
            "net:*.github.com",
            "net:10.77.0.0/24:8080",
            "exec:/usr/bin/git",
            "secret:GITHUB_TOKEN",
        ] {
            let r = Resource::parse(ok).unwrap();
            assert_eq!(r.to_string(), ok);
        }
        for all in [
            "fs:/**:write",
            "fs:/*:read",
            "exec:/**",
            "secret:*",
            "net:*.com",
            "net:0.0.0.0/0:*",
        ] {
            assert!(
                matches!(Resource::parse(all), Err(CapError::Everything { .. })),
                "{all}"
            );
        }
        for bad in [
            "fs:repo:write",
            "fs:/a/../b:read",
            "fs:/a:exec",
            "net:*",
            "exec:git",
            "secret:lower",
            "disk:/x",
            "nothing",
        ] {
            assert!(Resource::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn requests_are_concrete_and_covered() {
        let r = Request::parse("net:Web.Test:443").unwrap();
        assert_eq!(r.to_string(), "net:web.test:443");
        assert!(Request::parse("net:*.test:443").is_err());
        assert!(Request::parse("net:web.test").is_err());
        assert!(Resource::parse("net:web.test").unwrap().covers(&r));
        assert!(!Resource::parse("net:web.test:80").unwrap().covers(&r));
        let w = Request::parse("fs:/repo/src/a.rs:write").unwrap();
        assert!(Resource::parse("fs:/repo/**:write").unwrap().covers(&w));
        assert!(!Resource::parse("fs:/repo/**:read").unwrap().covers(&w));
        assert!(r.exact().covers(&r));
        assert!(
            !r.exact()
                .covers(&Request::parse("net:web.test:80").unwrap())
        );
    }

    #[test]
    fn narrowing_is_conservative() {
        let p = |s| Resource::parse(s).unwrap();
        assert!(p("fs:/repo/src/**:write").narrows(&p("fs:/repo/**:read,write")));
        assert!(!p("fs:/repo/**:read,write").narrows(&p("fs:/repo/**:write")));
        assert!(!p("fs:/other/**:write").narrows(&p("fs:/repo/**:write")));
        assert!(p("net:api.github.com:443").narrows(&p("net:*.github.com")));
        assert!(!p("net:*.github.com").narrows(&p("net:api.github.com:443")));
        assert!(p("net:10.77.0.2/32:80").narrows(&p("net:10.77.0.0/24:*")));
        assert!(!p("exec:/usr/bin/*").narrows(&p("exec:/usr/bin/git")));
        assert!(!p("secret:A").narrows(&p("secret:B")));
    }
}
