//! Read-only inspection of a data directory, for operators and tools
//! (`missivectl`): what the log segments, tables and manifest hold, whether
//! every checksum holds, and the shape of the tree.
//!
//! Nothing here takes a lock, repairs or writes anything: it is safe on a
//! directory a running node owns (it reads what is on disk at that moment)
//! and on a copy. The log is judged by the same scanner recovery uses, so a
//! torn tail is reported, not cut.
//!
//! Directory layouts understood: a `Db` directory (`log/` and `lsm/`), a log
//! directory (segment files), or an LSM directory (`CURRENT`, `tables/`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::log::format::RecordKind;
use crate::lsm::version::{FileMeta, LEVELS};

/// Where the parts of a data directory are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The log's directory, if there is one.
    pub log: Option<PathBuf>,
    /// The LSM's directory, if there is one.
    pub lsm: Option<PathBuf>,
}

/// Finds the log and the LSM in `dir`.
pub fn layout(dir: &Path) -> Result<Layout> {
    if !dir.is_dir() {
        return Err(Error::io(
            "open the data directory",
            dir,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    let has_segments = |d: &Path| {
        std::fs::read_dir(d).is_ok_and(|mut it| {
            it.any(|e| {
                e.ok()
                    .and_then(|e| e.file_name().to_str().and_then(crate::log::segment_seq))
                    .is_some()
            })
        })
    };
    let log = [dir.join("log"), dir.to_path_buf()]
        .into_iter()
        .find(|d| has_segments(d));
    let lsm = [dir.join("lsm"), dir.to_path_buf()]
        .into_iter()
        .find(|d| d.join("CURRENT").is_file());
    Ok(Layout { log, lsm })
}

/// One record of a log segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecordInfo {
    /// Byte offset in the segment.
    pub offset: u64,
    /// Record kind ("entry", "entry-lz4", "meta", "truncate", "purge", "checkpoint").
    pub kind: &'static str,
    /// Stream.
    pub stream: u64,
    /// Index field.
    pub index: u64,
    /// Header plus payload bytes.
    pub len: u64,
}

/// One log segment.
#[derive(Debug, Clone)]
pub struct LogSegmentDump {
    /// The file.
    pub path: PathBuf,
    /// Its sequence number.
    pub seq: u64,
    /// Its records (the seal excluded).
    pub records: Vec<LogRecordInfo>,
    /// Whether it ends with a seal record.
    pub sealed: bool,
    /// Offset just past the last intact record.
    pub end: u64,
    /// A torn final write (newest segment only): offset and reason.
    pub torn: Option<(u64, String)>,
}

fn kind_name(k: RecordKind) -> &'static str {
    match k {
        RecordKind::Entry => "entry",
        RecordKind::EntryLz4 => "entry-lz4",
        RecordKind::Meta => "meta",
        RecordKind::Truncate => "truncate",
        RecordKind::Purge => "purge",
        RecordKind::Checkpoint => "checkpoint",
        RecordKind::Seal => "seal",
        RecordKind::Reset => "reset",
    }
}

/// Every segment of the log in `log_dir`, judged as recovery would judge
/// it (corruption is an error naming file and offset), read-only.
pub fn dump_log(log_dir: &Path) -> Result<Vec<LogSegmentDump>> {
    let mut seqs: Vec<u64> = std::fs::read_dir(log_dir)
        .map_err(|e| Error::io("list", log_dir, e))?
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()
                .and_then(crate::log::segment_seq)
        })
        .collect();
    seqs.sort_unstable();
    let mut out = Vec::new();
    for (i, &seq) in seqs.iter().enumerate() {
        let path = log_dir.join(crate::log::segment_file_name(seq));
        let data = std::fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
        let mut records = Vec::new();
        let scan =
            crate::log::scan_segment(&path, &data, seq, i + 1 == seqs.len(), &mut |r, off| {
                records.push(LogRecordInfo {
                    offset: off as u64,
                    kind: kind_name(r.kind),
                    stream: r.stream.0,
                    index: r.index,
                    len: r.total_len() as u64,
                });
                Ok(())
            })?;
        out.push(LogSegmentDump {
            path,
            seq,
            records,
            sealed: scan.sealed,
            end: scan.end as u64,
            torn: scan.torn.map(|t| (scan.end as u64, t.reason.to_owned())),
        });
    }
    Ok(out)
}

