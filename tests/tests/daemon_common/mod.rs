//! The test daemon fixture shared by the daemon VM tests (`daemon.rs`, `daemon_live.rs`):
//! `agentd serve` on a temp socket, state dir and cgroup root, a repo owned by uid 1000,
//! and `agentctl` helpers.

// Each test crate uses a different part of the fixture.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The repo's owner (the agent's host uid) and the "other user" of the 403 test.
pub const USER: u32 = 1000;

/// Host policy of every test daemon: calls may use at most 512 MiB, so the default profile's
/// 1 GiB call default is clamped (and says so).
pub const HOST_POLICY: &str = "version = 1\n\n[resources.max]\ncall_memory = \"512MiB\"\n";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A running `agentd serve` with a temp socket, state dir and cgroup root; a repo owned by
/// [`USER`]. Dropping it stops the daemon and removes its cgroup root.
pub struct Daemon {
    pub _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub repo: PathBuf,
    pub socket: PathBuf,
    pub cgroup_root: PathBuf,
    /// Start the daemon through `systemd-socket-activate` (socket activation).
    pub activate: bool,
    /// `NOTIFY_SOCKET` for the daemon.
    pub notify: Option<PathBuf>,
    /// Start the daemon inside this cgroup (as systemd's Delegate=yes would).
    pub start_in: Option<PathBuf>,
    /// A file the daemon inherits open on fd 9 without close-on-exec (a leaking launcher).
    pub leak_fd: Option<fs::File>,
    pub child: Option<Child>,
}

pub fn chown_r(p: &Path, id: u32) {
    std::os::unix::fs::lchown(p, Some(id), Some(id)).unwrap();
    if p.is_dir() && !p.is_symlink() {
        for e in fs::read_dir(p).unwrap() {
            chown_r(&e.unwrap().path(), id);
        }
    }
}

pub fn remove_cgroup_tree(p: &Path) {
    if !p.exists() {
        return;
    }
    for e in fs::read_dir(p).unwrap().flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_cgroup_tree(&e.path());
        }
    }
    let _ = fs::remove_dir(p);
}

impl Daemon {
    pub fn start() -> Daemon {
        let mut d = Daemon::new();
        d.spawn();
        d
    }

    /// The fixture, without a daemon yet.
    pub fn new() -> Daemon {
        Daemon::new_in("/tmp")
    }

    /// The fixture with its state dir (and repo) under `parent`: `/var/tmp` is the test
    /// VM's scratch disk, for tests whose session layers must be on a real disk.
    pub fn new_in(parent: &str) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("agentd-daemon-")
            .tempdir_in(parent)
            .unwrap();
        let root = dir.path().to_path_buf();
        // uid 1000 must reach the socket; container root must reach the session state.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        let repo = root.join("repo");
        fs::create_dir(&repo).unwrap();
        fs::write(repo.join("README"), "sample repo\n").unwrap();
        chown_r(&repo, USER);
        fs::write(root.join("host.toml"), HOST_POLICY).unwrap();
        // The shim at a host path under /tmp, which the session's own /tmp hides: it must
        // reach the agent through the daemon's read-only bind at a fixed path.
        fs::copy(
            agentd_tests::project_binary("agentd-shim"),
            root.join("agentd-shim"),
        )
        .unwrap();
        let socket = root.join("agentd.sock");
        let cgroup_root = PathBuf::from(format!(
            "/sys/fs/cgroup/agentd-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        Daemon {
            _dir: dir,
            root,
            repo,
            socket,
            cgroup_root,
            activate: false,
            notify: None,
            start_in: None,
            leak_fd: None,
            child: None,
        }
    }

