//! OCI bundle roots: `agentd-sandbox run --bundle DIR` reads `DIR/config.json` with the
//! `oci-spec` crate and turns it into a [`SessionPlan`] whose root is the bundle's rootfs
//! (bound read-only) instead of the host root.
//!
//! Fail closed: every key of config.json is checked against the ones this module maps
//! (a key it does not know is an error naming it, so a newer spec's field is never silently
//! ignored), and a field whose value would weaken or change the sandbox's confinement
//! (capabilities, a writable root, no_new_privileges false, uid 0, other id mappings, a
//! seccomp profile, cgroup resources, sysctls, hooks, joining existing namespaces, writable
//! binds, …) is refused with the reason. What the sandbox provides anyway (proc, its own
//! minimal /dev, user/pid/ipc/uts/cgroup/net namespaces) is accepted when the config asks
//! for exactly that.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde_json::Value;

use crate::plan::{BindRo, Rlimit, SessionPlan};

/// Why a bundle cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// config.json could not be read or parsed.
    #[error("{path}: {reason}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A field is not supported (or has a value the sandbox refuses).
    #[error("{path}: {field}: {reason}")]
    Field {
        /// The config file.
        path: PathBuf,
        /// The JSON path of the field (`process.capabilities.bounding`).
        field: String,
        /// Why it is refused.
        reason: String,
    },
}

/// Keys mapped (or checked) per object; anything else is refused.
const TOP: &[&str] = &[
    "ociVersion",
    "root",
    "process",
    "hostname",
    "mounts",
    "linux",
    "annotations",
];
const ROOT: &[&str] = &["path", "readonly"];
const PROCESS: &[&str] = &[
    "terminal",
    "user",
    "args",
    "env",
    "cwd",
    "capabilities",
    "rlimits",
    "noNewPrivileges",
];
const USER: &[&str] = &["uid", "gid", "additionalGids"];
const LINUX: &[&str] = &[
    "namespaces",
    "maskedPaths",
    "readonlyPaths",
    "resources",
    "rootfsPropagation",
];
const RESOURCES: &[&str] = &["devices"];
const MOUNT: &[&str] = &["destination", "type", "source", "options"];

/// Namespaces the sandbox always creates (besides user, which it always adds).
const NAMESPACES: &[(&str, LinuxNamespaceType)] = &[
    ("pid", LinuxNamespaceType::Pid),
    ("network", LinuxNamespaceType::Network),
    ("ipc", LinuxNamespaceType::Ipc),
    ("uts", LinuxNamespaceType::Uts),
    ("mount", LinuxNamespaceType::Mount),
    ("cgroup", LinuxNamespaceType::Cgroup),
];

/// Mount point dirs the bundle's rootfs must have (the sandbox mounts on them; the root is
/// read-only, so they cannot be created).
pub const ROOTFS_DIRS: &[&str] = &["/proc", "/dev", "/tmp", "/run", "/home"];

/// The workspace's mount point inside a bundle root (must exist in the rootfs).
pub const WORKSPACE_AT: &str = "/workspace";

struct Ctx<'a> {
    path: &'a Path,
}

impl Ctx<'_> {
    fn refuse(&self, field: &str, reason: impl Into<String>) -> BundleError {
        BundleError::Field {
            path: self.path.to_path_buf(),
            field: field.to_owned(),
            reason: reason.into(),
        }
    }

    /// Every key of `obj` must be in `known`.
    fn keys(&self, at: &str, obj: &Value, known: &[&str]) -> Result<(), BundleError> {
        let Some(map) = obj.as_object() else {
            return Err(self.refuse(at, "expected an object"));
        };
        for k in map.keys() {
            if !known.contains(&k.as_str()) {
                let field = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                return Err(self.refuse(
                    &field,
                    "not supported by the agentd sandbox (refused rather than ignored)",
                ));
            }
        }
        Ok(())
    }
}

