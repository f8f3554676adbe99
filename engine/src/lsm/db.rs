//! `Db`: the LSM with a log of its own, for standalone use (tests, benches,
//! tools, embedding). A write goes to the log (group-committed), then into
//! the memtable, and becomes visible once the log has written it — and, for
//! a write that asks for it (the default), is acknowledged only once an
//! fdatasync covers it.
//!
//! ```text
//!  write(batch) ─► check message keys' shape
//!               ─► log.append(stream 1, [batch])   (one entry per batch;
//!                  returns once written to the file)
//!               ─► lsm.apply_unpublished(batch, (stream 1, index))
//!               ─► sync: wait durable ─► lsm.publish(seq) ─► return
//!  open ─► Log::open ─► Lsm::open ─► replay log entries after the flushed
//!          position ─► purge the log up to it
//!  flush (background) ─► log.sync() (the flush barrier) ─► manifest records
//!          the position ─► purge the log
//! ```
//!
//! # What the defaults cost, and how to change them
//!
//! [`DbOptions::default`] is sized for a server that owns the machine.
//! Measured on the 2-core development host (2026-12-04):
//!
//! | default | what it costs | to change |
//! |---|---|---|
//! | log segments of 64 MiB, preallocated | 64 MiB of disk from the first write; `open` reads the newest segment whole (recovery must prove nothing intact follows the last record), so reopening takes 50–300 ms against 1–3 ms without preallocation | `log.segment_size`, `log.preallocate` |
//! | memtables of 64 MiB, up to 2 immutable ones waiting for flush | up to 192 MiB of RSS under a write burst | `lsm.memtable_bytes`, `lsm.max_immutable_memtables` |
//! | a 256 MiB block cache | a ceiling, filled only as blocks are read | `lsm.block_cache_bytes` |
//! | LZ4-HC (level 9, 8 KiB blocks, a dictionary per table) at the bottom level, rewritten in idle time | several times the compression CPU of a compaction into it (16.5 s of idle work per 5M messages), for ~19 % less space; [`crate::lsm::BottomCompression::ZSTD`] saves ~20 %, for ~3× slower decoding of each block a read misses in the cache | `lsm.bottom_compression` |
//! | every write synced | one fdatasync per group commit | [`WriteOptions::sync`] per write, or `log.sync` for all |
//! | level 0 and 1 written uncompressed above the bottom | those levels' bytes on disk and in the page cache, about 2× theirs compressed (a few percent of a grown tree; up to 3 uncompressed level-0 tables stay while idle); settled space is unchanged. Buys a sustained ingest 1.2–1.4× its rate | `lsm.uncompressed_levels: 0` |
//! | writers slowed from 20 level-0 tables, stopped at 36 (RocksDB's defaults) | under an ingest faster than compaction, reads of a busy conversation merge up to that many level-0 tables; in exchange a 30M-message ingest runs 1.15–1.25× faster than with 8 / 20 | `lsm.l0_slowdown_tables`, `lsm.l0_stop_tables` |
//! | table writes paced at 48 MiB/s per table while the log acknowledges durable writes (never while writers are held back) | a flush or compaction running beside durable writes takes longer (a 45 MiB level-0 table ~1 s instead of ~0.2 s); in exchange 4 durable writers' batch p99 is about halved | `lsm.paced_write_rate: None` |
//! | subcompactions: a large compaction uses up to as many threads as cores (at most 4), niced like the compaction thread | a burst of background CPU on every core while a level-0 or full compaction runs (a 5M-message settle: 2.1–4.0 s instead of 5.9–7.4 s) | `lsm.subcompactions: 1` |
//!
//! [`DbOptions::small`] is a preset for embedding and tests.
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::keys::{ConversationId, Keyspace, Timestamp, MESSAGE_KEY_LEN};
use crate::log::{Log, LogOptions, LogStats, StreamId};
use crate::lsm::{
    Direction, Lsm, LsmOptions, LsmStats, MessageRange, Snapshot, StoredMessage, WriteBatch,
};

#[cfg(doc)]
use crate::keys::message_key;

/// The log stream a `Db` writes to.
const STREAM: StreamId = StreamId(1);
/// Entries replayed per log read on open.
const REPLAY_CHUNK: u64 = 1024;

/// How to open a [`Db`] (see the module docs for what the defaults cost).
#[derive(Debug, Clone, Default)]
pub struct DbOptions {
    /// The log's options.
    pub log: LogOptions,
    /// The LSM's options.
    pub lsm: LsmOptions,
}

impl DbOptions {
    /// A small footprint for embedding, tools and tests: 4 MiB log
    /// segments not preallocated (open in a few milliseconds), 8 MiB
    /// memtables, an 8 MiB block cache, no LZ4-HC. Writes are still synced
    /// unless a write says otherwise.
    pub fn small() -> DbOptions {
        DbOptions {
            log: LogOptions {
                segment_size: 4 << 20,
                preallocate: false,
                ..LogOptions::default()
            },
            lsm: LsmOptions {
                memtable_bytes: 8 << 20,
                block_cache_bytes: 8 << 20,
                bottom_compression: None,
                ..LsmOptions::default()
            },
        }
    }
}

