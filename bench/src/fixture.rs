//! What the benchmarks run against: the project's binaries (built next to this one), a
//! scratch directory with a repo owned by the agent's uid, a real `agentd serve` on its own
//! socket and cgroup root, throwaway cgroups, and the baselines' command lines (bubblewrap,
//! crun with a bundle built here). Everything is removed on drop; nothing here is used
//! outside the test VM (the benchmark refuses to start elsewhere).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentd::api::{CallInfo, CallRequest, CreateSession, Health, SessionInfo};
use agentd::client::Client;
use agentd::routes;
use agentd_sandbox::launch::{ExecRequest, RunRequest, Sandbox};
use anyhow::{Context, Result, bail};

/// The uid that owns the repo (the agent's host uid), as in the daemon's VM tests.
pub const USER: u32 = 1000;

/// Path of a binary of this workspace, built next to `agentd-bench`.
pub fn bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating agentd-bench")?;
    let p = exe
        .parent()
        .map(|d| d.join(name))
        .context("agentd-bench has no parent directory")?;
    if !p.exists() {
        bail!(
            "{} is missing: build the workspace binaries (`cargo build --workspace --bins`)",
            p.display()
        );
    }
    Ok(p)
}

/// The sandbox runtime, through the sandbox crate's one command builder.
pub fn sandbox() -> Result<Sandbox> {
    Ok(Sandbox::new(bin("agentd-sandbox")?))
}

/// Runs a command to completion with no output kept; an error names it and its status.
pub fn run_quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn chown_r(p: &Path, id: u32) -> Result<()> {
    std::os::unix::fs::lchown(p, Some(id), Some(id))
        .with_context(|| format!("chown {}", p.display()))?;
    if p.is_dir() && !p.is_symlink() {
        for e in fs::read_dir(p)? {
            chown_r(&e?.path(), id)?;
        }
    }
    Ok(())
}

/// A scratch directory (under /var/tmp: sessions get their own /tmp) with a small repo owned
/// by [`USER`].
#[derive(Debug)]
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new(prefix: &str) -> Result<Scratch> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/var/tmp")
            .context("creating a scratch dir under /var/tmp")?;
        // uid 1000 must reach the socket; container root must reach the session state.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        let repo = dir.path().join("repo");
        fs::create_dir(&repo)?;
        fs::write(repo.join("README"), "benchmark repo\n")?;
        chown_r(&repo, USER)?;
        Ok(Scratch { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }
}

/// A cgroup this benchmark created; killed and removed (bottom-up) on drop.
#[derive(Debug)]
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    /// Creates `/sys/fs/cgroup/<name>`, enabling `controllers` for its children.
    pub fn create(name: &str, controllers: &[&str]) -> Result<Cgroup> {
        // The VM's root may not delegate the controllers yet (the daemon enables them on its
        // root's parent the same way).
        enable(Path::new("/sys/fs/cgroup"), controllers)?;
        let path = PathBuf::from("/sys/fs/cgroup").join(name);
        fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
        let cg = Cgroup { path };
        cg.enable(controllers)?;
        Ok(cg)
    }

    /// A child cgroup (removed with its parent).
    pub fn child(&self, name: &str, controllers: &[&str]) -> Result<Cgroup> {
        let path = self.path.join(name);
        fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
        let cg = Cgroup { path };
        cg.enable(controllers)?;
        Ok(cg)
    }

    fn enable(&self, controllers: &[&str]) -> Result<()> {
        enable(&self.path, controllers)
    }

    pub fn write(&self, file: &str, value: &str) -> Result<()> {
        let p = self.path.join(file);
        fs::write(&p, value).with_context(|| format!("writing {value:?} to {}", p.display()))
    }

    pub fn read(&self, file: &str) -> Result<String> {
        let p = self.path.join(file);
        fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    }

    /// A `key value` line of a flat-keyed file (memory.events, memory.stat).
    pub fn keyed(&self, file: &str, key: &str) -> Result<u64> {
        let text = self.read(file)?;
        text.lines()
            .filter_map(|l| l.split_once(' '))
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.trim().parse().ok())
            .with_context(|| format!("{} has no {key}", self.path.join(file).display()))
    }

    /// Kills everything below and removes the tree.
    pub fn remove(&self) {
        let _ = fs::write(self.path.join("cgroup.kill"), "1");
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until && populated(&self.path) {
            std::thread::sleep(Duration::from_millis(20));
        }
        remove_tree(&self.path);
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if self.path.exists() {
            self.remove();
        }
    }
}

