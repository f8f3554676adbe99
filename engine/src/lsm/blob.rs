//! Blob files: large values kept out of the tables (key-value separation).
//!
//! # Why
//!
//! A value of a megabyte (a media chunk) stored in a table is copied by
//! every compaction that moves its table down a level, although it never
//! changes: measured on media uploads, every uploaded byte was written 2.8
//! times (log, flush, compactions) and the copies into the page cache were
//! two thirds of the server's CPU. Here a flush writes each value of at
//! least `LsmOptions::blob_threshold` bytes once into a blob file and puts
//! a 25-byte reference to it in the table instead; compactions move the
//! reference and never the bytes. The log write and the flush's blob write
//! are then the only two writes a large value ever gets, and the blob
//! write bypasses the page cache (`O_DIRECT`), so it costs the CPU almost
//! nothing (the same idea as WiscKey, RocksDB's BlobDB and TiKV's Titan).
//!
//! # Invariants
//!
//! - **A reference never dangles.** A blob file is written, fsynced and
//!   its directory entry fsynced before the manifest edit that installs
//!   the first table referencing it; a blob file no table in the manifest
//!   references is an orphan of an interrupted flush or compaction and is
//!   deleted at open (`recovery.rs`) — unless the manifest pins it: a file
//!   the store's owner writes itself (`pinned.rs`) is kept until the owner
//!   unpins it. Such a file may be referenced while it grows, up to what
//!   its writer synced ([`Growth`]); one its writer left without a footer
//!   is sealed at open after its last whole record ([`seal_unfinished`]),
//!   which covers everything synced.
//! - **A reference made before the memtable stays inside its file.** A
//!   batch may carry a reference to a value already in one of the store's
//!   blob files (finished, or pinned and synced that far) (`WriteBatch::put_blob_ref`: the write-once path
//!   for a log that keeps large values in blob files itself); `Lsm::apply`
//!   opens the file and checks the bounds before applying any of the
//!   batch, the memtable holds the file, and the flush writes the
//!   reference (never the bytes) into its table.
//! - **A blob file lives while any table or memtable referencing it does.** Each table
//!   lists the blob files it references (table format version 3, see
//!   [`crate::lsm::table`]) and holds them open; when an installed version
//!   no longer references a file that a removed table did, the file is
//!   marked obsolete and deleted once the last reader holding one of those
//!   tables lets go — the same rule as for tables — unless a memtable
//!   references it (`Inner::blob_refs` orders that check against a batch
//!   inserting new references). A value handed out as a
//!   view of the mapping (`Lsm::get_shared`, a media download) holds its
//!   file the same way until the view is dropped.
//! - **Bytes are checked where they are read.** A reference carries the
//!   value's CRC32; every read through the LSM checks it (compaction reads
//!   nothing but the reference).
//! - **Garbage is reclaimed by rewriting.** A file stays whole while any
//!   of its values is referenced, so deleted values can stay on disk in a
//!   file shared with live ones. In idle time the compaction thread takes
//!   the file with the most unreferenced bytes, if at least half of it is,
//!   and rewrites the tables referencing it one at a time, copying its live
//!   values into a new file, until no table references it
//!   (`reclaim_blobs_once`). A full compaction (what `node scrub` runs, and
//!   what erasure relies on) does the same for every file holding any
//!   garbage. Unreferenced bytes are counted from the tables' blob lists,
//!   where a version shadowed but not yet compacted away still counts as
//!   referenced: the count errs on the side of keeping.
//!
//! # File format (version 1)
//!
//! ```text
//! header  magic b"MSVBLOB\n" (8) ‖ version u16 LE ‖ reserved 6 bytes (0)
//! record  len u32 LE ‖ crc32 u32 LE (of the value) ‖ value      (repeated)
//! footer  records u64 LE ‖ value bytes u64 LE ‖ crc32 u32 LE of those 16
//!         bytes ‖ reserved u32 (0) ‖ magic b"MSVBLOB\n"        (32 bytes)
//! ```
//!
//! A reference (a [`BlobRef`], stored in a table entry marked as one) is
//! `version u8 (1) ‖ file u64 LE ‖ offset u64 LE ‖ len u32 LE ‖ crc32 u32
//! LE`, 25 bytes: the value's own offset (after its record header) and
//! length. The records make the file checkable on its own
//! ([`BlobFile::verify`], `missivectl verify`).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::le::{le_u32, le_u64};

