//! Cross-replica verification: do a shard's replicas hold the same bytes?
//!
//! # Comparing replicas at one position while writes go on
//!
//! Replicas apply the same log, but each at its own pace, so checksums
//! taken "now" on each would differ for no fault. The comparison point is
//! therefore put *in the log*: [`Node::verify_shard`] writes a
//! [`ClusterCommand::Checkpoint`] to the shard, and every replica, on
//! reaching the entry that carries it, pins an LSM view of the shard's key
//! ranges holding exactly the entries before that one (the state machine
//! writes what it applied so far, pins, then applies the rest — see
//! `state_machine`). The checkpoint's position is its own entry's index:
//! the view is the shard after every entry below it, on every replica,
//! whatever each one's batching.
//!
//! Then each replica is asked for the checksum of its view (`ReadOp::
//! Checksum`, sent to that node; it waits until it has applied that far):
//! xxh3-64 over every pair as `[len u32 LE][key][len u32 LE][value]`, keys
//! ascending, and the pair count. Replicas that agree with the majority
//! are fine; the others are named. The views expire after
//! [`CHECKPOINT_TTL`] (a replica that never reaches the entry in that time
//! is reported as not answering).
//!
//! What it proves: the replicated key ranges are byte-identical. What it
//! does not: the `Applied` record and the Raft log are per-replica state
//! (a replica's log can legitimately hold a different uncommitted tail).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::app::{App, ClusterCommand};
use crate::error::{Error, Result};
use crate::ids::{NodeId, ShardId};
use crate::node::Node;
use crate::storage::snapshot::{ChunkCursor, View};
use crate::transport::{ReadOp, ReadResult};

/// A checkpoint's view is kept this long for the checksum calls.
pub const CHECKPOINT_TTL: Duration = Duration::from_secs(120);

/// How long a replica waits to reach a checkpoint before it answers that
/// it has not.
const REACH_WAIT: Duration = Duration::from_secs(30);

/// How long one checksum call may take (a large shard is read whole).
const CHECKSUM_WAIT: Duration = Duration::from_secs(600);

/// How long the checkpoint write may wait out an election.
const WRITE_WAIT: Duration = Duration::from_secs(10);

/// Pinned views by (shard, checkpoint index), with when each was pinned.
type Pinned = HashMap<(ShardId, u64), (Arc<View>, Instant)>;

/// The views pinned at checkpoints on this node, by (shard, entry index).
#[derive(Default)]
pub struct Checkpoints {
    views: Mutex<Pinned>,
    reached: tokio::sync::Notify,
}

impl std::fmt::Debug for Checkpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoints").finish_non_exhaustive()
    }
}

impl Checkpoints {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pinned> {
        self.views
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Apply reached a checkpoint at `index`: keep `view` (the state
    /// before that entry). Expired views go.
    pub(crate) fn pinned(&self, shard: ShardId, index: u64, view: View) {
        let mut views = self.lock();
        views.retain(|_, (_, at)| at.elapsed() < CHECKPOINT_TTL);
        views.insert((shard, index), (Arc::new(view), Instant::now()));
        drop(views);
        self.reached.notify_waiters();
    }

    /// Drops every pinned view (the node is shutting down).
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }

    /// The view pinned at (shard, index), waiting up to `wait` for apply
    /// to reach it.
    async fn wait_for(&self, shard: ShardId, index: u64, wait: Duration) -> Option<Arc<View>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.reached.notified();
            if let Some((v, _)) = self.lock().get(&(shard, index)) {
                return Some(Arc::clone(v));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

/// One replica's checksum of a checkpoint's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checksum {
    /// Key/value pairs in the view.
    pub pairs: u64,
    /// xxh3-64 of them (see the module documentation).
    pub hash: u64,
}

/// The checksum of every pair `view` holds.
pub fn checksum(view: &View) -> Result<Checksum> {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut pairs = 0u64;
    let mut cur = ChunkCursor::default();
    while let Some(chunk) = view.next_chunk(&mut cur)? {
        for (k, v) in &chunk {
            for part in [k, v] {
                let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
                h.update(&len.to_le_bytes());
                h.update(part);
            }
        }
        pairs += chunk.len() as u64;
    }
    Ok(Checksum {
        pairs,
        hash: h.digest(),
    })
}

/// One replica's answer in a [`ShardVerdict`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicaSum {
    /// The replica.
    pub node: NodeId,
    /// Its checksum, or why it has none.
    pub checksum: std::result::Result<Checksum, String>,
}

/// What a shard's verification found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardVerdict {
    /// The shard.
    pub shard: ShardId,
    /// The checkpoint entry's index: each view holds every entry below it.
    pub index: u64,
    /// Each replica's answer.
    pub replicas: Vec<ReplicaSum>,
    /// The replicas whose checksum differs from the majority's (or every
    /// replica that answered, if there is no majority).
    pub diverging: Vec<NodeId>,
    /// The replicas that gave no checksum (unreachable, or did not reach
    /// the checkpoint in time).
    pub silent: Vec<NodeId>,
}

