//! The media store: photos, videos, voice notes and files, kept by the
//! same replicated shards as messages, so one binary is still the whole
//! storage tier.
//!
//! ```text
//!  upload   CreateUpload ─► upload's shard (slot = hash of a random id)
//!           AppendUpload × n (≤ 1 MiB each, in order; up to 4 in flight) ─► chunk records
//!  finish   read the chunks back, BLAKE3 ─► StoreObject on the hash's
//!           shard (first upload of these bytes wins) ─► FinishUpload
//!           (keep the chunks, or delete them: stored before) and
//!           GrantMedia on the uploader's shard, together
//!  send     a `media` message names the hash ─► apply writes a reference
//!           (conversation, hash, seq) beside the message
//!  read     object (hash's shard) ─► may the caller? (a grant, or a
//!           reference they can see) ─► chunks of the storing upload
//! ```
//!
//! # Why chunks in the LSM, through Raft
//!
//! A blob is cut into chunks of at most [`records::CHUNK`] (1 MiB), each
//! one Raft entry and one LSM value. Every replica then holds every byte,
//! and everything the runtime does to a shard's key ranges — snapshots
//! for a new replica, backup and restore, verification, retirement of a
//! moved replica — covers media with no second mechanism. The price is
//! write amplification: a chunk is written to the log, then once more by
//! the flush into a blob file (the engine keeps large values there, so
//! compactions move a reference, not the bytes) — 1.6–2.1 bytes written
//! per byte uploaded, which bounds uploads on a disk-bound node
//! (docs/design.md §4.3.3 measures it). A store of its own per object
//! would need its own replication, snapshot, backup and crash story.
//!
//! # Invariants
//!
//! - An upload's bytes below `received` are stored; an append starts
//!   exactly there (a resumed upload asks where that is: tus's `HEAD`).
//!   So an acknowledged append is never lost and never applied twice.
//! - An object names the upload whose chunks hold its bytes; the first
//!   `StoreObject` of a hash wins, later uploads of the same bytes delete
//!   their chunks (`FinishUpload { keep: false }`): a file is stored once.
//!   The finish order (object, then upload, then grant) means a crash
//!   between steps leaves an open upload whose owner retries the finish,
//!   every step idempotent — never an object without its bytes.
//! - A download is allowed by a grant (the caller uploaded these bytes)
//!   or by a reference from a message the caller can read now (member,
//!   history visibility, not unsent, not expired); every refusal is the
//!   same `no_such_media`, whether or not the object exists.
//!
//! # Layout
//!
//! - `records` — keys and values, byte by byte.
//! - `audit` — the operator's reads: list, inspect, verify (hash check).
//! - `body` — a media message's body (JSON naming the object).
//! - `image` — images: bounded decoding, placeholder, thumbnails.
//! - `gc` — **the collector**: mark references, sweep objects and
//!   uploads (its essay: why nothing live is deleted).
//! - `store` — the node's media operations (upload, finish, access,
//!   reads of chunks).
//! - the rules are `crate::apply::media`.

pub mod audit;
pub mod body;
pub mod gc;
pub mod image;
pub mod records;
pub mod store;
