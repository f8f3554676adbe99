//! Opening a log: scan every segment, rebuild every stream, cut a torn tail.
//!
//! # What recovery may and may not forgive
//!
//! Only the newest segment can end in a partial write: every older one was
//! sealed and fsynced before the next was created (see `commit.rs`), so any
//! damage in an older segment is damage, reported as [`Error::Corruption`]
//! with the file and offset, never skipped.
//!
//! In the newest segment, the scan stops at the first offset that is not an
//! intact record. If nothing intact follows it anywhere in the file, it is
//! the torn final write of a crash: its bytes were never acknowledged (an
//! acknowledgment needs an fdatasync, and the sync covers a prefix of the
//! file), so they are zeroed, fsynced and reported in
//! [`RecoveryReport::torn_tail`]. If an intact record *does* follow, the bad
//! bytes sit in the middle of acknowledged data: that is corruption, and we
//! stop rather than silently drop what came before the intact record.
//!
//! (A power cut can in principle persist a later page of an unsynced write
//! but not an earlier one; that shows up as "intact record follows" and is
//! reported as corruption — the safe answer, since we cannot tell it from a
//! damaged sector in acknowledged data.)
//!
//! After the scan every stream must be dense from its purge point: its first
//! surviving entry is `purged + 1`. Segments are deleted oldest-first and
//! only after their streams' purge points were checkpointed into a newer
//! segment, so a gap means a segment file was lost.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::FileSystem;
use crate::log::format::{
    check_segment_header, decode_record, intact_record_after, Decoded, HeaderError, RecordKind,
    SEGMENT_HEADER_LEN, SEGMENT_VERSION,
};
use crate::log::segment::{self, Fill, Segment};
use crate::log::stream::Streams;
use crate::log::writer::WriterState;
use crate::log::LogOptions;

/// The name of the lock file inside a log directory.
pub const LOCK_FILE: &str = "LOCK";

/// What recovery found.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Segment files scanned.
    pub segments: usize,
    /// Records replayed.
    pub records: u64,
    /// Streams with state after replay.
    pub streams: usize,
    /// The torn final write that was cut off, if there was one.
    pub torn_tail: Option<TornTail>,
    /// Leftover temporary files (an interrupted segment creation) removed.
    pub removed_temp_files: Vec<String>,
}

/// A torn final write found and discarded by recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The newest segment.
    pub file: PathBuf,
    /// Where the intact records end.
    pub offset: u64,
    /// How many bytes after it were zeroed.
    pub discarded_bytes: u64,
    /// What was found there.
    pub reason: String,
}

/// Everything `Log::open` needs to start.
pub(crate) struct Recovered {
    pub streams: Streams,
    pub segments: BTreeMap<u64, Segment>,
    pub writer: WriterState,
    pub report: RecoveryReport,
    pub lock: Box<dyn Send + Sync>,
}

/// How a segment's scan ended.
#[derive(Debug, Clone)]
pub(crate) struct SegmentScan {
    /// Offset just past the last intact record (the seal included).
    pub end: usize,
    /// Whether the segment ends with a seal record.
    pub sealed: bool,
    /// For the newest segment: a torn final write after `end`.
    pub torn: Option<Torn>,
}

/// A torn final write: what was found, and where its bytes end.
#[derive(Debug, Clone)]
pub(crate) struct Torn {
    pub reason: &'static str,
    pub garbage_end: usize,
}

