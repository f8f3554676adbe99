//! Data blocks: building one, and the decoded form readers keep in the
//! block cache.
//!
//! A decoded block holds its values in one buffer (for the columnar layout,
//! the uncompressed payload itself), its whole keys in another, and one
//! small record per entry — three allocations per block, however many
//! entries — so a cache hit costs no allocation and supports binary search
//! and iteration in both directions.

use std::cmp::Ordering;

use crate::lsm::table::internal_cmp;
use crate::lsm::varint;

/// The layout of a data block's payload, fixed per table by its format
/// version (see [`crate::lsm::table`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlockLayout {
    /// Table version 1: each entry's header, key suffix and value together.
    Interleaved,
    /// Table version 2: the headers' columns, then all key suffixes, then
    /// all values.
    Columnar,
    /// Table version 3: version 2's, and a block may carry the blob column
    /// (after the value lengths) naming the entries whose value is a blob
    /// reference.
    ColumnarBlobs,
}

/// Accumulates the entries of one block, in the columnar layout.
///
/// Why columns: interleaved, every entry's few header bytes (lengths, the
/// changing end of its timestamp, its sequence number) sit between two
/// values and LZ4 cannot match them; each column on its own is nearly
/// constant (a conversation's messages share 15 key bytes, the bottom
/// level's sequence numbers are all 0) and compresses to almost nothing,
/// and the values end up next to each other, where LZ4 finds more of the
/// words they share.
#[derive(Debug, Default)]
pub(crate) struct BlockBuilder {
    shared: Vec<u8>,
    unshared: Vec<u8>,
    seqs: Vec<u8>,
    value_lens: Vec<u8>,
    suffixes: Vec<u8>,
    values: Vec<u8>,
    /// Indices of the entries whose value is a blob reference.
    blobs: Vec<u32>,
    count: u32,
    last_key: Vec<u8>,
    last_seq: u64,
}

/// Bit 31 of a block's `count` word: the block has the blob column (table
/// version 3; see [`crate::lsm::table`]).
pub(crate) const BLOB_COLUMN_FLAG: u32 = 1 << 31;
/// Bit 31 of a decoded slot's `val_len`: the value is a blob reference.
const BLOB_BIT: u32 = 1 << 31;

impl BlockBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    #[cfg(test)]
    pub fn add(&mut self, key: &[u8], seq: u64, value: Option<&[u8]>) {
        self.add_entry(key, seq, value, false);
    }

    /// Adds a version whose value is a blob reference's bytes (`blob`) or
    /// the value itself.
    pub fn add_entry(&mut self, key: &[u8], seq: u64, value: Option<&[u8]>, blob: bool) {
        if blob && value.is_some() {
            self.blobs.push(self.count);
        }
        let shared = key
            .iter()
            .zip(&self.last_key)
            .take_while(|(a, b)| a == b)
            .count();
        varint::put(&mut self.shared, shared as u64);
        varint::put(&mut self.unshared, (key.len() - shared) as u64);
        varint::put(&mut self.seqs, seq);
        match value {
            Some(v) => {
                varint::put(&mut self.value_lens, v.len() as u64 + 1);
                self.values.extend_from_slice(v);
            }
            None => self.value_lens.push(0),
        }
        self.suffixes.extend_from_slice(&key[shared..]);
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        self.last_seq = seq;
        self.count += 1;
    }

    /// The payload's size if the block were finished now.
    pub fn raw_len(&self) -> usize {
        4 + self.blobs.len() * 2
            + self.shared.len()
            + self.unshared.len()
            + self.seqs.len()
            + self.value_lens.len()
            + self.suffixes.len()
            + self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn last(&self) -> (&[u8], u64) {
        (&self.last_key, self.last_seq)
    }

    /// The finished payload; resets the builder (keeping its buffers).
    pub fn take(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.raw_len() + 8);
        let flag = if self.blobs.is_empty() {
            0
        } else {
            BLOB_COLUMN_FLAG
        };
        out.extend_from_slice(&(self.count | flag).to_le_bytes());
        for col in [
            &mut self.shared,
            &mut self.unshared,
            &mut self.seqs,
            &mut self.value_lens,
        ] {
            out.extend_from_slice(col);
            col.clear();
        }
        if !self.blobs.is_empty() {
            // The blob column: how many, then each index as the distance
            // from the previous one.
            varint::put(&mut out, self.blobs.len() as u64);
            let mut prev = 0;
            for &i in &self.blobs {
                varint::put(&mut out, u64::from(i - prev));
                prev = i;
            }
            self.blobs.clear();
        }
        for col in [&mut self.suffixes, &mut self.values] {
            out.extend_from_slice(col);
            col.clear();
        }
        self.count = 0;
        self.last_key.clear();
        self.last_seq = 0;
        out
    }
}

