//! The group-commit pipeline: the queue callers fill, the writer thread that
//! drains it into segment files, the syncer thread that makes it durable —
//! and the read path, which reads what the writer indexed.
//!
//! Invariants (see the essay in `log/mod.rs` for the why):
//! - Records reach the file in queue order; the queue order is call order.
//! - `written` is published only after the bytes are in the file *and*
//!   applied to the stream index, so a returned append is readable.
//! - `durable` is published only after an fdatasync that started after the
//!   bytes were written. At a segment roll the writer seals and fsyncs the
//!   old segment itself before writing to the new one, so syncing the newest
//!   segment always covers everything below the published LSN.
//! - Any write or sync failure poisons the log; nothing after it completes.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::log::format::{self, decode_record, entry_data, Decoded, RecordKind};
use crate::log::segment::{self, Segment};
use crate::log::writer::WriterState;
use crate::log::{gc, Counters, Entry, Shared, StreamId, SyncPolicy};

/// A stream's tail as callers see it, including records still queued.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tail {
    /// The index the next append gets.
    pub next: u64,
    /// The highest purged index.
    pub purged: u64,
}

/// Records waiting for the writer.
#[derive(Debug)]
pub(crate) struct Queue {
    /// Encoded records, back to back, in call order.
    buf: Vec<u8>,
    /// LSN of `buf[0]`.
    base_lsn: u64,
    pub tails: HashMap<StreamId, Tail>,
    /// Someone waits for durability now (meta, truncate, purge, sync).
    pub force_sync: bool,
    /// `buf` is non-empty and holds only staged records
    /// ([`crate::log::Log::stage_meta`]): no caller waits for them to be
    /// written, so the writer thread may leave them for the next caller's
    /// write-through for up to [`crate::log::LogOptions::staged_write_delay`].
    pub staged_only: bool,
    /// When the first of the staged records now queued was staged (valid
    /// while `staged_only`): the writer thread writes them at this instant
    /// plus the delay, however often it wakes in between.
    pub staged_since: Instant,
    /// The writer thread knows about the staged records (it is in its
    /// timed wait or about to drain): staging more need not wake it.
    pub staged_armed: bool,
    pub closed: bool,
}

impl Queue {
    pub fn new(tails: HashMap<StreamId, Tail>) -> Self {
        Queue {
            buf: Vec::with_capacity(64 << 10),
            base_lsn: 0,
            tails,
            force_sync: false,
            staged_only: false,
            staged_since: Instant::now(),
            staged_armed: false,
            closed: false,
        }
    }

    /// The stream's tail, created at index 1 for a new stream.
    pub fn tail(&mut self, stream: StreamId) -> &mut Tail {
        self.tails
            .entry(stream)
            .or_insert(Tail { next: 1, purged: 0 })
    }

    /// Encodes one record onto the queue.
    pub fn push(&mut self, kind: RecordKind, stream: StreamId, index: u64, payload: &[&[u8]]) {
        format::encode_record(&mut self.buf, kind, stream, index, payload);
    }

    /// Encodes a staged record ([`crate::log::Log::stage_meta`]); returns
    /// whether the writer thread must be told (it sleeps until told, and
    /// nothing else may come to write the record).
    pub fn push_staged(&mut self, kind: RecordKind, stream: StreamId, payload: &[&[u8]]) -> bool {
        if self.buf.is_empty() {
            self.staged_only = true;
            self.staged_since = Instant::now();
        }
        self.tail(stream);
        self.push(kind, stream, 0, payload);
        let wake = self.staged_only && !self.staged_armed;
        self.staged_armed |= wake;
        wake
    }

    /// When the staged records queued now are due for the writer thread
    /// (`None`: a delay past the clock's range, so only a write carries
    /// them). Meaningful while `staged_only`.
    pub fn staged_due(&self, delay: Duration) -> Option<Instant> {
        self.staged_since.checked_add(delay)
    }

    /// LSN just past everything queued so far.
    pub fn end_lsn(&self) -> u64 {
        self.base_lsn + self.buf.len() as u64
    }
}

/// What the syncer should make durable next.
#[derive(Debug)]
pub(crate) struct SyncTarget {
    /// The newest segment: the only one that can hold unsynced bytes.
    file: Segment,
    /// Everything below this LSN is written (to `file` or synced earlier).
    written: u64,
    /// Sync now, whatever the policy's interval.
    force: bool,
    closed: bool,
    /// Everything below this LSN is durable.
    synced: u64,
    /// A sync is running (on the syncer or on a waiting caller): at most
    /// one at a time, so `synced` only grows.
    syncing: bool,
}

impl SyncTarget {
    /// The writer rolled to `file`: the only one that can hold unsynced
    /// bytes from now on (the old one was sealed and synced by the roll).
    pub fn switch_to(&mut self, file: Segment) {
        self.file = file;
    }

