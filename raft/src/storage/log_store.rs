//! openraft's log storage on the node-wide engine log.
//!
//! # The contract, and how each point is met
//!
//! - **Vote durable before return.** `save_vote` writes a meta record and
//!   awaits its completion (a group-committed fdatasync shared with every
//!   other shard's writes on this node).
//! - **Committed: staged, neither written nor waited for.** `save_committed`
//!   stages a meta record ([`Log::stage_meta`]): the next write of the
//!   node's log (any shard's append, a vote) carries it, or the log's writer
//!   thread writes it within 20 ms if nothing comes, and the sync after that
//!   makes it durable. openraft calls it inline before every apply: waiting
//!   for its own sync put a second fdatasync into every Raft round
//!   (measured: delivered p50 at 3 000 msgs/s roughly halved without it),
//!   and even unwaited, writing it on its own cost a `pwrite`, a wake of the
//!   syncer and often a sync of its own per round (~5 % of the server's
//!   CPU at 5 000 msgs/s; docs/benchmarks.md). Raft itself never needs
//!   `committed` durable — a leader re-commits its log when elected, a
//!   follower learns the commit point from its leader. What it bought us
//!   was that a restarted replica re-applies `(applied, committed]` at boot
//!   and so never serves *stale* reads older than before a crash; after a
//!   crash the record may now lag by the last few commits, so
//!   [`LogStore::tail_unconfirmed`] tells the node at boot whether entries
//!   past the recorded commit point exist, and stale reads of that shard
//!   wait for one linearizable confirmation first (`read::read_index`). Whether
//!   the LSM's flushed state is ahead of the record does not matter:
//!   openraft takes `committed = max(committed, applied)` at boot, and the
//!   gate compares the record with the log's last entry, so a lagging
//!   record only ever closes it.
//! - **Append: readable on return, callback only when durable.** The engine's
//!   `append` returns once the entries are in the segment file (readable by
//!   any reader); the `LogFlushed` callback fires from a task awaiting the
//!   engine's completion, which fires only after an fdatasync covering the
//!   entries and everything before them. Firing it early is the classic
//!   openraft bug: a leader would count its own unsynced entry in a quorum.
//! - **Large entries: bytes once, in a blob file.** An entry carrying at
//!   least `bulk::BULK_MIN_BYTES` of bulk values has them written to the
//!   node's pinned blob file and its log record holds references (entry
//!   format version 2, `codec.rs`); its callback waits for that file's
//!   sync too, reads rebuild the whole entry, apply finds the references
//!   in the shard's `BulkIndex`, and a boot drops a tail of entries whose
//!   bytes a crash lost (`LogStore::drop_unsynced_tail`). The why and the
//!   file lifetimes: `storage/bulk.rs`.
//! - **No holes.** Each append's first index must be the stream's next one;
//!   anything else is refused as a storage error (openraft never asks for
//!   it; a bug that did would otherwise corrupt the log).
//! - **Truncate and purge durable and ordered.** They are records in the
//!   same log queue as appends, so they reach the disk in call order, and
//!   each awaits its completion. A purge first records the purged log id (a
//!   meta record), then drops the entries: after a crash between the two,
//!   the purged id is known and the leftover entries are merely unused.
//!
//! The engine calls here block for microseconds (a pwrite under the writer
//! lock); the waits for fdatasync are `.await`s on the completion, so an
//! openraft task never blocks a runtime thread on the disk.

#![allow(
    clippy::result_large_err,
    reason = "openraft's StorageError is 224 bytes and is what its traits return; boxing it here would only add a conversion at every boundary"
)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, RaftLogId, RaftLogReader, StorageIOError};

use missive_engine::log::{Durable, Log};
use missive_engine::lsm::Lsm;

use crate::app::App;
use crate::ids::{LogId, ShardId, StorageError, Vote};
use crate::storage::bulk::{BulkFiles, BulkIndex, BULK_MIN_BYTES};
use crate::storage::codec::{self, BulkRef, META_COMMITTED, META_PURGED, META_VOTE};
use crate::storage::entry_cache::EntryCache;
use crate::types::{Entry, TypeConfig};

