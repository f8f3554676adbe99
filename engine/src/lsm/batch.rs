//! Write batches: the unit of atomicity. A batch is applied under one
//! contiguous range of sequence numbers and published at once, so a reader
//! sees all of it or none of it.
//!
//! A batch is kept in its encoded form from the start (as RocksDB does): a
//! put appends its bytes to one buffer, the log stores that buffer as is,
//! and applying it walks the buffer. So a batch costs one growing
//! allocation, not two per operation, and `Db::write` copies nothing.
//!
//! ## Encoding (the payload of one log entry, for the standalone `Db`)
//!
//! ```text
//! version u8 = 1
//! count   u32 LE
//! count × ( kind u8 (1 = put, 2 = delete, 3 = put a blob reference)
//!           key_len varint, key
//!           [value_len varint, value]   -- puts only
//!           [BlobRef, 25 bytes]         -- blob puts only (`blob.rs`) )
//! ```
//!
//! Kind 3 came after the first release of this format; a build without it
//! refuses a batch holding one (`decode`: not a batch) rather than misread
//! it.
//!
//! The log frames and checksums the whole entry.

use crate::lsm::blob::{BlobRef, BLOB_REF_LEN};
use crate::lsm::varint;

/// One operation of a batch, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOp<'a> {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: &'a [u8],
        /// The value.
        value: &'a [u8],
    },
    /// Remove `key` (a tombstone until compaction drops it).
    Delete {
        /// The key.
        key: &'a [u8],
    },
    /// Set `key` to a value already written to one of the store's blob
    /// files ([`WriteBatch::put_blob_ref`]).
    PutBlobRef {
        /// The key.
        key: &'a [u8],
        /// Where the value is.
        blob: BlobRef,
    },
}

impl<'a> BatchOp<'a> {
    /// The key the operation touches.
    pub fn key(&self) -> &'a [u8] {
        match *self {
            BatchOp::Put { key, .. }
            | BatchOp::Delete { key }
            | BatchOp::PutBlobRef { key, .. } => key,
        }
    }
}

/// An atomic group of puts and deletes, applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteBatch {
    /// The encoding (see the module docs), header included.
    rep: Vec<u8>,
    count: u32,
    /// Whether any operation is a [`BatchOp::PutBlobRef`] (so that
    /// applying a batch without one does not look for them).
    blob_refs: bool,
}

const BATCH_VERSION: u8 = 1;
const HEADER: usize = 5;
const PUT: u8 = 1;
const DELETE: u8 = 2;
const PUT_BLOB_REF: u8 = 3;

impl Default for WriteBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        let mut rep = Vec::with_capacity(64);
        rep.push(BATCH_VERSION);
        rep.extend_from_slice(&0u32.to_le_bytes());
        WriteBatch {
            rep,
            count: 0,
            blob_refs: false,
        }
    }

    /// An empty batch with room for `bytes` of keys and values.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut b = Self::new();
        b.rep.reserve(bytes);
        b
    }

    fn bump(&mut self) {
        self.count += 1;
        self.rep[1..HEADER].copy_from_slice(&self.count.to_le_bytes());
    }

    /// Adds a put.
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> &mut Self {
        let (key, value) = (key.as_ref(), value.as_ref());
        self.rep.reserve(key.len() + value.len() + 11);
        self.rep.push(PUT);
        varint::put(&mut self.rep, key.len() as u64);
        self.rep.extend_from_slice(key);
        varint::put(&mut self.rep, value.len() as u64);
        self.rep.extend_from_slice(value);
        self.bump();
        self
    }

    /// Adds a put whose value is already in one of the store's blob files
    /// (`blob` names it): the store keeps the reference, and reads, flushes
    /// and compactions treat the value like one a flush separated. The
    /// file must be a finished blob file in the store's tables directory
    /// (`Lsm::apply` checks that the reference lies inside it). Written
    /// for a log that keeps large values in blob files of its own, so that
    /// their bytes are written once.
    pub fn put_blob_ref(&mut self, key: impl AsRef<[u8]>, blob: &BlobRef) -> &mut Self {
        let key = key.as_ref();
        self.rep.reserve(key.len() + BLOB_REF_LEN + 6);
        self.rep.push(PUT_BLOB_REF);
        varint::put(&mut self.rep, key.len() as u64);
        self.rep.extend_from_slice(key);
        self.rep.extend_from_slice(&blob.encode());
        self.blob_refs = true;
        self.bump();
        self
    }

    /// Adds a delete.
    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> &mut Self {
        let key = key.as_ref();
        self.rep.push(DELETE);
        varint::put(&mut self.rep, key.len() as u64);
        self.rep.extend_from_slice(key);
        self.bump();
        self
    }

    /// Removes every operation, keeping the buffer.
    pub fn clear(&mut self) {
        self.rep.truncate(HEADER);
        self.count = 0;
        self.blob_refs = false;
        self.rep[1..HEADER].copy_from_slice(&0u32.to_le_bytes());
    }

    /// The operations, in order.
    pub fn ops(&self) -> Ops<'_> {
        Ops {
            rest: &self.rep[HEADER..],
        }
    }

    /// Whether any operation is a blob reference
    /// ([`WriteBatch::put_blob_ref`]).
    pub fn has_blob_refs(&self) -> bool {
        self.blob_refs
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Approximate memory the batch occupies once applied.
    pub fn approximate_size(&self) -> usize {
        self.rep.len() + 16 * self.count as usize
    }

    /// The encoding (see the module docs): what the log stores.
    pub fn as_bytes(&self) -> &[u8] {
        &self.rep
    }

    /// Decodes a batch; `None` if the bytes are not one.
    pub fn decode(bytes: &[u8]) -> Option<WriteBatch> {
        let (&version, rest) = bytes.split_first()?;
        if version != BATCH_VERSION {
            return None;
        }
        let count = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?);
        let mut ops = Ops {
            rest: bytes.get(HEADER..)?,
        };
        let mut blob_refs = false;
        for _ in 0..count {
            blob_refs |= matches!(ops.parse()?, BatchOp::PutBlobRef { .. });
        }
        ops.rest.is_empty().then(|| WriteBatch {
            rep: bytes.to_vec(),
            count,
            blob_refs,
        })
    }
}

