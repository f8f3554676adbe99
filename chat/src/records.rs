//! What the state machine stores in the LSM: keys and values, byte by byte.
//!
//! Every key starts with the engine's keyspace tag and the conversation's
//! slot (see `missive_engine::keys`), so a shard's data is one contiguous
//! range per keyspace. Values are `[version: u8 = 1][postcard(struct)]`,
//! fields in declaration order (postcard: varint integers, length-prefixed
//! bytes/strings, `Option` as a 0/1 byte then the value).
//!
//! ```text
//! conversation  0x20 slot:u16 conv:u64 0x00            → Conversation (v3)
//! head          0x20 slot:u16 conv:u64 0x01            → Head
//! dedup         0x20 slot:u16 conv:u64 0x02 sender:u64 client_msg_id → Dedup
//! seq index     0x20 slot:u16 conv:u64 0x04 seq:u64    → Indexed (v2)
//! reactions     0x20 slot:u16 conv:u64 0x05 seq:u64    → Reactions
//! pins          0x20 slot:u16 conv:u64 0x06            → Pins
//! blocks        0x20 slot:u16 pair:u64 0x07            → Blocks
//! hidden        0x20 slot:u16 conv:u64 0x08 user:u64 seq:u64 → Hidden
//! posting       0x20 slot:u16 conv:u64 0x09 term 0x00 (MAX-ts):u64 → Posting
//! message       0x10 slot:u16 conv:u64 (MAX-ts):u64    → Message (v4)
//! receipt       0x40 slot:u16 conv:u64 user:u64        → Receipt
//! outbox head   0x20 slot:u16 conv:u64 0x03            → OutboxHead
//! outbox entry  0x60 slot:u16 conv:u64 eseq:u64        → OutboxEntry
//! user head     0x30 uslot:u16 user:u64 0x00           → UserHead
//! inbox event   0x30 uslot:u16 user:u64 0x01 useq:u64  → InboxEvent
//! user's conv   0x30 uslot:u16 user:u64 0x02 conv:u64  → UserConv (v2)
//! device        0x30 uslot:u16 user:u64 0x03 dev:u64   → Device
//! profile       0x30 uslot:u16 user:u64 0x04           → Profile
//! push target   0x30 uslot:u16 user:u64 0x05 dev:u64   → PushTarget
//! blocked user  0x30 uslot:u16 user:u64 0x06 other:u64 → BlockedUser
//! ticket uses   0x30 uslot:u16 user:u64 0x07            → TicketUses
//! revocations   0x30 uslot:u16 user:u64 0x08            → Revocations
//! device keys   0x30 uslot:u16 user:u64 0x09 dev:u64   → e2ee::DeviceKeys
//! one-time key  0x30 uslot:u16 user:u64 0x0a dev:u64 n:u64 → e2ee::OneTimeKey
//! ```
//!
//! `pair` is the direct conversation id of two users (`ids::direct_id`):
//! their blocks live on that conversation's shard whether or not they ever
//! talked, so the send and create rules of the pair read them in apply.
//! Each user's own list (`blocked user`) is written by inbox delivery of
//! the block's event, for that user's devices to read.
//!
//! `slot` is the conversation's slot, `uslot` the user's
//! (`Slot::of_user`): a user's own data lives on the user's shard, not on
//! the shards of the conversations they are in.
//!
//! All integers in keys are big-endian, so byte order is numeric order.
//!
//! # Message values
//!
//! A message is `[4][postcard(Message)]`: the fields of version 1 (`seq`,
//! `sender`, `device`, `client_msg_id`, `kind`, `body`, `expires_at`), then
//! `reply_to: Option<Seq>` (version 2), then what changes after it is
//! stored (version 3): `edited_at: Option<u64>`, `edits: u32`,
//! `unsent: Option<Unsent>`, `reactions: Vec<Reaction>`, `prior:
//! Vec<PriorBody>`, then `mentions: Vec<UserId>` (version 4), then `text:
//! bool` (version 5: the body was given as text, so search indexes it).
//! Versions 1 to 4 are still read: [`decode_message`] fills the missing fields
//! with "none". A message's key never changes: an edit, an unsend or a
//! reaction rewrites the value under it, and compaction drops the older
//! versions like any overwritten value.
//!
//! The seq index (written with every message since version 2) finds a
//! message by seq; a message stored before it has no index entry, so
//! commands that name a message by seq cannot find it. Index values are
//! `[2][postcard(Indexed)]` (`ts`, `expires_at`, `system`, `sender`,
//! `unsent`); version 1 (`ts`, `expires_at`, `system`) reads with an
//! unknown sender (user 0: nobody may edit or unsend it) and not unsent.
//!
//! # What the rules read (the invariant)
//!
//! The engine hides an expired message from reads by the *local* clock,
//! and compaction drops it on each replica's own schedule, so whether a
//! replica still finds a message record differs between replicas. A rule
//! that decided from it could refuse on one replica what another accepted.
//! So every decision a rule makes about a message — whether it exists,
//! who sent it, when, whether it was unsent, what reactions it has —
//! comes from records that never expire: the seq index (judged against the
//! leader's stamp, which every replica shares) and the reactions record.
//! The message record is only *rewritten* from them (a best effort: a
//! replica that no longer finds it has already stopped serving it, and the
//! rewrite would have expired at the same `expires_at` anyway). Reactions
//! live twice for that reason: the reactions record decides, and a copy in
//! the message value serves history pages without a second read.
//!
//! # Growing a record
//!
//! A record's fields are only ever appended, and postcard writes a
//! struct's fields back to back with no framing, so a record of an older
//! version is exactly the newer encoding without its trailing fields.
//! Decoding an older version appends the encoding of the missing fields'
//! defaults and decodes the result as the newest struct: conversations
//! (version 2 added `settings` and `joined`, version 3 `encrypted`, version 4 `push_previews`), messages (versions 2 to 4)
//! and users' views of a conversation (version 2 added `mentions`).
//!
//! Bodies (`Vec<u8>` fields named `body`, here and in commands) are
//! (de)serialized as bytes (`serde_bytes`): in postcard that is the same
//! encoding as a sequence of `u8` (a varint length, then the bytes), but
//! read in one copy instead of one visitor call per byte — which was 6 %
//! of the server's CPU serving history pages.
//!
//! Keyspace 0x50 (`RaftMeta`) is the runtime's (`missive_raft::storage::meta`).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use missive_engine::keys::{message_key, ConversationId, Keyspace, Slot, Timestamp};

