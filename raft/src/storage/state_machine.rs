//! openraft's state machine on the node's LSM — with no second WAL.
//!
//! # Why this is safe without a WAL, and what each method promises
//!
//! The Raft log *is* the write-ahead log. `apply` puts a batch of entries
//! into the LSM's memtable as one atomic write that also carries the
//! shard's `Applied` record (last applied log id + membership, see
//! `records`). Nothing is fsynced on apply. The LSM flushes memtables to
//! tables in the background; before each flush its barrier syncs the node's
//! log, so a flushed table never holds an effect whose log entry is not
//! durable on this node.
//!
//! After a crash the LSM holds exactly its flushed state, and the `Applied`
//! record in it names the last entry that state reflects — the two were
//! written in one batch, so they cannot disagree. `applied_state()` at boot
//! therefore reports only what is durable; openraft then re-applies
//! `(applied, committed]` from the log, and the rest once the replica
//! learns the commit point (the log store only stages `committed`, so
//! after a crash the record may lag by the last commits). A restarted
//! replica never serves state older than it had acknowledged:
//! linearizable reads confirm the commit point anyway, and a shard whose
//! log holds entries past the recorded point gets one such confirmation
//! before its first stale read (`read::read_index`). While running,
//! `applied_state()` reports the in-memory position, which is what
//! openraft's contract asks for.
//!
//! Apply is deterministic (see `apply`): the same entries give the same
//! bytes on every replica.
//!
//! # Checkpoints
//!
//! An entry carrying `ClusterCommand::Checkpoint` splits its apply call:
//! the entries before it go to the LSM as one batch, a view of the shard
//! is pinned (`verify`), then the rest are applied. Every replica so pins
//! the state after exactly the entries below the checkpoint, whatever
//! runs of entries openraft hands it.
//!
//! # Snapshots
//!
//! Building one pins an LSM view of the shard's key ranges at the current
//! applied position. It does not flush: openraft then purges the log up to
//! the snapshot, and the log store purges no further than the entries the
//! LSM's flushed tables reflect, so a restart can always re-apply the rest
//! from the log. Installing one replaces the
//! shard's ranges — every key in them deleted, every key of the snapshot
//! put, the `Applied` record set — as one batch, then flushes: a crash
//! before the flush's manifest edit leaves the old state whole, after it
//! the new state whole.

#![allow(
    clippy::result_large_err,
    reason = "openraft's StorageError is 224 bytes and is what its traits return; boxing it here would only add a conversion at every boundary"
)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StorageIOError,
};

use missive_engine::lsm::{Direction, Lsm, WriteBatch};

use crate::app::{App, BatchResponse, ClusterCommand};
use crate::cluster::cluster_map::ClusterMap;
use crate::cluster::slots::slot_key_ranges;
use crate::cluster::slots::SlotMap;
use crate::cluster::split::{self, Owned, Ownership};
use crate::error::{Error, Result};
use crate::ids::{ShardId, SnapshotMeta, StorageError, StoredMembership};
use crate::storage::bulk::{BulkFiles, BulkIndex};
use crate::storage::codec;
use crate::storage::meta::{
    applied_key, cluster_map_key, frozen_key, owner_key, owner_range, Applied, Frozen, Owner,
};
use crate::storage::record_cache::{self, RecordCache};
use crate::storage::record_source::Records;
use crate::storage::snapshot::{ShardSnapshot, SnapshotSource, View};
use crate::types::{Entry, TypeConfig};

