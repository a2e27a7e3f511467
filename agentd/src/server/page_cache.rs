//! Keeps a session's page cache from filling its memory limit (docs/layer.md, "Memory:
//! page cache, not shmem"). The session layer is an ext4 image, so what the agent writes
//! is page cache charged to the session's cgroup: without a lower threshold a session that
//! writes more than its limit sits at `memory.max` (its `memory.peak` = the limit), its own
//! processes competing with clean cache for the last pages, and reclaim happens only when
//! an allocation has already failed the limit check.
//!
//! So each live session with a memory limit gets a session-wide `memory.high` well below
//! it: the kernel reclaims above `memory.high` synchronously in the writer's context (on
//! its return to user space) and lowers the cgroup's dirty-page ceiling with it, so clean
//! and written-back file pages go early and `memory.peak` stays near the threshold. What
//! cannot be reclaimed without swap (anon, shmem, kernel memory) must never be throttled
//! by it, so a thread per session re-reads `memory.stat` every [`PERIOD`] and keeps
//! `memory.high` at least [`headroom`] above that unreclaimable part, up to the limit
//! itself (then `memory.high` = `memory.max`: the limit alone, as before). The memory pool
//! (docs/memory.md) is not touched: it moves `memory.high` of `calls/<n>` and protects the
//! agent leaf with `memory.min`/`low`, all below this cgroup; the agent leaf's
//! `memory.min` counts as unreclaimable here, so this threshold never sits less than a
//! quarter of the limit above what reclaim cannot take.

use std::sync::Arc;
use std::time::Duration;

use super::sessions::Live;

/// How often the threshold follows the session's unreclaimable memory.
pub const PERIOD: Duration = Duration::from_millis(100);

/// Thresholds move in steps of this, so a steady session is not rewritten every period.
const STEP: u64 = 4 << 20;

/// How far above the unreclaimable memory the threshold stays: a quarter of the limit, so
/// anon growth has a quarter of the limit per [`PERIOD`] before it could be throttled.
pub fn headroom(limit: u64) -> u64 {
    limit / 4
}

/// `memory.high` for a session with `limit` (its `memory.max`) whose processes hold
/// `pinned` bytes that reclaim cannot take: half the limit, or `pinned` + [`headroom`] if
/// more, in [`STEP`]s, never above the limit.
pub fn high_for(limit: u64, pinned: u64) -> u64 {
    let want = (limit / 2).max(pinned.saturating_add(headroom(limit)));
    want.div_ceil(STEP).saturating_mul(STEP).min(limit)
}

/// The unreclaimable part of a cgroup's `memory.current` given its `memory.stat`:
/// everything but the file LRUs (shmem is on the anon LRU, so it counts as pinned).
pub fn pinned(current: u64, stat: &str) -> u64 {
    let field = |k: &str| -> u64 {
        stat.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0)
    };
    current.saturating_sub(field("active_file") + field("inactive_file"))
}

/// One adjustment: the threshold to write, or None (no limit, or unchanged).
fn tick(s: &cgctl::Session, last: Option<u64>) -> Option<u64> {
    let cg = s.cgroup();
    let limit: u64 = cg.read("memory.max").ok()?.trim().parse().ok()?; // "max": nothing
    let current: u64 = cg.read("memory.current").ok()?.trim().parse().ok()?;
    let stat = cg.read("memory.stat").ok()?;
    // The pool protects the agent leaf's usage with memory.min (docs/memory.md): reclaim
    // cannot take its file pages either, so they count as pinned.
    let protected: u64 = s
        .agent()
        .read("memory.min")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let high = high_for(limit, pinned(current, &stat).saturating_add(protected));
    (last != Some(high)).then_some(high)
}

/// Starts the thread that keeps `live`'s threshold; it ends with the session.
pub fn watch(live: &Arc<Live>) {
    let live = live.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("page-cache-{}", live.id))
        .spawn(move || {
            let mut last = None;
            while !*live.done.borrow() {
                let cg = live.cg.cgroup();
                if let Some(h) = tick(&live.cg, last) {
                    // O_NONBLOCK: lowering the threshold never stalls this thread in reclaim
                    // on kernels that support it (the session's own tasks reclaim instead).
                    match cg.write_nonblock("memory.high", &h.to_string()) {
                        Ok(()) => last = Some(h),
                        Err(_) if !cg.path().exists() => break,
                        Err(e) => {
                            super::log::warn(&format!(
                                "session {}: memory.high for its page cache: {e}",
                                live.id
                            ));
                            break;
                        }
                    }
                }
                std::thread::sleep(PERIOD);
            }
        });
    if let Err(e) = spawned {
        super::log::warn(&format!("page-cache thread: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1 << 20;

    #[test]
    fn the_threshold_is_half_the_limit_until_pinned_memory_needs_more() {
        assert_eq!(high_for(512 * M, 0), 256 * M);
        assert_eq!(high_for(512 * M, 100 * M), 256 * M);
        // pinned + a quarter of the limit, in 4 MiB steps.
        assert_eq!(high_for(512 * M, 200 * M), 328 * M);
        assert_eq!(high_for(512 * M, 201 * M), 332 * M);
        // Never above the limit: then the limit alone, as without the threshold.
        assert_eq!(high_for(512 * M, 500 * M), 512 * M);
        assert_eq!(high_for(512 * M, u64::MAX), 512 * M);
    }

    #[test]
    fn pinned_memory_is_all_but_the_file_lru() {
        let stat = "anon 1000\nfile 9000\nactive_file 3000\ninactive_file 5000\nshmem 1000\n\
                    file_dirty 10\n";
        assert_eq!(pinned(10_000, stat), 2_000);
        assert_eq!(pinned(1_000, stat), 0);
        assert_eq!(pinned(10_000, "anon 10000\n"), 10_000);
    }
}
