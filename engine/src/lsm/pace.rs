//! Table writes give way to the log's syncs.
//!
//! # Why
//!
//! A durable write is acknowledged after an fdatasync of the log, and an
//! fdatasync ends with a flush of the device's write cache. On a virtual
//! disk (this project's test host: ext4 on virtio, the host's page cache
//! behind it) that flush makes the host persist everything the guest wrote
//! since the last one — the log's few kilobytes, and whatever megabytes a
//! memtable flush or a compaction handed the device meanwhile. A flush
//! builds its table as fast as a core allows and starts writeback every
//! MiB, so during one the log's syncs each carried up to a MiB of table
//! data: under `missive-bench engine --workloads ingest-sync`, four
//! writers, 2M messages, batch p99 2.9–4.2 ms against ~1 ms when nothing
//! flushed during the phase. A real disk with a volatile cache pays the
//! same in kind: its cache flush waits for the table bytes queued before it.
//!
//! # What
//!
//! While the log has synced within the last [`ACTIVE`] — durable writes
//! are being acknowledged — each table being written (a flush's, each
//! subcompaction's, the recompression pass's) hands the kernel its bytes in
//! steps of [`STEP`], starts their writeback at once, and sleeps so that it
//! writes no faster than `LsmOptions::paced_write_rate`. Each sync then
//! carries at most a step or two of table data. Measured (same run, builds
//! alternating, 2M-message ingest-sync): p99 1.4–2.0 ms paced at 50 MB/s
//! in 64 KiB steps, against 2.9–4.2 ms unpaced; 64 KiB steps unpaced or at
//! 100 MB/s gave nothing (3.3–4.5 ms), nor did 256 KiB steps at 50 MB/s
//! (2.2–3.2 ms); 25 MB/s lost a third of the throughput (the flush no
//! longer kept up). At 500 000 messages: median 1.35 against 2.1 ms. The
//! price is a lone durable writer's, whose every sync now more often
//! carries a step of table data: ~9 % of its rate. docs/benchmarks.md
//! (tenth round) has the tables.
//!
//! # When not
//!
//! Pacing must never be what writers wait for. So a table is written flat
//! out whenever:
//! - no sync happened within [`ACTIVE`] (a bulk load without sync: its
//!   compactions are its throughput);
//! - writers are held back or about to be: the immutable memtables are all
//!   full, level 0 is at `l0_slowdown_tables` or deeper, or the flush
//!   thread waits for compaction (level 0 full) — pacing then gives way by
//!   itself the moment it would cost the writers, and level 0 settles
//!   where paced compaction keeps up;
//! - someone waits for the work ([`super::Lsm::flush`],
//!   [`super::Lsm::compact`], …), or the store is closing.
//!
//! The check runs once per step, so the cost when nothing is paced is a
//! comparison per entry. Blob files (media chunks) are not paced: they are
//! written once, with `O_DIRECT`, at the speed an upload needs.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::lsm::table::builder::TableBuilder;
use crate::lsm::Inner;

/// Bytes of a table between a paced writer's looks at the clock: each
/// becomes one writeback request.
pub(crate) const STEP: u64 = 64 << 10;

/// How recent the log's last sync must be for durable writes to count as
/// being acknowledged. Far longer than a sync (~0.1–1 ms) and than the gap
/// between two under load, far shorter than a flush.
pub(crate) const ACTIVE: Duration = Duration::from_millis(100);

/// Paces one table's writes (see the module documentation). One per table
/// being written; `after` is called after each entry added.
pub(crate) struct WritePacer<'a> {
    inner: &'a Inner,
    /// Bytes per second while paced; 0: never paced.
    rate: u64,
    /// The table's offset at the last step.
    seen: u64,
    /// When the next step may start; `None` after an unpaced step.
    next: Option<Instant>,
}

impl<'a> WritePacer<'a> {
    /// A pacer for a table written in the background; `background` false
    /// (someone called for the work and waits) never paces.
    pub(crate) fn new(inner: &'a Inner, background: bool) -> Self {
        let on = background && inner.opts.sync_activity.is_some();
        WritePacer {
            inner,
            rate: if on {
                inner.opts.paced_write_rate.unwrap_or(0)
            } else {
                0
            },
            seen: 0,
            next: None,
        }
    }

    /// Called after each entry added to `b`: every [`STEP`] bytes, starts
    /// their writeback and sleeps off the rate if pacing applies.
    #[inline]
    pub(crate) fn after(&mut self, b: &mut TableBuilder) -> Result<()> {
        if self.rate == 0 || b.offset() < self.seen + STEP {
            return Ok(());
        }
        self.step(b)
    }

    /// A new table starts (a compaction cuts its output): its offset starts
    /// from zero again.
    pub(crate) fn restart(&mut self) {
        self.seen = 0;
    }

    fn step(&mut self, b: &mut TableBuilder) -> Result<()> {
        let bytes = b.offset() - self.seen;
        self.seen = b.offset();
        if !self.applies() {
            self.next = None;
            return Ok(());
        }
        b.write_back_now()?;
        let now = Instant::now();
        let start = match self.next {
            Some(due) if due > now => {
                std::thread::sleep(due - now);
                self.inner.stats.paced_micros.fetch_add(
                    u64::try_from((due - now).as_micros()).unwrap_or(u64::MAX),
                    Ordering::Relaxed,
                );
                due
            }
            _ => now,
        };
        self.next = Some(start + Duration::from_secs_f64(bytes as f64 / self.rate as f64));
        self.inner.stats.paced_steps.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Whether durable writes are being acknowledged and nobody waits for
    /// this work.
    fn applies(&self) -> bool {
        let inner = self.inner;
        let syncing = inner
            .opts
            .sync_activity
            .as_ref()
            .is_some_and(|a| a.within(ACTIVE));
        syncing
            && inner.flush_waiters.load(Ordering::Acquire) == 0
            && inner.compaction_waiters.load(Ordering::Acquire) == 0
            && !inner.closed.load(Ordering::Acquire)
            && !super::pressure::writers_held_back(inner)
    }
}
