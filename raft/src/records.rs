//! What the state machine stores in the LSM: keys and values, byte by byte.
//!
//! Every key starts with the engine's keyspace tag and the conversation's
//! slot (see `missive_engine::keys`), so a shard's data is one contiguous
//! range per keyspace. Values are `[version: u8 = 1][postcard(struct)]`,
//! fields in declaration order (postcard: varint integers, length-prefixed
//! bytes/strings, `Option` as a 0/1 byte then the value).
//!
//! ```text
//! conversation  0x20 slot:u16 conv:u64 0x00            → Conversation
//! head          0x20 slot:u16 conv:u64 0x01            → Head
//! dedup         0x20 slot:u16 conv:u64 0x02 sender:u64 client_msg_id → Dedup
//! message       0x10 slot:u16 conv:u64 (MAX-ts):u64    → Message
//! receipt       0x40 slot:u16 conv:u64 user:u64        → Receipt
//! applied       0x50 shard:u32 0x01                    → Applied (raft meta)
//! ```
//!
//! All integers in keys are big-endian, so byte order is numeric order.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use missive_engine::keys::{message_key, ConversationId, Keyspace, Slot, Timestamp};

use crate::command::{ConversationKind, DeviceId, MessageKind, UserId};
use crate::error::Result;
use crate::types::{LogId, ShardId, StoredMembership};

/// Encodes a stored value: `[version u8 = 1][postcard]` (see `codec`).
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    crate::codec::encode("stored record", v)
}

/// Decodes a value written by [`encode`].
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T> {
    crate::codec::decode(what, bytes)
}

/// A conversation's membership and settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    /// Direct or group.
    pub kind: ConversationKind,
    /// The group's name.
    pub name: String,
    /// Members, sorted by id.
    pub members: Vec<UserId>,
    /// Admins, sorted by id (a subset of members).
    pub admins: Vec<UserId>,
    /// Bumped by every membership change.
    pub version: u64,
    /// When it was created (µs, the leader's stamp).
    pub created_micros: u64,
}

impl Conversation {
    /// Whether `u` is a member.
    pub fn is_member(&self, u: UserId) -> bool {
        self.members.binary_search(&u).is_ok()
    }
    /// Whether `u` is an admin.
    pub fn is_admin(&self, u: UserId) -> bool {
        self.admins.binary_search(&u).is_ok()
    }
}

/// The newest message's position: the next message gets `seq + 1` and a ts
/// above `ts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Head {
    /// Newest message's ts (µs).
    pub ts: u64,
    /// Newest message's seq (0 before the first message).
    pub seq: u64,
}

/// Where an already stored message is, for deduplication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dedup {
    /// Its ts.
    pub ts: u64,
    /// Its seq.
    pub seq: u64,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Dense per-conversation sequence number.
    pub seq: u64,
    /// The sender.
    pub sender: UserId,
    /// The sending device.
    pub device: DeviceId,
    /// The sender's id for it.
    pub client_msg_id: String,
    /// What it is.
    pub kind: MessageKind,
    /// Opaque bytes.
    pub body: Vec<u8>,
    /// When it disappears (µs), if ever.
    pub expires_at: Option<u64>,
}

/// A member's receipt watermarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Receipt {
    /// Delivered up to this seq.
    pub delivered: u64,
    /// Read up to this seq.
    pub read: u64,
}

/// The state machine's own position, written with every applied batch so
/// that what the LSM holds after a restart (its flushed state) says exactly
/// which log entry it reflects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The last applied log id.
    pub last_applied: Option<LogId>,
    /// The last applied membership.
    pub membership: StoredMembership,
}

fn conv_key(conv: ConversationId, suffix: u8) -> Vec<u8> {
    let mut k = Vec::with_capacity(12);
    k.push(Keyspace::Conversation as u8);
    k.extend_from_slice(&Slot::of_conversation(conv).0.to_be_bytes());
    k.extend_from_slice(&conv.0.to_be_bytes());
    k.push(suffix);
    k
}

/// Key of a conversation's record.
pub fn conversation_key(conv: ConversationId) -> Vec<u8> {
    conv_key(conv, 0x00)
}

/// Key of a conversation's head.
pub fn head_key(conv: ConversationId) -> Vec<u8> {
    conv_key(conv, 0x01)
}

/// Key of a dedup record.
pub fn dedup_key(conv: ConversationId, sender: UserId, client_msg_id: &str) -> Vec<u8> {
    let mut k = conv_key(conv, 0x02);
    k.extend_from_slice(&sender.0.to_be_bytes());
    k.extend_from_slice(client_msg_id.as_bytes());
    k
}

/// Key of a message.
pub fn msg_key(conv: ConversationId, ts: u64) -> Vec<u8> {
    message_key(conv, Timestamp(ts)).to_vec()
}

/// Key of a member's receipt.
pub fn receipt_key(conv: ConversationId, user: UserId) -> Vec<u8> {
    let mut k = Vec::with_capacity(19);
    k.push(Keyspace::Receipt as u8);
    k.extend_from_slice(&Slot::of_conversation(conv).0.to_be_bytes());
    k.extend_from_slice(&conv.0.to_be_bytes());
    k.extend_from_slice(&user.0.to_be_bytes());
    k
}

/// Prefix of every receipt of a conversation.
pub fn receipt_prefix(conv: ConversationId) -> Vec<u8> {
    let mut k = receipt_key(conv, UserId(0));
    k.truncate(11);
    k
}

/// Key of a shard's applied state.
pub fn applied_key(shard: ShardId) -> Vec<u8> {
    let mut k = Vec::with_capacity(6);
    k.push(Keyspace::RaftMeta as u8);
    k.extend_from_slice(&shard.0.to_be_bytes());
    k.push(0x01);
    k
}

/// The keyspaces whose keys are slot-prefixed: a shard's data.
pub const SLOTTED_KEYSPACES: [Keyspace; 4] = [
    Keyspace::Message,
    Keyspace::Conversation,
    Keyspace::User,
    Keyspace::Receipt,
];
