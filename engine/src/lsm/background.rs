//! The background threads, and how writers are held back so that they keep
//! up.
//!
//! # Two threads: one flushes, one compacts
//!
//! A flush is what stalled writers wait for (they stop once
//! `max_immutable_memtables` are full); a compaction is what keeps level 0
//! shallow and the tree's shape bounded. With one thread doing both in
//! turn, a flush waited behind a compaction that could run for seconds (a
//! level-0 compaction merges every level-0 table with level 1), and a
//! compaction never ran while flushes kept coming: under a sustained
//! ingest of 30M messages level 0 grew to 75 tables, every read probing
//! each of them. So the flush thread (`missive-lsm-fls`) only flushes, the
//! compaction thread (`missive-lsm-cmp`) only compacts, and in idle time
//! runs the recompression pass (`compaction::picker`). They share nothing
//! but the version: each installs its edit onto the current version under
//! the manifest lock (`Inner::install`), a flush adds level-0 tables newer
//! than any compaction's inputs, and a compaction removes only the tables
//! it read, so either may install first.
//!
//! # Backpressure: level 0 stays shallow
//!
//! Compaction has a cost per byte ingested (each byte is rewritten about
//! once per level it descends), so a writer faster than compaction must be
//! slowed, or level 0 — which every read probes table by table — grows
//! without bound. Two thresholds on the level-0 table count:
//!
//! - from `l0_slowdown_tables` on, each batch adds to a slowdown debt
//!   `bytes / rate`, with the rate 256 MiB/s at the threshold and halved
//!   per table deeper; a writer sleeps the debt once it reaches 1 ms (at
//!   most [`MAX_SLEEP`] at a time), holding the write lock, so the store's
//!   writers as a whole are paced. Level 0 settles at the depth where
//!   that rate meets what compaction absorbs, and no writer waits long:
//!   the pacing is a stream of short sleeps, not a stop.
//! - at `l0_stop_tables` the flush thread waits for compaction; writers
//!   then stall once the immutable memtables are full as well. A safety
//!   net for a compaction that cannot keep up even with slowed writers
//!   (a slow disk): reads never probe more than that many level-0 tables
//!   plus the memtables.
//!
//! Past halfway from the slowdown to the stop, the compaction thread takes
//! level 0 before any deeper level, whatever the picker's scores say
//! (`picker::pick_level0`): a long push-down of a deeper level let level 0
//! reach the stop (a 334 ms stall in a 5M ingest). Not from the slowdown
//! on: under a sustained ingest writers are slowed most of the time, and
//! level 1, never pushed down, made every level-0 compaction rewrite all
//! of it (248k against 386–409k messages/s over 30M).
//!
//! The thresholds are 20 and 36 tables, RocksDB's defaults for the same
//! two knobs; they were 8 and 20. A level-0 compaction takes every
//! level-0 table at once and merges them with all of level 1 (each
//! memtable spans the whole key space), so its cost per byte ingested is
//! about `1 + level 1 / level 0`: slowing writers at 8 tables kept level 0
//! small and each of its compactions rewrote a level 1 several times its
//! size. Slowed from 20, level 0 grows deeper under a sustained ingest,
//! each compaction carries more of it down, and the 30M-message ingest
//! ran at 1.08–1.18M messages/s with 8.1–9.1 s of background CPU per GB
//! against 0.88–0.94M and 10.4–10.9 s/GB (alternating, same binary,
//! 2026-12-06). The cost: while an ingest outruns compaction, a read of
//! a conversation written to in each of those tables merges up to 20–36
//! level-0 tables (every read checks their bloom filters).
//!
//! An explicit [`super::Lsm::flush`] does not wait for the stop: its
//! caller (a shutdown, a tool) needs the memtables on disk now.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::lsm::memtable::Memtable;
use crate::lsm::pressure::{l0_full, slowdown_depth};
use crate::lsm::{
    compact_once, flush, lock, reclaim_blobs_once, recompress_once, Inner, Recompressed,
};

/// How long the compaction thread must have seen no flush or compaction
/// before the recompression pass starts: data compacted moments ago is
/// likely to be compacted again (a burst's tail, a caller's full
/// compaction), and HC spent on it is wasted.
const RECOMPRESS_AFTER_IDLE: Duration = Duration::from_secs(5);

/// The compaction thread's nice value: below the writers and the flush
/// thread, which are what a waiting writer waits for.
const COMPACTION_NICE: i32 = 10;

/// The writers' ingest rate at `l0_slowdown_tables`, in bytes per second;
/// halved per level-0 table deeper.
const SLOWDOWN_RATE: f64 = (256u64 << 20) as f64;

/// Debt a writer carries before it sleeps: sleeps shorter than this cost
/// more in timer slack than they pace.
const MIN_SLEEP: Duration = Duration::from_millis(1);

/// The longest one slowdown sleep; the rest of the debt carries over to
/// the next batches.
const MAX_SLEEP: Duration = Duration::from_millis(10);

