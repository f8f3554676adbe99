//! The log's bytes on disk: the segment header and the record frame.
//!
//! ## Segment file
//!
//! A segment is `log/NNNNNNNNNNNNNNNNNNNN.log` (its sequence number, 20
//! decimal digits so names sort by number). It starts with a 32-byte header
//! and is followed by records back to back, then zeros (the preallocated,
//! unwritten rest). Every segment but the newest ends with a `Seal` record.
//!
//! ```text
//! offset size field
//!      0    8 magic            b"MSVLOG\r\n"
//!      8    2 format version   u16 LE, currently 2 (1 is read too: it
//!                                lacks only the Reset record)
//!     10    2 reserved         zero
//!     12    8 segment sequence u64 LE, equal to the number in the file name
//!     20    8 reserved         zero
//!     28    4 crc32            u32 LE, crc32 (IEEE, crc32fast) of bytes 0..28
//! ```
//!
//! ## Record
//!
//! ```text
//! offset size field
//!      0    4 crc32    u32 LE, crc32 of bytes 4..28+len (header rest + payload)
//!      4    4 len      u32 LE, payload length in bytes (≤ MAX_PAYLOAD)
//!      8    1 kind     see `RecordKind`; 0 never occurs (zeros end the data)
//!      9    1 flags    zero (reserved)
//!     10    2 reserved zero
//!     12    8 stream   u64 LE
//!     20    8 index    u64 LE, meaning depends on kind; ≤ MAX_INDEX (2^62)
//!     28  len payload
//! ```
//!
//! | kind | name        | index field            | payload                                   |
//! |------|-------------|------------------------|-------------------------------------------|
//! | 1    | Entry       | the entry's index      | the entry's bytes                         |
//! | 2    | EntryLz4    | the entry's index      | lz4_flex block, u32 LE uncompressed size first |
//! | 3    | Meta        | 0                      | key_len u16 LE, key, value                |
//! | 4    | Truncate    | keep entries ≤ index   | empty                                     |
//! | 5    | Purge       | drop entries ≤ index   | empty                                     |
//! | 6    | Checkpoint  | purged index           | count u32 LE, then count × (key_len u16 LE, key, val_len u32 LE, val) |
//! | 7    | Seal        | this record's offset   | empty; stream is 0                        |
//! | 8    | Reset       | 0                      | empty: forget the stream (entries, purge point, meta) |
//!
//! A header of all zeros (kind 0) marks the end of the written data.

use crate::le::{le_u32, le_u64};
use crate::log::StreamId;

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"MSVLOG\r\n";
/// The segment format version this build writes. Version 2 added the
/// Reset record: a build that reads only version 1 refuses a newer
/// segment with a clear error instead of taking a Reset for a torn tail.
pub const SEGMENT_VERSION: u16 = 2;
/// The oldest segment format version this build reads.
pub const SEGMENT_VERSION_MIN: u16 = 1;
/// Size of the segment header in bytes.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// Size of a record header in bytes.
pub const RECORD_HEADER_LEN: usize = 28;
/// Largest record payload: bounds memory on recovery and rejects a
/// corrupted length before it is trusted.
pub const MAX_PAYLOAD: usize = 64 << 20;
/// Largest meta key and value.
pub const MAX_META_KEY: usize = 1024;
/// Largest meta value.
pub const MAX_META_VALUE: usize = 1 << 20;
/// Largest entry index a record may name (2^62: more entries than any
/// stream will ever append), so that index arithmetic never wraps. A
/// larger one is corruption.
pub const MAX_INDEX: u64 = 1 << 62;

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// An entry of a stream, stored as is.
    Entry = 1,
    /// An entry of a stream, lz4-compressed.
    EntryLz4 = 2,
    /// A small durable key/value of a stream (a vote, a flushed position).
    Meta = 3,
    /// Drop the stream's entries after `index`.
    Truncate = 4,
    /// Drop the stream's entries up to and including `index`.
    Purge = 5,
    /// A stream's purge point and all its meta, rewritten so older segments
    /// holding the originals can be deleted.
    Checkpoint = 6,
    /// The end of a segment that has been rolled over.
    Seal = 7,
    /// Forget everything about the stream written before: its entries,
    /// purge point and meta (a Raft group's replica wiped to start over).
    /// Like a Truncate it needs no carrying forward: segments go oldest
    /// first, so once its segment is gone so is all it undid.
    Reset = 8,
}

impl RecordKind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => RecordKind::Entry,
            2 => RecordKind::EntryLz4,
            3 => RecordKind::Meta,
            4 => RecordKind::Truncate,
            5 => RecordKind::Purge,
            6 => RecordKind::Checkpoint,
            7 => RecordKind::Seal,
            8 => RecordKind::Reset,
            _ => return None,
        })
    }
}

