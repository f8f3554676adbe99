//! The read path: cursors over every source (memtables, level-0 tables,
//! each deeper level as one run), merged by key, with shadowed versions and
//! tombstones hidden at a snapshot.
//!
//! ```text
//!  get(key)   memtable → immutables (newest first) → L0 (newest first, bloom)
//!             → L1.. (one table per level by key range, bloom); first hit wins
//!  scan(range, dir)  a cursor per source ─► merge by key ─► per key, the newest
//!             version ≤ snapshot; skip tombstones and expired values
//! ```
//!
//! Readers take no lock while reading: they hold `Arc`s of the memtables and
//! of the version, which keep the skiplists and table files alive.

use std::cmp::Ordering;
use std::sync::Arc;

use crate::error::Result;
use crate::lsm::blob::BlobRef;
use crate::lsm::memtable::{Entry, Memtable};
use crate::lsm::table::block::DecodedBlock;
use crate::lsm::table::internal_cmp;
use crate::lsm::table::reader::Table;
use crate::lsm::version::TableFile;
use crate::lsm::SeqNo;

/// Scan direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Ascending keys.
    Forward,
    /// Descending keys.
    Reverse,
}

/// One stored version: key, sequence number, value (`None`: tombstone).
pub(crate) type Item<'a> = (&'a [u8], u64, Option<&'a [u8]>);

/// A position in one sorted source.
pub(crate) trait Cursor {
    fn current(&self) -> Option<Item<'_>>;
    fn advance(&mut self) -> Result<()>;
    /// In a raw cursor (compaction's), when the current value is a blob
    /// reference's bytes: the table holding it, which resolves it.
    fn current_blob_table(&self) -> Option<&Table> {
        None
    }
}

/// A cursor over one memtable, within `[lo, hi)`. A version the memtable
/// holds as a blob reference is resolved (read and checked) when the
/// cursor lands on it, as [`RunCursor`] does, so [`Cursor::current`]
/// hands out the value.
pub(crate) struct MemCursor<'a> {
    mem: &'a Memtable,
    cur: Option<Entry<'a>>,
    lo: Vec<u8>,
    hi: Option<Vec<u8>>,
    dir: Direction,
    /// The current entry's value when it is a blob reference.
    resolved: Option<bytes::Bytes>,
}

impl<'a> MemCursor<'a> {
    pub fn new(mem: &'a Memtable, lo: &[u8], hi: Option<&[u8]>, dir: Direction) -> Result<Self> {
        let newest = SeqNo(u64::MAX);
        let cur = match (dir, hi) {
            (Direction::Forward, _) => mem.seek(lo, newest),
            // Before every version of `hi`.
            (Direction::Reverse, Some(h)) => mem.seek_before(h, newest),
            (Direction::Reverse, None) => mem.last(),
        };
        let mut c = MemCursor {
            mem,
            cur,
            lo: lo.to_vec(),
            hi: hi.map(<[u8]>::to_vec),
            dir,
            resolved: None,
        };
        c.land()?;
        Ok(c)
    }

    /// Ends the cursor once it leaves `[lo, hi)`; resolves the value of
    /// the entry it is on if that is a blob reference.
    fn land(&mut self) -> Result<()> {
        self.resolved = None;
        let Some(e) = self.cur else { return Ok(()) };
        let outside = match self.dir {
            Direction::Forward => self.hi.as_deref().is_some_and(|h| e.key() >= h),
            Direction::Reverse => e.key() < self.lo.as_slice(),
        };
        if outside {
            self.cur = None;
        } else if e.is_blob_ref() {
            if let Some(v) = e.value() {
                self.resolved = Some(self.mem.resolve(v)?);
            }
        }
        Ok(())
    }
}

impl Cursor for MemCursor<'_> {
    fn current(&self) -> Option<Item<'_>> {
        let e = self.cur.as_ref()?;
        let value = match &self.resolved {
            Some(v) => Some(v.as_ref()),
            None => e.value(),
        };
        Some((e.key(), e.seq(), value))
    }

    fn advance(&mut self) -> Result<()> {
        self.cur = match (self.dir, self.cur) {
            (_, None) => None,
            (Direction::Forward, Some(e)) => e.next(),
            // A singly linked list: the previous version is found by a
            // search (as crossbeam's `next_back` did).
            (Direction::Reverse, Some(e)) => self.mem.seek_before(e.key(), SeqNo(e.seq())),
        };
        self.land()
    }
}

