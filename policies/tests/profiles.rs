//! Shipped profiles: golden plans (insta JSON snapshots), their examples, the honest refusal
//! of `build`, loading by path, the enforcement table's coverage, and the CLI functions.

// Helpers outside #[test] fns may unwrap: a failure is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use agentd_policy::cli;
use agentd_policy::enforcement::{self, Status};
use agentd_policy::{DeclaredIntent, DiagnosticKind as K, LoadOptions, MemFs, PROFILES, RealFs};
use common::*;

fn profile(name: &str) -> Result<agentd_policy::Plan, agentd_policy::PolicyError> {
    let text = PROFILES.iter().find(|(n, _)| *n == name).unwrap().1;
    agentd_policy::load(
        &MemFs::default(),
        &profile_opts(),
        Some((&format!("profile:{name}"), text)),
    )
}

#[test]
fn golden_plan_default() {
    insta::assert_json_snapshot!("default_plan", profile("default").unwrap());
}

#[test]
fn golden_plan_strict() {
    insta::assert_json_snapshot!("strict_plan", profile("strict").unwrap());
}

#[test]
fn golden_plan_ci() {
    insta::assert_json_snapshot!("ci_plan", profile("ci").unwrap());
}

/// `build` declares registry access, enforced by the egress proxy: it checks clean, its
/// network plan names exactly the registry hosts, and everything else is denied.
#[test]
fn golden_plan_build() {
    use agentd_policy::{Dest, NetEffect};
    let plan = profile("build").unwrap();
    let call = plan.call(&["cargo", "build", "--release"], &DeclaredIntent::default());
    assert_eq!(
        (call.rule.as_deref(), call.memory.value.to_string()),
        (Some("heavy-build"), "8GiB".into())
    );
    assert_eq!(call.network, "proxy");
    let net = &plan.session.network;
    let none: Option<&[&str]> = None;
    for host in [
        "crates.io",
        "static.crates.io",
        "pypi.org",
        "files.pythonhosted.org",
        "registry.npmjs.org",
    ] {
        let d = net.decide(Dest::Name(host), 443, none);
        assert_eq!(d.effect, NetEffect::Allow, "{host}: {d}");
        assert!(d.rule.contains("profile:build:"), "{}", d.rule);
    }
    let d = net.decide(Dest::Name("example.com"), 443, none);
    assert_eq!(d.effect, NetEffect::Deny);
    assert_eq!(
        net.decide(Dest::Name("crates.io"), 22, none).effect,
        NetEffect::Deny
    );
    insta::assert_json_snapshot!("build_plan", plan);
}

#[test]
fn a_repo_extending_build_checks_clean_and_may_deny_more() {
    use agentd_policy::{Dest, NetEffect};
    let plan = agentd_policy::load(
        &MemFs::default(),
        &LoadOptions::default(),
        Some((
            "repo.toml",
            "version = 1\nextends = \"build\"\n[network]\ndeny = [\"static.crates.io\"]\n",
        )),
    )
    .unwrap();
    let none: Option<&[&str]> = None;
    let d = plan
        .session
        .network
        .decide(Dest::Name("static.crates.io"), 443, none);
    assert_eq!(d.effect, NetEffect::Deny);
    assert!(d.rule.contains("repo.toml:4:9"), "{}", d.rule);
}

#[test]
fn every_profile_starts_with_who_it_is_for_and_has_examples() {
    for (name, text) in PROFILES {
        let first = text.lines().next().unwrap();
        assert!(
            first.starts_with(&format!("# Profile `{name}` — for ")),
            "{name}: {first}"
        );
        assert!(text.contains("[[example]]"), "{name} has no examples");
        assert!(text.contains("examples = ["), "{name} has no rule examples");
    }
}

#[test]
fn profile_examples_hold_and_broken_examples_are_caught() {
    for name in ["default", "strict", "ci", "build"] {
        profile(name).unwrap();
    }
    // Same profile with one example's expectation changed → refused at that example.
    let text = PROFILES[0].1.replace(
        "command = \"npm ci\"\nintent = \"package-install\"\nmemory = \"2GiB\"",
        "command = \"npm ci\"\nintent = \"package-install\"\nmemory = \"3GiB\"",
    );
    let e = agentd_policy::load(
        &MemFs::default(),
        &profile_opts(),
        Some(("profile:default", &text)),
    )
    .unwrap_err();
    let d = &e.diagnostics()[0];
    assert_eq!(d.kind, K::Example);
    assert_eq!(
        d.message,
        "example `npm ci`: got memory 2GiB, expected 3GiB"
    );
    let line = text
        .lines()
        .position(|l| l == "command = \"npm ci\"")
        .unwrap();
    assert_eq!(
        (d.line, d.column),
        (line, 1),
        "points at the [[example]] header"
    );
}

#[test]
fn profiles_load_by_path_from_a_profile_dir() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
    for (name, text) in PROFILES {
        assert_eq!(
            std::fs::read_to_string(dir.join(format!("{name}.toml"))).unwrap(),
            text
        );
    }
    let opts = LoadOptions {
        profile_dir: Some(dir.clone()),
        ..LoadOptions::default()
    };
    let plan = agentd_policy::load(
        &RealFs,
        &opts,
        Some((REPO, "version = 1\nextends = \"strict\"\n")),
    )
    .unwrap();
    let files: Vec<String> = plan.layers.iter().map(|l| l.file.clone()).collect();
    assert_eq!(files[1], dir.join("default.toml").display().to_string());
    assert_eq!(files[2], dir.join("strict.toml").display().to_string());
}