use missive_raft::Result;

use crate::ids::{DeviceId, Eseq, Seq, Useq, UserId};

/// Encodes a stored value: `[version u8 = 1][postcard]` (see
/// `missive_raft::storage::codec`).
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    missive_raft::storage::codec::encode("stored record", v)
}

/// Decodes a value written by [`encode`].
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T> {
    missive_raft::storage::codec::decode(what, bytes)
}

/// A conversation's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConversationKind {
    /// Exactly two members, one conversation per unordered pair.
    Direct,
    /// A named group with admins.
    Group,
}

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageKind {
    /// Text (or ciphertext) in the body.
    Text,
    /// A reference to media stored elsewhere.
    Media,
    /// A reply; the body names the message replied to.
    Reply,
    /// A reaction to another message.
    Reaction,
    /// An edit of an earlier message.
    Edit,
    /// The sender withdrew an earlier message.
    Unsend,
    /// Written by the server (membership changes, renames).
    System,
    /// End-to-end encrypted: the body is an `e2ee::Envelope`, one
    /// ciphertext per recipient device; each device is served its own.
    Encrypted,
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
    /// Its settings (version 2; version 1 reads as the defaults).
    pub settings: Settings,
    /// The members who joined after it was created, by id, each with the
    /// seq the conversation had reached just before the message that
    /// added them (version 2; a member not listed was there from the
    /// start). What they see of older messages follows
    /// [`Settings::history`].
    pub joined: Vec<(UserId, Seq)>,
    /// End-to-end encrypted: only encrypted messages are accepted
    /// (version 3; one way, see `crate::e2ee`).
    pub encrypted: bool,
    /// Push notifications of its messages may carry a preview (sender and
    /// text; version 4, off before). Never for an encrypted conversation.
    pub push_previews: bool,
}

/// What a new member sees of the messages sent before they joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum HistoryVisibility {
    /// The whole history (the default).
    #[default]
    Shared,
    /// Only what was sent from their join on.
    Joined,
}

/// How long a conversation keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Retention {
    /// The node's default (`[messages] retention_days`; the default).
    #[default]
    NodeDefault,
    /// Forever.
    Forever,
    /// This many days after each message was sent.
    Days(u32),
}

/// A conversation's settings. Changes apply from the change on: a new
/// retention period governs messages sent after it (like disappearing
/// messages), a new edit-history policy the edits made after it; history
/// visibility is judged when history is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Settings {
    /// What members who join later see of older messages.
    pub history: HistoryVisibility,
    /// Whether an edit keeps the body it replaces (readable by members
    /// as the message's `prior` bodies) or discards it (the default).
    pub keep_edits: bool,
    /// How long messages are kept.
    pub retention: Retention,
}

