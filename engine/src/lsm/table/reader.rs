//! Opening a table: map it, check the footer, load the index and filter.
//! Blocks are checksummed and decoded on first use and kept in the shared
//! block cache. Reads take no lock and do no I/O call of their own: the
//! page cache serves the mapping.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::le::{le_u32, le_u64};
use crate::lsm::blob::{BlobFile, BlobRef, Blobs};
use crate::lsm::cache::BlockCache;
use crate::lsm::key_word;
use crate::lsm::table::block::{BlockLayout, DecodedBlock};
use crate::lsm::table::codec::{self, Dictionary};
use crate::lsm::table::{
    bloom, internal_cmp, TableId, BLOCK_TRAILER_LEN, FOOTER_HAS_BLOB_LIST, FOOTER_HAS_DICTIONARY,
    FOOTER_LEN, TABLE_MAGIC, TABLE_VERSION, TABLE_VERSION_BLOBS, TABLE_VERSION_FLAGS,
};

#[derive(Debug)]
pub(crate) struct IndexEntry {
    /// `last_key`'s first 24 bytes as three integers ([`key_word`]): a
    /// search through the index compares these and reaches into the key's
    /// own allocation (a cache miss) only when all three are equal. Why
    /// three: a message key is 19 bytes, and the blocks of one large
    /// conversation share their first 11, so with one word every step of a
    /// search inside such a conversation went to the allocation —
    /// `find_block` and its `memcmp` were a sixth of page-back's time.
    pub words: [u64; 3],
    pub last_key: Vec<u8>,
    pub last_seq: u64,
    pub offset: u64,
    pub len: u32,
}

/// An open table.
pub(crate) struct Table {
    pub id: TableId,
    pub path: PathBuf,
    pub(crate) map: Mmap,
    pub index: Vec<IndexEntry>,
    /// Every [`SUMMARY_STRIDE`]th index entry's `words`, packed: see
    /// [`Table::find_block`].
    summary: Vec<[u64; 3]>,
    pub(crate) filter: std::ops::Range<usize>,
    pub entries: u64,
    /// The table's format version (its footer's).
    pub version: u16,
    /// How this table's data blocks lay out their entries (its version).
    layout: BlockLayout,
    /// The blob files this table references and the value bytes it
    /// references in each (version 3's blob list; empty before).
    pub blob_list: Vec<(u64, u64)>,
    /// The dictionary its zstd and dictionary-LZ4 blocks were compressed
    /// with (version 4).
    dictionary: Option<Dictionary>,
    /// Those files, open, in the same order — empty when the table was
    /// opened without them (the offline tools).
    blobs: Vec<Arc<BlobFile>>,
    cache: Arc<BlockCache>,
    /// Set when no version references the table any more; the file is
    /// deleted when the last reader drops its handle.
    obsolete: AtomicBool,
    /// Bytes read from the mapping (decompressed block misses), for stats.
    pub bytes_read: AtomicU64,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table").field("id", &self.id).finish()
    }
}