/// One shard's Raft log: a stream of the node's log.
#[derive(Debug)]
pub struct LogStore<A: App> {
    log: Arc<Log>,
    shard: ShardId,
    /// The LSM the shard's state machine writes to: purges stop at what
    /// its flushed tables reflect (see [`LogStore::with_durable_horizon`]).
    horizon: Option<Arc<Lsm>>,
    /// The commit point `save_committed` was last given in this process
    /// (its record is staged, so the log may not show it yet).
    saved_committed: Option<Option<LogId>>,
    /// The newest entries, decoded, shared with the readers (clones).
    cache: Arc<EntryCache<A>>,
    /// Where large entries' bulk values go, and the index apply finds them
    /// by (`storage/bulk.rs`); none: every entry is whole in the log.
    bulk: Option<(Arc<BulkFiles>, Arc<BulkIndex>)>,
}

impl<A: App> Clone for LogStore<A> {
    fn clone(&self) -> Self {
        LogStore {
            log: Arc::clone(&self.log),
            shard: self.shard,
            horizon: self.horizon.clone(),
            saved_committed: self.saved_committed,
            cache: Arc::clone(&self.cache),
            bulk: self.bulk.clone(),
        }
    }
}

fn io_err(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
    e: &(impl std::error::Error + 'static),
) -> StorageError {
    StorageError::IO {
        source: StorageIOError::new(subject, verb, AnyError::new(e)),
    }
}

async fn durable(d: Durable, subject: ErrorSubject<u64>) -> Result<(), StorageError> {
    d.await.map_err(|e| io_err(subject, ErrorVerb::Write, &e))
}

impl<A: App> LogStore<A> {
    /// The log store of `shard` on `log`.
    pub fn new(log: Arc<Log>, shard: ShardId) -> Self {
        LogStore {
            log,
            shard,
            horizon: None,
            saved_committed: None,
            cache: Arc::default(),
            bulk: None,
        }
    }

    /// Writes the bulk values of entries carrying at least
    /// [`BULK_MIN_BYTES`] of them to `files` instead of the log, and tells
    /// apply where through `index` (`storage/bulk.rs`).
    pub fn with_bulk(mut self, files: Arc<BulkFiles>, index: Arc<BulkIndex>) -> Self {
        self.bulk = Some((files, index));
        self
    }

    /// Truncates a tail of entries whose bulk bytes a crash lost: their
    /// log records were written, their blob file was not synced (see
    /// "A torn tail is dropped at boot" in `storage/bulk.rs`). None of
    /// them was acknowledged. Call before openraft reads the log. Returns
    /// how many entries went.
    pub fn drop_unsynced_tail(&self) -> Result<u64, StorageError> {
        let Some((files, _)) = &self.bulk else {
            return Ok(0);
        };
        let stream = self.shard.stream();
        let b = self.log.bounds(stream);
        if b.is_empty() {
            return Ok(0);
        }
        let read_err = |i: u64, e: &dyn std::error::Error| StorageError::IO {
            source: StorageIOError::new(
                ErrorSubject::LogIndex(i.saturating_sub(1)),
                ErrorVerb::Read,
                AnyError::error(e.to_string()),
            ),
        };
        let mut keep = b.last;
        while keep >= b.first {
            let Some(data) = self.log.get(stream, keep).map_err(|e| read_err(keep, &e))? else {
                break;
            };
            let (_, refs) = codec::decode_stored_entry::<TypeConfig<A>>(&data)
                .map_err(|e| read_err(keep, &e))?;
            if refs.iter().all(|r| files.read(&r.blob).is_ok()) {
                break;
            }
            keep -= 1;
        }
        let dropped = b.last - keep;
        if dropped > 0 {
            tracing::warn!(
                shard = %self.shard,
                dropped,
                "dropping log entries whose bulk bytes were never synced (a crash)"
            );
            self.log
                .truncate_after(stream, keep)
                .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, &e))?;
        }
        Ok(dropped)
    }

    /// Moves the bulk values of `e` (if it carries enough) to the bulk
    /// files and encodes it; the values are put back, so `e` stays whole.
    fn encode_for_log(&self, e: &mut Entry<A>) -> Result<(Vec<u8>, Vec<BulkRef>), StorageError> {
        let log_id = *e.get_log_id();
        let werr = |err: &dyn std::error::Error| StorageError::IO {
            source: StorageIOError::new(
                ErrorSubject::Log(log_id),
                ErrorVerb::Write,
                AnyError::error(err.to_string()),
            ),
        };
        let (files, batch) = match (&self.bulk, &mut e.payload) {
            (Some((files, _)), openraft::EntryPayload::Normal(batch))
                if batch.commands.iter().map(A::bulk_bytes).sum::<usize>() >= BULK_MIN_BYTES =>
            {
                (files, batch)
            }
            _ => {
                let bytes = codec::encode_entry(e).map_err(|err| werr(&err))?;
                return Ok((bytes, Vec::new()));
            }
        };
        let mut refs = Vec::new();
        let mut taken = Vec::new();
        let mut result = Ok(());
        for (i, cmd) in batch.commands.iter_mut().enumerate() {
            let Some((prefix, bytes)) = A::take_bulk(cmd) else {
                continue;
            };
            if bytes.is_empty() {
                A::put_bulk(cmd, bytes);
                continue;
            }
            // Raft index i lives at engine index i + 1.
            match files.append(self.shard.stream(), log_id.index + 1, prefix, &bytes) {
                Ok(blob) => refs.push(BulkRef {
                    command: i as u32,
                    blob,
                }),
                Err(err) => result = Err(werr(&err)),
            }
            taken.push((i, bytes));
            if result.is_err() {
                break;
            }
        }
        let encoded = match result {
            Ok(()) => codec::encode_entry_with_bulk(e, &refs).map_err(|err| werr(&err)),
            Err(err) => Err(err),
        };
        if let openraft::EntryPayload::Normal(batch) = &mut e.payload {
            for (i, bytes) in taken {
                if let Some(cmd) = batch.commands.get_mut(i) {
                    A::put_bulk(cmd, bytes);
                }
            }
        }
        Ok((encoded?, refs))
    }

    /// Decodes a log record, reading its bulk values back.
    fn decode_from_log(&self, index: u64, data: &[u8]) -> Result<Entry<A>, StorageError> {
        let rerr = |err: &dyn std::error::Error| StorageError::IO {
            source: StorageIOError::new(
                ErrorSubject::LogIndex(index),
                ErrorVerb::Read,
                AnyError::error(err.to_string()),
            ),
        };
        let (mut e, refs) =
            codec::decode_stored_entry::<TypeConfig<A>>(data).map_err(|err| rerr(&err))?;
        if refs.is_empty() {
            return Ok(e);
        }
        let Some((files, bulk_index)) = &self.bulk else {
            return Err(rerr(&crate::Error::malformed(
                "raft log entry",
                "its bulk bytes are in a blob file, and this log store has none",
            )));
        };
        let openraft::EntryPayload::Normal(batch) = &mut e.payload else {
            return Err(rerr(&crate::Error::malformed(
                "raft log entry",
                "bulk references on an entry without commands",
            )));
        };
        for r in &refs {
            let value = files.read(&r.blob).map_err(|err| rerr(&err))?;
            let Some(cmd) = batch.commands.get_mut(r.command as usize) else {
                return Err(rerr(&crate::Error::malformed(
                    "raft log entry",
                    "a bulk reference to a command the entry lacks",
                )));
            };
            let prefix = A::take_bulk(cmd).map(|(p, _)| p).unwrap_or_default();
            if !value.starts_with(prefix) {
                return Err(rerr(&crate::Error::malformed(
                    "raft log entry",
                    "a bulk value without its command's prefix",
                )));
            }
            A::put_bulk(cmd, value.slice(prefix.len()..));
        }
        bulk_index.set(index, refs);
        Ok(e)
    }

    /// Purges go no further than the entries whose effects `lsm` has
    /// flushed to tables: after a crash the state machine holds only its
    /// flushed state, and openraft re-applies the log from there, so those
    /// entries must still be in the log. (openraft asks to purge up to its
    /// newest snapshot; building one does not flush, so the log keeps what
    /// the memtables hold and the next purge after a flush takes it.)
    pub fn with_durable_horizon(mut self, lsm: Arc<Lsm>) -> Self {
        self.horizon = Some(lsm);
        self
    }

    /// The log id to purge up to instead of `want`: `want` itself, or the
    /// newest entry the LSM's flushed state covers; `None` when nothing
    /// more may go.
    fn purge_bound(&self, want: LogId) -> Result<Option<LogId>, StorageError> {
        let Some(lsm) = &self.horizon else {
            return Ok(Some(want));
        };
        let stream = self.shard.stream();
        let bounds = self.log.bounds(stream);
        if want.index + 1 >= bounds.last {
            // The purge takes every entry the stream holds: openraft is
            // installing a snapshot from the leader (it purges without
            // waiting for the install), the log resumes past it, and
            // keeping the old entries would leave a hole before the next
            // append. The snapshot, not this log, is the state's source.
            // (A snapshot of our own gets here only through a scrub, which
            // purges past openraft's usual tail of
            // `max_in_snapshot_log_to_keep` entries; building that snapshot
            // flushed the memtables, so the tables cover it either way.) This
            // is decided before asking what the LSM flushed, which a node
            // restarted before its first flush cannot answer: it used to
            // keep its whole old log and refuse the leader's next append.
            return Ok(Some(want));
        }
        // The flushed position is the engine index of the newest entry the
        // tables reflect: Raft index position - 1.
        let Some(flushed) = lsm.flushed_positions().get(&stream).copied() else {
            return Ok(None);
        };
        let covered = flushed.saturating_sub(1);
        if want.index <= covered {
            return Ok(Some(want));
        }
        if covered + 1 < bounds.first {
            // Already purged that far.
            return Ok(None);
        }
        Ok(self
            .read_range(covered, covered + 1)?
            .first()
            .map(|e| *e.get_log_id()))
    }

    fn meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        subject: ErrorSubject<u64>,
    ) -> Result<Option<T>, StorageError> {
        self.log
            .meta(self.shard.stream(), key)
            .map(|b| codec::decode(codec_what(key), &b))
            .transpose()
            .map_err(|e| io_err(subject, ErrorVerb::Read, &e))
    }

    /// A meta record's value, encoded.
    fn encode_meta<T: serde::Serialize>(
        key: &[u8],
        v: &T,
        subject: &ErrorSubject<u64>,
    ) -> Result<Vec<u8>, StorageError> {
        codec::encode(codec_what(key), v).map_err(|e| io_err(subject.clone(), ErrorVerb::Write, &e))
    }

    /// Writes a meta record; the returned completion fires once it is
    /// durable.
    fn submit_meta<T: serde::Serialize>(
        &self,
        key: &[u8],
        v: &T,
        subject: &ErrorSubject<u64>,
    ) -> Result<Durable, StorageError> {
        let bytes = Self::encode_meta(key, v, subject)?;
        self.log
            .submit_meta(self.shard.stream(), key, &bytes)
            .map_err(|e| io_err(subject.clone(), ErrorVerb::Write, &e))
    }

    /// Writes a meta record and returns once it is durable.
    async fn set_meta<T: serde::Serialize>(
        &self,
        key: &[u8],
        v: &T,
        subject: ErrorSubject<u64>,
    ) -> Result<(), StorageError> {
        let d = self.submit_meta(key, v, &subject)?;
        durable(d, subject).await
    }

    /// Whether the log holds entries past the commit point it has on
    /// record — entries that may have been committed (and acknowledged)
    /// before a crash without the record saying so, because
    /// `save_committed` does not wait for its sync. openraft re-applies at
    /// boot only up to the recorded point, so until the replica has
    /// confirmed the real commit point with the group, its state may be
    /// older than what it served before the crash. Read once at start.
    pub fn tail_unconfirmed(&self) -> Result<bool, StorageError> {
        let b = self.log.bounds(self.shard.stream());
        if b.is_empty() {
            // Nothing in the log: the state is the LSM's flushed state or
            // a snapshot, both of which only ever hold committed effects.
            return Ok(false);
        }
        let committed: Option<Option<LogId>> = self.meta(META_COMMITTED, ErrorSubject::Store)?;
        // Raft index i lives at engine index i + 1.
        let last = b.last - 1;
        Ok(committed.flatten().is_none_or(|c| c.index < last))
    }

    fn read_range(&self, lo: u64, hi: u64) -> Result<Vec<Entry<A>>, StorageError> {
        if let Some(entries) = self.cache.get(lo, hi) {
            return Ok(entries);
        }
        // Raft index i lives at engine index i + 1.
        let entries = self
            .log
            .read(
                self.shard.stream(),
                lo.saturating_add(1)..hi.saturating_add(1),
            )
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
        entries
            .iter()
            .map(|e| self.decode_from_log(e.index - 1, &e.data))
            .collect()
    }
}

