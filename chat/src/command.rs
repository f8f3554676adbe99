//! The chat domain's commands and their outcomes.
//!
//! A Raft entry's payload is the runtime's `Batch`: the leader's clock
//! reading and the commands that rode in that entry. Apply is a pure
//! function of the batch and the shard's state: the time a message gets
//! comes from the batch's stamp, never from the replica's clock, so every
//! replica computes the same ts and seq.
//!
//! # Encoding (in the log, byte by byte)
//!
//! An entry is stored as `[version: u8 = 1][postcard(openraft Entry)]` (see
//! `missive_raft::storage::codec`); its `Normal` payload is the runtime's `Batch` of
//! this module's [`Command`]s in postcard's stable wire format (varint
//! integers, length-prefixed bytes and strings, enums as a varint variant
//! index followed by the fields in declaration order). Variants and fields
//! are append-only: a new command is a new variant at the end; a removed
//! one keeps its slot.
//!
//! Variants 9–11 (`RegisterNode`, `ForgetNode`, `ReportPlacement`) are the
//! runtime's cluster-map commands (`missive_raft::app::ClusterCommand`),
//! carried here at the indices they had when one enum held every command,
//! so that every entry ever written still decodes (`tests/it/formats.rs`).
//! Chat never runs them; the runtime does, on the metadata group. Outcome
//! variant 7 (`Directory`) is their outcome, likewise. The last variant,
//! `Restore` and `Checkpoint` are the runtime's too (and, appended after
//! them, `ReserveSplit`, `RecordSplit`, `Split`, `Freeze`, `Merge` and
//! `RecordMerge`): a backup's records put
//! into a data shard, and a verification point (they have no route: the
//! runtime names the shard).

use serde::{Deserialize, Serialize};

use std::collections::BTreeSet;

use missive_engine::keys::{ConversationId, Slot};

use missive_raft::cluster::slots::SlotMap;
use missive_raft::{NodeId, ShardId};

use crate::e2ee::{DeviceKeys, KeyChange, OneTimeKey, SignedPreKey};
pub use crate::ids::{DeviceId, UserId};
use crate::ids::{Eseq, Seq, Useq};
use crate::media::image::ImageInfo;
use crate::media::records::{object_slot, upload_slot, Grant, Hash, Upload, UploadId};
use crate::records::EventKind;
pub use crate::records::{ConversationKind, HistoryVisibility, MessageKind, Retention, Settings};