/// The operations of a batch, in order.
#[derive(Debug, Clone)]
pub struct Ops<'a> {
    rest: &'a [u8],
}

impl<'a> Ops<'a> {
    /// The next operation; `None` at the end or on bytes that are not one
    /// (only `decode` can meet those: it checks before a batch exists).
    fn parse(&mut self) -> Option<BatchOp<'a>> {
        let (&kind, rest) = self.rest.split_first()?;
        let mut pos = 0;
        let take = |pos: &mut usize| -> Option<&'a [u8]> {
            let len = usize::try_from(varint::get(rest, pos)?).ok()?;
            let v = rest.get(*pos..pos.checked_add(len)?)?;
            *pos += len;
            Some(v)
        };
        let key = take(&mut pos)?;
        let op = match kind {
            PUT => BatchOp::Put {
                key,
                value: take(&mut pos)?,
            },
            DELETE => BatchOp::Delete { key },
            PUT_BLOB_REF => {
                let b = rest.get(pos..pos.checked_add(BLOB_REF_LEN)?)?;
                pos += BLOB_REF_LEN;
                BatchOp::PutBlobRef {
                    key,
                    blob: BlobRef::decode(b)?,
                }
            }
            _ => return None,
        };
        self.rest = &rest[pos..];
        Some(op)
    }
}

impl<'a> Iterator for Ops<'a> {
    type Item = BatchOp<'a>;

    fn next(&mut self) -> Option<BatchOp<'a>> {
        self.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut b = WriteBatch::new();
        b.put(b"k1", b"v1")
            .delete(b"k2")
            .put(vec![0u8; 300], vec![7u8; 200]);
        let enc = b.as_bytes().to_vec();
        let d = WriteBatch::decode(&enc).unwrap();
        assert_eq!(d, b);
        let ops: Vec<_> = d.ops().collect();
        assert_eq!(ops.len(), 3);
        assert_eq!(
            ops[0],
            BatchOp::Put {
                key: b"k1",
                value: b"v1"
            }
        );
        assert_eq!(ops[1], BatchOp::Delete { key: b"k2" });
        assert_eq!(ops[2].key(), &[0u8; 300][..]);
        assert_eq!(WriteBatch::decode(&enc[..enc.len() - 1]), None);
        let mut bad = enc.clone();
        bad[0] = 9;
        assert_eq!(WriteBatch::decode(&bad), None);
        // A count that promises more than the bytes hold.
        let mut more = enc.clone();
        more[1] = 4;
        assert_eq!(WriteBatch::decode(&more), None);
        b.clear();
        assert!(b.is_empty());
        assert_eq!(b.ops().count(), 0);
        assert_eq!(WriteBatch::decode(b.as_bytes()), Some(b));
    }

    #[test]
    fn a_blob_reference_round_trips_and_a_cut_one_is_refused() {
        let blob = BlobRef {
            file: 42,
            offset: 4096,
            len: 1 << 20,
            crc: 0xdead_beef,
        };
        let mut b = WriteBatch::new();
        b.put(b"a", b"1").put_blob_ref(b"chunk", &blob).delete(b"z");
        let enc = b.as_bytes().to_vec();
        let d = WriteBatch::decode(&enc).unwrap();
        let ops: Vec<_> = d.ops().collect();
        assert_eq!(
            ops[1],
            BatchOp::PutBlobRef {
                key: b"chunk",
                blob
            }
        );
        assert_eq!(ops[1].key(), b"chunk");
        assert!(b.has_blob_refs() && d.has_blob_refs());
        b.clear();
        assert!(!b.has_blob_refs());
        assert_eq!(ops[2], BatchOp::Delete { key: b"z" });
        // Cut inside the reference, and a reference of another version.
        let at = enc.len() - 3 - BLOB_REF_LEN;
        let mut cut = enc[..at + 10].to_vec();
        cut[1] = 2;
        assert_eq!(WriteBatch::decode(&cut), None);
        let mut other = enc.clone();
        other[at] = 9;
        assert_eq!(WriteBatch::decode(&other), None);
    }
}
