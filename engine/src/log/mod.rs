//! The node-wide durable log: one write-ahead log for every stream (shard)
//! of a node, group-committed.
//!
//! # What it guarantees
//!
//! 1. **Readable before return.** [`Log::append`] returns once its entries
//!    are written to the segment file (the page cache), so any thread can
//!    read them back; the returned [`Durable`] fires once they survived an
//!    fdatasync (under [`SyncPolicy::Always`]).
//! 2. **Durable means durable.** A completion fires only after an fdatasync
//!    that covers the bytes *and* every byte before them in the log. After a
//!    crash, every entry whose completion fired is there, with the same
//!    bytes. A failed fsync poisons the log: the waiters of that group and
//!    every later call get [`Error::Poisoned`], never a false success.
//! 3. **Order.** Records enter one queue in call order and reach the disk in
//!    that order; a truncate or purge is ordered with the appends around it.
//!    Each stream's indexes are dense (1, 2, 3, …): no holes, ever, and a
//!    truncated suffix never comes back after a restart.
//!
//! # The commit pipeline, and why it has this shape
//!
//! ```text
//!  append/meta/truncate/purge (any thread)
//!     │  encode records into the shared queue buffer under one short lock;
//!     │  assign indexes and an LSN (end position in the log's byte stream)
//!     ▼
//!  the writer (whoever holds the writer lock: the caller itself when no
//!     │  one else writes, else the writer thread, which such a caller wakes)
//!     │  ── swaps the buffer out, pwrite()s it (one call per segment it
//!     │     touches), applies it to the stream index, publishes `written`
//!     │     → appenders return
//!     ▼
//!  the syncer (a waiter on a completion, when no sync is running; else the
//!     │  syncer thread) ── fdatasync()s the segment, publishes `durable`
//!                   → every completion at or below it fires
//! ```
//!
//! The fdatasync is the expensive step (≈70–200 µs here, two orders of
//! magnitude above a pwrite). Group commit amortizes it: while one sync
//! waits on the disk for group N, appenders keep filling the queue, and the
//! writer writes group N+1; when the sync returns, the next one covers
//! everything written since. The first design waited for each group's sync
//! inside the writer before taking the next; with one writer it was no
//! worse, but with many it serialized write and sync and halved throughput,
//! because nobody could write while the disk flushed. Splitting writer and
//! syncer keeps both the device and the CPU busy.
//!
//! The second design ran every write on the writer thread and every sync on
//! the syncer thread. A lone writer then paid two thread hand-offs per append
//! (≈20 µs of wake-ups for a 2 µs pwrite) and two more per sync. Now the
//! roles are locks, not threads: the caller that finds the writer lock free
//! writes its own group (RocksDB's write-group leader), and a waiter that
//! finds no sync running runs the fdatasync itself. The threads remain for
//! the contended case — a caller that finds the writer busy wakes the writer
//! thread, so records queued during another caller's write are never left
//! behind — and for completions nobody blocks on (futures, callbacks).
//! Invariants that make this safe: only the writer-lock holder drains the
//! queue, so groups reach the file in queue order; at most one sync runs at
//! a time (`syncing` in the sync target), so `synced` and `durable` only
//! grow; a sync covers only what was `written` when it started.
//!
//! Appenders wait only for their write (microseconds), not for the sync, and
//! get a completion instead: a Raft leader can send entries to followers
//! while its own fsync is in flight, and a caller batching many appends waits
//! once.
//!
//! # Files
//!
//! Segments of a bounded size ([`LogOptions::segment_size`]), created
//! crash-safely (temp file, fsync, rename, fsync the directory), ahead of
//! the roll that needs them, and preallocated so an fdatasync never has to
//! persist a block allocation (on ext4 it still commits each reserved
//! block's change from unwritten to written, unless the segment was
//! zero-filled: [`LogOptions::zero_fill`]). When the
//! writer rolls to a new segment it first writes a Seal record to the old one
//! and fsyncs it, so every segment but the newest is complete and sealed, and
//! the syncer only ever has one file to sync. The byte format is in
//! `format.rs`; recovery in `recovery.rs`; segment deletion in `gc.rs`; the
//! writer's tail (append, roll) in `writer.rs`; its writeback hints, made
//! off the appender's path, in `writeback.rs`; the next segment, made ahead
//! of the roll on the same helper thread, in `ahead.rs`.
//!
//! # Small durable records
//!
//! [`Log::set_meta`] stores a small key/value for a stream (a Raft vote, a
//! committed index, an LSM flush position) as a record in the same log and
//! returns once it is durable. The newest value of each key is kept in
//! memory and rebuilt on open. [`Log::stage_meta`] queues one that nobody
//! waits for: it costs no write or sync of its own, riding the next write
//! (or written by the writer thread after a short delay), for values a
//! crash may roll back harmlessly — openraft's commit point, updated
//! before every apply.