    pub fn new(file: Segment) -> Self {
        SyncTarget {
            file,
            written: 0,
            force: false,
            closed: false,
            synced: 0,
            syncing: false,
        }
    }
}

/// Starts the writer and (unless the policy is `Never`) the syncer.
pub(crate) fn start(shared: &Arc<Shared>) -> Result<Vec<JoinHandle<()>>> {
    let mut threads = Vec::new();
    let s = Arc::clone(shared);
    threads.push(
        std::thread::Builder::new()
            .name("missive-log-writer".into())
            .spawn(move || writer_loop(&s))
            .map_err(|e| Error::io("spawn the writer thread for", &shared.dir, e))?,
    );
    if shared.opts.sync != SyncPolicy::Never {
        let s = Arc::clone(shared);
        threads.push(
            std::thread::Builder::new()
                .name("missive-log-syncer".into())
                .spawn(move || syncer_loop(&s))
                .map_err(|e| Error::io("spawn the syncer thread for", &shared.dir, e))?,
        );
    }
    Ok(threads)
}

/// Whether a [`drain`] that finds only staged records writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Staged {
    /// Write them: a caller asked for this write (its own records were
    /// carried by another caller's, or it rolls the log).
    Write,
    /// Leave them queued until they are due, unless someone waits for a
    /// sync or the log is closing: the writer thread's rule, which may find
    /// that the records it woke for were carried away by a caller's write
    /// while it waited for the writer lock, and what is left must wait for
    /// the next write or its delay.
    Leave,
}

/// What one [`drain`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drained {
    /// Wrote a group (or served a forced sync).
    Wrote,
    /// The queue was empty (or, under [`Staged::Leave`], held only staged
    /// records).
    Nothing,
    /// The queue was empty and the log is closing.
    Closed,
}

/// Writes everything queued so far as one group: swaps the queue's buffer
/// out, writes and indexes its records, runs segment GC if they can free
/// segments, publishes "written" and hands the group to the syncer. The
/// caller holds the writer lock, which is what keeps groups in queue order.
/// A failure poisons the log and is returned.
pub(crate) fn drain(shared: &Shared, w: &mut WriterState, staged: Staged) -> Result<Drained> {
    // After a failure nothing more is written. Records queued just before
    // the poison would otherwise be written by their caller's own
    // write-through — into a writer state the failure left half-rolled —
    // and acknowledged by the next successful fsync (the lost-write test
    // caught an append acknowledged after a failed directory fsync, then
    // missing after the crash).
    if let Some(cause) = shared.marks.poisoned() {
        return Err(Error::Poisoned { cause });
    }
    let (end_lsn, force) = {
        let mut q = shared.queue();
        if q.buf.is_empty() && !q.force_sync {
            return Ok(if q.closed {
                Drained::Closed
            } else {
                Drained::Nothing
            });
        }
        if staged == Staged::Leave
            && q.staged_only
            && !q.force_sync
            && !q.closed
            && q.staged_due(shared.opts.staged_write_delay)
                .is_none_or(|due| Instant::now() < due)
        {
            return Ok(Drained::Nothing);
        }
        std::mem::swap(&mut q.buf, &mut w.spare);
        q.staged_only = false;
        q.base_lsn += w.spare.len() as u64;
        (q.base_lsn, std::mem::take(&mut q.force_sync))
    };
    let buf = std::mem::take(&mut w.spare);
    let result = w.write_records(shared, &buf).and_then(|run_gc| {
        // Collect before publishing, so a purge returns only once the
        // segments it freed are gone (its caller may be reclaiming space).
        if run_gc {
            gc::collect(shared, w)?;
        }
        Ok(())
    });
    if let Err(err) = result {
        tracing::error!(%err, "log write failed; poisoning the log");
        return Err(Error::Poisoned {
            cause: shared.marks.poison(err),
        });
    }
    if !buf.is_empty() {
        Counters::add(&shared.stats.groups, 1);
    }
    w.spare = buf;
    w.spare.clear();
    shared.marks.set_written(end_lsn);
    if shared.opts.sync == SyncPolicy::Never {
        shared.marks.set_durable(end_lsn);
    } else {
        let mut t = shared.sync_target();
        t.written = end_lsn;
        t.force |= force;
        drop(t);
        shared.sync_cv.notify_one();
    }
    Ok(Drained::Wrote)
}

