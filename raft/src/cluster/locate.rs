//! Where a shard's reads and writes go: this node, or the replicas it
//! locates.
//!
//! A node replicates some shards — its *hosted* shards: its group's
//! configuration names it (voter or learner) and it has not been retired —
//! and serves every shard:
//!
//! ```text
//!  hosted:      read  ─► ensure_read (leader: ensure_linearizable;
//!                        follower: read index from the leader, wait for
//!                        apply) ─► local LSM
//!               write ─► local batcher (forwarded once to the leader)
//!  not hosted:  locate(shard) ─► cached Placement, else ask the replicas
//!                        the cluster map names, then every known node
//!                        (the map's directory, the seeds, and every node
//!                        of any hosted group; never a forgotten one)
//!               read  ─► Rpc::Read to the leader (it reads as above)
//!               write ─► Rpc::Write to the leader
//!               a NotLeader answer naming another leader updates the cache;
//!               an unreachable one refreshes it
//! ```
//!
//! A node that joined the cluster and hosts nothing yet, and a node whose
//! replica was moved away, serve clients this way; the cost is one network
//! round trip per read.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::app::App;
use crate::cluster::membership;
use crate::cluster::placement::Placement;
use crate::error::{Error, Result};
use crate::ids::{NodeId, ShardId};
use crate::shared::Shared;
use crate::transport::{Reply, Rpc};

/// How long one `Locate` question may take.
const LOCATE_TIMEOUT: Duration = Duration::from_secs(1);

impl<A: App> Shared<A> {
    /// Every node this one knows of (but itself): the cluster map's
    /// directory, its seeds (nodes may not have registered yet) and every
    /// node of any hosted group's configuration — but none the map says
    /// was removed from the cluster.
    pub(crate) fn known_nodes(&self) -> BTreeMap<NodeId, String> {
        let map = self.cluster_map();
        let mut out = map.nodes.clone();
        for (id, addr) in self.locations.seeds() {
            out.entry(id).or_insert(addr);
        }
        for (shard, g) in &self.group_list() {
            if self.retired.contains(*shard) {
                continue;
            }
            let m = g.raft().metrics().borrow().membership_config.clone();
            for (id, n) in m.membership().nodes() {
                out.entry(*id).or_insert_with(|| n.addr.clone());
            }
        }
        out.remove(&self.id);
        out.retain(|id, _| !map.forgotten.contains(id));
        out
    }

    /// Whom to ask where `shard` is: the replicas the cluster map names
    /// first (voters, then learners), then every other known node.
    fn locate_candidates(&self, shard: ShardId) -> Vec<(NodeId, String)> {
        let mut out: Vec<(NodeId, String)> = self
            .cluster_map()
            .replicas(shard)
            .into_iter()
            .filter(|(id, _)| *id != self.id)
            .collect();
        for (id, addr) in self.known_nodes() {
            if !out.iter().any(|(i, _)| *i == id) {
                out.push((id, addr));
            }
        }
        out
    }

    /// The placement of `shard`: this node's own view if it hosts the
    /// shard, else the cached one (`refresh`: ask again).
    pub(crate) async fn locate(&self, shard: ShardId, refresh: bool) -> Result<Placement> {
        if self.hosts(shard) {
            return Ok(membership::placement(&self.group(shard)?.raft(), shard));
        }
        if !refresh {
            if let Some(p) = self.locations.placement(shard) {
                return Ok(p);
            }
        }
        let mut best: Option<Placement> = None;
        let mut failures = Vec::new();
        for (id, addr) in self.locate_candidates(shard) {
            let reply = self
                .peers
                .call(id, &addr, shard, Rpc::Locate, LOCATE_TIMEOUT)
                .await;
            let p = match reply {
                Ok(Reply::Locate(Some(p))) => p,
                Ok(_) => continue,
                Err(e) => {
                    failures.push(format!("node {id}: {e}"));
                    continue;
                }
            };
            let better = best.as_ref().is_none_or(|b| {
                (p.config_index, p.leader.is_some()) > (b.config_index, b.leader.is_some())
            });
            if better {
                best = Some(p);
            }
            if best.as_ref().is_some_and(|b| b.leader.is_some()) {
                break;
            }
        }
        let p = best.ok_or_else(|| Error::Unavailable {
            shard,
            reason: match failures.is_empty() {
                true => "no known node replicates this shard (is the cluster up?)".into(),
                false => format!(
                    "no known node replicates this shard (is the cluster up?); {}",
                    failures.join("; ")
                ),
            },
        })?;
        self.locations.remember(p.clone());
        Ok(p)
    }

    /// Where to send a routed call: the leader if known, else a voter.
    pub(crate) async fn route_target(
        &self,
        shard: ShardId,
        refresh: bool,
    ) -> Result<(NodeId, String)> {
        let p = self.locate(shard, refresh).await?;
        let pick = p
            .leader
            .and_then(|l| p.voters.get(&l).map(|a| (l, a.clone())))
            .or_else(|| p.voters.iter().next().map(|(i, a)| (*i, a.clone())));
        pick.ok_or_else(|| Error::Unavailable {
            shard,
            reason: "the shard has no voters".into(),
        })
    }

    /// The leader of a hosted shard, with its address, as this node knows it.
    pub(crate) fn known_leader(&self, shard: ShardId) -> Option<(NodeId, String)> {
        let g = self.group(shard).ok()?;
        let p = membership::placement(&g.raft(), shard);
        let l = p.leader?;
        let a = p.voters.get(&l).or(p.learners.get(&l))?.clone();
        Some((l, a))
    }
}