/// A cursor over a run of tables that do not overlap, in key order (one
/// level ≥ 1, or a single level-0 table), within `[lo, hi)`.
///
/// A value kept in a blob file is read (and its checksum checked) when the
/// cursor lands on it, so [`Cursor::current`] hands out the value itself;
/// a raw cursor ([`RunCursor::raw`], compaction's) hands out the
/// reference instead and never reads the blob.
pub(crate) struct RunCursor {
    tables: Vec<Arc<TableFile>>,
    lo: Vec<u8>,
    hi: Option<Vec<u8>>,
    dir: Direction,
    /// (table, block, entry) of the current position.
    pos: Option<(usize, usize, usize)>,
    block: Option<Arc<DecodedBlock>>,
    /// Hand out blob references rather than the values.
    raw: bool,
    /// The current entry's blob reference, read and checked.
    resolved: Option<BlobRef>,
}

impl RunCursor {
    pub fn new(
        tables: Vec<Arc<TableFile>>,
        lo: &[u8],
        hi: Option<&[u8]>,
        dir: Direction,
    ) -> Result<Self> {
        let mut c = RunCursor {
            tables,
            lo: lo.to_vec(),
            hi: hi.map(<[u8]>::to_vec),
            dir,
            pos: None,
            block: None,
            raw: false,
            resolved: None,
        };
        c.seek()?;
        c.resolve()?;
        Ok(c)
    }

    /// A forward cursor over the entries in `[lo, hi)` that hands out blob
    /// references unread (for compaction, which moves them).
    pub fn raw(tables: Vec<Arc<TableFile>>, lo: &[u8], hi: Option<&[u8]>) -> Result<Self> {
        let mut c = RunCursor {
            tables,
            lo: lo.to_vec(),
            hi: hi.map(<[u8]>::to_vec),
            dir: Direction::Forward,
            pos: None,
            block: None,
            raw: true,
            resolved: None,
        };
        c.seek()?;
        Ok(c)
    }

    /// Reads and checks the blob value of the current entry, if it has one
    /// and is in range.
    fn resolve(&mut self) -> Result<()> {
        self.resolved = None;
        if self.raw {
            return Ok(());
        }
        let (Some((t, _, i)), Some(blk)) = (self.pos, self.block.as_ref()) else {
            return Ok(());
        };
        if !blk.is_blob(i) || self.current().is_none() {
            return Ok(());
        }
        let Some(bytes) = blk.value(i) else {
            return Ok(());
        };
        let table = &self.tables[t].table;
        table.resolve(bytes)?;
        self.resolved = BlobRef::decode(bytes);
        Ok(())
    }

    fn load(&mut self, t: usize, b: usize) -> Result<()> {
        self.block = Some(self.tables[t].table.block(b)?);
        Ok(())
    }

    fn seek(&mut self) -> Result<()> {
        match self.dir {
            Direction::Forward => {
                let lo = self.lo.clone();
                // A run's tables are sorted and disjoint: binary search.
                let t = self
                    .tables
                    .partition_point(|f| f.meta.largest.as_slice() < lo.as_slice());
                if t == self.tables.len() {
                    return Ok(());
                }
                let table = &self.tables[t].table;
                let b = table.find_block(&lo, u64::MAX);
                if b >= table.index.len() {
                    return Ok(());
                }
                self.load(t, b)?;
                let i = self.block.as_ref().map_or(0, |blk| blk.seek_key(&lo));
                self.pos = Some((t, b, i));
                self.settle_forward()
            }
            Direction::Reverse => {
                let hi = self.hi.clone();
                let below_hi = |k: &[u8]| hi.as_deref().is_none_or(|h| k < h);
                let Some(t) = self
                    .tables
                    .partition_point(|f| below_hi(&f.meta.smallest))
                    .checked_sub(1)
                else {
                    return Ok(());
                };
                let table = &self.tables[t].table;
                let nblocks = table.index.len();
                if nblocks == 0 {
                    return Ok(());
                }
                let b = match &hi {
                    Some(h) => table.find_block(h, u64::MAX).min(nblocks - 1),
                    None => nblocks - 1,
                };
                self.load(t, b)?;
                let blk = self.block.as_ref().map(Arc::clone);
                let first_not_below = match (&blk, &hi) {
                    (Some(blk), Some(h)) => blk.seek_key(h),
                    (Some(blk), None) => blk.len(),
                    (None, _) => 0,
                };
                self.pos = Some((t, b, first_not_below));
                self.step_back()
            }
        }
    }

