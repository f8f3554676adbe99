//! A version-2 backup directory's chunk files and shard indexes: each
//! chunk stored once under its hash, the chunks an earlier backup already
//! holds hard-linked from it, and each chunk checked against its name
//! when read back.
//!
//! # Files
//!
//! ```text
//!  chunks/ab/ab12…ef.msnc  one chunk: exactly one frame of the snapshot
//!                          format, [len u32 LE][crc32 u32 LE][postcard(
//!                          Vec<(key, value)>)], keys ascending; the name
//!                          is the BLAKE3 hash (64 hex digits) of the
//!                          frame's bytes, under a directory named for
//!                          its first two
//!  p0-shard-0001.idx       one phase of one shard: its chunks in order
//! ```
//!
//! An index, byte by byte:
//!
//! ```text
//!  0      4   magic "MSBI"
//!  4      1   version = 1
//!  5      4   n: chunks (u32 LE)
//!  9      40n per chunk: BLAKE3 hash [32], frame length u32 LE, pairs u32 LE
//!  9+40n  4   crc32 of every byte before it (u32 LE)
//! ```
//!
//! # Incremental, and what a hard link shares
//!
//! A backup given `--base` (an earlier version-2 backup) links each chunk
//! the base holds instead of writing it: `hard_link(base/chunks/…,
//! out/chunks/…)`, after reading the base's file back and checking it
//! against its name (a damaged base chunk is not linked; the new backup
//! gets a fresh copy). Every backup directory stays whole on its own —
//! delete the base, and the new one still restores — while two backups
//! share the disk blocks of every chunk they have in common. The price of
//! sharing: damage to a shared file later (bit rot) is damage to every
//! backup that links it; `restore` finds it (every chunk is checked before
//! anything is sent), and a backup taken without `--base` shares nothing.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context};

use missive_raft::storage::snapshot::{frame_chunk, unframe_chunk, Chunk};

/// The directory of chunk files, in a backup directory.
pub const CHUNKS_DIR: &str = "chunks";

/// An index file's first five bytes: the magic and the version.
const INDEX_HEADER: &[u8; 5] = b"MSBI\x01";

/// One chunk of a shard's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// BLAKE3 of the chunk's frame: its file name.
    pub hash: [u8; 32],
    /// The frame's length in bytes.
    pub len: u32,
    /// The pairs in it.
    pub pairs: u32,
}

/// What a [`ChunkStore`] did with the chunks it was given.
#[derive(Debug, Default, Clone, Copy)]
pub struct StoreCounts {
    /// Chunks written as new files, and their bytes.
    pub written: u64,
    /// Bytes of the chunks written.
    pub written_bytes: u64,
    /// Chunks hard-linked from the base backup, and their bytes.
    pub linked: u64,
    /// Bytes of the chunks linked.
    pub linked_bytes: u64,
    /// Chunks this backup already held (the same chunk twice).
    pub repeated: u64,
    /// Base chunks that did not match their name (written afresh).
    pub base_damaged: u64,
}

/// Where chunk `hash` lies under the backup directory `dir`.
pub fn chunk_path(dir: &Path, hash: &[u8; 32]) -> PathBuf {
    let hex = blake3::Hash::from_bytes(*hash).to_hex();
    dir.join(CHUNKS_DIR)
        .join(&hex[..2])
        .join(format!("{hex}.msnc"))
}

/// A chunk file's bytes, checked against `entry`: its length, its hash
/// (= its name) and its frame (checksum, decoding, pair count). Answers
/// the frame, ready to send as a restore body.
pub fn read_chunk(dir: &Path, entry: &IndexEntry) -> anyhow::Result<Vec<u8>> {
    let path = chunk_path(dir, &entry.hash);
    let mut f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut frame = Vec::with_capacity(entry.len as usize);
    f.read_to_end(&mut frame)
        .with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        frame.len() == entry.len as usize && blake3::hash(&frame).as_bytes() == &entry.hash,
        "{} is damaged: its bytes do not match its name (the backup wrote {} bytes, it holds {})",
        path.display(),
        entry.len,
        frame.len()
    );
    let pairs = unframe_chunk(&frame)
        .with_context(|| format!("{} is not a chunk", path.display()))?
        .len();
    ensure!(
        pairs == entry.pairs as usize,
        "{} holds {pairs} pairs, its index says {}",
        path.display(),
        entry.pairs
    );
    Ok(frame)
}

/// Writes (or links) chunks into one backup directory.
#[derive(Debug)]
pub struct ChunkStore {
    /// The backup being written.
    dir: PathBuf,
    /// The earlier backup whose chunks are linked, if any.
    base: Option<PathBuf>,
    /// Files and directories created and not yet fsynced.
    unsynced: Vec<PathBuf>,
    /// What was done so far.
    pub counts: StoreCounts,
}