/// A state-machine command. Append-only enum (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Creates a conversation. Idempotent: creating one that exists with
    /// the same kind answers `Created { created: false }`.
    CreateConversation {
        /// Its id (chosen by the caller: for a direct chat, derived from
        /// the pair so there is one per pair).
        conv: ConversationId,
        /// Direct or group.
        kind: ConversationKind,
        /// The group's name (empty for direct chats).
        name: String,
        /// Who creates it; becomes an admin of a group.
        creator: UserId,
        /// The members, the creator included.
        members: Vec<UserId>,
        /// Maximum members (the server's configured limit).
        max_members: u32,
    },
    /// Adds and removes members (group admins only). Writes a system message.
    ChangeMembers {
        /// The conversation.
        conv: ConversationId,
        /// Who asks (must be an admin, or removing only themself: a leave).
        actor: UserId,
        /// Members to add.
        add: Vec<UserId>,
        /// Members to remove.
        remove: Vec<UserId>,
        /// Members to make admins.
        promote: Vec<UserId>,
        /// A new name, if renaming.
        rename: Option<String>,
        /// Maximum members (the server's configured limit).
        max_members: u32,
    },
    /// Appends a message, assigning its ts and dense seq; deduplicated by
    /// (sender, client message id).
    AppendMessage {
        /// The conversation.
        conv: ConversationId,
        /// The sending user (must be a member).
        sender: UserId,
        /// The sending device.
        device: DeviceId,
        /// The client's id for this message, unique per sender.
        client_msg_id: String,
        /// What it is.
        kind: MessageKind,
        /// Opaque bytes (may be ciphertext).
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
        /// When it disappears (µs since the epoch), if ever.
        expires_at: Option<u64>,
    },
    /// Raises a member's receipt watermarks (never lowers them).
    SetReceipt {
        /// The conversation.
        conv: ConversationId,
        /// The member.
        user: UserId,
        /// Delivered up to this seq.
        delivered: Option<Seq>,
        /// Read up to this seq (implies delivered).
        read: Option<Seq>,
    },
    /// Appends conversation events to users' inboxes (the fan-out worker's
    /// write; every item's user on this command's shard). Idempotent per
    /// (user, conversation): an item at or below the user's last applied
    /// eseq for that conversation is skipped.
    Deliver {
        /// In order; one conversation's items in eseq order.
        items: Vec<Delivery>,
    },
    /// Deletes fanned-out outbox entries: `(conversation, up to eseq)`,
    /// every conversation on this command's shard.
    OutboxDone {
        /// What reached every recipient.
        done: Vec<(ConversationId, Eseq)>,
    },
    /// Registers (or renames) a user's device.
    RegisterDevice {
        /// The user.
        user: UserId,
        /// The device.
        device: DeviceId,
        /// A name for people.
        name: String,
        /// The platform ("ios", "web", …).
        platform: String,
    },
    /// Sets a user's profile.
    SetProfile {
        /// The user.
        user: UserId,
        /// The name shown to others.
        display_name: String,
    },
    /// Sets (or, with `None`, clears) a device's push token.
    SetPushToken {
        /// The user.
        user: UserId,
        /// The device.
        device: DeviceId,
        /// The platform's token.
        token: Option<String>,
    },
    /// The runtime's `ClusterCommand::RegisterNode` (see the module docs):
    /// records (or re-addresses) a node in the cluster map's directory. Refused if the node's slot map is not the
    /// cluster's (it was started with another shard count).
    RegisterNode {
        /// The node.
        node: NodeId,
        /// Its transport address.
        addr: String,
        /// Its slot → shard map.
        slots: SlotMap,
    },
    /// The runtime's `ClusterCommand::ForgetNode`: drops a node from the
    /// directory. Refused while the
    /// map places any replica on it.
    ForgetNode {
        /// The node.
        node: NodeId,
    },
    /// The runtime's `ClusterCommand::ReportPlacement`: a group's leader
    /// reports its configuration. Ignored
    /// if the map already holds a later one (a deposed leader's report).
    ReportPlacement {
        /// The group (a data shard, or the metadata group itself).
        shard: ShardId,
        /// Its voters.
        voters: BTreeSet<NodeId>,
        /// Its learners.
        learners: BTreeSet<NodeId>,
        /// The log index of that configuration.
        config_index: u64,
    },
    /// Appends a message like `AppendMessage`, which may answer an earlier
    /// one (`reply_to`). What the server writes since replies exist;
    /// `AppendMessage` stays for the entries written before.
    Post(NewMessage),
    /// Replaces a message's body. Only its sender may, within
    /// `window_micros` of sending it, and not a system or unsent message.
    Edit {
        /// The conversation.
        conv: ConversationId,
        /// Who edits (must be a member and the sender).
        actor: UserId,
        /// The message.
        seq: Seq,
        /// The new body.
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
        /// How long after sending a message may be edited (µs; the
        /// server's configuration, carried so every replica judges alike).
        window_micros: u64,
    },
    /// Deletes a message for everyone: it becomes a tombstone (seq, ts and
    /// sender kept; body, reactions and prior bodies gone). Its sender may,
    /// within `window_micros`; a group admin may at any time if
    /// `admins_may` is set. Unsending a tombstone again is a no-op.
    Unsend {
        /// The conversation.
        conv: ConversationId,
        /// Who unsends.
        actor: UserId,
        /// The message.
        seq: Seq,
        /// How long after sending its sender may unsend it (µs).
        window_micros: u64,
        /// Whether a group's admins may unsend anyone's message.
        admins_may: bool,
    },
    /// Adds (or removes) one user's emoji on a message. Adding one the
    /// user already put there, or removing one they did not, changes
    /// nothing (`changed: false`).
    React {
        /// The conversation.
        conv: ConversationId,
        /// Who reacts (must be a member).
        user: UserId,
        /// The message.
        seq: Seq,
        /// The emoji (1..=64 bytes of UTF-8).
        emoji: String,
        /// Add (true) or remove (false).
        add: bool,
    },
    /// Pins (or unpins) a message of the conversation. Any member may; a
    /// conversation holds at most [`MAX_PINS`]. Pinning a pinned message,
    /// or unpinning one that is not, changes nothing.
    Pin {
        /// The conversation.
        conv: ConversationId,
        /// Who (must be a member).
        actor: UserId,
        /// The message (to pin: one the conversation holds).
        seq: Seq,
        /// Pin (true) or unpin (false).
        pin: bool,
    },
    /// `blocker` blocks (or unblocks) `target`: while either of a pair
    /// blocks the other, neither sends in their direct conversation, and
    /// it is not created if it does not exist. Runs on the pair's direct
    /// conversation's shard (`pair` = `ids::direct_id(blocker, target)`).
    Block {
        /// The pair's direct conversation id.
        pair: ConversationId,
        /// Who blocks.
        blocker: UserId,
        /// Who is blocked.
        target: UserId,
        /// Block (true) or unblock (false).
        block: bool,
    },
    /// Deletes a message for one member only ("delete for me"): their
    /// history no longer shows it, on any of their devices. Hiding a
    /// hidden message changes nothing.
    Hide {
        /// The conversation.
        conv: ConversationId,
        /// Who (must be a member).
        user: UserId,
        /// The message (any the conversation ever held: a tombstone or a
        /// system message too).
        seq: Seq,
    },
    /// Appends a message like `Post`, with the members it mentions and
    /// the node's default retention. What the server writes since
    /// mentions exist.
    Send(SendMessage),
    /// Changes a conversation's settings (a group's admins; either member
    /// of a direct conversation). A field left `None` keeps its value.
    Configure {
        /// The conversation.
        conv: ConversationId,
        /// Who changes them.
        actor: UserId,
        /// What members who join later see of older messages.
        history: Option<HistoryVisibility>,
        /// Whether edits keep the bodies they replace.
        keep_edits: Option<bool>,
        /// How long messages sent from now on are kept.
        retention: Option<Retention>,
    },
    /// Erases one user's messages in one conversation (an operator's
    /// erasure, one chunk of seqs at a time): each message `user` sent
    /// with a seq in `(after, upto]` becomes a tombstone as if unsent, and
    /// the user's receipt in the conversation goes. At most
    /// [`MAX_ERASE_SPAN`] seqs per command.
    EraseMessages {
        /// The conversation.
        conv: ConversationId,
        /// Whose messages.
        user: UserId,
        /// Seqs after this one…
        after: Seq,
        /// …up to this one.
        upto: Seq,
    },
    /// Erases a user's own records on the user's shard (an operator's
    /// erasure): the profile, and the listed devices (records, key
    /// directory entries), push targets and blocked-user entries (the
    /// server lists them just before).
    EraseUser {
        /// The user.
        user: UserId,
        /// Their devices (records and push targets).
        devices: Vec<DeviceId>,
        /// The users they block (their own list's entries).
        blocked: Vec<UserId>,
    },
    /// Redeems a WebSocket ticket, once: refused (`Conflict`) if `ticket`
    /// was redeemed before. Redeemed ids are kept until `expires_secs`
    /// (the ticket's own expiry) passes by the leader's stamp.
    UseTicket {
        /// The ticket's user.
        user: UserId,
        /// The ticket's id (its `jti`).
        ticket: [u8; 16],
        /// When the ticket expires (seconds since the epoch).
        expires_secs: u64,
    },
    /// Revokes the tokens of some of a user's devices issued up to now
    /// (the leader's stamp).
    RevokeSessions {
        /// The user.
        user: UserId,
        /// Which devices.
        scope: RevokeScope,
    },
    /// The runtime's `ClusterCommand::Restore`: a backup's records put into
    /// a data shard as they are (see `missive_raft::backup`). Chat never
    /// runs it; the runtime does, before the chat rules.
    Restore {
        /// Key/value pairs, keys in the shard's ranges.
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// After a restore: raises a conversation's newest seq and outbox
    /// eseq to at least these (what its members' restored inboxes already
    /// hold of it; see `crate::restore`). Refused (`Conflict`) while the
    /// conversation has deliveries pending and the eseq would move.
    RaiseHeads {
        /// The conversation.
        conv: ConversationId,
        /// The newest seq any member's inbox holds.
        seq: Seq,
        /// The newest eseq any member's inbox applied.
        eseq: Eseq,
    },
    /// The runtime's `ClusterCommand::Checkpoint`: every replica pins its
    /// state here for a cross-replica comparison (`missive_raft::verify`).
    /// Chat never runs it.
    Checkpoint,
    /// Appends a message like `Send` whose body its sender gave as text
    /// (UTF-8, checked in apply): the only bodies the search index reads.
    /// What the server writes for text since search exists; `Send` then
    /// carries opaque bytes (maybe ciphertext), which are never indexed.
    SendText(SendMessage),
    /// Replaces a message's body like `Edit`, with a body given as text
    /// (UTF-8, checked): the message is indexed by its new words. `Edit`
    /// then carries opaque bytes, and the edited message leaves the index.
    EditText {
        /// The conversation.
        conv: ConversationId,
        /// Who edits (must be a member and the sender).
        actor: UserId,
        /// The message.
        seq: Seq,
        /// The new body (UTF-8).
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
        /// How long after sending a message may be edited (µs).
        window_micros: u64,
    },
    /// Brings a conversation's search postings back in line with its
    /// messages (an operator's repair after `search::check`): every
    /// message stored at a ts in `reindex` gets the postings of its terms;
    /// each `(term, ts)` in `drop` loses its posting unless the message
    /// there holds that term. Both derive from this replica's own copy of
    /// the message, as the send did. At most [`MAX_REPAIR`] entries.
    RepairIndex {
        /// The conversation.
        conv: ConversationId,
        /// Messages (by ts) to index again.
        reindex: Vec<u64>,
        /// Postings (term, ts) to drop if nothing backs them.
        drop: Vec<(String, u64)>,
    },
    /// Starts an upload (`crate::media`): refused if the id is taken.
    CreateUpload {
        /// Its id (random, chosen by the node).
        upload: UploadId,
        /// Who uploads.
        owner: UserId,
        /// The file's length (bytes, at most the server's limit).
        length: u64,
        /// The declared MIME type.
        mime: String,
        /// The declared file name.
        name: String,
    },
    /// Appends bytes to an open upload: `offset` must be the bytes stored
    /// so far, and the bytes must not cross a chunk boundary
    /// (`media::records::CHUNK`) nor the declared length.
    AppendUpload {
        /// The upload.
        upload: UploadId,
        /// Who asks (must be its owner).
        owner: UserId,
        /// Where the bytes go.
        offset: u64,
        /// The bytes (at most one chunk). Shared, not copied, when the
        /// command is cloned on its way to the log (routing retries,
        /// the batcher's queue): the same encoding as a byte vector's.
        bytes: bytes::Bytes,
    },
    /// Ends an upload whose bytes all arrived, with their content hash:
    /// its chunks are the object's bytes (`keep`) or are deleted (an
    /// identical object is stored in another upload's chunks).
    FinishUpload {
        /// The upload.
        upload: UploadId,
        /// Who asks (must be its owner).
        owner: UserId,
        /// The BLAKE3 hash of its bytes.
        hash: Hash,
        /// Keep the chunks (this upload stores the object).
        keep: bool,
    },
    /// Records that object `hash` is stored in `upload`'s chunks, unless
    /// an object with that hash is stored already (then answers where).
    StoreObject {
        /// The content hash.
        hash: Hash,
        /// The upload holding the bytes.
        upload: UploadId,
        /// Its length (bytes).
        size: u64,
        /// Its MIME type.
        mime: String,
        /// An image's description, if it is one.
        image: Option<ImageInfo>,
        /// The image's thumbnails: (size, encoded bytes), as described in
        /// `image` (together well under a chunk).
        thumbs: Vec<(u16, serde_bytes::ByteBuf)>,
        /// Who uploaded these bytes.
        owner: UserId,
    },
    /// Grants `user` an object they uploaded.
    GrantMedia {
        /// The uploader.
        user: UserId,
        /// The object.
        hash: Hash,
        /// What the grant records.
        grant: Grant,
    },
    /// Marks an object used now (a send names it), so a collection that
    /// began before cannot delete it.
    TouchObject {
        /// The object.
        hash: Hash,
    },
    /// Deletes an object and its thumbnails (the collector's), unless it
    /// was created or used at or after `unused_since` (µs).
    DeleteObject {
        /// The object.
        hash: Hash,
        /// The collection's cutoff.
        unused_since: u64,
    },
    /// Deletes an upload's record and chunks (the collector's: its object
    /// was deleted, it was abandoned, or it was a duplicate).
    DropUpload {
        /// The upload.
        upload: UploadId,
    },
    /// Deletes a reference whose message is gone (the collector's).
    DropReference {
        /// The conversation.
        conv: ConversationId,
        /// The object.
        hash: Hash,
        /// The message.
        seq: Seq,
    },
    /// Deletes `user`'s grant on an object that was deleted.
    RevokeGrant {
        /// The uploader.
        user: UserId,
        /// The object.
        hash: Hash,
    },
    /// Publishes a device's keys (`crate::e2ee`): its identity key and
    /// signed pre-key (the signature is checked here), and more one-time
    /// pre-keys appended to those it has. A different identity key than
    /// the stored one replaces the device's entry: its old one-time keys
    /// go.
    PublishKeys {
        /// The user.
        user: UserId,
        /// The device.
        device: DeviceId,
        /// The Ed25519 identity public key.
        identity: [u8; 32],
        /// The signed pre-key.
        signed: SignedPreKey,
        /// One-time pre-keys to add (at most
        /// `e2ee::MAX_ONE_TIME_KEYS_PER_PUBLISH`).
        one_time: Vec<OneTimeKey>,
    },
    /// Hands out a bundle for each listed device of `user` that is in the
    /// directory, each with its oldest one-time pre-key, which leaves the
    /// directory in this same batch: never handed out twice.
    ClaimKeys {
        /// Whose devices.
        user: UserId,
        /// Which (at most `apply::keys::MAX_CLAIMED_DEVICES`).
        devices: Vec<DeviceId>,
    },
    /// Removes a device from the directory (and its one-time pre-keys).
    RemoveKeys {
        /// The user.
        user: UserId,
        /// The device.
        device: DeviceId,
    },
    /// Marks a conversation end-to-end encrypted (a group's admins;
    /// either member of a direct one). One way.
    Encrypt {
        /// The conversation.
        conv: ConversationId,
        /// Who.
        actor: UserId,
    },
    /// Tells a conversation's members that `user`'s device list changed
    /// (the edge's announcement after a `PublishKeys`/`RemoveKeys`; `user`
    /// must be a member).
    NoteKeys {
        /// The conversation.
        conv: ConversationId,
        /// Whose device.
        user: UserId,
        /// The device.
        device: DeviceId,
        /// What changed.
        change: KeyChange,
    },
    /// Deletes push jobs that are done (every device notified, or the
    /// user was online): every user on this command's shard.
    PushDone {
        /// The jobs, by event: (user, useq).
        jobs: Vec<(UserId, Useq)>,
    },
    /// Records a failed attempt of a push job: the devices still to
    /// notify, and when to try next.
    PushRetry {
        /// The user.
        user: UserId,
        /// The event.
        useq: Useq,
        /// The devices still to notify.
        devices: Vec<DeviceId>,
        /// Attempts failed so far.
        attempts: u32,
        /// Not before (µs).
        next_micros: u64,
    },
    /// Moves a push job to the dead letters.
    PushDead {
        /// The user.
        user: UserId,
        /// The event.
        useq: Useq,
        /// Why (at most `push::MAX_REASON` bytes are kept).
        reason: String,
    },
    /// Moves a dead letter back to the pending jobs, due now, its attempts
    /// reset (an operator's replay).
    PushReplay {
        /// The user.
        user: UserId,
        /// The event.
        useq: Useq,
    },
    /// Lets push notifications of a conversation's messages carry a
    /// preview (sender and text) or stops them (the default: none). A
    /// group's admins; either member of a direct conversation. Refused in
    /// an end-to-end encrypted conversation.
    SetPushPreviews {
        /// The conversation.
        conv: ConversationId,
        /// Who.
        actor: UserId,
        /// Previews on.
        on: bool,
    },
    /// The runtime's `ClusterCommand::ReserveSplit` (metadata group).
    ReserveSplit {
        /// The shard to split.
        parent: ShardId,
        /// The first slot the child takes.
        at: u16,
    },
    /// The runtime's `ClusterCommand::RecordSplit` (metadata group).
    RecordSplit {
        /// The shard split.
        parent: ShardId,
        /// The first slot the child took.
        at: u16,
        /// The new shard.
        child: ShardId,
    },
    /// The runtime's `ClusterCommand::Split`: the cut in a data shard's
    /// log. Chat never runs it.
    Split {
        /// The first slot the child takes.
        at: u16,
        /// The new shard.
        child: ShardId,
    },
    /// The runtime's `ClusterCommand::Freeze` (a data shard about to be
    /// merged). Chat never runs it.
    Freeze {
        /// The shard that takes its slots.
        into: ShardId,
    },
    /// The runtime's `ClusterCommand::Merge`. Chat never runs it.
    Merge {
        /// The frozen shard.
        child: ShardId,
        /// Its freeze's log index.
        frozen_at: u64,
        /// Its first slot.
        start: u16,
        /// The slot after its last.
        end: u16,
    },
    /// The runtime's `ClusterCommand::RecordMerge` (metadata group).
    RecordMerge {
        /// The shard that took the slots.
        parent: ShardId,
        /// The merged shard.
        child: ShardId,
    },
}

