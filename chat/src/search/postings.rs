//! The index's records: one posting per (term, sealed bucket) of a
//! conversation, keyed so that a term's postings in a conversation are one
//! contiguous range, newest bucket first.
//!
//! ```text
//! posting (v2)  0x20 slot:u16 conv:u64 0x0A term 0x00 (MAX-bucket):u64  → Posting
//! posting (v1)  0x20 slot:u16 conv:u64 0x09 term 0x00 (MAX-ts):u64      → LegacyPosting
//! ```
//!
//! - A **bucket** is [`BUCKET`] consecutive seqs of a conversation:
//!   bucket `b` holds seqs `[b·BUCKET, (b+1)·BUCKET)` (seq 0 is never
//!   used, so bucket 0 holds one fewer message). A bucket is *sealed* by
//!   the send that takes its last seq: that rule writes the bucket's
//!   postings, one per distinct term, in the same batch (`apply::index`).
//!   Until then its messages have no postings; a search reads the open
//!   bucket's messages themselves (at most `BUCKET − 1` per conversation).
//! - `term` is the folded term's UTF-8 (`tokenize`: at most
//!   [`MAX_TERM_BYTES`], never a NUL), so the 0x00 after it ends it and a
//!   term's postings sort before those of any longer term it prefixes;
//!   every term starting with `p` lies in `[.. 0x0A p, .. 0x0A p⁺)`.
//! - `MAX-bucket` makes key order newest first, like message keys.
//! - The value is `[1][postcard(Posting)]`: `expires_at` — when the last
//!   message of the bucket holding the term expires (`None` if one of them
//!   never does), so that the LSM's retention rule (`retention`) hides and
//!   compacts the posting away once none of its messages can be read —
//!   then `bits`: bit `i` (a `u128` varint) set when the message of seq
//!   `b·BUCKET + i` holds the term.
//! - Version 1 (tag 0x09: one posting per term and message, keyed by the
//!   message's ts) is no longer written. A store written before keeps its
//!   v1 postings until `missivectl shard search-index --repair`, which
//!   reports each as stale and drops it, and writes the v2 postings of the
//!   buckets sealed before the upgrade.
//!
//! Why buckets: a posting per (term, message) made a text message cost ~10
//! more memtable inserts than its bytes did, each landing in a cold part of
//! the skiplist (docs/benchmarks.md, "Search"); a bucket's postings cost
//! fewer than one insert per message, written at once. The bits keep the
//! index exact — a query never reads a message that does not hold the
//! term — while the messages of the open bucket, which a search reads
//! directly, are the newest and so the likeliest to be in memory.
//!
//! The postings live in the conversation keyspace under the
//! conversation's slot, so they move, snapshot, back up, restore and wipe
//! with the rest of the conversation's records, and no other code needs
//! to know about them.

use serde::{Deserialize, Serialize};

use missive_engine::keys::{prefix_successor, ConversationId, Keyspace};
use missive_raft::Result;

#[cfg(doc)]
use super::tokenize::MAX_TERM_BYTES;
use crate::ids::Seq;
use crate::records::{self, conv_key};

/// The conversation-record tag of postings (layout v2).
pub const POSTING_TAG: u8 = 0x0A;
/// The tag of version-1 postings (one per term and message), no longer
/// written.
pub const LEGACY_POSTING_TAG: u8 = 0x09;

/// log2 of the seqs per bucket. A stored format: changing it orphans every
/// posting. The chat crate's own unit tests use buckets of 4, so their
/// few messages seal several.
pub const BUCKET_SHIFT: u32 = if cfg!(test) { 2 } else { 7 };
/// Seqs per bucket (128).
pub const BUCKET: u64 = 1 << BUCKET_SHIFT;

/// Bytes before the term: keyspace, slot, conversation, tag.
const TERM_AT: usize = 12;

/// A posting's value: which messages of one bucket hold one term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Posting {
    /// When the last of those messages expires (µs); `None` if one never
    /// does. The posting goes then.
    pub expires_at: Option<u64>,
    /// Bit `i`: the message of seq `bucket·BUCKET + i` holds the term.
    pub bits: u128,
}

