//! What the media store keeps in the LSM, byte by byte.
//!
//! ```text
//! upload        0x70 slot:u16 0x00 upload:u64                → Upload
//! chunk         0x70 slot:u16 0x01 upload:u64 index:u32      → [1] bytes
//! object        0x70 slot:u16 0x02 hash:[32]                 → Object
//! thumbnail     0x70 slot:u16 0x03 hash:[32] size:u16         → [1] bytes
//! reference     0x70 slot:u16 0x04 conv:u64 hash:[32] seq:u64 → [1]
//! grant         0x30 uslot:u16 user:u64 0x09 hash:[32]       → Grant
//! ```
//!
//! An upload's slot is a hash of its id ([`upload_slot`]); an object's is
//! the first two bytes of its content hash modulo the slot count
//! ([`object_slot`]): both spread evenly over the shards. A grant lives on
//! its user's shard (`uslot`). A reference lives on its conversation's
//! shard (`slot` is the conversation's), written in the same batch as the
//! message, under the media keyspace's own tag so the collector
//! (`media::gc`) finds every reference of a slot in one short scan.
//!
//! Chunk `i` of an upload holds the bytes `[i × CHUNK, (i + 1) × CHUNK)`
//! of the file ([`CHUNK`] = 1 MiB): a fixed grid, so a Range read goes
//! straight to its first chunk and a deletion names every key without a
//! scan. The last chunk may be short. A chunk's value is a version byte
//! (1) and the bytes, with no other framing: the engine's blocks are
//! checksummed, and the object's content hash checks the whole.
//!
//! Other values are `[version u8 = 1][postcard(struct)]`, fields in
//! declaration order, append-only (see `crate::records`).

use serde::{Deserialize, Serialize};

use missive_engine::keys::{ConversationId, Keyspace, Slot, SLOTS};
use missive_raft::Result;

use crate::ids::{Seq, UserId};
use crate::media::image::ImageInfo;
use crate::records::user_key;

/// Bytes per chunk: each chunk is one Raft entry and one LSM value.
pub const CHUNK: u64 = 1 << 20;

/// A content hash (BLAKE3, 32 bytes): an object's id.
pub type Hash = [u8; 32];

/// An upload's id: chosen at random by the node that creates it.
pub type UploadId = u64;

/// The slot of an upload (xxh3 of its id, as for users).
pub fn upload_slot(upload: UploadId) -> Slot {
    Slot::of_user(upload)
}

/// The slot of an object: its hash is uniform already.
pub fn object_slot(hash: &Hash) -> Slot {
    Slot(u16::from_be_bytes([hash[0], hash[1]]) % SLOTS)
}

fn media_key(slot: Slot, suffix: u8, cap: usize) -> Vec<u8> {
    let mut k = Vec::with_capacity(cap);
    k.push(Keyspace::Media as u8);
    k.extend_from_slice(&slot.0.to_be_bytes());
    k.push(suffix);
    k
}

/// Key of an upload's record.
pub fn upload_key(upload: UploadId) -> Vec<u8> {
    let mut k = media_key(upload_slot(upload), 0x00, 12);
    k.extend_from_slice(&upload.to_be_bytes());
    k
}

