//! Missive's multi-raft runtime: one openraft group per shard, generic over
//! the replicated application ([`App`]). A group's log is a stream of the
//! node's engine log; its state machine is the node's LSM (no second WAL).
//! It knows nothing of chat: Missive's application is `missive-chat`.
//!
//! ```text
//!  write path  Node::write ─► App::shard_of ─► batcher (one entry per batch)
//!              ─► openraft ─► log_store (engine log, group commit;
//!                 a large entry's bulk bytes to a pinned blob file: bulk)
//!              ─► state_machine: App::apply through record_source ─► LSM
//!              (a follower forwards once to the leader: write::forward, transport)
//!  read path   Node::read ─► read: leader (read index) or a follower
//!              (read index from the leader, wait for apply) ─► LSM
//!  recovery    Node::start ─► log and LSM open ─► each group: log_store's
//!              vote/commit (and its tail whose bulk bytes a crash lost,
//!              dropped), state_machine's Applied ─► openraft re-applies
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
//! - `storage/` — openraft's storage on the engine: the log store (and
//!   `bulk`, where large entries' bytes are written once), the state
//!   machine (**raft apply and recovery**), snapshots, the records apply
//!   reads through.
//! - `write/` — **the write path** above the log: forwarding to the leader
//!   and the batcher.
//! - `read/` — **the read path**: local or routed reads, the read index
//!   and the stale gate.
//! - `cluster/` — where shards live and how that changes: slots, the
//!   metadata group and cluster map, placement, replica changes,
//!   retirement, routing, the `NODE` file.
//! - `transport/` — the node-to-node wire, its client, its server and the
//!   dispatch of each call.
//! - `backup` — a consistent online copy of a shard (a pinned LSM view at
//!   an applied position, streamed in chunks) and restoring one through
//!   Raft into a cluster of any shape.
//! - `verify` — comparing a shard's replicas at one log position (a
//!   checkpoint entry, a pinned view on each, their checksums).
//! - `scrub` — making what the replicas no longer hold leave this node's
//!   disk: snapshot, purge, roll the log, compact (erasure).
//! - `log_budget` — keeping the node's log within its byte budget: the
//!   groups holding the oldest segment snapshot and purge early.
//! - `group` — opening a group's Raft on the node's storage (at start, and
//!   again for a replica wiped after its removal).
//! - `shared` — the state every path of a running node shares.
//! - `node` — the façade: [`node::Node`]'s start, API and shutdown.

pub mod app;
pub mod backup;
pub mod cluster;
pub mod error;
mod group;
pub mod ids;
mod log_budget;
pub mod node;
mod read;
pub mod scrub;
mod shared;
pub mod storage;
#[cfg(test)]
mod test_app;
pub mod transport;
pub mod types;
pub mod verify;
mod write;

pub use app::App;
pub use error::{Error, Result};
pub use ids::{NodeId, ShardId};
pub use types::TypeConfig;
