//! A private apt configuration under `target/`, so that xtask can reach suites the host's apt
//! sources do not list (trixie, trixie-backports, <host>-backports) without changing them.
//!
//! The archive mirror is taken from the host's own apt sources (or `AGENTD_DEBIAN_MIRROR`), so
//! no host name is baked into the project.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::run::{output, status};

/// Keyring that signs Debian's main archive (bookworm's keyring also carries trixie's keys).
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// A private apt state directory: its own sources, lists and cache.
#[derive(Debug)]
pub struct PrivateApt {
    dir: PathBuf,
    /// Use the host's dpkg status (true: installing on the host) or an empty one (downloads).
    host_status: bool,
    /// Also read the host's sources.list.d (installs need the host's suites and updates).
    host_parts: bool,
}

impl PrivateApt {
    /// An apt configuration for downloading packages of `suites` (e.g. kernels) without regard
    /// for what the host has installed.
    pub fn for_downloads(dir: &Path, suites: &[&str]) -> Result<PrivateApt> {
        let apt = PrivateApt {
            dir: dir.to_path_buf(),
            host_status: false,
            host_parts: false,
        };
        apt.write_sources(suites)?;
        Ok(apt)
    }

    /// An apt configuration for installing on the host: the host's sources plus `suites`.
    pub fn for_installs(dir: &Path, suites: &[&str]) -> Result<PrivateApt> {
        let apt = PrivateApt {
            dir: dir.to_path_buf(),
            host_status: true,
            host_parts: true,
        };
        apt.write_sources(suites)?;
        Ok(apt)
    }

    fn write_sources(&self, suites: &[&str]) -> Result<()> {
        let mirror = debian_mirror()?;
        for sub in ["lists/partial", "cache/archives/partial", "parts"] {
            fs::create_dir_all(self.dir.join(sub))
                .with_context(|| format!("creating {}", self.dir.join(sub).display()))?;
        }
        let mut list = String::new();
        for suite in suites {
            list.push_str(&format!(
                "deb [signed-by={KEYRING}] {mirror} {suite} main\n"
            ));
        }
        fs::write(self.dir.join("sources.list"), list)?;
        if !self.host_status {
            fs::write(self.dir.join("status"), "")?;
        }
        Ok(())
    }

    /// The `-o` options that point apt at this configuration.
    fn options(&self) -> Vec<String> {
        let d = self.dir.display();
        let mut o = vec![
            format!("-oDir::Etc::SourceList={d}/sources.list"),
            format!("-oDir::State::Lists={d}/lists"),
            format!("-oDir::Cache={d}/cache"),
            // apt's sandbox user cannot read target/; we run as root for these downloads.
            "-oAPT::Sandbox::User=root".to_string(),
        ];
        if !self.host_parts {
            o.push(format!("-oDir::Etc::SourceParts={d}/parts"));
        }
        if !self.host_status {
            o.push(format!("-oDir::State::Status={d}/status"));
            o.push("-oDebug::NoLocking=1".to_string());
        }
        o
    }

    fn apt(&self, tool: &str) -> Command {
        let mut cmd = Command::new(tool);
        cmd.args(self.options())
            .env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }

    /// `apt-get update` of the private lists.
    pub fn update(&self) -> Result<()> {
        status(self.apt("apt-get").args(["-qq", "update"]))
    }

    /// The version of `package` offered by `suite`, from `apt-cache madison`.
    pub fn version_in_suite(&self, package: &str, suite: &str) -> Result<String> {
        let out = output(self.apt("apt-cache").args(["madison", package]))?;
        let wanted = format!(" {suite}/main ");
        for line in out.lines() {
            let cols: Vec<&str> = line.split('|').map(str::trim).collect();
            if cols.len() == 3 && format!(" {} ", cols[2]).contains(&wanted) {
                return Ok(cols[1].to_string());
            }
        }
        bail!("apt offers no {package} in {suite} (apt-cache madison said:\n{out})")
    }

