//! The crun baseline: an OCI bundle built here that is as close to an agentd session as an
//! OCI config gets (host /usr and /etc read-only, fresh /proc, /dev and /tmp, a user
//! namespace mapping container root to an unprivileged uid, pid/net/ipc/uts/mount/cgroup
//! namespaces, no new privileges), and the `crun` invocations the benchmarks time. The
//! config is written with serde_json rather than oci-spec: it is one fixed document.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::fixture::run_quiet;

/// A bundle directory (`config.json` + `rootfs/`) and crun's state root.
#[derive(Debug)]
pub struct Bundle {
    pub dir: PathBuf,
    pub state_root: PathBuf,
}

impl Bundle {
    /// Builds `<parent>/<name>` running `argv`.
    pub fn create(parent: &Path, name: &str, argv: &[&str]) -> Result<Bundle> {
        let dir = parent.join(name);
        let rootfs = dir.join("rootfs");
        for d in ["usr", "etc", "proc", "dev", "tmp", "sys"] {
            fs::create_dir_all(rootfs.join(d))
                .with_context(|| format!("creating {}", rootfs.join(d).display()))?;
        }
        // Debian's merged /usr: the same symlinks as the host root.
        for (link, target) in [
            ("bin", "usr/bin"),
            ("sbin", "usr/sbin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
        ] {
            std::os::unix::fs::symlink(target, rootfs.join(link))
                .with_context(|| format!("symlink {}", rootfs.join(link).display()))?;
        }
        let config = config(argv);
        fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config)?)
            .with_context(|| format!("writing {}/config.json", dir.display()))?;
        let state_root = parent.join("crun-state");
        fs::create_dir_all(&state_root)?;
        Ok(Bundle { dir, state_root })
    }

    fn crun(&self) -> Command {
        let mut c = Command::new("crun");
        c.arg("--root").arg(&self.state_root);
        c
    }

    /// `crun run ID` in the foreground: create, start, wait, delete.
    pub fn run(&self, id: &str) -> Result<()> {
        run_quiet(
            self.crun()
                .arg("run")
                .arg("--bundle")
                .arg(&self.dir)
                .arg(id),
        )
    }

    /// `crun run --detach ID`: a running container for `exec`. No pipes: the container
    /// would inherit them and keep them open for its whole life.
    pub fn start_detached(&self, id: &str) -> Result<()> {
        let st = self
            .crun()
            .arg("run")
            .arg("--detach")
            .arg("--bundle")
            .arg(&self.dir)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("starting crun")?;
        if !st.success() {
            bail!("crun run --detach {id} failed: {st}");
        }
        Ok(())
    }

    /// `crun exec ID argv…`.
    pub fn exec(&self, id: &str, argv: &[&str]) -> Result<()> {
        run_quiet(self.crun().arg("exec").arg(id).args(argv))
    }

    /// `crun delete --force ID` (errors ignored: used for cleanup).
    pub fn delete(&self, id: &str) {
        let _ = run_quiet(self.crun().args(["delete", "--force", id]));
    }
}

fn config(argv: &[&str]) -> serde_json::Value {
    let caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"];
    let ro_bind = |p: &str| {
        json!({"destination": p, "type": "bind", "source": p,
               "options": ["rbind", "ro", "nosuid", "nodev"]})
    };
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": argv,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "bench",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "size=65536k"]},
            ro_bind("/usr"),
            ro_bind("/etc")
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"},
                {"type": "mount"}, {"type": "cgroup"}, {"type": "user"}
            ],
            "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
            "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus"]
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn bundle_layout_and_config() {
        let dir = tempfile::tempdir().unwrap();
        let b = super::Bundle::create(dir.path(), "b", &["true"]).unwrap();
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(b.dir.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["process"]["args"][0], "true");
        assert_eq!(cfg["root"]["readonly"], true);
        assert!(b.dir.join("rootfs/usr").is_dir());
        assert_eq!(
            std::fs::read_link(b.dir.join("rootfs/bin")).unwrap(),
            std::path::Path::new("usr/bin")
        );
        let ns: Vec<&str> = cfg["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert!(ns.contains(&"user") && ns.contains(&"pid") && ns.contains(&"network"));
    }
}
