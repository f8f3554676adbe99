//! Residue: does any file of a data directory still hold some bytes?
//!
//! The proof behind erasure (an unsent message, an erased user): after
//! the node has purged its log past the writes that carried the bytes,
//! rolled the log so the segments holding them were deleted, and compacted
//! its tables so the older versions were dropped, a search of every file
//! must find nothing. "Every file" is meant literally — whatever lies
//! under the directory, known or not, is searched as raw bytes — and,
//! because both the log (`entry-lz4` records) and the tables (lz4 blocks)
//! store compressed bytes that a raw search cannot see through, log
//! records and table entries are also searched decoded.
//!
//! Read-only and lock-free like `inspect`: safe on a directory a running
//! node owns. A file deleted between listing and reading is simply gone
//! (that is what compaction and segment collection do); a file that does
//! not decode is reported as unreadable rather than silently skipped,
//! since a proof that skipped it would prove nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::log::format::RecordKind;

/// Where the bytes were found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The file.
    pub path: PathBuf,
    /// What held them: "raw bytes at offset N", "log record (stream S,
    /// index I)", "table entry (block B, key …)".
    pub place: String,
}

/// What a search covered and found.
#[derive(Debug, Clone, Default)]
pub struct Search {
    /// Files searched.
    pub files: u64,
    /// Their bytes on disk.
    pub bytes: u64,
    /// Log records decoded and searched.
    pub log_records: u64,
    /// Table entries (keys and values) decoded and searched.
    pub table_entries: u64,
    /// Every place the bytes were found.
    pub found: Vec<Finding>,
    /// Files that could not be decoded (searched raw only).
    pub unreadable: Vec<(PathBuf, String)>,
}

fn contains(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn is_gone(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
}

/// Searches every file under `dir` for `needle` (see the module docs).
pub fn search(dir: &Path, needle: &[u8]) -> Result<Search> {
    if needle.is_empty() {
        return Err(Error::InvalidArgument(
            "search for at least one byte".into(),
        ));
    }
    let mut out = Search::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(it) => it,
            Err(e) if is_gone(&e) && d != dir => continue,
            Err(e) => return Err(Error::io("list", &d, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list", &d, e))?;
            let path = entry.path();
            let ft = entry.file_type().map_err(|e| Error::io("stat", &path, e))?;
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                search_file(&path, needle, &mut out)?;
            }
        }
    }
    Ok(out)
}

fn search_file(path: &Path, needle: &[u8], out: &mut Search) -> Result<()> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if is_gone(&e) => return Ok(()),
        Err(e) => return Err(Error::io("read", path, e)),
    };
    out.files += 1;
    out.bytes += data.len() as u64;
    if let Some(at) = contains(&data, needle) {
        out.found.push(Finding {
            path: path.to_path_buf(),
            place: format!("raw bytes at offset {at}"),
        });
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let decoded = if let Some(seq) = crate::log::segment_seq(name) {
        search_segment(path, &data, seq, needle, out)
    } else if crate::lsm::table::parse_table_name(name).is_some() {
        search_table(path, needle, out)
    } else {
        Ok(())
    };
    if let Err(e) = decoded {
        out.unreadable.push((path.to_path_buf(), e.to_string()));
    }
    Ok(())
}

fn search_segment(
    path: &Path,
    data: &[u8],
    seq: u64,
    needle: &[u8],
    out: &mut Search,
) -> Result<()> {
    let mut records = 0;
    let mut found = Vec::new();
    // Judged as the newest segment: a running node's tail may be torn
    // mid-write, which is not damage.
    crate::log::scan_segment(path, data, seq, true, &mut |r, off| {
        records += 1;
        let payload = match r.kind {
            RecordKind::EntryLz4 => lz4_flex::decompress_size_prepended(r.payload)
                .map_err(|e| format!("record at {off}: lz4: {e}"))?,
            _ => r.payload.to_vec(),
        };
        if contains(&payload, needle).is_some() {
            found.push(Finding {
                path: path.to_path_buf(),
                place: format!("log record (stream {}, index {})", r.stream.0, r.index),
            });
        }
        Ok(())
    })?;
    out.log_records += records;
    out.found.extend(found);
    Ok(())
}

fn search_table(path: &Path, needle: &[u8], out: &mut Search) -> Result<()> {
    let cache = Arc::new(crate::lsm::cache::BlockCache::new(1 << 20));
    let id = crate::lsm::TableId(0);
    let table = crate::lsm::table::reader::Table::open(path, id, cache)?;
    for i in 0..table.index.len() {
        let block = table.block(i)?;
        for j in 0..block.len() {
            out.table_entries += 1;
            let key = block.key(j);
            let hit = contains(key, needle).is_some()
                || block
                    .value(j)
                    .is_some_and(|v| contains(v, needle).is_some());
            if hit {
                out.found.push(Finding {
                    path: path.to_path_buf(),
                    place: format!("table entry (block {i}, key {})", hex(key)),
                });
            }
        }
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use crate::lsm::{Db, DbOptions};

    #[test]
    fn finds_bytes_through_compression_and_not_once_they_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        // Compressible on purpose: a raw search cannot see it in an lz4
        // log record or table block.
        let secret = b"the secret the secret the secret the secret the secret".to_vec();
        let db = Db::open(dir.path(), DbOptions::default()).unwrap();
        let put = |v: &[u8]| {
            let mut b = crate::lsm::WriteBatch::new();
            b.put(
                crate::keys::message_key(crate::keys::ConversationId(1), crate::keys::Timestamp(1)),
                v,
            );
            db.write(&b).unwrap();
        };
        put(&secret);
        let s = search(dir.path(), &secret).unwrap();
        assert!(
            s.found.iter().any(|f| f.place.starts_with("log record")),
            "{s:?}"
        );
        db.flush().unwrap();
        let s = search(dir.path(), &secret).unwrap();
        assert!(
            s.found.iter().any(|f| f.place.starts_with("table entry")),
            "{s:?}"
        );
        assert!(s.unreadable.is_empty(), "{s:?}");
        // Overwritten, flushed (the log purged behind it), compacted (the
        // old version dropped) and the log rolled (its segment deleted):
        // nothing is left.
        put(b"gone");
        db.flush().unwrap();
        db.compact_full().unwrap();
        db.roll_log().unwrap();
        let s = search(dir.path(), &secret).unwrap();
        assert!(s.found.is_empty(), "{s:?}");
        assert!(s.files > 0 && s.table_entries > 0, "{s:?}");
        drop(db);
        assert!(search(dir.path(), b"").is_err());
    }
}