fn rlimit_name(oci: &str) -> Option<&'static str> {
    Some(match oci {
        "RLIMIT_CORE" => "core",
        "RLIMIT_NOFILE" => "nofile",
        "RLIMIT_NPROC" => "nproc",
        "RLIMIT_FSIZE" => "fsize",
        "RLIMIT_AS" => "as",
        "RLIMIT_STACK" => "stack",
        "RLIMIT_CPU" => "cpu",
        "RLIMIT_MEMLOCK" => "memlock",
        _ => return None,
    })
}

/// Reads `bundle/config.json` and adapts `plan` (built for the workspace, state and ids) to
/// it: the bundle's rootfs as the read-only root, the workspace at [`WORKSPACE_AT`], and the
/// process, hostname, mounts, masks and rlimits the config gives. Returns the command
/// (`process.args`).
pub fn apply_bundle(bundle: &Path, plan: &mut SessionPlan) -> Result<Vec<String>, BundleError> {
    let path = bundle.join("config.json");
    let cx = Ctx { path: &path };
    let read = |reason: String| BundleError::Read {
        path: path.clone(),
        reason,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| read(e.to_string()))?;
    let raw: Value = serde_json::from_str(&text).map_err(|e| read(e.to_string()))?;
    let spec = Spec::load(&path).map_err(|e| read(e.to_string()))?;

    cx.keys("", &raw, TOP)?;
    if let Some(v) = raw["ociVersion"].as_str()
        && !v.starts_with("1.")
    {
        return Err(cx.refuse("ociVersion", format!("{v:?}: only 1.x is supported")));
    }

    // Root: the bundle's rootfs, read-only (writes belong in the workspace or a tmpfs).
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| cx.refuse("root", "missing"))?;
    cx.keys("root", &raw["root"], ROOT)?;
    if root.readonly() != Some(true) {
        return Err(cx.refuse(
            "root.readonly",
            "must be true: the session root is read-only (writes go to the workspace \
             overlay or the session's tmpfs)",
        ));
    }
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    let rootfs = rootfs
        .canonicalize()
        .map_err(|e| cx.refuse("root.path", format!("{}: {e}", rootfs.display())))?;
    if !rootfs.is_dir() {
        return Err(cx.refuse(
            "root.path",
            format!("{} is not a directory", rootfs.display()),
        ));
    }
    for d in ROOTFS_DIRS.iter().chain([&WORKSPACE_AT]) {
        let p = rootfs.join(d.trim_start_matches('/'));
        if !p.is_dir() {
            return Err(cx.refuse(
                "root.path",
                format!(
                    "the rootfs has no {d} directory (the sandbox mounts there; the root \
                     is read-only, so it cannot be created)"
                ),
            ));
        }
    }

    // Process.
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| cx.refuse("process", "missing"))?;
    let rp = &raw["process"];
    cx.keys("process", rp, PROCESS)?;
    if process.terminal() == Some(true) {
        return Err(cx.refuse(
            "process.terminal",
            "true is not supported by `run` (use `exec --pty` for a terminal)",
        ));
    }
    cx.keys("process.user", &rp["user"], USER)?;
    let user = process.user();
    if user.uid() == 0 {
        return Err(cx.refuse(
            "process.user.uid",
            "0: the agent never runs as root, inside or outside",
        ));
    }
    if user.gid() != user.uid() {
        return Err(cx.refuse(
            "process.user.gid",
            format!(
                "{} differs from the uid {}: the sandbox maps one id for both",
                user.gid(),
                user.uid()
            ),
        ));
    }
    if user
        .additional_gids()
        .as_ref()
        .is_some_and(|g| !g.is_empty())
    {
        return Err(cx.refuse(
            "process.user.additionalGids",
            "supplementary groups are not supported (the agent has none)",
        ));
    }
    if let Some(caps) = rp.get("capabilities") {
        let granted = caps.as_object().is_some_and(|m| {
            m.values()
                .any(|v| v.as_array().is_some_and(|a| !a.is_empty()))
        });
        if granted {
            return Err(cx.refuse(
                "process.capabilities",
                "the sandbox grants no capabilities (every set must be empty)",
            ));
        }
    }
    if process.no_new_privileges() == Some(false) {
        return Err(cx.refuse(
            "process.noNewPrivileges",
            "false: the sandbox always sets no_new_privs",
        ));
    }
    let args = process
        .args()
        .clone()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| cx.refuse("process.args", "missing or empty"))?;
    let mut env = BTreeMap::new();
    for (i, kv) in process.env().iter().flatten().enumerate() {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| cx.refuse(&format!("process.env[{i}]"), "expected NAME=VALUE"))?;
        env.insert(k.to_owned(), v.to_owned());
    }
    let cwd = process.cwd();
    if !cwd.is_absolute() {
        return Err(cx.refuse("process.cwd", "must be absolute"));
    }
    let mut rlimits = BTreeMap::new();
    for (i, r) in rp["rlimits"].as_array().into_iter().flatten().enumerate() {
        let field = format!("process.rlimits[{i}]");
        let name = r["type"]
            .as_str()
            .and_then(rlimit_name)
            .ok_or_else(|| cx.refuse(&field, format!("unsupported type {}", r["type"])))?;
        let (Some(soft), Some(hard)) = (r["soft"].as_u64(), r["hard"].as_u64()) else {
            return Err(cx.refuse(&field, "soft and hard must be numbers"));
        };
        rlimits.insert(name.to_owned(), Rlimit { soft, hard });
    }

    // Linux.
    let rl = &raw["linux"];
    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| cx.refuse("linux", "missing (namespaces must be listed)"))?;
    cx.keys("linux", rl, LINUX)?;
    let namespaces = linux.namespaces().clone().unwrap_or_default();
    for ns in &namespaces {
        if ns.path().is_some() {
            return Err(cx.refuse(
                "linux.namespaces",
                format!(
                    "{:?} with a path: joining an existing namespace is not supported",
                    ns.typ()
                ),
            ));
        }
        if ns.typ() == LinuxNamespaceType::Time {
            return Err(cx.refuse("linux.namespaces", "time namespaces are not supported"));
        }
    }
    for (name, typ) in NAMESPACES {
        if !namespaces.iter().any(|n| n.typ() == *typ) {
            return Err(cx.refuse(
                "linux.namespaces",
                format!(
                    "no {name} namespace: the sandbox always creates one (sharing the \
                     host's is not supported)"
                ),
            ));
        }
    }
    if let Some(res) = rl.get("resources") {
        cx.keys("linux.resources", res, RESOURCES)?;
        // Only device rules that deny: the sandbox's /dev has a fixed minimal set anyway.
        for (i, d) in res["devices"].as_array().into_iter().flatten().enumerate() {
            if d["allow"] != Value::Bool(false) {
                return Err(cx.refuse(
                    &format!("linux.resources.devices[{i}]"),
                    "only deny rules are accepted (the session's /dev is fixed; resource \
                     limits come from agentd's policy)",
                ));
            }
        }
    }
    if let Some(p) = rl.get("rootfsPropagation")
        && !matches!(p.as_str(), Some("private" | "rprivate"))
    {
        return Err(cx.refuse(
            "linux.rootfsPropagation",
            format!("{p}: the session's mounts are always private"),
        ));
    }

    // Mounts.
    let mut tmpfs: Vec<PathBuf> = vec!["/tmp".into(), "/run".into(), "/home".into()];
    let mut binds = Vec::new();
    let mut sys = false;
    let mut cgroup_mount = None;
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        let field = format!("mounts[{i}]");
        cx.keys(&field, &raw["mounts"][i], MOUNT)?;
        let dest = m.destination();
        let typ = m.typ().as_deref().unwrap_or("");
        let opts: Vec<&str> = m.options().iter().flatten().map(String::as_str).collect();
        let ro = opts.contains(&"ro");
        let d = dest.to_string_lossy();
        match (typ, d.as_ref()) {
            // Provided by the sandbox's own layout, with its own (stricter) flags.
            ("proc", "/proc")
            | ("tmpfs", "/dev")
            | ("devpts", "/dev/pts")
            | ("tmpfs" | "shm", "/dev/shm") => {}
            ("sysfs", "/sys") if ro => sys = true,
            ("cgroup" | "cgroup2", "/sys/fs/cgroup") if ro => cgroup_mount = Some(field),
            ("tmpfs", _) if dest.is_absolute() && !d.starts_with("/proc") => {
                if !rootfs.join(d.trim_start_matches('/')).is_dir() {
                    return Err(cx.refuse(&field, format!("{d} does not exist in the rootfs")));
                }
                if !tmpfs.iter().any(|t| t == dest) {
                    tmpfs.push(dest.clone());
                }
            }
            _ if typ == "bind" || opts.iter().any(|o| *o == "bind" || *o == "rbind") => {
                if !ro {
                    return Err(cx.refuse(
                        &field,
                        format!("a writable bind of {d}: only read-only binds are supported"),
                    ));
                }
                let src = m
                    .source()
                    .as_ref()
                    .ok_or_else(|| cx.refuse(&field, "a bind without a source"))?;
                let src = if src.is_absolute() {
                    src.clone()
                } else {
                    bundle.join(src)
                };
                let src = src
                    .canonicalize()
                    .map_err(|e| cx.refuse(&field, format!("source {}: {e}", src.display())))?;
                binds.push(BindRo {
                    source: src,
                    target: dest.clone(),
                });
            }
            _ => {
                return Err(cx.refuse(
                    &field,
                    format!(
                        "type {typ:?} at {d}{} is not supported",
                        if ro { "" } else { " (read-write)" }
                    ),
                ));
            }
        }
    }
    if let Some(field) = cgroup_mount
        && !sys
    {
        return Err(cx.refuse(
            &field,
            "a cgroup mount needs the read-only sysfs mount at /sys too",
        ));
    }
    if sys {
        // The host's /sys, read-only, as the default (host-root) session sees it.
        binds.insert(
            0,
            BindRo {
                source: PathBuf::from("/sys"),
                target: PathBuf::from("/sys"),
            },
        );
    }

    // The plan.
    plan.root = Some(rootfs);
    plan.workspace.mount_at = PathBuf::from(WORKSPACE_AT);
    for r in &mut plan.landlock.rules {
        if r.path == plan.workspace.repo {
            r.path = PathBuf::from(WORKSPACE_AT);
        }
    }
    plan.tmpfs = tmpfs;
    plan.bind_ro.extend(binds);
    plan.ids.agent_id = user.uid();
    plan.env = env;
    plan.cwd = Some(cwd.clone());
    plan.rlimits.extend(rlimits);
    if let Some(h) = spec.hostname() {
        plan.hostname = h.clone();
    }
    for p in linux.masked_paths().iter().flatten() {
        let p = PathBuf::from(p);
        if !plan.masked.contains(&p) {
            plan.masked.push(p);
        }
    }
    for p in linux.readonly_paths().iter().flatten() {
        let p = PathBuf::from(p);
        if !plan.read_only.contains(&p) {
            plan.read_only.push(p);
        }
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
    use super::*;

    /// A bundle dir with an empty rootfs holding the required mount points.
    fn bundle(config: &Value) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for m in ROOTFS_DIRS.iter().chain([&WORKSPACE_AT, &"/sys"]) {
            std::fs::create_dir_all(d.path().join("rootfs").join(m.trim_start_matches('/')))
                .unwrap();
        }
        std::fs::write(d.path().join("config.json"), config.to_string()).unwrap();
        d
    }

    fn config() -> Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs", "readonly": true},
            "process": {
                "user": {"uid": 1000, "gid": 1000},
                "args": ["sh", "-c", "true"],
                "env": ["PATH=/bin", "A=b=c"],
                "cwd": "/workspace",
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 64, "soft": 32}],
                "noNewPrivileges": true
            },
            "hostname": "h",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["ro"]}
            ],
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                               {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}],
                "maskedPaths": ["/etc/secret"]
            }
        })
    }

    fn plan() -> SessionPlan {
        SessionPlan::new(
            Path::new("/srv/repo"),
            Path::new("/var/lib/agentd/s"),
            64 << 20,
            1000,
            100_000,
        )
    }

    fn apply(cfg: &Value) -> Result<(SessionPlan, Vec<String>), String> {
        let d = bundle(cfg);
        let mut p = plan();
        let args = apply_bundle(d.path(), &mut p).map_err(|e| e.to_string())?;
        Ok((p, args))
    }

    #[test]
    fn a_plain_config_maps_to_the_plan() {
        let (p, args) = apply(&config()).unwrap();
        assert_eq!(args, ["sh", "-c", "true"]);
        assert!(p.root.as_ref().unwrap().ends_with("rootfs"));
        assert_eq!(p.workspace.mount_at, Path::new("/workspace"));
        assert_eq!(p.cwd.as_deref(), Some(Path::new("/workspace")));
        assert_eq!(p.env.get("A").map(String::as_str), Some("b=c"));
        assert_eq!(p.rlimits["nofile"], Rlimit { soft: 32, hard: 64 });
        assert_eq!(p.hostname, "h");
        assert!(p.masked.contains(&PathBuf::from("/etc/secret")));
        assert!(
            p.masked.contains(&PathBuf::from("/proc/kcore")),
            "OCI defaults kept"
        );
        assert_eq!(p.bind_ro[0].target, Path::new("/sys"));
        assert!(
            p.landlock
                .rules
                .iter()
                .any(|r| r.path == Path::new("/workspace"))
        );
        p.validate().unwrap();
        let steps: Vec<String> = p.mount_steps().iter().map(|s| s.to_string()).collect();
        assert!(steps[1].starts_with("rbind /") && steps[1].contains("rootfs /var/lib"));
    }

    #[test]
    fn unknown_and_weakening_fields_are_refused_by_name() {
        for (pointer, value, want) in [
            ("/extra", serde_json::json!(1), "extra: not supported"),
            (
                "/process/user/umask",
                serde_json::json!(18),
                "process.user.umask",
            ),
            ("/root/readonly", serde_json::json!(false), "root.readonly"),
            (
                "/process/user/uid",
                serde_json::json!(0),
                "process.user.uid",
            ),
            (
                "/process/terminal",
                serde_json::json!(true),
                "process.terminal",
            ),
            ("/ociVersion", serde_json::json!("2.0.0"), "ociVersion"),
            (
                "/linux/rootfsPropagation",
                serde_json::json!("shared"),
                "rootfsPropagation",
            ),
        ] {
            let mut c = config();
            let (parent, key) = pointer.rsplit_once('/').unwrap();
            let t = if parent.is_empty() {
                &mut c
            } else {
                c.pointer_mut(parent).unwrap()
            };
            t[key] = value;
            let err = apply(&c).unwrap_err();
            assert!(err.contains(want), "{pointer}: {err}");
            assert!(err.contains("config.json"), "{err}");
        }
    }

    #[test]
    fn a_rootfs_without_its_mount_points_is_refused() {
        let d = bundle(&config());
        std::fs::remove_dir(d.path().join("rootfs/run")).unwrap();
        let err = apply_bundle(d.path(), &mut plan()).unwrap_err().to_string();
        assert!(err.contains("no /run directory"), "{err}");
    }
}
