//! Online backup and restore of the data shards.
//!
//! # A consistent copy of a shard without stopping it
//!
//! A shard's state is its key ranges in the node's LSM plus its `Applied`
//! record (the last log id that state reflects), and apply writes both in
//! one atomic LSM batch (see `state_machine`). So any LSM snapshot holds a
//! shard's state *at one applied position*, whatever apply does next: a
//! backup pins one, reads the `Applied` record through it, and streams the
//! ranges through it. Nothing is stopped, nothing is flushed, and writes go
//! on; the pinned view only keeps compaction from dropping the versions it
//! sees until the backup ends.
//!
//! The view is pinned on a voter after a linearizable read barrier
//! (`read_index`): the replica has applied everything committed when the
//! backup of the shard began, so every write acknowledged before then is
//! in it. Writes acknowledged while the backup runs may or may not be —
//! each shard's point in time is its own applied position, named in the
//! answer.
//!
//! ```text
//!  backup_open(shard) ─► read path (linearizable, local or at the leader):
//!      ReadOp::BackupOpen ─► pin a View, read Applied through it,
//!      register it under a token ─► (token, applied, serving node)
//!  next_chunk() ─► ReadOp::BackupChunk { token, cursor } on that node
//!      ─► ≤ ~1 MiB of pairs and the cursor after them (idempotent: the
//!      caller holds the cursor, so a retried call answers the same)
//! ```
//!
//! # Phases: a cut across shards
//!
//! Each shard's copy is one point in time, but the shards' points differ,
//! and an application may derive records on one shard from writes on
//! another, later and asynchronously (chat: an inbox on the user's shard
//! from a conversation's outbox). [`App::backup_phases`] orders the
//! keyspaces: every shard's phase 0 is pinned before any shard's phase 1
//! is opened, so each later phase reflects at least everything the earlier
//! phases had applied — a source record counted as handed on in the first
//! copy is in the derived records of the second. The other direction (a
//! derived record whose source was written between the phases) is the
//! application's to repair after a restore (chat: `missive_chat::restore`).
//!
//! A pinned view lives until its stream is dropped at the serving node's
//! end — an idle one expires after [`SESSION_IDLE`] — and a node serves at
//! most [`MAX_SESSIONS`] at once.
//!
//! # Restore
//!
//! [`Node::restore`] puts a backup's pairs into a cluster through Raft, as
//! [`ClusterCommand::Restore`] commands of at most about [`RESTORE_BYTES`]
//! each: every replica applies them, so the restored data is replicated
//! like any write. Each pair goes to the shard that owns its *slot* in this
//! cluster's slot map (`slots::slot_of_key`), so a backup restores into a
//! cluster of any node count and any shard count. Puts are idempotent: a
//! restore that stopped part-way is run again from the start.
//! [`Node::shard_is_empty`] lets the caller refuse a cluster that already
//! holds data.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use missive_engine::keys::Keyspace;
use missive_engine::lsm::Lsm;

use crate::app::{App, ClusterCommand};
use crate::cluster::slots::slot_of_key;
use crate::error::{Error, Result};
use crate::ids::{LogId, NodeId, ShardId};
use crate::node::Node;
use crate::read::Consistency;
use crate::shared::Shared;
use crate::storage::codec;
use crate::storage::meta::{applied_key, Applied};
use crate::storage::snapshot::{Chunk, ChunkCursor, View, CHUNK_BYTES};
use crate::transport::{ReadOp, ReadResult};

/// A pinned view unused this long is dropped (its stream then fails and
/// the caller starts that shard again).
pub const SESSION_IDLE: Duration = Duration::from_secs(300);

/// The most backup streams one node serves at once.
pub const MAX_SESSIONS: usize = 16;

/// A restore command carries about this many bytes of pairs (a Raft entry
/// of this size replicates in a few milliseconds on a LAN).
pub const RESTORE_BYTES: usize = CHUNK_BYTES;

/// How long one restore command may wait out an election.
const RESTORE_ELECTION_WAIT: Duration = Duration::from_secs(10);

/// How long one chunk call may take.
const CHUNK_WAIT: Duration = Duration::from_secs(60);