/// Magic at both ends of a blob file.
pub const BLOB_MAGIC: [u8; 8] = *b"MSVBLOB\n";
/// Blob file format version.
pub const BLOB_VERSION: u16 = 1;
/// Header bytes.
pub const BLOB_HEADER_LEN: usize = 16;
/// Footer bytes.
pub const BLOB_FOOTER_LEN: usize = 32;
/// Record header bytes (length and CRC).
pub const BLOB_RECORD_HEADER_LEN: usize = 8;
/// Encoded size of a [`BlobRef`].
pub const BLOB_REF_LEN: usize = 25;
/// Version byte of an encoded [`BlobRef`].
const BLOB_REF_VERSION: u8 = 1;

/// Alignment of `O_DIRECT` writes (the largest logical block size we meet).
const ALIGN: usize = 4096;
/// Bytes a writer gathers before handing them to the file.
const WRITE_CHUNK: usize = 2 << 20;

/// `tables/00000000000000000042.blob`: blob files share the tables'
/// directory and id sequence.
pub(crate) fn blob_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.blob"))
}

/// Parses a blob file name.
pub(crate) fn parse_blob_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".blob")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Where a separated value is: its file, offset, length and checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRef {
    /// The blob file's id.
    pub file: u64,
    /// Offset of the value's first byte in the file.
    pub offset: u64,
    /// The value's length in bytes.
    pub len: u32,
    /// CRC32 of the value.
    pub crc: u32,
}

impl BlobRef {
    /// The 25-byte encoding stored in a table entry.
    pub fn encode(&self) -> [u8; BLOB_REF_LEN] {
        let mut b = [0u8; BLOB_REF_LEN];
        b[0] = BLOB_REF_VERSION;
        b[1..9].copy_from_slice(&self.file.to_le_bytes());
        b[9..17].copy_from_slice(&self.offset.to_le_bytes());
        b[17..21].copy_from_slice(&self.len.to_le_bytes());
        b[21..25].copy_from_slice(&self.crc.to_le_bytes());
        b
    }

    /// Decodes [`BlobRef::encode`]'s bytes; `None` if they are not one.
    pub fn decode(b: &[u8]) -> Option<BlobRef> {
        if b.len() != BLOB_REF_LEN || b[0] != BLOB_REF_VERSION {
            return None;
        }
        Some(BlobRef {
            file: u64::from_le_bytes(b[1..9].try_into().ok()?),
            offset: u64::from_le_bytes(b[9..17].try_into().ok()?),
            len: u32::from_le_bytes(b[17..21].try_into().ok()?),
            crc: u32::from_le_bytes(b[21..25].try_into().ok()?),
        })
    }
}

/// A buffer whose usable part starts at an [`ALIGN`] boundary, as
/// `O_DIRECT` requires of the memory it writes from. Over-allocates by one
/// alignment instead of calling the allocator with a layout (no `unsafe`).
struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(cap: usize) -> AlignedBuf {
        let raw = vec![0u8; cap + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN).min(ALIGN);
        AlignedBuf { raw, start, len: 0 }
    }

    fn cap(&self) -> usize {
        self.raw.len() - ALIGN
    }

    #[cfg(test)]
    fn filled(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    /// Copies as much of `bytes` as fits; returns how much.
    fn push(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.cap() - self.len);
        let at = self.start + self.len;
        self.raw[at..at + n].copy_from_slice(&bytes[..n]);
        self.len += n;
        n
    }
}

/// What a finished blob file holds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlobSummary {
    /// File size in bytes.
    pub size: u64,
    /// Bytes of the values in it.
    pub value_bytes: u64,
}

