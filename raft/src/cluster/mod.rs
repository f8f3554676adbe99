//! Where shards live and how that changes: the slot map, the metadata
//! group and its cluster map, each shard's placement, replica changes and
//! retirement, routing to the shards this node does not host, and the
//! data directory's identity. "Where does shard X live, and how does a
//! replica move" is answered in this folder.
//!
//! # Layout
//!
//! - `slots` — the slot → shard map.
//! - `balance` — each group's preferred leader, and handing leadership
//!   back to it.
//! - `placement` — where a shard's replicas are, and a requested change.
//! - `cluster_map` — the cluster map as data (node directory, slot map,
//!   placements) and the metadata group's apply rule.
//! - `directory` — the metadata group (shard 0), essay on who is the
//!   authority for what, and the task keeping each node's copy current.
//! - `locate` — routing: finding a shard's replicas from here.
//! - `locations` — what routing remembers (seeds, located placements).
//! - `membership` — changing a shard's replicas (add, remove, move) at its
//!   leader wherever that is, and retiring a removed replica.
//! - `merge` — online shard merge, split's reverse: the freeze in the
//!   child's log, the merge in the parent's, the child closed (essay).
//! - `split` — online shard split: the cut in the parent's log, the
//!   child group opened on the same replicas, the map's routing (essay).
//! - `retired` — the `RETIRED` file: replicas this node no longer serves.
//! - `wipe` — a removed replica's data, log and applied state deleted from
//!   this node, and its group started over empty.
//! - `identity` — the `NODE` file (a data directory's node id, cluster and
//!   shard count) and durable file replacement.

pub mod balance;
pub mod cluster_map;
pub mod directory;
pub mod identity;
mod locate;
pub(crate) mod locations;
pub mod membership;
pub mod merge;
pub mod placement;
pub mod retired;
pub mod slots;
pub mod split;
pub(crate) mod wipe;