/// How one [`Db::write_with`] is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    /// Acknowledge only once an fdatasync covers the write (as the log's
    /// [`crate::log::SyncPolicy`] defines it), so a power cut cannot take
    /// it back. `false`: acknowledge once the log has written it to the
    /// file — it survives the process's crash but not a power cut; a
    /// later synced write (or a flush) makes it durable with it.
    pub sync: bool,
}

impl Default for WriteOptions {
    /// Synced: what [`Db::write`] does.
    fn default() -> Self {
        WriteOptions { sync: true }
    }
}

/// An LSM with its own log: writes go to the log, then the memtable, and
/// become visible once durable; open replays the log past the last flush.
#[derive(Debug)]
pub struct Db {
    log: Arc<Log>,
    lsm: Lsm,
    /// Keeps log order and memtable order the same. parking_lot's: a writer
    /// that has waited ~0.5 ms is handed the lock instead of losing it again
    /// to writers that are running (std's barges; with four durable writers
    /// on two cores that unfairness was the batch p99, docs/benchmarks.md).
    write_lock: parking_lot::Mutex<()>,
}

impl Db {
    /// Opens (or creates) a database in `dir` (`dir/log` and `dir/lsm`),
    /// replaying what the log holds beyond the last flush.
    pub fn open(dir: impl AsRef<Path>, opts: DbOptions) -> Result<Db> {
        let dir = dir.as_ref();
        let log = Arc::new(Log::open(dir.join("log"), opts.log)?);
        let mut lsm_opts = opts.lsm;
        // Table writes give way while this log acknowledges durable writes
        // (`LsmOptions::paced_write_rate`).
        lsm_opts
            .sync_activity
            .get_or_insert_with(|| log.sync_activity());
        let lsm = Lsm::open(dir.join("lsm"), lsm_opts)?;
        let flushed = lsm.flushed_positions().get(&STREAM).copied().unwrap_or(0);
        let bounds = log.bounds(STREAM);
        if !bounds.is_empty() && bounds.first > flushed + 1 {
            return Err(Error::corruption(
                log.dir(),
                0,
                format!(
                    "the log starts at entry {} but the store has flushed only up to {flushed}: entries are missing",
                    bounds.first
                ),
            ));
        }
        let mut next = flushed + 1;
        while next <= bounds.last {
            let hi = (next + REPLAY_CHUNK).min(bounds.last + 1);
            for e in log.read(STREAM, next..hi)? {
                let batch = WriteBatch::decode(&e.data).ok_or_else(|| {
                    Error::corruption(
                        log.dir(),
                        0,
                        format!("log entry {} is not a write batch", e.index),
                    )
                })?;
                lsm.apply(&batch, Some((STREAM, e.index)))?;
            }
            next = hi;
        }
        if flushed > 0 {
            log.purge_upto(STREAM, flushed)?;
        }
        // Batches enter the memtable before the log has synced them; a
        // flush must not record a log position the log could still lose.
        let weak = Arc::downgrade(&log);
        lsm.set_flush_barrier(move || match weak.upgrade() {
            Some(log) => log.sync(),
            None => Err(Error::Closed),
        });
        let weak = Arc::downgrade(&log);
        lsm.set_flush_hook(move |positions| {
            let (Some(log), Some(&upto)) = (weak.upgrade(), positions.get(&STREAM)) else {
                return;
            };
            if let Err(err) = log.purge_upto(STREAM, upto) {
                tracing::warn!(%err, upto, "could not purge the log after a flush");
            }
        });
        Ok(Db {
            log,
            lsm,
            write_lock: parking_lot::Mutex::new(()),
        })
    }

    /// Writes a batch atomically; durable (and visible) when it returns.
    pub fn write(&self, batch: &WriteBatch) -> Result<()> {
        self.write_with(batch, WriteOptions::default())
    }

