//! What the store forgets on its own: the LSM's retention rule for chat
//! data. The engine asks it about message keys only — at read time (an
//! expired message is filtered out at once) and in compaction (which drops
//! it for good) — so the rule is a pure function of the stored value.

use std::sync::Arc;

use missive_engine::keys::{ConversationId, Timestamp};
use missive_engine::lsm::{MessageRetention, Retention};

use crate::records;

/// The LSM's retention rule for this store: a message expires at the
/// `expires_at` its value carries (disappearing messages). Reads filter an
/// expired message out at once and compaction drops it. Only message keys
/// are ever judged (the engine checks the key's keyspace first), and a
/// value whose head does not decode is kept, so the read that needs it reports
/// the corruption instead of it silently vanishing.
pub fn message_retention() -> Arc<dyn Retention> {
    Arc::new(MessageRetention {
        expires_at: |value: &[u8]| {
            records::message_expires_at(value)
                .ok()
                .flatten()
                .map(Timestamp)
        },
        window: |_conv: ConversationId| None,
    })
}