fn schema_leaves(
    v: &serde_json::Value,
    root: &serde_json::Value,
    prefix: &str,
    out: &mut Vec<String>,
) {
    let resolve = |v: &serde_json::Value| -> serde_json::Value {
        let mut v = v.clone();
        for _ in 0..4 {
            if let Some(r) = v.get("$ref").and_then(|r| r.as_str()) {
                let name = r.rsplit('/').next().unwrap();
                v = root["$defs"][name].clone();
            } else if let Some(inner) = v
                .get("anyOf")
                .and_then(|a| a.as_array())
                .and_then(|a| a.iter().find(|x| x.get("type") != Some(&"null".into())))
            {
                v = inner.clone();
            } else if let Some(items) = v.get("items") {
                v = items.clone();
            } else {
                break;
            }
        }
        v
    };
    let v = resolve(v);
    match v.get("properties").and_then(|p| p.as_object()) {
        Some(props) => {
            for (k, sub) in props {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                schema_leaves(sub, root, &key, out);
            }
        }
        None => out.push(prefix.to_string()),
    }
}

#[test]
fn enforcement_table_covers_every_schema_key() {
    let schema = agentd_policy::json_schema();
    let mut leaves = Vec::new();
    schema_leaves(&schema, &schema, "", &mut leaves);
    assert!(leaves.len() > 40, "{leaves:?}");
    for key in &leaves {
        assert!(
            enforcement::lookup(key).is_some(),
            "schema key `{key}` has no enforcement entry"
        );
    }
    let enforced: Vec<&str> = enforcement::TABLE
        .iter()
        .filter(|e| matches!(e.status, Status::Enforced { .. }))
        .map(|e| e.key)
        .collect();
    insta::assert_json_snapshot!("enforced_keys", enforced);
}

#[test]
fn cli_check_and_explain() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let files = fs(&[
        (REPO, "version = 1\nextends = \"strict\"\n"),
        (HOST, HOST_SMALL),
    ]);
    let opts = LoadOptions::default();
    let out = cli::check(&files, &opts, Path::new(REPO), false);
    assert_eq!(out.code, 0, "{out:?}");
    insta::assert_snapshot!("cli_check", out.stdout);
    let argv: Vec<String> = ["cargo", "test", "-q"].map(String::from).to_vec();
    let out = cli::explain(
        &files,
        &opts,
        Path::new(REPO),
        &argv,
        &DeclaredIntent {
            timeout: Some(agentd_policy::Duration(60)),
            ..Default::default()
        },
        false,
    );
    assert_eq!(out.code, 0);
    insta::assert_snapshot!("cli_explain", out.stdout);
    let out = cli::explain(
        &files,
        &opts,
        Path::new(REPO),
        &argv,
        &DeclaredIntent::default(),
        true,
    );
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["call"]["memory"]["value"], "1GiB");
    assert_eq!(
        v["call"]["memory"]["capped_by"]["origin"]["key"],
        "resources.max.memory"
    );
    // Missing file → exit 2; refused policy → exit 1 with positions.
    assert_eq!(
        cli::check(&files, &opts, Path::new("nope.toml"), false).code,
        2
    );
    let bad = fs(&[
        (REPO, "version = 1\n[resources]\nmemory = \"2GiB\"\n"),
        (HOST, HOST_SMALL),
    ]);
    let out = cli::check(&bad, &opts, Path::new(REPO), false);
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr,
        ".agentd/policy.toml:3:10: error: `resources.memory = 2GiB` exceeds the host cap: host policy /etc/agentd/policy.toml: resources.max.memory = 1GiB\n  hint: a repo policy may tighten but never exceed the host policy; lower it to at most 1GiB\n1 error — the policy is refused\n"
    );
    let out = cli::check(&bad, &opts, Path::new(REPO), true);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["errors"][0]["kind"], "exceeds-host-cap");
    let _ = dir;
}

const HOST_SMALL: &str = "version = 1\n[resources.max]\nmemory = \"1GiB\"\n";

#[test]
fn cli_schema_and_profiles() {
    let out = cli::schema();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["title"], "agentd policy");
    assert!(v["properties"]["resources"].is_object());
    let out = cli::profiles(false);
    assert!(
        out.stdout.contains(
            "network.ask                      enforced by agentd egress proxy + approval queue"
        ),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("capabilities.fs                  NOT enforced"),
        "{}",
        out.stdout
    );
}

#[test]
fn host_policy_check_as_host() {
    let host = "version = 1\n[resources]\nmemory = \"2GiB\"\n[resources.max]\nmemory = \"4GiB\"\n[network.max]\nenabled = false\n";
    let opts = LoadOptions {
        file_kind: agentd_policy::FileKind::Host,
        ..LoadOptions::default()
    };
    let plan = agentd_policy::load(&MemFs::default(), &opts, Some(("host.toml", host))).unwrap();
    assert_eq!(plan.session.memory.value.to_string(), "2GiB");
    assert_eq!(
        plan.session.memory.from.layer,
        agentd_policy::LayerKind::Host
    );
}