impl Conversation {
    /// Whether `u` may see message `seq` (see [`Self::hidden_through`]).
    pub fn sees(&self, u: UserId, seq: Seq) -> bool {
        seq > self.hidden_through(u)
    }

    /// The newest seq of the messages `u` may not see (0: none):
    /// with [`HistoryVisibility::Joined`], everything before `u` joined.
    pub fn hidden_through(&self, u: UserId) -> Seq {
        if self.settings.history == HistoryVisibility::Shared {
            return Seq::ZERO;
        }
        self.joined
            .binary_search_by_key(&u, |(m, _)| *m)
            .map_or(Seq::ZERO, |i| self.joined[i].1)
    }

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
    pub seq: Seq,
}

/// Where an already stored message is, for deduplication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dedup {
    /// Its ts.
    pub ts: u64,
    /// Its seq.
    pub seq: Seq,
}

/// A message as read back: its server timestamp (from its key) with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Server timestamp (µs).
    pub ts: u64,
    /// The message.
    pub message: Message,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Dense per-conversation sequence number.
    pub seq: Seq,
    /// The sender.
    pub sender: UserId,
    /// The sending device.
    pub device: DeviceId,
    /// The sender's id for it.
    pub client_msg_id: String,
    /// What it is.
    pub kind: MessageKind,
    /// Opaque bytes.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// When it disappears (µs), if ever.
    pub expires_at: Option<u64>,
    /// The message this one answers (same conversation), if a reply.
    pub reply_to: Option<Seq>,
    /// When its body was last replaced by an edit (µs, the leader's
    /// stamp), if ever.
    pub edited_at: Option<u64>,
    /// How many times it was edited.
    pub edits: u32,
    /// Set once it was unsent (deleted for everyone): the body, the
    /// reactions and the prior bodies are gone; seq, ts and sender stay.
    pub unsent: Option<Unsent>,
    /// The reactions, a copy of the reactions record (see the module docs).
    pub reactions: Vec<Reaction>,
    /// The bodies it had before its edits, oldest first, when the
    /// conversation keeps them (empty otherwise).
    pub prior: Vec<PriorBody>,
    /// The members it mentions, by id, sorted (version 4).
    pub mentions: Vec<UserId>,
    /// Whether the body is text its sender gave as text (checked UTF-8):
    /// the only bodies the search index reads. False for opaque bytes
    /// (maybe ciphertext) and for every message stored before version 5.
    pub text: bool,
}

impl Message {
    /// A new message as its sender wrote it: never edited, unsent or
    /// reacted to.
    #[allow(clippy::too_many_arguments, reason = "one per field a sender gives")]
    pub fn new(
        seq: Seq,
        sender: UserId,
        device: DeviceId,
        client_msg_id: String,
        kind: MessageKind,
        body: Vec<u8>,
        expires_at: Option<u64>,
        reply_to: Option<Seq>,
    ) -> Message {
        Message {
            seq,
            sender,
            device,
            client_msg_id,
            kind,
            body,
            expires_at,
            reply_to,
            edited_at: None,
            edits: 0,
            unsent: None,
            reactions: Vec::new(),
            prior: Vec::new(),
            mentions: Vec::new(),
            text: false,
        }
    }
}

/// Who unsent a message, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsent {
    /// When (µs, the leader's stamp).
    pub at: u64,
    /// Who: the sender, or a group admin.
    pub by: UserId,
}

/// One emoji on a message and who put it there. Encoded as a string and
/// a sequence (the types only keep short ones inline in memory: decoding
/// a history page's reactions allocates nothing for an emoji of up to 23
/// bytes used by up to 4 members).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reaction {
    /// The emoji (a short UTF-8 string).
    pub emoji: smol_str::SmolStr,
    /// Who reacted with it, in the order they did (never empty).
    pub users: smallvec::SmallVec<[UserId; 4]>,
}

/// A message's reactions: the record the reaction rule decides from
/// (`[1][postcard]`), in the order each emoji was first used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Reactions {
    /// One entry per emoji in use.
    pub list: Vec<Reaction>,
}

/// A body a message had before an edit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriorBody {
    /// When it was replaced (µs).
    pub replaced_at: u64,
    /// The body.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// The version byte of a stored [`Message`] (see the module docs).
pub const MESSAGE_VERSION: u8 = 5;