/// The writer thread: writes groups that no caller wrote itself (a caller
/// that finds the writer busy wakes it), and closes the syncer at the end.
///
/// It decides to write under the queue lock but writes under the writer
/// lock, taken after: a caller may write what woke it in between and stage
/// new records, which must still wait for the next write or their delay —
/// so the drain re-checks ([`Staged::Leave`]). Under load the gap is long:
/// the thread waits for the writer lock a caller holds, and is scheduled
/// late after it is released (CI caught staged records written on their
/// own this way, 2026-12-08).
fn writer_loop(shared: &Shared) {
    loop {
        {
            let mut q = shared.queue();
            loop {
                if q.closed || q.force_sync || (!q.buf.is_empty() && !q.staged_only) {
                    break;
                }
                if q.buf.is_empty() {
                    q.staged_armed = false;
                    q = super::relock(shared.queue_cv.wait(q));
                    continue;
                }
                // Only staged records: give a caller's write-through the
                // chance to carry them (no write, no sync of their own),
                // then write them here once they are due.
                q.staged_armed = true;
                let now = Instant::now();
                match q.staged_due(shared.opts.staged_write_delay) {
                    Some(due) if due <= now => break,
                    Some(due) => {
                        q = super::relock(shared.queue_cv.wait_timeout(q, due - now)).0;
                    }
                    // A delay past the clock's range: only a write carries them.
                    None => q = super::relock(shared.queue_cv.wait(q)),
                }
            }
        }
        let mut w = shared.writer();
        match drain(shared, &mut w, Staged::Leave) {
            Ok(Drained::Wrote | Drained::Nothing) => {}
            Ok(Drained::Closed) | Err(_) => break,
        }
    }
    let mut t = shared.sync_target();
    t.closed = true;
    drop(t);
    shared.sync_cv.notify_one();
}

fn syncer_loop(shared: &Shared) {
    let interval = match shared.opts.sync {
        SyncPolicy::EveryMillis(ms) => Some(Duration::from_millis(ms)),
        _ => None,
    };
    let mut last_sync = Instant::now();
    loop {
        let (file, upto) = {
            let mut t = shared.sync_target();
            loop {
                if t.written > t.synced && !t.syncing {
                    match interval {
                        Some(every) if !t.force && !t.closed => {
                            let due = last_sync + every;
                            let now = Instant::now();
                            if now < due {
                                t = super::relock(shared.sync_cv.wait_timeout(t, due - now)).0;
                                continue;
                            }
                        }
                        _ => {}
                    }
                    break;
                }
                if t.closed && !t.syncing {
                    return;
                }
                if t.force && !t.syncing {
                    // Nothing new to sync, but someone waits: it is durable.
                    t.force = false;
                    shared.marks.set_durable(t.synced);
                }
                t = super::relock(shared.sync_cv.wait(t));
            }
            t.force = false;
            t.syncing = true;
            (t.file.clone(), t.written)
        };
        if finish_sync(shared, &file, upto).is_err() {
            return;
        }
        last_sync = Instant::now();
    }
}

/// fdatasyncs `file` (which holds everything written below `upto`), then
/// publishes: `syncing` off, `synced` and the durable mark up to `upto`.
/// The caller set `syncing`. A failure poisons the log; once it is
/// poisoned, the durable mark no longer moves (see `Marks::set_durable`).
fn finish_sync(shared: &Shared, file: &Segment, upto: u64) -> Result<()> {
    let started = Instant::now();
    let result = file.file.sync_data();
    shared.stats.fsync.record(started.elapsed());
    let mut t = shared.sync_target();
    t.syncing = false;
    if result.is_ok() {
        t.synced = t.synced.max(upto);
    }
    drop(t);
    // The syncer may be waiting for this sync to end.
    shared.sync_cv.notify_one();
    match result {
        Ok(()) => {
            shared.activity.record();
            Counters::add(&shared.stats.syncs, 1);
            shared.marks.set_durable(upto);
            Ok(())
        }
        Err(e) => {
            let err = Error::io("fsync", &file.path, e);
            tracing::error!(%err, "log fsync failed; poisoning the log");
            Err(Error::Poisoned {
                cause: shared.marks.poison(err),
            })
        }
    }
}

/// Waits until everything below `lsn` is durable. Under
/// [`SyncPolicy::Always`], a waiter that finds no sync running runs it on
/// its own thread — one fdatasync, no hand-off to the syncer and back,
/// which is most of a lone writer's latency — while a waiter that finds a
/// sync running waits for it (the next group forms meanwhile, and the
/// syncer or the next waiter syncs it).
pub(crate) fn wait_durable(shared: &Shared, lsn: u64) -> Result<()> {
    shared.marks.wait_written(lsn)?;
    if shared.opts.sync == SyncPolicy::Always {
        let claimed = {
            let mut t = shared.sync_target();
            if t.synced < lsn && !t.syncing && !t.closed && t.written >= lsn {
                t.syncing = true;
                t.force = false;
                Some((t.file.clone(), t.written))
            } else {
                None
            }
        };
        if let Some((file, upto)) = claimed {
            finish_sync(shared, &file, upto)?;
        }
    }
    shared.marks.wait_durable(lsn)
}

