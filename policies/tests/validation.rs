//! Valid and invalid policies, with exact file:line:column of every error.

mod common;

use agentd_policy::DiagnosticKind as K;
use common::*;

#[test]
fn minimal_policy_stands_on_default_profile() {
    let p = plan("version = 1\n");
    let files: Vec<&str> = p.layers.iter().map(|l| l.file.as_str()).collect();
    assert_eq!(files, ["built-in host defaults", "profile:default", REPO]);
    assert!(p.layers[1].implied);
    assert_eq!(p.session.memory.value.to_string(), "8GiB");
    assert!(!p.session.network.enabled);
}

#[test]
fn unknown_top_level_key_with_hint() {
    let d = one_error("version = 1\n[netwrok]\nenabled = false\n");
    assert_diag(
        &d,
        K::Parse,
        ".agentd/policy.toml:2:2",
        "unknown field `netwrok`",
    );
    assert_eq!(d.hint.as_deref(), Some("did you mean `network`?"));
}

#[test]
fn unknown_nested_key_with_hint() {
    let d = one_error("version = 1\n[resources]\ncpu = 1\nmemroy = \"1G\"\n");
    assert_diag(
        &d,
        K::Parse,
        ".agentd/policy.toml:4:1",
        "unknown field `memroy`",
    );
    assert_eq!(d.hint.as_deref(), Some("did you mean `memory`?"));
}

#[test]
fn wrong_type_points_at_value() {
    let d = one_error("version = 1\n[resources]\npids = \"many\"\n");
    assert_diag(&d, K::Parse, ".agentd/policy.toml:3:8", "invalid type");
}

#[test]
fn garbage_size_rejected_at_value() {
    let d = one_error("version = 1\n[resources]\nmemory = \"lots\"\n");
    assert_diag(
        &d,
        K::Parse,
        ".agentd/policy.toml:3:10",
        "`lots` is not a size",
    );
}

#[test]
fn unknown_size_unit_rejected() {
    let d = one_error("version = 1\n\n[resources]\n  memory = \"2 gigs\"\n");
    assert_diag(
        &d,
        K::Parse,
        ".agentd/policy.toml:4:12",
        "unknown size unit `gigs`",
    );
}

#[test]
fn zero_size_rejected() {
    let d = one_error("version = 1\n[resources.call]\nmemory = \"0M\"\n");
    assert_diag(
        &d,
        K::Parse,
        ".agentd/policy.toml:3:10",
        "greater than zero",
    );
}

#[test]
fn sizes_in_all_accepted_spellings() {
    let p =
        plan("version = 1\n[resources]\nmemory = \"1.5G\"\n[resources.call]\nmemory = \"512M\"\n");
    assert_eq!(p.session.memory.value.0, 1_610_612_736);
    assert_eq!(p.call_defaults.memory.value.0, 512 << 20);
    let p = plan("version = 1\n[resources]\nmemory = \"2GiB\"\n");
    assert_eq!(p.session.memory.value.0, 2 << 30);
    assert_eq!(p.session.memory.from.key, "resources.memory");
    assert_eq!(
        (p.session.memory.from.line, p.session.memory.from.column),
        (3, 10)
    );
}

#[test]
fn bad_duration_rejected() {
    let d = one_error("version = 1\n[session]\ntimeout = \"10 minutes\"\n");
    assert_diag(&d, K::Parse, ".agentd/policy.toml:3:11", "not a duration");
}

#[test]
fn missing_version() {
    let d = one_error("[resources]\ncpu = 1\n");
    assert_diag(
        &d,
        K::Invalid,
        ".agentd/policy.toml:1:1",
        "missing `version`",
    );
}

#[test]
fn unsupported_version() {
    let d = one_error("# hello\nversion = 2\n");
    assert_diag(
        &d,
        K::Invalid,
        ".agentd/policy.toml:2:11",
        "unsupported policy version 2",
    );
}

#[test]
fn toml_syntax_error_position() {
    let d = one_error("version = 1\n[resources\n");
    assert_eq!(d.kind, K::Parse);
    assert_eq!((d.line, d.column), (2, 11), "{d}");
}

