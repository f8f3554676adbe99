//! Bump allocation for one memtable's nodes.
//!
//! A memtable only grows until it is flushed and then goes away whole, so
//! its nodes never need freeing one by one: they are carved out of 1 MiB
//! chunks and the chunks are freed when the memtable drops. One allocation
//! per version was the writer's largest cost after the skiplist search
//! (malloc, the kernel zeroing fresh pages under it), and freeing half a
//! million of them after a flush was a tenth of the background thread.
//!
//! Freed chunks go back to the LSM's [`ChunkPool`] (up to one memtable's
//! worth) for the next memtable instead of to the allocator: the allocator
//! returns idle memory to the kernel after a while, and the next memtable
//! then faulted every page in again — at 5 000 msgs/s in `missived` one
//! 64 MiB memtable every ~13 s, ~1 400 page faults a second and ~2 % of
//! the server's CPU in the kernel clearing pages (docs/benchmarks.md). A
//! recycled chunk holds old bytes; allocations are uninitialized anyway.
//!
//! Invariants: a chunk never moves and is never freed (or pooled) before
//! the arena drops, so a pointer it handed out stays valid as long as the
//! arena; every allocation is 8-byte aligned and at most one chunk's size
//! or its own dedicated chunk.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::ptr::NonNull;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

/// Bytes per ordinary chunk.
pub(super) const CHUNK: usize = 1 << 20;
/// Allocations above this get a chunk of their own, so a large value never
/// wastes the tail of a shared chunk.
const OWN_CHUNK_ABOVE: usize = CHUNK / 4;
/// Alignment of every allocation (nodes hold `u64`s and atomic pointers).
pub(crate) const ALIGN: usize = 8;

/// The layout of an ordinary chunk (64: chunks start on a cache line).
fn chunk_layout(size: usize) -> Layout {
    // `size` is at most what a memtable entry (bounded far below
    // isize::MAX) needs, rounded.
    Layout::from_size_align(size, 64).unwrap_or_else(|_| handle_alloc_error(Layout::new::<u64>()))
}

/// Ordinary chunks freed by dropped arenas, kept for the next ones, and
/// chunks the reserve thread (`reserve.rs`) faulted in ahead of need.
#[derive(Debug)]
pub(crate) struct ChunkPool {
    free: Mutex<Free>,
    /// Chunks kept at most; the rest go back to the allocator.
    cap: usize,
    /// Chunks the reserve thread keeps here (0: there is none); it is woken
    /// when fewer than half are left.
    ready: usize,
    /// Where the reserve thread waits to be wanted.
    wanted: Condvar,
}

/// The pool's chunks, and whether its reserve thread should end.
#[derive(Debug, Default)]
struct Free {
    chunks: Vec<PooledChunk>,
    closed: bool,
}

/// A free ordinary chunk, owned by the pool.
#[derive(Debug)]
struct PooledChunk(NonNull<u8>);

// SAFETY: a pooled chunk is plain memory no one else references (its arena
// dropped, or the reserve thread handed it over); the pool's mutex hands it
// to one arena at a time.
unsafe impl Send for PooledChunk {}

/// Chunks a reserve thread keeps faulted in, at most (and at most the
/// pool's cap): 16 MiB, about a tenth of a second of the fastest ingest
/// measured (docs/benchmarks.md), far longer than refilling takes.
const READY_CHUNKS: usize = 16;

