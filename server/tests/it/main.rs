//! The server's integration tests, over the real binary and the real
//! library: one test binary, a module per subject.
//!
//! One binary, not one per file: each test binary re-instantiates the
//! generic code it reaches (openraft, tokio, axum, tonic) and links the
//! whole server, ~3 minutes per binary on CI's two cores — most of what a
//! fresh `.ci/run` spent. Run one subject with `cargo test -p
//! missive-server --test it kill9::`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

mod cluster;
mod delivery;
mod e2ee;
mod grpc;
mod kill9;
mod limits;
mod media;
mod openapi;
mod presence;
mod push;
mod push_providers;
mod web;
