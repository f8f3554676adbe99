//! The edges: how clients and operators reach the service. Each translates
//! its protocol to `Service` calls and `ApiError`s; none imports another.
//!
//! - `http` — the HTTP API under `/v1/`, the WebSocket upgrade, `/healthz`,
//!   `/readyz`, `/metrics`, and the router (which mounts `admin`).
//! - `ws` — **the frame path**: a WebSocket session, its requests answered
//!   by id, its bounded outbound queue and the slow-consumer rule.
//! - `grpc` — the same calls and event stream over gRPC (tonic), from
//!   `proto/missive.proto`.
//! - `keys` — end-to-end encryption's key directory over HTTP.
//! - `media` — media over HTTP: tus uploads, Range downloads, signed
//!   URLs.
//! - `admin` — the operator's cluster API (placement, replica changes).
//! - `media_admin` — the operator's media API (list, inspect, verify,
//!   collect).
//! - `push_admin` — the operator's push API (dead letters, replay).
//! - `backup` — the operator's backup stream and restore frames.
//! - `cors` — which browser origins may call, and CORS for them.
//! - `web` — the web client's static files, compiled in.

pub mod admin;
pub mod backup;
pub mod cors;
pub mod grpc;
pub mod http;
pub mod keys;
pub mod media;
pub mod media_admin;
pub mod push_admin;
pub mod web;
pub mod ws;