/// Encodes a message: `[MESSAGE_VERSION][postcard(Message)]`.
pub fn encode_message(m: &Message) -> Result<Vec<u8>> {
    encode_versioned("message", MESSAGE_VERSION, m)
}

/// `[version][postcard(v)]`: the encoding of the records whose version
/// moved past 1 (messages, seq index entries).
fn encode_versioned<T: Serialize>(what: &'static str, version: u8, v: &T) -> Result<Vec<u8>> {
    missive_raft::storage::codec::postcard_after(&[version], v)
        .map_err(|e| missive_raft::Error::malformed(what, e))
}

/// The version byte and the rest of a record written by
/// [`encode_versioned`], if this build reads that version (`1..=newest`).
fn split_versioned<'b>(what: &'static str, bytes: &'b [u8], newest: u8) -> Result<(u8, &'b [u8])> {
    match bytes.split_first() {
        Some((&v, rest)) if (1..=newest).contains(&v) => Ok((v, rest)),
        Some((v, _)) => Err(missive_raft::Error::malformed(
            what,
            format!("format version {v}, this build reads 1 to {newest}"),
        )),
        None => Err(missive_raft::Error::malformed(what, "empty record")),
    }
}

/// Decodes a message of any version this build knows (1 to 5): an older
/// one gets the fields its version lacks at their "none" values.
pub fn decode_message(bytes: &[u8]) -> Result<Message> {
    let (v, rest) = split_versioned("message", bytes, MESSAGE_VERSION)?;
    let mentions = (Vec::<UserId>::new(), false);
    let changes = (
        None::<u64>,
        0u32,
        None::<Unsent>,
        Vec::<Reaction>::new(),
        Vec::<PriorBody>::new(),
    );
    let tail = match v {
        1 => Some(postcard_tail(&(None::<Seq>, changes, mentions))?),
        2 => Some(postcard_tail(&(changes, mentions))?),
        3 => Some(postcard_tail(&mentions)?),
        4 => Some(postcard_tail(&false)?),
        _ => None,
    };
    decode_with_tail("message", rest, tail)
}

/// A stored message's `expires_at`, read without decoding the rest: the
/// fields up to it are the same in every version (1 to 5), so only they
/// are parsed, borrowed. The engine's retention rule asks this of every
/// message a read or a compaction visits; decoding whole messages there
/// (reactions, prior bodies) doubled the decode cost of every page.
pub fn message_expires_at(bytes: &[u8]) -> Result<Option<u64>> {
    /// The shared prefix of every message version.
    #[derive(Deserialize)]
    struct Head<'a> {
        _seq: Seq,
        _sender: UserId,
        _device: DeviceId,
        /// Read as bytes: a `&str` would check its UTF-8 for nothing.
        #[serde(borrow)]
        _client_msg_id: &'a [u8],
        _kind: MessageKind,
        #[serde(borrow)]
        _body: &'a [u8],
        expires_at: Option<u64>,
    }
    let (_, rest) = split_versioned("message", bytes, MESSAGE_VERSION)?;
    let (head, _) = postcard::take_from_bytes::<Head<'_>>(rest)
        .map_err(|e| missive_raft::Error::malformed("message", e))?;
    Ok(head.expires_at)
}

/// The version byte of a stored [`Conversation`].
pub const CONVERSATION_VERSION: u8 = 4;

/// Encodes a conversation: `[CONVERSATION_VERSION][postcard(Conversation)]`.
pub fn encode_conversation(c: &Conversation) -> Result<Vec<u8>> {
    encode_versioned("conversation", CONVERSATION_VERSION, c)
}

/// Decodes a conversation of version 1 (no settings, no join seqs), 2
/// (not encrypted), 3 (no push previews) or 4.
pub fn decode_conversation(bytes: &[u8]) -> Result<Conversation> {
    let (v, rest) = split_versioned("conversation", bytes, CONVERSATION_VERSION)?;
    let tail = match v {
        1 => Some(postcard_tail(&(
            Settings::default(),
            Vec::<(UserId, Seq)>::new(),
            false,
            false,
        ))?),
        2 => Some(postcard_tail(&(false, false))?),
        3 => Some(postcard_tail(&false)?),
        _ => None,
    };
    decode_with_tail("conversation", rest, tail)
}

/// The postcard encoding of the fields a version added, at their
/// defaults. A record of an older version is the newer one's encoding
/// without those trailing fields (postcard writes a struct's fields one
/// after another, with no framing), so appending this upgrades it.
fn postcard_tail<T: Serialize>(defaults: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(defaults).map_err(|e| missive_raft::Error::malformed("defaults", e))
}