/// Writes one blob file: values appended as they come, gathered into
/// [`WRITE_CHUNK`]s written with `O_DIRECT` where the file system takes it
/// (the page cache is skipped: nobody reads a value right after a flush
/// wrote it, and filling fresh page-cache pages was the cost), else
/// through the page cache. [`BlobWriter::finish`] fsyncs; the caller fsyncs
/// the directory before any manifest edit names a table referencing it.
pub(crate) struct BlobWriter {
    id: u64,
    path: PathBuf,
    file: File,
    direct: bool,
    buf: AlignedBuf,
    /// Bytes handed to the file (a multiple of [`ALIGN`] while direct).
    written: u64,
    records: u64,
    value_bytes: u64,
}

impl BlobWriter {
    /// Creates `tables/{id}.blob`.
    pub fn create(dir: &Path, id: u64) -> Result<BlobWriter> {
        let path = blob_path(dir, id);
        let (file, direct) = open_for_write(&path)?;
        let mut w = BlobWriter {
            id,
            path,
            file,
            direct,
            buf: AlignedBuf::new(WRITE_CHUNK),
            written: 0,
            records: 0,
            value_bytes: 0,
        };
        w.put(&blob_header())?;
        Ok(w)
    }

    /// Creates `tables/{id}.blob` for writes through the page cache: a
    /// file read while it grows ([`BlobWriter::sync`]) must be, since its
    /// last block is written again each time.
    pub fn create_buffered(dir: &Path, id: u64) -> Result<BlobWriter> {
        let path = blob_path(dir, id);
        let file = create_buffered(&path)?;
        let mut w = BlobWriter {
            id,
            path,
            file,
            direct: false,
            buf: AlignedBuf::new(WRITE_CHUNK),
            written: 0,
            records: 0,
            value_bytes: 0,
        };
        w.put(&blob_header())?;
        Ok(w)
    }

    /// The file's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Writes what is gathered and fdatasyncs the file (the first time:
    /// `fsync`, for its size and its existence); returns the length now
    /// durable, below which every value appended so far lies. Only for a
    /// writer from [`BlobWriter::create_buffered`].
    pub fn sync(&mut self, first: bool) -> Result<u64> {
        debug_assert!(!self.direct, "an O_DIRECT writer writes whole blocks");
        if self.buf.len > 0 {
            self.write_out(self.buf.len)?;
        }
        let r = if first {
            self.file.sync_all()
        } else {
            self.file.sync_data()
        };
        r.map_err(|e| Error::io("fsync", &self.path, e))?;
        Ok(self.written)
    }

    /// Offset of the next byte appended.
    fn offset(&self) -> u64 {
        self.written + self.buf.len as u64
    }

    /// Appends one value; returns where it is.
    pub fn append(&mut self, value: &[u8]) -> Result<BlobRef> {
        self.append_parts(&[value])
    }

    /// Bytes appended so far (header included), written out or not.
    pub fn len(&self) -> u64 {
        self.offset()
    }

