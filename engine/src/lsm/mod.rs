//! The LSM message store. It has no WAL of its own: its owner writes each
//! batch to the node's log first and hands [`Lsm::apply`] the log position it
//! came from; each flush records, per log stream, how far it reaches, and on
//! open the owner replays the log from there (the standalone [`Db`] does).
//!
//! # Write path
//!
//! ```text
//!  apply(batch, position)   one writer at a time (a mutex): assign the batch a
//!     │                     contiguous run of sequence numbers, insert into the
//!     │                     active memtable, note the log position
//!     ▼
//!  publish(seq)             readers' snapshot moves to `seq`: the whole batch
//!     │                     becomes visible at once, never a part of it
//!     ▼
//!  active memtable full ─► immutable (newest first) ─► background flush
//!     (flush.rs): write an L0 table of the versions a reader can still
//!     see, fsync it and the directory, append one manifest
//!     edit {table, flushed position per stream} (after the owner's flush
//!     barrier made the log durable that far), install the new version,
//!     drop the memtable ─► the owner may purge its log up to the position
//! ```
//!
//! Writers stall (counted in stats) while `max_immutable_memtables` wait
//! for the flush thread, and are slowed down while level 0 is deep
//! (`background.rs`: the flush thread, the compaction thread, and the
//! backpressure that keeps level 0 shallow). Nothing on the write path
//! fsyncs: durability is the log's job; tables and the manifest are fsynced
//! by the background threads.
//!
//! # Read path
//!
//! See [`read`]. Every read runs at a snapshot (a sequence number) across
//! memtables and the version's tables; readers hold `Arc`s and take no lock
//! during I/O, so they never wait for a flush or a compaction.
//!
//! # Recovery
//!
//! `recovery.rs` (its essay: what a crash leaves): load the manifest,
//! delete table files it does not name (a flush or compaction the crash
//! interrupted), open the rest, and report the flushed position of each
//! stream ([`Lsm::flushed_positions`]). Sequence numbers continue after
//! the manifest's last one.

mod background;
pub mod batch;
pub(crate) mod blob;
pub(crate) mod cache;
pub mod compaction;
mod db;
mod flush;
pub(crate) mod manifest;
pub(crate) mod memtable;
pub(crate) mod pace;
mod pinned;
mod pressure;
mod priority;
pub mod read;
mod reaper;
mod recovery;
pub mod retention;
pub(crate) mod table;
mod varint;
pub mod version;

use crate::lsm::compaction::worker::How;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

pub use batch::{BatchOp, WriteBatch};
pub use blob::{BlobRef, BLOB_REF_LEN};
pub use compaction::picker::{Choice, PickerConfig};
pub use db::{Db, DbOptions, WriteOptions};
pub use pinned::PinnedBlobWriter;
pub use read::Direction;
pub use retention::{MessageRetention, Retention};
pub use table::TableId;

use crate::error::{Error, Result};
use crate::keys::{
    conversation_prefix, decode_message_key, message_key, prefix_successor, ConversationId,
    Timestamp,
};
use crate::log::StreamId;
use manifest::{Edit, ManifestState, ManifestWriter};
use memtable::{ChunkPool, Memtable, Reserve};
use read::{Cursor, MemCursor, RunCursor};
use table::builder::{BuildOptions, Compression};
use version::{FileMeta, TableFile, Version, LEVELS};

/// A sequence number: the order of every version the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqNo(pub u64);

/// Bytes `at..at + 8` of `key`, big-endian, zero-padded past its end: an
/// integer that orders like those bytes, so a search can compare most keys
/// without `memcmp` (see `memtable::MemKey` for why the padding keeps the
/// order). Equal words say nothing; compare the bytes then.
pub(crate) fn key_word(key: &[u8], at: usize) -> u64 {
    let mut h = [0u8; 8];
    let rest = key.get(at..).unwrap_or_default();
    let n = rest.len().min(8);
    h[..n].copy_from_slice(&rest[..n]);
    u64::from_be_bytes(h)
}

/// How the recompression pass stores the bottom level
/// ([`LsmOptions::bottom_compression`]). Measured on chat text (the
/// benchmark's 5M messages, docs/benchmarks.md): the fast LZ4 of the other
/// levels takes 77.0 bytes per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BottomCompression {
    /// LZ4's high-compression match finder at this level (1–12), against a
    /// dictionary trained per table, in blocks of `block_size`: the LZ4
    /// block format every level uses, decoded as fast (`table::codec` says
    /// how). 62.4 B/msg at level 9 in 8 KiB blocks (70.2 at level 4 in
    /// 16 KiB blocks without the dictionary, before 2026-12-06).
    Lz4Hc {
        /// 1–12 (10–12 are LZ4's optimal parser: far slower to compress).
        level: i32,
        /// Uncompressed bytes per data block of the bottom level (at
        /// least 1 KiB: smaller is taken as 1 KiB).
        block_size: usize,
    },
    /// zstd at this level (1–19) with a dictionary trained per table, in
    /// blocks of `block_size` uncompressed bytes: 61.8 B/msg at level 3
    /// and 4 KiB, at the cost of slower block decoding — every
    /// block-cache miss of a read decodes ~3× slower than LZ4
    /// (`table::codec` says why the dictionary, and the small blocks).
    Zstd {
        /// 1–19 (zstd's levels above 19 need more memory to decode).
        level: i32,
        /// Uncompressed bytes per data block of the bottom level (at
        /// least 1 KiB: smaller is taken as 1 KiB).
        block_size: usize,
    },
}

impl BottomCompression {
    /// LZ4-HC at level 9 in 8 KiB blocks: the default.
    pub const LZ4HC: BottomCompression = BottomCompression::lz4hc(9);

    /// LZ4-HC at `level` in 8 KiB blocks: with a dictionary, as small as
    /// 16 KiB blocks (+0.8 B/msg) and a page-back reads half as much per
    /// block it misses (p99 ~20 µs against ~24; docs/benchmarks.md, ninth
    /// round).
    pub const fn lz4hc(level: i32) -> BottomCompression {
        BottomCompression::Lz4Hc {
            level,
            block_size: 8 << 10,
        }
    }

    /// zstd at level 3 in 4 KiB blocks: what `Zstd` was measured at.
    pub const ZSTD: BottomCompression = BottomCompression::zstd(3);

    /// zstd at `level` in 4 KiB blocks (8 and 16 KiB were 2–3 % smaller
    /// and slower to read: docs/benchmarks.md).
    pub const fn zstd(level: i32) -> BottomCompression {
        BottomCompression::Zstd {
            level,
            block_size: 4 << 10,
        }
    }
}

