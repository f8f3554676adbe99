//! Missive's storage engine: the node-wide durable log, and the LSM message
//! store on it (which has no WAL of its own: its writes are already in the
//! log).
//!
//! # Layout
//!
//! - `error` — the one error type ([`Error`]): corruption vs I/O vs poisoned
//!   vs closed vs locked vs invalid argument.
//! - `fuzzing` — fuzz entry points into every decoder of on-disk bytes
//!   (cargo feature `fuzzing`; the targets are in `fuzz/`).
//! - `hot` — entry points into internal hot paths for the criterion benches
//!   (cargo feature `hot`; not in a normal build).
//! - `inspect` — read-only inspection of a data directory (for `missivectl`).
//! - `residue` — whether any file of a data directory still holds some
//!   bytes, searched raw and decoded (the proof behind erasure).
//! - `latency` — fixed-bucket latency histograms (the log's fdatasync, a
//!   shard's apply) that the server exports.
//! - `le` — little-endian integers read from the formats' fixed fields.
//! - `keys` — the key layout: keyspace tag, slot, and the message key
//!   (conversation, reverse timestamp); newtypes for ids and timestamps.
//! - `io/` — file I/O behind the [`io::FileSystem`] / [`io::LogFile`] traits:
//!   `std_fs` (pwrite + fdatasync, and the directory operations), `uring`
//!   (the same through io_uring, one ring per thread), `fault` (an in-memory
//!   file system that loses unsynced writes on a simulated crash and fails
//!   chosen fsyncs).
//! - `log/` — the log ([`log::Log`]):
//!   - `mod` — the API and the essay on the commit pipeline;
//!   - `format` — segment header and record frame, byte by byte;
//!   - `commit` — **the log's write path** (queue → writer → syncer) and
//!     **read path** (index lookup → pread → checksum);
//!   - `durable` — watermarks and the completion handle;
//!   - `stream` — per-stream state, applied identically by replay and writer;
//!   - `segment` — segment names and crash-safe creation;
//!   - `recovery` — **the log's recovery path**: scan, replay, cut a torn tail;
//!   - `gc` — deleting segments every stream has purged;
//!   - `writer` — the segment tail: write, roll;
//!   - `writeback` — the writer's writeback hints, on a thread of their own;
//!   - `ahead` — the next segment, made (and with `zero_fill` zeroed) on
//!     that thread ahead of the roll.
//!   - `activity` — when the log last synced, which the LSM's paced table
//!     writes consult.
//! - `lsm/` — the message store ([`lsm::Lsm`], standalone [`lsm::Db`]):
//!   - `mod` — the API, **the store's write path** (apply → memtable →
//!     flush) and **recovery path** (manifest → tables → flushed positions);
//!   - `batch` — atomic write batches and their encoding;
//!   - `memtable/` — the write buffer: `skiplist` (one writer, lock-free
//!     readers, finger-placed inserts) over `arena` chunks, which
//!     `reserve` keeps faulted in ahead of the writers;
//!   - `table/` — `block` (build/decode), `bloom`, `builder`, `codec`
//!     (block compression, the per-table dictionary), `reader`: the table
//!     format, byte by byte in `table/mod.rs`;
//!   - `blob` — blob files: values of a flush above a size kept out of the
//!     tables, which hold references (format and lifetime in its essay);
//!   - `cache` — the shared block cache;
//!   - `read` — **the store's read path**: cursors, merge, snapshot rules;
//!   - `version`, `manifest` — the live file set and its durable edit log;
//!   - `compaction/` — `picker` (a pure function) and `worker`;
//!   - `pace` — table writes of flushes and compactions paced while the
//!     log acknowledges durable writes (never while writers wait);
//!   - `background`, `pressure` — the flush and compaction threads, and
//!     how far behind they are (level 0's depth, the immutable memtables):
//!     what slows writers and unpaces table writes;
//!   - `retention` — the expiry hook;
//!   - `db` — the LSM with a log of its own.
//!
//! ```text
//!  log write:   Log::append ─► Queue (encode, assign index + LSN)
//!                   ─► writer: pwrite segment, apply to stream index ─► "written"
//!                   ─► syncer: fdatasync ─► "durable" ─► Durable completions fire
//!  store write: Db::write ─► Log::append ─► Lsm::apply_unpublished (memtable)
//!                   ─► durable ─► publish ─► visible;  memtable full ─► flush
//!                   ─► L0 table + manifest edit ─► log purged ─► compaction
//!  store read:  get/scan ─► memtables ─► L0 ─► L1.. (bloom, block cache, mmap)
//!  recovery:    Log::open (replay segments) ─► Lsm::open (manifest, tables)
//!                   ─► Db replays log entries after the flushed position
//! ```

pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "hot")]
pub mod hot;
pub mod inspect;
pub mod io;
pub mod keys;
pub mod latency;
mod le;
pub mod log;
pub mod lsm;
pub mod residue;

pub use error::{Error, Result};