    /// Appends one value made of `parts`, back to back; returns where it
    /// is.
    pub fn append_parts(&mut self, parts: &[&[u8]]) -> Result<BlobRef> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let len = u32::try_from(total).map_err(|_| {
            Error::InvalidArgument(format!("a value of {total} bytes is too large to store"))
        })?;
        let mut hasher = crc32fast::Hasher::new();
        for p in parts {
            hasher.update(p);
        }
        let crc = hasher.finalize();
        let mut head = [0u8; BLOB_RECORD_HEADER_LEN];
        head[..4].copy_from_slice(&len.to_le_bytes());
        head[4..].copy_from_slice(&crc.to_le_bytes());
        self.put(&head)?;
        let offset = self.offset();
        for p in parts {
            self.put(p)?;
        }
        self.records += 1;
        self.value_bytes += u64::from(len);
        Ok(BlobRef {
            file: self.id,
            offset,
            len,
            crc,
        })
    }

    fn put(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let n = self.buf.push(bytes);
            bytes = &bytes[n..];
            if self.buf.len == self.buf.cap() {
                self.write_out(self.buf.len)?;
            }
        }
        Ok(())
    }

    /// Writes the buffer's first `n` bytes (all of it, or padded to the
    /// alignment at the end) at `written`.
    fn write_out(&mut self, n: usize) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let at = self.written;
        let bytes = &self.buf.raw[self.buf.start..self.buf.start + n];
        let res = self.file.write_all_at(bytes, at);
        match res {
            // Some file systems open with O_DIRECT and refuse the write.
            Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                self.direct = false;
                clear_direct(&self.file).map_err(|e| Error::io("write", &self.path, e))?;
                self.file
                    .write_all_at(bytes, at)
                    .map_err(|e| Error::io("write", &self.path, e))?;
            }
            r => r.map_err(|e| Error::io("write", &self.path, e))?,
        }
        self.written += n as u64;
        self.buf.len = 0;
        Ok(())
    }

    /// Writes the footer and the rest, trims the alignment padding and
    /// fsyncs the file.
    pub fn finish(mut self) -> Result<BlobSummary> {
        self.put(&blob_footer(self.records, self.value_bytes))?;
        let size = self.offset();
        let tail = self.buf.len;
        if tail > 0 {
            let padded = if self.direct {
                tail.div_ceil(ALIGN) * ALIGN
            } else {
                tail
            };
            let end = self.buf.start + padded;
            self.buf.raw[self.buf.start + tail..end].fill(0);
            self.write_out(padded)?;
            if padded != tail {
                self.file
                    .set_len(size)
                    .map_err(|e| Error::io("truncate", &self.path, e))?;
            }
        }
        self.file
            .sync_all()
            .map_err(|e| Error::io("fsync", &self.path, e))?;
        Ok(BlobSummary {
            size,
            value_bytes: self.value_bytes,
        })
    }

    /// Removes the unfinished file (an aborted compaction's).
    pub fn abandon(self) -> Result<()> {
        drop(self.file);
        std::fs::remove_file(&self.path).map_err(|e| Error::io("remove", &self.path, e))
    }

    /// The bytes gathered and not yet written, for tests of the layout.
    #[cfg(test)]
    fn filled(&self) -> &[u8] {
        self.buf.filled()
    }
}

/// A blob file's first 16 bytes.
fn blob_header() -> [u8; BLOB_HEADER_LEN] {
    let mut header = [0u8; BLOB_HEADER_LEN];
    header[..8].copy_from_slice(&BLOB_MAGIC);
    header[8..10].copy_from_slice(&BLOB_VERSION.to_le_bytes());
    header
}

/// A blob file's last 32 bytes.
fn blob_footer(records: u64, value_bytes: u64) -> [u8; BLOB_FOOTER_LEN] {
    let mut footer = [0u8; BLOB_FOOTER_LEN];
    footer[..8].copy_from_slice(&records.to_le_bytes());
    footer[8..16].copy_from_slice(&value_bytes.to_le_bytes());
    let crc = crc32fast::hash(&footer[..16]);
    footer[16..20].copy_from_slice(&crc.to_le_bytes());
    footer[24..32].copy_from_slice(&BLOB_MAGIC);
    footer
}

/// Creates the file for writes through the page cache.
fn create_buffered(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io("create", path, e))
}

/// Creates the file for `O_DIRECT` writes where the file system takes
/// them; the flag says which it got.
#[cfg(target_os = "linux")]
fn open_for_write(path: &Path) -> Result<(File, bool)> {
    use std::os::unix::fs::OpenOptionsExt;
    let direct = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(path);
    match direct {
        Ok(f) => Ok((f, true)),
        // tmpfs and some others refuse O_DIRECT at open.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok((create_buffered(path)?, false)),
        Err(e) => Err(Error::io("create", path, e)),
    }
}

#[cfg(not(target_os = "linux"))]
fn open_for_write(path: &Path) -> Result<(File, bool)> {
    Ok((create_buffered(path)?, false))
}

