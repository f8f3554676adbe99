//! The index against the messages, conversation by conversation: what an
//! operator runs to prove the index whole (`missivectl shard
//! search-index`) and to rebuild what is not (`RepairIndex`).
//!
//! ```text
//!  a page of the shard's conversations (their records, in key order)
//!    per conversation: the (term, seq) pairs of every stored message of
//!    a sealed bucket (a scan of its messages) vs the bits of its
//!    postings (a scan of its posting range)
//!      missing: a message term whose bit is not set
//!      stale:   a bit no visible message backs (one of an expired
//!               message excepted), and every version-1 posting
//!  ─► RepairIndex {conv, reindex: [ts], drop: [(term, ts)]} through Raft
//! ```
//!
//! Both sets are read from the replica's LSM through its retention rule,
//! so an expired message is absent, never a difference; a posting lives
//! until the last of its messages expires, so the bit of one that expired
//! first is not counted stale. The repair is a replicated command: every replica derives
//! the postings from its own copy of the message, exactly as the send did.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use missive_engine::keys::{prefix_successor, ConversationId, Keyspace};
use missive_engine::lsm::{Direction, Lsm};
use missive_raft::Result;

use super::postings::{self, conversation_postings, end_of};
use crate::ids::Seq;
use crate::records::{self, Head};

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
    let head: Head = match lsm.get(&records::head_key(conv))? {
        Some(v) => records::decode("head", &v)?,
        None => Head::default(),
    };
    let open = postings::open_from(head.seq);
    // (term, seq) the sealed buckets' visible messages call for, and the
    // ts of every visible message by seq.
    let mut want: BTreeSet<(Vec<u8>, Seq)> = BTreeSet::new();
    let mut ts_of: BTreeMap<Seq, u64> = BTreeMap::new();
    for m in lsm.latest(conv, usize::MAX)? {
        c.messages += 1;
        let msg = records::decode_message(&m.value)?;
        ts_of.insert(msg.seq, m.ts.0);
        if msg.seq < open {
            for t in crate::apply::indexed_terms(&msg) {
                want.insert((t.into_bytes(), msg.seq));
            }
        }
    }
    let lo = conversation_postings(conv);
    let mut have: BTreeSet<(Vec<u8>, Seq)> = BTreeSet::new();
    for (k, v) in lsm.scan(&lo, Some(&end_of(&lo)), Direction::Forward, usize::MAX)? {
        c.postings += 1;
        if let Some((t, bucket)) = postings::decode_key(&k) {
            for seq in postings::decode(&v)?.seqs(bucket) {
                have.insert((t.to_vec(), seq));
            }
        }
    }
    let missing: BTreeSet<u64> = want
        .difference(&have)
        .filter_map(|(_, seq)| ts_of.get(seq).copied())
        .collect();
    c.missing = missing.into_iter().take(MAX_REPORTED).collect();
    // A bit no visible message backs is stale, unless its message is only
    // gone by expiry (a posting outlives the first of its messages to
    // expire); that of an unsent or system message is not.
    for (t, seq) in have.difference(&want) {
        if c.stale.len() >= MAX_REPORTED {
            break;
        }
        let ts = match ts_of.get(seq) {
            Some(ts) => Some(*ts),
            None => lsm
                .get(&records::seq_key(conv, *seq))?
                .map(|v| records::decode_indexed(&v))
                .transpose()?
                .filter(|ix| ix.unsent || ix.system)
                .map(|ix| ix.ts),
        };
        if let Some(ts) = ts {
            c.stale.push((String::from_utf8_lossy(t).into_owned(), ts));
        }
    }
    // Version-1 postings are all stale: the layout is no longer read.
    let lo = postings::legacy::conversation_postings(conv);
    for (k, _) in lsm.scan(&lo, Some(&end_of(&lo)), Direction::Forward, usize::MAX)? {
        c.postings += 1;
        if let Some((t, ts)) = postings::legacy::decode_key(&k) {
            if c.stale.len() < MAX_REPORTED {
                c.stale.push((String::from_utf8_lossy(t).into_owned(), ts));
            }
        }
    }
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
