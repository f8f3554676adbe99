//! Missive's multi-raft runtime: one openraft group per shard, generic over
//! the replicated application ([`App`]). A group's log is a stream of the
//! node's engine log; its state machine is the node's LSM (no second WAL).
//! It knows nothing of chat: Missive's application is `missive-chat`.
//!
//! ```text
//!  write path  Node::write ─► App::shard_of ─► batcher (one entry per batch)
//!              ─► openraft ─► log_store (engine log, group commit)
//!              ─► state_machine: App::apply through record_source ─► LSM
//!              (a follower forwards once to the leader: route, transport)
//!  read path   Node::read ─► route: leader (read index) or a follower
//!              (read index from the leader, wait for apply) ─► LSM
//!  recovery    Node::start ─► log and LSM open ─► each group: log_store's
//!              vote/commit, state_machine's Applied ─► openraft re-applies
//! ```
//!
//! # Layout
//!
//! - `app` — [`App`], what an application implements; the entry payload
//!   ([`app::Batch`]) and the metadata group's commands.
//! - `error` — the one error type ([`Error`]): not-leader (with the leader's
//!   address) vs unavailable vs unknown outcome vs refused vs storage.
//! - `ids` — our ids ([`NodeId`], [`ShardId`]) and openraft's types that do
//!   not depend on the application (log id, vote, membership).
//! - `types` — the openraft instantiation ([`TypeConfig`]), generic over
//!   the application; with `ids`, the only place openraft's types are named.
//! - `codec` — how entries, votes and log pointers are stored in the log.
//! - `meta` — the runtime's own records in the LSM (a group's `Applied`
//!   position, the cluster map), byte by byte.
//! - `log_store` — **the replication write path's durable half**:
//!   openraft's log storage on the engine log (vote, committed, append with
//!   a flush callback that fires only when durable, truncate, purge).
//! - `entry_cache` — the newest entries of each shard's log, decoded, for
//!   the reads (apply, replication) that follow an append.
//! - `state_machine` — **raft apply and recovery**: apply into the LSM with
//!   no second WAL, the durable applied position, snapshots.
//! - `record_source` — what apply reads and writes through: a call's
//!   pending writes over the record cache over the LSM.
//! - `record_cache` — the records apply reads most, per shard, in memory
//!   (and why the cache cannot serve a stale value).
//! - `batcher` — concurrent writes of a shard packed into Raft entries.
//! - `route` — where a shard's reads, writes and membership changes go
//!   (here, or the shard's leader when this node does not replicate it).
//! - `snapshot` — snapshot data: a pinned LSM view, or a received file.
//! - `membership` — changing a shard's replicas (add, remove, move) and
//!   retiring a removed replica.
//! - `slots` — the slot → shard map.
//! - `placement` — where a shard's replicas are, and a requested change.
//! - `cluster_map` — the cluster map as data (node directory, slot map,
//!   placements) and the metadata group's apply rule.
//! - `directory` — the metadata group (shard 0), essay on who is the
//!   authority for what, and the task keeping each node's copy current.
//! - `identity` — the `NODE` file (a data directory's node id, cluster and
//!   shard count) and durable file replacement.
//! - `transport` — the node-to-node wire, its client and its server.
//! - `node` — a running node: start and recovery, the write and read API,
//!   the RPC dispatch.

pub mod app;
mod batcher;
pub mod cluster_map;
pub mod codec;
pub mod directory;
mod entry_cache;
pub mod error;
pub mod identity;
pub mod ids;
pub mod log_store;
pub mod membership;
pub mod meta;
pub mod node;
pub mod placement;
mod record_cache;
pub mod record_source;
mod route;
pub mod slots;
pub mod snapshot;
pub mod state_machine;
#[cfg(test)]
mod test_app;
pub mod transport;
pub mod types;

pub use app::App;
pub use error::{Error, Result};
pub use ids::{NodeId, ShardId};
pub use types::TypeConfig;
