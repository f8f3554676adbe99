//! Write batches: the unit of atomicity. A batch is applied under one
//! contiguous range of sequence numbers and published at once, so a reader
//! sees all of it or none of it.
//!
//! ## Encoding (the payload of one log entry, for the standalone `Db`)
//!
//! ```text
//! version u8 = 1
//! count   u32 LE
//! count × ( kind u8 (1 = put, 2 = delete)
//!           key_len varint, key
//!           [value_len varint, value]   -- puts only )
//! ```
//!
//! The log frames and checksums the whole entry.

use crate::lsm::varint;

/// One operation of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Remove `key` (a tombstone until compaction drops it).
    Delete {
        /// The key.
        key: Vec<u8>,
    },
}

impl BatchOp {
    /// The key the operation touches.
    pub fn key(&self) -> &[u8] {
        match self {
            BatchOp::Put { key, .. } | BatchOp::Delete { key } => key,
        }
    }
}

/// An atomic group of puts and deletes, applied in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<BatchOp>,
}

const BATCH_VERSION: u8 = 1;

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(BatchOp::Put {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    /// Adds a delete.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(BatchOp::Delete { key: key.into() });
        self
    }

    /// The operations, in order.
    pub fn ops(&self) -> &[BatchOp] {
        &self.ops
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Approximate memory the batch occupies once applied.
    pub fn approximate_size(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                BatchOp::Put { key, value } => key.len() + value.len() + 16,
                BatchOp::Delete { key } => key.len() + 16,
            })
            .sum()
    }

    /// Encodes the batch (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + self.approximate_size());
        out.push(BATCH_VERSION);
        out.extend_from_slice(&(self.ops.len() as u32).to_le_bytes());
        for op in &self.ops {
            match op {
                BatchOp::Put { key, value } => {
                    out.push(1);
                    varint::put(&mut out, key.len() as u64);
                    out.extend_from_slice(key);
                    varint::put(&mut out, value.len() as u64);
                    out.extend_from_slice(value);
                }
                BatchOp::Delete { key } => {
                    out.push(2);
                    varint::put(&mut out, key.len() as u64);
                    out.extend_from_slice(key);
                }
            }
        }
        out
    }

    /// Decodes a batch; `None` if the bytes are not one.
    pub fn decode(bytes: &[u8]) -> Option<WriteBatch> {
        let (&version, rest) = bytes.split_first()?;
        if version != BATCH_VERSION {
            return None;
        }
        let count = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let mut pos = 4;
        let mut ops = Vec::with_capacity(count.min(1 << 16));
        let take = |pos: &mut usize| -> Option<Vec<u8>> {
            let len = varint::get(rest, pos)? as usize;
            let v = rest.get(*pos..pos.checked_add(len)?)?.to_vec();
            *pos += len;
            Some(v)
        };
        for _ in 0..count {
            let kind = *rest.get(pos)?;
            pos += 1;
            let key = take(&mut pos)?;
            ops.push(match kind {
                1 => BatchOp::Put {
                    key,
                    value: take(&mut pos)?,
                },
                2 => BatchOp::Delete { key },
                _ => return None,
            });
        }
        (pos == rest.len()).then_some(WriteBatch { ops })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut b = WriteBatch::new();
        b.put(b"k1".to_vec(), b"v1".to_vec())
            .delete(b"k2".to_vec())
            .put(vec![0u8; 300], vec![7u8; 200]);
        let enc = b.encode();
        assert_eq!(WriteBatch::decode(&enc), Some(b));
        assert_eq!(WriteBatch::decode(&enc[..enc.len() - 1]), None);
        let mut bad = enc.clone();
        bad[0] = 9;
        assert_eq!(WriteBatch::decode(&bad), None);
    }
}
