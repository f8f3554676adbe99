//! Keeping the search index in step with the messages: every rule that
//! stores, rewrites or tombstones a message body calls `Apply::reindex`
//! in the same call, so the postings land in the
//! same atomic batch as the message (see `search`).
//!
//! A body is indexed only if its sender gave it as text (`Message::text`),
//! it is not a system message, and it was not unsent; a media message
//! gives only its file name (`media::body`). Removing reads the
//! terms back from the body being replaced: a replica that no longer finds
//! the message record (expired by its own clock) removes nothing, and
//! needs to — the postings carry the message's `expires_at` and are gone
//! from its reads and compactions exactly when the message is.

use std::collections::BTreeSet;

use missive_engine::keys::ConversationId;
use missive_raft::Result;

use super::{reject, Apply};
use crate::command::{MessageKind, Outcome, RejectCode, MAX_REPAIR};
use crate::records::Message;
use crate::search::postings::{self, posting_key, posting_key_under, Posting};
use crate::search::tokenize;

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
    /// Moves the postings of the message of `conv` stored at `ts` from the
    /// terms `before` (the body it had; empty for a new message) to
    /// `after` (the body it has now; empty once unsent): the terms only
    /// `before` has lose their posting, those only `after` has gain one
    /// carrying the message's `expires_at`.
    pub(super) fn reindex(
        &mut self,
        conv: ConversationId,
        ts: u64,
        expires_at: Option<u64>,
        before: &BTreeSet<String>,
        after: &BTreeSet<String>,
    ) -> Result<()> {
        let prefix = postings::conversation_postings(conv);
        for t in before.difference(after) {
            self.rec.delete(posting_key_under(&prefix, t, ts));
        }
        if after.is_empty() {
            return Ok(());
        }
        let value = postings::encode(&Posting { expires_at })?;
        for t in after.difference(before) {
            self.rec
                .put(posting_key_under(&prefix, t, ts), value.clone());
        }
        Ok(())
    }

    /// `RepairIndex` (see `search::check`): the messages at `reindex` get
    /// every posting their terms call for; each posting in `drop` goes
    /// unless the message at its ts holds its term.
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
            let value = postings::encode(&Posting {
                expires_at: m.expires_at,
            })?;
            for t in indexed_terms(&m) {
                let key = posting_key(conv, &t, ts);
                if self.rec.get(&key)?.is_none() {
                    self.rec.put(key, value.clone());
                    written += 1;
                }
            }
        }
        for (term, ts) in drop {
            let backed = self
                .stored(conv, *ts)?
                .is_some_and(|m| indexed_terms(&m).contains(term));
            let key = posting_key(conv, term, *ts);
            if !backed && self.rec.get(&key)?.is_some() {
                self.rec.delete(key);
                dropped += 1;
            }
        }
        Ok(Outcome::Reindexed { written, dropped })
    }

    /// The message of `conv` stored at `ts` on this replica, if any.
    fn stored(&mut self, conv: ConversationId, ts: u64) -> Result<Option<Message>> {
        self.rec
            .get(&crate::records::msg_key(conv, ts))?
            .map(|b| crate::records::decode_message(&b))
            .transpose()
    }
}
