//! The metadata group (shard 0) and the cluster map it replicates: which
//! nodes are in the cluster and where, the slot → shard map, and where each
//! group's replicas are.
//!
//! # Who is the authority for what
//!
//! The map is one record in the metadata group's state machine, changed
//! only through that group's log, so every node that reads it at
//! linearizable consistency sees the same map, and each change bumps its
//! `version`. It holds three things:
//!
//! - **The node directory** (id → transport address). A node registers
//!   itself when it first starts (bootstrap or join) and again whenever its
//!   address changes; an operator forgets it after draining it. A forgotten
//!   id stays tombstoned: its node can never register again (a stale
//!   process coming back must not rejoin the routing), so a replacement
//!   machine gets a new id. This is the list every node sends signals to
//!   and asks where shards are — a node that joined knowing one seed learns
//!   every node from it, and a removed node stops being asked.
//! - **The slot map.** Fixed when the cluster is created (the first node to
//!   register writes it); a node started with another shard count is
//!   refused when it registers, instead of silently computing other shards
//!   for the same conversations.
//! - **Placements**: each group's voters and learners, as its leader last
//!   reported them, with the log index of that configuration. This copy is
//!   a *routing hint*, not the authority: a group's own Raft configuration
//!   decides who its replicas are (it changes by joint consensus in that
//!   group's log, `membership`), and a leader reports it here after the
//!   fact. Two copies can disagree for a moment after a change, so a report
//!   only replaces an older configuration (by index), and whoever routes by
//!   the map asks the named replicas (`Rpc::Locate`, answered from their own
//!   configuration) before sending them anything.
//!
//! # How a node keeps its copy
//!
//! Every node caches the map and runs [`run`]: it re-reads the map when it
//! hears of a newer version, and every [`REFRESH_EVERY`] regardless. It
//! hears of versions three ways: every transport request and response
//! carries the newest version its sender knows of (`transport::Wire`; Raft
//! heartbeats alone spread it to every node hosting anything within a
//! heartbeat or two), apply on a metadata replica announces each version it
//! writes, and a node that writes to the map gets the new version back. Between refreshes the
//! copy may be stale; nothing depends on it being current, only on it
//! converging: a routed call that finds a stale placement refreshes that
//! shard's placement from its replicas (`route`).
//!
//! The same task registers the node (until the map lists it at its
//! address); for each group this node leads, reports its configuration
//! when the map's differs; and retires a replica of its own that the map
//! shows was removed while the node was down (it missed the leader's
//! `Retire`), once a replica confirms (`membership`, retirement).
//!
//! # The record, byte by byte
//!
//! Key `0x50 00000000 02` (right after shard 0's `Applied` record), value
//! `[version u8 = 1][postcard(ClusterMap)]`: `version` varint; `slots`
//! option (0/1, then `SlotMap`: its version varint, a length-prefixed
//! sequence of slot ranges as two varints each); `nodes` a length-prefixed
//! sequence of (node id varint, address string); `forgotten` a sequence of
//! node id varints; `shards` a sequence of (shard id varint, `ShardEntry`:
//! voters and learners as sequences of node id varints, `config_index`
//! varint). Fields are append-only.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::app::{App, ClusterCommand, ClusterOutcome};
use crate::codec;
use crate::error::{Error, Result};
use crate::membership::{self, Placement};
use crate::meta::cluster_map_key;
use crate::node::{Consistency, Inner};
use crate::slots::SlotMap;
use crate::transport::{ReadOp, ReadResult, Reply, Rpc};
use crate::types::{NodeId, ShardId};

/// How often the keeper looks at registration and placements.
const TICK: Duration = Duration::from_secs(1);

/// The longest a node goes without re-reading the map.
pub const REFRESH_EVERY: Duration = Duration::from_secs(30);

/// How long one of the keeper's writes may wait out an election.
const WRITE_WAIT: Duration = Duration::from_secs(5);

/// How long a replica may take to confirm a removal.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(1);

/// How long registering at join may wait for the metadata group.
pub const JOIN_WAIT: Duration = Duration::from_secs(15);

/// The cluster map. See the [module documentation](self).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClusterMap {
    /// Bumped by every change; 0 before anything was written (or, in a
    /// node's cache, before it read the map).
    pub version: u64,
    /// The slot → shard map, fixed by the first node to register.
    pub slots: Option<SlotMap>,
    /// The nodes of the cluster: id → transport address.
    pub nodes: BTreeMap<NodeId, String>,
    /// Nodes removed from the cluster; they may never register again.
    pub forgotten: BTreeSet<NodeId>,
    /// Each group's replicas as its leader last reported them.
    pub shards: BTreeMap<ShardId, ShardEntry>,
}

