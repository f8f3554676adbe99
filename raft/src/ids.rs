//! Our ids and the openraft types that do not depend on the application:
//! the leaves every other module of the runtime names. (`types` holds the
//! generic instantiation.)

use std::fmt;

use serde::{Deserialize, Serialize};

/// A node of the cluster. Node ids are chosen by the operator, never 0.
pub type NodeId = u64;

/// What the cluster knows about a node: where its transport listens.
pub type NodeAddr = openraft::BasicNode;

/// A shard: one Raft group. Its log is stream `shard` of the node's log.
/// Shard 0 is the metadata group ([`ShardId::DIRECTORY`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShardId(pub u32);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard-{}", self.0)
    }
}

impl ShardId {
    /// The metadata group: not a data shard, it replicates the cluster map
    /// (node directory, slot map, where each shard's replicas are; see
    /// `directory`). Data shards are numbered from 1.
    pub const DIRECTORY: ShardId = ShardId(0);

    /// Whether this is the metadata group rather than a data shard.
    pub fn is_directory(self) -> bool {
        self == ShardId::DIRECTORY
    }

    /// The stream of the node's log that holds this shard's Raft log.
    pub fn stream(self) -> missive_engine::log::StreamId {
        missive_engine::log::StreamId(u64::from(self.0))
    }
}

/// A log id (term, leader, index).
pub type LogId = openraft::LogId<NodeId>;
/// A vote.
pub type Vote = openraft::Vote<NodeId>;
/// A membership as stored with the log id that introduced it.
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeAddr>;
/// A snapshot's metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeAddr>;
/// openraft's storage error.
pub type StorageError = openraft::StorageError<NodeId>;