/// A payload's entry count (its first four bytes, without the blob
/// column flag) and whether the flag is set.
fn block_count(payload: &[u8]) -> Result<(usize, bool), &'static str> {
    let count: [u8; 4] = payload
        .get(..4)
        .ok_or("block shorter than its count")?
        .try_into()
        .map_err(|_| "block count")?;
    let word = u32::from_le_bytes(count);
    Ok((
        (word & !BLOB_COLUMN_FLAG) as usize,
        word & BLOB_COLUMN_FLAG != 0,
    ))
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
///
/// A columnar block keeps its uncompressed payload as it came out of LZ4
/// and reads values in place (a cache miss copies no value); only the keys,
/// prefix-shared on disk, are rebuilt, into their own buffer.
#[derive(Debug)]
pub(crate) struct DecodedBlock {
    /// Where values are (`Slot::val_off`).
    values: Vec<u8>,
    /// The whole keys, one after another (`Slot::key_off`).
    keys: Vec<u8>,
    slots: Vec<Slot>,
}

impl DecodedBlock {
    /// Decodes an uncompressed payload of the given layout, keeping it as
    /// the values' buffer where the layout allows; `Err` names what is
    /// malformed.
    pub fn decode(payload: Vec<u8>, layout: BlockLayout) -> Result<DecodedBlock, &'static str> {
        match layout {
            BlockLayout::Interleaved => Self::decode_interleaved(&payload),
            BlockLayout::Columnar => Self::decode_columnar(payload, false),
            BlockLayout::ColumnarBlobs => Self::decode_columnar(payload, true),
        }
    }

    fn decode_columnar(
        payload: Vec<u8>,
        blobs_allowed: bool,
    ) -> Result<DecodedBlock, &'static str> {
        let (count, has_blobs) = block_count(&payload)?;
        if has_blobs && !blobs_allowed {
            return Err("blob column in a table whose version has none");
        }
        let bad = "malformed block column";
        let mut pos = 4;
        // The four header columns first, parked in the slots: shared in
        // key_off, unshared in key_len, the stored value length in val_len.
        let mut slots = vec![
            Slot {
                key_off: 0,
                key_len: 0,
                val_off: 0,
                val_len: 0,
                seq: 0,
            };
            count.min(payload.len())
        ];
        if slots.len() != count {
            return Err("block count larger than the block");
        }
        // Generic, not `&mut dyn FnMut`, so that each column's rule can be
        // inlined into its loop (measured: 1 % of a block's decode; the
        // out-of-line varint call was the cost, see `varint::get`).
        fn column(
            slots: &mut [Slot],
            payload: &[u8],
            pos: &mut usize,
            mut set: impl FnMut(&mut Slot, u64) -> Result<(), &'static str>,
        ) -> Result<(), &'static str> {
            for slot in slots.iter_mut() {
                set(
                    slot,
                    varint::get(payload, pos).ok_or("malformed block column")?,
                )?;
            }
            Ok(())
        }
        let small = |v: u64| u32::try_from(v).ok().filter(|&n| n < u32::MAX).ok_or(bad);
        let mut suffix_total = 0usize;
        let mut value_total = 0usize;
        let mut key_total = 0usize;
        column(&mut slots, &payload, &mut pos, |s, v| {
            s.key_off = small(v)?;
            key_total += s.key_off as usize;
            Ok(())
        })?;
        column(&mut slots, &payload, &mut pos, |s, v| {
            s.key_len = small(v)?;
            suffix_total += s.key_len as usize;
            Ok(())
        })?;
        column(&mut slots, &payload, &mut pos, |s, v| {
            s.seq = v;
            Ok(())
        })?;
        column(&mut slots, &payload, &mut pos, |s, v| {
            s.val_len = match v {
                0 => u32::MAX,
                n => small(n - 1)?,
            };
            if v != 0 && s.val_len >= BLOB_BIT - 1 {
                return Err("value longer than a block can hold");
            }
            value_total += if v == 0 { 0 } else { s.val_len as usize };
            Ok(())
        })?;
        if has_blobs {
            let n = varint::get(&payload, &mut pos).ok_or(bad)?;
            let mut at = 0u64;
            for k in 0..n {
                let d = varint::get(&payload, &mut pos).ok_or(bad)?;
                // Strictly increasing after the first.
                if k > 0 && d == 0 {
                    return Err("blob column indices out of order");
                }
                at = at.checked_add(d).ok_or(bad)?;
                let slot = usize::try_from(at)
                    .ok()
                    .and_then(|i| slots.get_mut(i))
                    .ok_or("blob column names an entry the block lacks")?;
                if slot.val_len == u32::MAX {
                    return Err("blob column names a tombstone");
                }
                slot.val_len |= BLOB_BIT;
            }
        }
        let mut suffix_at = pos;
        let mut value_at = pos.checked_add(suffix_total).ok_or(bad)?;
        if value_at.checked_add(value_total) != Some(payload.len()) {
            return Err("block columns do not add up to the block");
        }
        // A hint only: a corrupt column must not make us reserve gigabytes.
        let mut keys = Vec::with_capacity((key_total + suffix_total).min(payload.len() * 2));
        let mut prev: (usize, usize) = (0, 0);
        for s in slots.iter_mut() {
            let (shared, unshared) = (s.key_off as usize, s.key_len as usize);
            if shared > prev.1 {
                return Err("entry shares more bytes than the previous key has");
            }
            let key_off = keys.len();
            keys.extend_from_within(prev.0..prev.0 + shared);
            keys.extend_from_slice(&payload[suffix_at..suffix_at + unshared]);
            suffix_at += unshared;
            s.key_off = key_off as u32;
            s.key_len = (shared + unshared) as u32;
            s.val_off = value_at as u32;
            if s.val_len != u32::MAX {
                value_at += (s.val_len & !BLOB_BIT) as usize;
            }
            prev = (key_off, shared + unshared);
        }
        Ok(DecodedBlock {
            values: payload,
            keys,
            slots,
        })
    }

    fn decode_interleaved(payload: &[u8]) -> Result<DecodedBlock, &'static str> {
        let (count, has_blobs) = block_count(payload)?;
        if has_blobs {
            return Err("blob column in a version 1 table");
        }
        let mut pos = 4;
        let mut values = Vec::with_capacity(payload.len());
        let mut keys = Vec::with_capacity(count.min(payload.len()) * 16);
        let mut slots = Vec::with_capacity(count.min(payload.len()));
        let mut prev: (usize, usize) = (0, 0); // previous key in `keys`
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
            let key_off = keys.len();
            keys.extend_from_within(prev.0..prev.0 + shared);
            // Lengths come from the file: checked, never wrapped.
            let suffix = payload
                .get(pos..pos.checked_add(unshared).ok_or(bad)?)
                .ok_or(bad)?;
            keys.extend_from_slice(suffix);
            pos += unshared;
            let key_len = shared + unshared;
            let val_off = values.len();
            let stored_len = match val_len {
                Some(n) if n >= (BLOB_BIT - 1) as usize => {
                    return Err("value longer than a block can hold")
                }
                Some(n) => {
                    let value = payload.get(pos..pos.checked_add(n).ok_or(bad)?);
                    values.extend_from_slice(value.ok_or(bad)?);
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
        Ok(DecodedBlock {
            values,
            keys,
            slots,
        })
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn key(&self, i: usize) -> &[u8] {
        let s = &self.slots[i];
        &self.keys[s.key_off as usize..(s.key_off + s.key_len) as usize]
    }

    pub fn seq(&self, i: usize) -> u64 {
        self.slots[i].seq
    }

    /// The value, `None` for a tombstone; for a blob entry, the
    /// reference's bytes ([`DecodedBlock::is_blob`]).
    pub fn value(&self, i: usize) -> Option<&[u8]> {
        let s = &self.slots[i];
        let len = s.val_len & !BLOB_BIT;
        (s.val_len != u32::MAX)
            .then(|| &self.values[s.val_off as usize..(s.val_off + len) as usize])
    }

    /// Whether entry `i`'s value is a blob reference.
    pub fn is_blob(&self, i: usize) -> bool {
        let v = self.slots[i].val_len;
        v != u32::MAX && v & BLOB_BIT != 0
    }

    /// Index of the first entry at or after (key, seq) in internal order.
    pub fn seek(&self, key: &[u8], seq: u64) -> usize {
        self.slots.partition_point(|s| {
            let k = &self.keys[s.key_off as usize..(s.key_off + s.key_len) as usize];
            internal_cmp(k, s.seq, key, seq) == Ordering::Less
        })
    }

    /// Index of the first entry whose key is ≥ `key` (any sequence number).
    pub fn seek_key(&self, key: &[u8]) -> usize {
        self.seek(key, u64::MAX)
    }

    /// Bytes of memory held, for the block cache's weight.
    pub fn memory(&self) -> usize {
        self.values.capacity()
            + self.keys.capacity()
            + self.slots.capacity() * std::mem::size_of::<Slot>()
            + 64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entry `i` as (key, seq, value).
    fn entry(d: &DecodedBlock, i: usize) -> (&[u8], u64, Option<&[u8]>) {
        (d.key(i), d.seq(i), d.value(i))
    }

    #[test]
    fn build_decode_seek() {
        let mut b = BlockBuilder::new();
        b.add(b"apple", 9, Some(b"red"));
        b.add(b"apple", 3, None);
        b.add(b"apricot", 5, Some(b""));
        b.add(b"banana", 1, Some(b"yellow"));
        let payload = b.take();
        assert_eq!(b.raw_len(), 4, "take empties the builder");
        let d = DecodedBlock::decode(payload.clone(), BlockLayout::Columnar).unwrap();
        assert_eq!(d.len(), 4);
        assert_eq!(entry(&d, 0), (&b"apple"[..], 9, Some(&b"red"[..])));
        assert_eq!(entry(&d, 1), (&b"apple"[..], 3, None));
        assert_eq!(entry(&d, 2), (&b"apricot"[..], 5, Some(&b""[..])));
        assert_eq!(entry(&d, 3), (&b"banana"[..], 1, Some(&b"yellow"[..])));
        assert_eq!(d.seek(b"apple", 5), 1);
        assert_eq!(d.seek_key(b"apricot"), 2);
        assert_eq!(d.seek_key(b"zzz"), 4);
        for cut in 0..payload.len() {
            assert!(DecodedBlock::decode(payload[..cut].to_vec(), BlockLayout::Columnar).is_err());
        }
        // The builder starts afresh after take: the next block's first key
        // shares nothing.
        b.add(b"cherry", 2, Some(b"dark"));
        let d = DecodedBlock::decode(b.take(), BlockLayout::Columnar).unwrap();
        assert_eq!(entry(&d, 0), (&b"cherry"[..], 2, Some(&b"dark"[..])));
    }

    /// A version 3 block marks its blob entries in its own column; a block
    /// without any is byte for byte a version 2 block.
    #[test]
    fn blob_column_marks_references_and_only_where_allowed() {
        let mut b = BlockBuilder::new();
        b.add_entry(b"a", 4, Some(b"inline"), false);
        b.add_entry(b"b", 3, Some(b"ref-b"), true);
        b.add_entry(b"c", 2, None, false);
        b.add_entry(b"d", 1, Some(b"ref-d"), true);
        let payload = b.take();
        assert_eq!(payload[3] & 0x80, 0x80, "count carries the flag");
        let d = DecodedBlock::decode(payload.clone(), BlockLayout::ColumnarBlobs).unwrap();
        assert_eq!(d.len(), 4);
        let blobs: Vec<bool> = (0..4).map(|i| d.is_blob(i)).collect();
        assert_eq!(blobs, [false, true, false, true]);
        assert_eq!(entry(&d, 1), (&b"b"[..], 3, Some(&b"ref-b"[..])));
        assert_eq!(entry(&d, 2), (&b"c"[..], 2, None));
        assert_eq!(entry(&d, 3), (&b"d"[..], 1, Some(&b"ref-d"[..])));
        // A version 2 table never holds one.
        assert!(DecodedBlock::decode(payload.clone(), BlockLayout::Columnar).is_err());
        for cut in 0..payload.len() {
            assert!(
                DecodedBlock::decode(payload[..cut].to_vec(), BlockLayout::ColumnarBlobs).is_err()
            );
        }
        b.add_entry(b"a", 4, Some(b"inline"), false);
        let plain = b.take();
        let mut v2 = BlockBuilder::new();
        v2.add(b"a", 4, Some(b"inline"));
        assert_eq!(plain, v2.take());
        let d = DecodedBlock::decode(plain, BlockLayout::ColumnarBlobs).unwrap();
        assert!(!d.is_blob(0));
    }

    /// Tables written before version 2 keep their interleaved blocks.
    #[test]
    fn decodes_version_1_blocks() {
        #[rustfmt::skip]
        let payload = [
            3, 0, 0, 0,
            0, 5, 9, 1, 3, b'a', b'p', b'p', b'l', b'e', b'r', b'e', b'd', // apple@9 = red
            5, 0, 3, 0,                                                    // apple@3 deleted
            2, 5, 5, 1, 1, b'r', b'i', b'c', b'o', b't', b'x',             // apricot@5 = x
        ];
        let d = DecodedBlock::decode(payload.to_vec(), BlockLayout::Interleaved).unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!(entry(&d, 0), (&b"apple"[..], 9, Some(&b"red"[..])));
        assert_eq!(entry(&d, 1), (&b"apple"[..], 3, None));
        assert_eq!(entry(&d, 2), (&b"apricot"[..], 5, Some(&b"x"[..])));
        assert!(DecodedBlock::decode(payload.to_vec(), BlockLayout::Columnar).is_err());
    }

    /// Headers that promise more than the block holds are refused, not
    /// read past.
    #[test]
    fn columns_that_do_not_add_up_are_refused() {
        let mut b = BlockBuilder::new();
        b.add(b"key", 1, Some(b"value"));
        let good = b.take();
        // count 1, shared 0, unshared 3, seq 1, value_len 5 + 1
        assert_eq!(&good[..8], &[1, 0, 0, 0, 0, 3, 1, 6]);
        let mut longer_value = good.clone();
        longer_value[7] = 7;
        assert!(DecodedBlock::decode(longer_value, BlockLayout::Columnar).is_err());
        let mut shares_too_much = good.clone();
        shares_too_much[4] = 1;
        assert!(DecodedBlock::decode(shares_too_much, BlockLayout::Columnar).is_err());
        let mut more_entries = good;
        more_entries[0] = 2;
        assert!(DecodedBlock::decode(more_entries, BlockLayout::Columnar).is_err());
    }

    proptest::proptest! {
        /// Whatever goes in comes out: keys sharing prefixes of every
        /// length, repeated keys (several versions), tombstones, empty and
        /// long values, large sequence numbers.
        #[test]
        fn columnar_round_trip(
            mut entries in proptest::collection::vec(
                (
                    proptest::collection::vec(0u8..3, 0..20),
                    proptest::num::u64::ANY,
                    proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..300)),
                ),
                1..200,
            )
        ) {
            entries.sort_by(|a, b| internal_cmp(&a.0, a.1, &b.0, b.1));
            entries.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
            let mut b = BlockBuilder::new();
            for (k, seq, v) in &entries {
                b.add(k, *seq, v.as_deref());
            }
            let raw_len = b.raw_len();
            let payload = b.take();
            proptest::prop_assert_eq!(payload.len(), raw_len);
            let d = DecodedBlock::decode(payload, BlockLayout::Columnar)
                .map_err(proptest::test_runner::TestCaseError::fail)?;
            proptest::prop_assert_eq!(d.len(), entries.len());
            for (i, (k, seq, v)) in entries.iter().enumerate() {
                proptest::prop_assert_eq!(d.key(i), &k[..]);
                proptest::prop_assert_eq!(d.seq(i), *seq);
                proptest::prop_assert_eq!(d.value(i), v.as_deref());
                proptest::prop_assert_eq!(d.seek(k, *seq), i);
            }
        }
    }
}
