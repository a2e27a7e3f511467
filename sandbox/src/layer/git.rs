//! Export of a session's checkpoint history as commits on a new branch of the workspace's
//! git repo (`agentctl commit SESSION --git-branch NAME`, docs/undo.md), so a person can
//! review, rebase, cherry-pick or merge the agent's work with their own tools.
//!
//! One commit per step of the history that changed something, each the diff between two
//! consecutive checkpoints' merged views, on top of the session's base commit. It goes
//! through `git fast-import` (one process, blobs streamed in, a commit per step) into a
//! private ref, then `git update-ref refs/heads/NAME NEW ""` creates the branch only if it
//! does not exist (atomic against a concurrent creation), and the private ref is deleted.
//! Neither the working tree, nor the index, nor HEAD is touched: fast-import writes objects
//! and refs only. Every git process runs with the repo owner's ids (objects and refs stay
//! theirs, and git refuses a repo owned by someone else anyway) and without the global
//! config of whoever runs the daemon.
//!
//! Git keeps no empty directories, fifos or sockets: such entries are left out (counted in
//! the answer), as git itself would.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::LayerError;
use super::apply::Source;
use super::view::{Change, State};

/// Errors of the export; each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("{path} is not in a git repository ({stderr}); --git-branch needs one")]
    NotARepo { path: PathBuf, stderr: String },
    #[error("invalid branch name {name:?}: {why}")]
    BadBranch { name: String, why: String },
    #[error("branch {name:?} already exists in {path}; pick another name")]
    BranchExists { name: String, path: PathBuf },
    #[error("git {what} in {path}: {stderr}")]
    Git {
        what: String,
        path: PathBuf,
        stderr: String,
    },
    #[error("session changed nothing since its start: no commit to export to {path}")]
    NothingToExport { path: PathBuf },
    #[error("running git in {path}: {source} (is git installed?)")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Layer(#[from] LayerError),
}

/// One commit to make: the changes between two checkpoints' merged views.
#[derive(Debug, Clone)]
pub struct Step {
    pub message: String,
    /// Seconds since the epoch (author and committer date).
    pub time: u64,
    pub changes: Vec<Change>,
}

/// What an export made.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Exported {
    pub branch: String,
    /// The branch's commit (hex object id).
    pub head: String,
    /// The commit it is based on (None: an unborn repo, the first commit has no parent).
    pub base: Option<String>,
    pub commits: usize,
    /// Entries git cannot hold (fifos, sockets), left out; empty directories vanish silently.
    pub skipped: usize,
}

/// git in one workspace, as the repo's owner.
#[derive(Debug, Clone)]
pub struct Git {
    pub dir: PathBuf,
    /// Run as these (uid, gid); None: as the caller (tests).
    pub owner: Option<(u32, u32)>,
}