fn codec_what(key: &[u8]) -> &'static str {
    match key {
        META_VOTE => "raft vote",
        META_COMMITTED => "raft committed log id",
        _ => "raft purged log id",
    }
}

fn to_range(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let lo = match range.start_bound() {
        Bound::Included(&x) => x,
        Bound::Excluded(&x) => x.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let hi = match range.end_bound() {
        Bound::Included(&x) => x.saturating_add(1),
        Bound::Excluded(&x) => x,
        Bound::Unbounded => u64::MAX - 2,
    };
    (lo, hi)
}

impl<A: App> RaftLogReader<TypeConfig<A>> for LogStore<A> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<A>>, StorageError> {
        let (lo, hi) = to_range(&range);
        if hi <= lo {
            return Ok(Vec::new());
        }
        self.read_range(lo, hi)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry<A>>, StorageError> {
        // Bound one replication message: 1024 entries (each a batch of up
        // to a few hundred messages).
        let end = end.min(start.saturating_add(1024));
        self.read_range(start, end)
    }
}

impl<A: App> RaftLogStorage<TypeConfig<A>> for LogStore<A> {
    type LogReader = LogStore<A>;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig<A>>, StorageError> {
        let last_purged: Option<LogId> = self.meta(META_PURGED, ErrorSubject::Logs)?;
        let b = self.log.bounds(self.shard.stream());
        let last = if b.is_empty() {
            last_purged
        } else {
            let raft_index = b.last - 1;
            let mut e = self.read_range(raft_index, raft_index + 1)?;
            match e.pop() {
                Some(e) => Some(*e.get_log_id()),
                None => last_purged,
            }
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.set_meta(META_VOTE, vote, ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.meta(META_VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Staged, not written or waited for: see "Committed" at the top of
        // this file.
        let subject = ErrorSubject::Store;
        let bytes = Self::encode_meta(META_COMMITTED, &committed, &subject)?;
        self.log
            .stage_meta(self.shard.stream(), META_COMMITTED, &bytes)
            .map_err(|e| io_err(subject, ErrorVerb::Write, &e))?;
        self.saved_committed = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        if let Some(c) = self.saved_committed {
            return Ok(c);
        }
        Ok(self
            .meta::<Option<LogId>>(META_COMMITTED, ErrorSubject::Store)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig<A>>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<A>> + Send,
        I::IntoIter: Send,
    {
        let mut encoded = Vec::new();
        let mut kept = Vec::new();
        let mut first_index = None;
        let mut moved = Vec::new();
        for mut e in entries {
            first_index.get_or_insert(e.get_log_id().index);
            let (bytes, refs) = self.encode_for_log(&mut e)?;
            encoded.push(bytes);
            moved.push((e.get_log_id().index, refs));
            kept.push(e);
        }
        let stream = self.shard.stream();
        if let Some(first) = first_index {
            // The engine's next index is last + 1, which holds Raft index
            // last: the first entry must be exactly that.
            let b = self.log.bounds(stream);
            let next = b.last;
            if b.is_empty() && first > next {
                // An empty stream may start anywhere: after a snapshot the
                // purged log id (above) says where the log resumes, and
                // the engine's indexes below it simply never existed.
                // Ordered before the append, whose completion covers it.
                let _purged = self
                    .log
                    .submit_purge_upto(stream, first)
                    .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, &e))?;
            } else if first != next {
                return Err(io_err(
                    ErrorSubject::Logs,
                    ErrorVerb::Write,
                    &crate::Error::InvalidArgument(format!(
                        "{}: append at Raft index {first} would leave a hole or overwrite (next is {next})",
                        self.shard
                    )),
                ));
            }
        }
        let appended = self
            .log
            .append(stream, &encoded)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, &e))?;
        if let Some(first) = first_index {
            // An entry's size in memory: its record, and the bulk bytes
            // its record only points to.
            let sizes = encoded.iter().zip(&moved).map(|(bytes, (_, refs))| {
                bytes.len() + refs.iter().map(|r| r.blob.len as usize).sum::<usize>()
            });
            self.cache.appended(first, kept.into_iter().zip(sizes));
        }
        // The newest reference covers the others: an earlier file was
        // finished (synced) before the next one started.
        let newest_blob = moved
            .iter()
            .rev()
            .find_map(|(_, refs)| refs.last())
            .map(|r| r.blob);
        if let Some((files, index)) = &self.bulk {
            // Replaces what an overwritten entry at the same index had.
            for (i, refs) in moved {
                index.set(i, refs);
            }
            let files = Arc::clone(files);
            // Readable now; the callback waits for the log's fdatasync and
            // the blob file's, run side by side.
            tokio::spawn(async move {
                let blob = async {
                    match newest_blob {
                        Some(r) => tokio::task::spawn_blocking(move || files.sync_upto(&r))
                            .await
                            .map_err(std::io::Error::other)?
                            .map_err(std::io::Error::other),
                        None => Ok(()),
                    }
                };
                let log = async { appended.durable.await.map_err(std::io::Error::other) };
                let (l, b) = tokio::join!(log, blob);
                callback.log_io_completed(l.and(b));
            });
            return Ok(());
        }
        // Readable now; the callback waits for the fdatasync.
        tokio::spawn(async move {
            let r = appended.durable.await.map_err(std::io::Error::other);
            callback.log_io_completed(r);
        });
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Drop Raft indexes >= log_id.index: keep engine indexes <= it.
        // The cache first, so no reader gets a dropped entry from it.
        self.cache.truncate_from(log_id.index);
        if let Some((_, index)) = &self.bulk {
            index.truncate_from(log_id.index);
        }
        let d = self
            .log
            .submit_truncate_after(self.shard.stream(), log_id.index)
            .map_err(|e| io_err(ErrorSubject::Log(log_id), ErrorVerb::Delete, &e))?;
        durable(d, ErrorSubject::Log(log_id)).await
    }

    async fn purge(&mut self, want: LogId) -> Result<(), StorageError> {
        let Some(log_id) = self.purge_bound(want)? else {
            return Ok(());
        };
        let bytes = codec::encode("raft purged log id", &log_id)
            .map_err(|e| io_err(ErrorSubject::Log(log_id), ErrorVerb::Write, &e))?;
        let stream = self.shard.stream();
        // Not awaited on its own: the purge below is queued after it, and
        // its completion covers both.
        let _meta = self
            .log
            .submit_meta(stream, META_PURGED, &bytes)
            .map_err(|e| io_err(ErrorSubject::Log(log_id), ErrorVerb::Write, &e))?;
        // Raft index i is engine index i + 1. Entries the stream does not
        // hold are not purged ahead of time: the purged log id alone says
        // they are gone, and the next append (after a snapshot) may start
        // anywhere past it. The purge is queued after the meta record, so
        // its completion covers both.
        self.cache.purge_upto(log_id.index);
        let upto = (log_id.index + 1).min(self.log.bounds(stream).last);
        let d = self
            .log
            .submit_purge_upto(stream, upto)
            .map_err(|e| io_err(ErrorSubject::Log(log_id), ErrorVerb::Delete, &e))?;
        durable(d, ErrorSubject::Log(log_id)).await?;
        if let Some((files, _)) = &self.bulk {
            // Files no log entry can reference any more are unpinned: the
            // tables that reference their live values keep them.
            files
                .release()
                .map_err(|e| io_err(ErrorSubject::Log(log_id), ErrorVerb::Delete, &e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use crate::app::Batch;
    use crate::test_app::{Kv, KvCommand};
    use missive_engine::log::LogOptions;
    use missive_engine::lsm::LsmOptions;
    use openraft::{CommittedLeaderId, EntryPayload};

    struct Node {
        log: Arc<Log>,
        files: Arc<BulkFiles>,
        index: Arc<BulkIndex>,
        store: LogStore<Kv>,
    }

    fn open(dir: &std::path::Path) -> Node {
        let lsm = Arc::new(
            Lsm::open(
                dir.join("lsm"),
                LsmOptions {
                    background: false,
                    ..LsmOptions::default()
                },
            )
            .unwrap(),
        );
        let log = Arc::new(Log::open(dir.join("log"), LogOptions::default()).unwrap());
        let files = Arc::new(BulkFiles::open(lsm, Arc::clone(&log)));
        let index = Arc::new(BulkIndex::default());
        let store = LogStore::new(Arc::clone(&log), ShardId(1))
            .with_bulk(Arc::clone(&files), Arc::clone(&index));
        Node {
            log,
            files,
            index,
            store,
        }
    }

    fn entry(index: u64, value_len: usize) -> Entry<Kv> {
        Entry::<Kv> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Batch::<Kv> {
                stamp_micros: 7,
                commands: vec![
                    KvCommand::Delete { key: vec![9] },
                    KvCommand::Put {
                        key: vec![1, index as u8],
                        value: (0..value_len)
                            .map(|i| (i * 7 + index as usize) as u8)
                            .collect(),
                    },
                ],
            }),
        }
    }

    /// Writes `e` as the log store's append does, without openraft.
    fn append(n: &Node, mut e: Entry<Kv>, sync_blob: bool) -> Vec<BulkRef> {
        let (bytes, refs) = n.store.encode_for_log(&mut e).unwrap();
        n.log.append(ShardId(1).stream(), &[bytes]).unwrap();
        if sync_blob {
            for r in &refs {
                n.files.sync_upto(&r.blob).unwrap();
            }
        }
        refs
    }

    /// A large entry's bulk value goes to a blob file (the log record
    /// holds its reference) and reads back whole, telling apply where it
    /// is; a small entry stays whole in the log.
    #[test]
    fn a_large_entry_keeps_its_bulk_in_a_blob_file_and_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let n = open(dir.path());
        let big = entry(0, 200_000);
        let mut e = big.clone();
        let (bytes, refs) = n.store.encode_for_log(&mut e).unwrap();
        assert_eq!(
            format!("{e:?}"),
            format!("{big:?}"),
            "the entry is whole again"
        );
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].command, 1);
        assert_eq!(refs[0].blob.len, 200_000);
        assert!(bytes.len() < 200, "{} bytes in the log record", bytes.len());
        n.log.append(ShardId(1).stream(), &[bytes]).unwrap();
        append(&n, entry(1, 100), true);
        let back = n.store.read_range(0, 2).unwrap();
        assert_eq!(format!("{:?}", back[0]), format!("{big:?}"));
        assert_eq!(format!("{:?}", back[1]), format!("{:?}", entry(1, 100)));
        assert_eq!(n.index.get(0), refs);
        assert!(n.index.get(1).is_empty());
    }

    /// A crash after a log record was written but before its bulk bytes
    /// were synced: the boot drops that tail (never acknowledged) and
    /// keeps the entries before it.
    #[test]
    fn entries_whose_bulk_bytes_were_never_synced_are_dropped_at_boot() {
        let dir = tempfile::tempdir().unwrap();
        {
            let n = open(dir.path());
            append(&n, entry(0, 150_000), true);
            append(&n, entry(1, 10), true);
            append(&n, entry(2, 150_000), false);
            append(&n, entry(3, 150_000), false);
            assert_eq!(n.log.bounds(ShardId(1).stream()).last, 4);
        }
        let n = open(dir.path());
        assert_eq!(n.store.drop_unsynced_tail().unwrap(), 2);
        assert_eq!(n.log.bounds(ShardId(1).stream()).last, 2);
        let back = n.store.read_range(0, 4).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(format!("{:?}", back[0]), format!("{:?}", entry(0, 150_000)));
        // Nothing more to drop the next time.
        assert_eq!(n.store.drop_unsynced_tail().unwrap(), 0);
    }
}
