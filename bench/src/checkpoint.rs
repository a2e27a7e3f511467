//! Benchmark 5, checkpoint cost (issue 11): the same change (10 files modified, 2 added,
//! 1 deleted) in a 1k-file and a 100k-file repo, checkpointed three ways, medians side by
//! side: agentd's checkpoint (a walk of the overlay's upper dir only, changed contents into
//! the object store, the manifest written durably), `git add -A && git commit` of the same
//! change, and a full-tree hash walk (every file of the tree read and hashed, as a snapshot
//! tool without an upper layer must). The point: ours grows with the change, not the repo.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use agentd_sandbox::layer::store::{Checkpoint, Store, hash_file};
use agentd_sandbox::layer::walk::walk;
use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::report::{Section, Table, Target};

const CHANGED: usize = 10;

fn content(i: usize) -> String {
    format!(
        "// file {i}\n{}\n",
        "fn f() { let x = 1; }\n".repeat(20 + i % 30)
    )
}

fn path_of(i: usize) -> String {
    format!("d{:03}/f{i}.rs", i / 100)
}

/// A repo of `n` files, 100 per directory.
fn make_tree(root: &Path, n: usize) -> Result<()> {
    for i in 0..n {
        let p = root.join(path_of(i));
        if i % 100 == 0 {
            fs::create_dir_all(p.parent().context("parent")?)?;
        }
        fs::write(&p, content(i))?;
    }
    Ok(())
}

/// The change, applied to a working tree.
fn change_tree(root: &Path, round: usize) -> Result<()> {
    for i in 0..CHANGED {
        let p = root.join(path_of(i * 37));
        let mut s = fs::read_to_string(&p)?;
        s.push_str(&format!("// edit {round}\n"));
        fs::write(&p, s)?;
    }
    fs::write(root.join(format!("new-{round}-a.rs")), content(round))?;
    fs::write(root.join(format!("new-{round}-b.rs")), content(round + 1))?;
    fs::remove_file(root.join(path_of(5)))?;
    Ok(())
}

/// The same change as the overlay records it: the modified files copied up whole (with
/// their parent dirs), the new files, a whiteout for the deleted one.
fn make_upper(upper: &Path, lower: &Path, round: usize) -> Result<()> {
    for i in 0..CHANGED {
        let rel = path_of(i * 37);
        let dst = upper.join(&rel);
        fs::create_dir_all(dst.parent().context("parent")?)?;
        let mut s = fs::read_to_string(lower.join(&rel))?;
        s.push_str(&format!("// edit {round}\n"));
        fs::write(&dst, s)?;
    }
    fs::write(upper.join(format!("new-{round}-a.rs")), content(round))?;
    fs::write(upper.join(format!("new-{round}-b.rs")), content(round + 1))?;
    let wh = upper.join(path_of(5));
    fs::create_dir_all(wh.parent().context("parent")?)?;
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &wh,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .with_context(|| format!("mknod whiteout {}", wh.display()))?;
    Ok(())
}

fn git(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "bench")
        .env("GIT_AUTHOR_EMAIL", "bench@invalid")
        .env("GIT_COMMITTER_NAME", "bench")
        .env("GIT_COMMITTER_EMAIL", "bench@invalid")
        .output()
        .context("running git")?;
    if !out.status.success() {
        bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn hash_walk(root: &Path) -> Result<u64> {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                if e.file_name() != ".git" {
                    stack.push(e.path());
                }
            } else if t.is_file() {
                hash_file(&e.path())?;
                n += 1;
            }
        }
    }
    Ok(n)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ms(s: f64) -> String {
    format!("{:.1}", s * 1000.0)
}

/// Medians (seconds) of ours, git and the hash walk for a repo of `n` files.
fn measure(n: usize, runs: usize) -> Result<(f64, f64, f64)> {
    let scratch = tempfile::Builder::new()
        .prefix("agentd-bench-cp-")
        .tempdir_in("/var/tmp")?;
    let lower = scratch.path().join("lower");
    make_tree(&lower, n)?;
    let work = scratch.path().join("git");
    make_tree(&work, n)?;
    git(&work, &["init", "-q"])?;
    git(&work, &["add", "-A"])?;
    git(&work, &["commit", "-q", "-m", "base"])?;
    let (mut ours, mut gits, mut walks) = (vec![], vec![], vec![]);
    for round in 0..runs {
        let upper = scratch.path().join(format!("upper-{round}"));
        make_upper(&upper, &lower, round)?;
        let store = Store::open(&scratch.path().join(format!("store-{round}")))?;
        let t = Instant::now();
        let m = walk(&upper, &store, None)?;
        let (files, bytes) = m.totals();
        store.save(&Checkpoint {
            id: 1,
            call: Some(1),
            created_at: 0,
            files,
            bytes,
            reason: "bench".into(),
            manifest: m,
        })?;
        ours.push(t.elapsed().as_secs_f64());

        change_tree(&work, round)?;
        let t = Instant::now();
        git(&work, &["add", "-A"])?;
        git(&work, &["commit", "-q", "-m", "change"])?;
        gits.push(t.elapsed().as_secs_f64());

        let t = Instant::now();
        let seen = hash_walk(&work)?;
        walks.push(t.elapsed().as_secs_f64());
        if seen < n as u64 {
            bail!("the hash walk saw {seen} files of {n}");
        }
        git(&work, &["reset", "-q", "--hard", "HEAD~1"])?;
        git(&work, &["clean", "-qfd"])?;
    }
    Ok((median(ours), median(gits), median(walks)))
}

pub fn run(quick: bool) -> Result<Section> {
    let started = Instant::now();
    let (sizes, runs): (&[usize], usize) = if quick {
        (&[1_000, 5_000], 3)
    } else {
        (&[1_000, 100_000], 7)
    };
    let mut t = Table::new(
        &format!(
            "Checkpoint of the same change ({CHANGED} modified, 2 added, 1 deleted), median of {runs}, ms"
        ),
        &[
            "repo files",
            "agentd checkpoint",
            "git add -A && git commit",
            "full-tree hash walk",
            "git / agentd",
            "walk / agentd",
        ],
    );
    let mut data = Vec::new();
    let mut largest = None;
    for &n in sizes {
        eprintln!("agentd-bench: checkpoint, {n} files");
        let (o, g, w) = measure(n, runs)?;
        t.row(vec![
            n.to_string(),
            ms(o),
            ms(g),
            ms(w),
            format!("{:.1}x", g / o),
            format!("{:.1}x", w / o),
        ]);
        data.push(json!({"files": n, "agentd_s": o, "git_s": g, "hash_walk_s": w}));
        largest = Some((n, g / o));
    }
    let targets = match largest {
        Some((n, r)) if n >= 100_000 => vec![Target {
            what: "checkpoint vs git add -A && git commit at 100k files".into(),
            goal: ">= 5x cheaper".into(),
            measured: format!("{r:.1}x"),
            met: Some(r >= 5.0),
        }],
        _ => vec![],
    };
    Ok(Section {
        name: "checkpoint".into(),
        title: "Checkpoint cost (issue 11)".into(),
        tables: vec![t],
        targets,
        notes: vec![
            "agentd: walk of the upper dir holding exactly the change (as the overlay \
             records it: modified files copied up, a whiteout for the deleted one), \
             contents hashed and stored, manifest fsynced; no session freeze (measured \
             separately by the daemon's call path)."
                .into(),
            "git: the change applied to a committed working tree, then `git add -A && git \
             commit -q` timed; hash walk: every file of the changed tree read and SHA-256'd."
                .into(),
        ],
        files: vec![],
        data: json!(data),
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}
