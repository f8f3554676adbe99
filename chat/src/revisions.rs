//! Revisions: which stored messages changed on this replica, for caches
//! of rendered messages that must never serve an old version.
//!
//! A message's value changes under its key (an edit, an unsend, a
//! reaction). Apply records each change here, synchronously, after the
//! batch is in the LSM and before the command's outcome is answered, so a
//! caller who got an answer never finds the old version in a cache that
//! follows this protocol:
//!
//! 1. before reading the store, take [`Revisions::mark`];
//! 2. after reading, take [`Revisions::of`] the message, then insert only
//!    if [`Revisions::unchanged_since`] the mark (nothing changed anywhere
//!    on this replica while reading: the value read is current);
//! 3. serve an entry only while `of` still equals the revision stored
//!    with it.
//!
//! A change bumps the total *before* the message's stripe, and step 2
//! reads the stripe *before* checking the total, so a change racing the
//! insert either fails the check or lands after the stripe was read (and
//! invalidates the entry). Stripes are shared by many messages (a hash of
//! (conversation, seq)): a change invalidates its neighbours too, which
//! costs a re-read, never a stale answer. A snapshot install changes
//! anything, so it bumps the epoch every revision includes.
//!
//! Only changes applied on this replica are seen: a cache may hold only
//! messages of shards this node replicates.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use missive_engine::keys::ConversationId;

use crate::ids::Seq;

/// Stripes of the table (8 bytes each).
const STRIPES: usize = 4096;

/// The change counters of one node (see the [module documentation](self)).
#[derive(Debug)]
pub struct Revisions {
    /// Every change on this replica.
    total: AtomicU64,
    /// Bumped by snapshot installs: every message may have changed.
    epoch: AtomicU64,
    /// Changes by stripe of (conversation, seq).
    stripes: Box<[AtomicU64]>,
}

/// A message's revision: equal values mean no change in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revision {
    epoch: u64,
    stripe: u64,
}

/// The total number of changes at some moment (step 1 of the protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark(u64);

impl Default for Revisions {
    fn default() -> Self {
        Revisions {
            total: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Revisions {
    fn stripe(&self, conv: ConversationId, seq: Seq) -> &AtomicU64 {
        // Fibonacci hashing: conversation ids are random, seqs dense; the
        // multiply spreads neighbouring seqs over stripes.
        let h = (conv.0 ^ seq.0.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .wrapping_mul(0xBF58_476D_1CE4_E5B9);
        &self.stripes[(h >> 52) as usize % STRIPES]
    }

    /// Before reading the store.
    pub fn mark(&self) -> Mark {
        Mark(self.total.load(SeqCst))
    }

    /// The message's revision now.
    pub fn of(&self, conv: ConversationId, seq: Seq) -> Revision {
        Revision {
            epoch: self.epoch.load(SeqCst),
            stripe: self.stripe(conv, seq).load(SeqCst),
        }
    }

    /// Whether nothing changed since `mark`.
    pub fn unchanged_since(&self, mark: Mark) -> bool {
        self.total.load(SeqCst) == mark.0
    }

    /// Message `seq` of `conv` changed (apply, once durable).
    pub fn changed(&self, conv: ConversationId, seq: Seq) {
        self.total.fetch_add(1, SeqCst);
        self.stripe(conv, seq).fetch_add(1, SeqCst);
    }

    /// Anything may have changed (a snapshot was installed).
    pub fn all_changed(&self) {
        self.total.fetch_add(1, SeqCst);
        self.epoch.fetch_add(1, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_invalidates_its_message_and_fails_a_racing_insert() {
        let r = Revisions::default();
        let (c, s) = (ConversationId(7), Seq(3));
        let mark = r.mark();
        let before = r.of(c, s);
        assert!(r.unchanged_since(mark));
        r.changed(c, s);
        assert!(
            !r.unchanged_since(mark),
            "an insert after a change is refused"
        );
        assert_ne!(r.of(c, s), before, "an entry stored before is stale");
        let other = r.of(ConversationId(8), Seq(1));
        let mark = r.mark();
        r.all_changed();
        assert!(!r.unchanged_since(mark));
        assert_ne!(
            r.of(ConversationId(8), Seq(1)),
            other,
            "an install changes all"
        );
    }
}
