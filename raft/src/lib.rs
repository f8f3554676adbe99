//! Missive's replication: one openraft group per shard. A group's log is a
//! stream of the node's engine log; its state machine is the node's LSM.
//!
//! # Layout
//!
//! - `error` — the one error type ([`Error`]): not-leader (with the leader's
//!   address) vs unavailable vs unknown outcome vs rejected vs storage.
//! - `types` — the openraft instantiation ([`TypeConfig`]) and our ids; the
//!   only place openraft's generic types are named.
//! - `command` — the state machine's commands, outcomes and the batch a
//!   Raft entry carries.
//! - `records` — what the state machine stores in the LSM, byte by byte.
//! - `codec` — how entries, votes and log pointers are stored in the log.
//! - `log_store` — **the replication write path's durable half**:
//!   openraft's log storage on the engine log (vote, committed, append with
//!   a flush callback that fires only when durable, truncate, purge).
//! - `entry_cache` — the newest entries of each shard's log, decoded, for
//!   the reads (apply, replication) that follow an append.
//! - `state_machine` — **raft apply and recovery**: apply into the LSM with
//!   no second WAL, the durable applied position, snapshots.
//! - `apply` — the deterministic command executor.
//! - `record_cache` — the records apply reads most, per shard, in memory
//!   (and why the cache cannot serve a stale value).
//! - `fanout` — the worker moving conversation events from a shard's
//!   durable outbox into members' inboxes on their user shards.
//! - `outbox_feed` — what apply just wrote to an outbox, handed to the
//!   fan-out worker in memory (a scan of the outbox is the fallback).
//! - `route` — where a shard's reads, writes and membership changes go
//!   (here, or the shard's leader when this node does not replicate it).
//! - `snapshot` — snapshot data: a pinned LSM view, or a received file.
//! - `membership` — changing a shard's replicas (add, remove, move) and
//!   retiring a removed replica.
//! - `slots` — the slot → shard map.
//! - `directory` — the metadata group (shard 0): the cluster map (node
//!   directory, slot map, placements) and the task keeping each node's copy
//!   current.

pub mod apply;
mod batcher;
pub mod codec;
pub mod command;
pub mod directory;
mod entry_cache;
pub mod error;
mod fanout;
pub mod log_store;
pub mod membership;
pub mod node;
pub mod outbox_feed;
mod record_cache;
pub mod records;
mod route;
pub mod slots;
pub mod snapshot;
pub mod state_machine;
pub mod transport;
pub mod types;

pub use error::{Error, Result};
pub use types::{NodeId, ShardId, TypeConfig};
