//! Per-file checks of the network section and `net:` capabilities (enforced by the egress
//! proxy and the approval queue) and of the sections whose mechanisms are not enforced yet
//! (filesystem, other capability kinds, secrets): their values are still validated fully (paths, globs,
//! domains, names, contradictions) so that a policy is correct the day the mechanism lands,
//! and then refused through `enforcement.rs`. Split from `validate.rs` to keep files small.

use globset::Glob;

use crate::error::DiagnosticKind as K;
use crate::layer::{ArgvPattern, Layer, NetGrant, Val};
use crate::network::MAX_IDLE_TIMEOUT_S;
use crate::schema::{self, L};
use crate::validate::Cx;

/// Well-known package registry sets, written `@name`; see `network::REGISTRY_HOSTS`.
pub const REGISTRY_SETS: [&str; 5] = ["crates", "pypi", "npm", "debian", "go"];

/// A network rule (`network::parse_rule`): `domain[:port]`, `*.suffix`, CIDR, `@registry`.
pub(crate) fn check_domain(s: &str) -> Result<(), String> {
    crate::network::parse_rule(s).map(|_| ())
}

pub(crate) fn check_filesystem(cx: &mut Cx, fs: &schema::Filesystem) {
    let lists = [
        (&fs.read_only, "filesystem.read_only"),
        (&fs.read_write, "filesystem.read_write"),
        (&fs.hidden, "filesystem.hidden"),
    ];
    let mut seen: Vec<(String, &str)> = Vec::new();
    for (list, key) in lists {
        for item in list.iter().flat_map(|l| l.get()) {
            let p = item.get();
            if !(p.starts_with('/') || p.starts_with("~/")) {
                cx.err(
                    K::Invalid,
                    item.span(),
                    key,
                    format!("path `{p}` is not absolute"),
                    Some("write `/abs/path`, `~/path` or a glob like `/home/*/.ssh`".into()),
                );
            } else if let Err(e) = Glob::new(p) {
                cx.err(
                    K::Invalid,
                    item.span(),
                    key,
                    format!("bad glob `{p}`: {}", e.kind()),
                    None,
                );
            }
            if let Some((_, other)) = seen.iter().find(|(q, _)| q == p) {
                cx.err(
                    K::Contradiction,
                    item.span(),
                    key,
                    format!("`{p}` is also listed in `{other}`"),
                    Some(
                        "a path has one access mode; hidden beats read-write beats read-only"
                            .into(),
                    ),
                );
            }
            seen.push((p.clone(), key));
        }
        if let Some(l) = list.as_ref().filter(|l| !l.get().is_empty()) {
            cx.not_enforced(l.span(), key);
        }
    }
}

pub(crate) fn check_network(cx: &mut Cx, n: &schema::Network, layer: &mut Layer) {
    let enabled = n.enabled.as_ref().map(|e| *e.get());
    layer.network_enabled = cx.opt(&n.enabled, "network.enabled");
    let allow = cx.domains(&n.allow, "network.allow");
    if n.allow.is_some() {
        layer.network_allow = Some(allow);
    }
    if let Some(a) = n.allow.as_ref().filter(|a| !a.get().is_empty())
        && enabled == Some(false)
    {
        cx.err(
            K::Contradiction,
            a.span(),
            "network.allow",
            "destinations are allowed but the network is off".into(),
            Some("set `enabled = true` or drop `allow`".into()),
        );
    }
    layer.network_deny = cx.domains(&n.deny, "network.deny");
    layer.network_ask = cx.domains(&n.ask, "network.ask");
    if let Some(a) = n.ask.as_ref().filter(|a| !a.get().is_empty())
        && enabled == Some(false)
    {
        cx.err(
            K::Contradiction,
            a.span(),
            "network.ask",
            "destinations are put under ask but the network is off".into(),
            Some("set `enabled = true` or drop `ask`".into()),
        );
    }
    if let Some(t) = &n.idle_timeout {
        let secs = t.get().0;
        if (1..=MAX_IDLE_TIMEOUT_S).contains(&secs) {
            layer.network_idle_timeout = Some(cx.val(t, "network.idle_timeout"));
        } else {
            cx.err(
                K::Invalid,
                t.span(),
                "network.idle_timeout",
                format!("`network.idle_timeout = {}` is outside 1s to 24h", t.get()),
                Some("a relayed connection idle this long is closed; pick e.g. \"15m\"".into()),
            );
        }
    }
    for g in n.grant.iter().flatten() {
        let patterns = cx.patterns(&g.get().patterns, "network.grant.match");
        let allow = cx.domains(&Some(g.get().allow.clone()), "network.grant.allow");
        layer.network_grants.push(NetGrant {
            patterns: patterns
                .into_iter()
                .map(|(v, _)| ArgvPattern { text: v.value })
                .collect(),
            allow,
            origin: cx.origin(&g.span(), "network.grant"),
        });
    }
    if let Some(m) = &n.max {
        cx.host_only(m.span(), "network.max");
        let allow = cx.globs(&m.get().allow, "network.max.allow");
        layer.caps.network_enabled = cx.opt(&m.get().enabled, "network.max.enabled");
        if let Some(a) = &m.get().allow {
            layer.caps.network_allow = Some(Val {
                value: allow.into_iter().map(|v| v.value).collect(),
                origin: cx.origin(&a.span(), "network.max.allow"),
            });
        }
    }
}

