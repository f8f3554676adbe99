//! The types openraft is instantiated with (generic over the application),
//! re-exporting our ids (`ids`).
//!
//! openraft is generic over a "type config"; everything that names an
//! openraft type goes through the aliases here and in `ids`, so a later move
//! to openraft 0.10 changes these files and the storage/transport adapters,
//! not callers.

use std::fmt;
use std::marker::PhantomData;

use crate::app::{App, Batch, BatchResponse};
pub use crate::ids::{
    LogId, NodeAddr, NodeId, ShardId, SnapshotMeta, StorageError, StoredMembership, Vote,
};
use crate::storage::snapshot::ShardSnapshot;

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
/// One Raft group's handle.
pub type Raft<A> = openraft::Raft<TypeConfig<A>>;