/// Decodes `rest`, with `tail` (the defaults of the fields its version
/// lacks) appended if given.
fn decode_with_tail<T: DeserializeOwned>(
    what: &'static str,
    rest: &[u8],
    tail: Option<Vec<u8>>,
) -> Result<T> {
    let bad = |e: postcard::Error| missive_raft::Error::malformed(what, e);
    match tail {
        None => postcard::from_bytes(rest).map_err(bad),
        Some(tail) => {
            let mut full = Vec::with_capacity(rest.len() + tail.len());
            full.extend_from_slice(rest);
            full.extend_from_slice(&tail);
            postcard::from_bytes(&full).map_err(bad)
        }
    }
}

/// A member's receipt watermarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Receipt {
    /// Delivered up to this seq.
    pub delivered: Seq,
    /// Read up to this seq.
    pub read: Seq,
}

pub(crate) fn conv_key(conv: ConversationId, suffix: u8) -> Vec<u8> {
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

/// What the seq index holds for one message: where it is, and what the
/// rules that name a message by seq need to know without reading it
/// (`[2][postcard]`, see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Indexed {
    /// The message's ts (its key).
    pub ts: u64,
    /// When it disappears (µs), if ever.
    pub expires_at: Option<u64>,
    /// Written by the server (nobody may answer it).
    pub system: bool,
    /// Who sent it (user 0 for entries of version 1: unknown).
    pub sender: UserId,
    /// Whether it was unsent.
    pub unsent: bool,
}

/// The version byte of a stored [`Indexed`].
pub const INDEXED_VERSION: u8 = 2;

/// An index entry as version 1 stored it.
#[derive(Deserialize)]
struct IndexedV1 {
    ts: u64,
    expires_at: Option<u64>,
    system: bool,
}

/// Encodes a seq index entry: `[INDEXED_VERSION][postcard(Indexed)]`.
pub fn encode_indexed(ix: &Indexed) -> Result<Vec<u8>> {
    encode_versioned("seq index", INDEXED_VERSION, ix)
}

/// Decodes a seq index entry of version 1 or 2.
pub fn decode_indexed(bytes: &[u8]) -> Result<Indexed> {
    let bad = |e: postcard::Error| missive_raft::Error::malformed("seq index", e);
    let (v, rest) = split_versioned("seq index", bytes, INDEXED_VERSION)?;
    if v == INDEXED_VERSION {
        return postcard::from_bytes(rest).map_err(bad);
    }
    let v1: IndexedV1 = postcard::from_bytes(rest).map_err(bad)?;
    Ok(Indexed {
        ts: v1.ts,
        expires_at: v1.expires_at,
        system: v1.system,
        sender: UserId(0),
        unsent: false,
    })
}

/// Key of the seq index entry of a conversation's message `seq`.
pub fn seq_key(conv: ConversationId, seq: Seq) -> Vec<u8> {
    let mut k = conv_key(conv, 0x04);
    k.extend_from_slice(&seq.0.to_be_bytes());
    k
}

/// Key of the reactions record of a conversation's message `seq`.
pub fn reactions_key(conv: ConversationId, seq: Seq) -> Vec<u8> {
    let mut k = conv_key(conv, 0x05);
    k.extend_from_slice(&seq.0.to_be_bytes());
    k
}

/// Key of a conversation's pinned messages.
pub fn pins_key(conv: ConversationId) -> Vec<u8> {
    conv_key(conv, 0x06)
}

/// Key of the blocks between the two users whose direct conversation id
/// is `pair`.
pub fn blocks_key(pair: ConversationId) -> Vec<u8> {
    conv_key(pair, 0x07)
}

/// Key of message `seq` hidden for `user` ("delete for me").
pub fn hidden_key(conv: ConversationId, user: UserId, seq: Seq) -> Vec<u8> {
    let mut k = hidden_prefix(conv, user);
    k.extend_from_slice(&seq.0.to_be_bytes());
    k
}

/// Prefix of every message of `conv` hidden for `user`.
pub fn hidden_prefix(conv: ConversationId, user: UserId) -> Vec<u8> {
    let mut k = conv_key(conv, 0x08);
    k.extend_from_slice(&user.0.to_be_bytes());
    k
}

/// A message one member deleted for themself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hidden {
    /// When (µs, the leader's stamp).
    pub at: u64,
}