#[test]
fn wrong_enum_value_lists_choices() {
    let d = one_error("version = 1\n[resources.call]\ncpu_class = \"fast\"\n");
    assert_diag(
        &d,
        K::Parse,
        ".agentd/policy.toml:3:13",
        "unknown variant `fast`",
    );
    assert_eq!(d.hint.as_deref(), Some("one of: batch, latency"));
}

#[test]
fn bad_glob_in_intent_rule() {
    let text = "version = 1\n[[intent]]\nname = \"t\"\nmatch = [\"cargo test\", \"cargo [nextest\"]\nmemory = \"1G\"\n";
    let d = one_error(text);
    assert_diag(
        &d,
        K::Invalid,
        ".agentd/policy.toml:4:24",
        "bad glob `[nextest`",
    );
}

#[test]
fn bad_env_glob() {
    let d = one_error("version = 1\n[session]\nenv = [\"PATH\", \"LC_{ALL\"]\n");
    assert_diag(
        &d,
        K::Invalid,
        ".agentd/policy.toml:3:16",
        "bad glob `LC_{ALL`",
    );
}

#[test]
fn unknown_mechanism_with_hint() {
    let d = one_error("version = 1\nrequire = [\"cgroup2\", \"landlok\"]\n");
    assert_diag(
        &d,
        K::Invalid,
        ".agentd/policy.toml:2:23",
        "unknown mechanism `landlok`",
    );
    assert_eq!(d.hint.as_deref(), Some("did you mean `landlock`?"));
}

#[test]
fn unknown_profile_with_hint() {
    let d = one_error("version = 1\nextends = \"defualt\"\n");
    assert_diag(
        &d,
        K::Extends,
        ".agentd/policy.toml:2:11",
        "unknown profile `defualt` (did you mean `default`?)",
    );
}

#[test]
fn extends_cycle_is_refused() {
    let a = "version = 1\nextends = \"b.toml\"\n";
    let b = "version = 1\nextends = \"policy.toml\"\n";
    let Err(e) = load(None, a, &[(".agentd/b.toml", b), (REPO, a)], &[]) else {
        panic!("cycle accepted")
    };
    assert!(
        e.diagnostics()
            .iter()
            .any(|d| d.kind == K::Extends && d.message.contains("cycle")),
        "{e}"
    );
}

#[test]
fn extends_relative_path() {
    let base = "version = 1\nextends = \"strict\"\n[resources]\npids = 300\n";
    let p = load(
        None,
        "version = 1\nextends = \"base.toml\"\n",
        &[(".agentd/base.toml", base)],
        &[],
    )
    .unwrap();
    let files: Vec<&str> = p.layers.iter().map(|l| l.file.as_str()).collect();
    assert_eq!(
        files,
        [
            "built-in host defaults",
            "profile:default",
            "profile:strict",
            ".agentd/base.toml",
            REPO
        ]
    );
    assert_eq!(p.session.pids.value, 300);
    assert_eq!(p.session.memory.value.to_string(), "2GiB");
}

#[test]
fn same_pattern_two_intents_is_a_contradiction() {
    let text = "version = 1\n[[intent]]\nname = \"a\"\nmatch = [\"make\"]\nmemory = \"1G\"\n[[intent]]\nname = \"b\"\nmatch = [\"make  \"]\nmemory = \"2G\"\n";
    let d = one_error(text);
    assert_diag(
        &d,
        K::Contradiction,
        ".agentd/policy.toml:8:10",
        "also matched by rule `a`",
    );
}

#[test]
fn call_limit_above_session_limit_in_one_file() {
    let d =
        one_error("version = 1\n[resources]\nmemory = \"1G\"\n[resources.call]\nmemory = \"2G\"\n");
    assert_diag(
        &d,
        K::Contradiction,
        ".agentd/policy.toml:5:10",
        "larger than the session's own limit (1GiB)",
    );
}

#[test]
fn env_allowed_and_denied_in_one_file() {
    let d = one_error("version = 1\n[session]\nenv = [\"PATH\", \"FOO\"]\nenv_deny = [\"FOO\"]\n");
    assert_diag(
        &d,
        K::Contradiction,
        ".agentd/policy.toml:4:13",
        "`FOO` is both allowed and denied",
    );
}

