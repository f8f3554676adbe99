//! `missived`: the message service chat frontends talk to, over Missive's
//! replicated store. See docs/protocol.md for the wire protocol and
//! docs/design.md §5 for how it maps onto the store.
//!
//! # Layout
//!
//! ```text
//!  client ─► edge/ (http, ws, grpc, admin) ─► service (rules, limits)
//!     ─► chat::ChatNode (write: commit on a quorum; read: the data's shard)
//!  apply ─► inbox notice ─► delivery/hub ─► delivery/sync ─► edge's sink
//! ```
//!
//! - `config` — defaults, the TOML file, validation.
//! - `error` — [`Error`] (what stops the server) and [`ApiError`] (stable
//!   codes for clients).
//! - `auth` — tokens (JWT HS256), WebSocket tickets, the Origin check.
//! - `wire` — the JSON frames and bodies.
//! - `state` — what every edge handler reaches ([`state::AppState`]) and
//!   the request extractors.
//! - `service` — **the write and read paths**: what a caller may do, as
//!   chat commands and reads (membership, limits, idempotent send).
//! - `edge/` — the protocols: `http`, `ws` (the frame path), `grpc`,
//!   `admin`.
//! - `delivery/` — `sync` (the event stream, sync then live), `hub`,
//!   `recent`, `presence`, `push`.
//! - `media` — uploads' limits, who may read an object, signed download
//!   URLs (the HTTP side is `edge/media`).
//! - `e2ee` — end-to-end encryption at the edge: the key directory's
//!   calls, an encrypted send's device-list check, announcing device-list
//!   changes.
//! - `erasure` — an operator's erasure of a user, over every shard.
//! - `index_check` — an operator's check (and rebuild) of a shard's
//!   search index against its messages.
//! - `metrics` — counters for `/metrics`.
//! - `rate` — rate limits per user (by request class) and per client IP,
//!   that forget quiet keys.
//! - `sockets` — each user's open sockets, against their cap.
//! - `revocation` — whether a token was revoked ("log out other
//!   devices"), cached per node, and how open sockets learn of it.
//! - `fuzzing` — fuzz entry points into the decoders of frames, bodies,
//!   config files and cluster signals (cargo feature `fuzzing`; the
//!   targets are in `fuzz/`).
//! - `logging` — the binary's log (stderr; what is kept out, and why).
//! - `server` — start, the listener with its limits, and shutdown.

pub mod auth;
pub mod config;
pub mod delivery;
pub mod e2ee;
pub mod edge;
pub mod erasure;
pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod index_check;
pub mod logging;
pub mod media;
pub mod metrics;
pub mod rate;
pub mod revocation;
pub mod server;
pub mod service;
pub mod sockets;
pub mod state;
pub mod wire;

pub use config::Config;
pub use error::{ApiError, Error, Result};
pub use server::{start, Running};