fn sm_err(verb: ErrorVerb, e: &(impl std::error::Error + 'static)) -> StorageError {
    StorageError::IO {
        source: StorageIOError::new(ErrorSubject::StateMachine, verb, AnyError::new(e)),
    }
}

fn snap_err(verb: ErrorVerb, e: &(impl std::error::Error + 'static)) -> StorageError {
    StorageError::IO {
        source: StorageIOError::new(ErrorSubject::Snapshot(None), verb, AnyError::new(e)),
    }
}

/// What apply tells the rest of the runtime, after its batch is in the
/// LSM (the application hears through [`App::applied`]).
#[derive(Debug)]
pub struct ApplyHooks {
    /// Bumped when a snapshot replaced a shard's data: every listener
    /// re-reads, since the notices of what it brought were never sent.
    pub installed: tokio::sync::watch::Sender<u64>,
    /// The newest cluster map version the metadata group applied here
    /// (see `directory`).
    pub directory: tokio::sync::watch::Sender<u64>,
    /// Apply's record reads answered by the shards' record caches.
    pub record_hits: AtomicU64,
    /// Apply's record reads that went to the LSM.
    pub record_misses: AtomicU64,
    /// How long each apply call took (a run of committed entries: the
    /// app's rules, the batch into the LSM, the effects handed on).
    pub apply_latency: missive_engine::latency::Recorder,
    /// The views pinned at verification checkpoints (see `verify`).
    pub checkpoints: crate::verify::Checkpoints,
    /// Bumped when a shard applied a split's cut here: the node opens the
    /// child groups whose owner records it now holds (`cluster::split`).
    pub cuts: tokio::sync::watch::Sender<u64>,
    /// The shards frozen on this node to be merged (`cluster::merge`), and
    /// a counter bumped at each freeze applied: a parent's merge waits on
    /// it for its child's freeze.
    frozen: Mutex<std::collections::BTreeMap<ShardId, Frozen>>,
    freezes: tokio::sync::watch::Sender<u64>,
}

impl ApplyHooks {
    /// New hooks.
    pub fn new() -> Self {
        ApplyHooks {
            installed: tokio::sync::watch::channel(0).0,
            directory: tokio::sync::watch::channel(0).0,
            record_hits: AtomicU64::new(0),
            record_misses: AtomicU64::new(0),
            apply_latency: missive_engine::latency::Recorder::default(),
            checkpoints: crate::verify::Checkpoints::default(),
            cuts: tokio::sync::watch::channel(0).0,
            frozen: Mutex::default(),
            freezes: tokio::sync::watch::channel(0).0,
        }
    }

    /// `shard` froze here (applied, installed or found at open).
    pub(crate) fn note_frozen(&self, shard: ShardId, f: Frozen) {
        self.frozen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(shard, f);
        self.freezes.send_modify(|n| *n += 1);
    }

    /// The freeze this node's copy of `shard` applied, if any.
    pub(crate) fn frozen_at(&self, shard: ShardId) -> Option<Frozen> {
        self.frozen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&shard)
            .copied()
    }

    /// Waits until this node's copy of `child` has applied its freeze at
    /// `index` (see `cluster::merge`: a merge takes the child's state as of
    /// its freeze, the same on every replica).
    pub(crate) async fn wait_frozen(&self, parent: ShardId, child: ShardId, index: u64) {
        let mut changed = self.freezes.subscribe();
        let mut waited = 0u64;
        loop {
            let at = self
                .frozen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&child)
                .copied();
            if at.is_some_and(|f| f.index >= index) {
                return;
            }
            let wait = std::time::Duration::from_secs(10);
            if tokio::time::timeout(wait, changed.changed()).await.is_err() {
                waited += 10;
                tracing::warn!(%parent, %child, index, waited_s = waited,
                    "merge waits for this replica of the merged shard to reach its freeze");
            }
        }
    }
}

impl Default for ApplyHooks {
    fn default() -> Self {
        Self::new()
    }
}

/// One shard's state machine.
pub struct StateMachine<A: App> {
    app: Arc<A>,
    shard: ShardId,
    hooks: Arc<ApplyHooks>,
    lsm: Arc<Lsm>,
    /// The slots this data shard owns (`cluster::split`), shared with the
    /// node's read path.
    owned: Arc<Ownership>,
    /// The key ranges of those slots (the metadata group: the map's).
    ranges: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    applied: Applied,
    /// Records apply reads, as stored (`record_cache`'s essay).
    records: RecordCache,
    /// Set once a snapshot was built or installed since open.
    current: Arc<Mutex<Option<SnapshotMeta>>>,
    snapshot_dir: PathBuf,
    /// Unique names for received-snapshot files.
    received: Arc<AtomicU64>,
    /// The node's bulk files and where this shard's entries put their
    /// bulk values (`storage/bulk.rs`); none: every value is applied
    /// inline.
    bulk: Option<(Arc<BulkFiles>, Arc<BulkIndex>)>,
}

impl<A: App> std::fmt::Debug for StateMachine<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("shard", &self.shard)
            .field("applied", &self.applied)
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}

impl<A: App> StateMachine<A> {
    /// Opens shard `shard`'s state machine on `lsm`: its applied state is
    /// what the LSM holds (its flushed state, right after the LSM opened).
    /// Received snapshots are staged in `snapshot_dir`.
    pub fn open(
        app: Arc<A>,
        lsm: Arc<Lsm>,
        slots: &SlotMap,
        shard: ShardId,
        snapshot_dir: PathBuf,
        hooks: Arc<ApplyHooks>,
    ) -> Result<Self> {
        let owned = Arc::new(Ownership::default());
        Self::open_owned(app, lsm, slots, shard, snapshot_dir, hooks, owned)
    }

