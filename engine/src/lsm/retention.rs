//! Retention: which stored values have expired.
//!
//! The owner of the data (the message service) knows its value format and
//! its conversations' retention windows, so it supplies the policy; the
//! engine applies it in two places:
//!
//! - every read filters expired values out, so a read never returns an
//!   expired message, even before compaction has run;
//! - every compaction drops them (or, where a tombstone must stay to hide
//!   older versions below, replaces them with one), so they are physically
//!   gone once compaction has passed over them.

use std::fmt::Debug;

use crate::keys::{decode_message_key, ConversationId, Timestamp};

/// Decides whether a stored value has expired.
pub trait Retention: Send + Sync + Debug {
    /// Whether the value stored under `key` has expired at `now`.
    fn is_expired(&self, key: &[u8], value: &[u8], now: Timestamp) -> bool;
}

/// The common message policy: a message expires at the `expires_at` its
/// value carries (disappearing messages), or when it is older than its
/// conversation's retention window.
pub struct MessageRetention<E, W> {
    /// Reads a message value's `expires_at`, if it has one.
    pub expires_at: E,
    /// A conversation's retention window in microseconds, if it has one.
    pub window: W,
}

impl<E, W> Debug for MessageRetention<E, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MessageRetention")
    }
}

impl<E, W> Retention for MessageRetention<E, W>
where
    E: Fn(&[u8]) -> Option<Timestamp> + Send + Sync,
    W: Fn(ConversationId) -> Option<u64> + Send + Sync,
{
    fn is_expired(&self, key: &[u8], value: &[u8], now: Timestamp) -> bool {
        let Some((conv, ts)) = decode_message_key(key) else {
            return false;
        };
        if (self.expires_at)(value).is_some_and(|at| at <= now) {
            return true;
        }
        (self.window)(conv).is_some_and(|w| ts.0.saturating_add(w) <= now.0)
    }
}
