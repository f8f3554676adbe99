//! Changing where a shard's replicas live: add a replica, remove one, move
//! one from a node to another — and what a node does once it is no longer
//! a replica.
//!
//! # The procedure (run on the shard's leader)
//!
//! ```text
//!  add(n, addr):    add_learner(n, addr)          ─ a learner: gets the log
//!                   wait until n matched the leader's log as of the add
//!                   (or a snapshot: a learner far behind gets one)
//!                   change_membership(voters ∪ {n})   ─ joint, then uniform
//!  remove(n):       change_membership(voters ∖ {n})
//!                   tell n it is retired (Rpc::Retire)
//!  move(a → b):     add(b) then change_membership(voters ∖ {a} ∪ {b}):
//!                   one joint change, so the group never has fewer than its
//!                   replica count of up-to-date voters
//! ```
//!
//! Waiting for the learner before promoting it matters: a voter that is far
//! behind counts toward the quorum size but cannot acknowledge anything, so
//! promoting it early would stall the shard's writes until it caught up (or
//! lose availability outright if another replica failed meanwhile).
//! openraft's own blocking `add_learner` waits forever; ours waits
//! [`CATCH_UP_WAIT`] and fails with the learner left in place (rerunning the
//! same command continues from there).
//!
//! # Retirement
//!
//! openraft stops replicating to a removed node as soon as the leader sees
//! the configuration without it, so the removed node usually never learns
//! it was removed: its last configuration (the joint one) still names it a
//! voter, and it would campaign forever, raising its term. The leader
//! therefore tells it (`Rpc::Retire`, carrying the log id of the
//! configuration that removed it); the node turns elections off for that
//! group and records the shard in `<data>/RETIRED` (`retired`) so a restart keeps them
//! off. A retired group's data stays in the LSM but is never read: reads
//! and writes for that shard go to its replicas (`cluster::locate`). A
//! replica added back later receives AppendEntries from the leader again;
//! the first one un-retires the group (`Retired::revive`).
//!
//! A `Retire` that arrives after a later configuration (the node was added
//! back in between) is ignored: the node compares the log id it carries
//! with its own group's membership log id.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;

use crate::app::App;
use crate::error::{Error, Result};
use crate::ids::{LogId, NodeAddr, NodeId, ShardId};
use crate::shared::Shared;
use crate::transport::failure::{call_failed, from_remote};
use crate::transport::{Reply, Rpc};
use crate::types::Raft;

/// How long a new replica may take to catch up before the change gives up
/// (leaving it a learner; rerun the change to continue).
pub const CATCH_UP_WAIT: Duration = Duration::from_secs(300);

pub use crate::cluster::placement::{Change, Placement};

/// The placement of `raft`'s group as its metrics show it.
pub fn placement<A: App>(raft: &Raft<A>, shard: ShardId) -> Placement {
    let m = raft.metrics().borrow().clone();
    let stored = &m.membership_config;
    let members = stored.membership();
    let addr = |id: &NodeId| {
        members
            .get_node(id)
            .map(|n| n.addr.clone())
            .unwrap_or_default()
    };
    Placement {
        shard,
        voters: members.voter_ids().map(|id| (id, addr(&id))).collect(),
        learners: members.learner_ids().map(|id| (id, addr(&id))).collect(),
        leader: m.current_leader,
        config_index: stored.log_id().map_or(0, |l| l.index),
        changing: members.get_joint_config().len() > 1,
    }
}