    /// Moves forward past block and table ends until on an entry (or done).
    fn settle_forward(&mut self) -> Result<()> {
        while let Some((t, b, i)) = self.pos {
            let len = self.block.as_ref().map_or(0, |blk| blk.len());
            if i < len {
                return Ok(());
            }
            let nblocks = self.tables[t].table.index.len();
            if b + 1 < nblocks {
                self.load(t, b + 1)?;
                self.pos = Some((t, b + 1, 0));
            } else if t + 1 < self.tables.len() {
                self.load(t + 1, 0)?;
                self.pos = Some((t + 1, 0, 0));
            } else {
                self.pos = None;
                self.block = None;
            }
        }
        Ok(())
    }

    /// Moves to the entry before the current position.
    fn step_back(&mut self) -> Result<()> {
        while let Some((t, b, i)) = self.pos {
            if i > 0 {
                self.pos = Some((t, b, i - 1));
                return Ok(());
            }
            if b > 0 {
                self.load(t, b - 1)?;
                let len = self.block.as_ref().map_or(0, |blk| blk.len());
                self.pos = Some((t, b - 1, len));
            } else if t > 0 {
                let nb = self.tables[t - 1].table.index.len();
                if nb == 0 {
                    self.pos = Some((t - 1, 0, 0));
                    continue;
                }
                self.load(t - 1, nb - 1)?;
                let len = self.block.as_ref().map_or(0, |blk| blk.len());
                self.pos = Some((t - 1, nb - 1, len));
            } else {
                self.pos = None;
                self.block = None;
            }
        }
        Ok(())
    }
}

impl Cursor for RunCursor {
    fn current(&self) -> Option<Item<'_>> {
        let (t, _, i) = self.pos?;
        let blk = self.block.as_ref()?;
        let key = blk.key(i);
        let inside = match self.dir {
            Direction::Forward => self.hi.as_deref().is_none_or(|h| key < h),
            Direction::Reverse => key >= self.lo.as_slice(),
        };
        if !inside {
            return None;
        }
        let value = match (blk.is_blob(i) && !self.raw, &self.resolved) {
            (false, _) => blk.value(i),
            // Checked when the cursor landed here (`resolve`).
            (true, Some(r)) => self.tables[t].table.blob_slice(r),
            (true, None) => None,
        };
        Some((key, blk.seq(i), value))
    }

    fn advance(&mut self) -> Result<()> {
        match (self.dir, self.pos) {
            (Direction::Forward, Some((t, b, i))) => {
                self.pos = Some((t, b, i + 1));
                self.settle_forward()?;
            }
            (Direction::Reverse, Some(_)) => self.step_back()?,
            (_, None) => {}
        }
        self.resolve()
    }

    fn current_blob_table(&self) -> Option<&Table> {
        let (t, _, i) = self.pos?;
        (self.raw && self.block.as_ref()?.is_blob(i)).then(|| &self.tables[t].table)
    }
}

/// Cursors merged forward in internal order through a binary min-heap of
/// their indexes: what a compaction merges (every level-0 table and the
/// run below, a dozen sources under a sustained ingest). Choosing the next
/// entry by asking every cursor ([`next_cursor`]) costs a comparison and a
/// decode per source per entry; the heap asks two children per level, and
/// while one source keeps the smallest keys (a conversation's older
/// messages in the run below follow its newer ones in level 0) only two.
pub(crate) struct ForwardMerge<'a> {
    cursors: Vec<Box<dyn Cursor + 'a>>,
    /// Indexes of the cursors not exhausted; `heap[0]` holds the smallest
    /// entry, each parent an entry smaller than its children's.
    heap: Vec<usize>,
}