#[test]
fn filesystem_rules_validated_then_refused() {
    let text = "version = 1\n[filesystem]\nread_only = [\"/etc\"]\nread_write = [\"/etc\", \"relative\"]\n";
    let d = errors(None, text);
    assert_diag(
        &d[0],
        K::NotEnforced,
        ".agentd/policy.toml:3:13",
        "`filesystem.read_only` is not enforced by this build",
    );
    assert_diag(
        &d[1],
        K::Contradiction,
        ".agentd/policy.toml:4:15",
        "`/etc` is also listed in `filesystem.read_only`",
    );
    assert_diag(
        &d[2],
        K::Invalid,
        ".agentd/policy.toml:4:23",
        "path `relative` is not absolute",
    );
    assert_diag(
        &d[3],
        K::NotEnforced,
        ".agentd/policy.toml:4:14",
        "`filesystem.read_write` is not enforced",
    );
    assert_eq!(d.len(), 4);
}

#[test]
fn empty_filesystem_lists_and_network_off_are_accepted() {
    plan(
        "version = 1\n[filesystem]\nread_only = []\n[network]\nenabled = false\nallow = []\n[undo]\ncheckpoint = \"off\"\n[exec]\n[capabilities]\n[secrets]\n",
    );
}

#[test]
fn repo_enabling_network_is_refused_naming_the_host_cap() {
    let host = "version = 1\n[network.max]\nenabled = false\n";
    let d = errors(Some(host), "version = 1\n[network]\nenabled = true\n");
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_diag(
        &d[0],
        K::ExceedsHostCap,
        ".agentd/policy.toml:3:11",
        "exceeds the host cap: host policy /etc/agentd/policy.toml: network.max.enabled = false",
    );
}

#[test]
fn network_allowlist_validated() {
    let d = errors(
        None,
        "version = 1\n[network]\nallow = [\"ok.example:443\", \"bad host\", \"x:99999\", \"@crates\", \"@nope\"]\n",
    );
    let msgs: Vec<String> = d
        .iter()
        .map(|d| format!("{}:{} {}", d.line, d.column, d.message))
        .collect();
    assert_eq!(
        msgs,
        [
            "3:28 `bad host` is not a domain",
            "3:40 bad port `99999` in `x:99999`",
            "3:62 unknown registry set `@nope` (known: @crates, @pypi, @npm, @debian, @go)",
        ]
    );
}

#[test]
fn network_rules_resolve_deny_over_allow_with_positions() {
    use agentd_policy::{Dest, NetEffect};
    let p = plan_with(
        OPEN_NETWORK_HOST,
        "version = 1\n[network]\nenabled = true\nallow = [\"*.ex.com\", \"10.77.0.0/24:8080\"]\ndeny = [\"evil.ex.com:*\"]\n[[network.grant]]\nmatch = [\"pip install\"]\nallow = [\"@pypi\"]\n",
    );
    let n = &p.session.network;
    let none: Option<&[&str]> = None;
    assert_eq!(
        n.decide(Dest::Name("a.ex.com"), 443, none).effect,
        NetEffect::Allow
    );
    let d = n.decide(Dest::Name("evil.ex.com"), 443, none);
    assert_eq!(d.effect, NetEffect::Deny);
    assert!(d.rule.contains(".agentd/policy.toml:5:9"), "{}", d.rule);
    assert!(!n.resolvable("evil.ex.com"));
    assert!(n.upstream_addr("10.77.0.5".parse().unwrap()).is_ok());
    assert!(n.upstream_addr("10.78.0.5".parse().unwrap()).is_err());
    assert_eq!(
        n.decide(Dest::Name("pypi.org"), 443, Some(&["pip", "install", "x"]))
            .effect,
        NetEffect::Allow
    );
    assert_eq!(
        n.decide(Dest::Name("pypi.org"), 443, Some(&["curl"]))
            .effect,
        NetEffect::Deny
    );
}

