//! Segment garbage collection: deleting segments no stream needs.
//!
//! A segment may go only when every stream has purged (or truncated away)
//! all of its entries in it. We delete strictly oldest-first, so the live
//! segments are always a contiguous run and a missing one in the middle is
//! corruption, not collection.
//!
//! Entries are not the only thing a segment holds. A stream's purge point
//! and its meta values (a Raft vote, a flush position) live in records too,
//! and the newest of them may sit in a segment that is otherwise dead.
//! Before deleting such a segment we append a Checkpoint record per affected
//! stream — its purge point and all its meta — to the newest segment and
//! fsync it. Only then are the old files removed (and the directory synced).
//!
//! That fsync happens even when no checkpoint is needed: collection runs on
//! the writer right after writing a group, before the syncer has synced it,
//! and the purge that freed the segments is in that group. Deleting first
//! would let a power cut keep the deletion and lose the purge — a hole at
//! the front of the stream. (The lost-write test found exactly that.)
//! A crash in between leaves both copies; replay applies them in order and
//! the newer one wins, which is the same state.
//!
//! Truncate records need no carrying forward: a truncate only removes
//! entries written before it, so once its segment and all older ones are
//! gone, so are the entries it removed.

use crate::error::{Error, Result};
use crate::log::format::{self, RecordKind};
use crate::log::writer::WriterState;
use crate::log::{Counters, Shared};

/// Deletes the oldest segments that no stream needs any more.
pub(crate) fn collect(shared: &Shared, w: &mut WriterState) -> Result<()> {
    let current = w.segment.seq;
    let (boundary, checkpoints) = {
        let streams = shared.streams();
        let boundary = streams
            .oldest_needed_entry_segment()
            .unwrap_or(current)
            .min(current);
        let oldest = shared.segments().keys().next().copied().unwrap_or(current);
        if oldest >= boundary {
            return Ok(());
        }
        // Streams whose purge point or meta would vanish with the old
        // segments get a checkpoint in the newest one.
        let mut buf = Vec::new();
        for (id, s) in &streams.map {
            let stale_purge = s.purge_segment.is_some_and(|seg| seg < boundary);
            let stale_meta = s.meta.values().any(|m| m.segment < boundary);
            if stale_purge || stale_meta {
                let payload = format::encode_checkpoint(
                    s.meta
                        .iter()
                        .map(|(k, m)| (k.as_slice(), m.value.as_slice())),
                );
                format::encode_record(&mut buf, RecordKind::Checkpoint, *id, s.purged, &[&payload]);
            }
        }
        (boundary, buf)
    };
    if !checkpoints.is_empty() {
        w.write_records(shared, &checkpoints)?;
        tracing::debug!(boundary, "wrote checkpoints before deleting segments");
    }
    // Before anything is deleted, every record that made the old segments
    // dead must be durable: the purges and truncates of the group just
    // written (the syncer has not synced it yet — we run before `written`
    // is published) and the checkpoints above. Older segments were synced
    // when they were sealed, so syncing the newest covers all of it.
    // Without this, a power cut could keep the deletions and lose the purge
    // record, leaving a hole at the front of a stream.
    w.segment
        .file
        .sync_data()
        .map_err(|e| Error::io("fsync", &w.segment.path, e))?;
    let doomed: Vec<_> = {
        let mut segments = shared.segments_mut();
        let keys: Vec<u64> = segments.range(..boundary).map(|(k, _)| *k).collect();
        keys.into_iter()
            .filter_map(|k| segments.remove(&k))
            .collect()
    };
    for seg in &doomed {
        shared
            .fs
            .remove_file(&seg.path)
            .map_err(|e| Error::io("delete", &seg.path, e))?;
        Counters::add(&shared.stats.segments_deleted, 1);
    }
    if !doomed.is_empty() {
        shared
            .fs
            .sync_dir(&shared.dir)
            .map_err(|e| Error::io("fsync the directory", &shared.dir, e))?;
    }
    close_elsewhere(doomed);
    Ok(())
}

/// Lets go of deleted segments on a thread of their own. Closing the last
/// handle of a deleted segment is when the kernel frees its blocks (64 MiB,
/// preallocated), which took 24–52 ms under a sustained ingest — on the
/// appender's path, since collection runs on the writer: the write that
/// rolled a segment waited that long. Their names are gone
/// and the directory synced, so nothing about crash safety waits for the
/// close (a crash before it leaves an orphan inode that the file system's
/// recovery frees). A reader still holding a segment keeps it open as
/// before. If no thread can be started, they close here.
fn close_elsewhere(doomed: Vec<crate::log::segment::Segment>) {
    if doomed.is_empty() {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("missive-log-close".into())
        .spawn(move || drop(doomed));
}