impl<'a> ForwardMerge<'a> {
    /// Merges `cursors`, each positioned at its first entry.
    pub fn new(cursors: Vec<Box<dyn Cursor + 'a>>) -> Self {
        let heap = (0..cursors.len())
            .filter(|&i| cursors[i].current().is_some())
            .collect();
        let mut merge = ForwardMerge { cursors, heap };
        for pos in (0..merge.heap.len() / 2).rev() {
            merge.sift_down(pos);
        }
        merge
    }

    /// The cursor holding the smallest entry, `None` once all are exhausted.
    pub fn top(&self) -> Option<&(dyn Cursor + 'a)> {
        self.heap.first().map(|&i| self.cursors[i].as_ref())
    }

    /// Moves past the smallest entry.
    pub fn advance(&mut self) -> Result<()> {
        let Some(&i) = self.heap.first() else {
            return Ok(());
        };
        self.cursors[i].advance()?;
        if self.cursors[i].current().is_none() {
            self.heap.swap_remove(0);
        }
        self.sift_down(0);
        Ok(())
    }

    /// Whether cursor `a`'s entry orders before cursor `b`'s (an exhausted
    /// cursor orders last; the heap holds none).
    fn less(&self, a: usize, b: usize) -> bool {
        match (self.cursors[a].current(), self.cursors[b].current()) {
            (Some((ka, sa, _)), Some((kb, sb, _))) => {
                internal_cmp(ka, sa, kb, sb) == Ordering::Less
            }
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    fn sift_down(&mut self, mut pos: usize) {
        let n = self.heap.len();
        loop {
            let left = 2 * pos + 1;
            if left >= n {
                return;
            }
            let right = left + 1;
            let child = if right < n && self.less(self.heap[right], self.heap[left]) {
                right
            } else {
                left
            };
            if !self.less(self.heap[child], self.heap[pos]) {
                return;
            }
            self.heap.swap(pos, child);
            pos = child;
        }
    }
}

/// The index of the cursor holding the next entry: smallest in internal
/// order going forward, largest key going backward.
pub(crate) fn next_cursor(cursors: &[Box<dyn Cursor + '_>], dir: Direction) -> Option<usize> {
    let mut best: Option<(usize, &[u8], u64)> = None;
    for (i, c) in cursors.iter().enumerate() {
        let Some((k, s, _)) = c.current() else {
            continue;
        };
        let better = match best {
            None => true,
            Some((_, bk, bs)) => match dir {
                Direction::Forward => internal_cmp(k, s, bk, bs) == Ordering::Less,
                Direction::Reverse => k > bk,
            },
        };
        if better {
            best = Some((i, k, s));
        }
    }
    best.map(|(i, _, _)| i)
}

/// Walks merged cursors key by key, calling `emit(key, value)` for the
/// newest version ≤ `snapshot` of each key when it is a value that `keep`
/// accepts, until `emit` returns false.
pub(crate) fn merge_visible(
    cursors: &mut [Box<dyn Cursor + '_>],
    dir: Direction,
    snapshot: u64,
    keep: &dyn Fn(&[u8], &[u8]) -> bool,
    emit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> Result<()> {
    let mut live = cursors
        .iter()
        .enumerate()
        .filter(|(_, c)| c.current().is_some())
        .map(|(i, _)| i);
    // Going backward a key's versions come oldest first: merge as usual.
    if let (Direction::Forward, Some(only), None) = (dir, live.next(), live.next()) {
        return single_visible(cursors[only].as_mut(), snapshot, keep, emit);
    }
    let mut key = Vec::new();
    let mut best_val: Vec<u8> = Vec::new();
    while let Some(first) = next_cursor(cursors, dir) {
        key.clear();
        if let Some((k, _, _)) = cursors[first].current() {
            key.extend_from_slice(k);
        }
        // Gather every version of `key` from every cursor.
        let mut best: Option<(u64, bool)> = None; // (seq, is_value)
        for c in cursors.iter_mut() {
            while let Some((k, s, v)) = c.current() {
                if k != key.as_slice() {
                    break;
                }
                if s <= snapshot && best.is_none_or(|(bs, _)| s > bs) {
                    best_val.clear();
                    if let Some(v) = v {
                        best_val.extend_from_slice(v);
                    }
                    best = Some((s, v.is_some()));
                }
                c.advance()?;
            }
        }
        if let Some((_, true)) = best {
            if keep(&key, &best_val) && !emit(&key, &best_val) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// [`merge_visible`] going forward when one source holds the whole range
/// (the common case once compaction has run): its versions of a key are
/// adjacent, newest first, so the first one at or below the snapshot decides the key, and
/// values go to `emit` straight from the block or memtable, uncopied.
fn single_visible(
    c: &mut (dyn Cursor + '_),
    snapshot: u64,
    keep: &dyn Fn(&[u8], &[u8]) -> bool,
    emit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> Result<()> {
    let mut decided: Vec<u8> = Vec::new();
    let mut have_decided = false;
    while let Some((k, s, v)) = c.current() {
        if (have_decided && k == decided.as_slice()) || s > snapshot {
            c.advance()?;
            continue;
        }
        decided.clear();
        decided.extend_from_slice(k);
        have_decided = true;
        if let Some(v) = v {
            if keep(k, v) && !emit(k, v) {
                return Ok(());
            }
        }
        c.advance()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    type Owned = (Vec<u8>, u64, Option<Vec<u8>>);

    /// A sorted source held in memory.
    struct VecCursor {
        items: Vec<Owned>,
        at: usize,
    }

    impl Cursor for VecCursor {
        fn current(&self) -> Option<Item<'_>> {
            let (k, s, v) = self.items.get(self.at)?;
            Some((k.as_slice(), *s, v.as_deref()))
        }

        fn advance(&mut self) -> Result<()> {
            self.at += 1;
            Ok(())
        }
    }

    /// Sources of random sizes (some empty), keys colliding across them:
    /// the heap yields every entry once, in internal order (key ascending,
    /// newest first), as asking every cursor does.
    #[test]
    fn forward_merge_yields_internal_order_across_sources() {
        let mut rng = fastrand::Rng::with_seed(7);
        for round in 0..50 {
            let mut seq = 0u64;
            let mut all: Vec<Owned> = Vec::new();
            let mut sources: Vec<Vec<Owned>> = Vec::new();
            for _ in 0..rng.usize(1..12) {
                let mut items: Vec<Owned> = (0..rng.usize(0..200))
                    .map(|_| {
                        seq += 1;
                        let key = rng.u16(0..300).to_be_bytes().to_vec();
                        let value = rng.bool().then(|| seq.to_le_bytes().to_vec());
                        (key, seq, value)
                    })
                    .collect();
                items.sort_by(|a, b| internal_cmp(&a.0, a.1, &b.0, b.1));
                all.extend(items.iter().cloned());
                sources.push(items);
            }
            all.sort_by(|a, b| internal_cmp(&a.0, a.1, &b.0, b.1));
            let cursors = || -> Vec<Box<dyn Cursor>> {
                sources
                    .iter()
                    .map(|items| {
                        Box::new(VecCursor {
                            items: items.clone(),
                            at: 0,
                        }) as Box<dyn Cursor>
                    })
                    .collect()
            };
            let mut merged = ForwardMerge::new(cursors());
            let mut got: Vec<Owned> = Vec::new();
            while let Some(top) = merged.top() {
                let (k, s, v) = top.current().unwrap();
                got.push((k.to_vec(), s, v.map(<[u8]>::to_vec)));
                merged.advance().unwrap();
            }
            assert_eq!(got, all, "round {round}");
            // The same order as choosing by asking every cursor.
            let mut linear = cursors();
            let mut by_scan: Vec<Owned> = Vec::new();
            while let Some(i) = next_cursor(&linear, Direction::Forward) {
                let (k, s, v) = linear[i].current().unwrap();
                by_scan.push((k.to_vec(), s, v.map(<[u8]>::to_vec)));
                linear[i].advance().unwrap();
            }
            assert_eq!(got, by_scan, "round {round}");
        }
    }
}
