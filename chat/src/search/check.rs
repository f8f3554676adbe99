//! The index against the messages, conversation by conversation: what an
//! operator runs to prove the index whole (`missivectl shard
//! search-index`) and to rebuild what is not (`RepairIndex`).
//!
//! ```text
//!  a page of the shard's conversations (their records, in key order)
//!    per conversation: the terms of every stored message (a scan of its
//!    messages) vs its postings (a scan of its posting range)
//!      missing: a message term without its posting
//!      stale:   a posting no visible message backs
//!  ─► RepairIndex {conv, reindex: [ts], drop: [(term, ts)]} through Raft
//! ```
//!
//! Both sets are read from the replica's LSM through its retention rule,
//! so an expired message and its postings are both absent, never a
//! difference. The repair is a replicated command: every replica derives
//! the postings from its own copy of the message, exactly as the send did.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use missive_engine::keys::{prefix_successor, ConversationId, Keyspace};
use missive_engine::lsm::{Direction, Lsm};
use missive_raft::Result;

use super::postings::{self, conversation_postings, end_of};
use crate::records;

/// Conversations one check page reads at most.
pub const CHECK_PAGE: usize = 64;
/// Differences one page reports at most (the counts stay exact).
pub const MAX_REPORTED: usize = 10_000;

/// One page of a shard's index check, asked of a replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckIndex {
    /// Where the page starts: a key in the shard's conversation range.
    pub lo: Vec<u8>,
    /// The end of that range (exclusive; None: the keyspace's end).
    pub hi: Option<Vec<u8>>,
}

/// What one conversation's check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationCheck {
    /// The conversation.
    pub conv: ConversationId,
    /// Messages read.
    pub messages: u64,
    /// Postings read.
    pub postings: u64,
    /// Messages with a term whose posting is missing (by ts).
    pub missing: Vec<u64>,
    /// Postings no visible message backs: (term, ts).
    pub stale: Vec<(String, u64)>,
}

/// A page of a shard's index check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct IndexCheck {
    /// The conversations checked, with what each found.
    pub convs: Vec<ConversationCheck>,
    /// Where the next page starts (None: the range is done).
    pub next: Option<Vec<u8>>,
}

/// Checks up to [`CHECK_PAGE`] conversations of `q`'s range.
pub fn check(lsm: &Lsm, q: &CheckIndex) -> Result<IndexCheck> {
    let mut out = IndexCheck::default();
    let mut lo = q.lo.clone();
    while out.convs.len() < CHECK_PAGE {
        let Some((key, _)) = lsm
            .scan(&lo, q.hi.as_deref(), Direction::Forward, 1)?
            .into_iter()
            .next()
        else {
            return Ok(out);
        };
        let Some(conv) = conversation_of(&key) else {
            return Ok(out);
        };
        // The next conversation's records start after this one's prefix.
        lo = prefix_successor(&key[..11]).unwrap_or_default();
        if lsm.get(&records::conversation_key(conv))?.is_some() {
            out.convs.push(conversation(lsm, conv)?);
        }
        if lo.is_empty() || q.hi.as_ref().is_some_and(|hi| &lo >= hi) {
            return Ok(out);
        }
    }
    out.next = Some(lo);
    Ok(out)
}

/// The conversation of a conversation-keyspace key.
fn conversation_of(key: &[u8]) -> Option<ConversationId> {
    if key.first() != Some(&(Keyspace::Conversation as u8)) {
        return None;
    }
    let b: [u8; 8] = key.get(3..11)?.try_into().ok()?;
    Some(ConversationId(u64::from_be_bytes(b)))
}

/// One conversation's messages' terms against its postings.
pub fn conversation(lsm: &Lsm, conv: ConversationId) -> Result<ConversationCheck> {
    let mut c = ConversationCheck {
        conv,
        messages: 0,
        postings: 0,
        missing: Vec::new(),
        stale: Vec::new(),
    };
    let mut want: BTreeSet<(Vec<u8>, u64)> = BTreeSet::new();
    for m in lsm.latest(conv, usize::MAX)? {
        c.messages += 1;
        let msg = records::decode_message(&m.value)?;
        for t in crate::apply::indexed_terms(&msg) {
            want.insert((t.into_bytes(), m.ts.0));
        }
    }
    let lo = conversation_postings(conv);
    let mut have: BTreeSet<(Vec<u8>, u64)> = BTreeSet::new();
    for (k, _) in lsm.scan(&lo, Some(&end_of(&lo)), Direction::Forward, usize::MAX)? {
        c.postings += 1;
        if let Some((t, ts)) = postings::decode_key(&k) {
            have.insert((t.to_vec(), ts));
        }
    }
    let missing: BTreeSet<u64> = want.difference(&have).map(|(_, ts)| *ts).collect();
    c.missing = missing.into_iter().take(MAX_REPORTED).collect();
    c.stale = have
        .difference(&want)
        .take(MAX_REPORTED)
        .map(|(t, ts)| (String::from_utf8_lossy(t).into_owned(), *ts))
        .collect();
    Ok(c)
}

/// The first key of the conversation keyspace in `ranges` (a shard's
/// [`key_ranges`](missive_raft::cluster::slots::SlotMap::key_ranges)).
pub fn conversation_range(ranges: &[(Vec<u8>, Option<Vec<u8>>)]) -> Option<CheckIndex> {
    ranges
        .iter()
        .find(|(lo, _)| lo.first() == Some(&(Keyspace::Conversation as u8)))
        .map(|(lo, hi)| CheckIndex {
            lo: lo.clone(),
            hi: hi.clone(),
        })
}