#[cfg(target_os = "linux")]
fn clear_direct(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this File owns, with integer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn clear_direct(_file: &File) -> std::io::Result<()> {
    Ok(())
}

/// A checked value inside a blob file's mapping, owning a handle on the
/// file (the owner of a [`BlobFile::shared`] `Bytes`).
struct BlobSlice {
    file: Arc<BlobFile>,
    range: std::ops::Range<usize>,
}

impl AsRef<[u8]> for BlobSlice {
    fn as_ref(&self) -> &[u8] {
        &self.file.map[self.range.clone()]
    }
}

/// An open blob file, mapped: a finished one (its footer checked), or
/// the synced part of one still growing (see [`Growth`]).
pub(crate) struct BlobFile {
    pub id: u64,
    pub path: PathBuf,
    map: Mmap,
    /// Where values may lie: before the footer, or (growing) the end of
    /// the mapped length.
    end: usize,
    /// The footer was found and checked.
    finished: bool,
    /// Records, from the footer (0 for a growing file).
    pub records: u64,
    /// Value bytes, from the footer; for a file mapped while it grew, 0
    /// until its writer finished it ([`Blobs::finished`]) — what the
    /// garbage count compares the tables' references with.
    value_bytes: AtomicU64,
    /// Set when no installed version references the file any more; it is
    /// deleted when the last table holding it is dropped.
    obsolete: AtomicBool,
}

impl std::fmt::Debug for BlobFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobFile").field("id", &self.id).finish()
    }
}

/// Maps `len` bytes of `path` (the whole file if `None`) and checks the
/// header.
fn map_checked(path: &Path, len: Option<u64>) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut opts = memmap2::MmapOptions::new();
    if let Some(len) = len {
        let len = usize::try_from(len).map_err(|_| {
            Error::InvalidArgument(format!("{}: {len} bytes do not map here", path.display()))
        })?;
        opts.len(len);
    }
    // SAFETY: the mapped bytes never change once written: a finished blob
    // file is immutable, and a growing one is only appended to past the
    // mapped length (its last block is rewritten with the same bytes in
    // front) and never truncated while open; the data directory is locked
    // against other processes.
    let map = unsafe { opts.map(&file) }.map_err(|e| Error::io("map", path, e))?;
    if map.len() < BLOB_HEADER_LEN {
        return Err(Error::corruption(
            path,
            0,
            "file is shorter than a blob file's header",
        ));
    }
    if map[..8] != BLOB_MAGIC {
        return Err(Error::corruption(
            path,
            0,
            "bad magic: not a Missive blob file",
        ));
    }
    let version = u16::from_le_bytes([map[8], map[9]]);
    if version != BLOB_VERSION {
        return Err(Error::UnsupportedVersion {
            file: path.to_path_buf(),
            found: u32::from(version),
            supported: u32::from(BLOB_VERSION),
        });
    }
    Ok(map)
}

/// Walks the records of `map[..end]` from the header on: the end of the
/// last whole, checksummed record, the records and value bytes before it,
/// and the offset of the first bad one (`None`: all whole).
fn walk_records(map: &[u8], end: usize) -> (usize, u64, u64, Option<(usize, &'static str)>) {
    let mut at = BLOB_HEADER_LEN;
    let (mut n, mut bytes) = (0u64, 0u64);
    while at < end {
        if at + BLOB_RECORD_HEADER_LEN > end {
            return (
                at,
                n,
                bytes,
                Some((at, "a record header runs past the end")),
            );
        }
        let len = le_u32(&map[at..]) as usize;
        let crc = le_u32(&map[at + 4..]);
        let v = at + BLOB_RECORD_HEADER_LEN;
        if v.checked_add(len).is_none_or(|e| e > end) {
            return (at, n, bytes, Some((at, "a record runs past the end")));
        }
        if crc32fast::hash(&map[v..v + len]) != crc {
            return (at, n, bytes, Some((at, "blob record checksum mismatch")));
        }
        n += 1;
        bytes += len as u64;
        at = v + len;
    }
    (at, n, bytes, None)
}

/// Finishes a blob file whose writer stopped before its footer (a crash
/// while a pinned file grew, `pinned.rs`): cuts it after its last whole,
/// checksummed record — a torn tail after the synced bytes, which no
/// reference points into — and writes the footer, so from here it is an
/// ordinary finished file. A file shorter than its header (the crash came
/// before the first sync) becomes an empty one. Returns the records kept.
pub(crate) fn seal_unfinished(path: &Path) -> Result<u64> {
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io("stat", path, e))?
        .len();
    let (end, records, value_bytes) = if len >= BLOB_HEADER_LEN as u64 {
        let map = map_checked(path, None)?;
        let (end, records, value_bytes, _torn) = walk_records(&map, map.len());
        (end as u64, records, value_bytes)
    } else {
        (0, 0, 0)
    };
    use std::os::unix::fs::FileExt;
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io("open", path, e))?;
    file.set_len(end)
        .map_err(|e| Error::io("truncate", path, e))?;
    let mut tail = Vec::with_capacity(BLOB_HEADER_LEN + BLOB_FOOTER_LEN);
    let at = if end == 0 {
        tail.extend_from_slice(&blob_header());
        0
    } else {
        end
    };
    tail.extend_from_slice(&blob_footer(records, value_bytes));
    file.write_all_at(&tail, at)
        .map_err(|e| Error::io("write", path, e))?;
    file.sync_all().map_err(|e| Error::io("fsync", path, e))?;
    Ok(records)
}