/// The most entries (`reindex` + `drop`) one [`Command::RepairIndex`]
/// carries.
pub const MAX_REPAIR: usize = 1000;

/// Which of a user's devices a [`Command::RevokeSessions`] logs out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RevokeScope {
    /// These devices.
    Devices(Vec<DeviceId>),
    /// Every device but this one ("log out other devices"), or with
    /// `None` every device (an operator's).
    AllBut(Option<DeviceId>),
}

/// The most ticket ids a user may have redeemed and not yet expired (a
/// ticket lives seconds; a client reconnecting in a loop hits the per-IP
/// upgrade rate long before this).
pub const MAX_LIVE_TICKETS: usize = 1_024;

/// The most devices one [`RevokeScope::Devices`] names.
pub const MAX_REVOKED_DEVICES: usize = 256;

/// The most seqs one `EraseMessages` covers.
pub const MAX_ERASE_SPAN: u64 = 1_000;

/// The most members one message mentions.
pub const MAX_MENTIONS_PER_MESSAGE: usize = 50;

/// The most bodies an edited message keeps, when its conversation keeps
/// them (the oldest go first).
pub const MAX_PRIOR_BODIES: usize = 20;

/// The longest retention a conversation may set, days (100 years).
pub const MAX_RETENTION_DAYS: u32 = 36_500;

