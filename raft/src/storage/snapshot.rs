//! Shard snapshots: a pinned view of the LSM, or a file received from a
//! leader.
//!
//! A shard's state *is* its key ranges in the node's LSM (see `slots`), so
//! building a snapshot copies nothing: it pins an LSM snapshot (compaction
//! keeps every version it can see) and flushes the memtables so the
//! snapshot's position is durable before openraft purges the log below it.
//! Sending one streams its key ranges in chunks over the transport; the
//! receiver appends the chunks to a file, then installs it.
//!
//! # Received-snapshot file, byte by byte
//!
//! ```text
//! header  0  4  magic "MSNP"
//!         4  1  version = 1
//! chunk   0  4  payload length n (u32 LE)
//!         4  4  crc32 (crc32fast) of the payload (u32 LE)
//!         8  n  postcard(Vec<(key bytes, value bytes)>), keys ascending
//! ```
//!
//! A short or damaged chunk fails the install (the leader sends again);
//! the file is deleted once installed or superseded.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use missive_engine::lsm::{Direction, Lsm, Snapshot as LsmSnapshot};

use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"MSNP";
const FILE_VERSION: u8 = 1;

/// Key/value pairs of one chunk.
pub type Chunk = Vec<(Vec<u8>, Vec<u8>)>;

/// The file's first five bytes: the magic and the version.
pub const FILE_HEADER: &[u8; 5] = b"MSNP\x01";

/// One chunk as the file frames it: `[len u32 LE][crc32 u32 LE][payload]`.
pub fn frame_chunk(chunk: &Chunk) -> Result<Vec<u8>> {
    let payload = crate::storage::codec::postcard_after(&[], chunk)
        .map_err(|e| Error::malformed("snapshot chunk", e))?;
    let len = u32::try_from(payload.len())
        .map_err(|_| Error::malformed("snapshot chunk", "larger than 4 GiB"))?;
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// The chunk in exactly one frame of [`frame_chunk`]'s (a short, long,
/// damaged or undecodable frame is refused).
pub fn unframe_chunk(framed: &[u8]) -> Result<Chunk> {
    let (head, payload) = framed
        .split_first_chunk::<8>()
        .ok_or_else(|| Error::malformed("snapshot chunk", "shorter than its 8-byte header"))?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if payload.len() != len {
        return Err(Error::malformed(
            "snapshot chunk",
            format!("its header says {len} bytes, {} follow", payload.len()),
        ));
    }
    if crc32fast::hash(payload) != crc {
        return Err(Error::malformed("snapshot chunk", "checksum mismatch"));
    }
    postcard::from_bytes(payload).map_err(|e| Error::malformed("snapshot chunk", e))
}

/// A chunk is closed at about this many bytes of keys and values.
pub const CHUNK_BYTES: usize = 1 << 20;

/// A shard's snapshot data (openraft's `SnapshotData`).
#[derive(Debug, Clone)]
pub enum ShardSnapshot {
    /// The shard's key ranges of a pinned LSM view (built here).
    View(Arc<View>),
    /// A file of chunks received from a leader.
    Received(PathBuf),
}

/// A pinned LSM view of a shard's key ranges.
pub struct View {
    lsm: Arc<Lsm>,
    snap: LsmSnapshot,
    ranges: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View")
            .field("seq", &self.snap.seq())
            .field("ranges", &self.ranges.len())
            .finish()
    }
}

impl View {
    /// Pins the current state of `ranges`.
    pub fn new(lsm: Arc<Lsm>, ranges: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Self {
        let snap = lsm.snapshot();
        View { lsm, snap, ranges }
    }

    /// The value under `key` as the pinned view sees it (any key, not only
    /// the ranges': the shard's `Applied` record, for one).
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.lsm.get_at(key, &self.snap)?)
    }
}

/// Where a chunked read of a snapshot stands (sent between nodes by a
/// backup stream, so the caller holds it and a retried call is idempotent).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkCursor {
    range: usize,
    /// Next key to read within `range` (None: its start).
    next: Option<Vec<u8>>,
}

impl View {
    /// The next chunk of at most about [`CHUNK_BYTES`], or `None` at the end.
    pub fn next_chunk(&self, cur: &mut ChunkCursor) -> Result<Option<Chunk>> {
        let mut out = Chunk::new();
        let mut bytes = 0;
        while let Some((lo, hi)) = self.ranges.get(cur.range) {
            let start = cur.next.clone().unwrap_or_else(|| lo.clone());
            let page =
                self.lsm
                    .scan_at(&start, hi.as_deref(), Direction::Forward, 1024, &self.snap)?;
            let full = page.len() == 1024;
            for (k, v) in page {
                bytes += k.len() + v.len();
                let mut next = k.clone();
                next.push(0);
                cur.next = Some(next);
                out.push((k, v));
            }
            if !full {
                cur.range += 1;
                cur.next = None;
            }
            if bytes >= CHUNK_BYTES {
                break;
            }
        }
        Ok((!out.is_empty()).then_some(out))
    }
}

/// Writes a received snapshot file.
#[derive(Debug)]
pub struct SnapshotWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl SnapshotWriter {
    /// Creates the file (replacing any at `path`).
    pub fn create(path: &Path) -> Result<Self> {
        let f = File::create(path).map_err(|e| storage_io("create", path, e))?;
        let mut out = BufWriter::new(f);
        out.write_all(MAGIC)
            .and_then(|()| out.write_all(&[FILE_VERSION]))
            .map_err(|e| storage_io("write", path, e))?;
        Ok(SnapshotWriter {
            path: path.to_path_buf(),
            out,
        })
    }