mod activity;
mod ahead;
mod commit;
mod durable;
pub mod format;
mod gc;
pub(crate) mod recovery;
mod segment;
pub(crate) mod stream;
mod writeback;
mod writer;

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::Duration;

pub use activity::SyncActivity;
pub use durable::Durable;
pub(crate) use recovery::scan_segment;
pub use recovery::{RecoveryReport, TornTail};
pub(crate) use segment::{file_name as segment_file_name, parse_file_name as segment_seq};

use crate::error::{Error, Result};
use crate::io::{FileSystem, IoBackend};
use commit::{Queue, SyncTarget, Tail};
use durable::Watermarks;
use format::{RecordKind, MAX_META_KEY, MAX_META_VALUE, MAX_PAYLOAD};
use segment::Segment;
use stream::Streams;
use writer::WriterState;

/// A stream of the log: one shard's Raft log, or one LSM's WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

/// When completions fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// fdatasync before any completion fires (group-committed). The default.
    #[default]
    Always,
    /// fdatasync at most every this many milliseconds; completions fire
    /// after the sync that covers them. Bounded loss window, fewer syncs.
    EveryMillis(u64),
    /// Never fdatasync; completions fire once written. For tests and
    /// benchmarks only: a power cut loses anything the OS had not flushed.
    Never,
}

/// Per-entry compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Store entries as they are.
    #[default]
    None,
    /// lz4 (lz4_flex) for entries of at least `min_len` bytes, kept only
    /// when it makes the entry smaller.
    Lz4 {
        /// Entries shorter than this are stored raw.
        min_len: usize,
    },
}

/// How to open a log.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Which I/O back end to use (ignored when `fs` is set).
    pub io: IoBackend,
    /// When completions fire.
    pub sync: SyncPolicy,
    /// Target segment size in bytes. A segment is rolled before a write
    /// would cross it; a single record larger than a segment gets a segment
    /// of its own.
    pub segment_size: u64,
    /// Reserve each new segment's blocks up front (`fallocate`).
    pub preallocate: bool,
    /// With `preallocate` and a sync policy other than
    /// [`SyncPolicy::Never`]: write each segment prepared ahead of its roll
    /// as zeros, so an fdatasync after an append flushes data only instead
    /// of also committing the allocation (p50 140 → 85 µs per durable
    /// append on this project's test host). Off by default: zeroing a
    /// segment slows the live segment's syncs while it runs (~1 ms each
    /// for ~0.85 s per 64 MiB here), and costs writing each segment twice.
    /// A log created with it zeroes its first segment then; reopening does
    /// not. The trade-off, measured, is in `log/ahead.rs`.
    pub zero_fill: bool,
    /// Entry compression.
    pub compression: Compression,
    /// How long [`Log::stage_meta`]'s records may wait in the queue for
    /// another write to carry them before the writer thread writes them on
    /// their own. Under load some append carries them within microseconds;
    /// this bounds how far an idle stream's staged value lags in the file
    /// (what a process crash can lose of it).
    pub staged_write_delay: Duration,
    /// Use this file system instead of `io` (tests inject faults this way).
    pub fs: Option<Arc<dyn FileSystem>>,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            io: IoBackend::default(),
            sync: SyncPolicy::Always,
            segment_size: 64 << 20,
            preallocate: true,
            zero_fill: false,
            compression: Compression::None,
            staged_write_delay: Duration::from_millis(20),
            fs: None,
        }
    }
}

