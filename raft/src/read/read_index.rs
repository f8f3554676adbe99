//! How a replica makes a read fresh enough before serving it from its
//! LSM: the leader confirms its leadership with a quorum (openraft's
//! `ensure_linearizable`); a follower asks the leader for its commit point
//! (Raft's read index) and waits until it has applied that far; and the
//! stale gate — a replica that restarted with log entries past its
//! recorded commit point confirms that point once before serving stale
//! reads, so it never serves less than it served before the crash.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::app::App;
use crate::error::{Error, Result};
use crate::ids::{NodeId, ShardId};
use crate::read::{Consistency, READ_INDEX_WAIT};
use crate::shared::Shared;
use crate::transport::failure::from_remote;
use crate::transport::{Reply, Rpc};
use crate::types::Raft;
use crate::write::batcher::check_leader_error;

impl<A: App> Shared<A> {
    /// Makes a read at `c` on this replica reflect every write acknowledged
    /// before it began (Linearizable), or at least everything this replica
    /// served before a crash (Stale: nothing to do, except on a replica
    /// that restarted with entries past its recorded commit point — see
    /// `LogStore::tail_unconfirmed` — whose first stale read confirms the
    /// commit point as a linearizable one does).
    pub(super) async fn ensure_read(&self, shard: ShardId, c: Consistency) -> Result<()> {
        let group = self.group(shard)?;
        if c == Consistency::Stale {
            if group.stale_ok.load(Ordering::Acquire) {
                return Ok(());
            }
            // Just restarted: the group may still be electing a leader, so
            // wait for one as a routed read would.
            let deadline = tokio::time::Instant::now() + READ_INDEX_WAIT;
            loop {
                match self.ensure_linearizable(shard, &group.raft()).await {
                    Ok(()) => break,
                    Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
            group.stale_ok.store(true, Ordering::Release);
            return Ok(());
        }
        self.ensure_linearizable(shard, &group.raft()).await
    }

    /// This replica has applied every write acknowledged before the call:
    /// the leader confirms its leadership, a follower or learner asks the
    /// leader for its commit point and waits to apply it.
    async fn ensure_linearizable(&self, shard: ShardId, raft: &Raft<A>) -> Result<()> {
        match raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(e) => match check_leader_error(shard, e) {
                // A follower reads through the leader's read index.
                Error::NotLeader {
                    leader: Some((leader, addr)),
                    ..
                } if leader != self.id => {
                    self.follower_read_index(shard, raft, leader, &addr).await
                }
                other => Err(other),
            },
        }
    }

    /// A linearizable read on a follower (Raft's read index): the leader
    /// confirms it still leads with a quorum and names its commit point;
    /// once this replica has applied that far, its state includes every
    /// write acknowledged before the read began.
    async fn follower_read_index(
        &self,
        shard: ShardId,
        raft: &Raft<A>,
        leader: NodeId,
        addr: &str,
    ) -> Result<()> {
        let reply = self
            .peers
            .call(leader, addr, shard, Rpc::ReadIndex, READ_INDEX_WAIT)
            .await;
        let index = match reply {
            Ok(Reply::ReadIndex(Ok(i))) => i,
            Ok(Reply::ReadIndex(Err(f))) => return Err(from_remote(shard, f)),
            Ok(other) => {
                return Err(Error::Unavailable {
                    shard,
                    reason: format!("unexpected reply {other:?}"),
                })
            }
            Err(e) => {
                return Err(Error::Transport {
                    node: leader,
                    reason: e.to_string(),
                })
            }
        };
        raft.wait(Some(READ_INDEX_WAIT))
            .applied_index_at_least(index, "follower read index")
            .await
            .map(|_| ())
            .map_err(|e| Error::Unavailable {
                shard,
                reason: format!("this replica did not apply up to the read index: {e}"),
            })
    }
}