/// A pinned message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// The message.
    pub seq: Seq,
    /// Who pinned it.
    pub by: UserId,
    /// When (µs, the leader's stamp).
    pub at: u64,
}

/// A conversation's pinned messages, most recently pinned first (at most
/// `command::MAX_PINS`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Pins {
    /// The pins.
    pub list: Vec<Pin>,
}

/// Who of a pair blocks the other (zero, one or both users).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Blocks {
    /// The users of the pair who block the other one.
    pub by: Vec<UserId>,
}

/// A user this user blocks (the user's own list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockedUser {
    /// Since when (µs).
    pub since: u64,
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

/// Key of a conversation's outbox head.
pub fn outbox_head_key(conv: ConversationId) -> Vec<u8> {
    conv_key(conv, 0x03)
}

/// Key of one outbox entry.
pub fn outbox_key(conv: ConversationId, eseq: Eseq) -> Vec<u8> {
    let mut k = Vec::with_capacity(19);
    k.push(Keyspace::Outbox as u8);
    k.extend_from_slice(&Slot::of_conversation(conv).0.to_be_bytes());
    k.extend_from_slice(&conv.0.to_be_bytes());
    k.extend_from_slice(&eseq.0.to_be_bytes());
    k
}

/// Decodes an outbox key into (conversation, eseq).
pub fn decode_outbox_key(k: &[u8]) -> Option<(ConversationId, Eseq)> {
    if k.len() != 19 || k[0] != Keyspace::Outbox as u8 {
        return None;
    }
    let conv = u64::from_be_bytes(k[3..11].try_into().ok()?);
    let eseq = u64::from_be_bytes(k[11..19].try_into().ok()?);
    Some((ConversationId(conv), Eseq(eseq)))
}

pub(crate) fn user_key(user: UserId, suffix: u8) -> Vec<u8> {
    let mut k = Vec::with_capacity(20);
    k.push(Keyspace::User as u8);
    k.extend_from_slice(&Slot::of_user(user.0).0.to_be_bytes());
    k.extend_from_slice(&user.0.to_be_bytes());
    k.push(suffix);
    k
}

fn user_key_u64(user: UserId, suffix: u8, n: u64) -> Vec<u8> {
    let mut k = user_key(user, suffix);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// Key of a user's inbox head.
pub fn user_head_key(user: UserId) -> Vec<u8> {
    user_key(user, 0x00)
}

/// Key of one inbox event.
pub fn inbox_key(user: UserId, useq: Useq) -> Vec<u8> {
    user_key_u64(user, 0x01, useq.0)
}

/// Key of a user's entry for one conversation.
pub fn user_conv_key(user: UserId, conv: ConversationId) -> Vec<u8> {
    user_key_u64(user, 0x02, conv.0)
}

/// Prefix of every conversation entry of a user.
pub fn user_conv_prefix(user: UserId) -> Vec<u8> {
    user_key(user, 0x02)
}

/// Decodes a user's-conversation key into (user, conversation), `None` for any
/// other key.
pub fn decode_user_conv_key(k: &[u8]) -> Option<(UserId, ConversationId)> {
    if k.len() != 20 || k[0] != Keyspace::User as u8 || k[11] != 0x02 {
        return None;
    }
    let user = u64::from_be_bytes(k[3..11].try_into().ok()?);
    let conv = u64::from_be_bytes(k[12..20].try_into().ok()?);
    Some((UserId(user), ConversationId(conv)))
}

/// Key of a user's device.
pub fn device_key(user: UserId, device: DeviceId) -> Vec<u8> {
    user_key_u64(user, 0x03, device.0)
}

/// Prefix of every device of a user.
pub fn device_prefix(user: UserId) -> Vec<u8> {
    user_key(user, 0x03)
}

/// Key of a user's profile.
pub fn profile_key(user: UserId) -> Vec<u8> {
    user_key(user, 0x04)
}

/// Key of a device's push target.
pub fn push_key(user: UserId, device: DeviceId) -> Vec<u8> {
    user_key_u64(user, 0x05, device.0)
}

/// Prefix of every push target of a user.
pub fn push_prefix(user: UserId) -> Vec<u8> {
    user_key(user, 0x05)
}

/// Key of a user `user` blocks, in `user`'s list.
pub fn blocked_key(user: UserId, other: UserId) -> Vec<u8> {
    user_key_u64(user, 0x06, other.0)
}

/// Prefix of every user `user` blocks.
pub fn blocked_prefix(user: UserId) -> Vec<u8> {
    user_key(user, 0x06)
}

/// Key of the tickets a user redeemed that have not expired.
pub fn ticket_uses_key(user: UserId) -> Vec<u8> {
    user_key(user, 0x07)
}

/// Key of a user's token revocations.
pub fn revocations_key(user: UserId) -> Vec<u8> {
    user_key(user, 0x08)
}

/// The big-endian u64 that ends a key (an inbox useq, a conversation id).
pub fn key_tail_u64(k: &[u8]) -> Option<u64> {
    let n = k.len().checked_sub(8)?;
    Some(u64::from_be_bytes(k[n..].try_into().ok()?))
}

/// A conversation's outbox position: events get dense `eseq`s from 1;
/// entries up to `done` were fanned out and deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct OutboxHead {
    /// The newest event's eseq (0 before the first).
    pub last: Eseq,
    /// Every event up to here reached every recipient's inbox.
    pub done: Eseq,
}

