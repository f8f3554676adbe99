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
//! group and records the shard in `<data>/RETIRED` so a restart keeps them
//! off. A retired group's data stays in the LSM but is never read: reads
//! and writes for that shard go to its replicas (`node.rs`, routing). A
//! replica added back later receives AppendEntries from the leader again;
//! the first one un-retires the group (`Retired::revive`).
//!
//! A `Retire` that arrives after a later configuration (the node was added
//! back in between) is ignored: the node compares the log id it carries
//! with its own group's membership log id.
//!
//! # `RETIRED`, byte by byte
//!
//! `[version u8 = 1][postcard(Vec<u32> shard ids)]`, written to
//! `RETIRED.tmp`, fsynced, renamed over `RETIRED`, directory fsynced.
//! Absent means none.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;

use crate::app::App;
use crate::error::{Error, Result};
use crate::ids::{LogId, NodeAddr, NodeId, ShardId};
use crate::types::Raft;

/// How long a new replica may take to catch up before the change gives up
/// (leaving it a learner; rerun the change to continue).
pub const CATCH_UP_WAIT: Duration = Duration::from_secs(300);

pub use crate::placement::{Change, Placement};

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

/// The shards this node no longer replicates, persisted in `RETIRED`.
#[derive(Debug)]
pub struct Retired {
    path: PathBuf,
    shards: Mutex<BTreeSet<ShardId>>,
}

impl Retired {
    /// Reads `<dir>/RETIRED` (absent: none).
    pub fn load(dir: &Path) -> Result<Retired> {
        let path = dir.join("RETIRED");
        let shards = match std::fs::read(&path) {
            Ok(bytes) => crate::codec::decode::<Vec<u32>>("retired shards", &bytes)?
                .into_iter()
                .map(ShardId)
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(crate::identity::io("read", &path, e)),
        };
        Ok(Retired {
            path,
            shards: Mutex::new(shards),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<ShardId>> {
        self.shards
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `shard` is retired here.
    pub fn contains(&self, shard: ShardId) -> bool {
        self.lock().contains(&shard)
    }

    /// The retired shards.
    pub fn all(&self) -> BTreeSet<ShardId> {
        self.lock().clone()
    }

    /// Marks `shard` retired (durably). Returns false if it already was.
    pub fn retire(&self, shard: ShardId) -> Result<bool> {
        let mut s = self.lock();
        if !s.insert(shard) {
            return Ok(false);
        }
        self.persist(&s)?;
        Ok(true)
    }

    /// Un-retires `shard` (durably). Returns false if it was not retired.
    pub fn revive(&self, shard: ShardId) -> Result<bool> {
        let mut s = self.lock();
        if !s.remove(&shard) {
            return Ok(false);
        }
        self.persist(&s)?;
        Ok(true)
    }

    fn persist(&self, s: &BTreeSet<ShardId>) -> Result<()> {
        let ids: Vec<u32> = s.iter().map(|s| s.0).collect();
        let bytes = crate::codec::encode("retired shards", &ids)?;
        crate::identity::write_durably(&self.path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn retired_shards_survive_a_reload_and_revive() {
        let dir = tempfile::tempdir().unwrap();
        let r = Retired::load(dir.path()).unwrap();
        assert!(r.all().is_empty());
        assert!(r.retire(ShardId(3)).unwrap());
        assert!(!r.retire(ShardId(3)).unwrap());
        assert!(r.retire(ShardId(5)).unwrap());
        let r = Retired::load(dir.path()).unwrap();
        assert_eq!(r.all(), BTreeSet::from([ShardId(3), ShardId(5)]));
        assert!(r.revive(ShardId(3)).unwrap());
        assert!(!r.revive(ShardId(3)).unwrap());
        let r = Retired::load(dir.path()).unwrap();
        assert_eq!(r.all(), BTreeSet::from([ShardId(5)]));
        std::fs::write(dir.path().join("RETIRED"), [9u8, 1, 2]).unwrap();
        assert!(matches!(
            Retired::load(dir.path()),
            Err(Error::Malformed { .. })
        ));
    }
}