/// Key of chunk `index` of an upload.
pub fn chunk_key(upload: UploadId, index: u32) -> Vec<u8> {
    let mut k = media_key(upload_slot(upload), 0x01, 16);
    k.extend_from_slice(&upload.to_be_bytes());
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// Key of an object.
pub fn object_key(hash: &Hash) -> Vec<u8> {
    let mut k = media_key(object_slot(hash), 0x02, 36);
    k.extend_from_slice(hash);
    k
}

/// Key of an object's thumbnail of `size` (longest side, pixels): on
/// the object's shard, beside it.
pub fn thumb_key(hash: &Hash, size: u16) -> Vec<u8> {
    let mut k = media_key(object_slot(hash), 0x03, 38);
    k.extend_from_slice(hash);
    k.extend_from_slice(&size.to_be_bytes());
    k
}

/// Key of `user`'s grant on an object (they uploaded it).
pub fn grant_key(user: UserId, hash: &Hash) -> Vec<u8> {
    let mut k = user_key(user, 0x09);
    k.extend_from_slice(hash);
    k
}

/// The prefix of `user`'s grants.
pub fn grants_prefix(user: UserId) -> Vec<u8> {
    user_key(user, 0x09)
}

/// Key of the reference to an object from message `seq` of `conv`.
pub fn reference_key(conv: ConversationId, hash: &Hash, seq: Seq) -> Vec<u8> {
    let mut k = reference_prefix(conv, hash);
    k.extend_from_slice(&seq.0.to_be_bytes());
    k
}

/// The prefix of every reference to an object from `conv`.
pub fn reference_prefix(conv: ConversationId, hash: &Hash) -> Vec<u8> {
    let mut k = media_key(Slot::of_conversation(conv), 0x04, 55);
    k.extend_from_slice(&conv.0.to_be_bytes());
    k.extend_from_slice(hash);
    k
}

/// Decodes a reference key: (conversation, object, seq).
pub fn decode_reference(key: &[u8]) -> Option<(ConversationId, Hash, Seq)> {
    if key.len() != 4 + 8 + 32 + 8 || key[0] != Keyspace::Media as u8 || key[3] != 0x04 {
        return None;
    }
    let conv = u64::from_be_bytes(key[4..12].try_into().ok()?);
    let hash: Hash = key[12..44].try_into().ok()?;
    let seq = u64::from_be_bytes(key[44..52].try_into().ok()?);
    Some((ConversationId(conv), hash, Seq(seq)))
}

/// The seq a reference key ends with.
pub fn reference_seq(key: &[u8]) -> Option<Seq> {
    decode_reference(key).map(|(_, _, seq)| seq)
}

/// The range of one slot's records of one kind (`0x00` uploads, `0x02`
/// objects, `0x04` references): what the collector scans.
pub fn slot_range(slot: Slot, kind: u8) -> (Vec<u8>, Vec<u8>) {
    (media_key(slot, kind, 4), media_key(slot, kind + 1, 4))
}

/// The chunk that holds byte `offset` of a file.
pub fn chunk_of(offset: u64) -> u32 {
    (offset / CHUNK) as u32
}

/// How many chunks hold `len` bytes.
pub fn chunks_for(len: u64) -> u32 {
    len.div_ceil(CHUNK) as u32
}

/// Encodes a chunk's value: `[1][bytes]`.
pub fn encode_chunk(bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(CHUNK_PREFIX.len() + bytes.len());
    v.extend_from_slice(CHUNK_PREFIX);
    v.extend_from_slice(bytes);
    v
}

/// What a chunk's value starts with: its format version.
pub const CHUNK_PREFIX: &[u8] = &[1];

/// The bytes of a chunk's value.
pub fn decode_chunk(value: &[u8]) -> Result<&[u8]> {
    match value.split_first() {
        Some((1, rest)) => Ok(rest),
        Some((v, _)) => Err(missive_raft::Error::malformed(
            "media chunk",
            format!("format version {v}, this build reads 1"),
        )),
        None => Err(missive_raft::Error::malformed("media chunk", "empty value")),
    }
}

/// Where an upload stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UploadState {
    /// Taking bytes.
    Open,
    /// Every byte arrived and was hashed: the upload's chunks hold the
    /// object `hash` (`kept`), or were deleted because an identical object
    /// was stored before (not `kept`).
    Finished {
        /// The content hash.
        hash: Hash,
        /// Whether this upload's chunks are the object's bytes.
        kept: bool,
    },
}

/// An upload (`upload` key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upload {
    /// Who uploads: the only user who may append to it or see it.
    pub owner: UserId,
    /// The file's length, declared at creation (bytes).
    pub length: u64,
    /// Bytes stored so far: the next append starts here.
    pub received: u64,
    /// The MIME type the client declared (checked at creation).
    pub mime: String,
    /// The file name the client declared (may be empty).
    pub name: String,
    /// When it was created (the leader's stamp, µs).
    pub created_at: u64,
    /// Where it stands.
    pub state: UploadState,
}

/// A stored object (`object` key): content-addressed, stored once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    /// Its length (bytes).
    pub size: u64,
    /// The MIME type of the first upload that stored it.
    pub mime: String,
    /// The upload whose chunks hold its bytes.
    pub upload: UploadId,
    /// When it was first stored (µs).
    pub created_at: u64,
    /// An image's dimensions, placeholder and thumbnails (JPEG, PNG, WebP
    /// and GIF objects; `None` for other types).
    pub image: Option<ImageInfo>,
    /// Everyone who uploaded these bytes (each holds a grant), first
    /// first.
    pub uploaders: Vec<UserId>,
    /// The last time it was stored again or named by a send (µs): the
    /// collector leaves an object used within its grace period alone.
    pub last_used: u64,
}

/// A user's grant on an object (`grant` key): they uploaded it, so they
/// may read it and reference it from their messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Its length (bytes), counted against the user's quota.
    pub size: u64,
    /// The MIME type declared at upload.
    pub mime: String,
    /// The file name declared at upload.
    pub name: String,
    /// When the upload finished (µs).
    pub at: u64,
}
