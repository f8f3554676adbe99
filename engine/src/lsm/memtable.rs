//! The in-memory write buffer: a lock-free skiplist (crossbeam-skiplist) of
//! versions ordered by (key ascending, sequence number descending), so the
//! newest version of a key visible at a snapshot is the first entry at or
//! after (key, snapshot).
//!
//! Applying a batch allocates exactly the key and the value of each entry;
//! readers never block writers or each other.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Mutex;

use crossbeam_skiplist::SkipMap;

use crate::log::StreamId;
use crate::lsm::SeqNo;

/// A version's key: user key ascending, then sequence number descending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemKey {
    pub key: Box<[u8]>,
    pub seq: SeqNo,
}

impl Ord for MemKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key
            .cmp(&other.key)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for MemKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A version's value; `None` is a tombstone.
pub(crate) type MemValue = Option<Box<[u8]>>;

/// One memtable.
#[derive(Debug, Default)]
pub(crate) struct Memtable {
    pub map: SkipMap<MemKey, MemValue>,
    /// Approximate bytes held (keys, values, per-entry overhead).
    bytes: AtomicUsize,
    /// Highest sequence number inserted.
    max_seq: AtomicU64,
    /// Per log stream, the highest log index whose batch is in here.
    positions: Mutex<HashMap<StreamId, u64>>,
}

/// Per-entry bookkeeping of the skiplist, for the size estimate.
const ENTRY_OVERHEAD: usize = 64;

impl Memtable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&self, key: &[u8], seq: SeqNo, value: Option<&[u8]>) {
        let size = key.len() + value.map_or(0, <[u8]>::len) + ENTRY_OVERHEAD;
        self.map.insert(
            MemKey {
                key: key.into(),
                seq,
            },
            value.map(Into::into),
        );
        self.bytes.fetch_add(size, AtomicOrdering::Relaxed);
        self.max_seq.fetch_max(seq.0, AtomicOrdering::Relaxed);
    }

    pub fn note_position(&self, stream: StreamId, index: u64) {
        let mut p = self
            .positions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let e = p.entry(stream).or_insert(index);
        *e = (*e).max(index);
    }

    pub fn positions(&self) -> HashMap<StreamId, u64> {
        self.positions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn approximate_bytes(&self) -> usize {
        self.bytes.load(AtomicOrdering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The newest version of `key` at `snapshot`: `Some(None)` for a
    /// tombstone, `None` if this memtable has no version visible there.
    pub fn get(&self, key: &[u8], snapshot: SeqNo) -> Option<Option<Vec<u8>>> {
        let probe = MemKey {
            key: key.into(),
            seq: snapshot,
        };
        let e = self.map.lower_bound(Bound::Included(&probe))?;
        if &*e.key().key != key {
            return None;
        }
        Some(e.value().as_deref().map(<[u8]>::to_vec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_reads_pick_the_right_version() {
        let m = Memtable::new();
        m.insert(b"a", SeqNo(1), Some(b"v1"));
        m.insert(b"a", SeqNo(3), Some(b"v3"));
        m.insert(b"a", SeqNo(5), None);
        m.insert(b"b", SeqNo(2), Some(b"b2"));
        assert_eq!(m.get(b"a", SeqNo(0)), None);
        assert_eq!(m.get(b"a", SeqNo(2)), Some(Some(b"v1".to_vec())));
        assert_eq!(m.get(b"a", SeqNo(4)), Some(Some(b"v3".to_vec())));
        assert_eq!(m.get(b"a", SeqNo(9)), Some(None));
        assert_eq!(m.get(b"ab", SeqNo(9)), None);
        assert_eq!(m.get(b"b", SeqNo(9)), Some(Some(b"b2".to_vec())));
    }
}
