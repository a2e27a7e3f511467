//! Building the project's binaries and privileged test executables through cargo's JSON
//! messages, so the VM gets exact paths whatever the target directory is.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The package whose tests run inside the VM.
pub const PRIVILEGED_TESTS_PACKAGE: &str = "agentd-tests";

/// Builds every workspace binary; returns their paths.
pub fn workspace_binaries() -> Result<Vec<PathBuf>> {
    // Not xtask itself: relinking the running binary would delete the VM's PID 1 from under it.
    executables(
        &["build", "--workspace", "--exclude", "xtask", "--bins"],
        false,
    )
}

/// Builds the binaries `cargo xtask install` ships (release unless `release` is false).
pub fn install_binaries(release: bool) -> Result<Vec<PathBuf>> {
    let mut args = vec!["build", "--workspace", "--exclude", "xtask", "--bins"];
    if release {
        args.push("--release");
    }
    executables(&args, false)
}

/// Builds the privileged test executables; returns their paths.
pub fn privileged_tests() -> Result<Vec<PathBuf>> {
    executables(&["test", "-p", PRIVILEGED_TESTS_PACKAGE, "--no-run"], true)
}

pub(crate) fn executables(args: &[&str], tests: bool) -> Result<Vec<PathBuf>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    if let Some(dir) = vm_visible_target_dir() {
        cmd.env("CARGO_TARGET_DIR", dir);
    }
    let mut child = cmd
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cargo} {}", args.join(" ")))?;
    let stdout = child.stdout.take().context("cargo stdout")?;
    let mut found = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"].as_bool() != Some(tests) {
            continue;
        }
        if let Some(exe) = msg["executable"].as_str() {
            found.push(PathBuf::from(exe));
        }
    }
    let st = child.wait()?;
    if !st.success() {
        bail!("cargo {} failed: {st}", args.join(" "));
    }
    Ok(found)
}

/// A session gets its own /tmp and /run, so binaries the VM tests hand to sessions (the
/// shim that becomes the agent's $SHELL) must not live there. For a checkout under /tmp or
/// /run without an explicit CARGO_TARGET_DIR, build the VM's binaries under /var/tmp.
fn vm_visible_target_dir() -> Option<PathBuf> {
    if std::env::var_os("CARGO_TARGET_DIR").is_some() {
        return None;
    }
    let ws = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .to_path_buf();
    if !(ws.starts_with("/tmp") || ws.starts_with("/run")) {
        return None;
    }
    let name: String = ws
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    Some(PathBuf::from("/var/tmp/agentd-target").join(name))
}

/// Sums libtest's `test result:` lines: (passed, failed, ignored).
pub fn tally(lines: &[String]) -> (u64, u64, u64) {
    let mut t = (0, 0, 0);
    for line in lines {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            continue;
        };
        for part in rest.split([';', '.']) {
            let mut words = part.split_whitespace();
            if let (Some(n), Some(what)) = (words.next(), words.next()) {
                let n: u64 = n.parse().unwrap_or(0);
                match what {
                    "passed" => t.0 += n,
                    "failed" => t.1 += n,
                    "ignored" => t.2 += n,
                    _ => {}
                }
            }
        }
    }
    t
}

/// The names of the failed tests, from libtest's closing `failures:` list (the one right before
/// each `test result:` line), so a long log's summary says which tests to look at.
pub fn failed_tests(lines: &[String]) -> Vec<String> {
    let mut failed = Vec::new();
    let mut listed: Vec<String> = Vec::new();
    let mut in_list = false;
    for line in lines {
        let trimmed = line.trim_end();
        if trimmed == "failures:" {
            listed.clear();
            in_list = true;
        } else if trimmed.trim_start().starts_with("test result: ") {
            failed.append(&mut listed);
            in_list = false;
        } else if in_list {
            let name = trimmed.trim();
            let indented = trimmed.starts_with("    ");
            if indented && !name.is_empty() && !name.contains(char::is_whitespace) {
                listed.push(name.to_string());
            } else if !name.is_empty() {
                // The first `failures:` block holds the captured output, not names.
                listed.clear();
                in_list = false;
            }
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    #[test]
    fn tallies_libtest_summaries() {
        let lines = vec![
            "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 2 filtered out; finished in 0.10s".to_string(),
            "noise".to_string(),
            "test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out".to_string(),
        ];
        assert_eq!(super::tally(&lines), (4, 2, 1));
    }

    #[test]
    fn names_the_failed_tests_from_the_closing_list() {
        let lines: Vec<String> = [
            "test a::ok ... ok",
            "failures:",
            "",
            "---- a::bad stdout ----",
            "    indented output that is not a name",
            "thread 'a::bad' panicked",
            "",
            "failures:",
            "    a::bad",
            "    a::worse",
            "",
            "test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
            "test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(super::failed_tests(&lines), vec!["a::bad", "a::worse"]);
    }
}
