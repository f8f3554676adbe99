//! `missivectl`'s integration tests, over the real binaries: one test
//! binary, a module per subject (one binary per file re-linked the whole
//! server each time; see the server's `tests/it/main.rs`). Run one subject
//! with `cargo test -p missive-tools --test it backup::`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

mod backup;
mod cluster_commands;
mod erasure;
mod media_gc;
mod missivectl;
mod push;
mod search_index;
mod verify;
