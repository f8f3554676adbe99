//! Flushing: an immutable memtable becomes a level-0 table.
//!
//! # Order of the steps (what makes a crash at any point safe)
//!
//! 1. Write the blob file (values of at least `blob_threshold` bytes, see
//!    `blob.rs`) and fsync it, then the table referencing it, then fsync
//!    the tables directory. (A version the memtable holds as a blob
//!    reference — its value written to a blob file before its batch — goes
//!    into the table as that reference; its file is written already.) A crash here leaves files the manifest does
//!    not name or reference: deleted at open.
//! 2. Run the owner's flush barrier: the owner's log must be durable up to
//!    every position the memtable noted, or a table would hold an effect
//!    whose log entry a crash could still take back.
//! 3. Append one manifest edit {table, flushed position per stream} and
//!    install the new version. From here readers find the data in the
//!    table, and on open the owner replays its log only past the positions.
//! 4. Take the memtable out of the immutable list (readers that cloned it
//!    keep theirs), wake stalled writers, tell the owner's flush hook the
//!    new positions (it may purge its log now).
//!
//! # Which versions the table keeps
//!
//! Not all of them. A chat workload rewrites a few small records on every
//! message (a conversation's head, an outbox head, a user's inbox head and
//! receipts), so most of a memtable is versions that a newer version of the
//! same key already hides: three in four in the e2e benchmark. Writing
//! them only for the next compaction to drop them cost the flush most of
//! its time — LZ4, bloom and write on four times the entries — and that
//! time is taken from the threads serving clients. The rule is the
//! compaction's (see [`super::compaction::worker`]): a version is dropped
//! when a newer version of its key is visible to every live snapshot
//! (`newer_seq <= oldest_snapshot`). A newer version not yet published, or
//! one an open snapshot predates, keeps the older one. A snapshot opened
//! after `oldest_snapshot` was read reads at or above it, so it sees the
//! newer version too. Tombstones are kept (older tables may hold what they
//! hide), and retention is left to compaction.
//!
//! # Pacing
//!
//! A flush is background work with a deadline far away: the next memtable
//! takes seconds to fill. With `yield_to_foreground` a background flush
//! works in slices of [`SLICE`] and pauses [`PAUSE`] between them, so on a
//! machine whose cores also serve clients it takes about a third of a core
//! for a while instead of a whole core at once (a 64 MiB memtable's flush
//! was 0.25 s of CPU: requests queued behind it for as long). It stops
//! pausing as soon as writers are about to stall (the immutable slots are
//! full), someone calls [`super::Lsm::flush`], or the store closes.
//!
//! Dropping is sound for recovery because the table stands for the whole
//! memtable up to its noted log positions: a replay after a crash starts
//! past them, so no dropped version is ever needed again.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::log::StreamId;
use crate::lsm::blob::{BlobRef, BlobWriter};
use crate::lsm::pace::WritePacer;
use crate::lsm::reaper::{free_when_sole, FLUSHER_WAIT};
use crate::lsm::table::builder::TableBuilder;
use crate::lsm::table::table_path;
use crate::lsm::version::TableFile;
use crate::lsm::{lock, Inner, Written};

/// Work between pauses of a paced flush.
const SLICE: Duration = Duration::from_millis(2);
/// A paced flush's pause.
const PAUSE: Duration = Duration::from_millis(4);
/// Entries between looks at the clock.
const CHECK_EVERY: u32 = 1024;

/// Paces a background flush (see the module documentation).
struct Pacer<'a> {
    inner: &'a Inner,
    on: bool,
    count: u32,
    slice_start: Instant,
}

impl<'a> Pacer<'a> {
    fn new(inner: &'a Inner, background: bool) -> Self {
        Pacer {
            inner,
            on: background && inner.opts.yield_to_foreground,
            count: 0,
            slice_start: Instant::now(),
        }
    }

    fn urgent(&self) -> bool {
        self.inner.flush_waiters.load(Ordering::Acquire) > 0
            || self.inner.closed.load(Ordering::Acquire)
            || self.inner.mem().immutables.len() >= self.inner.opts.max_immutable_memtables.max(1)
    }

    fn tick(&mut self) {
        if !self.on {
            return;
        }
        self.count += 1;
        if self.count % CHECK_EVERY != 0 || self.slice_start.elapsed() < SLICE {
            return;
        }
        if self.urgent() {
            // Stays off: the rest of this flush runs flat out.
            self.on = false;
            return;
        }
        std::thread::sleep(PAUSE);
        self.slice_start = Instant::now();
    }
}

