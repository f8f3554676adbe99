//! openraft's storage on the node's engine: each group's Raft log is a
//! stream of the engine's one log, and its state machine is the engine's
//! one LSM (no second WAL).
//!
//! ```text
//!  append ─► log_store (codec, group commit) ─► entry_cache (decoded tail)
//!  apply  ─► state_machine ─► App::apply through record_source
//!            (over record_cache over the LSM) ─► one LSM batch + Applied
//!  recovery  log_store's vote/commit, state_machine's Applied
//!            ─► openraft re-applies the tail
//! ```
//!
//! # Layout
//!
//! - `codec` — how entries, votes and log pointers are stored in the log.
//! - `meta` — the runtime's own records in the LSM (a group's `Applied`
//!   position, the cluster map), byte by byte.
//! - `bulk` — large entries' bytes kept out of the log: written once into
//!   a pinned blob file of the LSM, applied as references, released with
//!   the log entries that named them.
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
//! - `snapshot` — snapshot data: a pinned LSM view, or a received file.
//! - `snapshot_receive` — a follower's incoming snapshot transfers.

pub mod bulk;
pub mod codec;
pub(crate) mod entry_cache;
pub mod log_store;
pub mod meta;
pub(crate) mod record_cache;
pub mod record_source;
pub mod snapshot;
pub(crate) mod snapshot_receive;
pub mod state_machine;