/// How to open an LSM.
#[derive(Clone)]
pub struct LsmOptions {
    /// A memtable becomes immutable at about this many bytes.
    pub memtable_bytes: usize,
    /// Writers stall while this many immutable memtables await flushing.
    pub max_immutable_memtables: usize,
    /// Level-0 table count from which writers are slowed down, more the
    /// deeper level 0 gets, so that compaction keeps up (see
    /// `background.rs`). Level 0 is what every read probes table by table.
    pub l0_slowdown_tables: usize,
    /// Level-0 table count at which the flush thread waits for compaction
    /// (writers then stall once the immutable memtables are full too).
    /// Raised to `picker.l0_trigger` if set lower.
    pub l0_stop_tables: usize,
    /// Uncompressed size at which a data block is closed.
    pub block_size: usize,
    /// Bloom filter bits per key prefix (10 ≈ 1% false positives).
    pub bloom_bits_per_key: u32,
    /// lz4-compress data blocks (kept per block only where smaller).
    pub compression: bool,
    /// With `compression`, how the recompression pass rewrites the
    /// bottom level: when the compaction thread has no compaction to run,
    /// it rewrites the deepest level's tables one at a time this way,
    /// giving up a rewrite as soon as work arrives (see
    /// `compaction::picker`) — spent only in idle time, never by a flush
    /// or a compaction. `None`: the fast LZ4 everywhere.
    /// [`Lsm::recompress_all`] runs the pass to the end on demand.
    pub bottom_compression: Option<BottomCompression>,
    /// With `compression`, tables written into the levels above this one
    /// are stored uncompressed (level-0 tables by flushes, level-1 tables
    /// by compactions with `uncompressed_levels` = 2), except by a
    /// compaction with nothing below its output: what reaches the bottom
    /// stays there, and is compressed. The upper levels hold a few percent
    /// of a grown tree's data and are rewritten by every compaction from
    /// level 0, so compressing them cost most of a sustained ingest's
    /// compaction CPU (LZ4 took about 40 % of it) to save little space for
    /// long: 30M messages ingested 1.2–1.4× as fast with level 0 and 1
    /// uncompressed, at 0.6–0.75× the background CPU per GB
    /// (docs/benchmarks.md).
    /// The price: those levels' bytes on disk and in the page cache
    /// (about 2× theirs compressed on chat text), and up to
    /// `picker.l0_trigger` − 1 uncompressed level-0 tables left on disk
    /// while the store is idle. RocksDB's tuning guide recommends the same
    /// (no compression for level 0 and 1). 0: compress every level.
    pub uncompressed_levels: usize,
    /// Size of the shared cache of decoded blocks.
    pub block_cache_bytes: u64,
    /// Compaction outputs are split at about this size.
    pub target_table_bytes: u64,
    /// The leveled compaction knobs.
    pub picker: PickerConfig,
    /// Which values have expired (none by default).
    pub retention: Option<Arc<dyn Retention>>,
    /// The clock retention compares against; the system clock by default.
    pub clock: Option<Arc<dyn Fn() -> Timestamp + Send + Sync>>,
    /// Run flushes and compactions on background threads (a flush thread
    /// and a compaction thread). Off, they run only when [`Lsm::flush`] /
    /// [`Lsm::compact`] are called.
    pub background: bool,
    /// Background work yields to the threads serving requests: a
    /// background flush works in short slices with pauses between them
    /// (about a third of a core) unless writers are about to stall or
    /// someone waits for it, and a flushed memtable is freed on a thread of
    /// the lowest priority. For a server sharing its cores with the store;
    /// off for bulk loading, where the flush is the bottleneck.
    pub yield_to_foreground: bool,
    /// Values of at least this many bytes are written by the flush into a
    /// blob file, the table keeping a 25-byte reference (see [`blob`]):
    /// compactions then move the reference, never the bytes. `None` keeps
    /// every value in the tables. Chat messages are far below the default
    /// (64 KiB); media chunks (1 MiB) and large thumbnails are above it.
    pub blob_threshold: Option<usize>,
    /// A compaction is cut into up to this many key ranges of about equal
    /// bytes, each merged on a thread of its own (RocksDB's
    /// subcompactions), with at most one range per `target_table_bytes` of
    /// input: only compactions of twice that or more are split. A large
    /// level-0 or full compaction then uses more than one core, where one
    /// thread was what capped a sustained ingest (docs/benchmarks.md).
    /// 1 (or 0): every compaction on the compaction thread alone. By
    /// default the machine's cores, at most 4.
    pub subcompactions: usize,
    /// While durable writes are being acknowledged (the log in
    /// `sync_activity` synced within the last 100 ms), each table a flush
    /// or compaction writes is written at most this fast, in bytes per
    /// second, in 64 KiB steps, so that the log's syncs do not wait for
    /// the device to take megabytes of table data first (`pace.rs`: on the
    /// test host, 4-writer durable batch p99 2.9–4.2 → 1.4–2.0 ms). Never
    /// when writers are held back (memtables full, level 0 at the
    /// slowdown) or someone waits for the work. `None`: never paced. 48 MiB/s
    /// by default: per table, enough for a flush to keep up with the
    /// fastest durable ingest measured.
    pub paced_write_rate: Option<u64>,
    /// The log whose syncs mean "durable writes are being acknowledged"
    /// ([`crate::log::Log::sync_activity`]); [`Db::open`] and a node set
    /// their log's. `None`: tables are never paced.
    pub sync_activity: Option<Arc<crate::log::SyncActivity>>,
}

impl std::fmt::Debug for LsmOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LsmOptions")
            .field("memtable_bytes", &self.memtable_bytes)
            .field("block_size", &self.block_size)
            .field("target_table_bytes", &self.target_table_bytes)
            .field("uncompressed_levels", &self.uncompressed_levels)
            .field("subcompactions", &self.subcompactions)
            .field("paced_write_rate", &self.paced_write_rate)
            .field("picker", &self.picker)
            .finish_non_exhaustive()
    }
}

impl Default for LsmOptions {
    fn default() -> Self {
        LsmOptions {
            memtable_bytes: 64 << 20,
            max_immutable_memtables: 2,
            // RocksDB's own defaults for the same two thresholds
            // (level0_slowdown_writes_trigger, level0_stop_writes_trigger);
            // why not lower: `background.rs`.
            l0_slowdown_tables: 20,
            l0_stop_tables: 36,
            block_size: 16 << 10,
            bloom_bits_per_key: 10,
            compression: true,
            bottom_compression: Some(BottomCompression::LZ4HC),
            uncompressed_levels: 2,
            block_cache_bytes: 256 << 20,
            target_table_bytes: 32 << 20,
            picker: PickerConfig::default(),
            retention: None,
            clock: None,
            background: true,
            yield_to_foreground: false,
            blob_threshold: Some(64 << 10),
            subcompactions: std::thread::available_parallelism()
                .map_or(1, std::num::NonZeroUsize::get)
                .min(4),
            paced_write_rate: Some(48 << 20),
            sync_activity: None,
        }
    }
}

/// What writes a table, which decides its compression
/// (`LsmOptions::uncompressed_levels`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Written {
    /// A flush, into level 0.
    Flush,
    /// A compaction into `level`; `bottommost` when no level below it
    /// holds keys in its range.
    Compaction { level: usize, bottommost: bool },
}

/// Counters and shape, for export by a server.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LsmStats {
    /// Bytes of batches applied (keys + values).
    pub bytes_written: u64,
    /// Bytes of table files written by flushes and compactions.
    pub table_bytes_written: u64,
    /// Bytes of blob files written by flushes and by full compactions'
    /// rewrites (see [`blob`]).
    pub blob_bytes_written: u64,
    /// Bytes written to pinned blob files by their owner (`pinned.rs`: a
    /// log keeping large values there), counted as they are synced.
    pub pinned_blob_bytes_written: u64,
    /// Blob files referenced by the live tables, and their bytes on disk.
    pub blob_files: usize,
    /// See `blob_files`.
    pub blob_bytes: u64,
    /// Bytes of table blocks read into the cache.
    pub bytes_read: u64,
    /// Bytes of tables read by compactions.
    pub compaction_bytes_read: u64,
    /// Flushes completed.
    pub flushes: u64,
    /// Compactions completed.
    pub compactions: u64,
    /// Key ranges those compactions merged: more than `compactions` when
    /// large ones were split (`LsmOptions::subcompactions`).
    pub compaction_parts: u64,
    /// Times a writer waited for a flush.
    pub stalls: u64,
    /// Times a writer was slowed down because level 0 was deep, and the
    /// time it spent so, in microseconds (`background.rs`).
    pub slowdowns: u64,
    /// See `slowdowns`.
    pub slowdown_micros: u64,
    /// Steps of table writes paced while durable writes were being
    /// acknowledged, and the time those writers slept, in microseconds
    /// (`LsmOptions::paced_write_rate`, `pace.rs`).
    pub paced_steps: u64,
    /// See `paced_steps`.
    pub paced_micros: u64,
    /// Tables the recompression pass rewrote with LZ4-HC (counted in
    /// `compactions` too), and rewrites it gave up because work arrived.
    pub tables_recompressed: u64,
    /// See `tables_recompressed`.
    pub recompressions_abandoned: u64,
    /// Memtable inserts, and those of them placed by a search from the
    /// top of the skiplist rather than from a finger (the writer's costly
    /// case: see the skiplist's essay).
    pub memtable_inserts: u64,
    /// See `memtable_inserts`.
    pub memtable_full_searches: u64,
    /// Versions a flush left out because a newer version of their key
    /// hides them from every reader.
    pub flush_versions_dropped: u64,
    /// Block cache hits and misses.
    pub cache_hits: u64,
    /// Block cache misses.
    pub cache_misses: u64,
    /// Table files per level.
    pub files_per_level: Vec<usize>,
    /// Table bytes per level.
    pub bytes_per_level: Vec<u64>,
    /// Table bytes written per byte applied.
    pub write_amplification: f64,
    /// Table bytes on disk per byte of the newest level's size (≈ live data).
    pub space_amplification: f64,
    /// Tables a point read may probe (L0 count + one per non-empty level).
    pub read_amplification: usize,
}

/// Which of a conversation's messages [`Lsm::visit_messages`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageRange {
    /// All of them, newest first (what [`Lsm::latest`] pages).
    Latest,
    /// Those older than the timestamp, newest first (paging back).
    Before(Timestamp),
    /// Those newer than the timestamp, oldest first (catching up).
    After(Timestamp),
}

/// A message returned by the message queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Its server timestamp.
    pub ts: Timestamp,
    /// Its stored value.
    pub value: Vec<u8>,
}

/// A consistent point-in-time view. While it lives, compaction keeps every
/// version it can see.
pub struct Snapshot {
    seq: u64,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").field("seq", &self.seq).finish()
    }
}

impl Snapshot {
    /// The sequence number it reads at.
    pub fn seq(&self) -> SeqNo {
        SeqNo(self.seq)
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let mut s = lock(&self.inner.snapshots);
        if let Some(n) = s.get_mut(&self.seq) {
            *n -= 1;
            if *n == 0 {
                s.remove(&self.seq);
            }
        }
    }
}

#[derive(Debug)]
struct MemState {
    active: Arc<Memtable>,
    /// Immutable memtables, newest first.
    immutables: Vec<Arc<Memtable>>,
    /// An empty memtable the next rotation takes, made ahead of time off
    /// the writers' path (`background.rs`).
    spare: Option<Arc<Memtable>>,
}

type FlushHook = Box<dyn Fn(&HashMap<StreamId, u64>) + Send + Sync>;
type FlushBarrier = Box<dyn Fn() -> Result<()> + Send + Sync>;