impl LogOptions {
    /// How segments made ahead of a roll are filled.
    pub(crate) fn ahead_fill(&self) -> segment::Fill {
        use segment::Fill;
        match (self.preallocate, self.zero_fill, self.sync) {
            (false, _, _) => Fill::None,
            (true, true, SyncPolicy::Always | SyncPolicy::EveryMillis(_)) => Fill::Zeros,
            (true, _, _) => Fill::Reserve,
        }
    }
}

/// What [`Log::append`] returns.
#[derive(Debug, Clone)]
pub struct Appended {
    /// Index given to the first entry.
    pub first: u64,
    /// Index given to the last entry (`first - 1` for an empty append).
    pub last: u64,
    /// Fires when the entries are durable.
    pub durable: Durable,
}

/// An entry read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its index in the stream.
    pub index: u64,
    /// Its bytes, as appended.
    pub data: Vec<u8>,
}

/// The live range of a stream: entries `first..=last`; empty when
/// `last < first`. A stream never written has `first = 1, last = 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamBounds {
    /// Oldest readable index (one past the purge point).
    pub first: u64,
    /// Newest index.
    pub last: u64,
}

impl StreamBounds {
    /// Whether the stream holds no entries.
    pub fn is_empty(&self) -> bool {
        self.last < self.first
    }
}

/// Counters since open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// `append` calls.
    pub appends: u64,
    /// Entries appended.
    pub entries: u64,
    /// Bytes written to segment files (records, seals, checkpoints).
    pub bytes_written: u64,
    /// Write groups (one or more pwrites each).
    pub groups: u64,
    /// fdatasyncs issued for commits (excludes segment creation).
    pub syncs: u64,
    /// Segments created.
    pub segments_created: u64,
    /// Of those, made ahead of their roll on the helper thread
    /// (`log/ahead.rs`; zero-filled with [`LogOptions::zero_fill`]); the
    /// rest were made by the roll itself.
    pub segments_prepared: u64,
    /// Preparations of a next segment that failed (creating, reserving
    /// or syncing its `.tmp` file): the roll then creates the segment
    /// itself, so no write is lost, but on a healthy disk this stays 0 —
    /// a rising count is an early sign of a failing device or a full one.
    pub segment_preparations_failed: u64,
    /// Segments deleted after every stream purged them.
    pub segments_deleted: u64,
    /// How long each commit fdatasync took.
    pub fsync: crate::latency::Latencies,
}

#[derive(Debug, Default)]
struct Counters {
    appends: AtomicU64,
    entries: AtomicU64,
    bytes_written: AtomicU64,
    groups: AtomicU64,
    syncs: AtomicU64,
    segments_created: AtomicU64,
    segments_prepared: AtomicU64,
    /// Shared with the helper thread's preparations (`log/ahead.rs`).
    segment_preparations_failed: Arc<AtomicU64>,
    segments_deleted: AtomicU64,
    fsync: crate::latency::Recorder,
}

