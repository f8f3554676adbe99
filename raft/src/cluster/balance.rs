//! Leader balance: every group has a *preferred* leader among its voters,
//! and a leader that is not its group's preferred one hands leadership to
//! it once that replica is caught up.
//!
//! # The rule
//!
//! The preferred leader of shard `s` is the `(s − 1) mod |voters|`-th of
//! its voters in id order (the metadata group, shard 0: the first). With
//! every node a voter of every shard — 3 nodes, 3 replicas — data shard
//! `s` goes to the `(s − 1) mod n`-th node: at most ⌈shards / nodes⌉
//! leaders per node. Every node computes it from the group's own
//! configuration, so they agree without talking, and `Node::bootstrap`
//! starts each group on the same node.
//!
//! # How leadership moves (openraft 0.9)
//!
//! openraft 0.9 has no leader-transfer call (0.10 does). What it has is
//! `Raft::trigger().elect()`: a voter campaigns at once, in a new term.
//! The current leader's followers refuse that vote while their leader
//! lease holds, but the campaigning replica now holds a higher term, so
//! the leader's next heartbeat to it is rejected and the leader steps
//! down; its vote then goes to the candidate, whose next campaign (one
//! election timeout later, 200–320 ms) wins with the old leader's vote.
//! So a leader that wants to hand over sends the preferred replica a
//! [`Rpc::Campaign`](crate::transport::Rpc::Campaign), and the shard has
//! no leader for a few hundred milliseconds: writes in that window wait
//! in the write path's retry loop (nothing acknowledged is at risk — it
//! is an ordinary election). Hence the limits below: only a replica that
//! has every entry the leader has (it would lose the election otherwise,
//! and the shard would sit leaderless for nothing), at most one hand-over
//! per node per round, and none for a shard handed over recently.
//!
//! # When
//!
//! A task per node looks every [`ROUND`]: after bootstrap nothing moves
//! (the groups started on their preferred leaders); after a node restarts
//! (it comes back leading nothing) or a failover (the survivors lead its
//! shards), the preferred leader gets its shards back one per round once
//! it has caught up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::app::App;
use crate::ids::{NodeId, ShardId};
use crate::shared::Shared;
use crate::transport::{Reply, Rpc};

/// How often a node looks for shards to hand over.
pub const ROUND: Duration = Duration::from_secs(2);
/// How long after start a node waits before handing anything over (its
/// peers are still starting; elections of the first seconds settle).
const SETTLE: Duration = Duration::from_secs(4);
/// No second hand-over of one shard by this node within this time (a
/// hand-over that lost its election is not retried at once).
const AGAIN_AFTER: Duration = Duration::from_secs(20);
/// The campaign call's deadline.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The preferred leader of `shard` among `voters` (any order).
pub fn preferred_leader(
    shard: ShardId,
    voters: impl IntoIterator<Item = NodeId>,
) -> Option<NodeId> {
    let mut v: Vec<NodeId> = voters.into_iter().collect();
    v.sort_unstable();
    v.dedup();
    if v.is_empty() {
        return None;
    }
    Some(v[shard.0.saturating_sub(1) as usize % v.len()])
}

/// The balancer task of one node (see the module docs).
pub(crate) async fn run<A: App>(inner: Arc<Shared<A>>, mut stop: watch::Receiver<bool>) {
    let started = Instant::now();
    let mut last: BTreeMap<ShardId, Instant> = BTreeMap::new();
    while crate::shared::next_round(&mut stop, ROUND).await {
        if started.elapsed() < SETTLE {
            continue;
        }
        if let Some((shard, to)) = next_hand_over(&inner, &last) {
            last.insert(shard, Instant::now());
            hand_over(&inner, shard, to).await;
        }
    }
}

/// The first shard this node leads whose preferred leader is another,
/// caught-up voter, and that was not handed over recently.
fn next_hand_over<A: App>(
    inner: &Shared<A>,
    last: &BTreeMap<ShardId, Instant>,
) -> Option<(ShardId, NodeId)> {
    for (shard, g) in &inner.group_list() {
        if last.get(shard).is_some_and(|t| t.elapsed() < AGAIN_AFTER) {
            continue;
        }
        let m = g.raft().metrics().borrow().clone();
        if m.current_leader != Some(inner.id) {
            continue;
        }
        let voters = m.membership_config.membership().voter_ids();
        let Some(to) = preferred_leader(*shard, voters) else {
            continue;
        };
        if to == inner.id {
            continue;
        }
        // Caught up: it holds every entry this leader has.
        let last_index = m.last_log_index;
        let matched = m
            .replication
            .as_ref()
            .and_then(|r| r.get(&to).cloned())
            .flatten()
            .map(|l| l.index);
        if last_index.is_some() && matched == last_index {
            return Some((*shard, to));
        }
    }
    None
}

/// Asks `to` to campaign for `shard`.
async fn hand_over<A: App>(inner: &Shared<A>, shard: ShardId, to: NodeId) {
    let Some(addr) = inner.known_nodes().remove(&to) else {
        return;
    };
    tracing::info!(%shard, to, "handing leadership to the shard's preferred leader");
    match inner
        .peers
        .call(to, &addr, shard, Rpc::Campaign, CALL_TIMEOUT)
        .await
    {
        Ok(Reply::Campaigning) => {
            inner
                .handovers
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(other) => {
            tracing::debug!(%shard, to, reply = ?std::mem::discriminant(&other), "campaign refused")
        }
        Err(e) => tracing::debug!(%shard, to, error = %e, "campaign call failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_nodes_eight_shards_lead_at_most_three_each() {
        let mut count: BTreeMap<NodeId, usize> = BTreeMap::new();
        for s in 1..=8 {
            let l = preferred_leader(ShardId(s), [3, 1, 2]).unwrap_or(0);
            *count.entry(l).or_default() += 1;
        }
        assert_eq!(count, BTreeMap::from([(1, 3), (2, 3), (3, 2)]));
        assert_eq!(preferred_leader(ShardId(0), [2, 3]), Some(2));
        assert_eq!(preferred_leader(ShardId(1), []), None);
    }
}