    /// The `Depends:` package names of `package=version`.
    pub fn depends(&self, package: &str, version: &str) -> Result<Vec<String>> {
        let out = output(
            self.apt("apt-cache")
                .args(["show", "--no-all-versions"])
                .arg(format!("{package}={version}")),
        )?;
        let line = out
            .lines()
            .find_map(|l| l.strip_prefix("Depends:"))
            .unwrap_or_default();
        Ok(line
            .split([',', '|'])
            .filter_map(|d| d.split_whitespace().next())
            .map(str::to_string)
            .collect())
    }

    /// Downloads `package=version` into `dest` and returns the .deb's path.
    pub fn download(&self, package: &str, version: &str, dest: &Path) -> Result<PathBuf> {
        fs::create_dir_all(dest)?;
        let before = debs_in(dest)?;
        status(
            self.apt("apt-get")
                .current_dir(dest)
                .args(["-qq", "download"])
                .arg(format!("{package}={version}")),
        )?;
        let new: Vec<PathBuf> = debs_in(dest)?
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        match new.as_slice() {
            [one] => Ok(one.clone()),
            _ => bail!(
                "apt-get download {package}={version} left {new:?} in {}",
                dest.display()
            ),
        }
    }

    /// Installs `packages` from `suite` on the host (pinned: `-t suite`).
    pub fn install(&self, suite: &str, packages: &[&str]) -> Result<()> {
        status(
            self.apt("apt-get")
                .args([
                    "-y",
                    "-qq",
                    "--no-install-recommends",
                    "install",
                    "-t",
                    suite,
                ])
                .args(packages),
        )
    }
}

fn debs_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "deb") {
            v.push(p);
        }
    }
    Ok(v)
}

/// The Debian archive URI the host's apt already uses (`AGENTD_DEBIAN_MIRROR` overrides).
pub fn debian_mirror() -> Result<String> {
    if let Ok(m) = std::env::var("AGENTD_DEBIAN_MIRROR") {
        return Ok(m);
    }
    let mut texts = Vec::new();
    if let Ok(t) = fs::read_to_string("/etc/apt/sources.list") {
        texts.push(t);
    }
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        for e in rd.flatten() {
            let p = e.path();
            let n = p.to_string_lossy();
            if n.ends_with(".sources") || n.ends_with(".list") {
                texts.push(fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }
    texts.iter().find_map(|t| mirror_in(t)).context(
        "no Debian archive URI (…/debian) in the host's apt sources; set AGENTD_DEBIAN_MIRROR",
    )
}

/// Finds a `…/debian` archive URI in one-line (`deb URI suite`) or deb822 (`URIs:`) syntax.
fn mirror_in(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| {
            let rest = l
                .strip_prefix("URIs:")
                .or_else(|| l.strip_prefix("deb "))
                .unwrap_or("");
            rest.split_whitespace()
                .filter(|w| !w.starts_with('['))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .find(|u| {
            (u.starts_with("http://") || u.starts_with("https://"))
                && u.trim_end_matches('/').ends_with("/debian")
        })
}

/// The host's Debian codename (`bookworm`), from /etc/os-release.
pub fn host_codename() -> Result<String> {
    let text = fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
        .context("/etc/os-release has no VERSION_CODENAME: xtask deps supports Debian hosts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mirror_in_deb822_and_one_line_sources() {
        let deb822 = "Types: deb\n# URIs: http://old.example/debian\nURIs: http://m.example/debian\nSuites: bookworm\n";
        assert_eq!(
            mirror_in(deb822).as_deref(),
            Some("http://m.example/debian")
        );
        let one = "deb [arch=amd64] http://m.example/debian/ bookworm main\n";
        assert_eq!(mirror_in(one).as_deref(), Some("http://m.example/debian/"));
        let security_only = "URIs: http://m.example/debian-security\n";
        assert_eq!(mirror_in(security_only), None);
    }
}
