//! Missive's storage engine.
//!
//! Today it is the node-wide durable log; the LSM message store is built on
//! it next (it has no WAL of its own: its writes are already in this log).
//!
//! # Layout
//!
//! - `error` — the one error type ([`Error`]): corruption vs I/O vs poisoned
//!   vs closed vs invalid argument.
//! - `io/` — file I/O behind the [`io::FileSystem`] / [`io::LogFile`] traits:
//!   `std_fs` (pwrite + fdatasync, and the directory operations), `uring`
//!   (the same through io_uring, one ring per thread), `fault` (an in-memory
//!   file system that loses unsynced writes on a simulated crash and fails
//!   chosen fsyncs).
//! - `log/` — the log ([`log::Log`]):
//!   - `mod` — the API and the essay on the commit pipeline;
//!   - `format` — segment header and record frame, byte by byte;
//!   - `commit` — **the write path** (queue → writer → syncer) and the
//!     **read path** (index lookup → pread → checksum);
//!   - `durable` — watermarks and the completion handle;
//!   - `stream` — per-stream state, applied identically by replay and writer;
//!   - `segment` — segment names and crash-safe creation;
//!   - `recovery` — **the recovery path**: scan, replay, cut a torn tail;
//!   - `gc` — deleting segments every stream has purged.
//!
//! ```text
//!  write path:  Log::append ─► Queue (encode, assign index + LSN)
//!                   ─► writer: pwrite segment, apply to stream index ─► "written"
//!                   ─► syncer: fdatasync ─► "durable" ─► Durable completions fire
//!  read path:   Log::read ─► stream index (segment, offset) ─► pread ─► crc check
//!  recovery:    Log::open ─► list segments ─► replay records ─► cut torn tail
//! ```

pub mod error;
pub mod io;
pub mod keys;
pub mod log;
pub mod lsm;

pub use error::{Error, Result};
