//! The cluster map as data: the node directory, the slot map, each group's
//! placement, and [`execute`], the metadata group's apply rule (a pure
//! function of the map and a command). `directory` keeps each node's copy
//! current; the state machine runs `execute` on shard 0.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::app::{ClusterCommand, ClusterOutcome};
use crate::cluster::placement::Placement;
use crate::cluster::slots::SlotMap;
use crate::ids::{NodeId, ShardId};

/// The cluster map (see `directory`'s essay: who is the authority for
/// what, and its record byte by byte).
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
    /// The slot map after the splits recorded so far (`None`: none yet, the
    /// founding `slots` rule). Record version 2.
    pub routing: Option<SlotMap>,
    /// Shard ids reserved for splits not recorded yet: child → (parent, the
    /// first slot it takes). Record version 2.
    pub reserved: BTreeMap<ShardId, (ShardId, u16)>,
}

/// The record's version-1 shape (every field before `routing`): what
/// builds before splits wrote, and what a map with no split is still
/// written as, so that a node of such a build can read it.
#[derive(Serialize, Deserialize)]
struct ClusterMapV1 {
    version: u64,
    slots: Option<SlotMap>,
    nodes: BTreeMap<NodeId, String>,
    forgotten: BTreeSet<NodeId>,
    shards: BTreeMap<ShardId, ShardEntry>,
}

/// The record's format versions (see `directory`'s essay).
const RECORD_V1: u8 = 1;
const RECORD_V2: u8 = 2;

/// The map's record bytes: version 1 while no split was reserved or
/// recorded, else version 2.
pub fn encode(map: &ClusterMap) -> crate::error::Result<Vec<u8>> {
    let out = if map.routing.is_none() && map.reserved.is_empty() {
        let v1 = ClusterMapV1 {
            version: map.version,
            slots: map.slots.clone(),
            nodes: map.nodes.clone(),
            forgotten: map.forgotten.clone(),
            shards: map.shards.clone(),
        };
        postcard::to_extend(&v1, vec![RECORD_V1])
    } else {
        postcard::to_extend(map, vec![RECORD_V2])
    };
    out.map_err(|e| crate::error::Error::malformed("cluster map", e))
}