#[test]
fn network_ask_resolves_within_the_host_caps_and_net_capabilities_join_it() {
    use agentd_policy::{Dest, NetEffect};
    // Within the caps: accepted, and it beats an allow of the same name.
    let p = plan_with(
        OPEN_NETWORK_HOST,
        "version = 1\n[network]\nenabled = true\nallow = [\"*.ex.com\"]\nask = [\"a.ex.com\"]\n[capabilities]\n\"net:b.ex.com:443\" = { effect = \"ask\" }\n\"net:c.ex.com:*\" = { effect = \"deny\" }\n[approvals]\ntimeout = \"3s\"\n",
    );
    let n = &p.session.network;
    let none: Option<&[&str]> = None;
    let a = n.decide(Dest::Name("a.ex.com"), 443, none);
    assert_eq!(a.effect, NetEffect::Ask);
    assert!(a.rule.contains(".agentd/policy.toml:5:8"), "{}", a.rule);
    let b = n.decide(Dest::Name("b.ex.com"), 443, none);
    assert_eq!(b.effect, NetEffect::Ask, "{b}");
    assert!(
        b.rule.contains("capabilities.\"net:b.ex.com:443\""),
        "{}",
        b.rule
    );
    assert_eq!(
        n.decide(Dest::Name("b.ex.com"), 80, none).effect,
        NetEffect::Allow
    );
    assert_eq!(
        n.decide(Dest::Name("c.ex.com"), 443, none).effect,
        NetEffect::Deny
    );
    assert_eq!(p.approvals.timeout_s, 3);
    // Outside the built-in caps: refused like an allow rule would be.
    let d = one_error("version = 1\n[network]\nenabled = true\nask = [\"ex.com\"]\n");
    assert_eq!(d.kind, K::ExceedsHostCap, "{}", d.message);
    assert_eq!((d.line, d.column), (4, 8));
    let d = one_error("version = 1\n[network]\nenabled = true\ndeny = [\"10.0.0.1/8\"]\n");
    assert!(d.message.contains("host bits set"), "{}", d.message);
    assert_eq!((d.line, d.column), (4, 9));
    let d = one_error("version = 1\n[approvals]\ntimeout = \"2h\"\n");
    assert!(d.message.contains("outside 1s to 1h"), "{}", d.message);
    assert_eq!((d.line, d.column), (3, 11));
}

/// `network.idle_timeout` closes idle relays: default 15 minutes, a policy's value within
/// 1s to 24h, anything else refused at its position.
#[test]
fn network_idle_timeout_defaults_is_set_and_bounded() {
    let p = plan("version = 1\n[network]\nenabled = true\nallow = [\"@crates\"]\n");
    assert_eq!(p.session.network.idle_timeout_s, 900);
    let p = plan(
        "version = 1\n[network]\nenabled = true\nallow = [\"@crates\"]\nidle_timeout = \"90s\"\n",
    );
    assert_eq!(p.session.network.idle_timeout_s, 90);
    let d = one_error("version = 1\n[network]\nenabled = true\nidle_timeout = \"2d\"\n");
    assert!(d.message.contains("outside 1s to 24h"), "{}", d.message);
    assert_eq!((d.line, d.column), (4, 16));
    let d = one_error("version = 1\n[network]\nenabled = true\nidle_timeout = \"soon\"\n");
    assert_eq!((d.line, d.column), (4, 16), "{}", d.message);
}

/// The built-in host defaults let a session turn the network on but a repo name only the
/// shipped registry sets: an arbitrary name or a private address (a cloud metadata service)
/// needs the host admin.
#[test]
fn builtin_host_bounds_repo_network_rules_to_the_registry_sets() {
    use agentd_policy::{Dest, NetEffect};
    let p = plan("version = 1\n[network]\nenabled = true\nallow = [\"@crates\", \"@go\"]\n");
    let none: Option<&[&str]> = None;
    assert_eq!(
        p.session
            .network
            .decide(Dest::Name("crates.io"), 443, none)
            .effect,
        NetEffect::Allow
    );
    let d = errors(
        None,
        "version = 1\n[network]\nenabled = true\nallow = [\"evil.com\", \"169.254.169.254/32:80\"]\n",
    );
    assert_eq!(d.len(), 2, "{d:#?}");
    for (e, what) in d.iter().zip(["evil.com", "169.254.169.254/32:80"]) {
        assert_eq!(e.kind, K::ExceedsHostCap, "{e}");
        assert!(e.message.contains(what), "{}", e.message);
        assert!(e.message.contains("network.max.allow"), "{}", e.message);
    }
}

