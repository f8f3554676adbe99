//! The state a running node's paths share: its identity, the engine, one
//! [`Group`] per shard, the peer pool, its copy of the cluster map, and the
//! parts with their own state (retired shards, located placements, incoming
//! snapshots). The behaviour lives with each path — `write::forward`,
//! `read`, `cluster::{locate, membership, directory}`, `transport::dispatch`
//! — as `impl Shared` blocks there; this file holds only the data and the
//! questions every path asks (which group, does this node host it, lead
//! it), so it depends on none of them.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, watch};

use missive_engine::log::Log;
use missive_engine::lsm::Lsm;

use crate::app::App;
use crate::cluster::cluster_map::ClusterMap;
use crate::cluster::locations::Locations;
use crate::cluster::retired::Retired;
use crate::cluster::slots::SlotMap;
use crate::error::{Error, Result};
use crate::ids::{NodeId, ShardId};
use crate::storage::snapshot_receive::SnapshotReceiver;
use crate::storage::state_machine::ApplyHooks;
use crate::transport::client::Peers;
use crate::types::Raft;
use crate::write::batcher::Pending;

/// A group's current Raft handle. It is replaced once in a replica's life
/// at most: when the replica is removed from this node, its storage is
/// wiped and a fresh, empty Raft takes its place (`cluster::wipe`). Every
/// path asks for the handle each time it needs one, never keeps it.
pub(crate) struct RaftCell<A: App>(std::sync::RwLock<Raft<A>>);

impl<A: App> RaftCell<A> {
    /// A cell holding `raft`.
    pub(crate) fn new(raft: Raft<A>) -> Self {
        RaftCell(std::sync::RwLock::new(raft))
    }

    /// The current handle (a cheap clone).
    pub(crate) fn get(&self) -> Raft<A> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Puts `raft` in place of the current handle.
    pub(crate) fn replace(&self, raft: Raft<A>) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = raft;
    }
}

/// One shard's group on this node.
pub(crate) struct Group<A: App> {
    /// Its Raft handle (see [`RaftCell`]; the batcher shares it).
    pub(crate) cell: Arc<RaftCell<A>>,
    /// The batcher's lane for clients' writes.
    pub(crate) batcher: mpsc::Sender<Pending<A>>,
    /// The batcher's lane for the node's own writes (served first).
    pub(crate) system: mpsc::Sender<Pending<A>>,
    /// Whether stale reads may be served from this replica's applied state
    /// as it is. False at start when the log holds entries past the commit
    /// point on record (`LogStore::tail_unconfirmed`): the replica may be
    /// behind what it served before a crash until one linearizable read
    /// has confirmed the group's commit point (`read::read_index`); then
    /// true for the life of the process.
    pub(crate) stale_ok: AtomicBool,
    /// What this node saw of the group since it started.
    pub(crate) seen: Arc<GroupCounters>,
    /// The slots the group's state machine owns (`cluster::split`).
    pub(crate) owned: Arc<crate::cluster::split::Ownership>,
}

/// Events of one group as this node saw them, counted since it started
/// (`Node::group_stats`): read from openraft's metrics as they change.
#[derive(Debug, Default)]
pub(crate) struct GroupCounters {
    /// Terms begun (each an election, won or not, by any replica).
    pub(crate) elections: std::sync::atomic::AtomicU64,
    /// Changes of the leader this node knows (to none included).
    pub(crate) leader_changes: std::sync::atomic::AtomicU64,
    /// Snapshots built or installed here.
    pub(crate) snapshots: std::sync::atomic::AtomicU64,
    /// Times this node's replica was wiped after its removal
    /// (`cluster::wipe`).
    pub(crate) wipes: std::sync::atomic::AtomicU64,
}

impl<A: App> Group<A> {
    /// The group's current Raft handle.
    pub(crate) fn raft(&self) -> Raft<A> {
        self.cell.get()
    }
}