/// Encodes a segment header.
pub fn encode_segment_header(seq: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..10].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&h[0..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Why a segment header was rejected.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Shorter than a header, wrong magic or bad checksum.
    Damaged(&'static str),
    /// A version this build does not read.
    Version(u16),
    /// The sequence number inside differs from the file name's.
    WrongSeq(u64),
}

/// Checks a segment header and its sequence number.
pub fn check_segment_header(bytes: &[u8], expect_seq: u64) -> Result<(), HeaderError> {
    let h = bytes
        .get(..SEGMENT_HEADER_LEN)
        .ok_or(HeaderError::Damaged("file shorter than a segment header"))?;
    if h[0..8] != SEGMENT_MAGIC {
        return Err(HeaderError::Damaged("bad magic: not a Missive log segment"));
    }
    if crc32fast::hash(&h[0..28]) != le_u32(&h[28..32]) {
        return Err(HeaderError::Damaged("segment header checksum mismatch"));
    }
    let version = u16::from_le_bytes([h[8], h[9]]);
    if !(SEGMENT_VERSION_MIN..=SEGMENT_VERSION).contains(&version) {
        return Err(HeaderError::Version(version));
    }
    let seq = le_u64(&h[12..20]);
    if seq != expect_seq {
        return Err(HeaderError::WrongSeq(seq));
    }
    Ok(())
}

/// Appends one record to `out`. The payload is given in parts so callers
/// can frame `key_len ‖ key ‖ value` without building it first. Returns the
/// record's total length.
pub fn encode_record(
    out: &mut Vec<u8>,
    kind: RecordKind,
    stream: StreamId,
    index: u64,
    payload: &[&[u8]],
) -> usize {
    let len: usize = payload.iter().map(|p| p.len()).sum();
    debug_assert!(len <= MAX_PAYLOAD);
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&[kind as u8, 0, 0, 0]);
    out.extend_from_slice(&stream.0.to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    for p in payload {
        out.extend_from_slice(p);
    }
    let crc = crc32fast::hash(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    RECORD_HEADER_LEN + len
}

/// A record decoded in place.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    /// What it is.
    pub kind: RecordKind,
    /// The stream it belongs to (0 for Seal).
    pub stream: StreamId,
    /// The index field (see the table above).
    pub index: u64,
    /// The payload bytes.
    pub payload: &'a [u8],
}

impl RecordRef<'_> {
    /// Header plus payload length.
    pub fn total_len(&self) -> usize {
        RECORD_HEADER_LEN + self.payload.len()
    }
}

/// What lies at an offset of a segment.
#[derive(Debug)]
pub enum Decoded<'a> {
    /// An intact record.
    Record(RecordRef<'a>),
    /// The end of the written data: the end of the file, or a zero header.
    End,
    /// A record whose header or payload runs past the end of the file.
    Incomplete,
    /// Bytes that are not an intact record, and why.
    Bad(&'static str),
}

/// Decodes the record at `offset` of `buf` (a whole segment), checking its
/// checksum.
pub fn decode_record(buf: &[u8], offset: usize) -> Decoded<'_> {
    let Some(rest) = buf.get(offset..) else {
        return Decoded::End;
    };
    if rest.is_empty() {
        return Decoded::End;
    }
    let Some(h) = rest.get(..RECORD_HEADER_LEN) else {
        return if rest.iter().all(|&b| b == 0) {
            Decoded::End
        } else {
            Decoded::Incomplete
        };
    };
    if h.iter().all(|&b| b == 0) {
        return Decoded::End;
    }
    let len = le_u32(&h[4..8]) as usize;
    let Some(kind) = RecordKind::from_u8(h[8]) else {
        return Decoded::Bad("unknown record kind");
    };
    if h[9] != 0 || h[10] != 0 || h[11] != 0 {
        return Decoded::Bad("reserved header bytes are not zero");
    }
    if len > MAX_PAYLOAD {
        return Decoded::Bad("record length exceeds the maximum");
    }
    let Some(body) = rest.get(..RECORD_HEADER_LEN + len) else {
        return Decoded::Incomplete;
    };
    if crc32fast::hash(&body[4..]) != le_u32(&body[0..4]) {
        return Decoded::Bad("record checksum mismatch");
    }
    Decoded::Record(RecordRef {
        kind,
        stream: StreamId(le_u64(&h[12..20])),
        index: le_u64(&h[20..28]),
        payload: &body[RECORD_HEADER_LEN..],
    })
}

/// Reads the header of a record the log itself just encoded (no checksum
/// check: the bytes never left memory). Returns (kind, stream, index,
/// total length).
pub fn peek_own_record(buf: &[u8]) -> Option<RecordRef<'_>> {
    let h = buf.get(..RECORD_HEADER_LEN)?;
    let len = le_u32(&h[4..8]) as usize;
    Some(RecordRef {
        kind: RecordKind::from_u8(h[8])?,
        stream: StreamId(le_u64(&h[12..20])),
        index: le_u64(&h[20..28]),
        payload: buf.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + len)?,
    })
}

/// True if an intact record starts anywhere in `buf` after `from`. Used at
/// the tail of the newest segment to tell a torn final write (nothing
/// intact follows) from damage in the middle of the log (something does).
pub fn intact_record_after(buf: &[u8], from: usize) -> bool {
    let mut pos = from + 1;
    while pos + RECORD_HEADER_LEN <= buf.len() {
        // Cheap filters first: kind byte in range, reserved bytes zero.
        let h = &buf[pos..pos + RECORD_HEADER_LEN];
        if (1..=7).contains(&h[8]) && h[9] == 0 && h[10] == 0 && h[11] == 0 {
            if let Decoded::Record(_) = decode_record(buf, pos) {
                return true;
            }
        }
        pos += 1;
    }
    false
}

