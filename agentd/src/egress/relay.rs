//! Relaying an allowed connection: bytes each way between the client's socket (in the
//! session's netns) and the upstream socket (the host's), counted, with an idle timeout.
//!
//! Each direction moves data with `splice(2)` through its own pipe: socket → pipe → socket
//! moves page references inside the kernel, so the daemon copies no payload through user
//! space (the cost that held a buffered relay to a fraction of a direct stream, see
//! docs/egress.md "Overhead"), and one wakeup moves up to a pipe's worth (`PIPE_SIZE`)
//! instead of one buffer. When a pipe cannot be made (out of file descriptors) the
//! direction falls back to a buffered copy of the same shape.
//!
//! Memory per connection is bounded: two pipes of `PIPE_SIZE` (kernel pages, only while
//! data is in flight) or two `COPY_BUF` buffers on the fallback.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Capacity asked for each direction's pipe (`F_SETPIPE_SZ`; the kernel rounds to pages).
/// 256 KiB: a full TCP receive window on the VM's loopback moves in one or two splices.
pub const PIPE_SIZE: usize = 256 * 1024;
/// The fallback's buffer per direction.
pub const COPY_BUF: usize = 64 * 1024;

/// How a relay ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Both directions reached end of file (or one side reset).
    Closed,
    /// No byte moved either way for the idle timeout.
    Idle,
}

/// Bytes moved and how it ended.
#[derive(Debug)]
pub struct Outcome {
    pub up: u64,
    pub down: u64,
    pub end: End,
}

/// Empty pipes kept for the next relays of a session (at most this many): making one costs
/// three system calls (pipe2, F_SETPIPE_SZ, and two closes later) on every connection's
/// critical path.
pub const POOL_MAX: usize = 64;

/// A session's spare pipes. Only a pipe a relay drained to its end of file comes back, so
/// a pipe taken from here is always empty.
#[derive(Debug, Default)]
pub struct PipePool(std::sync::Mutex<Vec<Pipe>>);

impl PipePool {
    fn take(&self) -> io::Result<Pipe> {
        let spare = self.0.lock().unwrap_or_else(|p| p.into_inner()).pop();
        spare.map_or_else(Pipe::new, Ok)
    }

    fn give(&self, p: Pipe) {
        let mut v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if v.len() < POOL_MAX {
            v.push(p);
        }
    }

    /// Pipes kept now.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A pipe's two ends, non-blocking.
#[derive(Debug)]
struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two fds into the array on success.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both fds were just returned by pipe2 and are owned here only.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A larger pipe is an optimisation: keep the default if the kernel refuses.
        // SAFETY: fcntl on a valid pipe fd.
        unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE as libc::c_int) };
        Ok(Pipe { r, w })
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: splice between valid fds with null offsets (neither is seekable).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Activity clock shared by both directions: milliseconds since `t0` of the last move.
struct Clock {
    t0: Instant,
    last_ms: AtomicU64,
}

