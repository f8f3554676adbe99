//! Where a shard's reads and writes go, and the membership changes that
//! move its replicas.
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
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use missive_engine::keys::{ConversationId, Timestamp};
use missive_engine::lsm::Direction;

use crate::app::App;
use crate::error::{Error, Result};
use crate::ids::{LogId, NodeId, ShardId};
use crate::membership::{self, Change, Placement};
use crate::node::{Consistency, Inner};
use crate::transport::client::CallError;
use crate::transport::{ReadOp, ReadResult, RemoteFailure, Reply, Rpc};
use crate::types::Raft;

/// How long a follower read waits for the leader's read index and then
/// for its own apply to reach it; also the budget of a routed read.
pub(crate) const READ_INDEX_WAIT: Duration = Duration::from_secs(5);

/// How long one `Locate` question may take.
const LOCATE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a forwarded membership change may take (catching a replica up
/// included).
const CHANGE_WAIT: Duration = Duration::from_secs(membership::CATCH_UP_WAIT.as_secs() + 60);

/// How long a membership change waits for a shard to have a reachable
/// leader (an election after the old one died).
const ELECTION_WAIT: Duration = Duration::from_secs(15);

/// How long the `Retire` notice to a removed replica may take.
const RETIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// A failure from another node, as our error.
pub(crate) fn from_remote(shard: ShardId, f: RemoteFailure) -> Error {
    match f {
        RemoteFailure::NotLeader { leader } => Error::NotLeader { shard, leader },
        RemoteFailure::Unavailable(reason) => Error::Unavailable { shard, reason },
        RemoteFailure::Invalid(reason) => Error::InvalidArgument(reason),
        RemoteFailure::Unknown(reason) | RemoteFailure::Failed(reason) => {
            Error::Unknown { shard, reason }
        }
    }
}

/// A forwarded call that did not get its expected answer, as our error:
/// never sent (unreachable) is `Transport` — nothing happened; sent but
/// lost, timed out or answered with the wrong kind of reply is `Unknown` —
/// it may have happened.
pub(crate) fn call_failed(
    shard: ShardId,
    node: NodeId,
    doing: &str,
    r: std::result::Result<Reply<impl App>, CallError>,
) -> Error {
    match r {
        Err(CallError::Unreachable(reason)) => Error::Transport { node, reason },
        Err(e) => Error::Unknown {
            shard,
            reason: format!("{doing} to node {node}: {e}"),
        },
        Ok(other) => Error::Unknown {
            shard,
            reason: format!("{doing} to node {node}: unexpected reply {other:?}"),
        },
    }
}

/// Our error, to send to another node.
pub(crate) fn to_remote(e: Error) -> RemoteFailure {
    match e {
        Error::NotLeader { leader, .. } => RemoteFailure::NotLeader { leader },
        Error::Unavailable { reason, .. } => RemoteFailure::Unavailable(reason),
        Error::Unknown { reason, .. } => RemoteFailure::Unknown(reason),
        Error::InvalidArgument(reason) => RemoteFailure::Invalid(reason),
        other => RemoteFailure::Failed(other.to_string()),
    }
}

impl<A: App> Inner<A> {
    /// Whether this node replicates `shard` now.
    pub(crate) fn hosts(&self, shard: ShardId) -> bool {
        let Some(g) = self.groups.get(&shard) else {
            return false;
        };
        let named = g
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&self.id)
            .is_some();
        named && !self.retired.contains(shard)
    }

    /// Whether this node is a voter of `shard` (hosts it and is not a
    /// learner). A learner may be minutes behind while it catches up: its
    /// read-index wait would time out, so its reads are routed.
    fn votes_in(&self, shard: ShardId) -> bool {
        self.hosts(shard)
            && self.groups.get(&shard).is_some_and(|g| {
                g.raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|id| id == self.id)
            })
    }

    /// Every node this one knows of (but itself): the cluster map's
    /// directory, its seeds (nodes may not have registered yet) and every
    /// node of any hosted group's configuration — but none the map says
    /// was removed from the cluster.
    pub(crate) fn known_nodes(&self) -> BTreeMap<NodeId, String> {
        let map = self.cluster_map();
        let mut out = map.nodes.clone();
        for (id, addr) in self.seeds_snapshot() {
            out.entry(id).or_insert(addr);
        }
        for (shard, g) in &self.groups {
            if self.retired.contains(*shard) {
                continue;
            }
            let m = g.raft.metrics().borrow().membership_config.clone();
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
            return Ok(membership::placement(&self.group(shard)?.raft, shard));
        }
        if !refresh {
            if let Some(p) = self.cached_placement(shard) {
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
        self.cache_placement(p.clone());
        Ok(p)
    }

    /// Where to send a routed call: the leader if known, else a voter.
    async fn route_target(&self, shard: ShardId, refresh: bool) -> Result<(NodeId, String)> {
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

    /// Remembers that `leader` leads `shard` (from a NotLeader answer).
    fn learn_leader(&self, shard: ShardId, leader: NodeId, addr: String) {
        let mut c = self.placement_cache();
        if let Some(p) = c.get_mut(&shard) {
            p.leader = Some(leader);
            p.voters.entry(leader).or_insert(addr);
        }
    }

    /// A write for a shard this node does not host: to its leader.
    pub(crate) async fn write_remote(
        &self,
        shard: ShardId,
        command: A::Command,
    ) -> Result<A::Outcome> {
        let mut refresh = false;
        let mut last = None;
        for _ in 0..3 {
            let (leader, addr) = self.route_target(shard, refresh).await?;
            match self.forward(shard, leader, &addr, command.clone()).await {
                Err(Error::NotLeader {
                    leader: Some((l, a)),
                    ..
                }) if l != leader => {
                    self.learn_leader(shard, l, a);
                    refresh = false;
                }
                Err(e @ Error::Transport { .. }) | Err(e @ Error::NotLeader { .. }) => {
                    refresh = true;
                    last = Some(e);
                }
                other => return other,
            }
        }
        Err(last.unwrap_or(Error::NotLeader {
            shard,
            leader: None,
        }))
    }

    /// One read of `shard`'s data at `c`: here if this node is a voter of
    /// it (or hosts it, for a stale read), else at the leader.
    pub(crate) async fn read(
        &self,
        shard: ShardId,
        c: Consistency,
        op: ReadOp,
    ) -> Result<ReadResult> {
        let local = match c {
            Consistency::Stale => self.hosts(shard),
            Consistency::Linearizable => self.votes_in(shard),
        };
        if local {
            self.ensure_read(shard, c).await?;
            return self.read_local(&op);
        }
        let deadline = tokio::time::Instant::now() + READ_INDEX_WAIT;
        let mut refresh = false;
        loop {
            let (target, addr) = self.route_target(shard, refresh).await?;
            let reply = self
                .peers
                .call(
                    target,
                    &addr,
                    shard,
                    Rpc::Read {
                        op: op.clone(),
                        linearizable: c == Consistency::Linearizable,
                    },
                    READ_INDEX_WAIT,
                )
                .await;
            let err = match reply {
                Ok(Reply::Read(Ok(r))) => return Ok(r),
                Ok(Reply::Read(Err(f))) => from_remote(shard, f),
                Ok(other) => Error::Unavailable {
                    shard,
                    reason: format!("unexpected reply {other:?}"),
                },
                Err(e) => Error::Transport {
                    node: target,
                    reason: e.to_string(),
                },
            };
            if !err.is_retryable() || tokio::time::Instant::now() >= deadline {
                return Err(err);
            }
            refresh = true;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A `Read` from a node that does not host the shard.
    pub(crate) async fn serve_read(
        &self,
        shard: ShardId,
        op: ReadOp,
        linearizable: bool,
    ) -> Result<ReadResult> {
        if !self.hosts(shard) {
            return Err(Error::Unavailable {
                shard,
                reason: format!("node {} does not replicate it", self.id),
            });
        }
        let c = if linearizable {
            Consistency::Linearizable
        } else {
            Consistency::Stale
        };
        self.ensure_read(shard, c).await?;
        self.read_local(&op)
    }

    fn read_local(&self, op: &ReadOp) -> Result<ReadResult> {
        let limit = |l: u64| usize::try_from(l).unwrap_or(usize::MAX);
        Ok(match op {
            ReadOp::Get { key } => ReadResult::Value(self.lsm.get(key)?),
            ReadOp::Scan {
                lo,
                hi,
                reverse,
                limit: l,
            } => {
                let dir = if *reverse {
                    Direction::Reverse
                } else {
                    Direction::Forward
                };
                ReadResult::Pairs(self.lsm.scan(lo, hi.as_deref(), dir, limit(*l))?)
            }
            ReadOp::Latest { conv, limit: l } => ReadResult::Messages(
                self.lsm
                    .latest(ConversationId(*conv), limit(*l))?
                    .into_iter()
                    .map(|m| (m.ts.0, m.value))
                    .collect(),
            ),
            ReadOp::Before { conv, ts, limit: l } => ReadResult::Messages(
                self.lsm
                    .before(ConversationId(*conv), Timestamp(*ts), limit(*l))?
                    .into_iter()
                    .map(|m| (m.ts.0, m.value))
                    .collect(),
            ),
        })
    }

    /// Makes a read at `c` on this replica reflect every write acknowledged
    /// before it began (Linearizable), or at least everything this replica
    /// served before a crash (Stale: nothing to do, except on a replica
    /// that restarted with entries past its recorded commit point — see
    /// `LogStore::tail_unconfirmed` — whose first stale read confirms the
    /// commit point as a linearizable one does).
    async fn ensure_read(&self, shard: ShardId, c: Consistency) -> Result<()> {
        let group = self.group(shard)?;
        if c == Consistency::Stale {
            if group.stale_ok.load(Ordering::Acquire) {
                return Ok(());
            }
            // Just restarted: the group may still be electing a leader, so
            // wait for one as a routed read would.
            let deadline = tokio::time::Instant::now() + READ_INDEX_WAIT;
            loop {
                match self.ensure_linearizable(shard, &group.raft).await {
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
        self.ensure_linearizable(shard, &group.raft).await
    }

    /// This replica has applied every write acknowledged before the call:
    /// the leader confirms its leadership, a follower or learner asks the
    /// leader for its commit point and waits to apply it.
    async fn ensure_linearizable(&self, shard: ShardId, raft: &Raft<A>) -> Result<()> {
        match raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(e) => match crate::batcher::check_leader_error(shard, e) {
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

    /// Changes `shard`'s replicas: here if this node leads it, else at its
    /// leader. Retires the replicas the change removed. Waits out an
    /// election (no leader known, or the known one unreachable) for up to
    /// [`ELECTION_WAIT`].
    pub(crate) async fn change_replicas(
        self: &Arc<Self>,
        shard: ShardId,
        change: Change,
    ) -> Result<Placement> {
        let deadline = tokio::time::Instant::now() + ELECTION_WAIT;
        let mut backoff = Duration::from_millis(50);
        let mut refresh = false;
        loop {
            match self.change_once(shard, &change, refresh).await {
                Err(Error::NotLeader { .. } | Error::Transport { .. })
                    if tokio::time::Instant::now() + backoff < deadline =>
                {
                    refresh = true;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                other => return other,
            }
        }
    }

    async fn change_once(
        self: &Arc<Self>,
        shard: ShardId,
        change: &Change,
        refresh: bool,
    ) -> Result<Placement> {
        let g = self.group(shard)?;
        if self.leads(shard) {
            let (after, gone, removed_at) = membership::execute(&g.raft, shard, change).await?;
            if let Some(at) = removed_at {
                for (node, addr) in gone {
                    self.send_retire(shard, node, &addr, at).await;
                }
            }
            return Ok(after);
        }
        let known = self
            .hosts(shard)
            .then(|| self.known_leader(shard))
            .flatten()
            .filter(|(l, _)| *l != self.id);
        let (leader, addr) = match known {
            Some(t) => t,
            None => self.route_target(shard, refresh).await?,
        };
        let reply = self
            .peers
            .call(
                leader,
                &addr,
                shard,
                Rpc::ChangeReplicas {
                    change: change.clone(),
                },
                CHANGE_WAIT,
            )
            .await;
        match reply {
            Ok(Reply::ChangeReplicas(Ok(p))) => Ok(p),
            Ok(Reply::ChangeReplicas(Err(f))) => {
                let e = from_remote(shard, f);
                if let Error::NotLeader {
                    leader: Some((l, a)),
                    ..
                } = &e
                {
                    self.learn_leader(shard, *l, a.clone());
                }
                Err(e)
            }
            other => Err(call_failed(shard, leader, "change sent", other)),
        }
    }

    /// Tells `node` it no longer replicates `shard` (retiring this node
    /// directly when it removed itself). Best effort: a node that misses
    /// it (it was down) campaigns, harmlessly (voters that hear from their
    /// leader ignore it), until its cluster map shows the removal and a
    /// replica confirms it (`directory`).
    async fn send_retire(&self, shard: ShardId, node: NodeId, addr: &str, at: LogId) {
        if node == self.id {
            if let Err(e) = self.retire(shard, at.index) {
                tracing::warn!(%shard, error = %e, "retiring this node's replica failed");
            }
            return;
        }
        match self
            .peers
            .call(
                node,
                addr,
                shard,
                Rpc::Retire { removed_at: at },
                RETIRE_TIMEOUT,
            )
            .await
        {
            Ok(Reply::Retired) => tracing::info!(%shard, node, "removed replica retired"),
            other => tracing::warn!(%shard, node, reply = ?other, "removed replica not told"),
        }
    }

    /// Retires this node's replica of `shard`, removed by the
    /// configuration at log index `at` — unless this node has since seen a
    /// later configuration (it was added back).
    pub(crate) fn retire(&self, shard: ShardId, at: u64) -> Result<()> {
        let g = self.group(shard)?;
        let seen = *g.raft.metrics().borrow().membership_config.log_id();
        if seen.is_some_and(|s| s.index > at) {
            return Ok(());
        }
        g.raft.runtime_config().elect(false);
        if self.retired.retire(shard)? {
            tracing::info!(%shard, "replica retired: elections off, reads and writes routed");
        }
        self.placement_cache().remove(&shard);
        Ok(())
    }

    /// A leader replicates to this node's retired replica of `shard` again:
    /// it was added back.
    pub(crate) fn revive_if_retired(&self, shard: ShardId) {
        if !self.retired.contains(shard) {
            return;
        }
        let Ok(g) = self.group(shard) else { return };
        match self.retired.revive(shard) {
            Ok(_) => {
                g.raft.runtime_config().elect(true);
                tracing::info!(%shard, "replica revived: a leader replicates to it again");
            }
            Err(e) => tracing::warn!(%shard, error = %e, "reviving a retired replica failed"),
        }
    }
}

impl<A: App> Inner<A> {
    fn placement_cache(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<ShardId, Placement>> {
        self.placements
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn cached_placement(&self, shard: ShardId) -> Option<Placement> {
        self.placement_cache().get(&shard).cloned()
    }

    fn cache_placement(&self, p: Placement) {
        self.placement_cache().insert(p.shard, p);
    }

    /// The configured seed nodes (bootstrap list or join list).
    fn seeds_snapshot(&self) -> BTreeMap<NodeId, String> {
        self.seeds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Adds seed nodes to ask where shards are.
    pub(crate) fn add_seeds(&self, seeds: &BTreeMap<NodeId, String>) {
        self.seeds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(seeds.iter().map(|(i, a)| (*i, a.clone())));
    }
}
