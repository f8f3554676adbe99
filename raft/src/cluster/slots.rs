//! Slots → shards.
//!
//! Data is sharded by a fixed space of [`SLOTS`] hash slots
//! (`slot = xxh3(conversation_id) % 4096`, see `missive_engine::keys`). A
//! shard owns a contiguous run of slots, so its data is one key range per
//! keyspace — a snapshot or a move is a range scan, not a filter.
//!
//! The map is versioned: a node that receives a request for a slot it no
//! longer serves answers with its version, and the caller refreshes.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use missive_engine::keys::{prefix_successor, ConversationId, Keyspace, Slot, SLOTS};

use crate::error::{Error, Result};
use crate::ids::ShardId;

/// The engine's keyspaces whose keys start with a slot: a data shard's
/// data is one range of each (the `RaftMeta` keyspace is no shard's data).
pub const SLOTTED_KEYSPACES: [Keyspace; 8] = [
    Keyspace::Message,
    Keyspace::Conversation,
    Keyspace::User,
    Keyspace::Receipt,
    Keyspace::Outbox,
    Keyspace::Media,
    Keyspace::Push,
    Keyspace::PushDead,
];

/// Which shard owns which slots.
///
/// A cluster starts from [`SlotMap::even`]: shard `s` of `S` owns the
/// `s`-th of `S` equal runs. An online split ([`SlotMap::split`]) gives the
/// upper part of a shard's run to a new shard, numbered after every shard
/// the map has named, so ids are never reused and the runs of shards are no
/// longer in id order.
///
/// # Encoding (frozen: nodes' registrations carry it in metadata logs)
///
/// postcard of `{ version: varint, ranges: [ {start: u16, end: u16} ] }`:
/// `ranges[i]` is the slot run of `ShardId(i + 1)`. The non-empty runs
/// cover `0..SLOTS` without overlap; an empty run is a shard id that owns
/// no slots (reserved for a split that was refused, or merged away).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotMap {
    /// 1 for an even map; bumped by every split.
    pub version: u64,
    /// `ranges[i]` is the slot range of `ShardId(i + 1)` (see above).
    ranges: Vec<Range<u16>>,
}

impl SlotMap {
    /// `shards` shards (1..=shards) of as-equal-as-possible slot ranges.
    pub fn even(shards: u32) -> Result<SlotMap> {
        if shards == 0 || shards > u32::from(SLOTS) {
            return Err(Error::InvalidArgument(format!(
                "a cluster has between 1 and {SLOTS} shards, not {shards}"
            )));
        }
        let n = u64::from(shards);
        let ranges = (0..n)
            .map(|i| {
                let lo = (i * u64::from(SLOTS) / n) as u16;
                let hi = ((i + 1) * u64::from(SLOTS) / n) as u16;
                lo..hi
            })
            .collect();
        Ok(SlotMap { version: 1, ranges })
    }

    /// This map with `parent`'s slots from `at` on given to `child`, which
    /// must be the next unnamed id ([`SlotMap::next_shard`]) or beyond it
    /// (ids skipped own nothing). Refused unless `parent` owns `at` and a
    /// slot below it.
    pub fn split(&self, parent: ShardId, at: u16, child: ShardId) -> Result<SlotMap> {
        let Some(run) = self.slots(parent).filter(|r| !r.is_empty()) else {
            return Err(Error::InvalidArgument(format!("{parent} owns no slots")));
        };
        if at <= run.start || at >= run.end {
            return Err(Error::InvalidArgument(format!(
                "a split of {parent} (slots {}..{}) must fall strictly inside its run, not at {at}",
                run.start, run.end
            )));
        }
        if child < self.next_shard() {
            return Err(Error::InvalidArgument(format!(
                "{child} is already named by the slot map"
            )));
        }
        let mut ranges = self.ranges.clone();
        ranges.resize(child.0 as usize, 0..0);
        if let Some(r) = ranges.get_mut(parent.0 as usize - 1) {
            r.end = at;
        }
        if let Some(r) = ranges.get_mut(child.0 as usize - 1) {
            *r = at..run.end;
        }
        Ok(SlotMap {
            version: self.version + 1,
            ranges,
        })
    }

