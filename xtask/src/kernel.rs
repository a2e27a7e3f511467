//! Debian kernels for the test VM: resolve the current version through the private apt
//! configuration, download and cache the packages by version under `target/vm/`, and extract
//! the image, its config and the modules the VM's init loads.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};

use crate::apt::PrivateApt;
use crate::run::status;

/// Which kernel the VM boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Flavour {
    /// Debian trixie-backports cloud kernel: sched_ext, BPF LSM, Landlock, virtiofs built in.
    SchedExt,
    /// Debian trixie cloud kernel 6.12: no sched_ext, for degraded modes.
    Fallback,
}

impl Flavour {
    pub const ALL: [Flavour; 2] = [Flavour::SchedExt, Flavour::Fallback];

    /// The name on the command line and in the VM marker (agentd-tests reads it).
    pub fn name(self) -> &'static str {
        match self {
            Flavour::SchedExt => "sched-ext",
            Flavour::Fallback => "fallback",
        }
    }

    fn suite(self) -> &'static str {
        match self {
            Flavour::SchedExt => "trixie-backports",
            Flavour::Fallback => "trixie",
        }
    }
}

/// Modules the VM init loads when the kernel builds them as modules, with their config symbol:
/// overlayfs for workspaces, loop for the session layers' disk images, veth for network
/// tests, virtio_blk for the VM's scratch disk (a real disk for those images).
const MODULES: &[(&str, &str)] = &[
    ("overlay", "CONFIG_OVERLAY_FS"),
    ("loop", "CONFIG_BLK_DEV_LOOP"),
    ("veth", "CONFIG_VETH"),
    ("virtio_blk", "CONFIG_VIRTIO_BLK"),
];

/// The metapackage that names the current cloud kernel of a suite.
const METAPACKAGE: &str = "linux-image-cloud-amd64";

/// A kernel ready to boot.
#[derive(Debug, Clone)]
pub struct KernelImage {
    /// `uname -r` of the kernel, e.g. `7.3.4+deb13-cloud-amd64`.
    pub version: String,
    pub vmlinuz: PathBuf,
    /// Uncompressed modules in load order (dependencies first).
    pub modules: Vec<PathBuf>,
}

/// Resolves, downloads (cached by version) and extracts the kernel of `flavour`.
pub fn prepare(workspace: &Path, flavour: Flavour) -> Result<KernelImage> {
    let vm_dir = workspace.join("target/vm");
    let apt = PrivateApt::for_downloads(&vm_dir.join("apt"), &["trixie", "trixie-backports"])?;
    refresh_lists(&apt, &vm_dir.join("apt/lists"))?;
    let meta_version = apt.version_in_suite(METAPACKAGE, flavour.suite())?;
    let image_pkg = apt
        .depends(METAPACKAGE, &meta_version)?
        .into_iter()
        .find(|d| d.starts_with("linux-image-") && d != METAPACKAGE)
        .with_context(|| format!("{METAPACKAGE}={meta_version} depends on no linux-image-*"))?;
    let kver = image_pkg
        .strip_prefix("linux-image-")
        .unwrap_or(&image_pkg)
        .to_string();
    let dest = vm_dir.join("kernels").join(&kver);
    let stamp = dest.join("ready");
    // The stamp names the module set too: a kernel extracted for fewer modules is redone.
    let names: Vec<&str> = MODULES.iter().map(|(m, _)| *m).collect();
    let want = format!("{meta_version} {}", names.join(","));
    if fs::read_to_string(&stamp).ok().as_deref() != Some(want.as_str()) {
        eprintln!(
            "vm: fetching kernel {kver} ({} {meta_version})",
            flavour.suite()
        );
        let debs_dir = vm_dir.join("debs");
        // The image package either carries everything (6.12) or splits the binary, the
        // modules and the config into sibling packages of the same version (7.x).
        let mut packages = vec![image_pkg.clone()];
        for dep in apt.depends(&image_pkg, &meta_version)? {
            if ["linux-binary-", "linux-modules-", "linux-base-"]
                .iter()
                .any(|p| dep.starts_with(p) && dep.ends_with(&kver))
            {
                packages.push(dep);
            }
        }
        if dest.exists() {
            fs::remove_dir_all(&dest)?;
        }
        let tree = dest.join("tree");
        fs::create_dir_all(&tree)?;
        for p in &packages {
            let deb = cached_download(&apt, p, &meta_version, &debs_dir)?;
            status(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
        }
        extract(&tree, &kver, &dest)?;
        fs::remove_dir_all(&tree)?;
        fs::write(&stamp, &want)?;
    }
    let order = fs::read_to_string(dest.join("modules.order")).unwrap_or_default();
    Ok(KernelImage {
        version: kver,
        vmlinuz: dest.join("vmlinuz"),
        modules: order
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| dest.join("modules").join(l))
            .collect(),
    })
}

