//! The engine's integration tests (the log and the LSM through their
//! public API: models, crashes in child processes, injected faults,
//! corruption): one test binary, a module per subject. Run one subject
//! with `cargo test -p missive-engine --test it lsm_crash::`. The loom
//! model stays a binary of its own (`tests/loom_skiplist.rs`): it builds
//! with `--cfg loom`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

mod db_api;
mod inspect_stats;
mod log_ahead;
mod log_basic;
mod log_corruption;
mod log_crash;
mod log_lost_write;
mod log_model;
mod lsm_backpressure;
mod lsm_blobs;
mod lsm_compression;
mod lsm_corruption;
mod lsm_crash;
mod lsm_flush;
mod lsm_model;
mod lsm_pacing;
mod lsm_retention;
mod lsm_stats;
mod lsm_upgrade;
