//! A memtable's filter of the key prefixes it holds (the skiplist's
//! 12-byte prefixes, by their hash), so a point read of a key whose prefix
//! the memtable does not have skips the skiplist search.
//!
//! Why: in the replicated store most point reads find their key in the
//! active memtable, but some never do — a conversation's record is written
//! once, at creation, and read by every append's membership check — and
//! each such read searched every memtable from the top before reaching the
//! tables (perf on `missived` at 5 000 msgs/s: `Memtable::get` 7.7 % of the
//! samples after the fingers, mostly those misses).
//!
//! Prefixes rather than whole keys: the writer adds one only when an insert
//! opens a new region (neither neighbour shares its prefix), which is rare
//! — a filter of every key cost each insert a random cache line in a
//! 2 MiB table (criterion `memtable/insert-chat-200k` 29.7 → 53.7 ms). A
//! read of an absent key in a region the memtable has is left to the
//! fingers, which make it a few steps.
//!
//! A blocked Bloom filter (as RocksDB's memtable filter): one 64-byte
//! block per key, chosen by the hash's top bits, and [`PROBES`] bits in it
//! from the rest, so a probe costs one cache line. Sized at
//! [`BITS_PER_KEY`] bits for as many prefixes as a full memtable is
//! expected to hold entries (an overestimate); more only raises the
//! false-positive rate, which costs a search, never a wrong answer.
//!
//! Concurrency: the writer (one at a time: the skiplist's writer lock) sets
//! a prefix's bits *before* publishing the node that opens its region, with
//! plain stores — no
//! read-modify-write is needed with one writer. Readers load with
//! `Relaxed`: a reader only asks about versions at or below its snapshot,
//! and the LSM publishes a batch's sequence number (`Release`, loaded with
//! `Acquire` before reading) after the batch's inserts, so their bits are
//! visible to any reader that could see the versions. No bit is ever
//! cleared while the memtable lives.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bits per expected prefix: ~1–2 % false positives for a blocked filter.
const BITS_PER_KEY: usize = 10;
/// Bits set per key, all within one 512-bit block.
const PROBES: u32 = 6;

/// One cache line of filter bits.
#[repr(C, align(64))]
struct Block([AtomicU64; 8]);

/// The filter.
pub(crate) struct PrefixFilter {
    blocks: Box<[Block]>,
    /// `blocks.len() - 1` (a power of two minus one).
    mask: u64,
}

impl std::fmt::Debug for PrefixFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixFilter")
            .field("blocks", &self.blocks.len())
            .finish()
    }
}

/// The block of a hash and the bits it sets in each of the block's words.
fn bits(h: u64, mask: u64) -> (usize, [u64; 8]) {
    let block = (h >> 40) & mask;
    // The probes come from a remix of the hash, so they do not repeat the
    // bits that chose the block.
    let mut x = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut words = [0u64; 8];
    for _ in 0..PROBES {
        let bit = (x & 511) as usize;
        words[bit / 64] |= 1 << (bit % 64);
        x >>= 9;
    }
    (block as usize, words)
}

impl PrefixFilter {
    /// A filter for about `prefixes` prefixes.
    pub fn with_capacity(prefixes: usize) -> Self {
        let blocks = (prefixes.max(1) * BITS_PER_KEY)
            .div_ceil(512)
            .next_power_of_two();
        PrefixFilter {
            blocks: (0..blocks)
                .map(|_| Block(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
            mask: blocks as u64 - 1,
        }
    }

    /// Records the prefix of hash `h`. Writer only (see the module comment).
    pub fn insert(&self, h: u64) {
        let (block, words) = bits(h, self.mask);
        for (word, add) in self.blocks[block].0.iter().zip(words) {
            let old = word.load(Ordering::Relaxed);
            if old | add != old {
                word.store(old | add, Ordering::Relaxed);
            }
        }
    }

    /// False only if no prefix of hash `h` was inserted (before the
    /// reader's snapshot was published).
    pub fn may_contain(&self, h: u64) -> bool {
        let (block, words) = bits(h, self.mask);
        self.blocks[block]
            .0
            .iter()
            .zip(words)
            .all(|(word, want)| word.load(Ordering::Relaxed) & want == want)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(key: &[u8]) -> u64 {
        xxhash_rust::xxh3::xxh3_64(key)
    }

    #[test]
    fn inserted_hashes_are_always_found_and_others_mostly_not() {
        let f = PrefixFilter::with_capacity(100_000);
        let key = |i: u64| [b"user".as_slice(), &i.to_be_bytes()].concat();
        for i in 0..100_000 {
            f.insert(hash(&key(i)));
        }
        assert!((0..100_000).all(|i| f.may_contain(hash(&key(i)))));
        let false_positives = (100_000..200_000)
            .filter(|&i| f.may_contain(hash(&key(i))))
            .count();
        // ~1–2 % expected at 10 bits per key with 6 probes in one block.
        assert!(false_positives < 3_000, "{false_positives} of 100 000");
    }
}