/// A message to append with its mentions ([`Command::Send`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendMessage {
    /// The message.
    pub message: NewMessage,
    /// The users it mentions: members other than the sender count (raise
    /// their mention count); anyone else is ignored. At most
    /// [`MAX_MENTIONS_PER_MESSAGE`].
    pub mentions: Vec<UserId>,
    /// How long the node keeps messages of conversations that did not set
    /// their own retention (µs; `None`: forever). The server's
    /// configuration, carried so every replica computes the same expiry.
    pub default_retention_micros: Option<u64>,
}

/// The most messages one conversation has pinned.
pub const MAX_PINS: usize = 50;

/// The most distinct emoji one message carries.
pub const MAX_EMOJIS_PER_MESSAGE: usize = 50;
/// The most emoji one user puts on one message.
pub const MAX_EMOJIS_PER_USER: usize = 10;
/// The longest emoji, bytes.
pub const MAX_EMOJI_BYTES: usize = 64;

/// A message to append ([`Command::Post`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage {
    /// The conversation.
    pub conv: ConversationId,
    /// The sending user (must be a member).
    pub sender: UserId,
    /// The sending device.
    pub device: DeviceId,
    /// The client's id for this message, unique per sender.
    pub client_msg_id: String,
    /// What it is.
    pub kind: MessageKind,
    /// Opaque bytes (may be ciphertext).
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// When it disappears (µs since the epoch), if ever.
    pub expires_at: Option<u64>,
    /// The message this one answers: a seq of the same conversation that
    /// holds a message now (not expired, not a system message).
    pub reply_to: Option<Seq>,
}