/// Runs `change` on `raft`, which must lead `shard`. Returns the new
/// placement and the nodes that stopped being replicas (to retire), with
/// the log id of the configuration that removed them.
pub async fn execute<A: App>(
    raft: &Raft<A>,
    shard: ShardId,
    change: &Change,
) -> Result<(Placement, Vec<(NodeId, String)>, Option<LogId>)> {
    let before = placement(raft, shard);
    if before.changing {
        return Err(Error::Unavailable {
            shard,
            reason: "a membership change of this shard is still in progress".into(),
        });
    }
    let mut voters: BTreeSet<NodeId> = before.voters.keys().copied().collect();
    match change {
        Change::Add { node, addr } => {
            if voters.contains(node) {
                return Ok((before, Vec::new(), None));
            }
            catch_up(raft, shard, *node, addr).await?;
            voters.insert(*node);
        }
        Change::Remove { node } => {
            if !voters.contains(node) && !before.learners.contains_key(node) {
                return Ok((before, Vec::new(), None));
            }
            voters.remove(node);
        }
        Change::Move { from, to, addr } => {
            if from == to {
                return Err(Error::InvalidArgument(
                    "a replica cannot move to the node it is on".into(),
                ));
            }
            if !voters.contains(from) {
                return Err(Error::InvalidArgument(format!(
                    "node {from} holds no replica of {shard}"
                )));
            }
            if !voters.contains(to) {
                catch_up(raft, shard, *to, addr).await?;
                voters.insert(*to);
            }
            voters.remove(from);
        }
    }
    if voters.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{shard} would have no replica left"
        )));
    }
    let resp = raft
        .change_membership(ChangeMembers::ReplaceAllVoters(voters), false)
        .await
        .map_err(|e| change_error(shard, e))?;
    let after = placement(raft, shard);
    let gone = before
        .voters
        .iter()
        .chain(&before.learners)
        .filter(|(id, _)| !after.voters.contains_key(id) && !after.learners.contains_key(id))
        .map(|(id, a)| (*id, a.clone()))
        .collect();
    Ok((after, gone, Some(resp.log_id)))
}

/// Adds `node` as a learner and waits until it has everything the leader
/// had when it was added.
async fn catch_up<A: App>(raft: &Raft<A>, shard: ShardId, node: NodeId, addr: &str) -> Result<()> {
    let resp = raft
        .add_learner(node, NodeAddr::new(addr), false)
        .await
        .map_err(|e| change_error(shard, e))?;
    let target = resp.log_id.index;
    raft.wait(Some(CATCH_UP_WAIT))
        .metrics(
            |m| {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(&node).cloned().flatten())
                    .is_some_and(|matched| matched.index >= target)
            },
            "new replica caught up",
        )
        .await
        .map(|_| ())
        .map_err(|e| Error::Unavailable {
            shard,
            reason: format!(
                "node {node} did not catch up within {} s ({e}); it stays a learner, rerun the change to continue",
                CATCH_UP_WAIT.as_secs()
            ),
        })
}

fn change_error(shard: ShardId, e: RaftError<NodeId, ClientWriteError<NodeId, NodeAddr>>) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Error::NotLeader {
            shard,
            leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(p),
        )) => Error::Unavailable {
            shard,
            reason: format!("another membership change is in progress: {p}"),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            Error::InvalidArgument(c.to_string())
        }
        RaftError::Fatal(f) => Error::Unavailable {
            shard,
            reason: format!("raft stopped: {f}"),
        },
    }
}

/// How long a forwarded membership change may take (catching a replica up
/// included).
const CHANGE_WAIT: Duration = Duration::from_secs(CATCH_UP_WAIT.as_secs() + 60);

/// How long a membership change waits for a shard to have a reachable
/// leader (an election after the old one died).
const ELECTION_WAIT: Duration = Duration::from_secs(15);

/// How long the `Retire` notice to a removed replica may take.
const RETIRE_TIMEOUT: Duration = Duration::from_secs(2);

impl<A: App> Shared<A> {
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
            let (after, gone, removed_at) = execute(&g.raft(), shard, change).await?;
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
                    self.locations.learn_leader(shard, *l, a.clone());
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
    async fn send_retire(self: &Arc<Self>, shard: ShardId, node: NodeId, addr: &str, at: LogId) {
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
    /// Its storage is then wiped in the background (`cluster::wipe`).
    pub(crate) fn retire(self: &Arc<Self>, shard: ShardId, at: u64) -> Result<()> {
        let g = self.group(shard)?;
        let seen = *g.raft().metrics().borrow().membership_config.log_id();
        if seen.is_some_and(|s| s.index > at) {
            return Ok(());
        }
        g.raft().runtime_config().elect(false);
        if self.retired.retire(shard)? {
            tracing::info!(%shard, "replica retired: elections off, reads and writes routed");
        }
        self.locations.forget(shard);
        crate::cluster::wipe::spawn(Arc::clone(self), shard);
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
                g.raft().runtime_config().elect(true);
                tracing::info!(%shard, "replica revived: a leader replicates to it again");
            }
            Err(e) => tracing::warn!(%shard, error = %e, "reviving a retired replica failed"),
        }
    }
}