pub(crate) struct Inner {
    dir: PathBuf,
    tables_dir: PathBuf,
    opts: LsmOptions,
    mem: RwLock<MemState>,
    version: RwLock<Arc<Version>>,
    manifest: Mutex<(ManifestWriter, ManifestState)>,
    /// Serializes writers: sequence assignment and memtable insertion.
    /// parking_lot's, eventually fair (see `Db`'s lock: the same reason).
    write_lock: parking_lot::Mutex<()>,
    flush_lock: Mutex<()>,
    /// Orders a batch's blob references (checked live, then inserted)
    /// against `install` retiring the files no table or memtable
    /// references: without it a file could be retired between the check
    /// and the insert, and deleted under the table its memtable becomes.
    blob_refs: Mutex<()>,
    /// Callers of [`Lsm::flush`] waiting: a paced flush stops pausing.
    flush_waiters: std::sync::atomic::AtomicUsize,
    /// Callers in a compaction they asked for (`compact`, `compact_all`,
    /// `compact_full`): the recompression pass gives way to them.
    compaction_waiters: std::sync::atomic::AtomicUsize,
    /// Frees flushed memtables at low priority (`yield_to_foreground`).
    reaper: Option<reaper::Reaper>,
    /// Memtable node chunks kept warm between memtables (`arena.rs`).
    chunks: Arc<ChunkPool>,
    /// Keeps `chunks` stocked with faulted-in chunks (`reserve.rs`), with
    /// background threads only; ends when the store drops.
    _reserve: Option<Reserve>,
    compaction_lock: Mutex<()>,
    next_seq: AtomicU64,
    visible_seq: AtomicU64,
    snapshots: Mutex<BTreeMap<u64, usize>>,
    /// Wakes the background threads and stalled writers: the counter
    /// moves on every event (a memtable rotated or flushed, a compaction
    /// done, the store closing), and a sleeper waits for it to move.
    bg_cv: Condvar,
    bg_mu: Mutex<u64>,
    /// Level-0 table count of the installed version, for the writers'
    /// throttle (which must not take the version lock on every batch).
    l0_tables: std::sync::atomic::AtomicUsize,
    /// Writers' accumulated slowdown not slept yet, in nanoseconds.
    slowdown_debt_ns: AtomicU64,
    /// When a background thread last flushed or compacted, in
    /// milliseconds since `opened`: the recompression pass waits for idleness.
    last_work_ms: AtomicU64,
    opened: std::time::Instant,
    closed: AtomicBool,
    bg_error: Mutex<Option<Arc<Error>>>,
    cache: Arc<cache::BlockCache>,
    /// The open blob files (`blob.rs`).
    blobs: Arc<blob::Blobs>,
    on_flush: Mutex<Option<FlushHook>>,
    before_flush: Mutex<Option<FlushBarrier>>,
    stats: Counters,
    /// The directory's LOCK, held for the store's life.
    _lock: Box<dyn Send + Sync>,
}

#[derive(Debug, Default)]
struct Counters {
    bytes_written: AtomicU64,
    table_bytes_written: AtomicU64,
    blob_bytes_written: AtomicU64,
    pinned_blob_bytes_written: AtomicU64,
    flushes: AtomicU64,
    compactions: AtomicU64,
    compaction_parts: AtomicU64,
    compaction_bytes_read: AtomicU64,
    stalls: AtomicU64,
    slowdowns: AtomicU64,
    slowdown_micros: AtomicU64,
    paced_steps: AtomicU64,
    paced_micros: AtomicU64,
    tables_recompressed: AtomicU64,
    recompressions_abandoned: AtomicU64,
    memtable_inserts: AtomicU64,
    memtable_full_searches: AtomicU64,
    flush_versions_dropped: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Inner {
    fn mem(&self) -> std::sync::RwLockReadGuard<'_, MemState> {
        self.mem
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn version(&self) -> Arc<Version> {
        Arc::clone(
            &self
                .version
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    pub(crate) fn now(&self) -> Timestamp {
        match &self.opts.clock {
            Some(c) => c(),
            None => Timestamp(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as u64),
            ),
        }
    }

    pub(crate) fn is_expired(&self, key: &[u8], value: &[u8], now: Timestamp) -> bool {
        self.opts
            .retention
            .as_ref()
            .is_some_and(|r| r.is_expired(key, value, now))
    }

    pub(crate) fn oldest_snapshot(&self) -> u64 {
        let visible = self.visible_seq.load(Ordering::Acquire);
        lock(&self.snapshots)
            .keys()
            .next()
            .copied()
            .unwrap_or(visible)
            .min(visible)
    }

    pub(crate) fn allocate_table_id(&self) -> TableId {
        let mut m = lock(&self.manifest);
        let id = m.1.next_table_id;
        m.1.next_table_id += 1;
        TableId(id)
    }

    /// How to build a table `written` so; `recompress` for the recompression pass
    /// (always compressed).
    pub(crate) fn build_options(&self, recompress: bool, written: Written) -> BuildOptions {
        let raw = match written {
            Written::Flush => self.opts.uncompressed_levels > 0,
            Written::Compaction { level, bottommost } => {
                !bottommost && level < self.opts.uncompressed_levels
            }
        };
        let (compression, block_size) = match (self.opts.compression, self.opts.bottom_compression)
        {
            (false, _) => (Compression::None, self.opts.block_size),
            _ if raw && !recompress => (Compression::None, self.opts.block_size),
            (true, Some(BottomCompression::Lz4Hc { level, block_size })) if recompress => (
                Compression::Lz4Hc(level.clamp(1, 12)),
                block_size.max(1 << 10),
            ),
            (true, Some(BottomCompression::Zstd { level, block_size })) if recompress => (
                Compression::Zstd(level.clamp(1, 19)),
                block_size.max(1 << 10),
            ),
            (true, _) => (Compression::Lz4, self.opts.block_size),
        };
        BuildOptions {
            block_size,
            bloom_bits_per_key: self.opts.bloom_bits_per_key,
            compression,
        }
    }

    pub(crate) fn sync_tables_dir(&self) -> Result<()> {
        std::fs::File::open(&self.tables_dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("fsync the directory", &self.tables_dir, e))
    }

    /// Records an edit durably and installs the version it produces.
    pub(crate) fn install(
        &self,
        removed: Vec<(u8, TableId)>,
        added: Vec<Arc<TableFile>>,
        last_seq: Option<u64>,
        flushed: Vec<(StreamId, u64)>,
    ) -> Result<()> {
        let mut m = lock(&self.manifest);
        let edit = Edit {
            added: added.iter().map(|t| t.meta.clone()).collect(),
            removed: removed.clone(),
            next_table_id: Some(m.1.next_table_id),
            last_seq,
            flushed,
            ..Edit::default()
        };
        m.0.append(&edit)?;
        m.1.apply(&edit);
        let state = m.1.clone();
        m.0.maybe_rotate(&state)?;
        let ids: Vec<TableId> = removed.iter().map(|(_, id)| *id).collect();
        let mut v = self
            .version
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Blob files the removed tables referenced: those no table of the
        // new version references go once their last reader does.
        let mut candidates: Vec<u64> = v
            .all_tables()
            .filter(|t| ids.contains(&t.meta.id))
            .flat_map(|t| t.table.blob_list.iter().map(|(f, _)| *f))
            .collect();
        let next = v.apply(&ids, added);
        if !candidates.is_empty() {
            candidates.sort_unstable();
            candidates.dedup();
            // A memtable's blob references keep their files too: a file
            // written before its batch is shared by the tables its earlier
            // references were flushed to and the memtables holding later
            // ones.
            let _refs = lock(&self.blob_refs);
            let mut live: std::collections::HashSet<u64> = next
                .all_tables()
                .flat_map(|t| t.table.blob_list.iter().map(|(f, _)| *f))
                .collect();
            {
                let m = self.mem();
                for mem in std::iter::once(&m.active).chain(&m.immutables) {
                    live.extend(mem.blob_file_ids());
                }
            }
            // A pinned file is its owner's to release (`unpin_blob_file`).
            live.extend(&state.pinned_blobs);
            for id in candidates.into_iter().filter(|id| !live.contains(id)) {
                self.blobs.retire(id);
            }
        }
        self.l0_tables
            .store(next.levels.first().map_or(0, Vec::len), Ordering::Release);
        *v = Arc::new(next);
        Ok(())
    }

    /// Opens a table this store just wrote, with its blob files.
    pub(crate) fn open_table(&self, id: TableId) -> Result<table::reader::Table> {
        table::reader::Table::open_with_blobs(
            &table::table_path(&self.tables_dir, id),
            id,
            Arc::clone(&self.cache),
            &self.blobs,
        )
    }

    /// Wakes every sleeper on `bg_cv`: the background threads and stalled
    /// writers re-check what they wait for.
    pub(crate) fn wake(&self) {
        *lock(&self.bg_mu) += 1;
        self.bg_cv.notify_all();
    }
}

/// The LSM store. See the [module documentation](self).
pub struct Lsm {
    inner: Arc<Inner>,
    /// The flush thread and the compaction thread (`background.rs`).
    bg: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Lsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lsm").field("dir", &self.inner.dir).finish()
    }
}

impl Lsm {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: impl AsRef<Path>, opts: LsmOptions) -> Result<Lsm> {
        let dir = dir.as_ref().to_path_buf();
        let recovery::Recovered {
            tables_dir,
            lock,
            cache,
            blobs,
            number,
            state,
            levels,
            max_seq,
        } = recovery::recover(&dir, &opts)?;
        let writer = ManifestWriter::create(&dir, number, &state)?;
        let reaper = if opts.yield_to_foreground && opts.background {
            Some(
                reaper::Reaper::start()
                    .map_err(|e| Error::io("spawn the memtable-freeing thread for", &dir, e))?,
            )
        } else {
            None
        };
        // One memtable's worth: what a flush frees is what the next
        // memtable fills.
        let chunks = Arc::new(ChunkPool::new(opts.memtable_bytes));
        let reserve = if opts.background {
            Reserve::start(&chunks)
                .map_err(|e| Error::io("spawn the memtable-reserve thread for", &dir, e))?
        } else {
            None
        };
        let inner = Arc::new(Inner {
            dir,
            tables_dir,
            mem: RwLock::new(MemState {
                active: Arc::new(Memtable::with_chunk_pool(&chunks)),
                immutables: Vec::new(),
                spare: None,
            }),
            version: RwLock::new(Arc::new(Version { levels })),
            manifest: Mutex::new((writer, state)),
            write_lock: parking_lot::Mutex::new(()),
            flush_lock: Mutex::new(()),
            blob_refs: Mutex::new(()),
            flush_waiters: std::sync::atomic::AtomicUsize::new(0),
            compaction_waiters: std::sync::atomic::AtomicUsize::new(0),
            reaper,
            chunks,
            _reserve: reserve,
            compaction_lock: Mutex::new(()),
            next_seq: AtomicU64::new(max_seq + 1),
            visible_seq: AtomicU64::new(max_seq),
            snapshots: Mutex::new(BTreeMap::new()),
            bg_cv: Condvar::new(),
            bg_mu: Mutex::new(0),
            l0_tables: std::sync::atomic::AtomicUsize::new(0),
            slowdown_debt_ns: AtomicU64::new(0),
            last_work_ms: AtomicU64::new(0),
            opened: std::time::Instant::now(),
            closed: AtomicBool::new(false),
            bg_error: Mutex::new(None),
            cache,
            blobs,
            on_flush: Mutex::new(None),
            before_flush: Mutex::new(None),
            stats: Counters::default(),
            _lock: lock,
            opts,
        });
        inner.l0_tables.store(
            inner.version().levels.first().map_or(0, Vec::len),
            Ordering::Release,
        );
        let bg = if inner.opts.background {
            background::start(&inner)?
        } else {
            Vec::new()
        };
        Ok(Lsm { inner, bg })
    }