/// One event bound for one user's inbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The recipient.
    pub user: UserId,
    /// The conversation the event happened in.
    pub conv: ConversationId,
    /// The event's position in the conversation's outbox.
    pub eseq: Eseq,
    /// The event.
    pub event: EventKind,
    /// When it happened (µs).
    pub at: u64,
}

/// Which data a command acts on: it decides the shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A conversation's shard.
    Conversation(ConversationId),
    /// A user's shard.
    User(UserId),
    /// The shard of a slot (media: uploads and objects).
    Slot(Slot),
    /// The cluster map (the metadata group).
    Directory,
    /// Nothing to act on (an empty list): refused before proposing.
    Empty,
}

impl Command {
    /// What the command acts on.
    pub fn route(&self) -> Route {
        match self {
            Command::CreateConversation { conv, .. }
            | Command::ChangeMembers { conv, .. }
            | Command::AppendMessage { conv, .. }
            | Command::SetReceipt { conv, .. } => Route::Conversation(*conv),
            Command::Post(m) => Route::Conversation(m.conv),
            Command::Send(m) | Command::SendText(m) => Route::Conversation(m.message.conv),
            Command::Configure { conv, .. } | Command::EraseMessages { conv, .. } => {
                Route::Conversation(*conv)
            }
            Command::EraseUser { user, .. } => Route::User(*user),
            Command::Edit { conv, .. }
            | Command::EditText { conv, .. }
            | Command::Unsend { conv, .. }
            | Command::React { conv, .. }
            | Command::Pin { conv, .. }
            | Command::Hide { conv, .. } => Route::Conversation(*conv),
            Command::Block { pair, .. } => Route::Conversation(*pair),
            Command::Deliver { items } => {
                items.first().map_or(Route::Empty, |d| Route::User(d.user))
            }
            Command::OutboxDone { done } => done
                .first()
                .map_or(Route::Empty, |d| Route::Conversation(d.0)),
            Command::RegisterDevice { user, .. }
            | Command::SetProfile { user, .. }
            | Command::SetPushToken { user, .. }
            | Command::UseTicket { user, .. }
            | Command::RevokeSessions { user, .. } => Route::User(*user),
            Command::RegisterNode { .. }
            | Command::ForgetNode { .. }
            | Command::ReportPlacement { .. }
            | Command::ReserveSplit { .. }
            | Command::RecordSplit { .. }
            | Command::RecordMerge { .. } => Route::Directory,
            Command::Restore { .. }
            | Command::Checkpoint
            | Command::Split { .. }
            | Command::Freeze { .. }
            | Command::Merge { .. } => Route::Empty,
            Command::RaiseHeads { conv, .. } | Command::RepairIndex { conv, .. } => {
                Route::Conversation(*conv)
            }
            Command::CreateUpload { upload, .. }
            | Command::AppendUpload { upload, .. }
            | Command::FinishUpload { upload, .. } => Route::Slot(upload_slot(*upload)),
            Command::StoreObject { hash, .. }
            | Command::TouchObject { hash }
            | Command::DeleteObject { hash, .. } => Route::Slot(object_slot(hash)),
            Command::DropUpload { upload } => Route::Slot(upload_slot(*upload)),
            Command::DropReference { conv, .. } => Route::Conversation(*conv),
            Command::GrantMedia { user, .. } | Command::RevokeGrant { user, .. } => {
                Route::User(*user)
            }
            Command::PublishKeys { user, .. }
            | Command::ClaimKeys { user, .. }
            | Command::RemoveKeys { user, .. } => Route::User(*user),
            Command::Encrypt { conv, .. }
            | Command::NoteKeys { conv, .. }
            | Command::SetPushPreviews { conv, .. } => Route::Conversation(*conv),
            Command::PushDone { jobs } => jobs.first().map_or(Route::Empty, |j| Route::User(j.0)),
            Command::PushRetry { user, .. }
            | Command::PushDead { user, .. }
            | Command::PushReplay { user, .. } => Route::User(*user),
        }
    }