/// Something that happened in a conversation that its members' per-user
/// data must learn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A message was stored (system messages included).
    Message {
        /// Its seq.
        seq: Seq,
        /// Its ts (the message key).
        ts: u64,
        /// Who sent it.
        sender: UserId,
        /// When it disappears, if ever (µs).
        expires_at: Option<u64>,
    },
    /// A member's receipt watermarks rose.
    Receipt {
        /// Whose.
        user: UserId,
        /// Delivered up to.
        delivered: Seq,
        /// Read up to.
        read: Seq,
    },
    /// Membership or settings changed (the conversation's creation too:
    /// version 1, everyone added).
    Membership {
        /// Membership version after the change.
        version: u64,
        /// Who joined.
        added: Vec<UserId>,
        /// Who left or was removed.
        removed: Vec<UserId>,
    },
    /// A message's body was replaced (not unread: the message was
    /// counted when it arrived).
    Edited {
        /// Its seq.
        seq: Seq,
        /// Its ts (the message key).
        ts: u64,
        /// When it was edited (µs).
        edited_at: u64,
        /// When the message disappears, if ever (µs).
        expires_at: Option<u64>,
    },
    /// A message was deleted for everyone.
    Unsent {
        /// Its seq.
        seq: Seq,
        /// Its ts.
        ts: u64,
        /// Who unsent it.
        by: UserId,
    },
    /// A user added or removed an emoji on a message (not unread).
    Reacted {
        /// Its seq.
        seq: Seq,
        /// Who reacted.
        user: UserId,
        /// The emoji.
        emoji: String,
        /// Added (true) or removed.
        added: bool,
    },
    /// A member pinned or unpinned a message (not unread).
    Pinned {
        /// The message.
        seq: Seq,
        /// Who.
        by: UserId,
        /// Pinned (true) or unpinned.
        pinned: bool,
    },
    /// The recipient blocked or unblocked `user` (only the blocker's own
    /// devices get it; the blocked user is not told).
    Blocked {
        /// The other user.
        user: UserId,
        /// Blocked (true) or unblocked.
        blocked: bool,
    },
    /// The recipient deleted a message for themself (only their own
    /// devices get it).
    Hidden {
        /// The message.
        seq: Seq,
    },
    /// A message mentions the recipient (only the mentioned members get
    /// it, right after the message's own event; it raises their mention
    /// count, not their unread count, which the message did).
    Mentioned {
        /// The message.
        seq: Seq,
        /// Who sent it.
        sender: UserId,
    },
    /// A conversation's settings changed (every member gets it).
    Configured {
        /// Who changed them.
        by: UserId,
        /// The settings now.
        settings: Settings,
    },
    /// The conversation became end-to-end encrypted (every member gets
    /// it).
    Encrypted {
        /// Who turned it on.
        by: UserId,
    },
    /// A member's device list changed (`crate::e2ee`): every member gets
    /// it in each conversation they share with that user.
    DeviceKeys {
        /// Whose device.
        user: UserId,
        /// The device.
        device: DeviceId,
        /// What changed.
        change: crate::e2ee::KeyChange,
    },
    /// One of the recipient's own devices is running out of one-time
    /// pre-keys (an account event: conversation 0, written on the user's
    /// shard by the claim that took one).
    PreKeysLow {
        /// The device that should publish more.
        device: DeviceId,
        /// How many it has left.
        remaining: u64,
    },
}

/// An event waiting in a conversation's outbox, with who must get it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// The event.
    pub event: EventKind,
    /// The users whose inbox gets it.
    pub recipients: Vec<UserId>,
    /// When it happened (µs, the leader's stamp).
    pub at: u64,
}

