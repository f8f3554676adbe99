//! What a node remembers about where to find the shards it does not host:
//! the seed nodes it was given (bootstrap or join list) and the placement
//! each shard had when it last asked. Routing (`cluster::locate`) fills it
//! and corrects it; nothing here is durable — a restarted node asks again.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::cluster::placement::Placement;
use crate::ids::{NodeId, ShardId};

/// Seeds and located placements. See the [module documentation](self).
#[derive(Debug, Default)]
pub(crate) struct Locations {
    /// Nodes to ask where a shard lives (the bootstrap or join list).
    seeds: Mutex<BTreeMap<NodeId, String>>,
    /// Where the shards this node does not host live, as last located.
    placements: Mutex<HashMap<ShardId, Placement>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Locations {
    /// The placement of `shard` as last located, if any.
    pub(crate) fn placement(&self, shard: ShardId) -> Option<Placement> {
        lock(&self.placements).get(&shard).cloned()
    }

    /// Remembers a placement just located.
    pub(crate) fn remember(&self, p: Placement) {
        lock(&self.placements).insert(p.shard, p);
    }

    /// Forgets where `shard` is (this node hosts it, or must ask again).
    pub(crate) fn forget(&self, shard: ShardId) {
        lock(&self.placements).remove(&shard);
    }

    /// Records that `leader` (at `addr`) leads `shard`, as a NotLeader
    /// answer said; a shard never located stays unknown.
    pub(crate) fn learn_leader(&self, shard: ShardId, leader: NodeId, addr: String) {
        if let Some(p) = lock(&self.placements).get_mut(&shard) {
            p.leader = Some(leader);
            p.voters.entry(leader).or_insert(addr);
        }
    }

    /// The seed nodes.
    pub(crate) fn seeds(&self) -> BTreeMap<NodeId, String> {
        lock(&self.seeds).clone()
    }

    /// Adds seed nodes (a later address for the same id wins).
    pub(crate) fn add_seeds(&self, seeds: &BTreeMap<NodeId, String>) {
        lock(&self.seeds).extend(seeds.iter().map(|(i, a)| (*i, a.clone())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_learned_leader_updates_a_located_shard_only() {
        let l = Locations::default();
        l.learn_leader(ShardId(2), 7, "a:1".into());
        assert!(l.placement(ShardId(2)).is_none());
        let p = Placement {
            shard: ShardId(2),
            voters: BTreeMap::from([(5, "b:1".to_string())]),
            learners: BTreeMap::new(),
            leader: Some(5),
            config_index: 3,
            changing: false,
        };
        l.remember(p);
        l.learn_leader(ShardId(2), 7, "a:1".into());
        let p = l.placement(ShardId(2)).expect("remembered");
        assert_eq!(p.leader, Some(7));
        assert_eq!(p.voters.get(&7).map(String::as_str), Some("a:1"));
        l.forget(ShardId(2));
        assert!(l.placement(ShardId(2)).is_none());
    }
}