/// One data block of a table.
#[derive(Debug, Clone)]
pub struct BlockInfo {
    /// Offset in the file.
    pub offset: u64,
    /// Bytes on disk (trailer included).
    pub stored_len: u64,
    /// Uncompressed payload bytes.
    pub raw_len: u64,
    /// Whether it is stored compressed.
    pub compressed: bool,
    /// Its codec: "none", "lz4", "lz4+dictionary" (LZ4 against the
    /// table's dictionary) or "zstd".
    pub codec: &'static str,
    /// Versions it holds.
    pub entries: usize,
    /// Tombstones among them.
    pub tombstones: usize,
    /// First key.
    pub first_key: Vec<u8>,
    /// Last key.
    pub last_key: Vec<u8>,
}

/// What a table holds.
#[derive(Debug, Clone)]
pub struct TableDump {
    /// The file.
    pub path: PathBuf,
    /// File size.
    pub size: u64,
    /// Versions (footer count).
    pub entries: u64,
    /// Table format version (1: interleaved blocks, 2: columnar, 3: with
    /// blob references, 4: with a dictionary).
    pub format_version: u16,
    /// Bytes of its dictionary (0: none).
    pub dictionary_bytes: u64,
    /// Its data blocks.
    pub blocks: Vec<BlockInfo>,
    /// Bloom filter size in bytes and its probe count.
    pub bloom_bytes: u64,
    /// Probes per lookup.
    pub bloom_probes: u8,
    /// Smallest and largest key (empty for an empty table).
    pub smallest: Vec<u8>,
    /// Largest key.
    pub largest: Vec<u8>,
    /// Uncompressed bytes of all blocks ÷ their bytes on disk.
    pub compression_ratio: f64,
}

/// Opens a table file and describes it, checking every block.
pub fn dump_table(path: &Path) -> Result<TableDump> {
    let id = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(crate::lsm::table::parse_table_name)
        .unwrap_or(crate::lsm::TableId(0));
    let cache = Arc::new(crate::lsm::cache::BlockCache::new(1 << 20));
    let table = crate::lsm::table::reader::Table::open(path, id, cache)?;
    let mut blocks = Vec::new();
    let (mut raw_total, mut stored_total) = (0u64, 0u64);
    for (i, e) in table.index.iter().enumerate() {
        let stored = &table.map[e.offset as usize..(e.offset + u64::from(e.len)) as usize];
        use crate::lsm::table::codec;
        let kind = stored.get(stored.len().saturating_sub(5)).copied();
        let codec = match kind {
            Some(codec::LZ4) => "lz4",
            Some(codec::ZSTD) => "zstd",
            Some(codec::LZ4_DICT) => "lz4+dictionary",
            _ => "none",
        };
        let compressed = codec != "none";
        let block = table.block(i)?;
        // Both compressed forms store the uncompressed size first.
        let raw_len = if compressed {
            stored.get(..4).map_or(0, |b| {
                u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            })
        } else {
            stored.len().saturating_sub(5) as u64
        };
        raw_total += raw_len;
        stored_total += u64::from(e.len);
        let n = block.len();
        blocks.push(BlockInfo {
            offset: e.offset,
            stored_len: u64::from(e.len),
            raw_len,
            compressed,
            codec,
            entries: n,
            tombstones: (0..n).filter(|&j| block.value(j).is_none()).count(),
            first_key: if n > 0 {
                block.key(0).to_vec()
            } else {
                Vec::new()
            },
            last_key: if n > 0 {
                block.key(n - 1).to_vec()
            } else {
                Vec::new()
            },
        });
    }
    let filter = &table.map[table.filter.clone()];
    Ok(TableDump {
        path: path.to_path_buf(),
        size: table.map.len() as u64,
        entries: table.entries,
        smallest: blocks
            .first()
            .map(|b| b.first_key.clone())
            .unwrap_or_default(),
        largest: blocks
            .last()
            .map(|b| b.last_key.clone())
            .unwrap_or_default(),
        blocks,
        format_version: table.version,
        // The dictionary runs from the file's start to the first block.
        dictionary_bytes: if table.has_dictionary() {
            table
                .index
                .first()
                .map_or(0, |e| e.offset.saturating_sub(4))
        } else {
            0
        },
        bloom_bytes: filter.len().saturating_sub(1) as u64,
        bloom_probes: filter.last().copied().unwrap_or(0),
        compression_ratio: if stored_total == 0 {
            1.0
        } else {
            raw_total as f64 / stored_total as f64
        },
    })
}