    /// Every route the command touches (all must be on one shard).
    pub fn routes(&self) -> Vec<Route> {
        match self {
            Command::Deliver { items } => items.iter().map(|d| Route::User(d.user)).collect(),
            Command::OutboxDone { done } => done.iter().map(|d| Route::Conversation(d.0)).collect(),
            Command::PushDone { jobs } => jobs.iter().map(|j| Route::User(j.0)).collect(),
            other => vec![other.route()],
        }
    }
}

/// Why the state machine refused a command. Stable codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RejectCode {
    /// The conversation does not exist.
    NoSuchConversation,
    /// The user is not a member.
    NotAMember,
    /// The user may not do this (not an admin).
    Forbidden,
    /// The conversation exists with a different kind or membership.
    Conflict,
    /// The command is malformed (empty member list, too many members, …).
    Invalid,
    /// The conversation holds no message under the seq the command names
    /// (beyond the newest, expired, unsent, or a system message).
    NoSuchMessage,
    /// The window for this change closed (an edit or unsend too long
    /// after sending).
    TooLate,
    /// One user of a direct conversation blocks the other.
    Blocked,
    /// An image upload that does not decode, or passes the decoding
    /// limits (a decompression bomb).
    BadImage,
    /// No such upload or media object, or not the caller's: one answer
    /// for both, so ids cannot be probed.
    NoSuchMedia,
    /// An upload's append does not start where its stored bytes end.
    OffsetMismatch,
    /// The conversation is end-to-end encrypted and the command would put
    /// plaintext (or a change the server cannot make to ciphertext) there.
    Encrypted,
    /// The command reached a shard that does not own its slots (routed by
    /// a slot map from before a split): nothing was written; the writer
    /// refreshes its map and tries again. A client sees it only if that
    /// ran out of time, as a retryable refusal.
    Misrouted,
}