#[test]
fn host_max_allow_bounds_repo_rules() {
    let host = "version = 1\n[network.max]\nenabled = true\nallow = [\"*.corp.example\"]\n";
    let d = errors(
        Some(host),
        "version = 1\n[network]\nenabled = true\nallow = [\"git.corp.example\", \"evil.com\"]\n",
    );
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(d[0].kind, K::ExceedsHostCap);
    assert!(d[0].message.contains("evil.com"), "{}", d[0].message);
}

#[test]
fn workspace_disk_quota_resolves_within_the_host_cap() {
    let p = plan("version = 1\n[resources]\ndisk = \"2GiB\"\n");
    let disk = p.session.disk.as_ref().unwrap();
    assert_eq!(disk.value.0, 2 << 30);
    assert_eq!(disk.from.line, 3);
    // No layer sets it: the default (the daemon's 256 MiB), unless the host caps lower.
    assert!(plan("version = 1\n").session.disk.is_none());
    let host = "version = 1\n[resources.max]\ndisk = \"64MiB\"\n";
    let capped = load(Some(host), "version = 1\n", &[], &[]).unwrap();
    assert_eq!(capped.session.disk.unwrap().value.0, 64 << 20);
    let d = errors(Some(host), "version = 1\n[resources]\ndisk = \"10GiB\"\n");
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_diag(
        &d[0],
        K::ExceedsHostCap,
        ".agentd/policy.toml:3:8",
        "resources.max.disk",
    );
}

#[test]
fn workspace_disk_quota_below_a_filesystem_is_refused_at_its_line() {
    let d = one_error("version = 1\n[resources]\ndisk = \"4KiB\"\n");
    assert_diag(
        &d,
        K::Invalid,
        ".agentd/policy.toml:3:8",
        "`resources.disk = 4KiB` is below the minimum of 1 MiB",
    );
}

#[test]
fn capabilities_validated_and_refused() {
    // A bad resource, a kind without a mechanism (fs, exec, secret: fail closed), lifetimes
    // not enforced, a `net:` allow (allow lists are network.allow), a wildcard-everything.
    let text = "version = 1\n[capabilities]\n\"net:api.github.com:443\" = { effect = \"ask\", one_shot = true, ttl = \"10m\" }\n\"disk:/x\" = { effect = \"allow\" }\n\"fs:/repo/**:write\" = { effect = \"allow\" }\n\"exec:/usr/bin/git\" = { effect = \"deny\" }\n\"net:x.ex.com\" = { effect = \"allow\" }\n\"fs:/**:write\" = { effect = \"deny\" }\n";
    let d = errors(Some(OPEN_NETWORK_HOST), text);
    let mut kinds: Vec<(K, usize, usize)> = d.iter().map(|d| (d.kind, d.line, d.column)).collect();
    kinds.sort_by_key(|k| (k.1, k.2));
    assert_eq!(
        kinds,
        [
            (K::NotEnforced, 3, 57),
            (K::NotEnforced, 3, 69),
            (K::Invalid, 4, 13),
            (K::NotEnforced, 5, 23),
            (K::NotEnforced, 6, 23),
            (K::Invalid, 7, 29),
            (K::Invalid, 8, 18),
        ],
        "{d:#?}"
    );
    let msg = |line| {
        d.iter()
            .find(|x| x.line == line)
            .map(|x| x.message.clone())
            .unwrap()
    };
    assert!(msg(4).contains("`disk:/x`: unknown kind"), "{}", msg(4));
    assert!(
        msg(5).contains("`capabilities.fs` is not enforced"),
        "{}",
        msg(5)
    );
    assert!(
        msg(6).contains("`capabilities.exec` is not enforced"),
        "{}",
        msg(6)
    );
    assert!(msg(7).contains("may deny or ask, not allow"), "{}", msg(7));
    assert!(msg(8).contains("covers every fs resource"), "{}", msg(8));
}

