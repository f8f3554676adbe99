//! The runtime's own records in the LSM, byte by byte (keyspace
//! `RaftMeta`, 0x50, which no slot owns):
//!
//! ```text
//! applied       0x50 shard:u32 0x01   → Applied (every group)
//! cluster map   0x50 0:u32 0x02       → ClusterMap (the metadata group's
//!                                       one record; see `directory`)
//! owner         0x50 shard:u32 0x03   → Owner (a data shard's slots, once
//!                                       a split has moved them; see
//!                                       `cluster::split`)
//! frozen        0x50 shard:u32 0x04   → Frozen (a shard being merged into
//!                                       another; see `cluster::merge`)
//! ```
//!
//! Values are `[version: u8 = 1][postcard(struct)]` (see `codec`). All
//! integers in keys are big-endian, so byte order is numeric order.

use serde::{Deserialize, Serialize};

use missive_engine::keys::Keyspace;

use crate::ids::{LogId, ShardId, StoredMembership};

/// The state machine's own position, written with every applied batch so
/// that what the LSM holds after a restart (its flushed state) says exactly
/// which log entry it reflects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The last applied log id.
    pub last_applied: Option<LogId>,
    /// The last applied membership.
    pub membership: StoredMembership,
}

/// Key of a shard's applied state.
pub fn applied_key(shard: ShardId) -> Vec<u8> {
    let mut k = Vec::with_capacity(6);
    k.push(Keyspace::RaftMeta as u8);
    k.extend_from_slice(&shard.0.to_be_bytes());
    k.push(0x01);
    k
}

/// The slots a data shard owns, written by the split that changed them
/// (for the parent and the child, in the parent's apply). A shard with no
/// owner record owns its run of the founding even map.
///
/// Value: `[1][postcard { start: u16 varint, end: u16 varint }]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The slots, `[start, end)`.
    pub slots: std::ops::Range<u16>,
}

/// Key of a data shard's owner record.
pub fn owner_key(shard: ShardId) -> Vec<u8> {
    let mut k = applied_key(shard);
    k[5] = 0x03;
    k
}

/// A shard frozen to be merged into `into`: it applies nothing after
/// the entry at `index` (`cluster::merge`).
///
/// Value: `[1][postcard { into: u32 varint, index: u64 varint }]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frozen {
    /// The shard that takes its slots.
    pub into: ShardId,
    /// The log index of the freeze.
    pub index: u64,
}

/// Key of a data shard's freeze record.
pub fn frozen_key(shard: ShardId) -> Vec<u8> {
    let mut k = applied_key(shard);
    k[5] = 0x04;
    k
}

/// The key range of a shard's owner and freeze records (a snapshot
/// carries them, before its data).
pub fn owner_range(shard: ShardId) -> (Vec<u8>, Option<Vec<u8>>) {
    let lo = owner_key(shard);
    let mut hi = lo.clone();
    hi[5] = 0x05;
    (lo, Some(hi))
}

/// Key of the cluster map, the metadata group's one record (see
/// `directory`). It sorts right after shard 0's `Applied` record.
pub fn cluster_map_key() -> Vec<u8> {
    let mut k = applied_key(ShardId::DIRECTORY);
    k[5] = 0x02;
    k
}

/// The key range holding the metadata group's data (the cluster map):
/// what its snapshots carry and its installs replace.
pub fn directory_range() -> (Vec<u8>, Option<Vec<u8>>) {
    let lo = cluster_map_key();
    let mut hi = lo.clone();
    hi[5] = 0x03;
    (lo, Some(hi))
}