impl Clock {
    fn touch(&self) {
        self.last_ms
            .store(self.t0.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn idle_for(&self) -> Duration {
        let now = self.t0.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Waits until `s` is ready for `interest`, then runs `f`; a spurious readiness (the
/// call would block) waits again.
async fn io_when<T>(
    s: &TcpStream,
    interest: Interest,
    mut f: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    loop {
        s.ready(interest).await?;
        match s.try_io(interest, &mut f) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

/// One direction, `from` → `to`, until end of file (then `to` is shut for writing).
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    count: &AtomicU64,
    clock: &Clock,
    pool: Option<&PipePool>,
) -> io::Result<()> {
    let pipe = pool.and_then(|p| p.take().ok().map(|pipe| (p, pipe)));
    let res = match pipe {
        Some((pool, p)) => {
            let r = pump_splice(from, to, &p, count, clock).await;
            // Drained to the end of file: empty, reusable. After an error it may hold data.
            if r.is_ok() {
                pool.give(p);
            }
            r
        }
        None => pump_copy(from, to, count, clock).await,
    };
    // Pass the end of file on (a reset or error ends the other direction too, by closing).
    // SAFETY: shutdown on a valid socket fd.
    unsafe { libc::shutdown(to.as_raw_fd(), libc::SHUT_WR) };
    res
}

async fn pump_splice(
    from: &TcpStream,
    to: &TcpStream,
    p: &Pipe,
    count: &AtomicU64,
    clock: &Clock,
) -> io::Result<()> {
    let (src, dst) = (from.as_raw_fd(), to.as_raw_fd());
    let (pr, pw) = (p.r.as_raw_fd(), p.w.as_raw_fd());
    loop {
        // The pipe is empty here: fill it from the socket.
        let mut held = io_when(from, Interest::READABLE, || splice(src, pw, PIPE_SIZE)).await?;
        if held == 0 {
            return Ok(());
        }
        clock.touch();
        while held > 0 {
            let n = io_when(to, Interest::WRITABLE, || splice(pr, dst, held)).await?;
            held -= n;
            count.fetch_add(n as u64, Ordering::Relaxed);
            clock.touch();
        }
    }
}

async fn pump_copy(
    from: &TcpStream,
    to: &TcpStream,
    count: &AtomicU64,
    clock: &Clock,
) -> io::Result<()> {
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        let n = io_when(from, Interest::READABLE, || from.try_read(&mut buf)).await?;
        if n == 0 {
            return Ok(());
        }
        clock.touch();
        let mut off = 0;
        while off < n {
            let k = io_when(to, Interest::WRITABLE, || to.try_write(&buf[off..n])).await?;
            off += k;
            count.fetch_add(k as u64, Ordering::Relaxed);
            clock.touch();
        }
    }
}

/// Relays until both directions end, or nothing moves for `idle`, with pipes from `pool`
/// (`None`: the buffered copy, for tests of the fallback).
pub async fn relay(
    client: &TcpStream,
    up: &TcpStream,
    idle: Duration,
    pool: Option<&PipePool>,
) -> Outcome {
    let clock = Clock {
        t0: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let (n_up, n_down) = (AtomicU64::new(0), AtomicU64::new(0));
    let both = async {
        // An error in one direction (a reset) ends the relay: the other side is closed by
        // the caller dropping both sockets.
        let a = pump(client, up, &n_up, &clock, pool);
        let b = pump(up, client, &n_down, &clock, pool);
        tokio::pin!(a, b);
        let (mut a_done, mut b_done) = (false, false);
        while !(a_done && b_done) {
            tokio::select! {
                r = &mut a, if !a_done => { a_done = true; if r.is_err() { break } }
                r = &mut b, if !b_done => { b_done = true; if r.is_err() { break } }
            }
        }
    };
    let watchdog = async {
        loop {
            let quiet = clock.idle_for();
            if quiet >= idle {
                return;
            }
            tokio::time::sleep(idle - quiet).await;
        }
    };
    let end = tokio::select! {
        () = both => End::Closed,
        () = watchdog => End::Idle,
    };
    Outcome {
        up: n_up.load(Ordering::Relaxed),
        down: n_down.load(Ordering::Relaxed),
        end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// client ⇄ relay ⇄ server on loopback: returns (client end, server end, relay task).
    async fn rig(
        idle: Duration,
        pool: Option<Arc<PipePool>>,
    ) -> (TcpStream, TcpStream, tokio::task::JoinHandle<Outcome>) {
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let back = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (fa, ba) = (front.local_addr().unwrap(), back.local_addr().unwrap());
        let client = TcpStream::connect(fa).await.unwrap();
        let (relay_client, _) = front.accept().await.unwrap();
        let relay_up = TcpStream::connect(ba).await.unwrap();
        let (server, _) = back.accept().await.unwrap();
        let task =
            tokio::spawn(
                async move { relay(&relay_client, &relay_up, idle, pool.as_deref()).await },
            );
        (client, server, task)
    }

    #[tokio::test]
    async fn relays_both_ways_counts_and_passes_end_of_file_on() {
        let pool = Arc::new(PipePool::default());
        // Spliced twice (the second time with the first relay's pipes), then buffered.
        for p in [Some(pool.clone()), Some(pool.clone()), None] {
            both_ways(p).await;
            // Drained pipes come back and are reused (one direction may finish before the
            // other starts and hand its pipe on): never more than the two a relay uses.
            assert!((1..=2).contains(&pool.len()), "{} pipes kept", pool.len());
        }
    }

    async fn both_ways(pool: Option<Arc<PipePool>>) {
        let (mut c, mut s, task) = rig(Duration::from_secs(30), pool).await;
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            s.write_all(&sent).await.unwrap();
            s.shutdown().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            got
        });
        c.write_all(b"hello upstream").await.unwrap();
        c.shutdown().await.unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.unwrap();
        assert!(
            got == big,
            "the stream arrived altered ({} bytes)",
            got.len()
        );
        assert_eq!(writer.await.unwrap(), b"hello upstream");
        let o = task.await.unwrap();
        assert_eq!((o.up, o.down, o.end), (14, 3_000_000, End::Closed));
    }

    #[tokio::test]
    async fn an_idle_relay_ends_at_the_timeout_and_not_before() {
        let (mut c, mut s, task) = rig(Duration::from_millis(600), Some(Arc::default())).await;
        // Traffic every 300 ms keeps it open past the timeout …
        for _ in 0..4 {
            c.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert!(!task.is_finished(), "closed while active");
        // … then silence closes it, and both ends see the close.
        let t = Instant::now();
        let o = task.await.unwrap();
        assert_eq!(o.end, End::Idle);
        assert_eq!(o.up, 4);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        let mut b = [0u8; 1];
        assert_eq!(c.read(&mut b).await.unwrap_or(0), 0);
        assert_eq!(s.read(&mut b).await.unwrap_or(0), 0);
    }
}