impl Table {
    pub fn open(path: &Path, id: TableId, cache: Arc<BlockCache>) -> Result<Table> {
        let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        // SAFETY: table files are immutable once written, never truncated
        // while open, and the data directory is locked against other
        // processes, so the mapping cannot change under us.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io("map", path, e))?;
        let corrupt =
            |offset: usize, reason: &str| Error::corruption(path, offset as u64, reason.to_owned());
        if map.len() < FOOTER_LEN {
            return Err(corrupt(0, "file is shorter than a table footer"));
        }
        let foot_at = map.len() - FOOTER_LEN;
        let foot = &map[foot_at..];
        if foot[56..64] != TABLE_MAGIC {
            return Err(corrupt(foot_at + 56, "bad magic: not a Missive table"));
        }
        if crc32fast::hash(&foot[0..52]) != le_u32(&foot[52..56]) {
            return Err(corrupt(foot_at, "footer checksum mismatch"));
        }
        let version = u16::from_le_bytes([foot[48], foot[49]]);
        let flags = match version {
            TABLE_VERSION_BLOBS => FOOTER_HAS_BLOB_LIST,
            TABLE_VERSION_FLAGS => u16::from_le_bytes([foot[50], foot[51]]),
            _ => 0,
        };
        let layout = match version {
            1 => BlockLayout::Interleaved,
            TABLE_VERSION => BlockLayout::Columnar,
            TABLE_VERSION_BLOBS => BlockLayout::ColumnarBlobs,
            TABLE_VERSION_FLAGS if flags & !(FOOTER_HAS_BLOB_LIST | FOOTER_HAS_DICTIONARY) != 0 => {
                return Err(corrupt(
                    foot_at + 50,
                    &format!("unknown footer flags {flags:#x}"),
                ));
            }
            TABLE_VERSION_FLAGS if flags & FOOTER_HAS_BLOB_LIST != 0 => BlockLayout::ColumnarBlobs,
            TABLE_VERSION_FLAGS => BlockLayout::Columnar,
            _ => {
                return Err(Error::UnsupportedVersion {
                    file: path.to_path_buf(),
                    found: u32::from(version),
                    supported: u32::from(TABLE_VERSION_FLAGS),
                })
            }
        };
        let (io, il) = (le_u64(&foot[0..8]) as usize, le_u64(&foot[8..16]) as usize);
        let (fo, fl) = (
            le_u64(&foot[16..24]) as usize,
            le_u64(&foot[24..32]) as usize,
        );
        let entries = le_u64(&foot[32..40]);
        let region = |o: usize, l: usize, what: &str| {
            if l < 4 || o.checked_add(l).is_none_or(|end| end > foot_at) {
                return Err(corrupt(
                    foot_at,
                    &format!("footer points the {what} outside the file"),
                ));
            }
            let body = &map[o..o + l - 4];
            if crc32fast::hash(body) != le_u32(&map[o + l - 4..o + l]) {
                return Err(corrupt(o, &format!("{what} checksum mismatch")));
            }
            Ok(o..o + l - 4)
        };
        let filter = region(fo, fl, "filter block")?;
        let index_range = region(io, il, "index block")?;
        let index = Self::parse_index(&map[index_range.clone()], foot_at)
            .ok_or_else(|| corrupt(index_range.start, "malformed index block"))?;
        let dictionary = if flags & FOOTER_HAS_DICTIONARY != 0 {
            // From the file's start to the first data block.
            let end = index.first().map_or(0, |e| e.offset as usize);
            let range = region(0, end, "dictionary")?;
            Some(
                Dictionary::new(&map[range])
                    .ok_or_else(|| corrupt(0, "zstd refuses the dictionary"))?,
            )
        } else {
            None
        };
        let blob_list = if flags & FOOTER_HAS_BLOB_LIST != 0 {
            let at = le_u64(&foot[40..48]) as usize;
            let range = region(at, foot_at.saturating_sub(at), "blob list")?;
            Self::parse_blob_list(&map[range]).ok_or_else(|| corrupt(at, "malformed blob list"))?
        } else {
            Vec::new()
        };
        let summary = index
            .iter()
            .step_by(SUMMARY_STRIDE)
            .map(|e| e.words)
            .collect();
        Ok(Table {
            id,
            path: path.to_path_buf(),
            map,
            index,
            summary,
            filter,
            entries,
            version,
            layout,
            blob_list,
            dictionary,
            blobs: Vec::new(),
            cache,
            obsolete: AtomicBool::new(false),
            bytes_read: AtomicU64::new(0),
        })
    }

    /// Opens the table and the blob files it references, through the
    /// LSM's registry (the serving path; reads resolve references).
    pub fn open_with_blobs(
        path: &Path,
        id: TableId,
        cache: Arc<BlockCache>,
        registry: &Blobs,
    ) -> Result<Table> {
        let mut t = Table::open(path, id, cache)?;
        t.blobs = t
            .blob_list
            .iter()
            .map(|(file, _)| registry.get(*file))
            .collect::<Result<_>>()?;
        Ok(t)
    }

