//! The sandbox VM tests' shared fixture: a repo owned by uid 1000 and a state dir path under
//! a world-traversable tempdir, running `agentd-sandbox run` on it, tree snapshots, mounts.

// Each test crate uses a different part of the fixture.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The agent's host uid (the repo's owner); container root maps to 100000.
pub const OWNER: u32 = 1000;

/// A repo owned by [`OWNER`] and a state dir path, under a world-traversable tempdir (the
/// overlay is mounted by container root, an unprivileged host uid, which must reach both).
pub struct Fixture {
    pub _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub repo: PathBuf,
    pub state: PathBuf,
}

pub fn fixture() -> Fixture {
    let dir = tempfile::Builder::new()
        .prefix("agentd-sbx-")
        .tempdir_in("/tmp")
        .unwrap();
    let root = dir.path().to_path_buf();
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
    let repo = root.join("repo");
    fs::create_dir(&repo).unwrap();
    fs::write(repo.join("a.txt"), "alpha\n").unwrap();
    fs::write(repo.join("b.txt"), "beta\n").unwrap();
    fs::create_dir(repo.join("src")).unwrap();
    fs::write(repo.join("src/main.c"), "int main(void){return 0;}\n").unwrap();
    chown_r(&repo, OWNER);
    let state = root.join("state");
    Fixture {
        _dir: dir,
        root,
        repo,
        state,
    }
}

pub fn chown_r(p: &Path, id: u32) {
    std::os::unix::fs::lchown(p, Some(id), Some(id)).unwrap();
    if p.is_dir() && !p.is_symlink() {
        for e in fs::read_dir(p).unwrap() {
            chown_r(&e.unwrap().path(), id);
        }
    }
}

/// Snapshot of a tree: (relative path, bytes or link target, mode).
pub fn snapshot(p: &Path) -> Vec<(String, Vec<u8>, u32)> {
    fn walk(base: &Path, p: &Path, out: &mut Vec<(String, Vec<u8>, u32)>) {
        let md = fs::symlink_metadata(p).unwrap();
        let rel = p.strip_prefix(base).unwrap().display().to_string();
        let body = if md.is_symlink() {
            fs::read_link(p).unwrap().display().to_string().into_bytes()
        } else if md.is_file() {
            fs::read(p).unwrap()
        } else {
            Vec::new()
        };
        out.push((rel, body, md.permissions().mode()));
        if md.is_dir() {
            let mut names: Vec<_> = fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            names.sort();
            for n in names {
                walk(base, &n, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(p, p, &mut out);
    out
}

/// The runtime, through the sandbox crate's one command builder.
pub fn sandbox() -> agentd_sandbox::launch::Sandbox {
    agentd_sandbox::launch::Sandbox::new(agentd_tests::project_binary("agentd-sandbox"))
}

/// `argv` in a new session of `repo` with its state at `state`: the default plan, passed
/// to the runtime as a typed request (as the daemon does).
pub fn session_cmd(repo: &Path, state: &Path, argv: &[&str]) -> Command {
    let req = agentd_sandbox::launch::RunRequest::default_for(repo, state, argv).unwrap();
    sandbox().run(&req, None).unwrap()
}

/// `sh -c script` in a new session of the fixture. Without `extra` the plan goes to the
/// runtime as a typed request; `extra` flags test the human command line
/// (`agentd-sandbox run --workspace … --state … FLAGS`).
pub fn sandbox_cmd(f: &Fixture, extra: &[&str], script: &str) -> Command {
    if extra.is_empty() {
        return session_cmd(&f.repo, &f.state, &["sh", "-c", script]);
    }
    let mut c = Command::new(agentd_tests::project_binary("agentd-sandbox"));
    c.arg("run")
        .arg("--workspace")
        .arg(&f.repo)
        .arg("--state")
        .arg(&f.state)
        .args(extra)
        .args(["--", "sh", "-c", script]);
    c
}

/// `agentd-sandbox exec` of `argv` in the session whose state dir is `state` (optionally
/// in `cgroup`, optionally on a pty), through the typed request.
pub fn exec_cmd(state: &Path, argv: &[&str], cgroup: Option<&Path>, pty: bool) -> Command {
    let argv: Vec<String> = argv.iter().map(|a| (*a).to_owned()).collect();
    let mut req = agentd_sandbox::launch::ExecRequest::new(state, &argv);
    req.cgroup = cgroup.map(Path::to_path_buf);
    req.pty = pty;
    sandbox().exec(&req).unwrap()
}

/// Runs `script` with `sh -c` in a new session; returns (status, stdout, stderr).
pub fn run_in(f: &Fixture, extra: &[&str], script: &str) -> (i32, String, String) {
    let out: Output = sandbox_cmd(f, extra, script).output().unwrap();
    let so = String::from_utf8_lossy(&out.stdout).into_owned();
    let se = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!(
        "--- script: {script}\n--- status {:?}\n--- stdout\n{so}--- stderr\n{se}",
        out.status
    );
    (out.status.code().unwrap_or(-1), so, se)
}

pub fn destroy(f: &Fixture) {
    let st = sandbox().destroy(&f.state).status().unwrap();
    assert!(st.success());
    assert!(!f.state.exists());
}

pub fn mounts_mentioning(p: &Path) -> Vec<String> {
    let needle = p.display().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_owned)
        .collect()
}
