//! The write path above the log: how a command reaches its shard's leader
//! and rides in a Raft entry with others.
//!
//! ```text
//!  Node::write ─► App::shard_of ─► forward: here (batcher) or the leader
//!     ─► batcher: one Raft entry per batch ─► openraft ─► storage
//! ```
//!
//! # Layout
//!
//! - `forward` — where a write goes and when it may be retried.
//! - `batcher` — concurrent writes of a shard packed into Raft entries.

pub(crate) mod batcher;
mod forward;