    /// This map with `child`'s slots given back to `parent`, whose run
    /// they must adjoin; `child` then owns nothing (its id is not reused).
    pub fn merge(&self, parent: ShardId, child: ShardId) -> Result<SlotMap> {
        let owned = |s: ShardId| self.slots(s).filter(|r| !r.is_empty());
        let (Some(p), Some(c)) = (owned(parent), owned(child)) else {
            return Err(Error::InvalidArgument(format!(
                "{parent} and {child} must both own slots to merge"
            )));
        };
        let union = if p.end == c.start {
            p.start..c.end
        } else if c.end == p.start {
            c.start..p.end
        } else {
            return Err(Error::InvalidArgument(format!(
                "{child} (slots {}..{}) does not adjoin {parent} (slots {}..{})",
                c.start, c.end, p.start, p.end
            )));
        };
        let mut ranges = self.ranges.clone();
        ranges[parent.0 as usize - 1] = union;
        ranges[child.0 as usize - 1] = 0..0;
        Ok(SlotMap {
            version: self.version + 1,
            ranges,
        })
    }

    /// The first shard id the map has not named: where a split's child
    /// is numbered.
    pub fn next_shard(&self) -> ShardId {
        ShardId(self.ranges.len() as u32 + 1)
    }

    /// How many data shards own slots.
    pub fn shard_count(&self) -> u32 {
        self.shards().count() as u32
    }

    /// The data shards that own slots, in id order (not the metadata
    /// group).
    pub fn shards(&self) -> impl Iterator<Item = ShardId> + '_ {
        self.ranges
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.is_empty())
            .map(|(i, _)| ShardId(i as u32 + 1))
    }

    /// Every Raft group of the cluster: the metadata group
    /// ([`ShardId::DIRECTORY`]), then the data shards.
    pub fn groups(&self) -> impl Iterator<Item = ShardId> + '_ {
        std::iter::once(ShardId::DIRECTORY).chain(self.shards())
    }

    /// The shard owning `slot`. A few dozen runs at most: a scan.
    pub fn shard_of_slot(&self, slot: Slot) -> ShardId {
        let i = self
            .ranges
            .iter()
            .position(|r| r.contains(&slot.0))
            .unwrap_or(0);
        ShardId(i as u32 + 1)
    }

    /// The shard owning a conversation.
    pub fn shard_of(&self, conv: ConversationId) -> ShardId {
        self.shard_of_slot(Slot::of_conversation(conv))
    }

    /// The shard owning a user's own data.
    pub fn shard_of_user(&self, user: u64) -> ShardId {
        self.shard_of_slot(Slot::of_user(user))
    }

    /// The slots of a shard (empty if it owns none).
    pub fn slots(&self, shard: ShardId) -> Option<Range<u16>> {
        let i = (shard.0 as usize).checked_sub(1)?;
        self.ranges.get(i).cloned()
    }

    /// The key ranges `[lo, hi)` holding a shard's data (for the metadata
    /// group, the cluster map's).
    pub fn key_ranges(&self, shard: ShardId) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        if shard.is_directory() {
            return vec![crate::storage::meta::directory_range()];
        }
        match self.slots(shard) {
            Some(slots) => slot_key_ranges(&slots),
            None => Vec::new(),
        }
    }
}

/// The key ranges `[lo, hi)` of a run of slots: one per slotted keyspace
/// (none for an empty run).
pub fn slot_key_ranges(slots: &Range<u16>) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    if slots.is_empty() {
        return Vec::new();
    }
    SLOTTED_KEYSPACES
        .iter()
        .map(|ks| {
            let tag = *ks as u8;
            let mut lo = vec![tag];
            lo.extend_from_slice(&slots.start.to_be_bytes());
            let hi = if slots.end >= SLOTS {
                prefix_successor(&[tag])
            } else {
                let mut h = vec![tag];
                h.extend_from_slice(&slots.end.to_be_bytes());
                Some(h)
            };
            (lo, hi)
        })
        .collect()
}

impl SlotMap {
    /// [`SlotMap::key_ranges`] of a data shard, only those of `keyspaces`.
    pub fn key_ranges_of(
        &self,
        shard: ShardId,
        keyspaces: &[Keyspace],
    ) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        self.key_ranges(shard)
            .into_iter()
            .filter(|(lo, _)| {
                !shard.is_directory() && keyspaces.iter().any(|ks| lo.first() == Some(&(*ks as u8)))
            })
            .collect()
    }
}

