//! Delivery: getting events to devices, whatever edge they came in by.
//!
//! - `sync` — **the delivery path**: a device's event stream from its
//!   cursor through the store, then live, with no gap and no duplicate
//!   (its essay); transport-neutral behind `FrameSink`.
//! - `hub` — live delivery: waking sessions when their user's inbox grows.
//! - `recent` — the bounded recent-messages cache (event rendering, first
//!   history pages) and why it cannot disagree with the store.
//! - `presence` — ephemeral state across the cluster: who is online, who
//!   is typing (leases and signals, never the store).
//! - `push` — notifying an offline user's devices through APNs, FCM or
//!   the operator's webhook gateway.

pub mod hub;
pub mod presence;
pub mod push;
pub mod recent;
pub mod sync;