    /// Per log stream, the highest log index whose batches are all in tables.
    /// The owner replays its log from the next index.
    pub fn flushed_positions(&self) -> HashMap<StreamId, u64> {
        lock(&self.inner.manifest).1.flushed.clone()
    }

    /// Called after each flush with the positions it made durable, so the
    /// owner can purge its log.
    pub fn set_flush_hook(&self, hook: impl Fn(&HashMap<StreamId, u64>) + Send + Sync + 'static) {
        *lock(&self.inner.on_flush) = Some(Box::new(hook));
    }

    /// Called before each flush records its log positions in the manifest.
    /// An owner that applies batches before its log made them durable (as
    /// `Db` does) must make the log durable here: otherwise a power cut
    /// could leave the manifest claiming log entries the log lost, and the
    /// log would reuse their indexes.
    pub fn set_flush_barrier(&self, barrier: impl Fn() -> Result<()> + Send + Sync + 'static) {
        *lock(&self.inner.before_flush) = Some(Box::new(barrier));
    }

    /// Applies a batch and publishes it: visible to readers on return.
    /// `position` is where the batch is in the owner's log.
    pub fn apply(&self, batch: &WriteBatch, position: Option<(StreamId, u64)>) -> Result<SeqNo> {
        let seq = self.apply_unpublished(batch, position)?;
        self.publish(seq);
        Ok(seq)
    }

    /// Applies a batch without making it visible; [`Lsm::publish`] does.
    /// Returns the batch's last sequence number. For owners that publish
    /// only once the log has made the batch durable.
    pub fn apply_unpublished(
        &self,
        batch: &WriteBatch,
        position: Option<(StreamId, u64)>,
    ) -> Result<SeqNo> {
        if let Some(err) = lock(&self.inner.bg_error).clone() {
            return Err(Error::Poisoned { cause: err });
        }
        // The memtable stores lengths as u32 (u32::MAX marks a tombstone);
        // the batch's size bounds every key and value in it.
        if batch.approximate_size() >= u32::MAX as usize {
            return Err(Error::InvalidArgument(format!(
                "a batch of {} bytes is too large (limit 4 GiB)",
                batch.approximate_size()
            )));
        }
        // Every blob reference's file open and the reference inside it,
        // before anything of the batch is applied (a batch is whole or
        // nothing).
        let blob_files = self.open_blob_files(batch)?;
        let _w = self.inner.write_lock.lock();
        // Slept holding the write lock: the slowdown paces the store's
        // writers as a whole, not each one.
        background::slow_down(&self.inner, batch.approximate_size());
        self.wait_for_room()?;
        let n = batch.len().max(1) as u64;
        let first = self.inner.next_seq.fetch_add(n, Ordering::AcqRel);
        let mem = Arc::clone(&self.inner.mem().active);
        {
            // Held through the inserts (see `Inner::blob_refs`).
            let _refs = (!blob_files.is_empty()).then(|| lock(&self.inner.blob_refs));
            if let Some(f) = blob_files.values().find(|f| f.is_obsolete()) {
                return Err(Error::InvalidArgument(format!(
                    "blob file {} is no longer referenced and is being deleted",
                    f.id
                )));
            }
            let mut w = mem.writer();
            let (_, full_before) = w.placements();
            for (i, op) in batch.ops().enumerate() {
                let seq = SeqNo(first + i as u64);
                match op {
                    BatchOp::Put { key, value } => w.insert(key, seq, Some(value)),
                    BatchOp::Delete { key } => w.insert(key, seq, None),
                    BatchOp::PutBlobRef { key, blob } => {
                        let file = &blob_files[&blob.file];
                        w.insert_blob_ref(key, seq, file, &blob);
                    }
                }
            }
            let stats = &self.inner.stats;
            let (_, full_after) = w.placements();
            stats
                .memtable_inserts
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            stats
                .memtable_full_searches
                .fetch_add(full_after - full_before, Ordering::Relaxed);
        }
        if let Some((stream, index)) = position {
            mem.note_position(stream, index);
        }
        self.inner
            .stats
            .bytes_written
            .fetch_add(batch.approximate_size() as u64, Ordering::Relaxed);
        if mem.approximate_bytes() >= self.inner.opts.memtable_bytes {
            self.rotate();
        }
        Ok(SeqNo(first + n - 1))
    }

    /// The blob files a batch's blob references name, open, each
    /// reference checked to lie inside its file; empty (and no look at
    /// the operations) for a batch without any.
    fn open_blob_files(&self, batch: &WriteBatch) -> Result<HashMap<u64, Arc<blob::BlobFile>>> {
        let mut files: HashMap<u64, Arc<blob::BlobFile>> = HashMap::new();
        if !batch.has_blob_refs() {
            return Ok(files);
        }
        for op in batch.ops() {
            let BatchOp::PutBlobRef { blob, .. } = op else {
                continue;
            };
            let file = self.open_blob_file(&blob)?;
            files.entry(blob.file).or_insert(file);
        }
        Ok(files)
    }

    /// Makes everything applied up to `seq` visible.
    pub fn publish(&self, seq: SeqNo) {
        self.inner.visible_seq.fetch_max(seq.0, Ordering::AcqRel);
    }