    fn parse_blob_list(b: &[u8]) -> Option<Vec<(u64, u64)>> {
        let count = le_u32(b.get(..4)?) as usize;
        if b.len() != 4 + count.checked_mul(16)? {
            return None;
        }
        let list: Vec<(u64, u64)> = (0..count)
            .map(|i| (le_u64(&b[4 + i * 16..]), le_u64(&b[12 + i * 16..])))
            .collect();
        list.windows(2).all(|w| w[0].0 < w[1].0).then_some(list)
    }

    /// The blob file `id`, if this table references it and was opened with
    /// its blob files.
    fn blob_file(&self, id: u64) -> Result<&Arc<BlobFile>> {
        self.blob_list
            .binary_search_by_key(&id, |(f, _)| *f)
            .ok()
            .and_then(|i| self.blobs.get(i))
            .ok_or_else(|| {
                Error::corruption(
                    &self.path,
                    0,
                    format!("an entry references blob file {id}, which the table does not list"),
                )
            })
    }

    fn blob_ref(&self, bytes: &[u8]) -> Result<BlobRef> {
        BlobRef::decode(bytes)
            .ok_or_else(|| Error::corruption(&self.path, 0, "malformed blob reference"))
    }

    /// The value a blob entry's reference bytes point at, checked.
    pub fn resolve(&self, reference: &[u8]) -> Result<&[u8]> {
        let r = self.blob_ref(reference)?;
        self.blob_file(r.file)?.value(&r)
    }

    /// The value `r` points at, already checked by [`Table::resolve`].
    pub fn blob_slice(&self, r: &BlobRef) -> Option<&[u8]> {
        self.blob_file(r.file).ok()?.value_unchecked(r).ok()
    }

    /// The same, its checksum unchecked (see `BlobFile::value_unchecked`).
    pub fn resolve_unchecked(&self, reference: &[u8]) -> Result<&[u8]> {
        let r = self.blob_ref(reference)?;
        self.blob_file(r.file)?.value_unchecked(&r)
    }