/// Reads the live entries of `range`, one pread per run of adjacent records.
pub(crate) fn read_entries(
    shared: &Shared,
    stream: StreamId,
    range: Range<u64>,
) -> Result<Vec<Entry>> {
    // Snapshot the locations and the files they live in under the stream
    // lock, then do the I/O without holding any lock. A segment collected
    // meanwhile stays readable through the handle we hold.
    let (first_index, locs, files) = {
        let streams = shared.streams();
        let Some(s) = streams.map.get(&stream) else {
            return Ok(Vec::new());
        };
        let lo = range.start.max(s.first);
        let hi = range.end.min(s.last() + 1);
        if lo >= hi {
            return Ok(Vec::new());
        }
        let from = (lo - s.first) as usize;
        let to = (hi - s.first) as usize;
        let locs: Vec<_> = s.locs.range(from..to).copied().collect();
        let segments = shared.segments();
        let mut files: HashMap<u64, Segment> = HashMap::new();
        for l in &locs {
            if let std::collections::hash_map::Entry::Vacant(v) = files.entry(l.segment) {
                let seg = segments.get(&l.segment).ok_or_else(|| {
                    Error::corruption(
                        shared.dir.join(segment::file_name(l.segment)),
                        l.offset,
                        "indexed segment is missing",
                    )
                })?;
                v.insert(seg.clone());
            }
        }
        (lo, locs, files)
    };

    let mut out = Vec::with_capacity(locs.len());
    let mut i = 0;
    let mut buf = Vec::new();
    while i < locs.len() {
        // Extend the run while the next record follows this one directly.
        let start = locs[i];
        let mut j = i + 1;
        let mut run_end = start.offset + u64::from(start.len);
        while j < locs.len() && locs[j].segment == start.segment && locs[j].offset == run_end {
            run_end += u64::from(locs[j].len);
            j += 1;
        }
        let seg = &files[&start.segment];
        buf.resize((run_end - start.offset) as usize, 0);
        seg.file
            .read_at(&mut buf, start.offset)
            .map_err(|e| Error::io("read", &seg.path, e))?;
        let mut at = 0usize;
        for (k, loc) in locs[i..j].iter().enumerate() {
            let index = first_index + (i + k) as u64;
            let bad = |reason: &str| Error::corruption(&seg.path, loc.offset, reason.to_owned());
            let rec = match decode_record(&buf, at) {
                Decoded::Record(r) => r,
                Decoded::Bad(reason) => return Err(bad(reason)),
                Decoded::End | Decoded::Incomplete => return Err(bad("indexed record is missing")),
            };
            if rec.stream != stream || rec.index != index {
                return Err(bad("indexed record belongs to another stream or index"));
            }
            let data = entry_data(&rec).map_err(|reason| bad(&reason))?;
            out.push(Entry { index, data });
            at += loc.len as usize;
        }
        i = j;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests panic on surprises")]

    use super::*;
    use crate::log::{Log, LogOptions};

    /// The interleaving CI hit under load, forced: the writer thread is
    /// woken for an append, then waits for the writer lock while a caller
    /// writes that append and stages records; when it gets the lock, the
    /// staged records are not yet due and must stay queued.
    #[test]
    fn writer_thread_woken_for_carried_records_leaves_staged_ones_queued() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(
            dir.path(),
            LogOptions {
                staged_write_delay: Duration::from_secs(3600),
                ..LogOptions::default()
            },
        )
        .unwrap();
        let shared = Arc::clone(&log.shared);
        let before = log.stats();
        std::thread::scope(|s| {
            let mut w = shared.writer();
            // The append finds the writer lock held, so it wakes the writer
            // thread, which leaves its wait and blocks on the lock.
            let appender = s.spawn(|| log.append(StreamId(1), &[b"e1"]).unwrap());
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(
                drain(&shared, &mut w, Staged::Write).unwrap(),
                Drained::Wrote
            );
            log.stage_meta(StreamId(1), b"k", b"v").unwrap();
            drop(w);
            appender.join().unwrap();
        });
        // The writer thread has had the lock (the sync it owes the append's
        // group is its only trace; wait for it to be safe).
        std::thread::sleep(Duration::from_millis(100));
        let idle = log.stats();
        assert_eq!(
            idle.groups,
            before.groups + 1,
            "the staged record was written on its own"
        );
        assert_eq!(log.meta(StreamId(1), b"k"), None);
        log.append(StreamId(2), &[b"carrier"]).unwrap();
        assert_eq!(log.stats().groups, before.groups + 2);
        assert_eq!(log.meta(StreamId(1), b"k").as_deref(), Some(&b"v"[..]));
    }
}
