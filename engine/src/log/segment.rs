//! Segment files: names, crash-safe creation, and the handle readers share.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::io::{FileSystem, LogFile};
use crate::log::format::encode_segment_header;

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

/// Creates segment `seq` crash-safely: the header goes into a temp file,
/// its blocks are reserved, it is fsynced, renamed into place and the
/// directory fsynced. After a crash the segment either does not exist or
/// exists whole with a valid header; recovery never sees half a header.
pub(crate) fn create(
    fs: &dyn FileSystem,
    dir: &Path,
    seq: u64,
    preallocate: Option<u64>,
) -> Result<Segment> {
    let path = dir.join(file_name(seq));
    let tmp = dir.join(format!("{}.tmp", file_name(seq)));
    let io = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |e| Error::io(op, p, e)
    };
    let file = fs.create(&tmp).map_err(io("create", &tmp))?;
    file.write_at(&encode_segment_header(seq), 0)
        .map_err(io("write the header of", &tmp))?;
    if let Some(len) = preallocate {
        file.allocate(len).map_err(io("preallocate", &tmp))?;
    }
    file.sync_all().map_err(io("fsync", &tmp))?;
    fs.rename(&tmp, &path)
        .map_err(io("rename into place", &tmp))?;
    fs.sync_dir(dir).map_err(io("fsync the directory", dir))?;
    Ok(Segment { seq, path, file })
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