    fn wait_for_room(&self) -> Result<()> {
        let max = self.inner.opts.max_immutable_memtables.max(1);
        if self.inner.mem().immutables.len() < max {
            return Ok(());
        }
        self.inner.stats.stalls.fetch_add(1, Ordering::Relaxed);
        if !self.inner.opts.background {
            // Nobody else will flush: do it here.
            while self.inner.mem().immutables.len() >= max {
                flush::flush_oldest(&self.inner, false)?;
            }
            return Ok(());
        }
        let mut g = lock(&self.inner.bg_mu);
        while self.inner.mem().immutables.len() >= max {
            if let Some(err) = lock(&self.inner.bg_error).clone() {
                return Err(Error::Poisoned { cause: err });
            }
            *g += 1;
            self.inner.bg_cv.notify_all();
            g = self
                .inner
                .bg_cv
                .wait_timeout(g, Duration::from_millis(50))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        Ok(())
    }

    /// Makes the active memtable immutable and wakes the flusher.
    fn rotate(&self) {
        {
            let mut m = self
                .inner
                .mem
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if m.active.is_empty() {
                return;
            }
            // The flush thread keeps a fresh memtable ready: making one
            // allocates, and an allocation that maps memory can wait tens
            // of milliseconds behind the background threads' own mapping
            // and unmapping (measured 20–90 ms under a sustained ingest).
            let fresh = m
                .spare
                .take()
                .unwrap_or_else(|| Arc::new(Memtable::with_chunk_pool(&self.inner.chunks)));
            let old = std::mem::replace(&mut m.active, fresh);
            m.immutables.insert(0, old);
        }
        self.inner.wake();
    }

    /// Flushes every memtable to level 0 now (rotating the active one).
    pub fn flush(&self) -> Result<()> {
        // Counted as waiting before the rotation wakes the background
        // thread, so that it never paces the memtable this call waits for
        // (and a paced flush already in progress stops pausing).
        let _w = Waiting::on(&self.inner.flush_waiters);
        {
            let _writes = self.inner.write_lock.lock();
            self.rotate();
        }
        while flush::flush_oldest(&self.inner, false)? {}
        Ok(())
    }

    /// Drops what the store knows of how far `stream` is flushed, in its
    /// memtables and durably in the manifest: for an owner that reset the
    /// stream (`Log::reset`) and will number its entries from 1 again, so
    /// that the old, higher position is not taken for the new entries'.
    /// The owner must have stopped writing with positions in that stream
    /// and flushed what it wrote before ([`Lsm::flush`]).
    pub fn forget_position(&self, stream: StreamId) -> Result<()> {
        {
            let _w = self.inner.write_lock.lock();
            let mems = self.inner.mem();
            mems.active.forget_position(stream);
            for m in &mems.immutables {
                m.forget_position(stream);
            }
        }
        let mut m = lock(&self.inner.manifest);
        let edit = Edit {
            forgotten: vec![stream],
            ..Edit::default()
        };
        m.0.append(&edit)?;
        m.1.apply(&edit);
        Ok(())
    }

    /// Runs one compaction if the picker finds one; returns whether it did.
    pub fn compact(&self) -> Result<bool> {
        let _w = Waiting::on(&self.inner.compaction_waiters);
        compact_once(&self.inner)
    }

    /// Compacts until the picker finds nothing.
    pub fn compact_all(&self) -> Result<()> {
        let _w = Waiting::on(&self.inner.compaction_waiters);
        while compact_once(&self.inner)? {}
        Ok(())
    }

    /// Merges every table into the deepest non-empty level (level one at
    /// least) in one bottommost compaction, applying retention and dropping
    /// tombstones and shadowed versions no snapshot needs. For tests, tools
    /// and benchmarks ("after full compaction").
    pub fn compact_full(&self) -> Result<()> {
        let _w = Waiting::on(&self.inner.compaction_waiters);
        self.flush()?;
        self.compact_tables_full()
    }

    /// [`Lsm::compact_full`]'s merge of every table, without its flush.
    fn compact_tables_full(&self) -> Result<()> {
        let _c = lock(&self.inner.compaction_lock);
        let v = self.inner.version();
        let metas = v.metas();
        let nonempty: Vec<usize> = (0..LEVELS).filter(|&l| !metas[l].is_empty()).collect();
        let Some(&bottom) = nonempty.last() else {
            return Ok(());
        };
        // Merge into the shallowest level (at or below the current bottom)
        // whose size target holds everything, so the picker has nothing
        // left to push down afterwards: a full compaction leaves one sorted
        // run that stays put.
        let total: u64 = metas.iter().flatten().map(|m| m.size).sum();
        let target = (bottom.max(1)..LEVELS)
            .find(|&l| compaction::picker::target_bytes(&self.inner.opts.picker, l) >= total)
            .unwrap_or(LEVELS - 1);
        let inputs: Vec<FileMeta> = nonempty
            .iter()
            .filter(|&&l| l != target)
            .flat_map(|&l| metas[l].iter().cloned())
            .collect();
        let overlapping = metas[target].clone();
        let choice = Choice {
            level: nonempty[0],
            inputs,
            overlapping,
            output_level: target,
            bottommost: true,
        };
        self.run_compaction(&v, &choice)?;
        self.rewrite_blob_garbage()
    }

    /// After a full compaction every reference left is live: rewrites each
    /// table referencing a blob file that also holds unreferenced values,
    /// copying its live values into new blob files, so the old files (and
    /// the deleted values in them) leave the disk. One table at a time,
    /// each into its own level and key range.
    fn rewrite_blob_garbage(&self) -> Result<()> {
        let v = self.inner.version();
        let garbage: std::collections::HashSet<u64> = blob_garbage(&self.inner, &v)
            .into_iter()
            .map(|(id, _, _)| id)
            .collect();
        for t in v.all_tables() {
            rewrite_blobs_of(&self.inner, &v, t, &garbage, None)?;
        }
        Ok(())
    }

    /// Rewrites blob files until none is at least half garbage — what the
    /// compaction thread does in idle time, a table at a time (see
    /// `reclaim_blobs_once`). For tools and tests.
    pub fn reclaim_blobs(&self) -> Result<()> {
        let _w = Waiting::on(&self.inner.compaction_waiters);
        while reclaim_blobs_once(&self.inner, false)? {}
        Ok(())
    }

    fn run_compaction(&self, v: &Version, choice: &Choice) -> Result<()> {
        if let Some(outcome) = compaction::worker::run(&self.inner, v, choice, How::default())? {
            record_compaction(&self.inner, &outcome);
        }
        Ok(())
    }

    /// Compacts until the picker finds nothing, then runs the
    /// recompression pass over every table of the deepest level it has not
    /// rewritten (as `bottom_compression` says; nothing if that is `None` or
    /// compression is off). What the compaction thread does in idle time,
    /// to completion: for tools and benchmarks ("settled and recompressed").
    pub fn recompress_all(&self) -> Result<()> {
        // A caller waits: nothing of it is paced (`pace.rs`).
        let _w = Waiting::on(&self.inner.compaction_waiters);
        loop {
            if compact_once(&self.inner)? {
                continue;
            }
            if recompress_once(&self.inner, false)? == Recompressed::Nothing {
                return Ok(());
            }
        }
    }

    /// A snapshot of the current state.
    pub fn snapshot(&self) -> Snapshot {
        let seq = self.inner.visible_seq.load(Ordering::Acquire);
        *lock(&self.inner.snapshots).entry(seq).or_insert(0) += 1;
        Snapshot {
            seq,
            inner: Arc::clone(&self.inner),
        }
    }

    /// The value of `key` now.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get_at_seq(key, self.inner.visible_seq.load(Ordering::Acquire))
    }

    /// The value of `key` at `snapshot`.
    pub fn get_at(&self, key: &[u8], snapshot: &Snapshot) -> Result<Option<Vec<u8>>> {
        self.get_at_seq(key, snapshot.seq)
    }

    /// The value of `key` now, a value kept in a blob file (a large one)
    /// handed out as a view of the file's mapping, without a copy: for
    /// callers that pass large values on (a media download), where
    /// [`Lsm::get`] would copy each into a fresh buffer. The view keeps
    /// its blob file open while it lives, even past a compaction that
    /// drops the file.
    pub fn get_shared(&self, key: &[u8]) -> Result<Option<bytes::Bytes>> {
        let snap = self.inner.visible_seq.load(Ordering::Acquire);
        let found = self.lookup(
            key,
            snap,
            bytes::Bytes::copy_from_slice,
            |b| b,
            table::reader::Table::get_shared,
        )?;
        let now = self.inner.now();
        Ok(found
            .flatten()
            .filter(|v| !self.inner.is_expired(key, v, now)))
    }

    /// The value `r` points at in one of the store's blob files (a pinned
    /// one while it grows: up to its synced length), CRC-checked, as a view
    /// of the mapping that holds the file open — how the owner of a pinned
    /// file reads back what it wrote there. A reference outside the file,
    /// or to a file the store does not have, is `InvalidArgument`; bytes
    /// that fail their checksum are `Corruption`.
    pub fn blob_value(&self, r: &BlobRef) -> Result<bytes::Bytes> {
        let file = self.open_blob_file(r)?;
        file.shared(r)
    }

    /// Blob file `r.file`, open, with `r` checked to lie inside it.
    fn open_blob_file(&self, r: &BlobRef) -> Result<Arc<blob::BlobFile>> {
        if !blob::blob_path(&self.inner.tables_dir, r.file).exists() {
            return Err(Error::InvalidArgument(format!(
                "a blob reference names file {}, which this store does not have",
                r.file
            )));
        }
        let file = self.inner.blobs.get(r.file)?;
        file.value_unchecked(r).map_err(|_| {
            Error::InvalidArgument(format!(
                "a blob reference ({} bytes at {}) outside blob file {}",
                r.len, r.offset, r.file
            ))
        })?;
        Ok(file)
    }

    fn get_at_seq(&self, key: &[u8], snap: u64) -> Result<Option<Vec<u8>>> {
        let found = self.lookup(
            key,
            snap,
            <[u8]>::to_vec,
            |b| b.to_vec(),
            table::reader::Table::get,
        )?;
        let now = self.inner.now();
        Ok(found
            .flatten()
            .filter(|v| !self.inner.is_expired(key, v, now)))
    }