impl Counters {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// State shared by callers, the writer and the syncer.
#[derive(Debug)]
pub(crate) struct Shared {
    dir: PathBuf,
    fs: Arc<dyn FileSystem>,
    opts: LogOptions,
    /// Records waiting for the writer, and each stream's logical tail.
    queue: Mutex<Queue>,
    /// Wakes the writer thread.
    queue_cv: Condvar,
    /// The segment tail; whoever holds it writes the next group.
    writer: Mutex<WriterState>,
    /// What the writer has written, per stream.
    streams: RwLock<Streams>,
    /// Live segment files by sequence number, for reads.
    segments: RwLock<std::collections::BTreeMap<u64, Segment>>,
    marks: Arc<Watermarks>,
    /// What the syncer should sync next.
    sync: Mutex<SyncTarget>,
    sync_cv: Condvar,
    stats: Counters,
    /// When the last fdatasync ended, for the LSM's table pacing.
    activity: Arc<SyncActivity>,
}

fn relock<G>(r: std::sync::LockResult<G>) -> G {
    // Our locks guard plain data that every writer leaves consistent before
    // it can panic; a poisoned lock is no reason to stop serving.
    r.unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        relock(self.queue.lock())
    }
    fn writer(&self) -> MutexGuard<'_, WriterState> {
        relock(self.writer.lock())
    }
    fn streams(&self) -> RwLockReadGuard<'_, Streams> {
        relock(self.streams.read())
    }
    fn streams_mut(&self) -> RwLockWriteGuard<'_, Streams> {
        relock(self.streams.write())
    }
    fn segments(&self) -> RwLockReadGuard<'_, std::collections::BTreeMap<u64, Segment>> {
        relock(self.segments.read())
    }
    fn segments_mut(&self) -> RwLockWriteGuard<'_, std::collections::BTreeMap<u64, Segment>> {
        relock(self.segments.write())
    }
    fn sync_target(&self) -> MutexGuard<'_, SyncTarget> {
        relock(self.sync.lock())
    }
}

/// The node-wide log. See the [module documentation](self).
#[derive(Debug)]
pub struct Log {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    /// The writeback-hint thread (`writeback.rs`), stopped after the
    /// writer: it ends when the writer's [`writeback::Hints`] is dropped.
    writeback: Option<JoinHandle<()>>,
    report: RecoveryReport,
    _lock: LockGuard,
}

struct LockGuard(#[allow(dead_code)] Box<dyn Send + Sync>);

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LockGuard")
    }
}

impl Log {
    /// Opens (or creates) the log in `dir`, recovering its state. A torn
    /// final record is cut off and reported in [`Log::recovery_report`];
    /// any other damage is an [`Error::Corruption`] naming file and offset.
    pub fn open(dir: impl AsRef<Path>, opts: LogOptions) -> Result<Log> {
        let dir = dir.as_ref().to_path_buf();
        let fs = match &opts.fs {
            Some(fs) => Arc::clone(fs),
            None => opts
                .io
                .open()
                .map_err(|e| Error::io("set up the I/O back end for", &dir, e))?,
        };
        if opts.segment_size < 4096 {
            return Err(Error::InvalidArgument(format!(
                "segment_size must be at least 4096 bytes, got {}",
                opts.segment_size
            )));
        }
        let rec = recovery::recover(&dir, fs.as_ref(), &opts)?;
        let marks = Arc::new(Watermarks::default());
        let tails: HashMap<StreamId, Tail> = rec
            .streams
            .map
            .iter()
            .map(|(id, s)| {
                (
                    *id,
                    Tail {
                        next: s.last() + 1,
                        purged: s.purged,
                    },
                )
            })
            .collect();
        let writer_state = rec.writer;
        let shared = Arc::new(Shared {
            dir,
            fs,
            queue: Mutex::new(Queue::new(tails)),
            queue_cv: Condvar::new(),
            streams: RwLock::new(rec.streams),
            segments: RwLock::new(rec.segments),
            marks,
            sync: Mutex::new(SyncTarget::new(writer_state.segment.clone())),
            writer: Mutex::new(writer_state),
            sync_cv: Condvar::new(),
            stats: Counters::default(),
            activity: Arc::new(SyncActivity::new()),
            opts,
        });
        let threads = commit::start(&shared)?;
        let writeback = writeback::Hints::start().map(|(hints, thread)| {
            shared.writer().hints = Some(hints);
            thread
        });
        Ok(Log {
            shared,
            threads,
            writeback,
            report: rec.report,
            _lock: LockGuard(rec.lock),
        })
    }