    pub(crate) fn parse_index(b: &[u8], data_end: usize) -> Option<Vec<IndexEntry>> {
        let count = le_u32(b.get(..4)?) as usize;
        let mut pos = 4;
        let mut out = Vec::with_capacity(count.min(1 << 20));
        for _ in 0..count {
            let klen = u16::from_le_bytes([*b.get(pos)?, *b.get(pos + 1)?]) as usize;
            pos += 2;
            let last_key = b.get(pos..pos + klen)?.to_vec();
            pos += klen;
            let last_seq = le_u64(b.get(pos..pos + 8)?);
            let offset = le_u64(b.get(pos + 8..pos + 16)?);
            let len = le_u32(b.get(pos + 16..pos + 20)?);
            pos += 20;
            let end = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(len as usize));
            if (len as usize) < BLOCK_TRAILER_LEN || end.is_none_or(|end| end > data_end) {
                return None;
            }
            out.push(IndexEntry {
                words: key_words(&last_key),
                last_key,
                last_seq,
                offset,
                len,
            });
        }
        (pos == b.len()).then_some(out)
    }

    /// Whether the table may hold keys with this bloom prefix.
    pub fn may_contain(&self, prefix: &[u8]) -> bool {
        bloom::may_contain(&self.map[self.filter.clone()], prefix)
    }

    /// Block `i`, from the cache or decoded from the mapping.
    pub fn block(&self, i: usize) -> Result<Arc<DecodedBlock>> {
        let key = (self.id, i as u32);
        if let Some(b) = self.cache.get(key) {
            return Ok(b);
        }
        let e = &self.index[i];
        let (o, l) = (e.offset as usize, e.len as usize);
        let raw = &self.map[o..o + l];
        let corrupt = |reason: String| Error::corruption(&self.path, e.offset, reason);
        let (body, crc) = raw.split_at(l - 4);
        if crc32fast::hash(body) != le_u32(crc) {
            return Err(corrupt("data block checksum mismatch".into()));
        }
        let (payload, kind) = body.split_at(body.len() - 1);
        let plain = codec::decompress(kind[0], payload, self.dictionary.as_ref())
            .map_err(|e| corrupt(format!("data block does not decode: {e}")))?;
        self.bytes_read.fetch_add(l as u64, Ordering::Relaxed);
        let block =
            Arc::new(DecodedBlock::decode(plain, self.layout).map_err(|r| corrupt(r.into()))?);
        self.cache.insert(key, Arc::clone(&block));
        Ok(block)
    }

    /// Whether the table carries a dictionary (its footer's flag).
    pub fn has_dictionary(&self) -> bool {
        self.dictionary.is_some()
    }

    /// Index of the first block that may hold (key, seq) or anything after.
    ///
    /// Two steps, because a plain binary search over the index took a
    /// cache miss at nearly every step (a bottom-level table of 4 KiB
    /// blocks has ~13 000 entries of 72 bytes, a megabyte; `find_block` was
    /// a tenth of page-back's time): first over the packed summary (24
    /// bytes per 16 entries, which stays in the CPU's cache), which bounds
    /// the answer to the entries between two samples whose words are below
    /// and above the key's, then over those few entries. Samples whose
    /// words equal the key's (the same 24-byte prefix: for a message key,
    /// the same key, other versions) are decided in the second step.
    pub fn find_block(&self, key: &[u8], seq: u64) -> usize {
        search_index(&self.index, &self.summary, key, seq)
    }

    /// The newest version of `key` at `snapshot`: `Some(None)` for a
    /// tombstone, `None` if the table has none visible.
    pub fn get(&self, key: &[u8], snapshot: u64) -> Result<Option<Option<Vec<u8>>>> {
        self.get_with(key, snapshot, |t, v, blob| match blob {
            true => Ok(t.resolve(v)?.to_vec()),
            false => Ok(v.to_vec()),
        })
    }

    /// [`Table::get`], a value in a blob file handed out as a view of its
    /// mapping ([`BlobFile::shared`]) instead of a copy.
    pub fn get_shared(&self, key: &[u8], snapshot: u64) -> Result<Option<Option<bytes::Bytes>>> {
        self.get_with(key, snapshot, |t, v, blob| match blob {
            true => {
                let r = t.blob_ref(v)?;
                t.blob_file(r.file)?.shared(&r)
            }
            false => Ok(bytes::Bytes::copy_from_slice(v)),
        })
    }

    /// [`Table::get`] with the found value made by `make(self, stored,
    /// is_blob)`: `stored` is the entry's bytes, a blob reference when
    /// `is_blob`.
    fn get_with<T>(
        &self,
        key: &[u8],
        snapshot: u64,
        make: impl FnOnce(&Self, &[u8], bool) -> Result<T>,
    ) -> Result<Option<Option<T>>> {
        let mut b = self.find_block(key, snapshot);
        while b < self.index.len() {
            let block = self.block(b)?;
            let i = block.seek(key, snapshot);
            if i < block.len() {
                if block.key(i) != key {
                    return Ok(None);
                }
                return match block.value(i) {
                    Some(v) => Ok(Some(Some(make(self, v, block.is_blob(i))?))),
                    None => Ok(Some(None)),
                };
            }
            // (key, snapshot) falls after this block's last entry only when
            // the block ends with newer versions of `key`: look on.
            b += 1;
        }
        Ok(None)
    }

    /// Checks every block's checksum and decoding (for `verify`).
    pub fn verify(&self) -> Result<u64> {
        let mut n = 0;
        for i in 0..self.index.len() {
            let e = &self.index[i];
            let raw = &self.map[e.offset as usize..(e.offset + u64::from(e.len)) as usize];
            let (body, crc) = raw.split_at(raw.len() - 4);
            if crc32fast::hash(body) != le_u32(crc) {
                return Err(Error::corruption(
                    &self.path,
                    e.offset,
                    "data block checksum mismatch",
                ));
            }
            n += self.block(i)?.len() as u64;
        }
        if n != self.entries {
            return Err(Error::corruption(
                &self.path,
                0,
                format!("footer counts {} entries, blocks hold {n}", self.entries),
            ));
        }
        Ok(n)
    }

    pub fn mark_obsolete(&self) {
        self.obsolete.store(true, Ordering::Release);
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        if self.obsolete.load(Ordering::Acquire) {
            if let Err(err) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), %err, "could not delete an obsolete table");
            }
        }
    }
}

