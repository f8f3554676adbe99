//! The writer's tail of the log: the newest segment and the offset the next
//! record goes at, and the two things only the writer does there — append
//! whole records (splitting a group across segments at record boundaries)
//! and roll to a new segment, sealing and syncing the full one first so a
//! sealed segment is always durable. Whoever holds `Shared::writer` is the
//! writer for now (`commit` explains who that is and when); segment GC
//! (`gc`) runs under the same lock.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::log::ahead::{self, Ahead};
use crate::log::format::{
    self, peek_own_record, RecordKind, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use crate::log::segment::{self, Fill, Segment};
use crate::log::writeback::Hints;
use crate::log::{Counters, Shared, StreamId};

/// The writer's position: the newest segment and the offset to write at.
/// Whoever holds it (under `Shared::writer`) is the writer for now.
#[derive(Debug)]
pub(crate) struct WriterState {
    pub segment: Segment,
    pub offset: u64,
    /// The buffer swapped with the queue's at each drain.
    pub spare: Vec<u8>,
    /// Where in the segment writeback was last started
    /// ([`WRITEBACK_EVERY`]).
    writeback_from: u64,
    /// The writeback thread's queue (`log/writeback.rs`); `None` until the
    /// thread runs (recovery, or if it could not start): then the writer
    /// makes the calls itself.
    pub hints: Option<Hints>,
    /// The next segment, prepared on the writeback thread (`log/ahead.rs`).
    pub ahead: Ahead,
}

/// Bytes written to a segment between requests to the kernel to start
/// writing them back (`LogFile::start_writeback`). Without them a writer
/// that does not sync (`Db::write_with` unsynced, a bulk load) left up to a
/// whole segment dirty: the roll's fsync of the old segment then took
/// 20–70 ms on the appender's path, and the page cache's dirty limit
/// throttled the appender's writes by as much. With them the roll's fsync
/// finds little left to write.
const WRITEBACK_EVERY: u64 = 1 << 20;

impl WriterState {
    /// The writer's tail at `offset` in `segment`.
    pub fn at(segment: Segment, offset: u64) -> Self {
        WriterState {
            segment,
            offset,
            spare: Vec::new(),
            writeback_from: offset,
            hints: None,
            ahead: Ahead::default(),
        }
    }

    /// Writes encoded records (whole records, back to back) at the tail,
    /// rolling segments as needed, and applies them to the stream index.
    /// Returns whether a record that can free segments (purge, truncate) or
    /// a roll happened, so the caller runs segment GC.
    pub fn write_records(&mut self, shared: &Shared, buf: &[u8]) -> Result<bool> {
        // Room for the Seal record that closes a full segment.
        let capacity = shared
            .opts
            .segment_size
            .saturating_sub(RECORD_HEADER_LEN as u64);
        let mut gc_hint = false;
        let mut pos = 0;
        while pos < buf.len() {
            // Take whole records while they fit; an empty segment takes at
            // least one record, however large.
            let mut end = pos;
            while let Some(rec) = buf.get(end..).and_then(peek_own_record) {
                let len = rec.total_len();
                let fits = self.offset + (end - pos + len) as u64 <= capacity
                    || (end == pos && self.offset == SEGMENT_HEADER_LEN as u64);
                if !fits {
                    break;
                }
                end += len;
            }
            if end == pos {
                self.roll(shared)?;
                gc_hint = true;
                continue;
            }
            let chunk = &buf[pos..end];
            self.segment
                .file
                .write_at(chunk, self.offset)
                .map_err(|e| Error::io("write", &self.segment.path, e))?;
            Counters::add(&shared.stats.bytes_written, chunk.len() as u64);
            let end_offset = self.offset + chunk.len() as u64;
            if end_offset - self.writeback_from >= WRITEBACK_EVERY {
                let (from, len) = (self.writeback_from, end_offset - self.writeback_from);
                match &self.hints {
                    Some(hints) => hints.send(&self.segment.file, from, len),
                    // A hint: if it fails, the next sync writes the bytes
                    // back all the same (and reports any real I/O error).
                    None => {
                        let _ = self.segment.file.start_writeback(from, len);
                    }
                }
                self.writeback_from = end_offset;
            }
            let mut streams = shared.streams_mut();
            let mut at = 0;
            while let Some(rec) = chunk.get(at..).and_then(peek_own_record) {
                gc_hint |= matches!(
                    rec.kind,
                    RecordKind::Purge | RecordKind::Truncate | RecordKind::Reset
                );
                streams
                    .apply(&rec, self.segment.seq, self.offset + at as u64)
                    .map_err(|reason| {
                        Error::corruption(&self.segment.path, self.offset + at as u64, reason)
                    })?;
                at += rec.total_len();
            }
            drop(streams);
            self.offset += chunk.len() as u64;
            pos = end;
            self.look_ahead(shared);
        }
        Ok(gc_hint)
    }

    /// Asks for the next segment once this one is half full
    /// (`log/ahead.rs`).
    fn look_ahead(&mut self, shared: &Shared) {
        let Some(hints) = &self.hints else {
            return;
        };
        if self.offset >= shared.opts.segment_size / 2 {
            let seq = self.segment.seq + 1;
            self.ahead.request(hints, seq, || ahead::Job {
                fs: Arc::clone(&shared.fs),
                dir: shared.dir.clone(),
                seq,
                size: shared.opts.segment_size,
                fill: shared.opts.ahead_fill(),
                failures: Arc::clone(&shared.stats.segment_preparations_failed),
            });
        }
    }

    /// Seals the current segment, fsyncs it, and starts the next one.
    pub(crate) fn roll(&mut self, shared: &Shared) -> Result<()> {
        let mut seal = Vec::with_capacity(RECORD_HEADER_LEN);
        format::encode_record(&mut seal, RecordKind::Seal, StreamId(0), self.offset, &[]);
        let old = &self.segment;
        old.file
            .write_and_sync(&seal, self.offset)
            .map_err(|e| Error::io("seal", &old.path, e))?;
        Counters::add(&shared.stats.bytes_written, seal.len() as u64);
        let fs = shared.fs.as_ref();
        let next = match self.ahead.take(fs, old.seq + 1) {
            Some(prepared) => {
                let seg = segment::install(fs, &shared.dir, prepared)?;
                Counters::add(&shared.stats.segments_prepared, 1);
                seg
            }
            // Not prepared in time (or no helper thread): made here, only
            // reserved — zeros would hold the writer up for a whole segment.
            None => {
                let fill = shared.opts.ahead_fill().min(Fill::Reserve);
                segment::create(fs, &shared.dir, old.seq + 1, shared.opts.segment_size, fill)?
            }
        };
        Counters::add(&shared.stats.segments_created, 1);
        shared.segments_mut().insert(next.seq, next.clone());
        shared.sync_target().switch_to(next.clone());
        self.segment = next;
        self.offset = SEGMENT_HEADER_LEN as u64;
        self.writeback_from = self.offset;
        Ok(())
    }
}
