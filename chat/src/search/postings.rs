//! The index's records: one posting per (term, message), keyed so that a
//! term's postings in a conversation are one contiguous range, newest
//! message first.
//!
//! ```text
//! posting  0x20 slot:u16 conv:u64 0x09 term 0x00 (MAX-ts):u64  → Posting
//! ```
//!
//! - `term` is the folded term's UTF-8 (`tokenize`: at most
//!   [`MAX_TERM_BYTES`], never a NUL), so the 0x00 after it ends it and a
//!   term's postings sort before those of any longer term it prefixes;
//!   every term starting with `p` lies in `[.. 0x09 p, .. 0x09 p⁺)`.
//! - `MAX-ts` makes key order newest first, like message keys.
//! - The value is `[1][postcard(Posting)]`: the message's `expires_at`,
//!   so that the LSM's retention rule (`retention`) hides and compacts a
//!   posting away exactly when it does the message.
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
use crate::records::{self, conv_key};

/// The conversation-record tag of postings.
pub const POSTING_TAG: u8 = 0x09;

/// Bytes before the term: keyspace, slot, conversation, tag.
const TERM_AT: usize = 12;

/// A posting's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Posting {
    /// When the message expires (µs), if it does: the posting goes with it.
    pub expires_at: Option<u64>,
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

/// Prefix of the postings of exactly `term` in `conv`.
pub fn term_postings(conv: ConversationId, term: &str) -> Vec<u8> {
    let mut k = term_prefix(conv, term);
    k.push(0);
    k
}

/// Key of the posting of `term` for the message of `conv` at `ts`.
pub fn posting_key(conv: ConversationId, term: &str, ts: u64) -> Vec<u8> {
    posting_key_under(&conversation_postings(conv), term, ts)
}

/// [`posting_key`] from the conversation's [`conversation_postings`]
/// prefix, computed once for all of a message's terms (one allocation per
/// key: a message writes about ten).
pub fn posting_key_under(prefix: &[u8], term: &str, ts: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + term.len() + 1 + 8);
    k.extend_from_slice(prefix);
    k.extend_from_slice(term.as_bytes());
    k.push(0);
    k.extend_from_slice(&(u64::MAX - ts).to_be_bytes());
    k
}

/// The end (exclusive) of the range starting at a prefix built here (never
/// `None`: a posting prefix starts with 0x20).
pub fn end_of(prefix: &[u8]) -> Vec<u8> {
    prefix_successor(prefix).unwrap_or_default()
}

/// Whether `key` is a posting key (the retention rule asks of every key).
pub fn is_posting(key: &[u8]) -> bool {
    key.len() >= TERM_AT + 1 + 8
        && key[0] == Keyspace::Conversation as u8
        && key[TERM_AT - 1] == POSTING_TAG
}

/// A posting key's term and message ts.
pub fn decode_key(key: &[u8]) -> Option<(&[u8], u64)> {
    if !is_posting(key) {
        return None;
    }
    let (rest, ts) = key.split_at(key.len() - 8);
    let term = rest[TERM_AT..].strip_suffix(&[0])?;
    Some((term, u64::MAX - u64::from_be_bytes(ts.try_into().ok()?)))
}

/// Encodes a posting's value.
pub fn encode(p: &Posting) -> Result<Vec<u8>> {
    records::encode(p)
}

/// Decodes a posting's value.
pub fn decode(bytes: &[u8]) -> Result<Posting> {
    records::decode("posting", bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_order_terms_then_newest_first_and_decode_back() {
        let c = ConversationId(7);
        let a_new = posting_key(c, "ab", 20);
        let a_old = posting_key(c, "ab", 10);
        let longer = posting_key(c, "abc", 30);
        assert!(a_new < a_old && a_old < longer);
        assert!(a_old < end_of(&term_postings(c, "ab")));
        assert!(longer >= end_of(&term_postings(c, "ab")));
        assert!(longer < end_of(&term_prefix(c, "ab")));
        assert_eq!(decode_key(&longer), Some((&b"abc"[..], 30)));
        assert!(!is_posting(&crate::records::seq_key(c, crate::ids::Seq(1))));
        let v = encode(&Posting {
            expires_at: Some(5),
        })
        .unwrap();
        assert_eq!(decode(&v).unwrap().expires_at, Some(5));
    }
}