    /// Writes a batch atomically with the durability `opts` asks for. It
    /// is visible when this returns, and durable against a power cut only
    /// if `opts.sync`.
    ///
    /// Any key is accepted, and [`Db::get`] and [`Db::scan`] read it back;
    /// but the conversation reads ([`Db::latest`], [`Db::before`],
    /// [`Db::after`] and their visitors) see only message keys, which
    /// [`message_key`] builds. A key of the message keyspace (first byte
    /// [`Keyspace::Message`]) of another length would be stored and never
    /// returned by them, so such a batch is refused with
    /// [`Error::InvalidArgument`] and nothing of it is written; so is a
    /// batch holding a blob reference ([`WriteBatch::put_blob_ref`]).
    ///
    /// Visibility is by log order: a write without sync also makes visible
    /// a synced write the log took before it that is still waiting for its
    /// fdatasync. Both are written to the file by then; the synced one is
    /// still acknowledged only once durable.
    pub fn write_with(&self, batch: &WriteBatch, opts: WriteOptions) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        check_message_keys(batch)?;
        let (appended, seq) = {
            let _w = self.write_lock.lock();
            let appended = self.log.append(STREAM, &[batch.as_bytes()])?;
            let seq = self
                .lsm
                .apply_unpublished(batch, Some((STREAM, appended.first)))?;
            (appended, seq)
        };
        // Outside the lock: other writers join this group commit meanwhile.
        // `append` returned once the entry was written to the file.
        if opts.sync {
            appended.durable.wait()?;
        }
        self.lsm.publish(seq);
        Ok(())
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.lsm.get(key)
    }

    /// The value of `key` at a snapshot.
    pub fn get_at(&self, key: &[u8], snapshot: &Snapshot) -> Result<Option<Vec<u8>>> {
        self.lsm.get_at(key, snapshot)
    }

    /// A consistent view.
    pub fn snapshot(&self) -> Snapshot {
        self.lsm.snapshot()
    }

    /// Up to `limit` pairs in `[lo, hi)` in the given direction.
    pub fn scan(
        &self,
        lo: &[u8],
        hi: Option<&[u8]>,
        dir: Direction,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.lsm.scan(lo, hi, dir, limit)
    }

    /// The newest messages of a conversation, newest first.
    pub fn latest(&self, conv: ConversationId, limit: usize) -> Result<Vec<StoredMessage>> {
        self.lsm.latest(conv, limit)
    }

    /// Messages older than `ts`, newest first.
    pub fn before(
        &self,
        conv: ConversationId,
        ts: Timestamp,
        limit: usize,
    ) -> Result<Vec<StoredMessage>> {
        self.lsm.before(conv, ts, limit)
    }

    /// Messages newer than `ts`, oldest first.
    pub fn after(
        &self,
        conv: ConversationId,
        ts: Timestamp,
        limit: usize,
    ) -> Result<Vec<StoredMessage>> {
        self.lsm.after(conv, ts, limit)
    }

    /// Streams the live pairs of `[lo, hi)` in `dir` order to `visit`,
    /// borrowed, until it returns false (see [`Lsm::visit`]).
    pub fn visit(
        &self,
        lo: &[u8],
        hi: Option<&[u8]>,
        dir: Direction,
        visit: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        self.lsm.visit(lo, hi, dir, visit)
    }

    /// Streams a conversation's messages to `visit`, borrowed, until it
    /// returns false (see [`Lsm::visit_messages`]).
    pub fn visit_messages(
        &self,
        conv: ConversationId,
        range: MessageRange,
        visit: impl FnMut(Timestamp, &[u8]) -> bool,
    ) -> Result<()> {
        self.lsm.visit_messages(conv, range, visit)
    }

    /// Flushes the memtables (and so lets the log be purged).
    pub fn flush(&self) -> Result<()> {
        self.lsm.flush()
    }

    /// Rolls the log to a new segment and deletes the old ones every
    /// flush has made unneeded (see [`Log::roll`]).
    pub fn roll_log(&self) -> Result<()> {
        self.log.roll()
    }

    /// Merges everything into the bottom level.
    pub fn compact_full(&self) -> Result<()> {
        self.lsm.compact_full()
    }

    /// Checks every checksum of every live table.
    pub fn verify(&self) -> Result<u64> {
        self.lsm.verify()
    }

    /// The store's counters.
    pub fn stats(&self) -> LsmStats {
        self.lsm.stats()
    }

    /// The log's counters.
    pub fn log_stats(&self) -> LogStats {
        self.log.stats()
    }

    /// The LSM itself.
    pub fn lsm(&self) -> &Lsm {
        &self.lsm
    }
}

/// Refuses a batch holding a key of the message keyspace that is not a
/// message key (see [`Db::write_with`]).
fn check_message_keys(batch: &WriteBatch) -> Result<()> {
    for op in batch.ops() {
        // The log replays this batch at open, after the LSM deleted blob
        // files no table references: nothing would keep the file.
        if matches!(op, crate::lsm::BatchOp::PutBlobRef { .. }) {
            return Err(Error::InvalidArgument(
                "Db does not take blob references (WriteBatch::put_blob_ref): nothing \
                 would keep their blob files until a flush"
                    .into(),
            ));
        }
        let key = op.key();
        if key.first() == Some(&(Keyspace::Message as u8)) && key.len() != MESSAGE_KEY_LEN {
            return Err(Error::InvalidArgument(format!(
                "a key starting with the message keyspace's tag 0x{:02x} must be a \
                 {MESSAGE_KEY_LEN}-byte message key (keys::message_key), not {} bytes: \
                 the conversation reads would never return it",
                Keyspace::Message as u8,
                key.len()
            )));
        }
    }
    Ok(())
}
