//! The in-memory write buffer: a lock-free skiplist (crossbeam-skiplist) of
//! versions ordered by (key ascending, sequence number descending), so the
//! newest version of a key visible at a snapshot is the first entry at or
//! after (key, snapshot).
//!
//! Applying a batch allocates one buffer (key then value) per entry, plus
//! the skiplist's node;
//! readers never block writers or each other.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Mutex;

use crossbeam_skiplist::SkipMap;

use crate::log::StreamId;
use crate::lsm::{key_word, SeqNo};

/// One version: its key and value in one allocation, ordered by user key
/// ascending, then sequence number descending.
///
/// `head`, `head2` and `head3` cache the key's bytes 0..8, 8..16 and 16..24
/// (big-endian, zero-padded) so that comparisons in the skiplist are integer
/// compares that never leave the node: keys differ in their first eight
/// bytes unless they share a keyspace and most of an id, the records of one
/// conversation or user (heads, outbox, receipts, inbox) differ within the
/// next eight, and two messages of one conversation (19-byte keys) differ in
/// the last three. (Profiles: `memcmp` under the skiplist's search was 5 %
/// of the e2e server's CPU with `head` alone, and 6.5 % of the engine
/// ingest's writer with two words — each call also a cache miss on the
/// key's buffer.) Zero padding keeps the order: where two padded words
/// differ after equal earlier words, the keys differ at that byte or one
/// ended there (and so is the smaller). Equal words over two keys of at
/// most 24 bytes make the shorter a prefix of the longer, so the lengths
/// decide; longer keys fall through to the bytes themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemKey {
    head: u64,
    head2: u64,
    head3: u64,
    pub seq: SeqNo,
    key_len: u32,
    tombstone: bool,
    /// The key, then the value (empty for a tombstone).
    buf: Box<[u8]>,
}

impl MemKey {
    /// A version (`value` `None`: a tombstone).
    pub fn new(key: &[u8], seq: SeqNo, value: Option<&[u8]>) -> Self {
        let v = value.unwrap_or_default();
        let mut buf = Vec::with_capacity(key.len() + v.len());
        buf.extend_from_slice(key);
        buf.extend_from_slice(v);
        MemKey {
            head: key_word(key, 0),
            head2: key_word(key, 8),
            head3: key_word(key, 16),
            seq,
            // Keys are bounded far below 4 GiB by the log's entry limit.
            key_len: u32::try_from(key.len()).unwrap_or(u32::MAX),
            tombstone: value.is_none(),
            buf: buf.into_boxed_slice(),
        }
    }

    /// A search key: sorts before every version of `key` with a sequence
    /// number ≤ `seq`.
    pub fn probe(key: &[u8], seq: SeqNo) -> Self {
        Self::new(key, seq, Some(&[]))
    }

    /// The user key.
    pub fn key(&self) -> &[u8] {
        &self.buf[..self.key_len as usize]
    }

    /// The value; `None` for a tombstone.
    pub fn value(&self) -> Option<&[u8]> {
        (!self.tombstone).then(|| &self.buf[self.key_len as usize..])
    }
}

impl Ord for MemKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.head
            .cmp(&other.head)
            .then_with(|| self.head2.cmp(&other.head2))
            .then_with(|| self.head3.cmp(&other.head3))
            .then_with(|| {
                let (la, lb) = (self.key_len, other.key_len);
                if la <= 24 && lb <= 24 {
                    // Equal words cover both keys: one is a prefix of the other.
                    la.cmp(&lb)
                } else if la >= 24 && lb >= 24 {
                    // Equal words: the first 24 bytes are equal.
                    self.key()[24..].cmp(&other.key()[24..])
                } else {
                    self.key().cmp(other.key())
                }
            })
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for MemKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// One memtable.
#[derive(Debug, Default)]
pub(crate) struct Memtable {
    pub map: SkipMap<MemKey, ()>,
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
        self.map.insert(MemKey::new(key, seq, value), ());
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
        let probe = MemKey::probe(key, snapshot);
        let e = self.map.lower_bound(Bound::Included(&probe))?;
        if e.key().key() != key {
            return None;
        }
        Some(e.key().value().map(<[u8]>::to_vec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Bytes from a small alphabet with zero in it, so that prefixes, zero
    /// padding and equal words all come up.
    fn bytes(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(255u8)], len)
    }

    proptest! {
        #[test]
        fn the_cached_words_keep_the_byte_order(
            shared in bytes(0..30), ta in bytes(0..6), tb in bytes(0..6),
            sa in 0u64..3, sb in 0u64..3,
        ) {
            // Two keys with a common prefix of any length: their first
            // difference falls in either word or past both.
            let a = [shared.as_slice(), &ta].concat();
            let b = [shared.as_slice(), &tb].concat();
            let want = a.cmp(&b).then(sb.cmp(&sa));
            let got = MemKey::new(&a, SeqNo(sa), None).cmp(&MemKey::new(&b, SeqNo(sb), None));
            prop_assert_eq!(got, want);
        }
    }

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