/// Encodes a meta payload's parts: `key_len u16 LE ‖ key ‖ value`.
pub fn meta_key_len(key: &[u8]) -> [u8; 2] {
    (key.len() as u16).to_le_bytes()
}

/// An entry record's bytes: the payload as is, or decompressed. The size an
/// `EntryLz4` payload claims is checked against [`MAX_PAYLOAD`] (no entry is
/// appended larger) before anything is allocated, so a damaged size cannot
/// make a read reserve gigabytes. `Err` says why the record is not an entry.
pub fn entry_data(rec: &RecordRef<'_>) -> Result<Vec<u8>, String> {
    match rec.kind {
        RecordKind::Entry => Ok(rec.payload.to_vec()),
        RecordKind::EntryLz4 => {
            let claimed = rec
                .payload
                .get(..4)
                .map(le_u32)
                .ok_or("lz4 payload shorter than its size")?;
            if claimed as usize > MAX_PAYLOAD {
                return Err(format!(
                    "lz4 payload claims {claimed} bytes, more than an entry holds"
                ));
            }
            lz4_flex::decompress_size_prepended(rec.payload)
                .map_err(|e| format!("lz4 payload does not decompress: {e}"))
        }
        _ => Err("indexed record is not an entry".into()),
    }
}

/// Splits a meta payload into key and value.
pub fn decode_meta(payload: &[u8]) -> Option<(&[u8], &[u8])> {
    let klen = u16::from_le_bytes([*payload.first()?, *payload.get(1)?]) as usize;
    let key = payload.get(2..2 + klen)?;
    Some((key, payload.get(2 + klen..)?))
}

/// Encodes a checkpoint payload from a stream's meta entries.
pub fn encode_checkpoint<'a>(meta: impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    for (k, v) in meta {
        out.extend_from_slice(&(k.len() as u16).to_le_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v);
    }
    out
}

/// Decodes a checkpoint payload into its meta entries.
pub fn decode_checkpoint(payload: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let count = le_u32(payload.get(0..4)?) as usize;
    let mut pos = 4;
    let mut out = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let klen = u16::from_le_bytes([*payload.get(pos)?, *payload.get(pos + 1)?]) as usize;
        pos += 2;
        let key = payload.get(pos..pos + klen)?;
        pos += klen;
        let vlen = le_u32(payload.get(pos..pos + 4)?) as usize;
        pos += 4;
        let val = payload.get(pos..pos + vlen)?;
        pos += vlen;
        out.push((key, val));
    }
    (pos == payload.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_detects_flips() {
        let mut buf = Vec::new();
        let n = encode_record(&mut buf, RecordKind::Entry, StreamId(7), 42, &[b"hello"]);
        assert_eq!(n, buf.len());
        match decode_record(&buf, 0) {
            Decoded::Record(r) => {
                assert_eq!(
                    (r.kind, r.stream, r.index, r.payload),
                    (RecordKind::Entry, StreamId(7), 42, &b"hello"[..])
                );
            }
            other => panic!("expected a record, got {other:?}"),
        }
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x10;
            assert!(
                !matches!(decode_record(&bad, 0), Decoded::Record(_)),
                "flip at byte {i} went unnoticed"
            );
        }
        for cut in 1..buf.len() {
            assert!(matches!(
                decode_record(&buf[..cut], 0),
                Decoded::Incomplete | Decoded::End | Decoded::Bad(_)
            ));
        }
    }

    #[test]
    fn header_checks() {
        let h = encode_segment_header(9);
        assert_eq!(check_segment_header(&h, 9), Ok(()));
        assert_eq!(check_segment_header(&h, 8), Err(HeaderError::WrongSeq(9)));
        let mut bad = h;
        bad[13] ^= 1;
        assert!(matches!(
            check_segment_header(&bad, 9),
            Err(HeaderError::Damaged(_))
        ));
        // Version 1 segments (before Reset) still read; a future one not.
        let with_version = |v: u16| {
            let mut h = h;
            h[8..10].copy_from_slice(&v.to_le_bytes());
            let crc = crc32fast::hash(&h[0..28]);
            h[28..32].copy_from_slice(&crc.to_le_bytes());
            h
        };
        assert_eq!(check_segment_header(&with_version(1), 9), Ok(()));
        assert_eq!(
            check_segment_header(&with_version(3), 9),
            Err(HeaderError::Version(3))
        );
    }

    #[test]
    fn checkpoint_round_trips() {
        let meta: Vec<(&[u8], &[u8])> = vec![(b"vote", b"xyz"), (b"", b"")];
        let enc = encode_checkpoint(meta.iter().copied());
        assert_eq!(decode_checkpoint(&enc), Some(meta));
        assert_eq!(decode_checkpoint(&enc[..enc.len() - 1]), None);
    }
}