    /// What recovery found when the log was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// The I/O back end in use ("std", "io_uring", "fault").
    pub fn backend(&self) -> &'static str {
        self.shared.fs.name()
    }

    /// Appends entries to a stream, giving them the next indexes. Returns
    /// once they are readable; `durable` fires once they are durable.
    pub fn append<E: AsRef<[u8]>>(&self, stream: StreamId, entries: &[E]) -> Result<Appended> {
        if let Some(e) = entries.iter().find(|e| e.as_ref().len() > MAX_PAYLOAD) {
            return Err(Error::InvalidArgument(format!(
                "entry of {} bytes exceeds the {MAX_PAYLOAD}-byte limit",
                e.as_ref().len()
            )));
        }
        // Compress outside the queue lock.
        let compressed: Vec<Option<Vec<u8>>> = match self.shared.opts.compression {
            Compression::None => Vec::new(),
            Compression::Lz4 { min_len } => entries
                .iter()
                .map(|e| {
                    let raw = e.as_ref();
                    (raw.len() >= min_len)
                        .then(|| lz4_flex::compress_prepend_size(raw))
                        .filter(|c| c.len() < raw.len())
                })
                .collect(),
        };
        let (first, end_lsn) = self.enqueue(false, |q| {
            let tail = q.tail(stream);
            let first = tail.next;
            tail.next += entries.len() as u64;
            for (i, e) in entries.iter().enumerate() {
                let index = first + i as u64;
                match compressed.get(i).and_then(Option::as_ref) {
                    Some(c) => q.push(RecordKind::EntryLz4, stream, index, &[c]),
                    None => q.push(RecordKind::Entry, stream, index, &[e.as_ref()]),
                }
            }
            Ok(first)
        })?;
        Counters::add(&self.shared.stats.appends, 1);
        Counters::add(&self.shared.stats.entries, entries.len() as u64);
        self.shared.marks.wait_written(end_lsn)?;
        Ok(Appended {
            first,
            last: first + entries.len() as u64 - 1,
            durable: self.completion(end_lsn),
        })
    }

    /// Stores a small durable value for a stream under `key`, replacing the
    /// previous one. Returns once it is durable (except under
    /// [`SyncPolicy::Never`], where nothing is).
    pub fn set_meta(&self, stream: StreamId, key: &[u8], value: &[u8]) -> Result<()> {
        self.submit_meta(stream, key, value)?.wait()
    }

    /// [`Log::set_meta`] without the wait: the value is readable through
    /// [`Log::meta`] on return and durable when the completion fires (an
    /// async caller `.await`s it instead of blocking a thread).
    pub fn submit_meta(&self, stream: StreamId, key: &[u8], value: &[u8]) -> Result<Durable> {
        check_meta(key, value)?;
        let klen = format::meta_key_len(key);
        let ((), lsn) = self.enqueue(true, |q| {
            q.tail(stream);
            q.push(RecordKind::Meta, stream, 0, &[&klen, key, value]);
            Ok(())
        })?;
        Ok(self.completion(lsn))
    }

    /// Stages a meta record: queued now, written with whatever this log
    /// writes next (any stream's append carries it in the same write) or
    /// by the writer thread after [`LogOptions::staged_write_delay`], and
    /// durable with the sync after that. Nothing waits for it and it starts
    /// no write or sync of its own — for values whose loss at a crash is
    /// harmless but that are worth having most of the time (a Raft commit
    /// point, which openraft updates before every apply). [`Log::meta`]
    /// returns it only once it is written; records keep call order, so a
    /// later [`Log::set_meta`] of the same key still wins.
    pub fn stage_meta(&self, stream: StreamId, key: &[u8], value: &[u8]) -> Result<()> {
        check_meta(key, value)?;
        let klen = format::meta_key_len(key);
        let mut q = self.shared.queue();
        if let Some(cause) = self.shared.marks.poisoned() {
            return Err(Error::Poisoned { cause });
        }
        if q.closed {
            return Err(Error::Closed);
        }
        if q.push_staged(RecordKind::Meta, stream, &[&klen, key, value]) {
            drop(q);
            self.shared.queue_cv.notify_one();
        }
        Ok(())
    }

    /// The newest value stored under `key` for `stream`.
    pub fn meta(&self, stream: StreamId, key: &[u8]) -> Option<Vec<u8>> {
        let streams = self.shared.streams();
        streams
            .map
            .get(&stream)?
            .meta
            .get(key)
            .map(|m| m.value.clone())
    }

    /// Drops the stream's entries after `index` (a Raft leader change
    /// discards a suffix); the next append gets `index + 1`. Durable and
    /// ordered with the appends around it. A no-op if nothing follows
    /// `index`; an error if `index` lies inside the purged prefix.
    pub fn truncate_after(&self, stream: StreamId, index: u64) -> Result<()> {
        self.submit_truncate_after(stream, index)?.wait()
    }

    /// [`Log::truncate_after`] without the wait: later reads and appends see
    /// the truncation on return; it is durable when the completion fires.
    pub fn submit_truncate_after(&self, stream: StreamId, index: u64) -> Result<Durable> {
        check_index(index)?;
        let ((), lsn) = self.enqueue(true, |q| {
            let tail = q.tail(stream);
            if index < tail.purged {
                return Err(Error::InvalidArgument(format!(
                    "cannot truncate stream {} after {index}: entries up to {} are purged",
                    stream.0, tail.purged
                )));
            }
            if index + 1 >= tail.next {
                return Ok(());
            }
            tail.next = index + 1;
            q.push(RecordKind::Truncate, stream, index, &[]);
            Ok(())
        })?;
        // A no-op still waits for what was queued before it: the caller's
        // earlier records must not be reported durable early.
        Ok(self.completion(lsn))
    }

    /// Drops the stream's entries up to and including `index` (a snapshot
    /// covers them). `index` may lie beyond the last entry (a snapshot from
    /// the leader): the stream is then empty and continues at `index + 1`.
    /// Durable and ordered with appends; segments every stream has purged
    /// are deleted in the background.
    pub fn purge_upto(&self, stream: StreamId, index: u64) -> Result<()> {
        self.submit_purge_upto(stream, index)?.wait()
    }

    /// [`Log::purge_upto`] without the wait: [`Log::bounds`] reflects it on
    /// return; it is durable when the completion fires.
    pub fn submit_purge_upto(&self, stream: StreamId, index: u64) -> Result<Durable> {
        check_index(index)?;
        let ((), lsn) = self.enqueue(true, |q| {
            let tail = q.tail(stream);
            if index <= tail.purged {
                return Ok(());
            }
            tail.purged = index;
            tail.next = tail.next.max(index + 1);
            q.push(RecordKind::Purge, stream, index, &[]);
            Ok(())
        })?;
        Ok(self.completion(lsn))
    }

    /// Forgets `stream`: its entries, purge point and meta values are gone
    /// and its next append gets index 1, as for a stream never written.
    /// For a Raft replica wiped to start over from a snapshot. Durable
    /// and ordered with the records around it on return; the segments
    /// only this stream kept alive are deleted in the background.
    pub fn reset(&self, stream: StreamId) -> Result<()> {
        self.submit_reset(stream)?.wait()
    }

    /// [`Log::reset`] without the wait: [`Log::bounds`] and [`Log::meta`]
    /// reflect it on return; it is durable when the completion fires.
    pub fn submit_reset(&self, stream: StreamId) -> Result<Durable> {
        let ((), lsn) = self.enqueue(true, |q| {
            *q.tail(stream) = Tail { next: 1, purged: 0 };
            q.push(RecordKind::Reset, stream, 0, &[]);
            Ok(())
        })?;
        Ok(self.completion(lsn))
    }

    /// Makes everything appended so far durable now (under any policy but
    /// `Never`).
    pub fn sync(&self) -> Result<()> {
        let ((), lsn) = self.enqueue(true, |_| Ok(()))?;
        self.wait_durable(lsn)
    }

    /// Seals the newest segment and starts the next one, then deletes every
    /// older segment no stream needs — what the writer does when a segment
    /// fills, on demand. A purge frees only whole segments behind the one
    /// being written; after every stream purged past some entries, this is
    /// what makes their bytes leave the disk (erasure). A no-op on an
    /// empty newest segment, except for the collection.
    pub fn roll(&self) -> Result<()> {
        // Everything queued so far is written (and durable) first, so the
        // roll is ordered after it and the syncer owes the old segment
        // nothing.
        self.sync()?;
        let mut w = self.shared.writer();
        commit::drain(&self.shared, &mut w, commit::Staged::Write)?;
        let result = (|| {
            if w.offset > format::SEGMENT_HEADER_LEN as u64 {
                w.roll(&self.shared)?;
            }
            gc::collect(&self.shared, &mut w)
        })();
        if let Err(err) = result {
            // As a failed drain: a half-rolled writer must write no more.
            tracing::error!(%err, "log roll failed; poisoning the log");
            return Err(Error::Poisoned {
                cause: self.shared.marks.poison(err),
            });
        }
        Ok(())
    }

    /// The stream's live range.
    pub fn bounds(&self, stream: StreamId) -> StreamBounds {
        let streams = self.shared.streams();
        match streams.map.get(&stream) {
            Some(s) => StreamBounds {
                first: s.first,
                last: s.last(),
            },
            None => StreamBounds { first: 1, last: 0 },
        }
    }

    /// Every stream the log knows (with entries, a purge point or meta).
    pub fn streams(&self) -> Vec<StreamId> {
        let mut ids: Vec<_> = self.shared.streams().map.keys().copied().collect();
        ids.sort();
        ids
    }

    /// Reads the entries of `range` that are live (the range is clipped to
    /// the stream's bounds). Entries are checksummed on the way in.
    pub fn read(&self, stream: StreamId, range: Range<u64>) -> Result<Vec<Entry>> {
        commit::read_entries(&self.shared, stream, range)
    }

    /// Reads one entry, `None` if it is not live.
    pub fn get(&self, stream: StreamId, index: u64) -> Result<Option<Vec<u8>>> {
        let mut v = self.read(stream, index..index.saturating_add(1))?;
        Ok(v.pop().map(|e| e.data))
    }

    /// When this log's last fdatasync ended: what a store sharing the disk
    /// consults to give way while durable writes are being acknowledged
    /// (`LsmOptions::sync_activity`).
    pub fn sync_activity(&self) -> Arc<SyncActivity> {
        Arc::clone(&self.shared.activity)
    }

    /// Counters since open.
    pub fn stats(&self) -> LogStats {
        let c = &self.shared.stats;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LogStats {
            appends: g(&c.appends),
            entries: g(&c.entries),
            bytes_written: g(&c.bytes_written),
            groups: g(&c.groups),
            syncs: g(&c.syncs),
            segments_created: g(&c.segments_created),
            segments_prepared: g(&c.segments_prepared),
            segment_preparations_failed: g(&c.segment_preparations_failed),
            segments_deleted: g(&c.segments_deleted),
            fsync: c.fsync.snapshot(),
        }
    }

    /// The streams keeping the oldest segment on disk: those whose oldest
    /// live entry is in it. Purging them past it lets the segment go
    /// (`gc`); empty while only one segment is live (the one being
    /// written is never deleted).
    pub fn oldest_segment_holders(&self) -> Vec<StreamId> {
        let streams = self.shared.streams();
        let (oldest, live) = {
            let segments = self.shared.segments();
            (segments.keys().next().copied(), segments.len())
        };
        let Some(oldest) = oldest.filter(|_| live > 1) else {
            return Vec::new();
        };
        let mut ids: Vec<StreamId> = streams
            .map
            .iter()
            .filter(|(_, s)| s.locs.front().is_some_and(|l| l.segment == oldest))
            .map(|(id, _)| *id)
            .collect();
        ids.sort();
        ids
    }

    /// Sequence numbers of the live segment files, oldest first.
    pub fn segment_seqs(&self) -> Vec<u64> {
        self.shared.segments().keys().copied().collect()
    }

    /// The directory holding the segments.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Writes and syncs what is queued, stops the threads, and reports
    /// whether the log was healthy. Dropping the log does the same, silently.
    pub fn close(mut self) -> Result<()> {
        self.shutdown();
        match self.shared.marks.poisoned() {
            Some(cause) => Err(Error::Poisoned { cause }),
            None => Ok(()),
        }
    }

    fn shutdown(&mut self) {
        {
            let mut q = self.shared.queue();
            q.closed = true;
        }
        self.shared.queue_cv.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        drop(self.shared.writer().hints.take());
        if let Some(t) = self.writeback.take() {
            let _ = t.join();
        }
        // The helper thread is gone: nothing prepares or takes a segment now.
        let ahead = self.shared.writer().ahead.clone();
        ahead.discard(self.shared.fs.as_ref());
        self.shared.marks.close();
    }

    /// Runs `build` under the queue lock (it validates, updates tails and
    /// pushes records), wakes the writer, and returns `build`'s result with
    /// the LSN at the end of what it pushed.
    fn enqueue<R>(
        &self,
        force_sync: bool,
        build: impl FnOnce(&mut Queue) -> Result<R>,
    ) -> Result<(R, u64)> {
        let mut q = self.shared.queue();
        if let Some(cause) = self.shared.marks.poisoned() {
            return Err(Error::Poisoned { cause });
        }
        if q.closed {
            return Err(Error::Closed);
        }
        let r = build(&mut q)?;
        q.force_sync |= force_sync;
        // Someone waits for this write now; it carries any staged records.
        q.staged_only = false;
        let lsn = q.end_lsn();
        drop(q);
        self.write_through(lsn)?;
        Ok((r, lsn))
    }

    /// Gets what was queued up to `lsn` written: by this thread, if no one
    /// else is writing (no thread hop: the common case with one writer),
    /// else by the current writer or the writer thread, woken here. Every
    /// caller that does not write wakes the writer thread, so records
    /// queued while a caller writes are never left behind.
    fn write_through(&self, lsn: u64) -> Result<()> {
        let w = match self.shared.writer.try_lock() {
            Ok(w) => Some(w),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        match w {
            Some(mut w) => {
                while !self.shared.marks.is_written(lsn) {
                    if commit::drain(&self.shared, &mut w, commit::Staged::Write)?
                        != commit::Drained::Wrote
                    {
                        break;
                    }
                }
            }
            None => self.shared.queue_cv.notify_one(),
        }
        self.shared.marks.wait_written(lsn)
    }

    fn wait_durable(&self, lsn: u64) -> Result<()> {
        commit::wait_durable(&self.shared, lsn)
    }

    /// The completion for everything queued up to `lsn`.
    fn completion(&self, lsn: u64) -> Durable {
        Durable::new(
            lsn,
            Arc::clone(&self.shared.marks),
            Arc::downgrade(&self.shared),
        )
    }
}

/// Meta keys and values fit their record's length fields.
fn check_meta(key: &[u8], value: &[u8]) -> Result<()> {
    if key.len() > MAX_META_KEY || value.len() > MAX_META_VALUE {
        return Err(Error::InvalidArgument(format!(
            "meta key/value of {}/{} bytes exceeds the {MAX_META_KEY}/{MAX_META_VALUE}-byte limit",
            key.len(),
            value.len()
        )));
    }
    Ok(())
}

/// Indexes stay below `u64::MAX` so `index + 1` (the next append) exists.
fn check_index(index: u64) -> Result<()> {
    if index >= u64::MAX - 1 {
        return Err(Error::InvalidArgument(format!(
            "index {index} is out of range (must be below {})",
            u64::MAX - 1
        )));
    }
    Ok(())
}

impl Drop for Log {
    fn drop(&mut self) {
        self.shutdown();
    }
}
