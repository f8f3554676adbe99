//! `missived`: the message service chat frontends talk to, over Missive's
//! replicated store. See docs/protocol.md for the wire protocol and
//! docs/design.md §5 for how it maps onto the store.
//!
//! # Layout
//!
//! - `config` — defaults, the TOML file, validation.
//! - `error` — [`Error`] (what stops the server) and [`ApiError`] (stable
//!   codes for clients).
//! - `auth` — tokens (JWT HS256), WebSocket tickets, the Origin check.
//! - `wire` — the JSON frames and bodies.
//! - `service` — **the write and read paths**: what a caller may do, as
//!   raft commands and reads (membership, limits, idempotent send).
//! - `recent` — the bounded recent-messages cache (event rendering, first
//!   history pages) and why it cannot disagree with the store.
//! - `hub` — live delivery: waking sessions when their user's inbox grows.
//! - `presence` — ephemeral state across the cluster: who is online, who
//!   is typing (leases and signals, never the store).
//! - `push` — notifying an offline user's devices through the operator's
//!   push gateway.
//! - `grpc` — the same calls and event stream over gRPC (tonic), from
//!   `proto/missive.proto`.
//! - `ws` — **the delivery path**: a WebSocket session, its sync-then-live
//!   event stream and its slow-consumer rule.
//! - `http` — the HTTP API and the upgrade.
//! - `admin` — the operator's cluster API (placement, replica changes).
//! - `metrics` — counters for `/metrics`.
//! - `server` — start, the listener with its limits, and shutdown.

pub mod admin;
pub mod auth;
pub mod config;
pub mod error;
pub mod grpc;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod presence;
pub mod push;
pub mod recent;
pub mod server;
pub mod service;
pub mod wire;
pub mod ws;

pub use config::Config;
pub use error::{ApiError, Error, Result};
pub use server::{start, Running};