/// One manifest edit, summarized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditInfo {
    /// Tables added: (level, id).
    pub added: Vec<(u8, u64)>,
    /// Tables removed: (level, id).
    pub removed: Vec<(u8, u64)>,
    /// Flushed positions recorded: (stream, log index).
    pub flushed: Vec<(u64, u64)>,
    /// Last sequence number recorded.
    pub last_seq: Option<u64>,
}

/// The live manifest.
#[derive(Debug, Clone)]
pub struct ManifestDump {
    /// Its file.
    pub path: PathBuf,
    /// Its number.
    pub number: u64,
    /// Its edits, in order.
    pub edits: Vec<EditInfo>,
    /// The live tables they add up to.
    pub files: Vec<FileMeta>,
    /// Next table id.
    pub next_table_id: u64,
    /// Last sequence number.
    pub last_seq: u64,
    /// Flushed position per stream.
    pub flushed: Vec<(u64, u64)>,
}

/// Reads the manifest of the LSM in `lsm_dir`.
pub fn dump_manifest(lsm_dir: &Path) -> Result<ManifestDump> {
    let (number, path, edits) = crate::lsm::manifest::load_edits(lsm_dir)?.ok_or_else(|| {
        Error::io(
            "read the manifest of",
            lsm_dir,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        )
    })?;
    let mut state = crate::lsm::manifest::ManifestState::default();
    for e in &edits {
        state.apply(e);
    }
    let mut flushed: Vec<(u64, u64)> = state.flushed.iter().map(|(s, i)| (s.0, *i)).collect();
    flushed.sort_unstable();
    Ok(ManifestDump {
        path,
        number,
        edits: edits
            .iter()
            .map(|e| EditInfo {
                added: e.added.iter().map(|f| (f.level, f.id.0)).collect(),
                removed: e.removed.iter().map(|(l, id)| (*l, id.0)).collect(),
                flushed: e.flushed.iter().map(|(s, i)| (s.0, *i)).collect(),
                last_seq: e.last_seq,
            })
            .collect(),
        files: state.files.values().cloned().collect(),
        next_table_id: state.next_table_id,
        last_seq: state.last_seq,
        flushed,
    })
}

/// What `verify` checked.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Log segments scanned.
    pub log_segments: usize,
    /// Log records checked.
    pub log_records: u64,
    /// A torn final write in the log (recovery will cut it): file, offset, reason.
    pub torn_tail: Option<(PathBuf, u64, String)>,
    /// Tables checked.
    pub tables: usize,
    /// Versions in them.
    pub table_entries: u64,
    /// Blob files the tables reference, checked record by record.
    pub blob_files: usize,
    /// Values in them.
    pub blob_values: u64,
}