/// Reads a map record of either version.
pub fn decode(bytes: &[u8]) -> crate::error::Result<ClusterMap> {
    let bad = |e: postcard::Error| crate::error::Error::malformed("cluster map", e);
    match bytes.split_first() {
        Some((&RECORD_V1, rest)) => {
            let v1: ClusterMapV1 = postcard::from_bytes(rest).map_err(bad)?;
            Ok(ClusterMap {
                version: v1.version,
                slots: v1.slots,
                nodes: v1.nodes,
                forgotten: v1.forgotten,
                shards: v1.shards,
                routing: None,
                reserved: BTreeMap::new(),
            })
        }
        Some((&RECORD_V2, rest)) => postcard::from_bytes(rest).map_err(bad),
        Some((v, _)) => Err(crate::error::Error::malformed(
            "cluster map",
            format!("record version {v}, this build reads 1 and 2"),
        )),
        None => Err(crate::error::Error::malformed(
            "cluster map",
            "empty record",
        )),
    }
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
    /// The slot map to route by: the founding map with every recorded
    /// split (`None` before the first node registered).
    pub fn current_slots(&self) -> Option<&SlotMap> {
        self.routing.as_ref().or(self.slots.as_ref())
    }

    /// Reserves the id of `parent`'s child for a split at slot `at`: the
    /// first id neither the slot map nor a reservation names. The same
    /// request again (a retried call) gets the same id. `Err` if the split
    /// is not possible on the current map.
    pub fn reserve(&mut self, parent: ShardId, at: u16) -> std::result::Result<bool, String> {
        let Some(current) = self.current_slots() else {
            return Err("the cluster has no slot map yet".into());
        };
        if self.reserved.values().any(|r| *r == (parent, at)) {
            return Ok(false);
        }
        let next = self
            .reserved
            .keys()
            .map(|c| ShardId(c.0 + 1))
            .max()
            .unwrap_or(ShardId(0))
            .max(current.next_shard());
        current.split(parent, at, next).map_err(|e| e.to_string())?;
        self.reserved.insert(next, (parent, at));
        Ok(true)
    }

    /// The child id reserved for splitting `parent` at `at`, if any.
    pub fn reserved_child(&self, parent: ShardId, at: u16) -> Option<ShardId> {
        self.reserved
            .iter()
            .find(|(_, r)| **r == (parent, at))
            .map(|(c, _)| *c)
    }

    /// Records a split the parent's log has made: the routing map gives
    /// the child its slots. Idempotent (a split recorded already changes
    /// nothing); `Err` if no reservation matches.
    pub fn record_split(
        &mut self,
        parent: ShardId,
        at: u16,
        child: ShardId,
    ) -> std::result::Result<bool, String> {
        if self.reserved.get(&child) != Some(&(parent, at)) {
            let done = self
                .current_slots()
                .and_then(|m| m.slots(child))
                .is_some_and(|r| r.start == at && !r.is_empty());
            return if done {
                Ok(false)
            } else {
                Err(format!(
                    "no split of {parent} at slot {at} into {child} was reserved"
                ))
            };
        }
        let Some(current) = self.current_slots() else {
            return Err("the cluster has no slot map yet".into());
        };
        let next = current
            .split(parent, at, child)
            .map_err(|e| e.to_string())?;
        self.routing = Some(next);
        self.reserved.remove(&child);
        Ok(true)
    }

    /// Records a merge the parent's log has made: the routing map gives
    /// the child's slots to the parent. Idempotent.
    pub fn record_merge(
        &mut self,
        parent: ShardId,
        child: ShardId,
    ) -> std::result::Result<bool, String> {
        let Some(current) = self.current_slots() else {
            return Err("the cluster has no slot map yet".into());
        };
        if current.slots(child).is_some_and(|r| r.is_empty()) {
            return Ok(false);
        }
        let next = current.merge(parent, child).map_err(|e| e.to_string())?;
        self.routing = Some(next);
        Ok(true)
    }

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
        ClusterCommand::Restore { .. } => {
            Err("a backup's records belong to a data shard, not the cluster map".to_string())
        }
        ClusterCommand::Checkpoint => {
            Err("verification checkpoints are for data shards, not the cluster map".to_string())
        }
        ClusterCommand::ReserveSplit { parent, at } => map.reserve(*parent, *at),
        ClusterCommand::RecordSplit { parent, at, child } => map.record_split(*parent, *at, *child),
        ClusterCommand::RecordMerge { parent, child } => map.record_merge(*parent, *child),
        ClusterCommand::Split { .. }
        | ClusterCommand::Freeze { .. }
        | ClusterCommand::Merge { .. } => Err(
            "a split or a merge is made in the data shards' logs, not the cluster map".to_string(),
        ),
    }?;
    if changed {
        map.version += 1;
    }
    Ok(map.version)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use missive_engine::keys::Slot;

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
    fn splits_are_reserved_then_recorded_and_merges_recorded_once() {
        let mut m = ClusterMap::default();
        register(&mut m, 1, "a:1", 2).unwrap();
        let before = encode(&m).unwrap();
        assert_eq!(before[0], 1, "no split yet: record version 1");
        assert_eq!(decode(&before).unwrap(), m);
        // Two reservations get two ids; the same one again, the same id.
        assert_eq!(m.reserve(ShardId(1), 1000), Ok(true));
        assert_eq!(m.reserve(ShardId(2), 3000), Ok(true));
        assert_eq!(m.reserve(ShardId(1), 1000), Ok(false));
        assert_eq!(m.reserved_child(ShardId(1), 1000), Some(ShardId(3)));
        assert_eq!(m.reserved_child(ShardId(2), 3000), Some(ShardId(4)));
        assert!(m.reserve(ShardId(1), 5).is_ok(), "inside shard 1's run");
        assert!(m.reserve(ShardId(1), 3000).is_err(), "not shard 1's slot");
        // Recording needs the reservation; it is idempotent.
        assert!(m.record_split(ShardId(1), 1000, ShardId(9)).is_err());
        assert_eq!(m.record_split(ShardId(1), 1000, ShardId(3)), Ok(true));
        assert_eq!(m.record_split(ShardId(1), 1000, ShardId(3)), Ok(false));
        assert_eq!(
            m.current_slots().unwrap().shard_of_slot(Slot(1500)),
            ShardId(3)
        );
        assert_eq!(
            m.slots,
            Some(SlotMap::even(2).unwrap()),
            "the founding map stays"
        );
        let bytes = encode(&m).unwrap();
        assert_eq!(bytes[0], 2);
        assert_eq!(decode(&bytes).unwrap(), m);
        // A merge back, recorded once.
        assert_eq!(m.record_merge(ShardId(1), ShardId(3)), Ok(true));
        assert_eq!(m.record_merge(ShardId(1), ShardId(3)), Ok(false));
        assert_eq!(m.current_slots().unwrap().slots(ShardId(1)), Some(0..2048));
        assert!(m.record_merge(ShardId(2), ShardId(1)).is_ok());
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
