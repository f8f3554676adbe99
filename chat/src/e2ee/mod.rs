//! End-to-end encryption support: the server stores and forwards
//! ciphertext it cannot read, and keeps the public keys devices need to
//! start sessions with each other.
//!
//! # What the server knows, and what it does not
//!
//! Clients run an X3DH-style handshake and a ratchet of their own choice
//! (Signal's, or a simpler one); the server takes part in neither. It
//! holds, per device, the public half of three kinds of keys (`keys`):
//!
//! - an **identity key** (Ed25519, 32 bytes), long-lived: what users
//!   compare as a safety number, and what signs the next one;
//! - a **signed pre-key** (X25519, 32 bytes, an id, and the identity key's
//!   Ed25519 signature over `"missive signed pre-key v1" ‖ id (u32 BE) ‖
//!   key`), rotated by the device now and then. The signature is checked
//!   in apply (it is a pure function, so every replica agrees): a record
//!   whose signature does not verify never enters the directory;
//! - **one-time pre-keys** (X25519, 32 bytes each, with ids): each is
//!   handed out once. Claiming runs as a Raft command on the owner's user
//!   shard, so two claims that race are two entries in one log and apply
//!   one after the other: the first takes the oldest key, the second the
//!   next. A claim that times out and is retried may take a second key —
//!   a wasted key, never a key handed out twice. A leader change cannot
//!   repeat one either: a key leaves the directory in the same batch that
//!   answers the claim.
//!
//! A user's **device list** is the set of their devices that published
//! keys. An encrypted message (`MessageKind::Encrypted`) carries one
//! ciphertext per recipient device (`envelope`): every device of every
//! member but the sending device itself. The server stores it once (one
//! message record holds every payload) and each device is served only its
//! own payload: in events, in sync and in history. The edge compares the
//! payloads' devices with the members' current device lists before it
//! proposes the send and refuses a stale set, naming the missing and the
//! extra devices (as Signal's server does); the comparison reads other
//! shards, so a device that publishes its keys while a send is in flight
//! may miss that one message, as it would have had it published a moment
//! later.
//!
//! # Events
//!
//! - `PreKeysLow { device, remaining }`: a claim left one of the user's
//!   devices with fewer than [`LOW_ONE_TIME_KEYS`] one-time pre-keys (and
//!   again when it ran out). Written into the owner's inbox in the batch
//!   of the claim, so it is as durable as the claim. Account events like
//!   this one carry conversation 0, which no conversation has.
//! - `DeviceKeys { user, device, change }`: a device was added, changed
//!   its identity key, or was removed. The edge that applied the change
//!   announces it in each conversation of the user (`Command::NoteKeys`),
//!   so every member hears of it where they talk to the user — the "safety
//!   number changed" line. That announcement crosses shards and is best
//!   effort (a node dying in between loses it); the stale-device check on
//!   every send is what keeps correctness, the event only warns.
//!
//! # Encrypted conversations
//!
//! A conversation may be marked end-to-end encrypted (one way: it cannot
//! be turned back). There, only encrypted messages are accepted (plain
//! text, opaque bodies and media references are refused with
//! `encrypted`), and edits are refused (an edit would need a payload per
//! device too; not built yet). Nothing in an encrypted message is
//! indexed for search, and push notifications never carry content.

pub mod envelope;
pub mod keys;

pub use envelope::{DevicePayload, Envelope};
pub use keys::{
    DeviceKeys, KeyChange, OneTimeKey, SignedPreKey, LOW_ONE_TIME_KEYS, MAX_ONE_TIME_KEYS,
    MAX_ONE_TIME_KEYS_PER_PUBLISH,
};