/// Walks every checksum of every live file in `dir`: every log record,
/// the manifest, every block of every table it names. The first damage is
/// an `Error::Corruption` naming file and offset.
pub fn verify(dir: &Path) -> Result<VerifyReport> {
    let layout = layout(dir)?;
    let mut r = VerifyReport::default();
    if let Some(log) = &layout.log {
        for seg in dump_log(log)? {
            r.log_segments += 1;
            r.log_records += seg.records.len() as u64;
            if let Some((off, reason)) = seg.torn {
                r.torn_tail = Some((seg.path.clone(), off, reason));
            }
        }
    }
    if let Some(lsm) = &layout.lsm {
        let m = dump_manifest(lsm)?;
        let cache = Arc::new(crate::lsm::cache::BlockCache::new(1 << 20));
        let blobs = crate::lsm::blob::Blobs::new(&lsm.join("tables"));
        let mut checked = std::collections::BTreeSet::new();
        for f in &m.files {
            let path = crate::lsm::table::table_path(&lsm.join("tables"), f.id);
            if !path.exists() {
                return Err(Error::corruption(
                    &path,
                    0,
                    "table named by the manifest is missing",
                ));
            }
            // Opening with its blob files fails on one that is missing.
            let t = crate::lsm::table::reader::Table::open_with_blobs(
                &path,
                f.id,
                Arc::clone(&cache),
                &blobs,
            )?;
            r.table_entries += t.verify()?;
            r.tables += 1;
            for (id, _) in &t.blob_list {
                if checked.insert(*id) {
                    r.blob_values += blobs.get(*id)?.verify()?;
                    r.blob_files += 1;
                }
            }
        }
    }
    Ok(r)
}

/// Files and bytes of one level.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LevelStats {
    /// Tables.
    pub files: usize,
    /// Bytes.
    pub bytes: u64,
    /// Versions.
    pub entries: u64,
}

/// The shape of a data directory.
#[derive(Debug, Clone, Default)]
pub struct DirStats {
    /// Log segments.
    pub log_segments: usize,
    /// Log bytes on disk (preallocated space included, and a segment made
    /// ahead of the roll that is not one yet).
    pub log_bytes: u64,
    /// Per level.
    pub levels: Vec<LevelStats>,
    /// All table bytes.
    pub table_bytes: u64,
    /// All table bytes ÷ the deepest level's bytes.
    pub space_amplification: f64,
    /// Tables a point read may probe: level-0 tables + non-empty deeper levels.
    pub read_amplification: usize,
}

/// Counts files and bytes per level from the manifest, and the log's size.
pub fn stats(dir: &Path) -> Result<DirStats> {
    let layout = layout(dir)?;
    let mut s = DirStats {
        levels: vec![LevelStats::default(); LEVELS],
        ..DirStats::default()
    };
    if let Some(log) = &layout.log {
        for e in std::fs::read_dir(log).map_err(|e| Error::io("list", log, e))? {
            let e = e.map_err(|e| Error::io("list", log, e))?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            // A segment, or the next one made ahead of the roll
            // (`NNN.log.ahead.tmp`, up to a segment of reserved disk):
            // both are the log's bytes on disk, only the first a segment.
            let ahead = name
                .strip_suffix(".ahead.tmp")
                .and_then(crate::log::segment_seq)
                .is_some();
            let segment = crate::log::segment_seq(name).is_some();
            if segment || ahead {
                s.log_segments += usize::from(segment);
                s.log_bytes += e
                    .metadata()
                    .map_err(|err| Error::io("stat", e.path(), err))?
                    .len();
            }
        }
    }
    if let Some(lsm) = &layout.lsm {
        for f in dump_manifest(lsm)?.files {
            let l = &mut s.levels[usize::from(f.level).min(LEVELS - 1)];
            l.files += 1;
            l.bytes += f.size;
            l.entries += f.entries;
        }
    }
    s.table_bytes = s.levels.iter().map(|l| l.bytes).sum();
    let deepest = s
        .levels
        .iter()
        .rev()
        .find(|l| l.bytes > 0)
        .map_or(0, |l| l.bytes);
    s.space_amplification = if deepest == 0 {
        0.0
    } else {
        s.table_bytes as f64 / deepest as f64
    };
    s.read_amplification = s.levels[0].files + s.levels[1..].iter().filter(|l| l.files > 0).count();
    Ok(s)
}