    /// [`StateMachine::open`], sharing what the shard owns through
    /// `ownership` (the node's group keeps it across a wipe's reopen).
    pub(crate) fn open_owned(
        app: Arc<A>,
        lsm: Arc<Lsm>,
        slots: &SlotMap,
        shard: ShardId,
        snapshot_dir: PathBuf,
        hooks: Arc<ApplyHooks>,
        ownership: Arc<Ownership>,
    ) -> Result<Self> {
        std::fs::create_dir_all(&snapshot_dir).map_err(|e| {
            Error::Storage(missive_engine::Error::Io {
                op: "create",
                path: snapshot_dir.clone(),
                source: Arc::new(e),
            })
        })?;
        let applied = match lsm.get(&applied_key(shard))? {
            Some(v) => codec::decode("applied state", &v)?,
            None => Applied {
                last_applied: None,
                membership: StoredMembership::default(),
            },
        };
        let owned = if shard.is_directory() {
            Owned::default()
        } else {
            match split::owner_of(|k| Ok(lsm.get(k)?), shard)? {
                Some(o) => Owned {
                    slots: o.slots,
                    ..Owned::default()
                },
                None => Owned {
                    slots: slots.slots(shard).unwrap_or(0..0),
                    ..Owned::default()
                },
            }
        };
        let mut owned = owned;
        if !shard.is_directory() {
            if let Some(v) = lsm.get(&frozen_key(shard))? {
                let f: Frozen = codec::decode("freeze record", &v)?;
                hooks.note_frozen(shard, f);
                owned.frozen = Some(f);
            }
        }
        let ranges = if shard.is_directory() {
            slots.key_ranges(shard)
        } else {
            slot_key_ranges(&owned.slots)
        };
        Ok(StateMachine {
            app,
            shard,
            hooks,
            owned: {
                ownership.set(owned);
                ownership
            },
            ranges,
            lsm,
            applied,
            records: RecordCache::new(record_cache::CACHE_BYTES),
            current: Arc::new(Mutex::new(None)),
            snapshot_dir,
            received: Arc::new(AtomicU64::new(0)),
            bulk: None,
        })
    }

    /// Applies the bulk values the shard's log store moved to the node's
    /// bulk files as references to them (`storage/bulk.rs`).
    pub(crate) fn with_bulk(mut self, files: Arc<BulkFiles>, index: Arc<BulkIndex>) -> Self {
        self.bulk = Some((files, index));
        self
    }

    /// The key ranges a snapshot of this shard carries: a data shard's
    /// owner record first (an install learns the slots from it before the
    /// data), then its data.
    fn snapshot_ranges(&self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        if self.shard.is_directory() {
            return self.ranges.clone();
        }
        let mut r = vec![owner_range(self.shard)];
        r.extend(self.ranges.iter().cloned());
        r
    }

    /// Takes `owned` as what the shard owns (a cut, or an install).
    fn set_owned(&mut self, owned: Owned) {
        self.ranges = slot_key_ranges(&owned.slots);
        self.owned.set(owned);
    }

