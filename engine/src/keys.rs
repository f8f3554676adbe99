//! The engine's key layout.
//!
//! Every key starts with a one-byte keyspace tag and a two-byte slot, so the
//! data of one slot — and so of one shard, which owns a set of slots — is a
//! small set of contiguous key ranges (for snapshots, moves and splits):
//!
//! ```text
//! offset size field
//!      0    1 keyspace tag        (Keyspace)
//!      1    2 slot                u16 big-endian
//!      3    …  keyspace-specific, big-endian so byte order is numeric order
//! ```
//!
//! Messages (keyspace 0x10):
//!
//! ```text
//!      3    8 conversation id     u64 BE
//!     11    8 u64::MAX - ts       u64 BE (newest first within a conversation)
//! ```
//!
//! so "the latest 50 messages of a conversation" is one forward scan from the
//! 11-byte conversation prefix, which is also the unit the bloom filters hash.
//! The other keyspaces are laid out by their owners (the server issue); their
//! prefix for bloom purposes is the whole key (see [`bloom_prefix`]).

/// A conversation (a 1:1 chat or a group).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ConversationId(pub u64);

/// A server-assigned per-conversation timestamp, in microseconds since the
/// Unix epoch, strictly increasing within a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The timestamp for the next message of a conversation whose newest
    /// message has `prev`: the clock's `now`, bumped to `prev + 1` when the
    /// clock has not moved past it (a collision, or a clock that stepped
    /// back), so timestamps stay strictly increasing per conversation.
    pub fn next_after(prev: Option<Timestamp>, now: Timestamp) -> Timestamp {
        match prev {
            Some(p) if now <= p => Timestamp(p.0.saturating_add(1)),
            _ => now,
        }
    }
}

/// One of the fixed hash slots data is sharded by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Slot(pub u16);

/// The number of slots (fixed for the life of a cluster).
pub const SLOTS: u16 = 4096;

impl Slot {
    /// The slot of a conversation: a stable hash (xxh3) of its id, so ids
    /// that are dense or sequential still spread over all slots.
    pub fn of_conversation(conv: ConversationId) -> Slot {
        Slot((xxhash_rust::xxh3::xxh3_64(&conv.0.to_be_bytes()) % u64::from(SLOTS)) as u16)
    }

    /// The slot of a user's own data (inbox, conversation index, devices):
    /// a hash of the id under a different seed than conversations', so a
    /// user and a conversation with equal ids do not pile onto one slot.
    pub fn of_user(user: u64) -> Slot {
        Slot(
            (xxhash_rust::xxh3::xxh3_64_with_seed(&user.to_be_bytes(), 0x7573_6572)
                % u64::from(SLOTS)) as u16,
        )
    }
}

/// What a key holds. The tag is the key's first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
#[non_exhaustive]
pub enum Keyspace {
    /// Messages, by conversation and reverse timestamp.
    Message = 0x10,
    /// Conversation metadata (members, name, retention window).
    Conversation = 0x20,
    /// Per-user indexes (conversation list, sync events).
    User = 0x30,
    /// Receipt watermarks.
    Receipt = 0x40,
    /// Raft state-machine metadata.
    RaftMeta = 0x50,
    /// A conversation's durable outbox: events not yet fanned out to its
    /// members' per-user data (which lives on other shards).
    Outbox = 0x60,
    /// Media: uploads in progress, their bytes in chunks of at most 1 MiB,
    /// and content-addressed objects (see `missive_chat::media`).
    Media = 0x70,
    /// Push notifications waiting to be sent (see `missive_chat::push`):
    /// kept apart from the user's other data so the sender's scan of a
    /// shard reads only pending jobs.
    Push = 0x80,
    /// Push notifications that could not be sent in time (dead letters,
    /// for an operator to list and replay).
    PushDead = 0x90,
}

/// Length of a message key.
pub const MESSAGE_KEY_LEN: usize = 19;
/// Length of a message key's conversation prefix (tag, slot, conversation).
pub const CONVERSATION_PREFIX_LEN: usize = 11;

/// Encodes the key of a message.
pub fn message_key(conv: ConversationId, ts: Timestamp) -> [u8; MESSAGE_KEY_LEN] {
    let mut k = [0u8; MESSAGE_KEY_LEN];
    k[..CONVERSATION_PREFIX_LEN].copy_from_slice(&conversation_prefix(conv));
    k[11..19].copy_from_slice(&(u64::MAX - ts.0).to_be_bytes());
    k
}

/// The prefix every message key of a conversation starts with.
pub fn conversation_prefix(conv: ConversationId) -> [u8; CONVERSATION_PREFIX_LEN] {
    let mut k = [0u8; CONVERSATION_PREFIX_LEN];
    k[0] = Keyspace::Message as u8;
    k[1..3].copy_from_slice(&Slot::of_conversation(conv).0.to_be_bytes());
    k[3..11].copy_from_slice(&conv.0.to_be_bytes());
    k
}

/// Decodes a message key.
pub fn decode_message_key(key: &[u8]) -> Option<(ConversationId, Timestamp)> {
    if key.len() != MESSAGE_KEY_LEN || key[0] != Keyspace::Message as u8 {
        return None;
    }
    let conv = u64::from_be_bytes(key[3..11].try_into().ok()?);
    let rts = u64::from_be_bytes(key[11..19].try_into().ok()?);
    Some((ConversationId(conv), Timestamp(u64::MAX - rts)))
}

/// The part of a key the bloom filters hash: a message key's conversation
/// prefix (queries ask "anything of this conversation?"), any other key whole.
pub fn bloom_prefix(key: &[u8]) -> &[u8] {
    if key.len() == MESSAGE_KEY_LEN && key[0] == Keyspace::Message as u8 {
        &key[..CONVERSATION_PREFIX_LEN]
    } else {
        key
    }
}

/// The smallest key strictly greater than every key starting with `prefix`
/// (None when the prefix is all 0xFF).
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_first_within_a_conversation() {
        let c = ConversationId(0xDEAD_BEEF);
        let old = message_key(c, Timestamp(1_000));
        let new = message_key(c, Timestamp(2_000));
        assert!(new < old);
        assert_eq!(decode_message_key(&new), Some((c, Timestamp(2_000))));
        assert_eq!(bloom_prefix(&new), &conversation_prefix(c)[..]);
        assert!(new.starts_with(&conversation_prefix(c)));
    }

    #[test]
    fn timestamps_strictly_increase() {
        assert_eq!(Timestamp::next_after(None, Timestamp(5)), Timestamp(5));
        assert_eq!(
            Timestamp::next_after(Some(Timestamp(4)), Timestamp(5)),
            Timestamp(5)
        );
        assert_eq!(
            Timestamp::next_after(Some(Timestamp(5)), Timestamp(5)),
            Timestamp(6)
        );
        assert_eq!(
            Timestamp::next_after(Some(Timestamp(9)), Timestamp(5)),
            Timestamp(10)
        );
    }

    #[test]
    fn prefix_successor_bounds_the_prefix() {
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xFF, 0xFF]), None);
    }
}