    /// The newest version of `key` at `snap` (`Some(None)`: deleted),
    /// from the memtables (a value kept there made a `T` by `from_mem`,
    /// one they reference in a blob file by `from_blob`) or the tables
    /// (read by `from_table`).
    fn lookup<T>(
        &self,
        key: &[u8],
        snap: u64,
        from_mem: impl Fn(&[u8]) -> T,
        from_blob: impl Fn(bytes::Bytes) -> T,
        from_table: impl Fn(&table::reader::Table, &[u8], u64) -> Result<Option<Option<T>>>,
    ) -> Result<Option<Option<T>>> {
        let (active, immutables) = {
            let m = self.inner.mem();
            (Arc::clone(&m.active), m.immutables.clone())
        };
        for mem in std::iter::once(&active).chain(&immutables) {
            if let Some(v) = mem.get(key, SeqNo(snap), &from_mem, &from_blob)? {
                return Ok(Some(v));
            }
        }
        let version = self.inner.version();
        let prefix = crate::keys::bloom_prefix(key);
        for (lvl, tables) in version.levels.iter().enumerate() {
            let candidates: Vec<&Arc<TableFile>> = if lvl == 0 {
                tables
                    .iter()
                    .filter(|t| t.meta.overlaps(key, key))
                    .collect()
            } else {
                let i = tables.partition_point(|t| t.meta.largest.as_slice() < key);
                tables
                    .get(i)
                    .filter(|t| t.meta.smallest.as_slice() <= key)
                    .into_iter()
                    .collect()
            };
            for t in candidates {
                if t.meta.min_seq > snap || !t.table.may_contain(prefix) {
                    continue;
                }
                if let Some(v) = from_table(&t.table, key, snap)? {
                    return Ok(Some(v));
                }
            }
        }
        Ok(None)
    }

    /// Up to `limit` live (key, value) pairs in `[lo, hi)` (`hi = None`: no
    /// upper bound), ascending or descending.
    pub fn scan(
        &self,
        lo: &[u8],
        hi: Option<&[u8]>,
        dir: Direction,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let snap = self.inner.visible_seq.load(Ordering::Acquire);
        self.scan_at_seq(lo, hi, dir, limit, snap)
    }

    /// [`Lsm::scan`] at a snapshot.
    pub fn scan_at(
        &self,
        lo: &[u8],
        hi: Option<&[u8]>,
        dir: Direction,
        limit: usize,
        snapshot: &Snapshot,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.scan_at_seq(lo, hi, dir, limit, snapshot.seq)
    }

    fn scan_at_seq(
        &self,
        lo: &[u8],
        hi: Option<&[u8]>,
        dir: Direction,
        limit: usize,
        snap: u64,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        self.visit_seq(lo, hi, dir, snap, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            out.len() < limit
        })?;
        Ok(out)
    }

    /// Calls `visit` with each live (key, value) in `[lo, hi)`, in `dir`
    /// order, until it returns false: [`Lsm::scan`] without copying. The
    /// slices borrow from the memtable or a cached block and live only for
    /// the call; copy what you keep. Reads at what is visible when it
    /// starts, like a scan.
    pub fn visit(
        &self,
        lo: &[u8],
        hi: Option<&[u8]>,
        dir: Direction,
        mut visit: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        let snap = self.inner.visible_seq.load(Ordering::Acquire);
        self.visit_seq(lo, hi, dir, snap, &mut visit)
    }

    /// [`Lsm::visit`] at a snapshot.
    pub fn visit_at(
        &self,
        lo: &[u8],
        hi: Option<&[u8]>,
        dir: Direction,
        snapshot: &Snapshot,
        mut visit: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        self.visit_seq(lo, hi, dir, snapshot.seq, &mut visit)
    }

    /// Calls `visit` with each live (key, value) in `[lo, hi)` at `snap`,
    /// in `dir` order, until it returns false. The slices borrow from the
    /// memtable or the cached block: callers copy only what they keep.
    fn visit_seq(
        &self,
        lo: &[u8],
        hi: Option<&[u8]>,
        dir: Direction,
        snap: u64,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        if hi.is_some_and(|h| h <= lo) {
            return Ok(());
        }
        let (active, immutables) = {
            let m = self.inner.mem();
            (Arc::clone(&m.active), m.immutables.clone())
        };
        let version = self.inner.version();
        let mut cursors: Vec<Box<dyn Cursor + '_>> = Vec::new();
        for mem in std::iter::once(&active).chain(&immutables) {
            cursors.push(Box::new(MemCursor::new(mem, lo, hi, dir)?));
        }
        // A message-key range within one conversation can use the blooms.
        let prefix = conversation_range_prefix(lo, hi);
        let in_range = |m: &FileMeta| {
            m.largest.as_slice() >= lo && hi.is_none_or(|h| m.smallest.as_slice() < h)
        };
        for (lvl, tables) in version.levels.iter().enumerate() {
            // Below level 0 a level's tables are sorted and disjoint: skip
            // to the first that can overlap instead of testing them all.
            let from = if lvl == 0 {
                0
            } else {
                tables.partition_point(|t| t.meta.largest.as_slice() < lo)
            };
            let picked: Vec<Arc<TableFile>> = tables[from..]
                .iter()
                .take_while(|t| lvl == 0 || hi.is_none_or(|h| t.meta.smallest.as_slice() < h))
                .filter(|t| in_range(&t.meta) && t.meta.min_seq <= snap)
                .filter(|t| prefix.is_none_or(|p| t.table.may_contain(p)))
                .cloned()
                .collect();
            if picked.is_empty() {
                continue;
            }
            if lvl == 0 {
                for t in picked {
                    cursors.push(Box::new(RunCursor::new(vec![t], lo, hi, dir)?));
                }
            } else {
                cursors.push(Box::new(RunCursor::new(picked, lo, hi, dir)?));
            }
        }
        let now = self.inner.now();
        let inner = &self.inner;
        read::merge_visible(
            &mut cursors,
            dir,
            snap,
            &|k, v| !inner.is_expired(k, v, now),
            visit,
        )
    }

    /// The newest `limit` messages of a conversation, newest first.
    pub fn latest(&self, conv: ConversationId, limit: usize) -> Result<Vec<StoredMessage>> {
        self.messages(conv, MessageRange::Latest, limit)
    }

    /// Up to `limit` messages older than `ts`, newest first (paging back).
    pub fn before(
        &self,
        conv: ConversationId,
        ts: Timestamp,
        limit: usize,
    ) -> Result<Vec<StoredMessage>> {
        self.messages(conv, MessageRange::Before(ts), limit)
    }

    /// Up to `limit` messages newer than `ts`, oldest first (catching up).
    pub fn after(
        &self,
        conv: ConversationId,
        ts: Timestamp,
        limit: usize,
    ) -> Result<Vec<StoredMessage>> {
        self.messages(conv, MessageRange::After(ts), limit)
    }

    fn messages(
        &self,
        conv: ConversationId,
        range: MessageRange,
        limit: usize,
    ) -> Result<Vec<StoredMessage>> {
        let mut out = Vec::with_capacity(limit.min(1024));
        if limit == 0 {
            return Ok(out);
        }
        self.visit_messages(conv, range, |ts, v| {
            out.push(StoredMessage {
                ts,
                value: v.to_vec(),
            });
            out.len() < limit
        })?;
        Ok(out)
    }

    /// Calls `visit` with a conversation's messages in `range` — their
    /// timestamp and stored value, borrowed for the call — until it
    /// returns false: [`Lsm::latest`], [`Lsm::before`] and [`Lsm::after`]
    /// without copying, for callers that stream what they read. Only
    /// message keys ([`message_key`]) are seen.
    pub fn visit_messages(
        &self,
        conv: ConversationId,
        range: MessageRange,
        mut visit: impl FnMut(Timestamp, &[u8]) -> bool,
    ) -> Result<()> {
        let prefix = conversation_prefix(conv);
        let end = prefix_successor(&prefix);
        let (lo, hi, dir) = match range {
            MessageRange::Latest => (prefix.to_vec(), end, Direction::Forward),
            MessageRange::Before(ts) => {
                let Some(older) = ts.0.checked_sub(1) else {
                    return Ok(());
                };
                (
                    message_key(conv, Timestamp(older)).to_vec(),
                    end,
                    Direction::Forward,
                )
            }
            MessageRange::After(ts) => (
                prefix.to_vec(),
                Some(message_key(conv, ts).to_vec()),
                Direction::Reverse,
            ),
        };
        let snap = self.inner.visible_seq.load(Ordering::Acquire);
        self.visit_seq(
            &lo,
            hi.as_deref(),
            dir,
            snap,
            &mut |k, v| match decode_message_key(k) {
                Some((_, ts)) => visit(ts, v),
                None => true,
            },
        )
    }

    /// Walks every checksum of every live table; returns the number of
    /// versions checked.
    pub fn verify(&self) -> Result<u64> {
        let v = self.inner.version();
        let mut n = 0;
        for t in v.all_tables() {
            n += t.table.verify()?;
        }
        for f in self.inner.blobs.all() {
            f.verify()?;
        }
        Ok(n)
    }

    /// The live tables by level.
    pub fn files(&self) -> Vec<Vec<FileMeta>> {
        self.inner.version().metas()
    }

    /// The block cache's hits and misses so far (the same counts as
    /// [`LsmStats::cache_hits`] and [`LsmStats::cache_misses`]), without
    /// the rest of [`Lsm::stats`]: two loads, cheap enough to take around
    /// every read (the engine bench counts misses per query with it).
    pub fn block_cache_counts(&self) -> (u64, u64) {
        self.inner.cache.counts()
    }

    /// Counters and shape.
    pub fn stats(&self) -> LsmStats {
        let v = self.inner.version();
        let c = &self.inner.stats;
        let files_per_level: Vec<usize> = v.levels.iter().map(Vec::len).collect();
        let bytes_per_level: Vec<u64> = v
            .levels
            .iter()
            .map(|l| l.iter().map(|t| t.meta.size).sum())
            .collect();
        let total: u64 = bytes_per_level.iter().sum();
        let last = bytes_per_level
            .iter()
            .rev()
            .find(|&&b| b > 0)
            .copied()
            .unwrap_or(0);
        let written = c.bytes_written.load(Ordering::Relaxed);
        let table_written = c.table_bytes_written.load(Ordering::Relaxed);
        let (cache_hits, cache_misses) = self.inner.cache.counts();
        let blob_files = self.inner.blobs.all();
        LsmStats {
            bytes_written: written,
            table_bytes_written: table_written,
            blob_bytes_written: c.blob_bytes_written.load(Ordering::Relaxed),
            pinned_blob_bytes_written: c.pinned_blob_bytes_written.load(Ordering::Relaxed),
            blob_files: blob_files.len(),
            blob_bytes: blob_files.iter().map(|f| f.size()).sum(),
            bytes_read: v
                .all_tables()
                .map(|t| t.table.bytes_read.load(Ordering::Relaxed))
                .sum(),
            compaction_bytes_read: c.compaction_bytes_read.load(Ordering::Relaxed),
            flushes: c.flushes.load(Ordering::Relaxed),
            compactions: c.compactions.load(Ordering::Relaxed),
            compaction_parts: c.compaction_parts.load(Ordering::Relaxed),
            stalls: c.stalls.load(Ordering::Relaxed),
            slowdowns: c.slowdowns.load(Ordering::Relaxed),
            slowdown_micros: c.slowdown_micros.load(Ordering::Relaxed),
            paced_steps: c.paced_steps.load(Ordering::Relaxed),
            paced_micros: c.paced_micros.load(Ordering::Relaxed),
            tables_recompressed: c.tables_recompressed.load(Ordering::Relaxed),
            recompressions_abandoned: c.recompressions_abandoned.load(Ordering::Relaxed),
            memtable_inserts: c.memtable_inserts.load(Ordering::Relaxed),
            memtable_full_searches: c.memtable_full_searches.load(Ordering::Relaxed),
            flush_versions_dropped: c.flush_versions_dropped.load(Ordering::Relaxed),
            cache_hits,
            cache_misses,
            read_amplification: files_per_level[0]
                + files_per_level[1..].iter().filter(|&&n| n > 0).count(),
            files_per_level,
            bytes_per_level,
            write_amplification: if written == 0 {
                0.0
            } else {
                table_written as f64 / written as f64
            },
            space_amplification: if last == 0 {
                0.0
            } else {
                total as f64 / last as f64
            },
        }
    }
}