impl Posting {
    /// Adds the message of `seq` (expiring at `expires_at`).
    pub fn add(&mut self, seq: Seq, expires_at: Option<u64>, first: bool) {
        self.bits |= bit(seq);
        self.expires_at = if first {
            expires_at
        } else {
            match (self.expires_at, expires_at) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            }
        };
    }

    /// The seqs of `bucket` whose bit is set, newest first.
    pub fn seqs(&self, bucket: u64) -> impl Iterator<Item = Seq> + '_ {
        (0..BUCKET)
            .rev()
            .filter(|i| self.bits & (1u128 << i) != 0)
            .map(move |i| Seq(bucket * BUCKET + i))
    }
}

/// A version-1 posting's value (tag 0x09): its message's `expires_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LegacyPosting {
    /// When the message expires (µs), if it does.
    pub expires_at: Option<u64>,
}

/// The bucket of `seq`.
pub fn bucket_of(seq: Seq) -> u64 {
    seq.0 >> BUCKET_SHIFT
}

/// `seq`'s bit in its bucket's postings.
pub fn bit(seq: Seq) -> u128 {
    1u128 << (seq.0 & (BUCKET - 1))
}

/// The first seq of the open bucket of a conversation whose newest seq is
/// `head`: every seq below it is in a sealed bucket.
pub fn open_from(head: Seq) -> Seq {
    Seq(((head.0 + 1) >> BUCKET_SHIFT) << BUCKET_SHIFT)
}

/// Whether `seq` is the last of its bucket (storing it seals the bucket).
pub fn seals(seq: Seq) -> bool {
    seq.0 & (BUCKET - 1) == BUCKET - 1
}

/// Prefix of every posting of `conv`.
pub fn conversation_postings(conv: ConversationId) -> Vec<u8> {
    conv_key(conv, POSTING_TAG)
}

/// Prefix of the postings of every term of `conv` starting with `prefix`
/// (with `prefix` a whole term: that term and every longer one).
pub fn term_prefix(conv: ConversationId, prefix: &str) -> Vec<u8> {
    let mut k = conversation_postings(conv);
    k.extend_from_slice(prefix.as_bytes());
    k
}

/// Prefix of the postings of exactly `term` (UTF-8 bytes) in `conv`.
pub fn term_postings(conv: ConversationId, term: &[u8]) -> Vec<u8> {
    let mut k = conversation_postings(conv);
    k.extend_from_slice(term);
    k.push(0);
    k
}

/// Key of the posting of `term` (UTF-8 bytes) in `bucket` of `conv`.
pub fn posting_key(conv: ConversationId, term: &[u8], bucket: u64) -> Vec<u8> {
    let mut k = term_postings(conv, term);
    k.extend_from_slice(&(u64::MAX - bucket).to_be_bytes());
    k
}

/// The end (exclusive) of the range starting at a prefix built here (never
/// `None`: a posting prefix starts with 0x20).
pub fn end_of(prefix: &[u8]) -> Vec<u8> {
    prefix_successor(prefix).unwrap_or_default()
}

/// The posting tag of `key` if it is a posting key of either version (the
/// retention rule asks of every key).
fn tag_of(key: &[u8]) -> Option<u8> {
    (key.len() >= TERM_AT + 1 + 8 && key[0] == Keyspace::Conversation as u8)
        .then(|| key[TERM_AT - 1])
        .filter(|t| *t == POSTING_TAG || *t == LEGACY_POSTING_TAG)
}

/// Whether `key` is a posting key, of either version.
pub fn is_posting(key: &[u8]) -> bool {
    tag_of(key).is_some()
}

/// A posting key's term and the number after it (the bucket for v2, the
/// message's ts for v1), if it is one of version `tag`.
fn decode_tagged(key: &[u8], tag: u8) -> Option<(&[u8], u64)> {
    if tag_of(key) != Some(tag) {
        return None;
    }
    let (rest, n) = key.split_at(key.len() - 8);
    let term = rest[TERM_AT..].strip_suffix(&[0])?;
    Some((term, u64::MAX - u64::from_be_bytes(n.try_into().ok()?)))
}

/// A v2 posting key's term and bucket.
pub fn decode_key(key: &[u8]) -> Option<(&[u8], u64)> {
    decode_tagged(key, POSTING_TAG)
}