/// Enables `controllers` for the children of cgroup `dir`.
fn enable(dir: &Path, controllers: &[&str]) -> Result<()> {
    if controllers.is_empty() {
        return Ok(());
    }
    let v: Vec<String> = controllers.iter().map(|c| format!("+{c}")).collect();
    let p = dir.join("cgroup.subtree_control");
    fs::write(&p, v.join(" ")).with_context(|| format!("writing {v:?} to {}", p.display()))
}

fn populated(p: &Path) -> bool {
    fs::read_to_string(p.join("cgroup.events"))
        .map(|t| t.lines().any(|l| l == "populated 1"))
        .unwrap_or(false)
}

/// rmdir bottom-up (a cgroup directory holds only kernel files and child cgroups).
pub fn remove_tree(p: &Path) {
    if let Ok(rd) = fs::read_dir(p) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(p);
}

/// A running `agentd serve` with its own socket, state dir and cgroup root.
#[derive(Debug)]
pub struct Daemon {
    pub socket: PathBuf,
    pub state: PathBuf,
    pub cgroup_root: PathBuf,
    pub client: Client,
    child: Option<Child>,
    rt: tokio::runtime::Runtime,
}

impl Daemon {
    /// Starts the daemon in `scratch` with `cgroup_root` (created by the daemon) and waits
    /// until it answers `/v1/health`.
    pub fn start(scratch: &Scratch, cgroup_root: &Path) -> Result<Daemon> {
        let root = scratch.path();
        let host_policy = root.join("host.toml");
        fs::write(&host_policy, "version = 1\n")?;
        let socket = root.join("agentd.sock");
        let state = root.join("state");
        let child = Command::new(bin("agentd")?)
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .args(["--socket-mode", "0666"])
            .arg("--state-dir")
            .arg(&state)
            .arg("--cgroup-root")
            .arg(cgroup_root)
            .arg("--host-policy")
            .arg(&host_policy)
            .arg("--sandbox-bin")
            .arg(bin("agentd-sandbox")?)
            .arg("--shim-bin")
            .arg(bin("agentd-shim")?)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting agentd serve")?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the tokio runtime")?;
        let mut d = Daemon {
            client: Client::new(&socket),
            socket,
            state,
            cgroup_root: cgroup_root.to_path_buf(),
            child: Some(child),
            rt,
        };
        let t = Instant::now();
        loop {
            match d
                .rt
                .block_on(d.client.get::<Health>(&routes::HEALTH.at(&[])))
            {
                Ok(_) => break,
                Err(e) if t.elapsed() > Duration::from_secs(60) => {
                    bail!("agentd did not answer within 60 s: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
            if let Some(c) = d.child.as_mut()
                && let Some(st) = c.try_wait()?
            {
                bail!("agentd serve exited before answering: {st}");
            }
        }
        Ok(d)
    }

    /// The daemon's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Creates a session running `argv`; returns it once running.
    pub fn session(&self, repo: &Path, argv: &[&str]) -> Result<SessionInfo> {
        let req = CreateSession {
            workspace: repo.to_path_buf(),
            policy: None,
            argv: argv.iter().map(|a| a.to_string()).collect(),
            stdin: false,
            user: None,
        };
        self.rt
            .block_on(self.client.post(&routes::SESSIONS.at(&[]), &req))
            .context("POST /v1/sessions")
    }

    /// Creates a session with a repo policy text.
    pub fn session_with_policy(
        &self,
        repo: &Path,
        policy: &str,
        argv: &[String],
    ) -> Result<SessionInfo> {
        let req = CreateSession {
            workspace: repo.to_path_buf(),
            policy: Some(agentd::api::PolicySource {
                name: "bench-policy.toml".into(),
                text: policy.into(),
            }),
            argv: argv.to_vec(),
            stdin: false,
            user: None,
        };
        self.rt
            .block_on(self.client.post(&routes::SESSIONS.at(&[]), &req))
            .context("POST /v1/sessions")
    }

    /// One tool call through the API; an error unless it exited 0.
    pub fn call(&self, id: &str, argv: &[&str]) -> Result<CallInfo> {
        let req = CallRequest {
            argv: argv.iter().map(|a| a.to_string()).collect(),
            cwd: None,
            env: BTreeMap::new(),
            intent: Default::default(),
        };
        let info: CallInfo = self
            .rt
            .block_on(self.client.post(&routes::CALLS.at(&[id]), &req))
            .with_context(|| format!("POST /v1/sessions/{id}/calls"))?;
        if info.exit_code != Some(0) {
            bail!("call {argv:?} in session {id} did not exit 0: {info:?}");
        }
        Ok(info)
    }

    /// Waits for the agent to exit.
    pub fn wait(&self, id: &str) -> Result<SessionInfo> {
        self.rt
            .block_on(
                self.client
                    .post::<(), SessionInfo>(&routes::SESSION_WAIT.at(&[id]), &()),
            )
            .with_context(|| format!("waiting for session {id}"))
    }

    /// The agent's stdout.
    pub fn stdout(&self, id: &str) -> Result<String> {
        let logs: agentd::api::Logs = self
            .rt
            .block_on(self.client.get(&routes::SESSION_LOGS.at(&[id])))
            .with_context(|| format!("logs of session {id}"))?;
        Ok(logs.stdout)
    }

    /// Kills and removes a session.
    pub fn destroy(&self, id: &str) -> Result<()> {
        let _: SessionInfo = self
            .rt
            .block_on(self.client.delete(&routes::SESSION.at(&[id])))
            .with_context(|| format!("DELETE /v1/sessions/{id}"))?;
        Ok(())
    }

    /// SIGTERM and wait; then end the sessions (they outlive the daemon by design) and
    /// remove the cgroup root once their runtimes have unmounted their state.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own, not yet reaped child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = fs::write(self.cgroup_root.join("cgroup.kill"), "1");
        let sessions = self.state.join("sessions");
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30)
            && fs::read_dir(&sessions)
                .map(|r| r.count() > 0)
                .unwrap_or(false)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        remove_tree(&self.cgroup_root);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A background `agentd-sandbox run … -- sleep 1000000` session (the sandbox layer alone).
#[derive(Debug)]
pub struct SandboxSession {
    pub state: PathBuf,
    child: Child,
}

impl SandboxSession {
    pub fn start(scratch: &Scratch, name: &str) -> Result<SandboxSession> {
        let state = scratch.path().join(name);
        let req = RunRequest::default_for(&scratch.repo(), &state, &["sleep", "1000000"])?;
        let child = sandbox()?
            .run(&req, None)?
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting agentd-sandbox run")?;
        let s = SandboxSession { state, child };
        let t = Instant::now();
        while !s.state.join("session.json").exists() {
            if t.elapsed() > Duration::from_secs(60) {
                bail!("agentd-sandbox run wrote no session.json within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(s)
    }

    /// `agentd-sandbox exec` of `argv` in this session (a typed request).
    pub fn exec(&self, argv: &[&str]) -> Result<()> {
        let argv: Vec<String> = argv.iter().map(|a| (*a).to_owned()).collect();
        run_quiet(&mut sandbox()?.exec(&ExecRequest::new(&self.state, &argv))?)
    }
}

impl Drop for SandboxSession {
    fn drop(&mut self) {
        // SIGTERM is forwarded to the agent; the runtime then tears the session down.
        // SAFETY: kill(2) on our own, not yet reaped child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// bubblewrap as the Codex / Claude Code model uses it: a new sandbox per command, host root
/// read-only, fresh /dev, /proc and /tmp, every namespace unshared.
pub fn bwrap(argv: &[&str]) -> Command {
    let mut c = Command::new("bwrap");
    c.args(["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"])
        .args(["--tmpfs", "/tmp", "--unshare-all", "--die-with-parent"])
        .arg("--")
        .args(argv);
    c
}
