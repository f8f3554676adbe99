//! Data blocks: building one, and the decoded form readers keep in the
//! block cache.
//!
//! A decoded block holds all its keys and values in one buffer plus one
//! small record per entry — two allocations per block, however many entries
//! — so a cache hit costs no allocation and supports binary search and
//! iteration in both directions.

use std::cmp::Ordering;

use crate::lsm::table::internal_cmp;
use crate::lsm::varint;

/// Accumulates the entries of one block.
#[derive(Debug, Default)]
pub(crate) struct BlockBuilder {
    buf: Vec<u8>,
    count: u32,
    last_key: Vec<u8>,
    last_seq: u64,
}

impl BlockBuilder {
    pub fn new() -> Self {
        let mut b = Self::default();
        b.buf.extend_from_slice(&0u32.to_le_bytes());
        b
    }

    pub fn add(&mut self, key: &[u8], seq: u64, value: Option<&[u8]>) {
        let shared = key
            .iter()
            .zip(&self.last_key)
            .take_while(|(a, b)| a == b)
            .count();
        varint::put(&mut self.buf, shared as u64);
        varint::put(&mut self.buf, (key.len() - shared) as u64);
        varint::put(&mut self.buf, seq);
        match value {
            Some(v) => {
                self.buf.push(1);
                varint::put(&mut self.buf, v.len() as u64);
                self.buf.extend_from_slice(&key[shared..]);
                self.buf.extend_from_slice(v);
            }
            None => {
                self.buf.push(0);
                self.buf.extend_from_slice(&key[shared..]);
            }
        }
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        self.last_seq = seq;
        self.count += 1;
    }

    pub fn raw_len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn last(&self) -> (&[u8], u64) {
        (&self.last_key, self.last_seq)
    }

    /// The finished payload (count filled in); resets the builder.
    pub fn take(&mut self) -> Vec<u8> {
        let count = self.count.to_le_bytes();
        self.buf[..4].copy_from_slice(&count);
        let out = std::mem::take(&mut self.buf);
        *self = Self::new();
        out
    }
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    key_off: u32,
    key_len: u32,
    val_off: u32,
    /// u32::MAX marks a tombstone.
    val_len: u32,
    seq: u64,
}

/// A decoded block.
#[derive(Debug)]
pub(crate) struct DecodedBlock {
    data: Vec<u8>,
    slots: Vec<Slot>,
}

impl DecodedBlock {
    /// Decodes an uncompressed payload; `Err` names what is malformed.
    pub fn decode(payload: &[u8]) -> Result<DecodedBlock, &'static str> {
        let count = u32::from_le_bytes(
            payload
                .get(..4)
                .ok_or("block shorter than its count")?
                .try_into()
                .map_err(|_| "block count")?,
        ) as usize;
        let mut pos = 4;
        let mut data = Vec::with_capacity(payload.len() + count * 12);
        let mut slots = Vec::with_capacity(count.min(payload.len()));
        let mut prev: (usize, usize) = (0, 0); // previous key in `data`
        for _ in 0..count {
            let bad = "malformed block entry";
            let shared = varint::get(payload, &mut pos).ok_or(bad)? as usize;
            let unshared = varint::get(payload, &mut pos).ok_or(bad)? as usize;
            let seq = varint::get(payload, &mut pos).ok_or(bad)?;
            let kind = *payload.get(pos).ok_or(bad)?;
            pos += 1;
            let val_len = match kind {
                1 => Some(varint::get(payload, &mut pos).ok_or(bad)? as usize),
                0 => None,
                _ => return Err("unknown entry kind in block"),
            };
            if shared > prev.1 {
                return Err("entry shares more bytes than the previous key has");
            }
            let key_off = data.len();
            data.extend_from_within(prev.0..prev.0 + shared);
            let suffix = payload.get(pos..pos + unshared).ok_or(bad)?;
            data.extend_from_slice(suffix);
            pos += unshared;
            let key_len = shared + unshared;
            let val_off = data.len();
            let stored_len = match val_len {
                Some(n) => {
                    data.extend_from_slice(payload.get(pos..pos + n).ok_or(bad)?);
                    pos += n;
                    n as u32
                }
                None => u32::MAX,
            };
            slots.push(Slot {
                key_off: key_off as u32,
                key_len: key_len as u32,
                val_off: val_off as u32,
                val_len: stored_len,
                seq,
            });
            prev = (key_off, key_len);
        }
        if pos != payload.len() {
            return Err("trailing bytes after the block's entries");
        }
        Ok(DecodedBlock { data, slots })
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn key(&self, i: usize) -> &[u8] {
        let s = &self.slots[i];
        &self.data[s.key_off as usize..(s.key_off + s.key_len) as usize]
    }

    pub fn seq(&self, i: usize) -> u64 {
        self.slots[i].seq
    }

    /// The value, `None` for a tombstone.
    pub fn value(&self, i: usize) -> Option<&[u8]> {
        let s = &self.slots[i];
        (s.val_len != u32::MAX)
            .then(|| &self.data[s.val_off as usize..(s.val_off + s.val_len) as usize])
    }

    /// Index of the first entry at or after (key, seq) in internal order.
    pub fn seek(&self, key: &[u8], seq: u64) -> usize {
        self.slots.partition_point(|s| {
            let k = &self.data[s.key_off as usize..(s.key_off + s.key_len) as usize];
            internal_cmp(k, s.seq, key, seq) == Ordering::Less
        })
    }

    /// Index of the first entry whose key is ≥ `key` (any sequence number).
    pub fn seek_key(&self, key: &[u8]) -> usize {
        self.seek(key, u64::MAX)
    }

    /// Bytes of memory held, for the block cache's weight.
    pub fn memory(&self) -> usize {
        self.data.capacity() + self.slots.capacity() * std::mem::size_of::<Slot>() + 64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_decode_seek() {
        let mut b = BlockBuilder::new();
        b.add(b"apple", 9, Some(b"red"));
        b.add(b"apple", 3, None);
        b.add(b"apricot", 5, Some(b""));
        b.add(b"banana", 1, Some(b"yellow"));
        let payload = b.take();
        let d = DecodedBlock::decode(&payload).unwrap();
        assert_eq!(d.len(), 4);
        assert_eq!((d.key(1), d.seq(1), d.value(1)), (&b"apple"[..], 3, None));
        assert_eq!(d.value(2), Some(&b""[..]));
        assert_eq!(d.key(3), b"banana");
        assert_eq!(d.seek(b"apple", 5), 1);
        assert_eq!(d.seek_key(b"apricot"), 2);
        assert_eq!(d.seek_key(b"zzz"), 4);
        for cut in 0..payload.len() {
            assert!(DecodedBlock::decode(&payload[..cut]).is_err());
        }
    }
}