/// Scans one segment's bytes: checks the header, hands every record but
/// the seal to `on_record` (whose `Err` is corruption at that record), and
/// applies the rules of the module docs to how the segment ends. Shared by
/// recovery and by read-only inspection, so both judge a log the same way.
pub(crate) fn scan_segment(
    path: &Path,
    data: &[u8],
    seq: u64,
    is_newest: bool,
    on_record: &mut dyn FnMut(&crate::log::format::RecordRef<'_>, usize) -> Result<(), String>,
) -> Result<SegmentScan> {
    match check_segment_header(data, seq) {
        Ok(()) => {}
        Err(HeaderError::Version(found)) => {
            return Err(Error::UnsupportedVersion {
                file: path.to_path_buf(),
                found: u32::from(found),
                supported: u32::from(SEGMENT_VERSION),
            })
        }
        Err(HeaderError::Damaged(reason)) => return Err(Error::corruption(path, 0, reason)),
        Err(HeaderError::WrongSeq(found)) => {
            return Err(Error::corruption(
                path,
                12,
                format!("header names segment {found}, file name says {seq}"),
            ))
        }
    }
    let mut offset = SEGMENT_HEADER_LEN;
    let mut sealed = false;
    let mut stopped: Option<&'static str> = None;
    loop {
        match decode_record(data, offset) {
            Decoded::Record(rec) if rec.kind == RecordKind::Seal => {
                if rec.index != offset as u64 {
                    return Err(Error::corruption(
                        path,
                        offset as u64,
                        "seal record names a different offset",
                    ));
                }
                sealed = true;
                offset += rec.total_len();
                break;
            }
            Decoded::Record(rec) => {
                on_record(&rec, offset)
                    .map_err(|reason| Error::corruption(path, offset as u64, reason))?;
                offset += rec.total_len();
            }
            Decoded::End => break,
            Decoded::Incomplete => {
                stopped = Some("record runs past the end of the file");
                break;
            }
            Decoded::Bad(reason) => {
                stopped = Some(reason);
                break;
            }
        }
    }
    if !is_newest && !sealed {
        return Err(Error::corruption(
            path,
            offset as u64,
            stopped.unwrap_or("segment ends without a seal record although a newer segment exists"),
        ));
    }
    let mut torn = None;
    if is_newest && !sealed {
        let garbage_end = last_nonzero(data).map_or(offset, |p| (p + 1).max(offset));
        if stopped.is_some() || garbage_end > offset {
            let reason = stopped.unwrap_or("non-zero bytes after the last record");
            if intact_record_after(data, offset) {
                return Err(Error::corruption(
                    path,
                    offset as u64,
                    format!(
                        "{reason}, and intact records follow it: damage inside the log, not a torn final write"
                    ),
                ));
            }
            torn = Some(Torn {
                reason,
                garbage_end,
            });
        }
    }
    Ok(SegmentScan {
        end: offset,
        sealed,
        torn,
    })
}

/// Position of the last non-zero byte. Walks the (usually preallocated,
/// mostly zero) tail eight bytes at a time: it is the one full pass over a
/// segment recovery makes beyond decoding its records.
fn last_nonzero(data: &[u8]) -> Option<usize> {
    let words = data.len() / 8;
    let tail = &data[words * 8..];
    if let Some(p) = tail.iter().rposition(|&b| b != 0) {
        return Some(words * 8 + p);
    }
    let w = data[..words * 8]
        .chunks_exact(8)
        .rposition(|c| c.iter().fold(0u8, |acc, &b| acc | b) != 0)?;
    let base = w * 8;
    data[base..base + 8]
        .iter()
        .rposition(|&b| b != 0)
        .map(|p| base + p)
}

pub(crate) fn recover(dir: &Path, fs: &dyn FileSystem, opts: &LogOptions) -> Result<Recovered> {
    fs.create_dir_all(dir)
        .map_err(|e| Error::io("create the log directory", dir, e))?;
    let lock_path = dir.join(LOCK_FILE);
    let lock = fs.lock(&lock_path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            Error::Locked {
                path: lock_path.clone(),
            }
        } else {
            Error::io("lock", &lock_path, e)
        }
    })?;
    let mut report = RecoveryReport::default();

    let names = fs.list_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    let mut seqs = Vec::new();
    for name in names {
        if name.ends_with(".tmp") {
            let p = dir.join(&name);
            fs.remove_file(&p)
                .map_err(|e| Error::io("remove the leftover", &p, e))?;
            report.removed_temp_files.push(name);
        } else if let Some(seq) = segment::parse_file_name(&name) {
            seqs.push(seq);
        }
    }
    if !report.removed_temp_files.is_empty() {
        fs.sync_dir(dir)
            .map_err(|e| Error::io("fsync the directory", dir, e))?;
    }
    seqs.sort_unstable();
    for pair in seqs.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(Error::corruption(
                dir.join(segment::file_name(pair[0] + 1)),
                0,
                format!(
                    "segment file is missing: segments {} and {} exist, the ones between do not",
                    pair[0], pair[1]
                ),
            ));
        }
    }

    let mut streams = Streams::default();
    let mut segments = BTreeMap::new();
    let mut tail: Option<(Segment, u64, bool)> = None; // (newest, end offset, sealed)
    for (i, &seq) in seqs.iter().enumerate() {
        let is_newest = i + 1 == seqs.len();
        let path = dir.join(segment::file_name(seq));
        let file = fs.open(&path).map_err(|e| Error::io("open", &path, e))?;
        let len = file.size().map_err(|e| Error::io("stat", &path, e))?;
        let mut data = vec![0u8; len as usize];
        file.read_at(&mut data, 0)
            .map_err(|e| Error::io("read", &path, e))?;
        report.segments += 1;
        let scan = scan_segment(&path, &data, seq, is_newest, &mut |rec, offset| {
            streams.apply(rec, seq, offset as u64)?;
            report.records += 1;
            Ok(())
        })?;
        let segment = Segment {
            seq,
            path: path.clone(),
            file,
        };
        if !is_newest {
            segments.insert(seq, segment);
            continue;
        }
        let offset = scan.end;
        if let Some(torn) = &scan.torn {
            let zeros = vec![0u8; torn.garbage_end - offset];
            segment
                .file
                .write_at(&zeros, offset as u64)
                .and_then(|()| segment.file.sync_data())
                .map_err(|e| Error::io("zero the torn tail of", &path, e))?;
            tracing::warn!(
                file = %path.display(),
                offset,
                bytes = zeros.len(),
                reason = torn.reason,
                "cut a torn final write from the log"
            );
            report.torn_tail = Some(TornTail {
                file: path.clone(),
                offset: offset as u64,
                discarded_bytes: zeros.len() as u64,
                reason: torn.reason.to_owned(),
            });
        }
        let sealed = scan.sealed;
        segments.insert(seq, segment.clone());
        tail = Some((segment, offset as u64, sealed));
    }

    if let Some((stream, loc, from, to)) = streams.find_hole() {
        return Err(Error::corruption(
            dir.join(segment::file_name(loc.segment)),
            loc.offset,
            format!(
                "stream {} is missing entries {from}..={to} (a segment file was lost or damaged)",
                stream.0
            ),
        ));
    }
    streams.forget_blank();
    report.streams = streams.map.len();

    // Only reserved, never zero-filled, when reopening: that would slow
    // every open by a segment's worth of writes. A log created here with
    // `zero_fill` pays it once, so its first segment is like the rest
    // (`ahead.rs`).
    let fill = opts.ahead_fill().min(Fill::Reserve);
    let size = opts.segment_size;
    let writer = match tail {
        Some((seg, offset, false)) => WriterState::at(seg, offset),
        Some((seg, _, true)) => {
            let next = segment::create(fs, dir, seg.seq + 1, size, fill)?;
            segments.insert(next.seq, next.clone());
            WriterState::at(next, SEGMENT_HEADER_LEN as u64)
        }
        None => {
            let first = segment::create(fs, dir, 1, size, opts.ahead_fill())?;
            segments.insert(first.seq, first.clone());
            WriterState::at(first, SEGMENT_HEADER_LEN as u64)
        }
    };
    Ok(Recovered {
        streams,
        segments,
        writer,
        report,
        lock,
    })
}

#[cfg(test)]
mod tests {
    use super::last_nonzero;

    #[test]
    fn last_nonzero_finds_every_position() {
        for len in 0..40 {
            assert_eq!(last_nonzero(&vec![0u8; len]), None);
            for at in 0..len {
                let mut v = vec![0u8; len];
                v[at] = 1;
                if at > 0 {
                    v[0] = 7;
                }
                assert_eq!(last_nonzero(&v), Some(at), "len {len} at {at}");
            }
        }
    }
}
