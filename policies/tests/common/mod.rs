//! Shared helpers for the policy tests: in-memory files, a host policy at the default path.
// Test helpers panic on purpose: a failed expectation is a failed test.
#![allow(dead_code, clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use agentd_policy::{Diagnostic, DiagnosticKind, FileKind, LoadOptions, MemFs, Plan, PolicyError};

pub const REPO: &str = ".agentd/policy.toml";
pub const HOST: &str = "/etc/agentd/policy.toml";

pub fn fs(files: &[(&str, &str)]) -> MemFs {
    MemFs(
        files
            .iter()
            .map(|(p, t)| (PathBuf::from(p), t.to_string()))
            .collect(),
    )
}

/// Resolve `repo` text as `.agentd/policy.toml`, with an optional host policy and extra files.
pub fn load(
    host: Option<&str>,
    repo: &str,
    extra: &[(&str, &str)],
    overrides: &[&str],
) -> Result<Plan, PolicyError> {
    let mut files: Vec<(&str, &str)> = extra.to_vec();
    if let Some(h) = host {
        files.push((HOST, h));
    }
    let opts = LoadOptions {
        overrides: overrides.iter().map(|s| s.to_string()).collect(),
        ..LoadOptions::default()
    };
    agentd_policy::load(&fs(&files), &opts, Some((REPO, repo)))
}

pub fn plan(repo: &str) -> Plan {
    match load(None, repo, &[], &[]) {
        Ok(p) => p,
        Err(e) => panic!("expected a valid policy, got:\n{e}"),
    }
}

/// Resolve `repo` under the host policy `host` (must be valid).
pub fn plan_with(host: &str, repo: &str) -> Plan {
    match load(Some(host), repo, &[], &[]) {
        Ok(p) => p,
        Err(e) => panic!("expected a valid policy, got:\n{e}"),
    }
}

/// A host policy letting lower layers allow any network rule.
pub const OPEN_NETWORK_HOST: &str = "version = 1\n[network.max]\nenabled = true\nallow = [\"*\"]\n";

pub fn errors(host: Option<&str>, repo: &str) -> Vec<Diagnostic> {
    match load(host, repo, &[], &[]) {
        Ok(_) => panic!("expected the policy to be refused"),
        Err(e) => e.diagnostics().to_vec(),
    }
}

/// The single diagnostic for `repo` (fails if there is not exactly one).
pub fn one_error(repo: &str) -> Diagnostic {
    let d = errors(None, repo);
    assert_eq!(d.len(), 1, "expected one error, got: {d:#?}");
    d.into_iter().next().unwrap()
}

/// Assert kind, `file:line:column` and a message fragment.
pub fn assert_diag(d: &Diagnostic, kind: DiagnosticKind, at: &str, msg: &str) {
    assert_eq!(d.kind, kind, "{d}");
    assert_eq!(format!("{}:{}:{}", d.file, d.line, d.column), at, "{d}");
    assert!(
        d.message.contains(msg),
        "message {:?} lacks {msg:?}",
        d.message
    );
}

pub fn profile_opts() -> LoadOptions {
    LoadOptions {
        file_kind: FileKind::Profile,
        ..LoadOptions::default()
    }
}