    /// Starts `agentd serve` on this fixture's socket, state dir and cgroup root, and waits
    /// until it answers.
    pub fn spawn(&mut self) {
        let mut cmd = if let Some(cg) = &self.start_in {
            // The daemon starts in `cg`, as a systemd service starts in its own cgroup.
            let mut c = Command::new("/bin/sh");
            c.arg("-c")
                .arg(format!(
                    "echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"",
                    cg.display()
                ))
                .arg(agentd_tests::project_binary("agentd"));
            c
        } else if self.activate {
            let mut c = Command::new("systemd-socket-activate");
            c.arg("-l").arg(&self.socket);
            if let Some(n) = &self.notify {
                c.arg(format!("--setenv=NOTIFY_SOCKET={}", n.display()));
            }
            c.arg(agentd_tests::project_binary("agentd"));
            c
        } else {
            let mut c = Command::new(agentd_tests::project_binary("agentd"));
            if let Some(n) = &self.notify {
                c.env("NOTIFY_SOCKET", n);
            }
            c
        };
        if let Some(f) = &self.leak_fd {
            use std::os::fd::AsRawFd;
            use std::os::unix::process::CommandExt;
            let raw = f.as_raw_fd();
            // SAFETY: dup2 in the forked child before exec; the target has no CLOEXEC.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::dup2(raw, 9) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .arg("serve")
            .arg("--socket")
            .arg(&self.socket)
            .args(["--socket-mode", "0666"])
            .arg("--state-dir")
            .arg(self.root.join("state"))
            .arg("--cgroup-root")
            .arg(&self.cgroup_root)
            .arg("--host-policy")
            .arg(self.root.join("host.toml"))
            .arg("--sandbox-bin")
            .arg(agentd_tests::project_binary("agentd-sandbox"))
            .arg("--shim-bin")
            .arg(self.root.join("agentd-shim"))
            .spawn()
            .unwrap();
        self.child = Some(child);
        let d = &*self;
        let t = Instant::now();
        loop {
            let out = d.ctl(&["ps"]).output().unwrap();
            if out.status.success() {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "daemon did not come up: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// kill -9 of the daemon (its sessions keep running).
    pub fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// `agentctl --socket S ARGS…`.
    pub fn ctl(&self, args: &[&str]) -> Command {
        let mut c = Command::new(agentd_tests::project_binary("agentctl"));
        c.arg("--socket").arg(&self.socket).args(args);
        c
    }

    /// Runs agentctl; returns its output, printing it for the test log.
    pub fn run(&self, args: &[&str]) -> Output {
        let out = self.ctl(args).output().unwrap();
        eprintln!(
            "agentctl {args:?}: {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.run(&a);
        assert!(out.status.success(), "agentctl {args:?} failed");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Starts a detached session running `sleep 86400` (outlives any test, however slow the
    /// machine: 20 x 50 calls took 650 s on a loaded 2-core host); returns its id.
    pub fn session(&self) -> String {
        let repo = self.repo.to_str().unwrap();
        let out = self.run(&[
            "run",
            "--detach",
            "--workspace",
            repo,
            "--",
            "sleep",
            "86400",
        ]);
        assert!(out.status.success(), "agentctl run failed");
        let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(!id.is_empty());
        id
    }

    /// The session's first call once it is no longer running (its report recorded), waiting
    /// up to 90 s: after a daemon restart, the new daemon records it when it ends.
    pub fn first_call_once_ended(&self, id: &str) -> Value {
        let t = Instant::now();
        loop {
            let calls = self.json(&["calls", id]);
            if calls[0]["state"] != "running" {
                return calls[0].clone();
            }
            assert!(
                t.elapsed() < Duration::from_secs(90),
                "call 1 never recorded"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    pub fn session_cgroup(&self, id: &str) -> PathBuf {
        self.cgroup_root.join(format!("session-{id}"))
    }
}

impl Daemon {
    /// SIGTERM the daemon and wait for it (sessions keep running).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        // Sessions outlive the daemon by design: end them, then remove their state before
        // the tempdir goes. The daemon runs sessions with --keep-state (undo keeps the
        // layer until a final checkpoint), so an ended session's state stays mounted until
        // `agentd-sandbox destroy`; left mounted, the tempdir (with its 100+ MiB copy of
        // the shim) could not be removed and the VM's /tmp filled up.
        let _ = fs::write(self.cgroup_root.join("cgroup.kill"), "1");
        let sessions = self.root.join("state/sessions");
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            let left: Vec<PathBuf> = fs::read_dir(&sessions)
                .map(|r| r.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            if left.is_empty() {
                break;
            }
            for state in left {
                let _ = Command::new(agentd_tests::project_binary("agentd-sandbox"))
                    .arg("destroy")
                    .arg("--state")
                    .arg(&state)
                    .stderr(std::process::Stdio::null())
                    .status();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        remove_cgroup_tree(&self.cgroup_root);
    }
}

pub fn read(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

/// The `(path, change)` rows of an `agentctl --json diff` answer.
pub fn diff_paths(diff: &Value) -> Vec<(String, String)> {
    diff["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["change"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}