#[test]
fn secrets_validated_and_refused() {
    let text = "version = 1\n[secrets.GITHUB_TOKEN]\nsource = \"vault:x\"\ncommands = [\"git push\"]\ndomains = [\"api.github.com\"]\n";
    let d = errors(None, text);
    assert_diag(
        &d[0],
        K::Invalid,
        ".agentd/policy.toml:3:10",
        "bad secret source `vault:x`",
    );
    assert_eq!(d[1].kind, K::NotEnforced);
    assert_eq!(d.len(), 2);
}

#[test]
fn undo_keys_are_enforced_and_checked_at_their_line_and_column() {
    // Unset: no `undo` in the plan (journalled plans of older sessions stay equal).
    assert!(plan("version = 1\n").session.undo.is_none());
    let u = plan("version = 1\n[undo]\ncheckpoint = \"per-call\"\nretention = \"7d\"\nkeep = 50\n")
        .session
        .undo
        .unwrap();
    assert_eq!(
        u,
        agentd_policy::UndoPlan {
            per_call: true,
            keep: Some(50),
            retention_s: Some(7 * 86400)
        }
    );
    let u = plan("version = 1\n[undo]\ncheckpoint = \"off\"\n")
        .session
        .undo
        .unwrap();
    assert!(!u.per_call && u.keep.is_none());
    let u = plan("version = 1\n[undo]\nkeep = 100000\n")
        .session
        .undo
        .unwrap();
    assert!(u.per_call && u.keep == Some(100_000));
    let d = errors(
        None,
        "version = 1\n[undo]\ncheckpoint = \"off\"\nretention = \"7d\"\n",
    );
    assert_eq!(d.len(), 1, "{d:?}");
    assert_diag(
        &d[0],
        K::Contradiction,
        ".agentd/policy.toml:4:13",
        "checkpoints are off",
    );
    let d = one_error("version = 1\n[undo]\nkeep = 0\n");
    assert_diag(&d, K::Invalid, ".agentd/policy.toml:3:8", "out of range");
    let d = one_error("version = 1\n[undo]\nkeep = 100001\n");
    assert_diag(&d, K::Invalid, ".agentd/policy.toml:3:8", "1 to 100000");
    let d = one_error("version = 1\n[undo]\nretention = \"soon\"\n");
    assert_eq!(d.line, 3, "{d:?}");
    let d = one_error("version = 1\n[undo]\ncheckpoint = \"always\"\n");
    assert_eq!(d.line, 3, "{d:?}");
}

#[test]
fn exec_rules_not_enforced_and_contradiction() {
    let d = errors(
        None,
        "version = 1\n[exec]\nallow = [\"git\"]\ndeny = [\"sudo\", \"git\"]\n",
    );
    let got: Vec<(K, usize, usize)> = d.iter().map(|d| (d.kind, d.line, d.column)).collect();
    assert_eq!(
        got,
        [
            (K::NotEnforced, 3, 9),
            (K::NotEnforced, 4, 8),
            (K::Contradiction, 4, 17)
        ]
    );
}

#[test]
fn session_workspace_and_root() {
    let d = one_error("version = 1\n[session]\nworkspace = \"copy\"\n");
    assert_diag(
        &d,
        K::NotEnforced,
        ".agentd/policy.toml:3:13",
        "`session.workspace` is not enforced",
    );
    let d = one_error("version = 1\n[session]\nroot = \"oci:/bundles/x\"\n");
    assert_diag(
        &d,
        K::NotEnforced,
        ".agentd/policy.toml:3:8",
        "`session.root` is not enforced",
    );
    let d = one_error("version = 1\n[session]\nroot = \"vm\"\n");
    assert_diag(
        &d,
        K::Invalid,
        ".agentd/policy.toml:3:8",
        "unknown root `vm`",
    );
    plan("version = 1\n[session]\nworkspace = \"overlay\"\nroot = \"host\"\n");
}

#[test]
fn caps_are_host_only() {
    let d = one_error("version = 1\n[resources.max]\nmemory = \"64GiB\"\n");
    assert_eq!(d.kind, K::HostOnly);
    assert_eq!((d.line, d.column), (2, 1), "{d}");
    assert!(
        d.message
            .contains("`resources.max` may only be set by the host policy")
    );
}

