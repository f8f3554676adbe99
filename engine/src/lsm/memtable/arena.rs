//! Bump allocation for one memtable's nodes.
//!
//! A memtable only grows until it is flushed and then goes away whole, so
//! its nodes never need freeing one by one: they are carved out of 1 MiB
//! chunks and the chunks are freed when the memtable drops. One allocation
//! per version was the writer's largest cost after the skiplist search
//! (malloc, the kernel zeroing fresh pages under it), and freeing half a
//! million of them after a flush was a tenth of the background thread.
//!
//! Invariants: a chunk never moves and is never freed before the arena
//! drops, so a pointer it handed out stays valid as long as the arena; every
//! allocation is 8-byte aligned and at most one chunk's size or its own
//! dedicated chunk.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::ptr::NonNull;

/// Bytes per ordinary chunk.
const CHUNK: usize = 1 << 20;
/// Allocations above this get a chunk of their own, so a large value never
/// wastes the tail of a shared chunk.
const OWN_CHUNK_ABOVE: usize = CHUNK / 4;
/// Alignment of every allocation (nodes hold `u64`s and atomic pointers).
pub(crate) const ALIGN: usize = 8;

/// A bump allocator over chunks that live until it drops.
#[derive(Debug)]
pub(crate) struct Arena {
    /// Every chunk, for freeing on drop.
    chunks: Vec<(NonNull<u8>, Layout)>,
    /// Start of the chunk being carved, if any.
    cur: Option<NonNull<u8>>,
    /// Bytes used and available in it.
    used: usize,
    cap: usize,
    /// Bytes reserved from the system (chunks), for size accounting.
    reserved: usize,
}

// SAFETY: the arena owns its chunks outright (raw allocations no one else
// frees); moving it to another thread moves that ownership.
unsafe impl Send for Arena {}

impl Arena {
    /// An empty arena: the first allocation reserves the first chunk.
    pub fn new() -> Self {
        Arena {
            chunks: Vec::new(),
            cur: None,
            used: 0,
            cap: 0,
            reserved: 0,
        }
    }

    /// Bytes reserved from the system so far.
    #[cfg(test)]
    pub fn reserved(&self) -> usize {
        self.reserved
    }

    /// `size` bytes (rounded up to [`ALIGN`]), 8-byte aligned, uninitialized,
    /// valid until the arena drops.
    pub fn alloc(&mut self, size: usize) -> NonNull<u8> {
        let size = size.div_ceil(ALIGN).max(1) * ALIGN;
        if size > OWN_CHUNK_ABOVE {
            return self.new_chunk(size);
        }
        if let Some(base) = self.cur {
            if self.cap - self.used >= size {
                // SAFETY: `used + size <= cap`, inside the chunk `base` starts.
                let p = unsafe { base.add(self.used) };
                self.used += size;
                return p;
            }
        }
        let base = self.new_chunk(CHUNK);
        self.cur = Some(base);
        self.used = size;
        self.cap = CHUNK;
        base
    }

    fn new_chunk(&mut self, size: usize) -> NonNull<u8> {
        // 64: chunks start on a cache line. `size` is at most what a
        // memtable entry (bounded far below isize::MAX) needs, rounded.
        let Ok(layout) = Layout::from_size_align(size, 64) else {
            handle_alloc_error(Layout::new::<u64>())
        };
        // SAFETY: `layout` has a non-zero size.
        let Some(p) = NonNull::new(unsafe { alloc(layout) }) else {
            handle_alloc_error(layout)
        };
        self.chunks.push((p, layout));
        self.reserved += size;
        p
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        for (p, layout) in self.chunks.drain(..) {
            // SAFETY: allocated in `new_chunk` with this layout, freed once.
            unsafe { dealloc(p.as_ptr(), layout) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_aligned_disjoint_and_big_ones_get_their_own_chunk() {
        let mut a = Arena::new();
        let mut spans = Vec::new();
        let fifth = CHUNK / 5;
        for size in [
            1usize,
            7,
            8,
            9,
            100,
            4096,
            OWN_CHUNK_ABOVE + 1,
            3,
            fifth,
            fifth,
            fifth,
            fifth,
            fifth,
        ] {
            let p = a.alloc(size).as_ptr() as usize;
            assert_eq!(p % ALIGN, 0, "size {size}");
            spans.push((p, p + size));
        }
        spans.sort_unstable();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "overlap: {w:?}");
        }
        // One shared chunk for the small ones and four fifths, one for the
        // large one, and a second shared chunk for the fifth fifth.
        assert_eq!(a.chunks.len(), 3);
        assert_eq!(
            a.reserved(),
            2 * CHUNK + (OWN_CHUNK_ABOVE + 1).div_ceil(8) * 8
        );
    }
}
