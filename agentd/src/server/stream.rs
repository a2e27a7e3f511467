//! Streaming: NDJSON answers ([`crate::api::StreamEvent`] per line) for calls that stream
//! their output and for followed session logs; the agent's stdin fed from
//! `POST /v1/sessions/{id}/stdin`; and the bound on the session logs kept on disk.
//!
//! The agent's stdout/stderr go to files in `<state>/logs` (not to the daemon): a file
//! outlives a daemon restart, so the agent never writes into a closed pipe. Following a
//! session reads those files as they grow. They stay bounded: once a log holds more than
//! twice [`LOG_KEEP`], everything before its last [`LOG_KEEP`] bytes is punched out
//! (`fallocate(PUNCH_HOLE)`, the disk blocks are freed; readers start at the first data,
//! `lseek(SEEK_DATA)`).

use std::convert::Infallible;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Path as UrlPath, State as AxState};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper::body::{Bytes, Frame};
use tokio::io::AsyncWriteExt;

use super::sessions::visible;
use super::{ApiError, Daemon, Peer, State};
use crate::api::{StdinDone, StreamEvent};

/// Bytes of each session log kept (the last ones).
pub const LOG_KEEP: u64 = 8 << 20;

/// Largest piece of a log sent in one event.
const CHUNK: usize = 64 << 10;

/// How often a follower looks for new output.
const POLL: Duration = Duration::from_millis(100);

/// The content type of streamed answers.
pub const NDJSON: &str = "application/x-ndjson";

/// The sending side of an NDJSON answer.
#[derive(Debug)]
pub struct Ndjson {
    tx: http_body_util::channel::Sender<Bytes, Infallible>,
}

impl Ndjson {
    /// A streamed 200 answer and the handle that writes its lines.
    pub fn new() -> (Ndjson, Response) {
        let (tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(16);
        let resp = ([("content-type", NDJSON)], Body::new(body)).into_response();
        (Ndjson { tx }, resp)
    }

    /// Sends one event; false once the client has gone.
    pub async fn send(&mut self, ev: &StreamEvent) -> bool {
        let Ok(mut line) = serde_json::to_vec(ev) else {
            return false;
        };
        line.push(b'\n');
        self.tx.send(Frame::data(Bytes::from(line))).await.is_ok()
    }
}

/// Turns a byte stream into text, keeping a UTF-8 character split across reads whole and
/// replacing invalid bytes.
#[derive(Debug, Default)]
pub struct Utf8Carry(Vec<u8>);

impl Utf8Carry {
    /// The text of `data` (after what was carried over); an incomplete tail is kept.
    pub fn push(&mut self, data: &[u8]) -> String {
        self.0.extend_from_slice(data);
        let buf = std::mem::take(&mut self.0);
        let mut out = String::new();
        let mut rest: &[u8] = &buf;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    return out;
                }
                Err(e) => {
                    let (ok, bad) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(ok).unwrap_or_default());
                    match e.error_len() {
                        None => {
                            self.0 = bad.to_vec();
                            return out;
                        }
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &bad[n..];
                        }
                    }
                }
            }
        }
    }

    /// What is left at the end of the stream (an incomplete character, replaced).
    pub fn finish(self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

/// The first offset at or after `from` holding data (skips a punched-out front), or the
/// file's end.
fn data_from(f: &std::fs::File, from: u64) -> u64 {
    // SAFETY: lseek on a descriptor we own; it only moves the file offset.
    let r = unsafe { libc::lseek(f.as_raw_fd(), from as libc::off_t, libc::SEEK_DATA) };
    if r >= 0 {
        r as u64
    } else {
        // ENXIO: no data after `from` (the end, or all holes).
        f.metadata().map_or(from, |m| m.len().max(from))
    }
}

/// Punches out a log's front so that between [`LOG_KEEP`] and twice that is kept.
pub fn bound_log(path: &Path) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    let size = f.metadata()?.len();
    let start = data_from(&f, 0);
    if size.saturating_sub(start) <= 2 * LOG_KEEP {
        return Ok(());
    }
    let end = (size - LOG_KEEP) & !4095;
    // SAFETY: fallocate on a descriptor we own; PUNCH_HOLE|KEEP_SIZE frees the range's
    // blocks (reads there give zeros) without changing the size or the writer's offset.
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            end as libc::off_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Keeps every live session's logs bounded, for as long as the daemon runs.
pub async fn bound_logs_forever(d: Arc<Daemon>) {
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let ids: Vec<String> = d
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        for id in ids {
            for ext in ["out", "err"] {
                let p = log_path(&d, &id, ext);
                if let Err(e) = bound_log(&p) {
                    super::log::warn(&format!("bounding {}: {e}", p.display()));
                }
            }
        }
    }
}

/// `<state>/logs/<id>.<ext>`.
pub fn log_path(d: &Daemon, id: &str, ext: &str) -> PathBuf {
    d.cfg.state_dir.join("logs").join(format!("{id}.{ext}"))
}

/// Reads from `off` (moved past a punched-out front) up to `max` bytes; returns the bytes
/// and the new offset. A missing file reads as empty.
pub fn read_from(path: &Path, off: u64, max: usize) -> (Vec<u8>, u64) {
    let Ok(mut f) = std::fs::File::open(path) else {
        return (Vec::new(), off);
    };
    let off = data_from(&f, off).max(off);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(off)).is_ok() {
        let _ = (&mut f).take(max as u64).read_to_end(&mut buf);
    }
    let n = buf.len() as u64;
    (buf, off + n)
}