    fn meta_now(&self) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: self.applied.last_applied,
            last_membership: self.applied.membership.clone(),
            snapshot_id: snapshot_id(self.shard, &self.applied),
        }
    }

    /// Replaces the shard's ranges with the snapshot's contents, durably.
    fn install(&mut self, meta: &SnapshotMeta, data: &ShardSnapshot) -> Result<()> {
        // Whatever happens below, the shard's records are no longer what
        // the cache saw.
        self.records.clear();
        let mut batch = WriteBatch::new();
        delete_ranges(&self.lsm, &self.snapshot_ranges(), &mut batch)?;
        let mut src = SnapshotSource::new(data)?;
        // A snapshot of a data shard opens with its owner record when the
        // shard has one (a split changed its slots): its data lies in those
        // slots, which may not be the ones this replica thought it owned.
        let mut owner = None;
        let mut frozen = None;
        while let Some(chunk) = src.next_chunk()? {
            for (k, v) in chunk {
                if !self.shard.is_directory() && k == frozen_key(self.shard) {
                    frozen = Some(codec::decode::<Frozen>("freeze record", &v)?);
                    batch.put(&k, &v);
                    continue;
                }
                if !self.shard.is_directory() && k == owner_key(self.shard) && owner.is_none() {
                    let o: Owner = codec::decode("owner record", &v)?;
                    let ranges = slot_key_ranges(&o.slots);
                    delete_ranges(&self.lsm, &ranges, &mut batch)?;
                    self.ranges = ranges;
                    owner = Some(o);
                    batch.put(&k, &v);
                    continue;
                }
                if !self.in_ranges(&k) {
                    return Err(Error::malformed(
                        "snapshot",
                        format!("key outside {}'s ranges", self.shard),
                    ));
                }
                batch.put(&k, &v);
            }
        }
        let applied = Applied {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        batch.put(
            applied_key(self.shard),
            codec::encode("applied state", &applied)?,
        );
        let position = meta.last_log_id.map(|l| (self.shard.stream(), l.index + 1));
        self.lsm.apply(&batch, position)?;
        self.lsm.flush()?;
        self.applied = applied;
        if !self.shard.is_directory() {
            let slots = owner.map_or_else(|| self.owned.get().slots, |o| o.slots);
            if let Some(f) = frozen {
                self.hooks.note_frozen(self.shard, f);
            }
            self.set_owned(Owned {
                slots,
                frozen,
                ..Owned::default()
            });
        }
        if let ShardSnapshot::Received(p) = data {
            let _ = std::fs::remove_file(p);
        }
        Ok(())
    }

    fn in_ranges(&self, k: &[u8]) -> bool {
        in_ranges(&self.ranges, k)
    }

    /// Applies `entries` and writes their effects and the `Applied` record
    /// to the LSM as one batch.
    fn apply_run(
        &mut self,
        entries: Vec<Entry<A>>,
        run: &mut Run<A>,
    ) -> std::result::Result<(), StorageError> {
        let mut applied = self.applied.clone();
        let owned = self.owned.get();
        // Set by a cut: every later command of this run (the rest of the
        // cut's entry: a cut is applied alone) is refused as misrouted.
        let mut cut: Option<Owned> = None;
        let mut records = Records::new(&self.lsm, &mut self.records, &self.ranges);
        for e in entries {
            applied.last_applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => run.out.push(BatchResponse::default()),
                EntryPayload::Normal(batch) => {
                    let mut outcomes = Vec::with_capacity(batch.commands.len());
                    let bulk = match &self.bulk {
                        Some((_, index)) => index.get(e.log_id.index),
                        None => Vec::new(),
                    };
                    for (i, cmd) in batch.commands.iter().enumerate() {
                        records.set_bulk_ref(
                            bulk.iter()
                                .find(|b| b.command as usize == i)
                                .map(|b| b.blob),
                        );
                        if !self.shard.is_directory() {
                            let checkpoint =
                                matches!(A::as_cluster(cmd), Some(ClusterCommand::Checkpoint));
                            if owned.frozen.is_some() && !checkpoint {
                                outcomes.push(A::misrouted(format!(
                                    "{} is merged into another shard; route again",
                                    self.shard
                                )));
                                continue;
                            }
                            if cut.is_some() {
                                outcomes.push(A::misrouted(format!(
                                    "{} split in this entry; route again",
                                    self.shard
                                )));
                                continue;
                            }
                            if A::as_cluster(cmd).is_none()
                                && !self
                                    .app
                                    .slots_of(cmd)
                                    .iter()
                                    .all(|s| owned.slots.contains(&s.0))
                            {
                                outcomes.push(A::misrouted(format!(
                                    "{} does not own this command's slots (it split); route again",
                                    self.shard
                                )));
                                continue;
                            }
                        }
                        let o = match A::as_cluster(cmd) {
                            Some(ClusterCommand::Split { at, child })
                                if !self.shard.is_directory() =>
                            {
                                let (o, after) = split::apply_cut::<A>(
                                    self.shard,
                                    &owned,
                                    &applied.membership,
                                    e.log_id.index,
                                    at,
                                    child,
                                    &mut records,
                                )
                                .map_err(|err| sm_err(ErrorVerb::Write, &err))?;
                                cut = after;
                                o
                            }
                            Some(ClusterCommand::Freeze { into }) if !self.shard.is_directory() => {
                                let (o, after) = crate::cluster::merge::apply_freeze::<A>(
                                    self.shard,
                                    &owned,
                                    &applied.membership,
                                    e.log_id.index,
                                    into,
                                    &mut records,
                                )
                                .map_err(|err| sm_err(ErrorVerb::Write, &err))?;
                                cut = after;
                                o
                            }
                            Some(ClusterCommand::Merge {
                                child,
                                frozen_at,
                                start,
                                end,
                            }) if !self.shard.is_directory() => {
                                let (o, after) = crate::cluster::merge::apply_merge::<A>(
                                    self.shard,
                                    &owned,
                                    &self.hooks,
                                    e.log_id.index,
                                    (child, frozen_at, start..end),
                                    &mut records,
                                )
                                .map_err(|err| sm_err(ErrorVerb::Write, &err))?;
                                cut = after;
                                o
                            }
                            Some(ClusterCommand::Restore { pairs })
                                if !self.shard.is_directory() =>
                            {
                                run.restored = true;
                                restore::<A>(&self.ranges, self.shard, &mut records, pairs)
                            }
                            Some(ClusterCommand::Checkpoint) if !self.shard.is_directory() => {
                                A::cluster_outcome(Ok(e.log_id.index))
                            }
                            _ => self::run(
                                &*self.app,
                                self.shard,
                                &mut records,
                                batch.stamp_micros,
                                cmd,
                                &mut run.effects,
                                &mut run.newest_map,
                            )
                            .map_err(|err| sm_err(ErrorVerb::Write, &err))?,
                        };
                        outcomes.push(o);
                    }
                    run.out.push(BatchResponse { outcomes });
                }
                EntryPayload::Membership(m) => {
                    applied.membership = StoredMembership::new(Some(e.log_id), m);
                    run.out.push(BatchResponse::default());
                }
            }
        }
        let Some(last) = applied.last_applied else {
            return Ok(());
        };
        records.set_bulk_ref(None);
        records.put(
            applied_key(self.shard),
            codec::encode("applied state", &applied).map_err(|e| sm_err(ErrorVerb::Write, &e))?,
        );
        if let Some((files, index)) = &self.bulk {
            // A quorum of other replicas may have committed these entries
            // before this one synced its copy of their bytes.
            for r in records.blob_refs() {
                files
                    .sync_upto(r)
                    .map_err(|e| sm_err(ErrorVerb::Write, &e))?;
            }
            // Read before the batch: apply found what it needed.
            index.applied_upto(last.index);
        }
        self.lsm
            .apply(
                &records.batch(),
                Some((self.shard.stream(), last.index + 1)),
            )
            .map_err(|e| sm_err(ErrorVerb::Write, &e))?;
        records.written();
        if let Some(after) = cut {
            // The cut (or freeze, or merge) is in the LSM: from here on
            // this shard owns what `after` says; the node opens or closes
            // groups accordingly.
            self.records.clear();
            if let Some(f) = after.frozen.filter(|_| owned.frozen.is_none()) {
                self.hooks.note_frozen(self.shard, f);
            }
            self.set_owned(after);
            self.hooks.cuts.send_modify(|n| *n += 1);
        }
        let (hits, misses) = self.records.take_counts();
        self.hooks.record_hits.fetch_add(hits, Ordering::Relaxed);
        self.hooks
            .record_misses
            .fetch_add(misses, Ordering::Relaxed);
        self.applied = applied;
        Ok(())
    }
}