impl Drop for Lsm {
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.wake();
        for t in self.bg.drain(..) {
            let _ = t.join();
        }
    }
}

/// If `[lo, hi)` lies within one conversation's messages, its prefix.
fn conversation_range_prefix<'a>(lo: &'a [u8], hi: Option<&[u8]>) -> Option<&'a [u8]> {
    use crate::keys::{Keyspace, CONVERSATION_PREFIX_LEN};
    let p = lo.get(..CONVERSATION_PREFIX_LEN)?;
    if p[0] != Keyspace::Message as u8 {
        return None;
    }
    let end = prefix_successor(p)?;
    hi.filter(|h| *h <= end.as_slice())?;
    Some(p)
}

fn record_compaction(inner: &Inner, outcome: &compaction::worker::Outcome) {
    tracing::debug!(?outcome, "compaction done");
    inner.stats.compactions.fetch_add(1, Ordering::Relaxed);
    inner
        .stats
        .compaction_parts
        .fetch_add(outcome.parts as u64, Ordering::Relaxed);
    inner
        .stats
        .compaction_bytes_read
        .fetch_add(outcome.bytes_in, Ordering::Relaxed);
    inner
        .stats
        .table_bytes_written
        .fetch_add(outcome.bytes_out, Ordering::Relaxed);
}

fn compact_once(inner: &Inner) -> Result<bool> {
    let _c = lock(&inner.compaction_lock);
    let v = inner.version();
    let metas = v.metas();
    let urgent = pressure::level0_urgent(inner)
        .then(|| compaction::picker::pick_level0(&metas))
        .flatten();
    let Some(choice) = urgent.or_else(|| compaction::picker::pick(&metas, &inner.opts.picker))
    else {
        return Ok(false);
    };
    if let Some(outcome) = compaction::worker::run(inner, &v, &choice, How::default())? {
        record_compaction(inner, &outcome);
    }
    Ok(true)
}

/// What one step of the recompression pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recompressed {
    /// No table left to rewrite (or no HC configured).
    Nothing,
    /// Rewrote one table.
    One,
    /// Gave up a rewrite because work arrived.
    Abandoned,
}

/// One step of the recompression pass (`compaction::picker`'s module docs):
/// rewrites one table of the deepest level as `bottom_compression` says. With `yielding`,
/// it gives up as soon as the picker has a compaction to run or a memtable
/// waits (the compaction thread's idle-time pass).
fn recompress_once(inner: &Inner, yielding: bool) -> Result<Recompressed> {
    if !inner.opts.compression || inner.opts.bottom_compression.is_none() {
        return Ok(Recompressed::Nothing);
    }
    let _c = lock(&inner.compaction_lock);
    let v = inner.version();
    let Some(choice) = compaction::picker::pick_recompress(&v.metas()) else {
        return Ok(Recompressed::Nothing);
    };
    // A waiting memtable is not a reason to stop: the flush thread takes it
    // in parallel.
    let busy = || {
        inner.flush_waiters.load(Ordering::Acquire) > 0
            || inner.compaction_waiters.load(Ordering::Acquire) > 0
            || compaction::picker::pick(&inner.version().metas(), &inner.opts.picker).is_some()
    };
    let how = How {
        recompress: true,
        abort: yielding.then_some(&busy as &dyn Fn() -> bool),
        rewrite_blobs: None,
    };
    Ok(match compaction::worker::run(inner, &v, &choice, how)? {
        Some(outcome) => {
            record_compaction(inner, &outcome);
            inner
                .stats
                .tables_recompressed
                .fetch_add(1, Ordering::Relaxed);
            Recompressed::One
        }
        None => {
            inner
                .stats
                .recompressions_abandoned
                .fetch_add(1, Ordering::Relaxed);
            Recompressed::Abandoned
        }
    })
}

/// Blob files holding values no table references: (id, unreferenced
/// value bytes, value bytes). Versions shadowed but not yet compacted away
/// count as referenced, so this errs on the side of keeping.
fn blob_garbage(inner: &Inner, v: &Version) -> Vec<(u64, u64, u64)> {
    // A pinned file stays while its pin does: copying its live values out
    // would free nothing (and a growing one has no count to compare).
    let pinned = lock(&inner.manifest).1.pinned_blobs.clone();
    let mut referenced: HashMap<u64, u64> = HashMap::new();
    for t in v.all_tables() {
        for (f, bytes) in &t.table.blob_list {
            *referenced.entry(*f).or_insert(0) += bytes;
        }
    }
    inner
        .blobs
        .all()
        .iter()
        .filter(|f| !pinned.contains(&f.id))
        .filter_map(|f| {
            let live = *referenced.get(&f.id)?;
            {
                let all = f.value_bytes();
                (live < all).then(|| (f.id, all - live, all))
            }
        })
        .collect()
}

/// Rewrites table `t` in place (its level, its key range) if it
/// references one of `files`, copying the values it references there into
/// a new blob file; other references move as they are. Level-0 tables are
/// left to compaction (their order among themselves is by sequence
/// numbers, which a rewrite keeps, but they are rewritten soon anyway).
/// Returns whether it rewrote.
fn rewrite_blobs_of(
    inner: &Inner,
    v: &Version,
    t: &TableFile,
    files: &std::collections::HashSet<u64>,
    abort: Option<&dyn Fn() -> bool>,
) -> Result<bool> {
    if t.meta.level == 0 || !t.table.blob_list.iter().any(|(f, _)| files.contains(f)) {
        return Ok(false);
    }
    let level = usize::from(t.meta.level);
    let choice = Choice {
        level,
        inputs: Vec::new(),
        overlapping: vec![t.meta.clone()],
        output_level: level,
        bottommost: false,
    };
    let how = How {
        rewrite_blobs: Some(files),
        abort,
        ..How::default()
    };
    Ok(match compaction::worker::run(inner, v, &choice, how)? {
        Some(outcome) => {
            record_compaction(inner, &outcome);
            true
        }
        None => false,
    })
}