/// One group's replicas as recorded in the map.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ShardEntry {
    /// Voting replicas.
    pub voters: BTreeSet<NodeId>,
    /// Learners (catching up).
    pub learners: BTreeSet<NodeId>,
    /// The log index of the configuration reported (later replaces earlier).
    pub config_index: u64,
}

impl From<&Placement> for ShardEntry {
    fn from(p: &Placement) -> Self {
        ShardEntry {
            voters: p.voters.keys().copied().collect(),
            learners: p.learners.keys().copied().collect(),
            config_index: p.config_index,
        }
    }
}

impl ClusterMap {
    /// Records `node` at `addr`. `Ok(true)` if that changed the map;
    /// `Err(why)` if the node was forgotten or its slot map is not the
    /// cluster's.
    pub fn register(
        &mut self,
        node: NodeId,
        addr: &str,
        slots: &SlotMap,
    ) -> std::result::Result<bool, String> {
        if self.forgotten.contains(&node) {
            return Err(format!(
                "node {node} was removed from the cluster; a node coming back needs a new id"
            ));
        }
        match &self.slots {
            Some(mine) if mine != slots => {
                return Err(format!(
                    "node {node} was started with {} shards; this cluster has {}",
                    slots.shard_count(),
                    mine.shard_count()
                ))
            }
            Some(_) => {}
            None => self.slots = Some(slots.clone()),
        }
        let old = self.nodes.insert(node, addr.to_string());
        Ok(old.as_deref() != Some(addr))
    }

    /// Removes `node` from the directory for good. `Ok(true)` if that
    /// changed the map; `Err(why)` while the map places a replica on it.
    pub fn forget(&mut self, node: NodeId) -> std::result::Result<bool, String> {
        let holding = self.shards_on(node);
        if !holding.is_empty() {
            let list: Vec<String> = holding.iter().map(ToString::to_string).collect();
            return Err(format!(
                "node {node} still holds replicas of {} (as their leaders last reported; \
                 move them first — a move that just finished shows here within seconds)",
                list.join(", ")
            ));
        }
        let removed = self.nodes.remove(&node).is_some();
        Ok(self.forgotten.insert(node) || removed)
    }

    /// Records a group's configuration unless a later one is recorded.
    /// Returns whether that changed the map.
    pub fn report(&mut self, shard: ShardId, entry: ShardEntry) -> bool {
        match self.shards.get(&shard) {
            Some(old) if old.config_index > entry.config_index || *old == entry => false,
            _ => {
                self.shards.insert(shard, entry);
                true
            }
        }
    }

    /// The groups the map places a replica (voter or learner) on `node`.
    pub fn shards_on(&self, node: NodeId) -> Vec<ShardId> {
        self.shards
            .iter()
            .filter(|(_, e)| e.voters.contains(&node) || e.learners.contains(&node))
            .map(|(s, _)| *s)
            .collect()
    }

    /// The replicas the map names for `shard`, voters first, with the
    /// addresses the directory has for them.
    pub fn replicas(&self, shard: ShardId) -> Vec<(NodeId, String)> {
        let Some(e) = self.shards.get(&shard) else {
            return Vec::new();
        };
        e.voters
            .iter()
            .chain(e.learners.iter())
            .filter_map(|id| self.nodes.get(id).map(|a| (*id, a.clone())))
            .collect()
    }
}

/// Runs a metadata command on the map (apply calls this; deterministic:
/// it reads nothing but the map and the command). Bumps the version if the
/// map changed.
pub(crate) fn execute(map: &mut ClusterMap, cmd: &ClusterCommand) -> ClusterOutcome {
    let changed = match cmd {
        ClusterCommand::RegisterNode { node, addr, slots } => map.register(*node, addr, slots),
        ClusterCommand::ForgetNode { node } => map.forget(*node),
        ClusterCommand::ReportPlacement {
            shard,
            voters,
            learners,
            config_index,
        } => Ok(map.report(
            *shard,
            ShardEntry {
                voters: voters.clone(),
                learners: learners.clone(),
                config_index: *config_index,
            },
        )),
    }?;
    if changed {
        map.version += 1;
    }
    Ok(map.version)
}