/// The slot a key of one of the [`SLOTTED_KEYSPACES`] lies in (its tag
/// byte, then the slot as a big-endian u16); `None` for any other key.
pub fn slot_of_key(key: &[u8]) -> Option<Slot> {
    let (&tag, rest) = key.split_first()?;
    if !SLOTTED_KEYSPACES.iter().any(|ks| *ks as u8 == tag) {
        return None;
    }
    let slot = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]);
    (slot < SLOTS).then_some(Slot(slot))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn even_map_covers_every_slot_once() {
        for n in [1, 2, 3, 7, 64, 4096] {
            let m = SlotMap::even(n).unwrap();
            let mut next = 0u16;
            for s in m.shards() {
                let r = m.slots(s).unwrap();
                assert_eq!(r.start, next);
                assert!(r.end > r.start);
                for slot in [r.start, r.end - 1] {
                    assert_eq!(m.shard_of_slot(Slot(slot)), s);
                }
                next = r.end;
            }
            assert_eq!(next, SLOTS);
        }
        assert!(SlotMap::even(0).is_err());
        assert!(SlotMap::even(4097).is_err());
    }

    #[test]
    fn a_split_and_its_merge_keep_every_slot_owned_once() {
        let m = SlotMap::even(2).unwrap();
        // The child must be a new id, the point strictly inside the run.
        assert!(m.split(ShardId(1), 1024, ShardId(2)).is_err());
        assert!(m.split(ShardId(1), 0, ShardId(3)).is_err());
        assert!(m.split(ShardId(1), 2048, ShardId(3)).is_err());
        let s = m.split(ShardId(1), 1000, ShardId(3)).unwrap();
        assert_eq!(s.version, 2);
        assert_eq!(s.slots(ShardId(1)), Some(0..1000));
        assert_eq!(s.slots(ShardId(3)), Some(1000..2048));
        assert_eq!(s.shard_of_slot(Slot(999)), ShardId(1));
        assert_eq!(s.shard_of_slot(Slot(1000)), ShardId(3));
        assert_eq!(s.shard_of_slot(Slot(2048)), ShardId(2));
        assert_eq!(s.shards().collect::<Vec<_>>(), [1, 2, 3].map(ShardId));
        assert_eq!(s.next_shard(), ShardId(4));
        // Ids skipped by a refused reservation own nothing.
        let t = s.split(ShardId(2), 3000, ShardId(6)).unwrap();
        assert_eq!(t.slots(ShardId(5)), Some(0..0));
        assert_eq!(t.shard_count(), 4);
        // Merging needs adjoining runs; it empties the child for good.
        assert!(t.merge(ShardId(1), ShardId(6)).is_err());
        let u = t.merge(ShardId(3), ShardId(1)).unwrap();
        assert_eq!(u.slots(ShardId(3)), Some(0..2048));
        assert_eq!(u.slots(ShardId(1)), Some(0..0));
        assert_eq!(u.shards().collect::<Vec<_>>(), [2, 3, 6].map(ShardId));
        assert_eq!(u.next_shard(), ShardId(7));
        for slot in [0, 2047, 2048, 2999, 3000, 4095] {
            let owner = u.shard_of_slot(Slot(slot));
            assert!(u.slots(owner).unwrap().contains(&slot), "slot {slot}");
        }
        // The encoding is the founding map's shape.
        let bytes = postcard::to_allocvec(&u).unwrap();
        assert_eq!(postcard::from_bytes::<SlotMap>(&bytes).unwrap(), u);
    }

    #[test]
    fn key_ranges_hold_exactly_the_shards_keys() {
        let m = SlotMap::even(3).unwrap();
        for c in 0..500u64 {
            let conv = ConversationId(c);
            let key = missive_engine::keys::message_key(conv, missive_engine::keys::Timestamp(7))
                .to_vec();
            let owner = m.shard_of(conv);
            for s in m.shards() {
                let inside = m.key_ranges(s).iter().any(|(lo, hi)| {
                    key.as_slice() >= lo.as_slice()
                        && hi.as_ref().is_none_or(|h| key.as_slice() < h.as_slice())
                });
                assert_eq!(inside, s == owner, "conv {c} shard {s}");
            }
        }
    }

    #[test]
    fn a_keys_slot_names_its_shard_under_any_shard_count() {
        for c in 0..500u64 {
            let conv = ConversationId(c);
            let key = missive_engine::keys::message_key(conv, missive_engine::keys::Timestamp(7));
            let slot = slot_of_key(&key).unwrap();
            assert_eq!(slot, Slot::of_conversation(conv));
            for n in [1, 3, 8] {
                let m = SlotMap::even(n).unwrap();
                assert_eq!(m.shard_of_slot(slot), m.shard_of(conv));
            }
        }
        // The metadata group's keys and cut-off keys have no slot.
        assert_eq!(
            slot_of_key(&crate::storage::meta::directory_range().0),
            None
        );
        assert_eq!(slot_of_key(&[Keyspace::Message as u8, 0]), None);
        assert_eq!(slot_of_key(&[]), None);
    }
}
