//! What the store forgets on its own: the LSM's retention rule for chat
//! data. The engine asks it about every key a read or a compaction visits
//! — an expired record is filtered out of reads at once and dropped by
//! compaction for good — so the rule is a pure function of the stored key
//! and value. Two kinds of records expire: messages, and the search
//! postings that point at them (which carry the `expires_at` of the last
//! of their messages to expire, so the index forgets a bucket's term once
//! none of the messages holding it can be read).

use std::sync::Arc;

use missive_engine::keys::{ConversationId, Timestamp};
use missive_engine::lsm::{MessageRetention, Retention};

use crate::records;
use crate::search::postings;

/// The chat retention rule (see the module docs).
struct ChatRetention<M> {
    messages: M,
}

impl<M> std::fmt::Debug for ChatRetention<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChatRetention")
    }
}

impl<M: Retention> Retention for ChatRetention<M> {
    fn is_expired(&self, key: &[u8], value: &[u8], now: Timestamp) -> bool {
        if postings::is_posting(key) {
            // A value that does not decode is kept: the read that needs it
            // reports the corruption instead of it silently vanishing.
            return postings::expires_at(key, value)
                .ok()
                .flatten()
                .is_some_and(|at| at <= now.0);
        }
        self.messages.is_expired(key, value, now)
    }
}

/// The LSM's retention rule for this store: a message expires at the
/// `expires_at` its value carries (disappearing messages and retention),
/// and so does each of its search postings. Reads filter an expired record
/// out at once and compaction drops it. A value whose head does not decode
/// is kept, so the read that needs it reports the corruption instead of it
/// silently vanishing.
pub fn message_retention() -> Arc<dyn Retention> {
    Arc::new(ChatRetention {
        messages: MessageRetention {
            expires_at: |value: &[u8]| {
                records::message_expires_at(value)
                    .ok()
                    .flatten()
                    .map(Timestamp)
            },
            window: |_conv: ConversationId| None,
        },
    })
}
