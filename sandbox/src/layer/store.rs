//! The content-addressed object store and the checkpoint records of one session.
//!
//! Layout under the store root (host root only, outside the session's reach):
//! `objects/<2 hex>/<62 hex>` (SHA-256 of the content), `checkpoints/<id>.json` (a
//! [`Checkpoint`]: its metadata and [`Manifest`]), `pruned/<id>` (a checkpoint dropped by
//! retention, kept as a marker so an undo to it says "pruned" rather than "unknown").
//! A new object is a reflink of the source (`FICLONE`: no data copied on btrfs/xfs) hashed
//! from the source, else a copy hashed as it is written; either way it lands under a
//! temporary name and is renamed into place, so a half-written object never has a hash
//! name. Objects are not fsynced one by one (cost); every read verifies the hash instead,
//! so a torn object after a host crash is an error, never silently wrong content.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{LayerError, Manifest};

/// A checkpoint: when, why, and the upper layer's manifest at that instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// 0 is the session's start (empty layer); then one per tool call and on demand.
    pub id: u64,
    /// The tool call this checkpoint was taken before, if any.
    pub call: Option<u64>,
    /// Unix seconds.
    pub created_at: u64,
    /// Regular files in the layer and their bytes.
    pub files: u64,
    pub bytes: u64,
    /// "session start", "before call N", "on demand", "before undo", …
    pub reason: String,
    pub manifest: Manifest,
}

/// One session's store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

fn io<'a>(what: &'static str, p: &'a Path) -> impl FnOnce(std::io::Error) -> LayerError + 'a {
    move |e| LayerError::io(what, p, e)
}

/// Hex of a digest.
fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// SHA-256 of everything `r` yields, and its length.
pub fn hash_reader(r: &mut dyn Read, what: &Path) -> Result<(String, u64), LayerError> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 128 << 10];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf).map_err(io("read", what))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex(&h.finalize()), n))
}

/// SHA-256 of a file (not following a final symlink).
pub fn hash_file(p: &Path) -> Result<(String, u64), LayerError> {
    let mut f = open_nofollow(p)?;
    hash_reader(&mut f, p)
}

fn open_nofollow(p: &Path) -> Result<File, LayerError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(p)
        .map_err(io("open", p))
}

impl Store {
    /// Opens (creating) the store at `root`, mode 0700.
    pub fn open(root: &Path) -> Result<Store, LayerError> {
        for d in ["objects", "checkpoints", "pruned"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io("create", &p))?;
        }
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(root, fs::Permissions::from_mode(0o700)).map_err(io("chmod", root))?;
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where object `hash` lives.
    pub fn object_path(&self, hash: &str) -> PathBuf {
        let (a, b) = hash.split_at(hash.len().min(2));
        self.root.join("objects").join(a).join(b)
    }

    fn tmp_path(&self) -> PathBuf {
        let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("objects")
            .join(format!(".tmp-{}-{n}", std::process::id()))
    }

    /// Stores the content of regular file `src`; returns its hash and size.
    pub fn put_file(&self, src: &Path) -> Result<(String, u64), LayerError> {
        let mut from = open_nofollow(src)?;
        let tmp = self.tmp_path();
        let mut to = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        let result = (|| {
            if rustix::fs::ioctl_ficlone(&to, &from).is_ok() {
                // A reflink: no data copied; hash the source once.
                hash_reader(&mut from, src)
            } else {
                let mut h = Sha256::new();
                let mut buf = vec![0u8; 128 << 10];
                let mut n = 0u64;
                loop {
                    let k = from.read(&mut buf).map_err(io("read", src))?;
                    if k == 0 {
                        break;
                    }
                    h.update(&buf[..k]);
                    to.write_all(&buf[..k]).map_err(io("write", &tmp))?;
                    n += k as u64;
                }
                Ok((hex(&h.finalize()), n))
            }
        })();
        let (hash, size) = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        drop(to);
        let dst = self.object_path(&hash);
        if dst.exists() {
            let _ = fs::remove_file(&tmp);
        } else {
            if let Some(d) = dst.parent() {
                fs::create_dir_all(d).map_err(io("create", d))?;
            }
            fs::rename(&tmp, &dst).map_err(io("rename", &dst))?;
        }
        Ok((hash, size))
    }

