//! `Db`: the LSM with a log of its own, for standalone use (tests, benches,
//! tools, embedding). A write goes to the log (group-committed), then into
//! the memtable, and becomes visible only once the log made it durable — so
//! a reader never sees a write a crash could take back.
//!
//! ```text
//!  write(batch) ─► log.append(stream 1, [batch])   (one entry per batch)
//!               ─► lsm.apply_unpublished(batch, (stream 1, index))
//!               ─► wait durable ─► lsm.publish(seq) ─► return
//!  open ─► Log::open ─► Lsm::open ─► replay log entries after the flushed
//!          position ─► purge the log up to it
//!  flush (background) ─► log.sync() (the flush barrier) ─► manifest records
//!          the position ─► purge the log
//! ```

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::keys::{ConversationId, Timestamp};
use crate::log::{Log, LogOptions, LogStats, StreamId};
use crate::lsm::{Direction, Lsm, LsmOptions, LsmStats, Snapshot, StoredMessage, WriteBatch};

/// The log stream a `Db` writes to.
const STREAM: StreamId = StreamId(1);
/// Entries replayed per log read on open.
const REPLAY_CHUNK: u64 = 1024;

/// How to open a [`Db`].
#[derive(Debug, Clone, Default)]
pub struct DbOptions {
    /// The log's options.
    pub log: LogOptions,
    /// The LSM's options.
    pub lsm: LsmOptions,
}

/// An LSM with its own log: writes go to the log, then the memtable, and
/// become visible once durable; open replays the log past the last flush.
#[derive(Debug)]
pub struct Db {
    log: Arc<Log>,
    lsm: Lsm,
    /// Keeps log order and memtable order the same.
    write_lock: Mutex<()>,
}

impl Db {
    /// Opens (or creates) a database in `dir` (`dir/log` and `dir/lsm`),
    /// replaying what the log holds beyond the last flush.
    pub fn open(dir: impl AsRef<Path>, opts: DbOptions) -> Result<Db> {
        let dir = dir.as_ref();
        let log = Arc::new(Log::open(dir.join("log"), opts.log)?);
        let lsm = Lsm::open(dir.join("lsm"), opts.lsm)?;
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
            write_lock: Mutex::new(()),
        })
    }

    /// Writes a batch atomically; durable (and visible) when it returns.
    pub fn write(&self, batch: &WriteBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let (appended, seq) = {
            let _w = self
                .write_lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let appended = self.log.append(STREAM, &[batch.as_bytes()])?;
            let seq = self
                .lsm
                .apply_unpublished(batch, Some((STREAM, appended.first)))?;
            (appended, seq)
        };
        // Outside the lock: other writers join this group commit meanwhile.
        appended.durable.wait()?;
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
