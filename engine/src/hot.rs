//! Entry points into internal hot paths, for the criterion benches
//! (`benches/hot_paths.rs`) only: hidden from the docs and not a stable
//! API. Each is a thin wrapper; the code measured is the engine's own.

use crate::lsm::memtable::Memtable;
use crate::lsm::table::block::{BlockBuilder, BlockLayout, DecodedBlock};
use crate::lsm::table::bloom::{may_contain, BloomBuilder};
use crate::lsm::SeqNo;

/// Inserts every (key, value) into a fresh memtable, as one batch would;
/// returns the memtable's size estimate (so the work is not optimized out).
pub fn memtable_insert(entries: &[(Vec<u8>, Vec<u8>)]) -> usize {
    let m = Memtable::new();
    for (i, (k, v)) in entries.iter().enumerate() {
        m.insert(k, SeqNo(i as u64 + 1), Some(v));
    }
    m.approximate_bytes()
}

/// A memtable filled for read benchmarks.
#[derive(Debug)]
pub struct Mem(Memtable);

impl Mem {
    /// Inserts every (key, value), as [`memtable_insert`] does.
    pub fn build(entries: &[(Vec<u8>, Vec<u8>)]) -> Self {
        let m = Memtable::new();
        for (i, (k, v)) in entries.iter().enumerate() {
            m.insert(k, SeqNo(i as u64 + 1), Some(v));
        }
        Mem(m)
    }

    /// A point read at the newest snapshot; whether the key is there.
    pub fn get(&self, key: &[u8]) -> bool {
        matches!(
            self.0.get(key, SeqNo(u64::MAX >> 8), |_| (), |_| ()),
            Ok(Some(Some(())))
        )
    }
}

/// Encodes sorted (key, value) pairs as one uncompressed data block.
pub fn block_encode(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut b = BlockBuilder::new();
    for (k, v) in entries {
        b.add_entry(k, 0, Some(v), false);
    }
    b.take()
}

/// A decoded data block.
#[derive(Debug)]
pub struct Block(DecodedBlock);

/// Decodes an uncompressed data block.
pub fn block_decode(payload: &[u8]) -> Option<Block> {
    DecodedBlock::decode(payload.to_vec(), BlockLayout::Columnar)
        .ok()
        .map(Block)
}

impl Block {
    /// Index of the first entry with a key ≥ `key`.
    pub fn seek(&self, key: &[u8]) -> usize {
        self.0.seek_key(key)
    }

    /// Entries in the block.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the block has no entries.
    pub fn is_empty(&self) -> bool {
        self.0.len() == 0
    }
}

/// Builds a bloom filter over `prefixes`.
pub fn bloom_build(prefixes: &[Vec<u8>], bits_per_key: u32) -> Vec<u8> {
    let mut b = BloomBuilder::default();
    for p in prefixes {
        b.add(p);
    }
    b.finish(bits_per_key)
}

/// Probes a filter.
pub fn bloom_probe(filter: &[u8], prefix: &[u8]) -> bool {
    may_contain(filter, prefix)
}