/// The shard count of the cluster that `seeds` (node id → transport
/// address) belong to, asked before this node opens anything — so a node
/// joining with no `shards` of its own takes the cluster's instead of a
/// default that would be refused. Each seed is asked in turn (a stale read
/// of its copy of the metadata group: the slot map never changes once
/// written), every second until one knows or `wait` runs out. A seed whose
/// map has no slot map yet belongs to a cluster still forming (its members
/// register within a second of their metadata group electing a leader);
/// the joiner waits for it rather than define the slot map itself.
///
/// # Errors
///
/// [`Error::Unavailable`] when no seed told the count within `wait` (with
/// each seed's last answer); [`Error::Malformed`] for a map that does not
/// decode.
pub async fn cluster_shard_count<A: App>(
    me: NodeId,
    cluster: &str,
    seeds: &BTreeMap<NodeId, String>,
    wait: Duration,
) -> Result<u32> {
    let peers = crate::transport::client::Peers::<A>::new(me, cluster.to_string());
    let deadline = Instant::now() + wait;
    loop {
        let mut answers = Vec::new();
        for (&id, addr) in seeds.iter().filter(|(&id, _)| id != me) {
            let rpc = Rpc::Read {
                op: ReadOp::Get {
                    key: cluster_map_key(),
                },
                linearizable: false,
            };
            match peers
                .call(id, addr, ShardId::DIRECTORY, rpc, Duration::from_secs(2))
                .await
            {
                Ok(Reply::Read(Ok(ReadResult::Value(v)))) => {
                    let map: ClusterMap = match v {
                        Some(v) => codec::decode("cluster map", &v)?,
                        None => ClusterMap::default(),
                    };
                    if let Some(slots) = map.slots {
                        return Ok(slots.shard_count());
                    }
                    answers.push(format!("node {id} ({addr}): no slot map yet"));
                }
                Ok(other) => answers.push(format!("node {id} ({addr}): {other:?}")),
                Err(e) => answers.push(format!("node {id} ({addr}): {e}")),
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::Unavailable {
                shard: ShardId::DIRECTORY,
                reason: format!(
                    "no seed told its cluster's shard count within {wait:?} (set node.shards \
                     to the cluster's to skip asking): {}",
                    answers.join("; ")
                ),
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

impl<A: App> Inner<A> {
    /// This node's copy of the map (version 0: not read yet).
    pub(crate) fn cluster_map(&self) -> Arc<ClusterMap> {
        Arc::clone(&self.map.borrow())
    }

    /// Re-reads the map from the metadata group (linearizable) and keeps
    /// it if it is newer than the copy.
    pub(crate) async fn refresh_map(&self) -> Result<Arc<ClusterMap>> {
        let key = cluster_map_key();
        let read = self
            .read(
                ShardId::DIRECTORY,
                Consistency::Linearizable,
                ReadOp::Get { key },
            )
            .await?;
        let map: ClusterMap = match read {
            ReadResult::Value(Some(v)) => codec::decode("cluster map", &v)?,
            ReadResult::Value(None) => ClusterMap::default(),
            other => {
                return Err(Error::Unknown {
                    shard: ShardId::DIRECTORY,
                    reason: format!("reading the cluster map returned {other:?}"),
                })
            }
        };
        let map = Arc::new(map);
        self.map.send_if_modified(|cur| {
            let newer = map.version > cur.version;
            if newer {
                *cur = Arc::clone(&map);
            }
            newer
        });
        self.heard_of_map(map.version);
        Ok(self.cluster_map())
    }

    /// Notes that version `v` of the map exists somewhere.
    pub(crate) fn heard_of_map(&self, v: u64) {
        self.peers.saw_map_version(v);
    }

    /// Runs a metadata command; returns the map's version after it.
    pub(crate) async fn write_directory(
        self: &Arc<Self>,
        command: ClusterCommand,
        wait: Duration,
    ) -> Result<u64> {
        let out = self
            .write(ShardId::DIRECTORY, A::cluster(command), wait)
            .await?;
        match A::as_cluster_outcome(&out) {
            Some(Ok(version)) => {
                self.heard_of_map(version);
                Ok(version)
            }
            Some(Err(message)) => Err(Error::Refused(message)),
            None => Err(Error::Unknown {
                shard: ShardId::DIRECTORY,
                reason: format!("the metadata group answered {out:?}"),
            }),
        }
    }

    /// Registers this node at its address.
    pub(crate) async fn register(self: &Arc<Self>, wait: Duration) -> Result<u64> {
        let cmd = ClusterCommand::RegisterNode {
            node: self.id,
            addr: self.addr.clone(),
            slots: self.slots.clone(),
        };
        self.write_directory(cmd, wait).await
    }

    /// Reports the configuration of every group this node leads whose
    /// entry in `map` differs.
    async fn report_placements(self: &Arc<Self>, map: &ClusterMap) {
        for shard in self.groups.keys().copied() {
            if !self.leads(shard) {
                continue;
            }
            let Ok(g) = self.group(shard) else { continue };
            let p = membership::placement(&g.raft, shard);
            let entry = ShardEntry::from(&p);
            // (The bootstrap configuration is at log index 0: no voters
            // means the group has not loaded one, not index 0.)
            if p.voters.is_empty() || map.shards.get(&shard) == Some(&entry) {
                continue;
            }
            let cmd = ClusterCommand::ReportPlacement {
                shard,
                voters: entry.voters,
                learners: entry.learners,
                config_index: entry.config_index,
            };
            if let Err(e) = self.write_directory(cmd, WRITE_WAIT).await {
                tracing::debug!(%shard, error = %e, "placement report failed; next tick retries");
            }
        }
    }
}

impl<A: App> Inner<A> {
    /// Retires this node's replica of each group whose recorded
    /// configuration is later than the one it holds and leaves it out —
    /// the `Retire` notice it missed while it was down — once one of the
    /// replicas the map names confirms it from its own configuration (the
    /// map is only a hint). A replica wrongly retired would be revived by
    /// its leader's next AppendEntries.
    async fn retire_if_removed(&self, map: &ClusterMap) {
        for shard in self.groups.keys().copied() {
            let Some(entry) = map.shards.get(&shard) else {
                continue;
            };
            let named = entry.voters.contains(&self.id) || entry.learners.contains(&self.id);
            if named || !self.hosts(shard) || self.leads(shard) {
                continue;
            }
            let Ok(g) = self.group(shard) else { continue };
            let mine = g
                .raft
                .metrics()
                .borrow()
                .membership_config
                .log_id()
                .map_or(0, |l| l.index);
            if entry.config_index <= mine {
                continue;
            }
            for (id, addr) in map.replicas(shard) {
                let reply = self
                    .peers
                    .call(id, &addr, shard, Rpc::Locate, CONFIRM_TIMEOUT)
                    .await;
                // An unreachable replica, or one no further along than
                // this node, cannot tell.
                let Ok(Reply::Locate(Some(p))) = reply else {
                    continue;
                };
                if p.config_index <= mine {
                    continue;
                }
                if !p.voters.contains_key(&self.id) && !p.learners.contains_key(&self.id) {
                    tracing::info!(%shard, by = id, "this replica was removed while the node was away");
                    if let Err(e) = self.retire(shard, p.config_index) {
                        tracing::warn!(%shard, error = %e, "retiring failed");
                    }
                }
                break;
            }
        }
    }
}

/// Keeps this node's copy of the map current, its registration and its
/// led groups' placements recorded, until `stop` turns true.
pub(crate) async fn run<A: App>(inner: Arc<Inner<A>>, mut stop: watch::Receiver<bool>) {
    let mut heard = inner.peers.map_versions();
    let mut applied = inner.hooks.directory.subscribe();
    let mut last_read: Option<Instant> = None;
    let mut refused = false;
    loop {
        tokio::select! {
            r = stop.changed() => if r.is_err() || *stop.borrow() { return },
            _ = heard.changed() => {}
            _ = applied.changed() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
        let newest = (*heard.borrow_and_update()).max(*applied.borrow_and_update());
        let have = inner.cluster_map().version;
        if newest > have || last_read.is_none_or(|t| t.elapsed() >= REFRESH_EVERY) {
            match inner.refresh_map().await {
                Ok(_) => last_read = Some(Instant::now()),
                Err(e) => tracing::debug!(error = %e, "cluster map not readable yet"),
            }
        }
        if last_read.is_none() {
            continue;
        }
        let map = inner.cluster_map();
        if !refused && map.nodes.get(&inner.id) != Some(&inner.addr) {
            match inner.register(WRITE_WAIT).await {
                Ok(_) => {
                    tracing::info!(node = inner.id, addr = %inner.addr, "registered in the cluster map")
                }
                Err(Error::Refused(message)) => {
                    tracing::error!(node = inner.id, %message, "the cluster map refuses this node");
                    refused = true;
                }
                Err(e) => tracing::debug!(error = %e, "registration failed; next tick retries"),
            }
        }
        inner.report_placements(&map).await;
        inner.retire_if_removed(&map).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn register(map: &mut ClusterMap, node: NodeId, addr: &str, shards: u32) -> ClusterOutcome {
        execute(
            map,
            &ClusterCommand::RegisterNode {
                node,
                addr: addr.into(),
                slots: SlotMap::even(shards).unwrap(),
            },
        )
    }

    fn report(map: &mut ClusterMap, shard: u32, voters: &[NodeId], index: u64) -> ClusterOutcome {
        execute(
            map,
            &ClusterCommand::ReportPlacement {
                shard: ShardId(shard),
                voters: voters.iter().copied().collect(),
                learners: BTreeSet::new(),
                config_index: index,
            },
        )
    }

    fn version(o: &ClusterOutcome) -> u64 {
        match o {
            Ok(version) => *version,
            Err(other) => panic!("expected a version, got {other:?}"),
        }
    }

    fn refused(o: &ClusterOutcome) -> &str {
        match o {
            Err(message) => message,
            Ok(other) => panic!("expected a conflict, got version {other}"),
        }
    }

    #[test]
    fn registering_records_the_node_and_the_slot_map_and_repeats_change_nothing() {
        let mut m = ClusterMap::default();
        assert_eq!(version(&register(&mut m, 1, "127.0.0.1:1", 4)), 1);
        assert_eq!(m.slots, Some(SlotMap::even(4).unwrap()));
        assert_eq!(version(&register(&mut m, 2, "127.0.0.2:1", 4)), 2);
        // The same registration again: no new version.
        assert_eq!(version(&register(&mut m, 2, "127.0.0.2:1", 4)), 2);
        // A new address is a change.
        assert_eq!(version(&register(&mut m, 2, "127.0.0.2:9", 4)), 3);
        assert_eq!(m.nodes[&2], "127.0.0.2:9");
        // Another shard count is refused and changes nothing.
        let before = m.clone();
        let why = refused(&register(&mut m, 3, "127.0.0.3:1", 8)).to_string();
        assert!(why.contains("8 shards") && why.contains("has 4"), "{why}");
        assert_eq!(m, before);
    }

    #[test]
    fn a_report_never_replaces_a_later_configuration() {
        let mut m = ClusterMap::default();
        assert_eq!(version(&report(&mut m, 1, &[1, 2, 3], 5)), 1);
        // A deposed leader's older view is ignored.
        assert_eq!(version(&report(&mut m, 1, &[1, 2], 4)), 1);
        assert_eq!(m.shards[&ShardId(1)].voters, BTreeSet::from([1, 2, 3]));
        // The same view again changes nothing; a later one replaces it.
        assert_eq!(version(&report(&mut m, 1, &[1, 2, 3], 5)), 1);
        assert_eq!(version(&report(&mut m, 1, &[2, 3, 4], 9)), 2);
        assert_eq!(m.shards_on(1), Vec::<ShardId>::new());
        assert_eq!(m.shards_on(4), vec![ShardId(1)]);
    }

    #[test]
    fn a_node_is_forgotten_only_once_it_holds_nothing_and_never_comes_back() {
        let mut m = ClusterMap::default();
        register(&mut m, 1, "a:1", 2).unwrap();
        register(&mut m, 2, "b:1", 2).unwrap();
        report(&mut m, 0, &[1, 2], 1).unwrap();
        let why = refused(&execute(&mut m, &ClusterCommand::ForgetNode { node: 1 })).to_string();
        assert!(why.contains("shard-0"), "{why}");
        assert!(m.nodes.contains_key(&1));
        report(&mut m, 0, &[2], 3).unwrap();
        let v = version(&execute(&mut m, &ClusterCommand::ForgetNode { node: 1 }));
        assert!(!m.nodes.contains_key(&1));
        // Forgetting again is a no-op; registering again is refused.
        assert_eq!(
            version(&execute(&mut m, &ClusterCommand::ForgetNode { node: 1 })),
            v
        );
        let why = refused(&register(&mut m, 1, "a:1", 2)).to_string();
        assert!(why.contains("new id"), "{why}");
        assert_eq!(m.replicas(ShardId(0)), vec![(2, "b:1".to_string())]);
    }
}
