//! The chat domain's identifiers.
//!
//! Each is a newtype over the u64 the client sends, so a user id cannot be
//! passed where a device id is meant. postcard encodes a newtype exactly as
//! the integer inside (a varint), so these types are also the stored
//! format. Conversations are the engine's `ConversationId` (its key layout
//! is built on them).

use serde::{Deserialize, Serialize};

/// A user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UserId(pub u64);

/// One of a user's devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeviceId(pub u64);

pub use missive_engine::keys::ConversationId;

/// The counters that order a conversation's messages and events and a
/// user's inbox. Each is dense from 1 within its scope (0: none yet) and
/// travels to clients as a plain integer; the types keep one from being
/// compared with or stored as another. postcard encodes each exactly as
/// the u64 inside, so records and entries keep their bytes
/// (`chat/tests/it/formats.rs`).
macro_rules! counter {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
        )]
        pub struct $name(pub u64);

        impl $name {
            /// Before the first (nothing yet).
            pub const ZERO: $name = $name(0);

            /// The one after this.
            #[must_use]
            pub fn next(self) -> $name {
                $name(self.0.saturating_add(1))
            }

            /// How many come after `earlier` up to and including this one
            /// (0 if `earlier` is not earlier).
            pub fn since(self, earlier: $name) -> u64 {
                self.0.saturating_sub(earlier.0)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

counter! {
    /// A message's position in its conversation: dense from 1, in the
    /// order the shard applied them. Receipt watermarks are seqs too.
    Seq
}

counter! {
    /// An event's position in a conversation's outbox (messages, receipts,
    /// membership changes): dense from 1; fan-out delivers them in order.
    Eseq
}

counter! {
    /// An event's position in one user's inbox, which every device of the
    /// user syncs from: dense from 1.
    Useq
}

/// The id of the direct conversation of two users: one per unordered pair,
/// a hash so no lookup is needed to find it (and the key under which the
/// pair's blocks are kept, whether or not the conversation exists).
pub fn direct_id(a: UserId, b: UserId) -> missive_engine::keys::ConversationId {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&lo.0.to_be_bytes());
    bytes[8..].copy_from_slice(&hi.0.to_be_bytes());
    missive_engine::keys::ConversationId(
        xxhash_rust::xxh3::xxh3_64_with_seed(&bytes, 0x6469_7265_6374).max(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_step_and_measure_without_wrapping() {
        assert_eq!(Seq::ZERO.next(), Seq(1));
        assert_eq!(Seq(u64::MAX).next(), Seq(u64::MAX));
        assert_eq!(Seq(7).since(Seq(3)), 4);
        assert_eq!(Seq(3).since(Seq(7)), 0);
        assert_eq!(Useq(41).to_string(), "41");
        // A newtype is stored as the integer inside.
        let bytes = postcard::to_allocvec(&Eseq(300)).expect("encodes");
        assert_eq!(bytes, postcard::to_allocvec(&300u64).expect("encodes"));
    }
}