impl ShardVerdict {
    /// Every replica answered, all the same.
    pub fn agrees(&self) -> bool {
        self.diverging.is_empty() && self.silent.is_empty()
    }
}

/// The verdict over `replicas`' answers.
fn judge(shard: ShardId, index: u64, replicas: Vec<ReplicaSum>) -> ShardVerdict {
    let mut votes: BTreeMap<(u64, u64), usize> = BTreeMap::new();
    for r in &replicas {
        if let Ok(c) = &r.checksum {
            *votes.entry((c.pairs, c.hash)).or_default() += 1;
        }
    }
    let majority = votes
        .iter()
        .find(|(_, n)| **n * 2 > replicas.len())
        .map(|(k, _)| *k);
    let diverging = replicas
        .iter()
        .filter_map(|r| match &r.checksum {
            Ok(c) if Some((c.pairs, c.hash)) != majority => Some(r.node),
            _ => None,
        })
        .collect();
    let silent = replicas
        .iter()
        .filter(|r| r.checksum.is_err())
        .map(|r| r.node)
        .collect();
    ShardVerdict {
        shard,
        index,
        replicas,
        diverging,
        silent,
    }
}

impl<A: App> crate::shared::Shared<A> {
    /// `ReadOp::Checksum`: this replica's checksum of the view pinned at
    /// the checkpoint `index` (waiting for apply to get there).
    pub(crate) async fn checkpoint_checksum(
        &self,
        shard: ShardId,
        index: u64,
    ) -> Result<ReadResult> {
        let view = self
            .hooks
            .checkpoints
            .wait_for(shard, index, REACH_WAIT)
            .await
            .ok_or_else(|| Error::Unavailable {
                shard,
                reason: format!(
                    "node {} did not reach checkpoint {index} within {REACH_WAIT:?}",
                    self.id
                ),
            })?;
        let sum = tokio::task::spawn_blocking(move || checksum(&view))
            .await
            .map_err(|e| Error::Fatal(format!("checksum task: {e}")))??;
        Ok(ReadResult::Checksum(sum))
    }
}

impl<A: App> Node<A> {
    /// Compares data shard `shard`'s replicas at one log position (see the
    /// module documentation).
    pub async fn verify_shard(&self, shard: ShardId) -> Result<ShardVerdict> {
        if shard.is_directory() || self.slots().slots(shard).is_none() {
            return Err(Error::NoSuchShard(shard));
        }
        let outcome = self
            .write_to(shard, A::cluster(ClusterCommand::Checkpoint), WRITE_WAIT)
            .await?;
        let index = match A::as_cluster_outcome(&outcome) {
            Some(Ok(i)) => i,
            Some(Err(why)) => return Err(Error::Refused(why)),
            None => {
                return Err(Error::malformed(
                    "checkpoint",
                    format!("answered {outcome:?}"),
                ))
            }
        };
        let placement = self.placement(shard).await?;
        let mut replicas = Vec::new();
        for (node, addr) in placement.voters.iter().chain(&placement.learners) {
            let checksum = self
                .replica_checksum(shard, index, *node, addr)
                .await
                .map_err(|e| e.to_string());
            replicas.push(ReplicaSum {
                node: *node,
                checksum,
            });
        }
        Ok(judge(shard, index, replicas))
    }

    async fn replica_checksum(
        &self,
        shard: ShardId,
        index: u64,
        node: NodeId,
        addr: &str,
    ) -> Result<Checksum> {
        let result = self
            .inner
            .read_on(node, addr, shard, ReadOp::Checksum { index }, CHECKSUM_WAIT)
            .await?;
        match result {
            ReadResult::Checksum(c) => Ok(c),
            other => Err(Error::malformed("checksum", format!("answered {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(node: NodeId, pairs: u64, hash: u64) -> ReplicaSum {
        ReplicaSum {
            node,
            checksum: Ok(Checksum { pairs, hash }),
        }
    }

    #[test]
    fn the_minority_is_named_and_silence_is_not_agreement() {
        let v = judge(
            ShardId(1),
            9,
            vec![sum(1, 5, 7), sum(2, 5, 8), sum(3, 5, 7)],
        );
        assert_eq!((v.diverging.clone(), v.agrees()), (vec![2], false));
        let v = judge(
            ShardId(1),
            9,
            vec![sum(1, 5, 7), sum(2, 5, 7), sum(3, 5, 7)],
        );
        assert!(v.agrees());
        // No majority: everyone who answered is suspect.
        let v = judge(ShardId(1), 9, vec![sum(1, 5, 7), sum(2, 6, 7)]);
        assert_eq!(v.diverging, vec![1, 2]);
        let silent = ReplicaSum {
            node: 3,
            checksum: Err("unreachable".into()),
        };
        let v = judge(ShardId(1), 9, vec![sum(1, 5, 7), sum(2, 5, 7), silent]);
        assert_eq!((v.diverging.clone(), v.silent.clone()), (vec![], vec![3]));
        assert!(!v.agrees());
    }
}