/// What one `apply` call gathers across its runs of entries.
struct Run<A: App> {
    out: Vec<BatchResponse<A>>,
    effects: A::Effects,
    newest_map: Option<u64>,
    restored: bool,
}

impl<A: App> Default for Run<A> {
    fn default() -> Self {
        Run {
            out: Vec::new(),
            effects: A::Effects::default(),
            newest_map: None,
            restored: false,
        }
    }
}

/// The (child, freeze index) of the first [`ClusterCommand::Merge`] `e`
/// carries.
fn holds_merge<A: App>(e: &Entry<A>) -> Option<(ShardId, u64)> {
    match &e.payload {
        EntryPayload::Normal(b) => b.commands.iter().find_map(|c| match A::as_cluster(c) {
            Some(ClusterCommand::Merge {
                child, frozen_at, ..
            }) => Some((child, frozen_at)),
            _ => None,
        }),
        _ => None,
    }
}

/// Whether `e` carries a [`ClusterCommand::Split`].
fn holds_cut<A: App>(e: &Entry<A>) -> bool {
    match &e.payload {
        EntryPayload::Normal(b) => b.commands.iter().any(split::is_cut::<A>),
        _ => false,
    }
}

/// Whether `e` carries a [`ClusterCommand::Checkpoint`].
fn holds_checkpoint<A: App>(e: &Entry<A>) -> bool {
    match &e.payload {
        EntryPayload::Normal(b) => b
            .commands
            .iter()
            .any(|c| matches!(A::as_cluster(c), Some(ClusterCommand::Checkpoint))),
        _ => false,
    }
}