impl ChunkStore {
    /// A store writing into `dir`, linking from `base`.
    pub fn new(dir: &Path, base: Option<&Path>) -> Self {
        ChunkStore {
            dir: dir.to_path_buf(),
            base: base.map(Path::to_path_buf),
            unsynced: Vec::new(),
            counts: StoreCounts::default(),
        }
    }

    /// Stores `chunk` unless this backup holds it already; its index entry.
    pub fn put(&mut self, chunk: &Chunk) -> anyhow::Result<IndexEntry> {
        let frame = frame_chunk(chunk)?;
        let entry = IndexEntry {
            hash: *blake3::hash(&frame).as_bytes(),
            len: u32::try_from(frame.len()).context("a chunk over 4 GiB")?,
            pairs: u32::try_from(chunk.len()).context("a chunk of over 2^32 pairs")?,
        };
        let path = chunk_path(&self.dir, &entry.hash);
        // Already here: the same chunk twice, or a file an attempt stopped
        // before its files were synced left behind. Kept only if it holds
        // exactly these bytes; anything else is written again.
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == u64::from(entry.len))
            && std::fs::read(&path).is_ok_and(|b| b == frame)
        {
            self.counts.repeated += 1;
            return Ok(entry);
        }
        let parent = path.parent().context("a chunk path has a parent")?;
        if !parent.exists() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
            self.unsynced.push(parent.to_path_buf());
        }
        if let Some(base) = &self.base {
            let from = chunk_path(base, &entry.hash);
            if from.exists() {
                if read_chunk(base, &entry).is_ok_and(|bytes| bytes == frame) {
                    let _ = std::fs::remove_file(&path);
                    if std::fs::hard_link(&from, &path).is_ok() {
                        // Its directory entry is new: synced with the rest.
                        self.unsynced.push(path);
                        self.counts.linked += 1;
                        self.counts.linked_bytes += u64::from(entry.len);
                        return Ok(entry);
                    }
                    // Another filesystem, or links refused: copy below.
                } else {
                    self.counts.base_damaged += 1;
                }
            }
        }
        let mut f = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        f.write_all(&frame)
            .with_context(|| format!("writing {}", path.display()))?;
        self.unsynced.push(path);
        self.counts.written += 1;
        self.counts.written_bytes += u64::from(entry.len);
        Ok(entry)
    }

    /// Makes every file and directory written so far durable — on Linux
    /// one `syncfs` of the backup's filesystem, elsewhere (or if refused)
    /// each fsynced, then the directories holding them: called before the
    /// index that names them is written.
    pub fn sync(&mut self) -> anyhow::Result<()> {
        if self.unsynced.is_empty() {
            return Ok(());
        }
        #[cfg(target_os = "linux")]
        {
            // One syncfs(2) of the backup's filesystem instead of a journal
            // commit per file: thousands of new files per shard.
            use std::os::fd::AsRawFd as _;
            let dir =
                File::open(&self.dir).with_context(|| format!("opening {}", self.dir.display()))?;
            // SAFETY: syncfs only reads the descriptor, which `dir` keeps
            // open for the call.
            if unsafe { libc::syncfs(dir.as_raw_fd()) } == 0 {
                self.unsynced.clear();
                return Ok(());
            }
            // Refused (some filesystems): every file on its own below.
        }
        let mut dirs: Vec<PathBuf> = Vec::new();
        for p in self.unsynced.drain(..) {
            File::open(&p)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("syncing {}", p.display()))?;
            if let Some(d) = p.parent() {
                dirs.push(d.to_path_buf());
            }
        }
        dirs.sort();
        dirs.dedup();
        for d in dirs {
            File::open(&d)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("syncing {}", d.display()))?;
        }
        Ok(())
    }
}

/// An index's bytes (see the module documentation).
pub fn encode_index(entries: &[IndexEntry]) -> anyhow::Result<Vec<u8>> {
    let n = u32::try_from(entries.len()).context("an index of over 2^32 chunks")?;
    let mut out = Vec::with_capacity(INDEX_HEADER.len() + 8 + 40 * entries.len());
    out.extend_from_slice(INDEX_HEADER);
    out.extend_from_slice(&n.to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.hash);
        out.extend_from_slice(&e.len.to_le_bytes());
        out.extend_from_slice(&e.pairs.to_le_bytes());
    }
    out.extend_from_slice(&crc32fast::hash(&out).to_le_bytes());
    Ok(out)
}

