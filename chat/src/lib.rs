//! Missive's chat domain, on the multi-raft runtime (`missive-raft`).
//!
//! ```text
//!  a send ─► ChatNode::write(Post) ─► the conversation's shard
//!     apply (every replica): member? dedup? ─► message at (ts, seq),
//!     head, receipt, outbox entry ─► one atomic batch
//!  fan-out worker (conversation shard's leader) ─► Deliver to each
//!     recipient's user shard ─► inbox event (useq), user's conversation
//!     view ─► InboxNotice to live connections ─► OutboxDone
//!  a read ─► ChatNode::history / inbox / … ─► the data's shard, decoded
//! ```
//!
//! # Layout
//!
//! - `ids` — [`UserId`], [`DeviceId`] (conversations are the engine's
//!   `ConversationId`), and the counters [`Seq`] (a message in its
//!   conversation), [`Eseq`] (an event in a conversation's outbox) and
//!   [`Useq`] (an event in a user's inbox).
//! - `command` — the commands, their outcomes and refusal codes; the entry
//!   format's variant indices.
//! - `records` — what the domain stores in the LSM, keys and values byte by
//!   byte.
//! - `retention` — what the store forgets on its own (disappearing
//!   messages, and their search postings).
//! - `media` — the media store: uploads in chunks through Raft,
//!   content-addressed objects, who may read them.
//! - `push` — the durable push outbox: notification jobs written with
//!   inbox events, their retries and dead letters (sent by `missived`).
//! - `e2ee` — end-to-end encryption support: the device key directory
//!   (rules in `apply::keys`) and encrypted messages' per-device payloads.
//! - `search` — full-text search: the tokenizer, the postings (written by
//!   `apply::index`) and one shard's query.
//! - `apply` — **the apply rules**, one file per command family
//!   (conversation, message, change, receipt, deliver, user).
//! - `app` — [`ChatApp`], the runtime's `App`: routing by slot, apply, and
//!   what happens once a batch is durable.
//! - `outbox_feed` — what apply just wrote to an outbox, handed to the
//!   fan-out worker in memory (a scan of the outbox is the fallback).
//! - `revisions` — which stored messages changed on this replica, so
//!   caches of rendered messages never serve an old version.
//! - `fanout` — the worker moving conversation events from a shard's
//!   durable outbox into members' inboxes on their user shards.
//! - `node` — [`ChatNode`]: a runtime node running the domain, its fan-out
//!   worker, and the typed reads.
//! - `restore` — after a backup is restored: each conversation's counters
//!   raised past what its members' inboxes hold.
//! - `error` — the one error type ([`Error`]): a refusal with a stable code
//!   vs the runtime's failure.

pub mod app;
pub mod apply;
pub mod command;
pub mod e2ee;
pub mod error;
mod fanout;
pub mod ids;
pub mod media;
pub mod node;
pub mod outbox_feed;
pub mod push;
pub mod records;
pub mod restore;
pub mod retention;
pub mod revisions;
pub mod search;

pub use app::ChatApp;
pub use error::{Error, Result};
pub use ids::{direct_id, DeviceId, Eseq, Seq, Useq, UserId};
pub use node::ChatNode;
pub use records::StoredMessage;