/// Whether `k` lies in one of `ranges` (`[lo, hi)`, `None`: no end).
/// Whether `k` lies in one of `ranges` (`[lo, hi)`, `None`: to the end).
pub(crate) fn in_ranges(ranges: &[(Vec<u8>, Option<Vec<u8>>)], k: &[u8]) -> bool {
    ranges
        .iter()
        .any(|(lo, hi)| k >= lo.as_slice() && hi.as_ref().is_none_or(|h| k < h.as_slice()))
}

/// Runs [`ClusterCommand::Restore`] on a data shard: every pair put as it
/// is, or — if any key lies outside the shard's ranges — nothing, refused
/// the same on every replica. Answers the count put as a cluster outcome.
/// Adds a delete of every key the LSM holds in `ranges` to `batch`;
/// returns how many. (A shard's ranges replaced by a snapshot install, or
/// wiped from a node that no longer holds a replica: `cluster::wipe`.)
pub(crate) fn delete_ranges(
    lsm: &Lsm,
    ranges: &[(Vec<u8>, Option<Vec<u8>>)],
    batch: &mut WriteBatch,
) -> Result<u64> {
    const PAGE: usize = 4096;
    let mut n = 0u64;
    for (lo, hi) in ranges {
        let mut start = lo.clone();
        loop {
            let page = lsm.scan(&start, hi.as_deref(), Direction::Forward, PAGE)?;
            let done = page.len() < PAGE;
            for (k, _) in &page {
                batch.delete(k);
                n += 1;
            }
            match page.last() {
                Some((k, _)) if !done => {
                    start = k.clone();
                    start.push(0);
                }
                _ => break,
            }
        }
    }
    Ok(n)
}

fn restore<A: App>(
    ranges: &[(Vec<u8>, Option<Vec<u8>>)],
    shard: ShardId,
    records: &mut Records<'_>,
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
) -> A::Outcome {
    if let Some((k, _)) = pairs.iter().find(|(k, _)| !in_ranges(ranges, k)) {
        return A::cluster_outcome(Err(format!(
            "a restored key ({} bytes, tag {:#04x}) lies outside {shard}'s ranges",
            k.len(),
            k.first().copied().unwrap_or(0)
        )));
    }
    let n = pairs.len() as u64;
    for (k, v) in pairs {
        records.put(k, v);
    }
    A::cluster_outcome(Ok(n))
}

fn snapshot_id(shard: ShardId, a: &Applied) -> String {
    match a.last_applied {
        Some(l) => format!(
            "{}-{}-{}-{}",
            shard.0, l.leader_id.term, l.leader_id.node_id, l.index
        ),
        None => format!("{}-empty", shard.0),
    }
}

/// Builds a snapshot: a view pinned when the builder was made.
pub struct Builder<A> {
    shard: ShardId,
    view: Arc<View>,
    applied: Applied,
    current: Arc<Mutex<Option<SnapshotMeta>>>,
    app: std::marker::PhantomData<fn() -> A>,
}

impl<A: App> RaftSnapshotBuilder<TypeConfig<A>> for Builder<A> {
    async fn build_snapshot(
        &mut self,
    ) -> std::result::Result<Snapshot<TypeConfig<A>>, StorageError> {
        // No flush: openraft purges the log up to the snapshot next, and
        // the log store stops that purge at what the LSM has flushed (see
        // `LogStore::with_durable_horizon`). Flushing here made every
        // shard's snapshot rotate the node-wide memtable: a storm of small
        // flushes and compactions each time the shards crossed their
        // snapshot interval together.
        let meta = SnapshotMeta {
            last_log_id: self.applied.last_applied,
            last_membership: self.applied.membership.clone(),
            snapshot_id: snapshot_id(self.shard, &self.applied),
        };
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(meta.clone());
        Ok(Snapshot {
            meta,
            snapshot: Box::new(ShardSnapshot::View(Arc::clone(&self.view))),
        })
    }
}

impl<A: App> RaftStateMachine<TypeConfig<A>> for StateMachine<A> {
    type SnapshotBuilder = Builder<A>;

