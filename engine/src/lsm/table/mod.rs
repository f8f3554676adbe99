//! Sorted string tables: immutable files of sorted versions, read through
//! memmap2.
//!
//! ## File format (versions 2, 3 and 4)
//!
//! ```text
//! [dictionary, v4] [data block 0] … [data block n-1] [filter block] [index block] [blob list, v3/v4] [footer]
//! ```
//!
//! Version 3 is version 2 with values kept in blob files
//! ([`crate::lsm::blob`]): a table is written as version 3 exactly when
//! it references a blob file, so tables of small values are byte for byte
//! what they were. Version 4 is written exactly when the table has a
//! dictionary (zstd's or LZ4's, the bottom level's); its footer's flags (below) say which of the optional parts
//! it has, and a version 4 table with the blob-list flag may hold blob
//! columns as version 3 does.
//!
//! **Dictionary** (version 4 with flag bit 1): `dictionary bytes ‖ crc32
//! u32 LE`, at offset 0 and running to the first data block's offset
//! (from the index): the dictionary (trained by zstd's `ZDICT`) every zstd
//! or dictionary-LZ4 block of the table was compressed with ([`codec`] says
//! why).
//!
//! **Data block** on disk: `payload ‖ compression u8 ‖ crc32 u32 LE`, the crc
//! over payload and compression byte. Compression 0 = none, 1 = an LZ4 block
//! with the u32 LE uncompressed size first (kept only when smaller; written
//! by lz4_flex's fast compressor or by the reference library's
//! high-compression one — the same format either way), 2 = the u32 LE
//! uncompressed size, then a zstd frame without checksum, dictionary id or
//! content size, compressed with the table's dictionary if it has one, 3 =
//! an LZ4 block as in 1 whose matches may reach into the table's dictionary
//! as if it came right before the block (LZ4's prefix dictionary). The
//! uncompressed payload is columnar:
//!
//! ```text
//! count u32 LE
//! count × shared varint      -- bytes shared with the previous key
//! count × unshared varint    -- bytes that follow
//! count × seq varint         -- sequence number
//! count × value_len varint   -- 0 a tombstone, len + 1 a value
//! key suffixes               -- every key's unshared bytes, in order
//! values                     -- every value, in order
//! ```
//!
//! In a version 3 table, a block holding blob references sets bit 31 of
//! `count` and has one more column right after `value_len`: `n varint ‖ n
//! × index varint` — the entries whose value is a [`BlobRef`] encoding
//! (25 bytes, `crate::lsm::blob`), each index as the distance from the
//! previous one. The columns add up to the payload exactly.
//!
//! [`BlobRef`]: crate::lsm::blob::BlobRef Entries are in internal
//! order: key ascending, sequence number descending. Prefix sharing makes
//! our regular keys cheap (consecutive messages of a conversation share
//! their 11-byte conversation prefix and most of the reverse timestamp),
//! and the columns put the nearly constant headers together, where LZ4
//! compresses them to almost nothing (see [`block`]).
//!
//! Version 1 tables, still read, interleave each entry instead:
//! `shared varint ‖ unshared varint ‖ seq varint ‖ kind u8 (0 tombstone, 1
//! value) ‖ [value_len varint] ‖ key suffix ‖ value`.
//!
//! **Blob list** (version 3 only), between the index and the footer:
//! `count u32 LE ‖ count × (blob file id u64 LE ‖ value bytes u64 LE) ‖
//! crc32 u32 LE` — the blob files the table references, ascending, and how
//! many value bytes it references in each (what tells a full compaction
//! which files hold garbage).
//!
//! **Filter block**: a bloom filter over [`crate::keys::bloom_prefix`] of
//! every key: `bits ‖ k u8 ‖ crc32 u32 LE` (see [`bloom`]).
//!
//! **Index block**: `count u32 LE`, then per data block `key_len u16 LE ‖
//! last key ‖ last seq u64 LE ‖ offset u64 LE ‖ length u32 LE` (length
//! including the 5-byte block trailer), then `crc32 u32 LE` over all of it.
//!
//! **Footer**, 64 bytes at the end of the file:
//!
//! ```text
//!  0 8 index offset      8 8 index length
//! 16 8 filter offset    24 8 filter length
//! 32 8 entry count      40 8 blob list offset (v3, v4 with flag bit 0; else 0)
//! 48 2 format version   50 2 flags (v4; else 0): bit 0 blob list, bit 1 dictionary
//! 52 4 crc32 of bytes 0..52
//! 56 8 magic b"MSVSST\r\n"
//! ```

pub(crate) mod block;
pub(crate) mod bloom;
pub(crate) mod builder;
pub(crate) mod codec;
pub(crate) mod reader;

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

/// Identifies a table file; also its file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableId(pub u64);

/// Magic at the end of every table.
pub const TABLE_MAGIC: [u8; 8] = *b"MSVSST\r\n";
/// Table format version of a table without blob references.
pub const TABLE_VERSION: u16 = 2;
/// Table format version of a table with blob references.
pub const TABLE_VERSION_BLOBS: u16 = 3;
/// Table format version of a table whose footer flags name its optional
/// parts (written when it has a dictionary).
pub const TABLE_VERSION_FLAGS: u16 = 4;
/// Version 4 footer flag: the table has a blob list.
pub(crate) const FOOTER_HAS_BLOB_LIST: u16 = 1;
/// Version 4 footer flag: the table starts with a zstd dictionary.
pub(crate) const FOOTER_HAS_DICTIONARY: u16 = 2;
/// Footer size.
pub const FOOTER_LEN: usize = 64;
/// Bytes after each data block's payload: compression byte and crc32.
pub const BLOCK_TRAILER_LEN: usize = 5;

/// `tables/00000000000000000042.sst`
pub(crate) fn table_path(dir: &Path, id: TableId) -> PathBuf {
    dir.join(format!("{:020}.sst", id.0))
}

/// Parses a table file name.
pub(crate) fn parse_table_name(name: &str) -> Option<TableId> {
    let digits = name.strip_suffix(".sst")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok().map(TableId))
        .flatten()
}

/// Internal order of versions: key ascending, then sequence number
/// descending (newest first).
pub(crate) fn internal_cmp(a_key: &[u8], a_seq: u64, b_key: &[u8], b_seq: u64) -> Ordering {
    a_key.cmp(b_key).then_with(|| b_seq.cmp(&a_seq))
}