/// The entries of an index file's bytes; `what` names it in errors.
pub fn decode_index(bytes: &[u8], what: &str) -> anyhow::Result<Vec<IndexEntry>> {
    let body_len = bytes.len().checked_sub(4);
    let (body, crc) = match body_len {
        Some(n) if n >= INDEX_HEADER.len() + 4 => bytes.split_at(n),
        _ => anyhow::bail!("{what} is too short to be a backup index"),
    };
    ensure!(
        body.starts_with(INDEX_HEADER),
        "{what} is not a version-1 backup index"
    );
    ensure!(
        crc32fast::hash(body).to_le_bytes() == crc,
        "{what} is damaged: its checksum does not match its contents"
    );
    let rest = &body[INDEX_HEADER.len()..];
    let n = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let rest = &rest[4..];
    ensure!(
        rest.len() == n.saturating_mul(40),
        "{what} names {n} chunks but holds {} bytes of entries",
        rest.len()
    );
    Ok(rest
        .chunks_exact(40)
        .map(|e| {
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&e[..32]);
            IndexEntry {
                hash,
                len: u32::from_le_bytes([e[32], e[33], e[34], e[35]]),
                pairs: u32::from_le_bytes([e[36], e[37], e[38], e[39]]),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    fn chunk(tag: u8, n: usize) -> Chunk {
        (0..n)
            .map(|i| (vec![tag, i as u8], vec![tag; 100 + i]))
            .collect()
    }

    #[test]
    fn an_index_round_trips_and_damage_is_refused() {
        let entries: Vec<IndexEntry> = (0..5u8)
            .map(|i| IndexEntry {
                hash: [i; 32],
                len: u32::from(i) * 1000,
                pairs: u32::from(i),
            })
            .collect();
        let bytes = encode_index(&entries).unwrap();
        assert_eq!(bytes.len(), 5 + 4 + 40 * 5 + 4);
        assert_eq!(decode_index(&bytes, "x").unwrap(), entries);
        assert_eq!(decode_index(&encode_index(&[]).unwrap(), "x").unwrap(), []);
        for at in [0, 6, 50, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 1;
            assert!(decode_index(&bad, "x").is_err(), "byte {at}");
        }
        assert!(decode_index(&bytes[..7], "x").is_err());
    }

    #[test]
    fn a_chunk_is_stored_once_linked_from_the_base_and_checked_when_read() {
        let root = tempfile::tempdir().unwrap();
        let (first, second) = (root.path().join("first"), root.path().join("second"));
        let mut s = ChunkStore::new(&first, None);
        let a = s.put(&chunk(1, 10)).unwrap();
        let b = s.put(&chunk(2, 20)).unwrap();
        assert_eq!(s.put(&chunk(1, 10)).unwrap(), a);
        s.sync().unwrap();
        assert_eq!((s.counts.written, s.counts.repeated), (2, 1));
        assert_eq!(
            unframe_chunk(&read_chunk(&first, &a).unwrap()).unwrap(),
            chunk(1, 10)
        );

        // The second backup links what the first holds and writes the rest;
        // a damaged base chunk is written afresh, not linked.
        let mut bad = std::fs::read(chunk_path(&first, &b.hash)).unwrap();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        std::fs::write(chunk_path(&first, &b.hash), &bad).unwrap();
        let mut s = ChunkStore::new(&second, Some(&first));
        assert_eq!(s.put(&chunk(1, 10)).unwrap(), a);
        assert_eq!(s.put(&chunk(2, 20)).unwrap(), b);
        let c = s.put(&chunk(3, 5)).unwrap();
        s.sync().unwrap();
        assert_eq!(
            (s.counts.linked, s.counts.written, s.counts.base_damaged),
            (1, 2, 1)
        );
        let ino = |d: &Path, h| std::fs::metadata(chunk_path(d, h)).unwrap().ino();
        assert_eq!(ino(&first, &a.hash), ino(&second, &a.hash));
        assert_ne!(ino(&first, &b.hash), ino(&second, &b.hash));
        for e in [a, b, c] {
            read_chunk(&second, &e).unwrap();
        }
        assert!(read_chunk(&first, &b)
            .unwrap_err()
            .to_string()
            .contains("damaged"));
        // The base can go: the second backup still holds every chunk.
        std::fs::remove_dir_all(&first).unwrap();
        read_chunk(&second, &a).unwrap();
        // A chunk file left by a stopped backup — short, or of the right
        // length with other bytes — is written again, not taken as the
        // chunk.
        let mut s = ChunkStore::new(&second, None);
        std::fs::write(chunk_path(&second, &c.hash), b"short").unwrap();
        s.put(&chunk(3, 5)).unwrap();
        std::fs::write(chunk_path(&second, &c.hash), vec![0; c.len as usize]).unwrap();
        s.put(&chunk(3, 5)).unwrap();
        assert_eq!((s.counts.written, s.counts.repeated), (2, 0));
        read_chunk(&second, &c).unwrap();
        s.put(&chunk(3, 5)).unwrap();
        assert_eq!(s.counts.repeated, 1);
    }
}