    async fn applied_state(
        &mut self,
    ) -> std::result::Result<(Option<crate::types::LogId>, StoredMembership), StorageError> {
        Ok((self.applied.last_applied, self.applied.membership.clone()))
    }

    async fn apply<I>(
        &mut self,
        entries: I,
    ) -> std::result::Result<Vec<BatchResponse<A>>, StorageError>
    where
        I: IntoIterator<Item = Entry<A>> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let started = std::time::Instant::now();
        let mut run = Run::<A>::default();
        // Entries up to a checkpoint go to the LSM as one batch, then the
        // checkpoint's view is pinned: the same state on every replica,
        // however each batches its apply calls (see `verify`).
        let mut pending = Vec::new();
        for e in entries {
            if let Some((child, at)) = holds_merge::<A>(&e).filter(|_| !self.shard.is_directory()) {
                // The merge takes the child's state at its freeze: wait
                // until this replica's copy of the child got there.
                if !pending.is_empty() {
                    self.apply_run(std::mem::take(&mut pending), &mut run)?;
                }
                self.hooks.wait_frozen(self.shard, child, at).await;
                self.apply_run(vec![e], &mut run)?;
                continue;
            }
            if !self.shard.is_directory() && holds_cut::<A>(&e) {
                // A cut is applied alone: the state it cuts, and what the
                // commands after it in its entry are told, are then the
                // same on every replica, however openraft groups entries.
                if !pending.is_empty() {
                    self.apply_run(std::mem::take(&mut pending), &mut run)?;
                }
                self.apply_run(vec![e], &mut run)?;
                continue;
            }
            if !self.shard.is_directory() && holds_checkpoint::<A>(&e) {
                if !pending.is_empty() {
                    self.apply_run(std::mem::take(&mut pending), &mut run)?;
                }
                let view = View::new(Arc::clone(&self.lsm), self.snapshot_ranges());
                self.hooks
                    .checkpoints
                    .pinned(self.shard, e.log_id.index, view);
            }
            pending.push(e);
        }
        if !pending.is_empty() {
            self.apply_run(pending, &mut run)?;
        }
        self.app.applied(self.shard, run.effects);
        if run.restored {
            // A backup's records arrived without the notices apply's rules
            // leave: listeners re-read, as after a snapshot install.
            self.app.installed(self.shard);
            self.hooks.installed.send_modify(|n| *n += 1);
        }
        self.hooks.apply_latency.record(started.elapsed());
        if let Some(v) = run.newest_map {
            self.hooks.directory.send_if_modified(|cur| {
                let newer = v > *cur;
                *cur = (*cur).max(v);
                newer
            });
        }
        Ok(run.out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        Builder {
            shard: self.shard,
            view: Arc::new(View::new(Arc::clone(&self.lsm), self.snapshot_ranges())),
            applied: self.applied.clone(),
            current: Arc::clone(&self.current),
            app: std::marker::PhantomData,
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> std::result::Result<Box<ShardSnapshot>, StorageError> {
        let n = self.received.fetch_add(1, Ordering::Relaxed);
        let path = self.snapshot_dir.join(format!(
            "recv-{}-{}-{n}.snap",
            self.shard.0,
            std::process::id()
        ));
        crate::storage::snapshot::SnapshotWriter::create(&path)
            .and_then(crate::storage::snapshot::SnapshotWriter::finish)
            .map_err(|e| snap_err(ErrorVerb::Write, &e))?;
        Ok(Box::new(ShardSnapshot::Received(path)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<ShardSnapshot>,
    ) -> std::result::Result<(), StorageError> {
        self.install(meta, &snapshot)
            .map_err(|e| snap_err(ErrorVerb::Write, &e))?;
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(meta.clone());
        // The shard's data was replaced wholesale: whatever listened to
        // apply's notices may have missed changes.
        self.app.installed(self.shard);
        self.hooks.installed.send_modify(|n| *n += 1);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> std::result::Result<Option<Snapshot<TypeConfig<A>>>, StorageError> {
        if self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_none()
        {
            return Ok(None);
        }
        // The state now is a snapshot too (everything applied is committed),
        // and sending it spares the follower the entries since the last build.
        Ok(Some(Snapshot {
            meta: self.meta_now(),
            snapshot: Box::new(ShardSnapshot::View(Arc::new(View::new(
                Arc::clone(&self.lsm),
                self.snapshot_ranges(),
            )))),
        }))
    }
}

/// Runs one command on `shard`: the metadata group runs the cluster map's
/// commands, a data shard the application's; either refuses the other's
/// (deterministically, on every replica). `newest_map` keeps the newest
/// map version a cluster command produced.
fn run<A: App>(
    app: &A,
    shard: ShardId,
    records: &mut Records<'_>,
    stamp_micros: u64,
    cmd: &A::Command,
    effects: &mut A::Effects,
    newest_map: &mut Option<u64>,
) -> Result<A::Outcome> {
    match (A::as_cluster(cmd), shard.is_directory()) {
        (Some(c), true) => {
            let key = cluster_map_key();
            let mut map: ClusterMap = match records.get(&key)? {
                Some(v) => crate::cluster::cluster_map::decode(&v)?,
                None => ClusterMap::default(),
            };
            let before = map.version;
            let out = crate::cluster::cluster_map::execute(&mut map, &c);
            if map.version != before {
                records.put(key, crate::cluster::cluster_map::encode(&map)?);
            }
            if let Ok(v) = out {
                *newest_map = Some(newest_map.map_or(v, |n| n.max(v)));
            }
            Ok(A::cluster_outcome(out))
        }
        (None, false) => app.apply(shard, records, stamp_micros, cmd, effects),
        (Some(_), false) => Ok(A::misrouted(format!(
            "a cluster map command cannot run on {shard}"
        ))),
        (None, true) => Ok(A::misrouted(format!(
            "an application command cannot run on {shard}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use std::collections::BTreeMap;

    use super::*;
    use crate::test_app::{Kv, KvCommand, KvOutcome};

    #[test]
    fn each_group_runs_only_its_own_commands() {
        let committed = BTreeMap::new();
        let mut rec = Records::over(&committed);
        let mut newest = None;
        let put = KvCommand::Put {
            key: vec![0x10, 0, 1],
            value: vec![1],
        };
        let forget = KvCommand::Cluster(ClusterCommand::ForgetNode { node: 9 });
        let register = KvCommand::Cluster(ClusterCommand::RegisterNode {
            node: 1,
            addr: "127.0.0.1:1".into(),
            slots: SlotMap::even(2).unwrap(),
        });
        let mut run = |shard, cmd: &KvCommand| {
            run(&Kv, shard, &mut rec, 1, cmd, &mut (), &mut newest).unwrap()
        };
        // A data shard runs the application's command, refuses the map's.
        assert_eq!(run(ShardId(1), &put), KvOutcome::Done);
        assert!(matches!(run(ShardId(1), &forget), KvOutcome::Refused(_)));
        // The metadata group the reverse; the map's command changes it.
        assert!(matches!(
            run(ShardId::DIRECTORY, &put),
            KvOutcome::Refused(_)
        ));
        assert_eq!(
            run(ShardId::DIRECTORY, &register),
            KvOutcome::Cluster(Ok(1))
        );
        assert_eq!(newest, Some(1));
        let writes = rec.into_writes();
        assert_eq!(
            writes.keys().cloned().collect::<Vec<_>>(),
            vec![vec![0x10, 0, 1], cluster_map_key()],
            "the put and the map, nothing from the refused commands"
        );
    }

    #[test]
    fn a_restore_puts_its_pairs_only_if_every_key_is_the_shards() {
        use missive_engine::keys::{message_key, ConversationId, Timestamp};
        let slots = SlotMap::even(2).unwrap();
        let ranges = slots.key_ranges(ShardId(1));
        let key_on = |shard| {
            (0..)
                .map(ConversationId)
                .find(|c| slots.shard_of(*c) == shard)
                .map(|c| message_key(c, Timestamp(5)).to_vec())
                .unwrap()
        };
        let (mine, theirs) = (key_on(ShardId(1)), key_on(ShardId(2)));
        let committed = BTreeMap::new();
        let mut rec = Records::over(&committed);
        let mixed = vec![(mine.clone(), vec![1]), (theirs, vec![2])];
        let out = restore::<Kv>(&ranges, ShardId(1), &mut rec, mixed);
        assert!(matches!(out, KvOutcome::Cluster(Err(_))), "{out:?}");
        assert!(
            rec.into_writes().is_empty(),
            "a refused restore writes nothing"
        );
        let mut rec = Records::over(&committed);
        let out = restore::<Kv>(&ranges, ShardId(1), &mut rec, vec![(mine.clone(), vec![1])]);
        assert_eq!(out, KvOutcome::Cluster(Ok(1)));
        assert_eq!(rec.into_writes().get(&mine), Some(&Some(vec![1])));
    }
}