/// `apt-get update` unless the lists are fresh (an hour); versions rotate on backports, so
/// they are re-resolved often, but not on every boot.
fn refresh_lists(apt: &PrivateApt, lists: &Path) -> Result<()> {
    let fresh = fs::read_dir(lists)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with("_Packages"))
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .any(|m| {
            SystemTime::now()
                .duration_since(m)
                .is_ok_and(|age| age < Duration::from_secs(3600))
        });
    if !fresh {
        apt.update()?;
    }
    Ok(())
}

fn cached_download(apt: &PrivateApt, pkg: &str, version: &str, dir: &Path) -> Result<PathBuf> {
    // apt names files <pkg>_<version with ':' as %3a>_<arch>.deb
    let prefix = format!("{pkg}_{}_", version.replace(':', "%3a"));
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                return Ok(e.path());
            }
        }
    }
    apt.download(pkg, version, dir)
}

/// Copies vmlinuz and the wanted modules (decompressed, with their dependencies) out of the
/// extracted packages.
fn extract(tree: &Path, kver: &str, dest: &Path) -> Result<()> {
    let moddir = tree.join("usr/lib/modules").join(kver);
    let vmlinuz = [
        tree.join("boot").join(format!("vmlinuz-{kver}")),
        moddir.join("vmlinuz"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .with_context(|| format!("no vmlinuz for {kver} in the packages"))?;
    fs::copy(&vmlinuz, dest.join("vmlinuz"))?;
    let config_path = [
        tree.join("boot").join(format!("config-{kver}")),
        moddir.join("config"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .with_context(|| format!("no kernel config for {kver} in the packages"))?;
    let config = fs::read_to_string(&config_path)?;
    fs::copy(&config_path, dest.join("config"))?;

    let index = module_index(&moddir.join("kernel"))?;
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for (module, symbol) in MODULES {
        match config_value(&config, symbol) {
            Some("y") => continue,
            Some("m") => add_with_deps(module, &index, &mut seen, &mut order)?,
            _ => bail!("kernel {kver} lacks {symbol} (needed for the {module} module)"),
        }
    }
    fs::create_dir_all(dest.join("modules"))?;
    let mut names = String::new();
    for (name, path) in &order {
        let file = format!("{name}.ko");
        fs::write(dest.join("modules").join(&file), decompress(path)?)?;
        names.push_str(&file);
        names.push('\n');
    }
    fs::write(dest.join("modules.order"), names)?;
    Ok(())
}

fn config_value<'a>(config: &'a str, symbol: &str) -> Option<&'a str> {
    config
        .lines()
        .find_map(|l| l.strip_prefix(symbol)?.strip_prefix('='))
}

/// Module name (dashes as underscores) → file, for every module of the kernel.
fn module_index(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut index = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some((stem, _)) = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.split_once(".ko"))
            {
                index.insert(stem.replace('-', "_"), p.clone());
            }
        }
    }
    Ok(index)
}

fn add_with_deps(
    module: &str,
    index: &BTreeMap<String, PathBuf>,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<(String, PathBuf)>,
) -> Result<()> {
    let key = module.replace('-', "_");
    if !seen.insert(key.clone()) {
        return Ok(());
    }
    let path = index
        .get(&key)
        .with_context(|| format!("module {module} not found in the kernel package"))?;
    for dep in module_depends(&decompress(path)?) {
        add_with_deps(&dep, index, seen, order)?;
    }
    order.push((key, path.clone()));
    Ok(())
}

/// The `depends=` entry of a module's .modinfo section (NUL-separated key=value strings).
fn module_depends(ko: &[u8]) -> Vec<String> {
    ko.split(|b| *b == 0)
        .find_map(|s| s.strip_prefix(b"depends="))
        .map(|d| {
            String::from_utf8_lossy(d)
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn decompress(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else if name.ends_with(".gz") {
        "gzip"
    } else {
        return fs::read(path).with_context(|| format!("reading {name}"));
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("running {tool} (cargo xtask deps installs it)"))?;
    if !out.status.success() {
        bail!("{tool} -dc {name} failed: {}", out.status);
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_module_depends_from_modinfo() {
        let ko = b"\x7fELF....\0license=GPL\0depends=libcrc32c,nf_tables\0name=x\0";
        assert_eq!(module_depends(ko), vec!["libcrc32c", "nf_tables"]);
        assert!(module_depends(b"\0depends=\0").is_empty());
    }

    #[test]
    fn reads_config_values() {
        let c = "CONFIG_OVERLAY_FS=m\nCONFIG_OVERLAY_FS_INDEX=y\n# CONFIG_VETH is not set\n";
        assert_eq!(config_value(c, "CONFIG_OVERLAY_FS"), Some("m"));
        assert_eq!(config_value(c, "CONFIG_VETH"), None);
    }
}