impl ChunkPool {
    /// A pool keeping up to `bytes` of chunks; a reserve thread started on
    /// it keeps [`READY_CHUNKS`] of them (fewer if `bytes` is smaller).
    pub fn new(bytes: usize) -> Self {
        let cap = bytes / CHUNK;
        ChunkPool {
            free: Mutex::new(Free::default()),
            cap,
            ready: cap.min(READY_CHUNKS),
            wanted: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Free> {
        self.free.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take(&self) -> Option<NonNull<u8>> {
        let mut free = self.lock();
        let p = free.chunks.pop();
        if free.chunks.len() < self.low() {
            // (Never without a reserve: `low` is 0.) If the reserve thread
            // is already refilling, this is a futex wake that finds no one.
            self.wanted.notify_one();
        }
        p.map(|c| c.0)
    }

    /// Keeps `p` (an ordinary chunk no one uses) if there is room; returns
    /// it otherwise.
    fn give(&self, p: NonNull<u8>) -> Option<NonNull<u8>> {
        let mut free = self.lock();
        if free.chunks.len() >= self.cap {
            return Some(p);
        }
        free.chunks.push(PooledChunk(p));
        None
    }

    /// Chunks a reserve thread should keep here.
    pub(super) fn ready(&self) -> usize {
        self.ready
    }

    /// Below this many chunks the reserve thread is woken: half of
    /// [`ChunkPool::ready`], rounded up (0 without a reserve).
    fn low(&self) -> usize {
        self.ready.div_ceil(2)
    }

    /// For the reserve thread: waits until fewer than [`ChunkPool::low`]
    /// chunks are left and returns how many to add, or
    /// `None` once the pool is closed.
    pub(super) fn wait_until_wanted(&self) -> Option<usize> {
        let mut free = self.lock();
        loop {
            if free.closed {
                return None;
            }
            if free.chunks.len() < self.low() {
                return Some(self.ready - free.chunks.len());
            }
            free = self
                .wanted
                .wait(free)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// For the reserve thread: keeps `p`, a fresh ordinary chunk
    /// ([`fresh_chunk`]), or frees it if dropped arenas filled the pool
    /// meanwhile.
    pub(super) fn add_ready(&self, p: NonNull<u8>) {
        if let Some(p) = self.give(p) {
            // SAFETY: a fresh chunk of the ordinary layout, owned by the
            // caller alone and refused by the pool: freed once, here.
            unsafe { dealloc(p.as_ptr(), chunk_layout(CHUNK)) };
        }
    }

    /// Ends the reserve thread's wait for good.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.wanted.notify_all();
    }

    /// Chunks kept now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().chunks.len()
    }
}

impl Drop for ChunkPool {
    fn drop(&mut self) {
        let layout = chunk_layout(CHUNK);
        for c in self.lock().chunks.drain(..) {
            // SAFETY: every pooled chunk was allocated by `fresh_chunk`
            // with the ordinary layout, and the pool owns it alone.
            unsafe { dealloc(c.0.as_ptr(), layout) };
        }
    }
}

/// A new chunk of `size` bytes from the allocator, uninitialized.
pub(super) fn fresh_chunk(size: usize) -> NonNull<u8> {
    let layout = chunk_layout(size);
    // SAFETY: `layout` has a non-zero size.
    match NonNull::new(unsafe { alloc(layout) }) {
        Some(p) => p,
        None => handle_alloc_error(layout),
    }
}

/// A bump allocator over chunks that live until it drops.
#[derive(Debug)]
pub(crate) struct Arena {
    /// Every chunk, for freeing (or pooling) on drop.
    chunks: Vec<(NonNull<u8>, Layout)>,
    /// Where ordinary chunks come from first and go back to.
    pool: Option<Arc<ChunkPool>>,
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
    /// An empty arena without a pool: the first allocation reserves the
    /// first chunk.
    #[cfg(test)]
    pub fn new() -> Self {
        Self::with_pool(None)
    }

    /// An empty arena that takes ordinary chunks from `pool` first and
    /// returns them there when it drops.
    pub fn with_pool(pool: Option<Arc<ChunkPool>>) -> Self {
        Arena {
            chunks: Vec::new(),
            pool,
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
        let layout = chunk_layout(size);
        let pooled = match &self.pool {
            Some(pool) if size == CHUNK => pool.take(),
            _ => None,
        };
        let p = pooled.unwrap_or_else(|| fresh_chunk(size));
        self.chunks.push((p, layout));
        self.reserved += size;
        p
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        for (p, layout) in self.chunks.drain(..) {
            let left = match &self.pool {
                Some(pool) if layout.size() == CHUNK => pool.give(p),
                _ => Some(p),
            };
            if let Some(p) = left {
                // SAFETY: allocated in `new_chunk` with this layout (or
                // taken from the pool, which holds only that layout), and
                // handed out by this arena alone: freed once.
                unsafe { dealloc(p.as_ptr(), layout) };
            }
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

    #[test]
    fn a_dropped_arena_s_ordinary_chunks_serve_the_next_arena() {
        let pool = Arc::new(ChunkPool::new(2 * CHUNK));
        let mut a = Arena::with_pool(Some(Arc::clone(&pool)));
        let mut firsts = Vec::new();
        for _ in 0..3 {
            // Each fills a chunk: three ordinary chunks.
            firsts.push(a.alloc(OWN_CHUNK_ABOVE).as_ptr() as usize);
            a.alloc(OWN_CHUNK_ABOVE);
            a.alloc(OWN_CHUNK_ABOVE);
            a.alloc(OWN_CHUNK_ABOVE);
        }
        let own = a.alloc(OWN_CHUNK_ABOVE + 1).as_ptr();
        // SAFETY: `own` has OWN_CHUNK_ABOVE + 1 bytes; write its ends to
        // show it is ours.
        unsafe {
            own.write(1);
            own.add(OWN_CHUNK_ABOVE).write(2);
        }
        assert_eq!(a.chunks.len(), 4);
        drop(a);
        // Two ordinary chunks kept (the cap), the third and the dedicated
        // one freed.
        assert_eq!(pool.len(), 2);
        let mut b = Arena::with_pool(Some(Arc::clone(&pool)));
        let p = b.alloc(8).as_ptr() as usize;
        assert!(firsts.contains(&p), "a fresh chunk instead of a pooled one");
        assert_eq!(pool.len(), 1);
        // A recycled chunk is whole: fill it nearly to the end.
        for _ in 0..3 {
            // SAFETY: the allocation has OWN_CHUNK_ABOVE bytes.
            unsafe {
                std::ptr::write_bytes(b.alloc(OWN_CHUNK_ABOVE).as_ptr(), 0xab, OWN_CHUNK_ABOVE)
            };
        }
        assert_eq!(b.chunks.len(), 1);
        drop(b);
        assert_eq!(pool.len(), 2);
    }
}
