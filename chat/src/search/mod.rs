//! Full-text search of a user's messages: an inverted index kept in the
//! shard's own LSM, written by the apply rules in the same batch as the
//! message it indexes.
//!
//! # Why the index lives in the LSM
//!
//! The seeds run Elasticsearch beside the message store; a separate index
//! (Elasticsearch, or a tantivy index per shard) is a second copy of the
//! data with its own commit, so it lags the messages and, after a crash
//! or a failover, can disagree with them until something reconciles the
//! two. Here the postings are records of the conversation's shard: the
//! send that completes a bucket of 128 messages writes the bucket's
//! postings, and an edit or unsend in a sealed bucket changes its bits, in
//! the same atomic batch (`apply::index`); the newest, still open bucket
//! is read from the messages themselves. So on every replica, at every
//! applied index, the index and the open bucket together are exactly the
//! messages' words. Raft replicates it, snapshots and backups carry it, a moved
//! replica's wipe removes it, and the engine's retention rule expires a
//! posting with its message (`retention`): nothing else has to know.
//! What tantivy would bring — block-compressed postings lists and BM25
//! scoring — matters less for chat search, which ranks by time (newest
//! first) and is scoped to a user's conversations: the postings of a term
//! in one conversation are one contiguous key range, a bucket of 128
//! messages per key, read newest first.
//!
//! # Layout
//!
//! - `tokenize` — text → terms: Unicode word segmentation, folding (NFKD,
//!   diacritics, case), CJK bigrams; a query's last word as a prefix.
//! - `postings` — the index's records, byte by byte, and why buckets.
//! - `query` — **the read path**: one shard's part of a search, run
//!   against its LSM (`ReadOp::App`), and a hit's snippet and highlights.
//! - `check` — the index against the messages, conversation by
//!   conversation (an operator's check; `RepairIndex` fixes what it finds).
//! - `scatter` — a user's search over the shards of their conversations,
//!   merged newest first (`ChatNode::search`).
//!
//! The write path is `apply::index` (called by the message rules).
//!
//! # What is indexed
//!
//! The body of every message its sender gave as text (`Message::text`:
//! the edges' `body`, never `body_b64`), except system messages and
//! tombstones. Opaque bytes — ciphertext of end-to-end encrypted
//! conversations among them — are never indexed, even when they happen to
//! be valid UTF-8; so are no messages stored before the index existed
//! (version 4 and older carry no text flag).

pub mod check;
pub mod postings;
pub mod query;
pub mod scatter;
pub mod tokenize;

#[cfg(test)]
mod tests;

pub use query::{Cursor, Filters, KindFilter};
pub use scatter::{SearchHit, SearchPage, SearchRequest};
pub use tokenize::QueryTerms;