/// The backup streams a node serves: pinned views by token.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    next: std::sync::atomic::AtomicU64,
    open: Mutex<HashMap<u64, (Arc<View>, Instant)>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Arc<View>, Instant)>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a view; drops the idle ones first.
    fn register(&self, shard: ShardId, view: View) -> Result<u64> {
        let mut open = self.lock();
        open.retain(|_, (_, used)| used.elapsed() < SESSION_IDLE);
        if open.len() >= MAX_SESSIONS {
            return Err(Error::Unavailable {
                shard,
                reason: format!("this node already serves {MAX_SESSIONS} backup streams"),
            });
        }
        let token = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        open.insert(token, (Arc::new(view), Instant::now()));
        Ok(token)
    }

    fn get(&self, shard: ShardId, token: u64) -> Result<Arc<View>> {
        let mut open = self.lock();
        let (view, used) = open.get_mut(&token).ok_or_else(|| Error::Unavailable {
            shard,
            reason: "the backup stream expired or its node restarted; back the shard up again"
                .into(),
        })?;
        *used = Instant::now();
        Ok(Arc::clone(view))
    }

    fn close(&self, token: u64) {
        self.lock().remove(&token);
    }
}

/// Pins `shard`'s ranges of `keyspaces` in `lsm` — the slots it owns as
/// its state machine last applied them (a split or merge may have changed
/// them since this node's slot map was made) — and reads the position
/// they reflect.
pub(crate) fn pin(
    lsm: &Arc<Lsm>,
    slots: &std::ops::Range<u16>,
    shard: ShardId,
    keyspaces: &[Keyspace],
) -> Result<(View, Option<LogId>)> {
    let ranges = crate::cluster::slots::slot_key_ranges(slots)
        .into_iter()
        .filter(|(lo, _)| keyspaces.iter().any(|ks| lo.first() == Some(&(*ks as u8))))
        .collect();
    let view = View::new(Arc::clone(lsm), ranges);
    let applied = match view.get(&applied_key(shard))? {
        Some(v) => codec::decode::<Applied>("applied state", &v)?.last_applied,
        None => None,
    };
    Ok((view, applied))
}

impl<A: App> Shared<A> {
    /// `ReadOp::BackupOpen`, on a replica the read path made fresh.
    pub(crate) fn open_backup(&self, shard: ShardId, phase: u32) -> Result<ReadResult> {
        let phases = self.app.backup_phases();
        let keyspaces = phases.get(phase as usize).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "a backup has phases 0..{}, not {phase}",
                phases.len()
            ))
        })?;
        let owned = self.group(shard)?.owned.get();
        if owned.frozen.is_some() {
            return Err(Error::Misrouted {
                shard,
                reason: "it is being merged into another shard; back that one up".into(),
            });
        }
        let (view, applied) = pin(&self.lsm, &owned.slots, shard, keyspaces)?;
        let token = self.backups.register(shard, view)?;
        Ok(ReadResult::BackupOpened {
            token,
            applied,
            node: self.id,
            addr: self.addr.clone(),
        })
    }

    /// `ReadOp::BackupChunk`: the pairs after `cursor` in the pinned view.
    pub(crate) fn backup_chunk(
        &self,
        shard: ShardId,
        token: u64,
        cursor: &ChunkCursor,
    ) -> Result<ReadResult> {
        let view = self.backups.get(shard, token)?;
        let mut next = cursor.clone();
        let pairs = view.next_chunk(&mut next)?;
        if pairs.is_none() {
            self.backups.close(token);
        }
        Ok(ReadResult::BackupChunk {
            pairs: pairs.unwrap_or_default(),
            next: Some(next),
        })
    }
}

/// One shard's backup as it streams: its position, then its chunks.
pub struct BackupStream<A: App> {
    node: Arc<Shared<A>>,
    shard: ShardId,
    token: u64,
    /// The log id the streamed state reflects (None: nothing applied yet).
    pub applied: Option<LogId>,
    /// The node that pinned the view and serves the chunks.
    pub served_by: NodeId,
    addr: String,
    cursor: Option<ChunkCursor>,
}

impl<A: App> Node<A> {
    /// The keyspaces of each backup phase, in order (the application's
    /// [`App::backup_phases`]).
    pub fn backup_phases(&self) -> Vec<Vec<Keyspace>> {
        self.inner.app.backup_phases()
    }