/// The kept text of a log: its last [`LOG_KEEP`] bytes at most.
pub fn read_kept(path: &Path) -> String {
    let size = std::fs::metadata(path).map_or(0, |m| m.len());
    let (b, _) = read_from(path, size.saturating_sub(LOG_KEEP), LOG_KEEP as usize);
    String::from_utf8_lossy(&b).into_owned()
}

/// `GET /v1/sessions/{id}/logs?follow=true`: the kept output, then new output as it comes,
/// then the session's row once the agent has exited and everything was sent.
pub fn follow(d: State, id: String, peer: Peer) -> Response {
    let (mut tx, resp) = Ndjson::new();
    tokio::spawn(async move {
        let paths = [log_path(&d, &id, "out"), log_path(&d, &id, "err")];
        let mut offs = [0u64; 2];
        let mut carry = [Utf8Carry::default(), Utf8Carry::default()];
        loop {
            // Looked at before reading: output written before the end is then all read.
            let ended = d.live(&id).is_none();
            let mut any = false;
            for i in 0..2 {
                let (b, next) = read_from(&paths[i], offs[i], CHUNK);
                offs[i] = next;
                if b.is_empty() {
                    continue;
                }
                any = true;
                let text = carry[i].push(&b);
                let ev = if i == 0 {
                    StreamEvent::Stdout(text)
                } else {
                    StreamEvent::Stderr(text)
                };
                if !tx.send(&ev).await {
                    return;
                }
            }
            if ended && !any {
                let last = match visible(&d, &peer, &id) {
                    Ok(s) => StreamEvent::Session(Box::new(s)),
                    Err(e) => StreamEvent::Error(e.to_string()),
                };
                let _ = tx.send(&last).await;
                return;
            }
            if !any {
                tokio::time::sleep(POLL).await;
            }
        }
    });
    resp
}

/// `POST /v1/sessions/{id}/stdin`: the request body, as it arrives, is the agent's stdin;
/// its end is the agent's end-of-file. Only for sessions started with `stdin: true`, once.
pub async fn stdin(
    AxState(d): AxState<State>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    UrlPath(id): UrlPath<String>,
    body: Body,
) -> Result<Json<StdinDone>, ApiError> {
    visible(&d, &peer, &id)?;
    let live = d
        .live(&id)
        .ok_or_else(|| ApiError::NotLive { id: id.clone() })?;
    let mut pipe = live
        .stdin
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .ok_or_else(|| ApiError::NoStdin { id: id.clone() })?;
    let mut body = body;
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|source| ApiError::Body {
            what: "stdin",
            source,
        })?;
        if let Ok(data) = frame.into_data() {
            // The agent closed its stdin or exited: the rest has nowhere to go.
            if pipe.write_all(&data).await.is_err() {
                break;
            }
            bytes += data.len() as u64;
        }
    }
    // Dropping the pipe's only writer gives the agent end-of-file.
    drop(pipe);
    Ok(Json(StdinDone { bytes }))
}

/// The agent's stdin for a session started with `stdin: true`: a FIFO whose read end the
/// agent gets and whose write end the daemon keeps (the FIFO's name is removed at once).
pub fn stdin_pipe(
    dir: &Path,
    id: &str,
) -> std::io::Result<(std::fs::File, tokio::net::unix::pipe::Sender)> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(format!("{id}.in"));
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(std::io::Error::other)?;
    // SAFETY: mkfifo with a NUL-terminated path we own.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let opened = (|| {
        // Non-blocking, or the open would wait for a writer.
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)?;
        let writer = tokio::net::unix::pipe::OpenOptions::new().open_sender(&path)?;
        // The agent reads blocking.
        // SAFETY: fcntl on a descriptor we own; F_SETFL only changes its status flags.
        if unsafe { libc::fcntl(reader.as_raw_fd(), libc::F_SETFL, 0) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((reader, writer))
    })();
    let _ = std::fs::remove_file(&path);
    opened
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code
    use super::*;

    #[test]
    fn a_character_split_across_reads_stays_whole_and_bad_bytes_are_replaced() {
        let mut c = Utf8Carry::default();
        let e = "é".as_bytes(); // two bytes
        assert_eq!(c.push(&[b'a', e[0]]), "a");
        assert_eq!(c.push(&[e[1], b'b']), "éb");
        assert_eq!(c.push(&[0xff, b'c']), "\u{FFFD}c");
        assert_eq!(c.push(&[e[0]]), "");
        assert_eq!(c.finish(), "\u{FFFD}");
    }

    #[test]
    fn a_log_past_twice_the_kept_size_keeps_its_last_part_readable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.out");
        let total = 3 * LOG_KEEP as usize + 123;
        let data: Vec<u8> = (0..total).map(|i| b'a' + (i % 26) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        bound_log(&p).unwrap();
        // The size is unchanged (a writer's offset stays valid); the front reads as a hole.
        assert_eq!(std::fs::metadata(&p).unwrap().len(), total as u64);
        let kept = read_kept(&p);
        assert_eq!(kept.len() as u64, LOG_KEEP);
        assert_eq!(kept.as_bytes(), &data[total - LOG_KEEP as usize..]);
        // A follower from 0 skips the punched front (when the filesystem reports holes).
        let (b, next) = read_from(&p, 0, 16);
        assert_eq!(b.len(), 16);
        assert!(next > 16 && b[0] != 0, "read the hole's zeros: {next}");
        // Under the threshold nothing more is punched.
        bound_log(&p).unwrap();
        assert_eq!(read_kept(&p).len() as u64, LOG_KEEP);
    }
}
