//! The recent-messages cache: messages as clients see them, by
//! (conversation, seq), bounded in bytes.
//!
//! # Why it stays consistent with the store
//!
//! A stored message changes under its (conversation, seq): an edit, an
//! unsend or a reaction rewrites it. Every entry carries the message's
//! revision (`missive_chat::revisions`) from when it was read, and is
//! served only while that revision is current; apply bumps it on this
//! node before the change's write is answered. An insert follows the
//! revisions' protocol — a [`RecentMessages::mark`] taken before the
//! store read, checked at insert — so a read that raced a change is not
//! kept. An expired message is never served either (its `expires_at` is
//! checked on every hit).
//!
//! Revisions see only what this node applies, so the service caches only
//! messages of shards this node replicates (`Service::cacheable`); a node
//! serving a conversation from another node's replica reads the store.
//!
//! What the cache cannot know on its own is which seq is a conversation's
//! newest; history asks the store for the head (one small read, with the
//! caller's consistency), then serves the page from here only if every seq
//! of it is present, else reads the store and fills the cache.
//!
//! It serves two hot paths: rendering an inbox event (every recipient
//! device of every message) and the first history page of an active
//! conversation.

use quick_cache::sync::Cache;
use quick_cache::Weighter;

use std::sync::Arc;

use missive_chat::revisions::{Mark, Revision, Revisions};
use missive_chat::Seq;
use missive_engine::keys::ConversationId;

use crate::metrics::Metrics;
use crate::wire::MessageOut;

/// Fixed per-entry overhead counted against the budget, bytes (key,
/// struct, ids, the cache's own slot).
const ENTRY_OVERHEAD: u64 = 160;
/// A guess at the average entry, for sizing the table, bytes.
const TYPICAL_ENTRY: u64 = 400;

#[derive(Clone)]
struct Bytes;

impl Weighter<(u64, u64), Entry> for Bytes {
    fn weight(&self, _key: &(u64, u64), e: &Entry) -> u64 {
        let m = &e.message;
        let reactions: usize = m
            .reactions
            .iter()
            .map(|r| r.emoji.len() + 8 * r.users.len() + 48)
            .sum();
        let prior: usize = m
            .prior
            .iter()
            .map(|p| {
                p.body.as_ref().map_or(0, String::len)
                    + p.body_b64.as_ref().map_or(0, String::len)
                    + 56
            })
            .sum();
        // An encrypted message's payloads: the ciphertexts and 40 bytes
        // of ids and vector header each.
        let sealed: usize = m.sealed.as_ref().map_or(0, |e| {
            e.payloads.iter().map(|p| p.ciphertext.len() + 40).sum()
        });
        ENTRY_OVERHEAD
            + (sealed
                + m.body.as_ref().map_or(0, String::len)
                + m.body_b64.as_ref().map_or(0, String::len)
                + m.client_msg_id.len()
                + reactions
                + prior
                + 8 * m.mentions.len()) as u64
    }
}

/// A message and the revision it was read at.
#[derive(Clone)]
struct Entry {
    message: MessageOut,
    revision: Revision,
}

/// Recent messages by (conversation, seq).
pub struct RecentMessages {
    cache: Option<Cache<(u64, u64), Entry, Bytes>>,
    /// This node's message revisions.
    revisions: Arc<Revisions>,
    /// Hits and misses are counted here.
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for RecentMessages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecentMessages")
            .field("entries", &self.cache.as_ref().map_or(0, Cache::len))
            .finish_non_exhaustive()
    }
}

impl RecentMessages {
    /// A cache of about `bytes` (0 turns it off) of messages whose
    /// changes `revisions` records.
    pub fn new(bytes: u64, revisions: Arc<Revisions>, metrics: Arc<Metrics>) -> Self {
        let cache = (bytes > 0).then(|| {
            let items = usize::try_from(bytes / TYPICAL_ENTRY)
                .unwrap_or(usize::MAX)
                .max(16);
            Cache::with_weighter(items, bytes, Bytes)
        });
        RecentMessages {
            cache,
            revisions,
            metrics,
        }
    }

    /// The entry's message if it is current and not expired at
    /// `now_micros`.
    fn current(&self, conv: u64, seq: u64, now_micros: u64) -> Option<MessageOut> {
        let e = self.cache.as_ref()?.get(&(conv, seq))?;
        let fresh = e.revision == self.revisions.of(ConversationId(conv), Seq(seq))
            && e.message.expires_at.is_none_or(|x| x > now_micros);
        fresh.then_some(e.message)
    }

    /// The message, unless absent, changed since cached, or expired at
    /// `now_micros`.
    pub fn get(&self, conv: u64, seq: u64, now_micros: u64) -> Option<MessageOut> {
        let m = self.current(conv, seq, now_micros);
        self.count(m.is_some());
        m
    }