/// Blob garbage reclaimed in the background: the file with the most
/// unreferenced bytes, if at least half of it is, has one table that
/// references it rewritten (see [`rewrite_blobs_of`]); once no table
/// references it, the install retires it. Returns whether it rewrote one.
/// `yielding`: give the rewrite up as soon as other work arrives.
fn reclaim_blobs_once(inner: &Inner, yielding: bool) -> Result<bool> {
    let _c = lock(&inner.compaction_lock);
    let v = inner.version();
    let Some((worst, _, _)) = blob_garbage(inner, &v)
        .into_iter()
        .filter(|(_, garbage, bytes)| garbage.saturating_mul(2) >= *bytes)
        .max_by_key(|(_, garbage, _)| *garbage)
    else {
        return Ok(false);
    };
    let busy = || {
        inner.flush_waiters.load(Ordering::Acquire) > 0
            || inner.compaction_waiters.load(Ordering::Acquire) > 0
            || compaction::picker::pick(&inner.version().metas(), &inner.opts.picker).is_some()
    };
    let files = std::collections::HashSet::from([worst]);
    for t in v.all_tables() {
        if rewrite_blobs_of(
            inner,
            &v,
            t,
            &files,
            yielding.then_some(&busy as &dyn Fn() -> bool),
        )? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Counts a caller in `counter` while it lives.
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Waiting<'a> {
    fn on(counter: &'a std::sync::atomic::AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Waiting(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod blob_ref_tests;

#[cfg(test)]
mod compaction_tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    /// A store without background threads in a fresh directory.
    fn open(opts: LsmOptions) -> (tempfile::TempDir, Lsm) {
        let dir = tempfile::tempdir().unwrap();
        let lsm = Lsm::open(
            dir.path(),
            LsmOptions {
                background: false,
                ..opts
            },
        )
        .unwrap();
        (dir, lsm)
    }

    fn table_files(inner: &Inner) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&inner.tables_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A rewrite of the pass that work interrupts leaves the version and
    /// the directory as they were: no half-written table survives.
    #[test]
    fn an_abandoned_rewrite_changes_nothing_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let opts = |target_table_bytes| LsmOptions {
            background: false,
            target_table_bytes,
            ..LsmOptions::default()
        };
        // One table of 20 000 versions...
        let lsm = Lsm::open(dir.path(), opts(32 << 20)).unwrap();
        let mut b = WriteBatch::new();
        for i in 0..20_000u32 {
            b.put(i.to_be_bytes(), format!("value {i} see you at the office"));
        }
        lsm.apply(&b, None).unwrap();
        lsm.compact_full().unwrap();
        assert_eq!(lsm.files().concat().len(), 1);
        drop(lsm);
        // ...rewritten into 16 KiB tables: by the first look for work
        // (after 4096 versions) some are finished and one is open.
        let lsm = Lsm::open(dir.path(), opts(16 << 10)).unwrap();
        let (files, names) = (lsm.files(), table_files(&lsm.inner));
        let v = lsm.inner.version();
        let choice = compaction::picker::pick_recompress(&v.metas()).unwrap();
        let stop = || true;
        let how = How {
            recompress: true,
            abort: Some(&stop),
            rewrite_blobs: None,
        };
        let outcome = compaction::worker::run(&lsm.inner, &v, &choice, how).unwrap();
        assert!(outcome.is_none());
        assert_eq!(lsm.files(), files);
        assert_eq!(table_files(&lsm.inner), names);
        for i in (0..20_000u32).step_by(997) {
            assert_eq!(
                lsm.get(&i.to_be_bytes()).unwrap(),
                Some(format!("value {i} see you at the office").into_bytes())
            );
        }
    }

    /// A compaction cut into key ranges merged side by side keeps exactly
    /// what one merge keeps: the same live pairs (overwrites, deletes and
    /// versions of one key meeting across level-0 tables), and tables of
    /// a level that still never share a key.
    #[test]
    fn a_split_compaction_keeps_what_one_merge_keeps() {
        let fill = |subcompactions: usize| {
            let (dir, lsm) = open(LsmOptions {
                target_table_bytes: 64 << 10,
                subcompactions,
                ..LsmOptions::default()
            });
            // Six level-0 tables over one key space, each rewriting or
            // deleting keys of the ones before.
            for round in 0..6u32 {
                let mut b = WriteBatch::new();
                for i in 0..6_000u32 {
                    let k = (i * 7_919 + round * 13) % 20_000;
                    if (i + round) % 11 == 0 {
                        b.delete(k.to_be_bytes());
                    } else {
                        b.put(
                            k.to_be_bytes(),
                            format!("round {round} key {k} hello there"),
                        );
                    }
                }
                lsm.apply(&b, None).unwrap();
                lsm.flush().unwrap();
            }
            lsm.compact_full().unwrap();
            let all = lsm.scan(&[], None, Direction::Forward, usize::MAX).unwrap();
            (dir, lsm, all)
        };
        let (_d1, one, want) = fill(1);
        let (_d4, split, got) = fill(4);
        assert!(want.len() > 10_000, "{} pairs", want.len());
        assert_eq!(got, want);
        let (o, s) = (one.stats(), split.stats());
        assert_eq!(o.compaction_parts, o.compactions);
        assert!(
            s.compaction_parts >= s.compactions + 3,
            "{} parts in {} compactions",
            s.compaction_parts,
            s.compactions
        );
        for level in split.files() {
            for pair in level.windows(2) {
                assert!(pair[0].largest < pair[1].smallest, "{pair:?}");
            }
        }
    }

    /// With `uncompressed_levels` = 2, a flush writes level 0 uncompressed
    /// and so does a compaction into level 1 above a level holding the same
    /// keys; what reaches the bottom is compressed exactly as with every
    /// level compressed, and everything reads back.
    #[test]
    fn upper_levels_are_stored_uncompressed_and_the_bottom_compressed() {
        let level_bytes = |lsm: &Lsm| -> Vec<u64> {
            lsm.files()
                .iter()
                .map(|l| l.iter().map(|f| f.size).sum())
                .collect()
        };
        // Keys `first`, `first + step`, … (20 000 of them), compressible.
        let put = |lsm: &Lsm, first: u32, step: u32| {
            let mut b = WriteBatch::new();
            for k in (0..20_000u32).map(|i| first + i * step) {
                b.put(k.to_be_bytes(), format!("value {k} see you at the office"));
            }
            lsm.apply(&b, None).unwrap();
        };
        let run = |uncompressed_levels: usize| {
            let (dir, lsm) = open(LsmOptions {
                target_table_bytes: 64 << 10,
                uncompressed_levels,
                // A small level 1, so the full compaction lands below it.
                picker: PickerConfig {
                    level1_bytes: 64 << 10,
                    ..PickerConfig::default()
                },
                ..LsmOptions::default()
            });
            // Round 0 takes the even keys, round 1 the odd ones between.
            let round = |r: u32| put(&lsm, r, 2);
            round(0);
            lsm.compact_full().unwrap();
            let bottom = level_bytes(&lsm);
            // Level 2 or deeper: the full compaction sizes its target by
            // its inputs, which an uncompressed level 0 makes larger.
            let b = bottom.iter().position(|&n| n > 0).unwrap();
            assert!(
                b >= 2 && bottom[b..].iter().skip(1).all(|&n| n == 0),
                "{bottom:?}"
            );
            round(1);
            lsm.flush().unwrap();
            let l0 = level_bytes(&lsm)[0];
            let v = lsm.inner.version();
            let choice = compaction::picker::pick_level0(&v.metas()).unwrap();
            assert!(!choice.bottommost, "level 2 holds keys in its range");
            lsm.run_compaction(&v, &choice).unwrap();
            let after = level_bytes(&lsm);
            assert_eq!((after[0], after[b]), (0, bottom[b]));
            let all = lsm.scan(&[], None, Direction::Forward, usize::MAX).unwrap();
            assert_eq!(all.len(), 40_000);
            assert_eq!(
                all[4_321],
                (
                    4_321u32.to_be_bytes().to_vec(),
                    b"value 4321 see you at the office".to_vec()
                )
            );
            (bottom[b], l0, after[1], dir, lsm)
        };
        let (bottom_raw, l0_raw, l1_raw, _d2, _l2) = run(2);
        let (bottom_lz4, l0_lz4, l1_lz4, _d0, _l0) = run(0);
        // Alike within a table's overhead (the level it lands in may differ).
        assert!(
            bottom_raw.abs_diff(bottom_lz4) * 100 < bottom_lz4,
            "the bottom is compressed alike: {bottom_raw} vs {bottom_lz4} bytes"
        );
        assert!(
            l0_raw * 2 > l0_lz4 * 3,
            "level 0: {l0_raw} vs {l0_lz4} bytes"
        );
        assert!(
            l1_raw * 2 > l1_lz4 * 3,
            "level 1: {l1_raw} vs {l1_lz4} bytes"
        );

        // A young tree, all of it in level 1: that is its bottom, compressed.
        let young = |uncompressed_levels: usize| {
            let (_dir, lsm) = open(LsmOptions {
                uncompressed_levels,
                ..LsmOptions::default()
            });
            put(&lsm, 0, 1);
            lsm.compact_full().unwrap();
            let bytes = level_bytes(&lsm);
            assert!(
                bytes[1] > 0 && bytes[1] == bytes.iter().sum::<u64>(),
                "{bytes:?}"
            );
            bytes[1]
        };
        assert_eq!(young(2), young(0));
    }
}
