//! The recent-messages cache: messages as clients see them, by
//! (conversation, seq), bounded in bytes.
//!
//! # Why it stays consistent with the store
//!
//! A stored message never changes: an edit, a reaction or an unsend is a
//! new message with its own seq, and seqs are dense and never reused. So a
//! cached message is either exactly what the store holds under that
//! (conversation, seq), or the store no longer holds it because it expired
//! — and an expired message is never served from here (its `expires_at`
//! is checked on every hit). Entries come from this node's own commits
//! (`insert` after the `sent` ack's write applied) and from store reads.
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

use crate::metrics::Metrics;
use crate::wire::MessageOut;

/// Fixed per-entry overhead counted against the budget, bytes (key,
/// struct, ids, the cache's own slot).
const ENTRY_OVERHEAD: u64 = 160;
/// A guess at the average entry, for sizing the table, bytes.
const TYPICAL_ENTRY: u64 = 400;

#[derive(Clone)]
struct Bytes;

impl Weighter<(u64, u64), MessageOut> for Bytes {
    fn weight(&self, _key: &(u64, u64), m: &MessageOut) -> u64 {
        ENTRY_OVERHEAD
            + (m.body.as_ref().map_or(0, String::len)
                + m.body_b64.as_ref().map_or(0, String::len)
                + m.client_msg_id.len()) as u64
    }
}

/// Recent messages by (conversation, seq).
pub struct RecentMessages {
    cache: Option<Cache<(u64, u64), MessageOut, Bytes>>,
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
    /// A cache of about `bytes` (0 turns it off).
    pub fn new(bytes: u64, metrics: Arc<Metrics>) -> Self {
        let cache = (bytes > 0).then(|| {
            let items = usize::try_from(bytes / TYPICAL_ENTRY)
                .unwrap_or(usize::MAX)
                .max(16);
            Cache::with_weighter(items, bytes, Bytes)
        });
        RecentMessages { cache, metrics }
    }

    /// The message, unless absent or expired at `now_micros`.
    pub fn get(&self, conv: u64, seq: u64, now_micros: u64) -> Option<MessageOut> {
        let m = self
            .cache
            .as_ref()?
            .get(&(conv, seq))
            .filter(|m| m.expires_at.is_none_or(|e| e > now_micros));
        self.count(m.is_some());
        m
    }

    /// Every message of seqs `lo..=hi`, newest first, or None if one is
    /// missing or expired (counted as one miss).
    pub fn range(&self, conv: u64, lo: u64, hi: u64, now_micros: u64) -> Option<Vec<MessageOut>> {
        let cache = self.cache.as_ref()?;
        let page: Option<Vec<MessageOut>> = (lo..=hi)
            .rev()
            .map(|seq| {
                cache
                    .get(&(conv, seq))
                    .filter(|m| m.expires_at.is_none_or(|e| e > now_micros))
            })
            .collect();
        self.count(page.is_some());
        page
    }

    fn count(&self, hit: bool) {
        if hit {
            self.metrics.message_cache_hits.inc();
        } else {
            self.metrics.message_cache_misses.inc();
        }
    }

    /// Remembers a message read from or committed to the store.
    pub fn insert(&self, m: &MessageOut) {
        if let Some(c) = &self.cache {
            c.insert((m.conv.0, m.seq), m.clone());
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
        }
    }

    #[test]
    fn serves_whole_pages_only_and_never_an_expired_message() {
        let metrics = Arc::new(Metrics::default());
        let c = RecentMessages::new(1 << 20, Arc::clone(&metrics));
        for seq in 1..=5 {
            c.insert(&msg(9, seq, "hi", None));
        }
        let page = c.range(9, 3, 5, 0).unwrap();
        assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), [5, 4, 3]);
        assert!(c.range(9, 0, 5, 0).is_none(), "seq 0 was never stored");
        assert!(c.range(8, 1, 1, 0).is_none(), "another conversation");
        c.insert(&msg(9, 6, "bye", Some(2_000)));
        assert!(c.get(9, 6, 1_999).is_some());
        assert!(c.get(9, 6, 2_000).is_none(), "expired at its expires_at");
        assert!(c.range(9, 4, 6, 2_000).is_none());
        assert_eq!(metrics.message_cache_hits.get(), 2);
        assert_eq!(metrics.message_cache_misses.get(), 4);
    }

    #[test]
    fn stays_within_its_byte_budget() {
        let c = RecentMessages::new(64 * 1024, Arc::default());
        let big = "x".repeat(1000);
        for seq in 1..=1000 {
            c.insert(&msg(1, seq, &big, None));
        }
        let kept = (1..=1000).filter(|s| c.get(1, *s, 0).is_some()).count();
        assert!(
            kept > 0 && kept <= 64,
            "kept {kept} of 1000 × ~1.2 KB in 64 KiB"
        );
        let off = RecentMessages::new(0, Arc::default());
        off.insert(&msg(1, 1, "a", None));
        assert!(off.get(1, 1, 0).is_none());
    }
}