impl BlobFile {
    /// Maps the file and checks its header and footer.
    pub fn open(path: &Path, id: u64) -> Result<BlobFile> {
        let map = map_checked(path, None)?;
        let corrupt = |offset: usize, reason: &str| Error::corruption(path, offset as u64, reason);
        if map.len() < BLOB_HEADER_LEN + BLOB_FOOTER_LEN {
            return Err(corrupt(
                0,
                "file is shorter than a blob file's header and footer",
            ));
        }
        let foot_at = map.len() - BLOB_FOOTER_LEN;
        let foot = &map[foot_at..];
        if foot[24..32] != BLOB_MAGIC {
            return Err(corrupt(
                foot_at + 24,
                "bad footer magic: a truncated blob file",
            ));
        }
        if crc32fast::hash(&foot[..16]) != le_u32(&foot[16..20]) {
            return Err(corrupt(foot_at, "blob footer checksum mismatch"));
        }
        Ok(BlobFile {
            id,
            path: path.to_path_buf(),
            records: le_u64(&foot[..8]),
            value_bytes: AtomicU64::new(le_u64(&foot[8..16])),
            end: foot_at,
            finished: true,
            map,
            obsolete: AtomicBool::new(false),
        })
    }

    /// Maps the first `len` bytes of a file still being written — all of
    /// them written and synced — checking only the header.
    pub fn open_growing(path: &Path, id: u64, len: u64) -> Result<BlobFile> {
        let map = map_checked(path, Some(len))?;
        Ok(BlobFile {
            id,
            path: path.to_path_buf(),
            end: map.len(),
            finished: false,
            records: 0,
            value_bytes: AtomicU64::new(0),
            map,
            obsolete: AtomicBool::new(false),
        })
    }

    /// File size in bytes.
    pub fn size(&self) -> u64 {
        self.map.len() as u64
    }

    /// The value `r` points at, its bounds checked but not its checksum
    /// (for compaction's retention question, which reads a value's head).
    pub fn value_unchecked(&self, r: &BlobRef) -> Result<&[u8]> {
        let start = usize::try_from(r.offset).ok();
        let range = start.and_then(|s| Some(s..s.checked_add(r.len as usize)?));
        match range {
            Some(range)
                if range.start >= BLOB_HEADER_LEN + BLOB_RECORD_HEADER_LEN
                    && range.end <= self.end =>
            {
                Ok(&self.map[range])
            }
            _ => Err(Error::corruption(
                &self.path,
                r.offset,
                format!("a reference points {} bytes outside the blob file", r.len),
            )),
        }
    }

    /// The value `r` points at, checked against its CRC.
    pub fn value(&self, r: &BlobRef) -> Result<&[u8]> {
        let v = self.value_unchecked(r)?;
        if crc32fast::hash(v) != r.crc {
            return Err(Error::corruption(
                &self.path,
                r.offset,
                "blob value checksum mismatch",
            ));
        }
        Ok(v)
    }