impl Git {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("git");
        c.arg("-C").arg(&self.dir).args(args);
        for v in [
            "GIT_DIR",
            "GIT_WORK_TREE",
            "GIT_INDEX_FILE",
            "GIT_OBJECT_DIRECTORY",
            "GIT_NAMESPACE",
        ] {
            c.env_remove(v);
        }
        // Not the daemon's (root's) global config, and never a prompt.
        c.env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0");
        if let Some((u, g)) = self.owner {
            // std drops the supplementary groups before setuid when run as root.
            c.uid(u).gid(g);
        }
        c.stdin(Stdio::null());
        c
    }

    /// Runs git; Ok((success, stdout, stderr)).
    fn run(&self, args: &[&str]) -> Result<(bool, String, String), GitError> {
        let out = self.cmd(args).output().map_err(|source| GitError::Spawn {
            path: self.dir.clone(),
            source,
        })?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim_end().to_owned(),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }

    fn must(&self, args: &[&str]) -> Result<String, GitError> {
        let (ok, out, err) = self.run(args)?;
        if !ok {
            return Err(GitError::Git {
                what: args.join(" "),
                path: self.dir.clone(),
                stderr: err,
            });
        }
        Ok(out)
    }

    /// The workspace's path inside its repo ("" at the top, else "sub/dir/").
    pub fn prefix(&self) -> Result<String, GitError> {
        let (ok, out, err) = self.run(&["rev-parse", "--show-prefix"])?;
        if !ok {
            return Err(GitError::NotARepo {
                path: self.dir.clone(),
                stderr: err,
            });
        }
        Ok(out)
    }

    /// HEAD's commit, None in a repo without commits (or not a repo).
    pub fn head(&self) -> Result<Option<String>, GitError> {
        let (ok, out, _) = self.run(&["rev-parse", "--verify", "--quiet", "HEAD^{commit}"])?;
        Ok(ok.then_some(out))
    }

    /// Whether `rev` names a commit of this repo.
    fn is_commit(&self, rev: &str) -> Result<bool, GitError> {
        let spec = format!("{rev}^{{commit}}");
        Ok(self.run(&["rev-parse", "--verify", "--quiet", &spec])?.0)
    }

    /// Refuses a name git would not take as a branch (needs no repo).
    pub fn check_name(&self, name: &str) -> Result<(), GitError> {
        let bad = |why: &str| GitError::BadBranch {
            name: name.to_owned(),
            why: why.to_owned(),
        };
        if name.is_empty() {
            return Err(bad("empty"));
        }
        if name.starts_with('-') {
            return Err(bad("starts with '-'"));
        }
        if name == "HEAD" {
            return Err(bad("HEAD is not a branch name"));
        }
        let full = format!("refs/heads/{name}");
        let (ok, _, _) = self.run(&["check-ref-format", &full])?;
        if !ok {
            return Err(bad(
                "not a valid git ref name (see git check-ref-format: no '..', '~', '^', ':', \
                 '?', '*', '[', '\\', spaces, control characters, '@{', a trailing '.' or \
                 '.lock', or a component starting with '.')",
            ));
        }
        Ok(())
    }

    /// Refuses a name git would not take as a branch, or one that exists.
    pub fn check_new_branch(&self, name: &str) -> Result<(), GitError> {
        self.check_name(name)?;
        let full = format!("refs/heads/{name}");
        if self.run(&["rev-parse", "--verify", "--quiet", &full])?.0 {
            return Err(GitError::BranchExists {
                name: name.to_owned(),
                path: self.dir.clone(),
            });
        }
        Ok(())
    }
}