    /// Starts phase `phase` of a backup of data shard `shard`: pins its
    /// state on a voter once that voter has applied everything committed
    /// so far. Every shard's phase `p` must have been opened (and the
    /// streams may still run) before any shard's phase `p + 1` is.
    pub async fn backup_open(&self, shard: ShardId, phase: u32) -> Result<BackupStream<A>> {
        if shard.is_directory() || self.slots().slots(shard).is_none() {
            return Err(Error::NoSuchShard(shard));
        }
        match self
            .read(
                shard,
                Consistency::Linearizable,
                ReadOp::BackupOpen { phase },
            )
            .await?
        {
            ReadResult::BackupOpened {
                token,
                applied,
                node,
                addr,
            } => Ok(BackupStream {
                node: Arc::clone(&self.inner),
                shard,
                token,
                applied,
                served_by: node,
                addr,
                cursor: Some(ChunkCursor::default()),
            }),
            other => Err(Error::malformed(
                "backup open",
                format!("answered {other:?}"),
            )),
        }
    }

    /// Puts a backup's `pairs` into this cluster: each into the shard that
    /// owns its slot here, through Raft. Answers how many pairs each shard
    /// took. Refuses (before writing anything) a key of no data shard.
    pub async fn restore(&self, pairs: Chunk) -> Result<Vec<(ShardId, u64)>> {
        let slots = self.slots();
        // Per target shard: its commands' pairs, and the bytes of the last
        // command (kept as a running sum: summing the command again at every
        // pair made a frame of n pairs cost n² / 2 additions — three
        // quarters of a restore's CPU).
        let mut by_shard: std::collections::BTreeMap<ShardId, (Vec<Chunk>, usize)> =
            Default::default();
        for (k, v) in pairs {
            let slot = slot_of_key(&k).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "a backup holds a key of no data shard (tag {:#04x}, {} bytes)",
                    k.first().copied().unwrap_or(0),
                    k.len()
                ))
            })?;
            let (cmds, last_bytes) = by_shard.entry(slots.shard_of_slot(slot)).or_default();
            if cmds.is_empty() || *last_bytes >= RESTORE_BYTES {
                cmds.push(Chunk::new());
                *last_bytes = 0;
            }
            *last_bytes += k.len() + v.len();
            if let Some(c) = cmds.last_mut() {
                c.push((k, v));
            }
        }
        let mut out = Vec::new();
        for (shard, (cmds, _)) in by_shard {
            let mut put = 0;
            for pairs in cmds {
                let cmd = A::cluster(ClusterCommand::Restore { pairs });
                let outcome = self.write_to(shard, cmd, RESTORE_ELECTION_WAIT).await?;
                match A::as_cluster_outcome(&outcome) {
                    Some(Ok(n)) => put += n,
                    Some(Err(why)) => return Err(Error::Refused(why)),
                    None => {
                        return Err(Error::malformed("restore", format!("answered {outcome:?}")))
                    }
                }
            }
            out.push((shard, put));
        }
        Ok(out)
    }

    /// Whether data shard `shard` holds no key at all (linearizable).
    pub async fn shard_is_empty(&self, shard: ShardId) -> Result<bool> {
        for (lo, hi) in self.slots().key_ranges(shard) {
            if !self
                .scan(shard, Consistency::Linearizable, &lo, hi, 1)
                .await?
                .is_empty()
            {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl<A: App> std::fmt::Debug for BackupStream<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupStream")
            .field("shard", &self.shard)
            .field("applied", &self.applied)
            .field("served_by", &self.served_by)
            .field("done", &self.cursor.is_none())
            .finish_non_exhaustive()
    }
}

impl<A: App> BackupStream<A> {
    /// The next chunk of pairs (keys ascending, at most about
    /// [`CHUNK_BYTES`]), `None` once the shard is done.
    pub async fn next_chunk(&mut self) -> Result<Option<Chunk>> {
        let Some(cursor) = self.cursor.take() else {
            return Ok(None);
        };
        let op = ReadOp::BackupChunk {
            token: self.token,
            cursor,
        };
        let result = self
            .node
            .read_on(self.served_by, &self.addr, self.shard, op, CHUNK_WAIT)
            .await?;
        match result {
            ReadResult::BackupChunk { pairs, next } if !pairs.is_empty() => {
                self.cursor = next;
                Ok(Some(pairs))
            }
            ReadResult::BackupChunk { .. } => Ok(None),
            other => Err(Error::malformed(
                "backup chunk",
                format!("answered {other:?}"),
            )),
        }
    }
}