    /// Stores `bytes` as an object.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<String, LayerError> {
        let mut h = Sha256::new();
        h.update(bytes);
        let hash = hex(&h.finalize());
        let dst = self.object_path(&hash);
        if !dst.exists() {
            if let Some(d) = dst.parent() {
                fs::create_dir_all(d).map_err(io("create", d))?;
            }
            let tmp = self.tmp_path();
            fs::write(&tmp, bytes).map_err(io("write", &tmp))?;
            fs::rename(&tmp, &dst).map_err(io("rename", &dst))?;
        }
        Ok(hash)
    }

    /// Whether object `hash` is present.
    pub fn has(&self, hash: &str) -> bool {
        self.object_path(hash).is_file()
    }

    /// The content of object `hash`, verified against its name.
    pub fn read(&self, hash: &str) -> Result<Vec<u8>, LayerError> {
        let p = self.object_path(hash);
        let data = fs::read(&p).map_err(io("read object", &p))?;
        let mut h = Sha256::new();
        h.update(&data);
        if hex(&h.finalize()) != hash {
            return Err(LayerError::Corrupt { hash: hash.into() });
        }
        Ok(data)
    }

    fn checkpoint_path(&self, id: u64) -> PathBuf {
        self.root.join("checkpoints").join(format!("{id}.json"))
    }

    /// Writes a checkpoint record durably (temp file, fsync, rename).
    pub fn save(&self, cp: &Checkpoint) -> Result<(), LayerError> {
        let p = self.checkpoint_path(cp.id);
        let json = serde_json::to_vec(cp).map_err(|e| LayerError::Json(e.to_string()))?;
        write_durably(&p, &json)
    }

    /// Reads checkpoint `id` (None when it does not exist).
    pub fn load(&self, id: u64) -> Result<Option<Checkpoint>, LayerError> {
        let p = self.checkpoint_path(id);
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| LayerError::Json(format!("{}: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(LayerError::io("read", p, e)),
        }
    }

    /// Ids of the checkpoints present, ascending.
    pub fn ids(&self) -> Result<Vec<u64>, LayerError> {
        let d = self.root.join("checkpoints");
        let mut ids = Vec::new();
        for e in fs::read_dir(&d).map_err(io("list", &d))? {
            let e = e.map_err(io("list", &d))?;
            if let Some(id) = e
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// The id the next checkpoint gets (above every present and pruned one).
    pub fn next_id(&self) -> Result<u64, LayerError> {
        let mut max: Option<u64> = self.ids()?.last().copied();
        let d = self.root.join("pruned");
        for e in fs::read_dir(&d).map_err(io("list", &d))? {
            let e = e.map_err(io("list", &d))?;
            if let Some(id) = e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) {
                max = Some(max.map_or(id, |m| m.max(id)));
            }
        }
        Ok(max.map_or(0, |m| m + 1))
    }

    /// When checkpoint `id` was saved (its record's mtime, seconds since the epoch; the
    /// record is written once), None when it does not exist.
    pub fn saved_at(&self, id: u64) -> Result<Option<u64>, LayerError> {
        let p = self.checkpoint_path(id);
        match fs::metadata(&p) {
            Ok(md) => Ok(Some(
                md.modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs()),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(LayerError::io("stat", p, e)),
        }
    }

    /// Whether checkpoint `id` existed and was pruned.
    pub fn pruned(&self, id: u64) -> bool {
        self.root.join("pruned").join(id.to_string()).exists()
    }

    /// Drops checkpoint `id` (leaving a "pruned" marker); objects are swept by [`Store::gc`].
    pub fn prune(&self, id: u64) -> Result<(), LayerError> {
        let m = self.root.join("pruned").join(id.to_string());
        fs::write(&m, b"").map_err(io("write", &m))?;
        let p = self.checkpoint_path(id);
        match fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(LayerError::io("remove", p, e))
            }
            _ => Ok(()),
        }
    }

    /// Removes every object no remaining checkpoint (nor `extra`) refers to; returns how
    /// many were removed.
    pub fn gc(&self, extra: &[String]) -> Result<u64, LayerError> {
        let mut live: std::collections::HashSet<String> = extra.iter().cloned().collect();
        for id in self.ids()? {
            if let Some(cp) = self.load(id)? {
                live.extend(cp.manifest.objects().map(str::to_owned));
            }
        }
        let objects = self.root.join("objects");
        let mut removed = 0;
        for a in fs::read_dir(&objects).map_err(io("list", &objects))? {
            let a = a.map_err(io("list", &objects))?;
            let an = a.file_name().to_string_lossy().into_owned();
            if an.starts_with(".tmp-") || !a.path().is_dir() {
                continue;
            }
            for b in fs::read_dir(a.path()).map_err(io("list", &objects))? {
                let b = b.map_err(io("list", &objects))?;
                let hash = format!("{an}{}", b.file_name().to_string_lossy());
                if !live.contains(&hash) {
                    fs::remove_file(b.path()).map_err(io("remove", &b.path()))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// Writes `data` to `p` crash-safely: a temp file beside it, fsync, rename, fsync the dir.
pub fn write_durably(p: &Path, data: &[u8]) -> Result<(), LayerError> {
    let tmp = p.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    f.write_all(data).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("fsync", &tmp))?;
    drop(f);
    fs::rename(&tmp, p).map_err(io("rename", p))?;
    if let Some(d) = p.parent()
        && let Ok(df) = File::open(d)
    {
        let _ = df.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
    use super::*;

    #[test]
    fn objects_are_content_addressed_verified_and_swept() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(&t.path().join("store")).unwrap();
        let src = t.path().join("f");
        fs::write(&src, b"hello\n").unwrap();
        let (h, n) = s.put_file(&src).unwrap();
        assert_eq!(n, 6);
        assert_eq!(
            h,
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        );
        assert_eq!(s.put_bytes(b"hello\n").unwrap(), h);
        assert_eq!(s.read(&h).unwrap(), b"hello\n");
        // Damage is detected, never returned as content.
        fs::write(s.object_path(&h), b"jello\n").unwrap();
        assert!(matches!(s.read(&h), Err(LayerError::Corrupt { .. })));
        // Unreferenced objects go; referenced ones stay.
        let keep = s.put_bytes(b"keep").unwrap();
        assert_eq!(s.gc(std::slice::from_ref(&keep)).unwrap(), 1);
        assert!(s.has(&keep) && !s.has(&h));
    }

    #[test]
    fn checkpoints_round_trip_and_pruning_leaves_a_marker() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let cp = Checkpoint {
            id: 3,
            call: Some(2),
            created_at: 1,
            files: 0,
            bytes: 0,
            reason: "before call 2".into(),
            manifest: Manifest::default(),
        };
        s.save(&cp).unwrap();
        assert_eq!(s.ids().unwrap(), vec![3]);
        assert_eq!(s.load(3).unwrap().unwrap(), cp);
        assert!(s.load(4).unwrap().is_none() && !s.pruned(4));
        s.prune(3).unwrap();
        assert!(s.load(3).unwrap().is_none() && s.pruned(3));
    }
}
