//! Segment files: names, crash-safe creation, and the handle readers share.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::io::{FileSystem, LogFile};
use crate::log::format::{encode_segment_header, SEGMENT_HEADER_LEN};

/// An open segment file.
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    pub seq: u64,
    pub path: PathBuf,
    pub file: Arc<dyn LogFile>,
}

/// `00000000000000000042.log`: 20 digits so lexical order is numeric order.
pub(crate) fn file_name(seq: u64) -> String {
    format!("{seq:020}.log")
}

/// The sequence number of a segment file name, if it is one.
pub(crate) fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// How a new segment's bytes past its header are set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Fill {
    /// Nothing: the file grows as records are written.
    None,
    /// Reserved (`fallocate`): the blocks exist but are *unwritten*, so the
    /// first fdatasync after writing into each one must also commit the
    /// metadata that marks it written.
    Reserve,
    /// Reserved and written with zeros: an fdatasync after a write then
    /// flushes only data. Writes the segment's size once more.
    Zeros,
}

/// A segment written and synced under a temporary name, not yet in place
/// (recovery deletes it if a crash comes first: the name ends in `.tmp`).
#[derive(Debug)]
pub(crate) struct Prepared {
    pub seq: u64,
    pub tmp: PathBuf,
    pub file: Arc<dyn LogFile>,
}

/// Creates segment `seq` crash-safely: the header goes into a temp file,
/// its blocks are reserved, it is fsynced, renamed into place and the
/// directory fsynced. After a crash the segment either does not exist or
/// exists whole with a valid header; recovery never sees half a header.
pub(crate) fn create(
    fs: &dyn FileSystem,
    dir: &Path,
    seq: u64,
    size: u64,
    fill: Fill,
) -> Result<Segment> {
    let tmp = dir.join(format!("{}.tmp", file_name(seq)));
    let prepared = prepare(fs, &tmp, seq, size, fill)?;
    install(fs, dir, prepared)
}

/// The first half of [`create`]: the temp file `tmp` with its header and
/// `fill`, synced. Nothing a reader or recovery would take for a segment.
pub(crate) fn prepare(
    fs: &dyn FileSystem,
    tmp: &Path,
    seq: u64,
    size: u64,
    fill: Fill,
) -> Result<Prepared> {
    let io = |op: &'static str| {
        let p = tmp.to_path_buf();
        move |e| Error::io(op, p, e)
    };
    let file = fs.create(tmp).map_err(io("create"))?;
    file.write_at(&encode_segment_header(seq), 0)
        .map_err(io("write the header of"))?;
    if fill != Fill::None {
        file.allocate(size).map_err(io("preallocate"))?;
    }
    if fill == Fill::Zeros {
        // A piece at a time, each synced, so the device never holds much
        // of these writes ahead of the live segment's fdatasync. (Even so
        // the live segment's syncs slow down while a segment is zeroed:
        // `LogOptions::zero_fill` says by how much.)
        let zeros = vec![0u8; ZERO_PIECE];
        let mut at = SEGMENT_HEADER_LEN as u64;
        while at < size {
            let n = (size - at).min(ZERO_PIECE as u64) as usize;
            file.write_at(&zeros[..n], at)
                .map_err(io("write zeros into"))?;
            file.sync_data().map_err(io("fsync"))?;
            at += n as u64;
        }
    }
    file.sync_all().map_err(io("fsync"))?;
    Ok(Prepared {
        seq,
        tmp: tmp.to_path_buf(),
        file,
    })
}

/// Bytes of zeros written (and synced) per call by [`Fill::Zeros`]: 1 MiB
/// kept the live segment's syncs at ~1 ms while zeroing, 8 MiB at ~5 ms.
const ZERO_PIECE: usize = 1 << 20;

/// The second half of [`create`]: renames `prepared` into place and
/// fsyncs the directory.
pub(crate) fn install(fs: &dyn FileSystem, dir: &Path, prepared: Prepared) -> Result<Segment> {
    let path = dir.join(file_name(prepared.seq));
    fs.rename(&prepared.tmp, &path)
        .map_err(|e| Error::io("rename into place", &prepared.tmp, e))?;
    fs.sync_dir(dir)
        .map_err(|e| Error::io("fsync the directory", dir, e))?;
    Ok(Segment {
        seq: prepared.seq,
        path,
        file: prepared.file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(file_name(42), "00000000000000000042.log");
        assert_eq!(parse_file_name(&file_name(42)), Some(42));
        assert_eq!(parse_file_name(&file_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_file_name("42.log"), None);
        assert_eq!(parse_file_name("00000000000000000042.log.tmp"), None);
    }
}