/// When the posting under `key` (of either version) with `value` expires:
/// `Err` if the value does not decode.
pub fn expires_at(key: &[u8], value: &[u8]) -> Result<Option<u64>> {
    if tag_of(key) == Some(LEGACY_POSTING_TAG) {
        return Ok(records::decode::<LegacyPosting>("posting", value)?.expires_at);
    }
    Ok(decode(value)?.expires_at)
}

/// Encodes a posting's value.
pub fn encode(p: &Posting) -> Result<Vec<u8>> {
    records::encode(p)
}

/// Decodes a posting's value.
pub fn decode(bytes: &[u8]) -> Result<Posting> {
    records::decode("posting", bytes)
}

/// Version-1 postings: read only to be reported and dropped.
pub mod legacy {
    use super::*;

    /// Prefix of every v1 posting of `conv`.
    pub fn conversation_postings(conv: ConversationId) -> Vec<u8> {
        conv_key(conv, LEGACY_POSTING_TAG)
    }

    /// Key of the v1 posting of `term` for the message of `conv` at `ts`.
    pub fn posting_key(conv: ConversationId, term: &str, ts: u64) -> Vec<u8> {
        let mut k = conversation_postings(conv);
        k.extend_from_slice(term.as_bytes());
        k.push(0);
        k.extend_from_slice(&(u64::MAX - ts).to_be_bytes());
        k
    }

    /// A v1 posting key's term and message ts.
    pub fn decode_key(key: &[u8]) -> Option<(&[u8], u64)> {
        decode_tagged(key, LEGACY_POSTING_TAG)
    }

    /// Encodes a v1 posting's value (for tests and fixtures).
    pub fn encode(p: &LegacyPosting) -> Result<Vec<u8>> {
        records::encode(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_order_terms_then_newest_bucket_first_and_decode_back() {
        let c = ConversationId(7);
        let a_new = posting_key(c, b"ab", 20);
        let a_old = posting_key(c, b"ab", 10);
        let longer = posting_key(c, b"abc", 30);
        assert!(a_new < a_old && a_old < longer);
        assert!(a_old < end_of(&term_postings(c, b"ab")));
        assert!(longer >= end_of(&term_postings(c, b"ab")));
        assert!(longer < end_of(&term_prefix(c, "ab")));
        assert_eq!(decode_key(&longer), Some((&b"abc"[..], 30)));
        assert_eq!(legacy::decode_key(&longer), None);
        let old = legacy::posting_key(c, "ab", 99);
        assert_eq!(legacy::decode_key(&old), Some((&b"ab"[..], 99)));
        assert!(is_posting(&old) && decode_key(&old).is_none());
        assert!(!is_posting(&crate::records::seq_key(c, Seq(1))));
        let mut p = Posting::default();
        p.add(Seq(BUCKET + 1), Some(5), true);
        p.add(Seq(BUCKET + 3), Some(9), false);
        let v = encode(&p).unwrap();
        assert_eq!(decode(&v).unwrap(), p);
        assert_eq!(expires_at(&longer, &v).unwrap(), Some(9));
        assert_eq!(
            p.seqs(1).collect::<Vec<_>>(),
            vec![Seq(BUCKET + 3), Seq(BUCKET + 1)]
        );
        p.add(Seq(BUCKET + 2), None, false);
        assert_eq!(p.expires_at, None);
        let lv = legacy::encode(&LegacyPosting {
            expires_at: Some(4),
        })
        .unwrap();
        assert_eq!(expires_at(&old, &lv).unwrap(), Some(4));
    }

    #[test]
    fn buckets_seal_at_their_last_seq() {
        assert_eq!(open_from(Seq(0)), Seq(0));
        assert_eq!(open_from(Seq(BUCKET - 2)), Seq(0));
        assert!(seals(Seq(BUCKET - 1)) && !seals(Seq(BUCKET)));
        assert_eq!(open_from(Seq(BUCKET - 1)), Seq(BUCKET));
        assert_eq!(open_from(Seq(2 * BUCKET)), Seq(2 * BUCKET));
        assert_eq!(bucket_of(Seq(BUCKET - 1)), 0);
        assert_eq!(bucket_of(Seq(BUCKET)), 1);
        assert_eq!(bit(Seq(BUCKET + 1)), 2);
    }
}