/// Starts the flush thread and the compaction thread.
pub(super) fn start(inner: &Arc<Inner>) -> Result<Vec<JoinHandle<()>>> {
    let spawn = |name: &str, body: fn(&Inner)| {
        let i = Arc::clone(inner);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || body(&i))
            .map_err(|e| Error::io("spawn a background thread for", &inner.dir, e))
    };
    let flusher = spawn("missive-lsm-fls", flusher)?;
    match spawn("missive-lsm-cmp", compactor) {
        Ok(compactor) => Ok(vec![flusher, compactor]),
        Err(err) => {
            inner.closed.store(true, Ordering::Release);
            inner.wake();
            let _ = flusher.join();
            Err(err)
        }
    }
}

/// Sleeps a writer's share of the slowdown (see the module documentation).
/// Called with the write lock held.
pub(super) fn slow_down(inner: &Inner, bytes: usize) {
    let Some(depth) = slowdown_depth(inner) else {
        inner.slowdown_debt_ns.store(0, Ordering::Relaxed);
        return;
    };
    let rate = SLOWDOWN_RATE / f64::from(1u32 << depth.min(24));
    let add = (bytes as f64 / rate * 1e9) as u64;
    let debt = inner.slowdown_debt_ns.fetch_add(add, Ordering::Relaxed) + add;
    if debt < MIN_SLEEP.as_nanos() as u64 {
        return;
    }
    let sleep = debt.min(MAX_SLEEP.as_nanos() as u64);
    inner.slowdown_debt_ns.fetch_sub(sleep, Ordering::Relaxed);
    std::thread::sleep(Duration::from_nanos(sleep));
    inner.stats.slowdowns.fetch_add(1, Ordering::Relaxed);
    inner
        .stats
        .slowdown_micros
        .fetch_add(sleep / 1000, Ordering::Relaxed);
}

/// The flush thread: flushes the oldest immutable memtable whenever there
/// is one, unless level 0 is full.
fn flusher(inner: &Inner) {
    loop {
        let Some(seen) = running(inner) else { return };
        prepare_spare(inner);
        if l0_full(inner) {
            wait(inner, seen, Duration::from_millis(100));
            continue;
        }
        match flush::flush_oldest(inner, true) {
            Ok(true) => worked(inner),
            Ok(false) => wait(inner, seen, Duration::from_millis(500)),
            Err(err) => return fail(inner, err),
        }
    }
}

/// Makes the empty memtable the next rotation takes, if there is none.
fn prepare_spare(inner: &Inner) {
    if inner.mem().spare.is_some() {
        return;
    }
    let fresh = Arc::new(Memtable::with_chunk_pool(&inner.chunks));
    let mut m = inner
        .mem
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    m.spare.get_or_insert(fresh);
}

/// The compaction thread: compacts while the picker finds work, then (idle
/// for a while) runs the recompression pass a table at a time.
fn compactor(inner: &Inner) {
    crate::lsm::priority::set_nice(COMPACTION_NICE, "the compaction thread");
    loop {
        let Some(seen) = running(inner) else { return };
        match compact_once(inner) {
            Ok(true) => {
                worked(inner);
                // The flush thread may wait for level 0 to shrink.
                inner.wake();
                continue;
            }
            Ok(false) => {}
            Err(err) => return fail(inner, err),
        }
        let idle_ms = (inner.opened.elapsed().as_millis() as u64)
            .saturating_sub(inner.last_work_ms.load(Ordering::Acquire));
        if idle_ms >= RECOMPRESS_AFTER_IDLE.as_millis() as u64
            && inner.compaction_waiters.load(Ordering::Acquire) == 0
        {
            // Blob files at least half garbage first (disk space), then
            // the recompression pass. An abandoned rewrite (work arrived)
            // is not retried at once: the loop takes the compaction first,
            // and comes back here only when idle again.
            match reclaim_blobs_once(inner, true) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(err) => return fail(inner, err),
            }
            match recompress_once(inner, true) {
                Ok(Recompressed::One) => continue,
                Ok(_) => {}
                Err(err) => return fail(inner, err),
            }
        }
        wait(inner, seen, Duration::from_millis(500));
    }
}

/// The wake-up counter to wait on, or `None` once the store is closing or
/// a background error has stopped it.
fn running(inner: &Inner) -> Option<u64> {
    let seen = *lock(&inner.bg_mu);
    let stopped = inner.closed.load(Ordering::Acquire) || lock(&inner.bg_error).is_some();
    (!stopped).then_some(seen)
}

/// Notes that a background thread just flushed or compacted.
fn worked(inner: &Inner) {
    let now = inner.opened.elapsed().as_millis() as u64;
    inner.last_work_ms.fetch_max(now, Ordering::AcqRel);
}

/// Sleeps until the wake-up counter moves past `seen`, or `timeout`.
fn wait(inner: &Inner, seen: u64, timeout: Duration) {
    let g = lock(&inner.bg_mu);
    if *g != seen || inner.closed.load(Ordering::Acquire) {
        return;
    }
    drop(
        inner
            .bg_cv
            .wait_timeout(g, timeout)
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
}

/// Records a background failure: from here the store refuses writes.
fn fail(inner: &Inner, err: Error) {
    tracing::error!(%err, "background flush/compaction failed; the store refuses writes");
    *lock(&inner.bg_error) = Some(Arc::new(err));
    inner.wake();
}