/// A user's inbox position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct UserHead {
    /// The newest inbox event's useq (0 before the first).
    pub useq: Useq,
}

/// One event in a user's inbox: the user's devices sync these in useq
/// order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxEvent {
    /// The conversation it happened in.
    pub conv: ConversationId,
    /// Its position in the conversation's event sequence.
    pub eseq: Eseq,
    /// What happened.
    pub event: EventKind,
    /// When (µs).
    pub at: u64,
}

/// A user's view of one conversation: drives the conversation list and
/// unread counts (`[2][postcard]`; version 1 lacks `mentions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct UserConv {
    /// The last conversation event applied here (fan-out idempotence).
    pub eseq: Eseq,
    /// Whether the user is a member now.
    pub member: bool,
    /// The newest message's seq the user got.
    pub last_seq: Seq,
    /// Its ts: the conversation's last activity.
    pub last_ts: u64,
    /// The user's own read watermark.
    pub read: Seq,
    /// The user's own delivered watermark.
    pub delivered: Seq,
    /// The unread messages that mention the user, oldest first (at most
    /// [`MAX_MENTIONS`]; version 2).
    pub mentions: Vec<Seq>,
}

/// The most unread mentions a user's view of a conversation keeps (a
/// client shows more as "99+").
pub const MAX_MENTIONS: usize = 100;

impl UserConv {
    /// Messages the user has not read (their own count as read).
    pub fn unread(&self) -> u64 {
        self.last_seq.since(self.read)
    }

    /// Unread messages that mention the user.
    pub fn unread_mentions(&self) -> usize {
        self.mentions.iter().filter(|s| **s > self.read).count()
    }

    /// Forgets the mentions at or below the read watermark.
    pub fn prune_mentions(&mut self) {
        let read = self.read;
        self.mentions.retain(|s| *s > read);
    }
}

/// The version byte of a stored [`UserConv`].
pub const USER_CONV_VERSION: u8 = 2;

/// Encodes a user's view of a conversation.
pub fn encode_user_conv(uc: &UserConv) -> Result<Vec<u8>> {
    encode_versioned("user conversation", USER_CONV_VERSION, uc)
}

/// Decodes a user's view of a conversation, version 1 or 2.
pub fn decode_user_conv(bytes: &[u8]) -> Result<UserConv> {
    let (v, rest) = split_versioned("user conversation", bytes, USER_CONV_VERSION)?;
    let tail = match v {
        1 => Some(postcard_tail(&Vec::<Seq>::new())?),
        _ => None,
    };
    decode_with_tail("user conversation", rest, tail)
}

/// The WebSocket tickets a user redeemed that have not expired yet:
/// `[1][postcard]`, `used` as (16-byte id, expiry in seconds) pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketUses {
    /// Redeemed ids with their tickets' expiry (seconds since the epoch).
    pub used: Vec<([u8; 16], u64)>,
}

/// Which of a user's tokens are revoked: `[1][postcard]`. A token of
/// device `d` issued at `iat` (seconds) is revoked when `iat <=
/// devices[d]`, or when `iat <= all_before` and `d` is not `keep`.
/// Seconds, because tokens carry seconds; "at or before" so that a token
/// issued in the very second of a revocation is not missed (a device
/// logged out gets a new token a second later).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocations {
    /// Tokens of every device but `keep` issued at or before this second
    /// are revoked (0: none).
    pub all_before: u64,
    /// The device "log out other devices" was asked from.
    pub keep: Option<DeviceId>,
    /// Per device: tokens issued at or before this second are revoked.
    pub devices: Vec<(DeviceId, u64)>,
}

impl Revocations {
    /// Whether a token of `device` issued at `iat` is revoked.
    pub fn revokes(&self, device: DeviceId, iat: u64) -> bool {
        (iat <= self.all_before && self.keep != Some(device))
            || self
                .devices
                .iter()
                .any(|(d, until)| *d == device && iat <= *until)
    }
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// A name for people ("Ana's phone").
    pub name: String,
    /// The platform ("ios", "android", "web", …).
    pub platform: String,
    /// When it registered (µs).
    pub registered_micros: u64,
}

/// Where to notify a device that is not connected: the push token its
/// platform gave it (APNs, FCM, a web push endpoint), opaque here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushTarget {
    /// The platform's token for the device.
    pub token: String,
    /// When it was set (µs, the leader's stamp).
    pub set_micros: u64,
}

/// A user's profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Profile {
    /// The name shown to others.
    pub display_name: String,
}
