//! The chat domain's integration tests over the real runtime (Raft groups
//! on loopback, the engine on disk): one test binary, a module per subject
//! (one binary per file re-instantiated openraft's generics and re-linked
//! each time; see the server's `tests/it/main.rs`). Run one subject with
//! `cargo test -p missive-chat --test it partition::`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

mod cluster;
mod conformance;
mod directory;
mod formats;
mod leaders;
mod log_budget;
mod membership;
mod partition;
mod power_cut;
mod purge_horizon;
mod record_cache;
mod split;