#[test]
fn rule_that_sets_nothing() {
    let d = one_error("version = 1\n[[intent]]\nname = \"x\"\nmatch = [\"x\"]\n");
    assert_diag(
        &d,
        K::Invalid,
        ".agentd/policy.toml:2:1",
        "intent rule `x` sets nothing",
    );
}

#[test]
fn zero_pids_and_duplicate_rule_names() {
    let d = one_error("version = 1\n[[intent]]\nname = \"x\"\nmatch = [\"x\"]\npids = 0\n");
    assert_diag(
        &d,
        K::Invalid,
        ".agentd/policy.toml:5:8",
        "`intent.pids` must be at least 1",
    );
    let d = one_error(
        "version = 1\n[[intent]]\nname = \"x\"\nmatch = [\"x\"]\npids = 5\n[[intent]]\nname = \"x\"\nmatch = [\"y\"]\npids = 5\n",
    );
    assert_diag(
        &d,
        K::Invalid,
        ".agentd/policy.toml:7:8",
        "duplicate intent rule name `x`",
    );
}

#[test]
fn rule_examples_are_checked() {
    let text = "version = 1\n[[intent]]\nname = \"t\"\nmatch = [\"cargo test\"]\nmemory = \"2G\"\nexamples = [\"cargo test -q\", \"cargo build\"]\ncounter_examples = [\"cargo testx\", \"cargo test\"]\n";
    let d = errors(None, text);
    assert_eq!(d.len(), 2, "{d:#?}");
    assert_diag(
        &d[0],
        K::Example,
        ".agentd/policy.toml:6:30",
        "example `cargo build` does not match intent rule `t`",
    );
    assert_diag(
        &d[1],
        K::Example,
        ".agentd/policy.toml:7:36",
        "counter-example `cargo test` matches intent rule `t`",
    );
}

#[test]
fn shadowed_rule_example_is_reported() {
    let text = "version = 1\n[[intent]]\nname = \"all-cargo\"\nmatch = [\"cargo\"]\npids = 9\n[[intent]]\nname = \"t\"\nmatch = [\"cargo test\"]\npids = 10\nexamples = [\"cargo test\"]\n";
    let d = one_error(text);
    assert_diag(
        &d,
        K::Example,
        ".agentd/policy.toml:10:13",
        "taken by the earlier rule `all-cargo`",
    );
}

#[test]
fn top_level_examples_are_checked_against_the_plan() {
    let text = "version = 1\n\n[[example]]\ncommand = \"cargo test\"\nintent = \"build\"\nmemory = \"4GiB\"\n";
    let d = one_error(text);
    assert_diag(
        &d,
        K::Example,
        ".agentd/policy.toml:3:1",
        "example `cargo test`: got intent `test-runner`, expected `build`",
    );
}

#[test]
fn env_deny_beats_allow_across_layers() {
    let p = plan("version = 1\n[session]\nenv = [\"PATH\", \"GITHUB_TOKEN\", \"MY_*\"]\n");
    assert!(p.env_allowed("PATH"));
    assert!(p.env_allowed("MY_VAR"));
    assert!(!p.env_allowed("GITHUB_TOKEN"), "host deny *_TOKEN must win");
    assert!(
        !p.env_allowed("HOME"),
        "the repo's allowlist replaces the profile's"
    );
}

#[test]
fn command_line_override_layer() {
    let p = load(
        None,
        "version = 1\n",
        &[],
        &[
            "resources.memory = \"2GiB\"",
            "resources.call.timeout = \"1m\"",
        ],
    )
    .unwrap();
    assert_eq!(p.session.memory.value.to_string(), "2GiB");
    assert_eq!(p.session.memory.from.file, "<command line>");
    assert_eq!(p.call_defaults.timeout.value.to_string(), "1m");
    let Err(e) = load(None, "version = 1\n", &[], &["resources.memory = 2GiB"]) else {
        panic!()
    };
    let d = &e.diagnostics()[0];
    assert_eq!(
        (d.file.as_str(), d.line, d.column),
        ("<command line>", 1, 20),
        "{d}"
    );
}