/// Flushes the oldest immutable memtable; returns whether there was one.
/// `background`: called by the flush thread (which may pace it).
pub(super) fn flush_oldest(inner: &Inner, background: bool) -> Result<bool> {
    let _f = lock(&inner.flush_lock);
    let Some(mem) = inner.mem().immutables.last().cloned() else {
        return Ok(false);
    };
    let started = Instant::now();
    let positions = mem.positions();
    let mut added = Vec::new();
    let mut max_seq = 0;
    let mut kept = 0;
    let mut dropped = 0u64;
    if !mem.is_empty() {
        let id = inner.allocate_table_id();
        let path = table_path(&inner.tables_dir, id);
        let mut b = TableBuilder::create(&path, inner.build_options(false, Written::Flush))?;
        let oldest_snapshot = inner.oldest_snapshot();
        let mut prev_key: Vec<u8> = Vec::new();
        let mut newer_seq = u64::MAX;
        let mut pacer = Pacer::new(inner, background);
        let mut writes = WritePacer::new(inner, background);
        let mut blobs: Option<BlobWriter> = None;
        for v in mem.iter() {
            pacer.tick();
            writes.after(&mut b)?;
            if v.key() != prev_key.as_slice() {
                prev_key.clear();
                prev_key.extend_from_slice(v.key());
                newer_seq = u64::MAX;
            }
            let shadowed = newer_seq <= oldest_snapshot;
            newer_seq = v.seq();
            if shadowed {
                dropped += 1;
                continue;
            }
            match v.value() {
                // Already in a blob file (written before the batch that
                // referenced it): the table takes the reference.
                Some(val) if v.is_blob_ref() => {
                    let r = BlobRef::decode(val).ok_or_else(|| {
                        Error::corruption("<memtable>", 0, "a malformed blob reference")
                    })?;
                    b.add_blob(v.key(), v.seq(), &r)?;
                }
                // Large values go to the blob file, once (blob.rs).
                Some(val) if inner.opts.blob_threshold.is_some_and(|t| val.len() >= t) => {
                    let w = match &mut blobs {
                        Some(w) => w,
                        None => blobs.insert(BlobWriter::create(
                            &inner.tables_dir,
                            inner.allocate_table_id().0,
                        )?),
                    };
                    let r = w.append(val)?;
                    b.add_blob(v.key(), v.seq(), &r)?;
                }
                value => b.add(v.key(), v.seq(), value)?,
            }
        }
        // The blob file is durable before the table naming it is installed
        // (both are fsynced, then the directory, then the manifest edit).
        if let Some(w) = blobs.take() {
            let sum = w.finish()?;
            inner
                .stats
                .blob_bytes_written
                .fetch_add(sum.size, Ordering::Relaxed);
        }
        // The newest version of every key is kept, so a non-empty memtable
        // gives a non-empty table.
        let sum = b.finish()?;
        inner.sync_tables_dir()?;
        max_seq = sum.max_seq;
        kept = sum.entries;
        inner
            .stats
            .table_bytes_written
            .fetch_add(sum.size, Ordering::Relaxed);
        inner
            .stats
            .flush_versions_dropped
            .fetch_add(dropped, Ordering::Relaxed);
        let meta = sum.into_meta(id, 0);
        let table = inner.open_table(id)?;
        added.push(Arc::new(TableFile { meta, table }));
    }
    let mut flushed: Vec<(StreamId, u64)> = positions.iter().map(|(s, i)| (*s, *i)).collect();
    flushed.sort();
    if !flushed.is_empty() {
        if let Some(barrier) = lock(&inner.before_flush).as_ref() {
            barrier()?;
        }
    }
    let built = started.elapsed();
    inner.install(Vec::new(), added, Some(max_seq), flushed)?;
    {
        let mut m = inner
            .mem
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(pos) = m.immutables.iter().position(|x| Arc::ptr_eq(x, &mem)) {
            m.immutables.remove(pos);
        }
    }
    inner.stats.flushes.fetch_add(1, Ordering::Relaxed);
    inner.wake();
    if !positions.is_empty() {
        if let Some(hook) = lock(&inner.on_flush).as_ref() {
            hook(&lock(&inner.manifest).1.flushed.clone());
        }
    }
    // Freed off the serving threads (see reaper.rs).
    let freeing = Instant::now();
    match &inner.reaper {
        Some(r) => r.free(mem),
        None => free_when_sole(mem, FLUSHER_WAIT),
    }
    tracing::debug!(
        kept,
        dropped,
        build_ms = built.as_secs_f64() * 1e3,
        free_ms = freeing.elapsed().as_secs_f64() * 1e3,
        total_ms = started.elapsed().as_secs_f64() * 1e3,
        "memtable flushed"
    );
    Ok(true)
}
