//! Keeping the search index in step with the messages (the write path of
//! `search`; its records are described in `search::postings`).
//!
//! - **Seal.** The send that stores the last seq of a bucket writes the
//!   bucket's postings in its own batch ([`Apply::seal`]): it reads the
//!   bucket's messages back (one scan: they are the conversation's
//!   newest), and each distinct term gets one posting whose bits name the
//!   messages holding it. Before
//!   that, a bucket's messages have no postings: a search reads the open
//!   bucket's messages themselves.
//!   A restore's `RaiseHeads` that carries the head past the open
//!   bucket's end seals it the same way (no send will take its last seq).
//! - **Change.** An edit, an unsend or an operator's erasure of a message
//!   in a sealed bucket moves its bit from the terms only the old body had
//!   to those only the new one has ([`Apply::reindex`]); in the open bucket
//!   there is nothing to change.
//!
//! A body is indexed only if its sender gave it as text (`Message::text`),
//! it is not a system message, and it was not unsent; a media message
//! gives only its file name (`media::body`).
//!
//! What a seal includes is judged against the leader's stamp: a message
//! already expired at the stamp, unsent, or a system message is left out.
//! The message records are read through the LSM's retention filter, which
//! uses the local clock: a replica whose clock runs ahead of the leader's
//! may already hide a message about to expire, and then leaves out the
//! terms of a message that is invisible everywhere within moments (the
//! same best-effort argument as the rewrites', `records`); a search never
//! trusts a bit without reading the message.

use std::collections::{BTreeMap, BTreeSet};

use missive_engine::keys::{prefix_successor, ConversationId};
use missive_raft::Result;

use super::{reject, Apply};
use crate::command::{MessageKind, Outcome, RejectCode, MAX_REPAIR};
use crate::ids::Seq;
use crate::records::{self, head_key, Head, Message};
use crate::search::postings::{self, bit, bucket_of, posting_key, Posting, BUCKET};
use crate::search::tokenize;

/// Bytes of a message key before its ts: keyspace, slot, conversation.
const MESSAGE_PREFIX: usize = 11;

/// The distinct terms `m`'s body gives the index (none if it is not
/// indexed at all).
pub(crate) fn indexed_terms(m: &Message) -> BTreeSet<String> {
    if !m.text || m.unsent.is_some() || m.kind == MessageKind::System {
        return BTreeSet::new();
    }
    if m.kind == MessageKind::Media {
        // A media body is JSON naming an object: its file name is what a
        // person searches for, not its hash or field names.
        return crate::media::body::MediaBody::parse(&m.body)
            .map(|b| tokenize::terms(&b.name).into_iter().collect())
            .unwrap_or_default();
    }
    match std::str::from_utf8(&m.body) {
        Ok(text) => tokenize::terms(text).into_iter().collect(),
        Err(_) => BTreeSet::new(),
    }
}

impl Apply<'_, '_> {
    /// Writes the postings of `bucket` of `conv`, whose last seq the
    /// current command just stored (see the module docs). The bucket's
    /// messages are the conversation's newest, so one scan from the
    /// newest back reads them all.
    pub(super) fn seal(&mut self, conv: ConversationId, bucket: u64, stamp: u64) -> Result<()> {
        let first = Seq((bucket * BUCKET).max(1));
        let lo = records::msg_key(conv, u64::MAX);
        let hi = prefix_successor(&lo[..MESSAGE_PREFIX]).unwrap_or_default();
        let mut terms: BTreeMap<String, Posting> = BTreeMap::new();
        for (_, value) in self.rec.scan(&lo, &hi, BUCKET as usize)? {
            let m = records::decode_message(&value)?;
            if m.seq < first {
                break;
            }
            if m.expires_at.is_some_and(|at| at <= stamp) {
                continue;
            }
            for t in indexed_terms(&m) {
                let mut fresh = false;
                let p = terms.entry(t).or_insert_with(|| {
                    fresh = true;
                    Posting::default()
                });
                p.add(m.seq, m.expires_at, fresh);
            }
        }
        for (t, p) in terms {
            self.rec.put(
                posting_key(conv, t.as_bytes(), bucket),
                postings::encode(&p)?,
            );
        }
        Ok(())
    }

    /// Whether `seq` of `conv` lies in a sealed bucket (the conversation's
    /// head decides).
    fn sealed(&mut self, conv: ConversationId, seq: Seq) -> Result<bool> {
        let head: Head = self
            .rec
            .get_as("head", &head_key(conv))?
            .unwrap_or_default();
        Ok(seq < postings::open_from(head.seq))
    }

