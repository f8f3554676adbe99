//! The next segment, prepared ahead of the roll on the writer's helper
//! thread (`writeback.rs`).
//!
//! Creating a segment (create, `fallocate`, fsync, rename, fsync the
//! directory: two journal commits or more) used to run inside the roll, on
//! the appender's path — under a sustained ingest, a roll every ~0.6 s.
//! Now the writer asks for segment `seq + 1` once the current one is half
//! full, the helper creates, reserves and syncs it under a `.tmp` name, and
//! the roll only renames it into place and fsyncs the directory (which it
//! did anyway). A preparation not ready in time is abandoned and the roll
//! creates the segment itself, as before.
//!
//! With [`LogOptions::zero_fill`] the helper also writes the prepared
//! segment's bytes as zeros. `fallocate` leaves reserved blocks
//! *unwritten*, and the first fdatasync after a write into each must also
//! commit the journal entry that marks it written; into written blocks an
//! fdatasync flushes data only. Measured on this project's test host (ext4
//! on virtio, docs/benchmarks.md): `pwrite(6 KiB) + fdatasync` p50 140 →
//! 85 µs, and a one-writer durable ingest ~1.3–1.5× faster once the log
//! writes into zeroed segments. But zeroing a 64 MiB segment takes ~0.85 s
//! of the device in 1 MiB synced pieces, and the live segment's
//! fdatasyncs take ~1 ms instead of ~0.15 ms meanwhile (5 ms with 8 MiB
//! pieces). With the option on (`missive-bench engine --log-zero-fill`,
//! 500 000-message `ingest-sync`, three runs each way): one writer
//! 395k–445k msgs/s against 263k–308k, but batch p99 0.64–0.81 ms against
//! 0.30–0.56, and four writers' p99 3.3–4.1 ms against 1.5–4.1 — the
//! successor's zeroing overlaps the run. So it is off by default: worth it
//! where segments fill slowly and throughput of durable writes counts, not
//! where their tail does. (Zeroing with asynchronous writeback hints instead
//! of a sync per piece, and pacing it, were tried: within this host's
//! run-to-run noise, with single stalls of 25–41 ms.) A log created with
//! the option zeroes its first segment at creation; reopening never zeroes
//! (it would slow every open by a segment's worth of writes): the first
//! segment after a reopen is only reserved.
//!
//! Crash safety is [`segment::create`]'s: the prepared file is written and
//! fsynced under a `.tmp` name (recovery deletes those), then renamed into
//! place and the directory fsynced. Invariants: at most one preparation is
//! asked for at a time; a prepared file is installed, or deleted, exactly
//! once — by the roll that takes it, by the helper if the writer gave up on
//! it, or at shutdown.
//!
//! [`LogOptions::zero_fill`]: super::LogOptions::zero_fill

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::io::FileSystem;
use crate::log::segment::{self, Fill, Prepared};
use crate::log::writeback::Hints;

/// Where a preparation stands; shared by the writer and the helper thread.
#[derive(Debug, Default)]
enum Slot {
    /// Nothing asked for.
    #[default]
    Idle,
    /// The helper is preparing segment `seq`.
    Requested(u64),
    /// Ready to install.
    Ready(Prepared),
    /// The writer rolled past segment `seq` while it was being prepared:
    /// the helper deletes it when done.
    Abandoned(u64),
}

/// The writer's handle on the preparation of its next segment.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ahead {
    slot: Arc<Mutex<Slot>>,
}

/// What the helper needs to prepare a segment.
pub(crate) struct Job {
    pub fs: Arc<dyn FileSystem>,
    pub dir: PathBuf,
    pub seq: u64,
    pub size: u64,
    pub fill: Fill,
    /// Counts a preparation that failed (`LogStats::segment_preparations_failed`).
    pub failures: Arc<AtomicU64>,
}

impl Ahead {
    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks `hints`' thread to prepare segment `seq` (`job` says how),
    /// unless a preparation is already asked for or waiting. A full queue
    /// leaves it for the next write to ask again. `job` runs only when a
    /// request is sent: every write of a segment's second half calls this.
    pub fn request(&self, hints: &Hints, seq: u64, job: impl FnOnce() -> Job) {
        {
            let mut slot = self.slot();
            if !matches!(*slot, Slot::Idle) {
                return;
            }
            *slot = Slot::Requested(seq);
        }
        let job = job();
        debug_assert_eq!(job.seq, seq);
        let ahead = self.clone();
        let sent = hints.run(Box::new(move || ahead.prepare(job)));
        if !sent {
            *self.slot() = Slot::Idle;
        }
    }

    /// On the helper thread: prepares the segment, then hands it over — or
    /// deletes it if the writer has moved on.
    fn prepare(&self, job: Job) {
        let tmp = job
            .dir
            .join(format!("{}.ahead.tmp", segment::file_name(job.seq)));
        let result = segment::prepare(job.fs.as_ref(), &tmp, job.seq, job.size, job.fill);
        let mut slot = self.slot();
        match result {
            Ok(prepared) if matches!(*slot, Slot::Requested(s) if s == job.seq) => {
                *slot = Slot::Ready(prepared);
            }
            Ok(_) => {
                *slot = Slot::Idle;
                drop(slot);
                remove(job.fs.as_ref(), &tmp);
            }
            Err(err) => {
                job.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%err, "could not prepare the next log segment; the roll will create it");
                *slot = Slot::Idle;
                drop(slot);
                remove(job.fs.as_ref(), &tmp);
            }
        }
    }

    /// At a roll to `seq`: the prepared segment if it is that one. A
    /// preparation still running is abandoned; a stale one is deleted.
    pub fn take(&self, fs: &dyn FileSystem, seq: u64) -> Option<Prepared> {
        let mut slot = self.slot();
        match std::mem::take(&mut *slot) {
            Slot::Ready(p) if p.seq == seq => Some(p),
            Slot::Ready(stale) => {
                drop(slot);
                remove(fs, &stale.tmp);
                None
            }
            Slot::Requested(s) | Slot::Abandoned(s) => {
                *slot = Slot::Abandoned(s);
                None
            }
            Slot::Idle => None,
        }
    }

    /// At shutdown (the helper thread joined): deletes a prepared segment
    /// nobody will install.
    pub fn discard(&self, fs: &dyn FileSystem) {
        if let Slot::Ready(p) = std::mem::take(&mut *self.slot()) {
            remove(fs, &p.tmp);
        }
    }
}

/// Deletes a prepared file; a failure only leaves a `.tmp` file that the
/// next open deletes.
fn remove(fs: &dyn FileSystem, path: &std::path::Path) {
    if let Err(err) = fs.remove_file(path) {
        tracing::warn!(%err, path = %path.display(), "could not delete a prepared log segment");
    }
}