/// Index entries per [`Table::find_block`] summary sample.
const SUMMARY_STRIDE: usize = 16;

/// [`Table::find_block`]'s search: the first entry of `index` whose
/// (last key, last seq) is not below (key, seq); `summary` holds every
/// [`SUMMARY_STRIDE`]th entry's words.
fn search_index(index: &[IndexEntry], summary: &[[u64; 3]], key: &[u8], seq: u64) -> usize {
    let words = key_words(key);
    // Samples below `lo_s` have smaller words: their entries (and every
    // entry before them) come before the key. Samples from `hi_s` on have
    // larger words: their entries do not.
    let lo_s = summary.partition_point(|w| *w < words);
    let hi_s = lo_s + summary[lo_s..].partition_point(|w| *w <= words);
    let lo = (lo_s * SUMMARY_STRIDE).saturating_sub(SUMMARY_STRIDE - 1);
    let hi = (hi_s * SUMMARY_STRIDE).min(index.len());
    lo + index[lo..hi].partition_point(|e| match e.words.cmp(&words) {
        std::cmp::Ordering::Equal => {
            internal_cmp(&e.last_key, e.last_seq, key, seq) == std::cmp::Ordering::Less
        }
        o => o == std::cmp::Ordering::Less,
    })
}

/// A key's first 24 bytes as three [`key_word`]s, which order like the
/// bytes wherever they differ.
fn key_words(key: &[u8]) -> [u64; 3] {
    [key_word(key, 0), key_word(key, 8), key_word(key, 16)]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn the_summarised_search_finds_what_a_plain_search_finds() {
        let mut rng = fastrand::Rng::with_seed(12);
        for round in 0..200 {
            // Keys of 0..30 bytes from a small alphabet, so that prefixes
            // of 24 bytes and whole keys repeat (versions of one key).
            let key = |rng: &mut fastrand::Rng| -> Vec<u8> {
                let len = if rng.bool() { 19 } else { rng.usize(0..30) };
                (0..len).map(|_| rng.u8(0..2)).collect()
            };
            let mut entries: Vec<(Vec<u8>, u64)> = (0..rng.usize(0..200))
                .map(|_| (key(&mut rng), rng.u64(0..4)))
                .collect();
            entries.sort_by(|a, b| internal_cmp(&a.0, a.1, &b.0, b.1));
            let index: Vec<IndexEntry> = entries
                .into_iter()
                .map(|(k, seq)| IndexEntry {
                    words: key_words(&k),
                    last_key: k,
                    last_seq: seq,
                    offset: 0,
                    len: 0,
                })
                .collect();
            let summary: Vec<[u64; 3]> = index
                .iter()
                .step_by(SUMMARY_STRIDE)
                .map(|e| e.words)
                .collect();
            for _ in 0..200 {
                let (k, seq) = match rng.usize(0..3) {
                    0 if !index.is_empty() => {
                        let e = &index[rng.usize(0..index.len())];
                        (e.last_key.clone(), e.last_seq)
                    }
                    _ => (key(&mut rng), rng.u64(0..4)),
                };
                let plain = index.partition_point(|e| {
                    internal_cmp(&e.last_key, e.last_seq, &k, seq) == std::cmp::Ordering::Less
                });
                assert_eq!(
                    search_index(&index, &summary, &k, seq),
                    plain,
                    "round {round}: {k:?}@{seq} in {} entries",
                    index.len()
                );
            }
        }
    }

    #[test]
    fn key_words_order_like_the_bytes_where_they_differ() {
        let mut rng = fastrand::Rng::with_seed(11);
        let key = |rng: &mut fastrand::Rng| -> Vec<u8> {
            (0..rng.usize(0..30)).map(|_| rng.u8(0..3)).collect()
        };
        for _ in 0..20_000 {
            let (a, b) = (key(&mut rng), key(&mut rng));
            let (wa, wb) = (key_words(&a), key_words(&b));
            if wa != wb {
                assert_eq!(wa.cmp(&wb), a.cmp(&b), "{a:?} vs {b:?}");
            }
        }
    }
}