    /// Every message of seqs `lo..=hi`, newest first, or None if one is
    /// missing, changed or expired (counted as one miss).
    pub fn range(&self, conv: u64, lo: u64, hi: u64, now_micros: u64) -> Option<Vec<MessageOut>> {
        self.cache.as_ref()?;
        let page: Option<Vec<MessageOut>> = (lo..=hi)
            .rev()
            .map(|seq| self.current(conv, seq, now_micros))
            .collect();
        self.count(page.is_some());
        page
    }

    /// Take before reading the messages to insert (see the module docs).
    pub fn mark(&self) -> Mark {
        self.revisions.mark()
    }

    fn count(&self, hit: bool) {
        if hit {
            self.metrics.message_cache_hits.inc();
        } else {
            self.metrics.message_cache_misses.inc();
        }
    }

    /// Remembers a message read from or committed to the store after
    /// `mark`, unless any message changed on this node since.
    pub fn insert(&self, m: &MessageOut, mark: Mark) {
        let Some(c) = &self.cache else { return };
        // The revision first, then the check (see `missive_chat::revisions`).
        let revision = self.revisions.of(ConversationId(m.conv.0), Seq(m.seq));
        if self.revisions.unchanged_since(mark) {
            let entry = Entry {
                message: m.clone(),
                revision,
            };
            c.insert((m.conv.0, m.seq), entry);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use crate::wire::Id;

    fn msg(conv: u64, seq: u64, body: &str, expires_at: Option<u64>) -> MessageOut {
        MessageOut {
            conv: Id(conv),
            seq,
            ts: 1000 + seq,
            sender: Id(1),
            device: Id(1),
            client_msg_id: format!("c{seq}"),
            kind: "text",
            body: Some(body.to_string()),
            body_b64: None,
            expires_at,
            system: None,
            reply_to: None,
            edited_at: None,
            edits: None,
            unsent: None,
            reactions: Arc::default(),
            viewer: crate::wire::Viewer::default(),
            mentions: Vec::new(),
            prior: Vec::new(),
            sealed: None,
        }
    }

    #[test]
    fn serves_whole_pages_only_and_never_an_expired_message() {
        let metrics = Arc::new(Metrics::default());
        let c = RecentMessages::new(1 << 20, Arc::default(), Arc::clone(&metrics));
        for seq in 1..=5 {
            c.insert(&msg(9, seq, "hi", None), c.mark());
        }
        let page = c.range(9, 3, 5, 0).unwrap();
        assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), [5, 4, 3]);
        assert!(c.range(9, 0, 5, 0).is_none(), "seq 0 was never stored");
        assert!(c.range(8, 1, 1, 0).is_none(), "another conversation");
        c.insert(&msg(9, 6, "bye", Some(2_000)), c.mark());
        assert!(c.get(9, 6, 1_999).is_some());
        assert!(c.get(9, 6, 2_000).is_none(), "expired at its expires_at");
        assert!(c.range(9, 4, 6, 2_000).is_none());
        assert_eq!(metrics.message_cache_hits.get(), 2);
        assert_eq!(metrics.message_cache_misses.get(), 4);
    }

    #[test]
    fn stays_within_its_byte_budget() {
        let c = RecentMessages::new(64 * 1024, Arc::default(), Arc::default());
        let big = "x".repeat(1000);
        for seq in 1..=1000 {
            c.insert(&msg(1, seq, &big, None), c.mark());
        }
        let kept = (1..=1000).filter(|s| c.get(1, *s, 0).is_some()).count();
        assert!(
            kept > 0 && kept <= 64,
            "kept {kept} of 1000 × ~1.2 KB in 64 KiB"
        );
        let off = RecentMessages::new(0, Arc::default(), Arc::default());
        off.insert(&msg(1, 1, "a", None), off.mark());
        assert!(off.get(1, 1, 0).is_none());
    }

    #[test]
    fn a_changed_message_is_not_served_and_a_racing_read_is_not_kept() {
        let revisions = Arc::new(Revisions::default());
        let c = RecentMessages::new(1 << 20, Arc::clone(&revisions), Arc::default());
        c.insert(&msg(9, 1, "before", None), c.mark());
        c.insert(&msg(9, 2, "other", None), c.mark());
        assert!(c.get(9, 1, 0).is_some());
        revisions.changed(ConversationId(9), Seq(1));
        assert!(c.get(9, 1, 0).is_none(), "an edited message is read anew");
        assert!(c.range(9, 1, 2, 0).is_none());
        // A read that began before a change is not kept.
        let mark = c.mark();
        revisions.changed(ConversationId(9), Seq(1));
        c.insert(&msg(9, 1, "read before the change", None), mark);
        assert!(c.get(9, 1, 0).is_none());
        c.insert(&msg(9, 1, "after", None), c.mark());
        assert_eq!(c.get(9, 1, 0).unwrap().body.as_deref(), Some("after"));
        revisions.all_changed();
        assert!(c.get(9, 2, 0).is_none(), "a snapshot install changes all");
    }
}
