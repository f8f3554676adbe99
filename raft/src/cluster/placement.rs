//! Where a shard's replicas are, and how an operator asks to change that:
//! the data that `membership` acts on, `directory` records and the
//! transport carries (`Rpc::Locate`, `Rpc::ChangeReplicas`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, ShardId};

/// A shard's replicas as one node sees them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The shard.
    pub shard: ShardId,
    /// Voters: id → transport address.
    pub voters: BTreeMap<NodeId, String>,
    /// Learners (catching up, not yet voting).
    pub learners: BTreeMap<NodeId, String>,
    /// The leader, if known.
    pub leader: Option<NodeId>,
    /// The log index of the configuration this view is from (0: none yet).
    pub config_index: u64,
    /// True while a change is half done (a joint configuration).
    pub changing: bool,
}

/// A change of a shard's replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// Make `node` (reachable at `addr`) a voting replica.
    Add {
        /// The node.
        node: NodeId,
        /// Its transport address.
        addr: String,
    },
    /// Stop `node` being a replica.
    Remove {
        /// The node.
        node: NodeId,
    },
    /// Replace the replica on `from` with one on `to` (at `addr`).
    Move {
        /// The replica to drop.
        from: NodeId,
        /// The node to place it on.
        to: NodeId,
        /// `to`'s transport address.
        addr: String,
    },
}