    /// Appends one chunk.
    pub fn push(&mut self, chunk: &Chunk) -> Result<()> {
        let framed = frame_chunk(chunk)?;
        self.push_framed(&framed)
    }

    /// Appends one chunk already framed by [`frame_chunk`] (as a backup
    /// stream carries them), checking its frame first.
    pub fn push_framed(&mut self, framed: &[u8]) -> Result<()> {
        unframe_chunk(framed)?;
        self.out
            .write_all(framed)
            .map_err(|e| storage_io("write", &self.path, e))
    }

    /// Flushes and syncs the file; returns its path.
    pub fn finish(self) -> Result<PathBuf> {
        let path = self.path;
        let f = self
            .out
            .into_inner()
            .map_err(|e| storage_io("write", &path, e.into_error()))?;
        f.sync_all().map_err(|e| storage_io("fsync", &path, e))?;
        Ok(path)
    }
}

/// Reads a received snapshot file chunk by chunk.
pub struct SnapshotReader {
    path: PathBuf,
    input: BufReader<File>,
}

impl SnapshotReader {
    /// Opens `path` and checks its header.
    pub fn open(path: &Path) -> Result<Self> {
        let f = File::open(path).map_err(|e| storage_io("open", path, e))?;
        let mut input = BufReader::new(f);
        let mut head = [0u8; 5];
        input
            .read_exact(&mut head)
            .map_err(|e| storage_io("read", path, e))?;
        if &head[..4] != MAGIC || head[4] != FILE_VERSION {
            return Err(Error::malformed(
                "snapshot file",
                format!(
                    "{} has no MSNP version {FILE_VERSION} header",
                    path.display()
                ),
            ));
        }
        Ok(SnapshotReader {
            path: path.to_path_buf(),
            input,
        })
    }

    /// The next chunk, `None` at a clean end.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>> {
        let mut head = [0u8; 8];
        match self.input.read_exact(&mut head[..1]) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(storage_io("read", &self.path, e)),
        }
        self.input
            .read_exact(&mut head[1..])
            .map_err(|e| storage_io("read", &self.path, e))?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        // Every chunk arrived in one transport frame: a larger length is
        // damage, refused before anything is allocated for it.
        if len > crate::transport::MAX_FRAME {
            return Err(Error::malformed(
                "snapshot chunk",
                format!(
                    "{} claims a chunk of {len} bytes, more than a frame carries",
                    self.path.display()
                ),
            ));
        }
        let mut payload = vec![0u8; len];
        self.input
            .read_exact(&mut payload)
            .map_err(|e| storage_io("read", &self.path, e))?;
        if crc32fast::hash(&payload) != crc {
            return Err(Error::malformed(
                "snapshot chunk",
                format!("checksum mismatch in {}", self.path.display()),
            ));
        }
        postcard::from_bytes(&payload)
            .map(Some)
            .map_err(|e| Error::malformed("snapshot chunk", e))
    }
}

/// Reads any snapshot chunk by chunk.
pub enum SnapshotSource<'a> {
    /// From a view.
    View(&'a View, ChunkCursor),
    /// From a file.
    File(SnapshotReader),
}

impl<'a> SnapshotSource<'a> {
    /// A source over `snap`.
    pub fn new(snap: &'a ShardSnapshot) -> Result<Self> {
        Ok(match snap {
            ShardSnapshot::View(v) => SnapshotSource::View(v, ChunkCursor::default()),
            ShardSnapshot::Received(p) => SnapshotSource::File(SnapshotReader::open(p)?),
        })
    }

    /// The next chunk, `None` at the end.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>> {
        match self {
            SnapshotSource::View(v, cur) => v.next_chunk(cur),
            SnapshotSource::File(r) => r.next_chunk(),
        }
    }
}

fn storage_io(op: &'static str, path: &Path, e: std::io::Error) -> Error {
    Error::Storage(missive_engine::Error::Io {
        op,
        path: path.to_path_buf(),
        source: Arc::new(e),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn a_frame_round_trips_and_any_damage_is_refused() {
        let chunk: Chunk = vec![(b"k1".to_vec(), b"v1".to_vec()), (b"k2".to_vec(), vec![])];
        let framed = frame_chunk(&chunk).unwrap();
        assert_eq!(unframe_chunk(&framed).unwrap(), chunk);
        for cut in [0, 7, 8, framed.len() - 1] {
            assert!(unframe_chunk(&framed[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = framed.clone();
        longer.push(0);
        assert!(unframe_chunk(&longer).is_err());
        for i in 0..framed.len() {
            let mut bad = framed.clone();
            bad[i] ^= 0x40;
            assert!(unframe_chunk(&bad).is_err(), "flipped byte {i}");
        }
        // The file is the header and the frames, as a backup stream sends.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backup");
        let mut w = SnapshotWriter::create(&path).unwrap();
        w.push_framed(&framed).unwrap();
        w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..5], FILE_HEADER);
        assert_eq!(&bytes[5..], framed.as_slice());
    }

    #[test]
    fn a_damaged_chunk_length_is_corruption_not_an_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("received");
        let mut bytes = MAGIC.to_vec();
        bytes.push(FILE_VERSION);
        bytes.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        bytes.extend_from_slice(&[0u8; 4]);
        std::fs::write(&path, bytes).unwrap();
        let mut r = SnapshotReader::open(&path).unwrap();
        let err = r.next_chunk().unwrap_err();
        // Before: 4 GiB reserved, then an I/O error at the end of the file.
        assert!(
            matches!(err, Error::Malformed { .. }) && err.to_string().contains("more than a frame"),
            "{err:?}"
        );
    }
}