    /// Moves the message of `conv` at `seq` from the terms `before` (the
    /// body it had) to `after` (the body it has now; empty once unsent):
    /// in a sealed bucket, its bit leaves the postings of the terms only
    /// `before` has (a posting left with no bit goes) and joins those of
    /// the terms only `after` has. Nothing in the open bucket.
    pub(super) fn reindex(
        &mut self,
        conv: ConversationId,
        seq: Seq,
        expires_at: Option<u64>,
        before: &BTreeSet<String>,
        after: &BTreeSet<String>,
    ) -> Result<()> {
        if before == after || !self.sealed(conv, seq)? {
            return Ok(());
        }
        for t in before.difference(after) {
            self.clear_bit(conv, t, seq)?;
        }
        for t in after.difference(before) {
            self.set_bit(conv, t, seq, expires_at)?;
        }
        Ok(())
    }

    /// Sets `seq`'s bit in the posting of `term`; whether it was unset.
    fn set_bit(
        &mut self,
        conv: ConversationId,
        term: &str,
        seq: Seq,
        expires_at: Option<u64>,
    ) -> Result<bool> {
        let key = posting_key(conv, term.as_bytes(), bucket_of(seq));
        let old = self
            .rec
            .get(&key)?
            .map(|v| postings::decode(&v))
            .transpose()?;
        if old.is_some_and(|p| p.bits & bit(seq) != 0) {
            return Ok(false);
        }
        let mut p = old.unwrap_or_default();
        p.add(seq, expires_at, old.is_none());
        self.rec.put(key, postings::encode(&p)?);
        Ok(true)
    }

    /// Clears `seq`'s bit in the posting of `term` (deleting a posting
    /// left with none); whether it was set.
    fn clear_bit(&mut self, conv: ConversationId, term: &str, seq: Seq) -> Result<bool> {
        let key = posting_key(conv, term.as_bytes(), bucket_of(seq));
        let Some(mut p) = self
            .rec
            .get(&key)?
            .map(|v| postings::decode(&v))
            .transpose()?
        else {
            return Ok(false);
        };
        if p.bits & bit(seq) == 0 {
            return Ok(false);
        }
        p.bits &= !bit(seq);
        if p.bits == 0 {
            self.rec.delete(key);
        } else {
            self.rec.put(key, postings::encode(&p)?);
        }
        Ok(true)
    }

    /// `RepairIndex` (see `search::check`): each message at `reindex`, in
    /// a sealed bucket, gets its bit in the postings of every term it
    /// holds; each `(term, ts)` in `drop` loses the v1 posting under it
    /// (a layout no longer written) and, unless the message at `ts` holds
    /// the term, that message's bit in the term's posting.
    pub(super) fn repair_index(
        &mut self,
        conv: ConversationId,
        reindex: &[u64],
        drop: &[(String, u64)],
    ) -> Result<Outcome> {
        if reindex.len() + drop.len() > MAX_REPAIR {
            return Ok(reject(
                RejectCode::Invalid,
                format!("a repair carries at most {MAX_REPAIR} entries"),
            ));
        }
        let (mut written, mut dropped) = (0, 0);
        for &ts in reindex {
            let Some(m) = self.stored(conv, ts)? else {
                continue;
            };
            if !self.sealed(conv, m.seq)? {
                continue;
            }
            for t in indexed_terms(&m) {
                if self.set_bit(conv, &t, m.seq, m.expires_at)? {
                    written += 1;
                }
            }
        }
        for (term, ts) in drop {
            let legacy = postings::legacy::posting_key(conv, term, *ts);
            if self.rec.get(&legacy)?.is_some() {
                self.rec.delete(legacy);
                dropped += 1;
            }
            let Some(m) = self.stored(conv, *ts)? else {
                continue;
            };
            if !indexed_terms(&m).contains(term) && self.clear_bit(conv, term, m.seq)? {
                dropped += 1;
            }
        }
        Ok(Outcome::Reindexed { written, dropped })
    }

    /// The message of `conv` stored at `ts` on this replica, if any.
    fn stored(&mut self, conv: ConversationId, ts: u64) -> Result<Option<Message>> {
        self.rec
            .get(&records::msg_key(conv, ts))?
            .map(|b| records::decode_message(&b))
            .transpose()
    }
}