/// A path in fast-import's C-style quoting (always quoted: any name is safe).
fn quote(p: &str) -> String {
    let mut s = String::with_capacity(p.len() + 2);
    s.push('"');
    for ch in p.chars() {
        match ch {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

fn data(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(format!("data {}\n", bytes.len()).as_bytes());
    out.extend_from_slice(bytes);
    out.push(b'\n');
}

/// The fast-import commands of one step's changes: deletions first (a directory's `D`
/// removes its subtree; a path changing between file and directory is deleted, then
/// rebuilt), then the new files and symlinks. Returns the entries skipped.
fn step_ops(
    out: &mut Vec<u8>,
    prefix: &str,
    changes: &[Change],
    src: &dyn Source,
) -> Result<usize, GitError> {
    let mut skipped = 0;
    for c in changes {
        let was_dir = matches!(c.old, State::Dir { .. });
        let is_dir = matches!(c.new, State::Dir { .. });
        let gone = matches!(c.new, State::Absent);
        if gone || was_dir != is_dir {
            out.extend_from_slice(
                format!("D {}\n", quote(&format!("{prefix}{}", c.path))).as_bytes(),
            );
        }
    }
    for c in changes {
        let path = quote(&format!("{prefix}{}", c.path));
        match &c.new {
            State::File { mode, content, .. } => {
                let m = if mode & 0o111 != 0 {
                    "100755"
                } else {
                    "100644"
                };
                let mut r = src.open(content, &c.path)?;
                let mut bytes = Vec::new();
                r.read_to_end(&mut bytes)
                    .map_err(|e| LayerError::io("read", c.path.clone(), e))?;
                out.extend_from_slice(format!("M {m} inline {path}\n").as_bytes());
                data(out, &bytes);
            }
            State::Symlink { target } => {
                out.extend_from_slice(format!("M 120000 inline {path}\n").as_bytes());
                data(out, target.as_bytes());
            }
            State::Special { .. } => skipped += 1,
            // An empty directory has no git form; a new directory's files come as their own
            // changes.
            State::Dir { .. } | State::Absent => {}
        }
    }
    Ok(skipped)
}

/// Makes branch `branch` of the repo at `git.dir`: one commit per step (steps without
/// changes make none), the first on `base` (a commit of the repo; None: HEAD, or no parent
/// in a repo without commits). The branch must not exist; the working tree, index and
/// HEAD are not touched.
pub fn export(
    git: &Git,
    branch: &str,
    base: Option<&str>,
    steps: &[Step],
    author: &str,
    src: &dyn Source,
) -> Result<Exported, GitError> {
    git.check_name(branch)?;
    let prefix = git.prefix()?;
    git.check_new_branch(branch)?;
    let base = match base {
        Some(b) if git.is_commit(b)? => Some(b.to_owned()),
        _ => git.head()?,
    };
    let tmp_ref = format!(
        "refs/agentd-export/{}-{}",
        std::process::id(),
        super::walk::now_ns()
    );
    let mut stream = Vec::new();
    stream.extend_from_slice(b"feature done\n");
    let (mut commits, mut skipped) = (0, 0);
    for s in steps.iter().filter(|s| !s.changes.is_empty()) {
        stream.extend_from_slice(format!("commit {tmp_ref}\n").as_bytes());
        for who in ["author", "committer"] {
            stream.extend_from_slice(format!("{who} {author} {} +0000\n", s.time).as_bytes());
        }
        data(&mut stream, s.message.as_bytes());
        if commits == 0
            && let Some(b) = &base
        {
            stream.extend_from_slice(format!("from {b}\n").as_bytes());
        }
        skipped += step_ops(&mut stream, &prefix, &s.changes, src)?;
        stream.push(b'\n');
        commits += 1;
    }
    stream.extend_from_slice(b"done\n");
    if commits == 0 {
        return Err(GitError::NothingToExport {
            path: git.dir.clone(),
        });
    }
    let mut child = git
        .cmd(&["fast-import", "--quiet", "--date-format=raw"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| GitError::Spawn {
            path: git.dir.clone(),
            source,
        })?;
    // Written from a thread: fast-import may answer on stdout/stderr while it reads.
    let mut stdin = child.stdin.take().ok_or_else(|| GitError::Git {
        what: "fast-import".into(),
        path: git.dir.clone(),
        stderr: "no stdin".into(),
    })?;
    let writer = std::thread::spawn(move || stdin.write_all(&stream));
    let out = child.wait_with_output().map_err(|source| GitError::Spawn {
        path: git.dir.clone(),
        source,
    })?;
    let wrote = writer.join();
    if !out.status.success() || !matches!(wrote, Ok(Ok(()))) {
        let _ = git.run(&["update-ref", "-d", &tmp_ref]);
        return Err(GitError::Git {
            what: "fast-import".into(),
            path: git.dir.clone(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    let head = git.must(&["rev-parse", "--verify", &tmp_ref])?;
    let full = format!("refs/heads/{branch}");
    let msg = format!("agentd: export to {branch}");
    // The empty old value: create only if it does not exist (someone may have made it since
    // the check).
    let made = git.run(&["update-ref", "-m", &msg, &full, &head, ""]);
    let _ = git.run(&["update-ref", "-d", &tmp_ref]);
    match made? {
        (true, _, _) => {}
        (false, _, err) if err.contains("exists") => {
            return Err(GitError::BranchExists {
                name: branch.to_owned(),
                path: git.dir.clone(),
            });
        }
        (false, _, err) => {
            return Err(GitError::Git {
                what: format!("update-ref {full}"),
                path: git.dir.clone(),
                stderr: err,
            });
        }
    }
    Ok(Exported {
        branch: branch.to_owned(),
        head,
        base,
        commits,
        skipped,
    })
}

/// A commit message's subject for a tool call's argv (shell-quoted where needed, cut at
/// 200 characters).
pub fn argv_subject(argv: &[String]) -> String {
    let mut s = argv
        .iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
        .replace('\n', " ");
    if s.chars().count() > 200 {
        s = s.chars().take(199).collect::<String>() + "…";
    }
    s
}

#[cfg(test)]
#[path = "git_tests.rs"]
mod tests;