impl RejectCode {
    /// The code's stable name, as the server's protocol spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::NoSuchConversation => "no_such_conversation",
            RejectCode::NotAMember => "not_a_member",
            RejectCode::Forbidden => "forbidden",
            RejectCode::Conflict => "conflict",
            RejectCode::Invalid => "invalid",
            RejectCode::NoSuchMessage => "no_such_message",
            RejectCode::TooLate => "too_late",
            RejectCode::Blocked => "blocked",
            RejectCode::NoSuchMedia => "no_such_media",
            RejectCode::BadImage => "bad_image",
            RejectCode::OffsetMismatch => "offset_mismatch",
            RejectCode::Encrypted => "encrypted",
            RejectCode::Misrouted => "misrouted",
        }
    }
}

/// The outcome of one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// `CreateConversation`: whether this command created it.
    Created {
        /// False if it already existed.
        created: bool,
    },
    /// `ChangeMembers`: the new membership version, and the system
    /// message's position.
    MembersChanged {
        /// Membership version after the change.
        version: u64,
        /// The system message's ts.
        ts: u64,
        /// The system message's seq.
        seq: Seq,
    },
    /// `AppendMessage`: where the message is.
    Appended {
        /// Server timestamp (µs).
        ts: u64,
        /// Dense per-conversation sequence number, from 1.
        seq: Seq,
        /// True if this was a resend of an already stored message.
        duplicate: bool,
    },
    /// `SetReceipt`: the watermarks after the command.
    Receipt {
        /// Delivered up to.
        delivered: Seq,
        /// Read up to.
        read: Seq,
    },
    /// The command was refused.
    Rejected {
        /// Stable code.
        code: RejectCode,
        /// For a person.
        message: String,
    },
    /// `Deliver`: how many items were new and how many were repeats.
    Delivered {
        /// Appended to inboxes.
        applied: u64,
        /// Already there (a repeated fan-out).
        skipped: u64,
    },
    /// A command with nothing to report succeeded (`OutboxDone`,
    /// `RegisterDevice`, `SetProfile`, `SetPushToken`).
    Done,
    /// A cluster-map command: the cluster map's version after it (not
    /// bumped if the command changed nothing). A refused one is
    /// `Rejected { code: Conflict }`.
    Directory {
        /// The map's version.
        version: u64,
    },
    /// `Edit`, `Unsend`, `React`: the message after the command.
    MessageChanged {
        /// The message.
        seq: Seq,
        /// When the change happened (µs, the leader's stamp): the
        /// `edited_at` of an edit.
        at: u64,
        /// False if the command changed nothing (a repeated unsend, a
        /// reaction already there or already gone).
        changed: bool,
    },
    /// `Configure`: the settings after the command.
    Configured {
        /// The settings now.
        settings: Settings,
        /// False if the command changed nothing.
        changed: bool,
    },
    /// `Send`: where the message is, and what the rules made of it.
    Sent {
        /// Server timestamp (µs).
        ts: u64,
        /// Dense per-conversation sequence number, from 1.
        seq: Seq,
        /// True if this was a resend of an already stored message (then
        /// `expires_at` and `mentions` are not known: the original's
        /// were decided when it was stored).
        duplicate: bool,
        /// When it disappears (µs): the sender's own expiry or the
        /// conversation's retention, whichever comes first.
        expires_at: Option<u64>,
        /// The members it mentions (those of the asked who are members,
        /// the sender excluded).
        mentions: Vec<UserId>,
    },
    /// `EraseMessages`, `EraseUser`: what was removed.
    Erased {
        /// Messages tombstoned (`EraseMessages`) or records deleted
        /// (`EraseUser`: profile, devices, push targets, blocked entries).
        removed: u64,
        /// Receipts deleted (`EraseMessages`: 0 or 1).
        receipts: u64,
    },
    /// `RepairIndex` ran.
    Reindexed {
        /// Postings written.
        written: u64,
        /// Postings dropped.
        dropped: u64,
    },
    /// `CreateUpload`, `AppendUpload`, `FinishUpload`: the upload now.
    Upload(Upload),
    /// `StoreObject`: the upload whose chunks hold the object's bytes
    /// (the command's own unless it was stored before).
    Stored {
        /// The upload holding the bytes.
        upload: UploadId,
    },
    /// `GrantMedia`, `TouchObject`, `DropUpload`, `DropReference`,
    /// `RevokeGrant`: done
    /// (idempotent).
    Granted,
    /// `DeleteObject`: whether it was deleted (not: in use, or gone), and
    /// what held it.
    ObjectDeleted {
        /// Deleted by this command.
        deleted: bool,
        /// The upload holding its bytes (to drop next).
        upload: UploadId,
        /// Its uploaders (whose grants to revoke).
        uploaders: Vec<UserId>,
        /// Its length (bytes).
        size: u64,
    },
    /// `PublishKeys`, `RemoveKeys`: how the device list changed (`None`:
    /// it did not, e.g. more one-time keys or a new signed pre-key), and
    /// the one-time pre-keys the device has now.
    Keys {
        /// The change to announce to the user's contacts.
        change: Option<KeyChange>,
        /// One-time pre-keys left.
        remaining: u64,
    },
    /// `ClaimKeys`: one bundle per device (sorted by device).
    Claimed {
        /// The bundles.
        bundles: Vec<Bundle>,
    },
    /// `Encrypt`: whether this command turned it on (not: it was on).
    EncryptedOn {
        /// False if it already was.
        changed: bool,
    },
    /// `PushDone`, `PushRetry`, `PushDead`, `PushReplay`: how many jobs
    /// (or dead letters) it found and changed.
    Push {
        /// Found and changed.
        changed: u64,
    },
    /// `SetPushPreviews`: the setting now and whether this changed it.
    PushPreviews {
        /// Previews on.
        on: bool,
        /// False if it already was so.
        changed: bool,
    },
}

/// What a claim hands out for one device: enough to start a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// The device.
    pub device: DeviceId,
    /// Its identity key and signed pre-key (the queue bounds are the
    /// directory's own and mean nothing to the claimer).
    pub keys: DeviceKeys,
    /// Its oldest one-time pre-key, now taken (`None`: it had none left;
    /// X3DH then runs without one).
    pub one_time: Option<OneTimeKey>,
}
