//! The types openraft is instantiated with, and our ids.
//!
//! openraft is generic over a "type config"; everything that names an
//! openraft type goes through the aliases here, so a later move to openraft
//! 0.10 changes this file and the storage/transport adapters, not callers.

use std::fmt;
use std::marker::PhantomData;

use serde::{Deserialize, Serialize};

use crate::app::{App, Batch, BatchResponse};
use crate::snapshot::ShardSnapshot;

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

/// Missive's openraft instantiation for application `A`: entries carry a
/// [`Batch`] of `A`'s commands, the state machine answers with a
/// [`BatchResponse`], and a snapshot is a [`ShardSnapshot`] (a pinned LSM
/// view, or a received file).
///
/// A type, never a value: openraft asks it to be `Copy`, `Ord`, … which
/// are implemented here without asking the same of `A`.
pub struct TypeConfig<A>(PhantomData<fn() -> A>);

impl<A> fmt::Debug for TypeConfig<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TypeConfig")
    }
}
impl<A> Clone for TypeConfig<A> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<A> Copy for TypeConfig<A> {}
impl<A> Default for TypeConfig<A> {
    fn default() -> Self {
        TypeConfig(PhantomData)
    }
}
impl<A> PartialEq for TypeConfig<A> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<A> Eq for TypeConfig<A> {}
impl<A> PartialOrd for TypeConfig<A> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<A> Ord for TypeConfig<A> {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl<A: App> openraft::RaftTypeConfig for TypeConfig<A> {
    type D = Batch<A>;
    type R = BatchResponse<A>;
    type NodeId = NodeId;
    type Node = NodeAddr;
    type Entry = openraft::Entry<TypeConfig<A>>;
    type SnapshotData = ShardSnapshot;
    type AsyncRuntime = openraft::TokioRuntime;
    type Responder = openraft::impls::OneshotResponder<TypeConfig<A>>;
}

/// A log entry.
pub type Entry<A> = openraft::Entry<TypeConfig<A>>;
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
/// One Raft group's handle.
pub type Raft<A> = openraft::Raft<TypeConfig<A>>;