/// One `[capabilities]` rule: the resource parsed (`capability::Resource`), its kind
/// refused when this build has no mechanism for it (`capabilities.<kind>` in the table),
/// `net:` rules turned into network deny/ask rules (an allow is refused: allow lists are
/// `network.allow`, which the host caps bound).
pub(crate) fn check_capability(
    cx: &mut Cx,
    res: &str,
    cap: &L<schema::Capability>,
    layer: &mut Layer,
) {
    use crate::capability::{Kind, Resource};
    use crate::schema::Effect;
    let r = match Resource::parse(res) {
        Ok(r) => r,
        Err(e) => {
            cx.err(
                K::Invalid,
                cap.span(),
                "capabilities",
                format!("bad capability resource: {e}"),
                Some("resources look like `fs:/srv/repo/**:write`, `net:api.github.com:443`, `exec:/usr/bin/git`, `secret:NAME`".into()),
            );
            return;
        }
    };
    let c = cap.get();
    for (v, key) in [
        (
            c.one_shot.as_ref().map(|o| o.span()),
            "capabilities.one_shot",
        ),
        (c.ttl.as_ref().map(|t| t.span()), "capabilities.ttl"),
    ] {
        if let Some(span) = v {
            cx.not_enforced(span, key);
        }
    }
    if r.kind() != Kind::Net {
        cx.not_enforced(cap.span(), r.kind().table_key());
        return;
    }
    let Resource::Net { rule, .. } = &r else {
        return;
    };
    let v = Val {
        value: rule.clone(),
        origin: cx.origin(&cap.span(), &format!("capabilities.\"{res}\"")),
    };
    match c.effect.get() {
        Effect::Deny => layer.network_deny.push(v),
        Effect::Ask => layer.network_ask.push(v),
        Effect::Allow => cx.err(
            K::Invalid,
            c.effect.span(),
            "capabilities",
            format!("`{res}`: a `net:` capability may deny or ask, not allow"),
            Some(
                "allow destinations with `network.allow` (bounded by the host's network.max.allow)"
                    .into(),
            ),
        ),
    }
}

pub(crate) fn check_secret(cx: &mut Cx, name: &str, s: &L<schema::Secret>) {
    let valid_name = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if !valid_name {
        cx.err(
            K::Invalid,
            s.span(),
            "secrets",
            format!("bad secret name `{name}`"),
            Some("secret names look like environment variables: GITHUB_TOKEN".into()),
        );
    }
    let src = s.get().source.get();
    let ok = src.strip_prefix("env:").is_some_and(|v| !v.is_empty())
        || src
            .strip_prefix("file:")
            .is_some_and(|p| p.starts_with('/'));
    if !ok {
        cx.err(
            K::Invalid,
            s.get().source.span(),
            "secrets.source",
            format!("bad secret source `{src}`"),
            Some("use `env:NAME` or `file:/absolute/path`".into()),
        );
    }
    if let Some(c) = &s.get().commands {
        cx.patterns(c, "secrets.commands");
    }
    cx.domains(&s.get().domains, "secrets.domains");
}