    /// The value `r` points at, checked against its CRC, as a view of the
    /// mapping that keeps this file open (and mapped) while it lives: a
    /// large value leaves the engine without a copy. The mapping stays
    /// valid after the file is deleted, and blob files are never written
    /// or truncated once open.
    pub fn shared(self: &Arc<Self>, r: &BlobRef) -> Result<bytes::Bytes> {
        let v = self.value(r)?;
        let start = v.as_ptr() as usize - self.map.as_ptr() as usize;
        Ok(bytes::Bytes::from_owner(BlobSlice {
            file: Arc::clone(self),
            range: start..start + v.len(),
        }))
    }

    /// Walks every record and checks its checksum (and, for a finished
    /// file, the footer's counts); returns the record count.
    pub fn verify(&self) -> Result<u64> {
        let (at, n, bytes, bad) = walk_records(&self.map, self.end);
        if let Some((offset, reason)) = bad {
            return Err(Error::corruption(&self.path, offset as u64, reason));
        }
        debug_assert_eq!(at, self.end);
        let value_bytes = self.value_bytes();
        if self.finished && (n != self.records || bytes != value_bytes) {
            return Err(Error::corruption(
                &self.path,
                self.end as u64,
                format!(
                    "the footer counts {} records of {value_bytes} bytes, the file holds {n} of {bytes}",
                    self.records
                ),
            ));
        }
        Ok(n)
    }

    /// Bytes of the values in the file (see the field).
    pub fn value_bytes(&self) -> u64 {
        self.value_bytes.load(Ordering::Acquire)
    }

    pub fn mark_obsolete(&self) {
        self.obsolete.store(true, Ordering::Release);
    }

    /// Whether the file was retired (it goes when its last holder does).
    pub fn is_obsolete(&self) -> bool {
        self.obsolete.load(Ordering::Acquire)
    }
}

impl Drop for BlobFile {
    fn drop(&mut self) {
        if self.obsolete.load(Ordering::Acquire) {
            if let Err(err) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), %err, "could not delete an obsolete blob file");
            }
        }
    }
}

/// A blob file the registry finds without its footer: its writer is
/// live ([`crate::lsm::PinnedBlobWriter`]) and the first `n` bytes are
/// written and synced, so references may point there. (One whose writer
/// died is sealed at open: [`seal_unfinished`].)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Growth {
    /// Written and synced up to this length.
    Live(u64),
}

/// The registry's state: the mappings, and the files that may lack a
/// footer.
#[derive(Debug, Default)]
struct Registry {
    open: HashMap<u64, Weak<BlobFile>>,
    growth: HashMap<u64, Growth>,
}

/// The open blob files of one LSM, by id: tables referencing the same file
/// share one mapping. Holds them weakly: tables own them.
///
/// A growing file is mapped anew each time a reader asks after its synced
/// length moved (a mapping cannot grow); the older mappings stay valid for
/// whoever holds them, since the bytes they cover never change. Only the
/// newest is marked obsolete at retirement; deleting the file under an
/// older one is harmless (a mapping outlives the name).
#[derive(Debug, Default)]
pub(crate) struct Blobs {
    dir: PathBuf,
    reg: Mutex<Registry>,
}