/// A running node's shared state. See the [module documentation](self).
pub(crate) struct Shared<A: App> {
    /// The application every group runs.
    pub(crate) app: Arc<A>,
    /// This node's id.
    pub(crate) id: NodeId,
    /// The transport's address (what peers dial).
    pub(crate) addr: String,
    /// The node's one LSM: every group's state machine.
    pub(crate) lsm: Arc<Lsm>,
    /// The node's one log: every group's Raft log.
    pub(crate) log: Arc<Log>,
    /// The slot → shard map this node routes by: the founding map, then
    /// the cluster map's routing map as it learns it (`cluster::split`).
    pub(crate) slots: std::sync::RwLock<Arc<SlotMap>>,
    /// Every group, hosted or not: the metadata group and each data shard
    /// (a split adds one: see [`Shared::groups_changed`]).
    pub(crate) groups: std::sync::RwLock<BTreeMap<ShardId, Arc<Group<A>>>>,
    /// The founding slot map (`SlotMap::even` of the node's shard count):
    /// what it registers with (the cluster map compares founding maps).
    pub(crate) founding: SlotMap,
    /// Bumped when a group was added to `groups`.
    pub(crate) groups_changed: watch::Sender<u64>,
    /// The batchers of groups opened after start (stopped at shutdown).
    pub(crate) late_tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// How many commands a batcher packs into one entry.
    pub(crate) max_batch: usize,
    /// What apply tells the rest of the node (and counts).
    pub(crate) hooks: Arc<ApplyHooks>,
    /// Connections to the other nodes.
    pub(crate) peers: Arc<Peers<A>>,
    /// This node's copy of the cluster map (see `cluster::directory`).
    pub(crate) map: watch::Sender<Arc<ClusterMap>>,
    /// Shards whose replica here was removed (see `cluster::membership`).
    pub(crate) retired: Retired,
    /// Seeds and the located placements of shards hosted elsewhere.
    pub(crate) locations: Locations,
    /// Snapshots being received from leaders.
    pub(crate) snapshots: SnapshotReceiver,
    /// Ephemeral signals received (from peers and from this node).
    pub(crate) signals: broadcast::Sender<Arc<[u8]>>,
    /// Leaderships this node handed to a shard's preferred leader
    /// (`cluster::balance`): campaigns it asked for and that began.
    pub(crate) handovers: std::sync::atomic::AtomicU64,
    /// The backup streams this node serves (see `backup`).
    pub(crate) backups: crate::backup::Sessions,
    /// What opening a group needs (a wiped replica's group is reopened).
    pub(crate) opener: crate::group::GroupOpener<A>,
    /// Held by a wipe from start to end (`cluster::wipe`), and by shutdown
    /// while it marks the node stopping: wipes run one at a time, never
    /// during or after shutdown.
    pub(crate) wiping: tokio::sync::Mutex<()>,
    /// Set by shutdown: no group is reopened after it.
    pub(crate) stopping: AtomicBool,
}

impl<A: App> Shared<A> {
    /// `shard`'s group ([`Error::NoSuchShard`] if this node has none).
    pub(crate) fn group(&self, shard: ShardId) -> Result<Arc<Group<A>>> {
        self.groups
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&shard)
            .cloned()
            .ok_or(Error::NoSuchShard(shard))
    }

    /// Every group this node has, in id order.
    pub(crate) fn group_list(&self) -> Vec<(ShardId, Arc<Group<A>>)> {
        self.groups
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(s, g)| (*s, Arc::clone(g)))
            .collect()
    }

    /// The ids of every group this node has, in order.
    pub(crate) fn group_ids(&self) -> Vec<ShardId> {
        self.groups
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .copied()
            .collect()
    }

    /// The slot map this node routes by now.
    pub(crate) fn slot_map(&self) -> Arc<SlotMap> {
        Arc::clone(
            &self
                .slots
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Takes `map` to route by if it is newer than the one held.
    pub(crate) fn adopt_slots(&self, map: &SlotMap) -> bool {
        let mut cur = self
            .slots
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.version > cur.version {
            *cur = Arc::new(map.clone());
            true
        } else {
            false
        }
    }

    /// Whether this node leads `shard` now (as far as it knows).
    pub(crate) fn leads(&self, shard: ShardId) -> bool {
        self.group(shard)
            .is_ok_and(|g| g.raft().metrics().borrow().current_leader == Some(self.id))
    }

    /// Whether this node replicates `shard` now: its group's configuration
    /// names this node (voter or learner) and the replica is not retired.
    pub(crate) fn hosts(&self, shard: ShardId) -> bool {
        let Ok(g) = self.group(shard) else {
            return false;
        };
        let named = g
            .raft()
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
    pub(crate) fn votes_in(&self, shard: ShardId) -> bool {
        self.hosts(shard)
            && self.group(shard).is_ok_and(|g| {
                g.raft()
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|id| id == self.id)
            })
    }
}

/// Waits one round of a node's periodic task: `false` once the node is
/// stopping (`stop` turned true), when the task should return.
pub(crate) async fn next_round(
    stop: &mut watch::Receiver<bool>,
    round: std::time::Duration,
) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(round) => {}
        _ = stop.changed() => return false,
    }
    !*stop.borrow()
}