impl Blobs {
    pub fn new(dir: &Path) -> Blobs {
        Blobs {
            dir: dir.to_path_buf(),
            reg: Mutex::new(Registry::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.reg
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Says how to find file `id` without its footer (`None`: it has one
    /// now).
    pub fn set_growth(&self, id: u64, growth: Option<Growth>) {
        let mut reg = self.lock();
        match growth {
            Some(g) => reg.growth.insert(id, g),
            None => reg.growth.remove(&id),
        };
    }

    /// A growing file's writer finished it with `value_bytes` of values:
    /// it is read as a finished file from now on, and a mapping taken
    /// while it grew (still held by tables) counts its values from here,
    /// so the garbage count sees them.
    pub fn finished(&self, id: u64, value_bytes: u64) {
        let mut reg = self.lock();
        reg.growth.remove(&id);
        if let Some(f) = reg.open.get(&id).and_then(Weak::upgrade) {
            f.value_bytes.store(value_bytes, Ordering::Release);
        }
    }

    /// Blob file `id`, mapped once (a growing file: once per synced
    /// length).
    pub fn get(&self, id: u64) -> Result<Arc<BlobFile>> {
        let mut reg = self.lock();
        let growth = reg.growth.get(&id).copied();
        if let Some(f) = reg.open.get(&id).and_then(Weak::upgrade) {
            let current = match growth {
                Some(Growth::Live(len)) => !f.finished && f.size() == len,
                // Finished since it was mapped growing: map it whole.
                None => f.finished,
            };
            if current {
                return Ok(f);
            }
        }
        let path = blob_path(&self.dir, id);
        if !path.exists() {
            return Err(Error::corruption(
                &path,
                0,
                "blob file referenced by a table is missing",
            ));
        }
        let f = Arc::new(match growth {
            Some(Growth::Live(len)) if len < BLOB_HEADER_LEN as u64 => {
                return Err(Error::InvalidArgument(format!(
                    "blob file {id} has nothing synced yet"
                )))
            }
            Some(Growth::Live(len)) => BlobFile::open_growing(&path, id, len)?,
            None => BlobFile::open(&path, id)?,
        });
        reg.open.insert(id, Arc::downgrade(&f));
        Ok(f)
    }

    /// Marks `id` obsolete: deleted once nothing holds it.
    pub fn retire(&self, id: u64) {
        let f = {
            let mut reg = self.lock();
            reg.growth.remove(&id);
            reg.open.remove(&id).and_then(|w| w.upgrade())
        };
        match f {
            Some(f) => f.mark_obsolete(),
            // Nothing holds it open: delete it now.
            None => {
                let path = blob_path(&self.dir, id);
                if let Err(err) = std::fs::remove_file(&path) {
                    if err.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(path = %path.display(), %err, "could not delete an obsolete blob file");
                    }
                }
            }
        }
    }

    /// Every blob file open now.
    pub fn all(&self) -> Vec<Arc<BlobFile>> {
        let mut v: Vec<Arc<BlobFile>> = self
            .lock()
            .open
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        v.sort_by_key(|f| f.id);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_written_read_back_checked_and_the_file_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = BlobWriter::create(dir.path(), 7).expect("create");
        let values: Vec<Vec<u8>> = (0..5u32)
            .map(|i| {
                (0..(i * 1_000_003) % 3_000_001)
                    .map(|j| j as u8 ^ i as u8)
                    .collect()
            })
            .collect();
        let refs: Vec<BlobRef> = values
            .iter()
            .map(|v| w.append(v).expect("append"))
            .collect();
        assert!(w.filled().len() < WRITE_CHUNK);
        let sum = w.finish().expect("finish");
        let f = BlobFile::open(&blob_path(dir.path(), 7), 7).expect("open");
        assert_eq!(f.size(), sum.size);
        assert_eq!(f.verify().expect("verify"), 5);
        for (v, r) in values.iter().zip(&refs) {
            assert_eq!(BlobRef::decode(&r.encode()), Some(*r));
            assert_eq!(f.value(r).expect("value"), v.as_slice());
        }
        let bad = BlobRef {
            crc: refs[1].crc ^ 1,
            ..refs[1]
        };
        assert!(matches!(f.value(&bad), Err(Error::Corruption { .. })));
        let outside = BlobRef {
            offset: sum.size,
            ..refs[1]
        };
        assert!(matches!(f.value(&outside), Err(Error::Corruption { .. })));
    }

    #[test]
    fn a_flipped_byte_and_a_truncated_file_are_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = BlobWriter::create(dir.path(), 1).expect("create");
        let r = w.append(&[7u8; 100_000]).expect("append");
        w.finish().expect("finish");
        let path = blob_path(dir.path(), 1);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[r.offset as usize + 10] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
        let f = BlobFile::open(&path, 1).expect("open");
        assert!(f.value(&r).is_err());
        assert!(f.verify().is_err());
        drop(f);
        std::fs::write(&path, &bytes[..bytes.len() - 3]).expect("truncate");
        assert!(BlobFile::open(&path, 1).is_err());
    }
}
