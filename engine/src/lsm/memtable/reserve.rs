//! The reserve thread: memtable chunks faulted in before a writer needs
//! them.
//!
//! A writer inserts a batch into the memtable under the store's write lock,
//! and every 1 MiB of nodes it takes a new arena chunk. A chunk that comes
//! from the allocator fresh has no pages yet: the insert that first touches
//! it takes 256 page faults. On this project's VMs (pages handed back to
//! the host between runs, so each fault goes out to the hypervisor) that was
//! 4.6–9 ms per chunk under the lock, measured by timing each insert: about
//! 55 such inserts in a 500 000-message `ingest-sync` run, and with four
//! writers every one of them held up the other three — the bulk of that
//! workload's batch p99 (docs/benchmarks.md). The chunk pool
//! (`arena.rs`) recycles the chunks of flushed memtables, so a store in a
//! steady state rarely faults; a store just opened, or an ingest that fills
//! memtables faster than flushes free them, does.
//!
//! So the pool keeps [`ChunkPool::ready`] chunks faulted in, and this
//! thread refills it whenever a take leaves fewer than half: it allocates a
//! chunk and faults its pages in (a write to each) off the write path, then
//! puts it in the pool. The faults still cost the same CPU, but no
//! longer inside a critical section. If the thread falls behind, a writer
//! allocates a fresh chunk itself, as before: the reserve only ever moves
//! work, it never makes a writer wait for it.
//!
//! Invariants: a chunk is in the pool or in one arena, never both (the pool
//! hands it over under its mutex); the thread holds the pool, never the
//! store, and ends when [`Reserve`] drops (the store closing), after which
//! the pool frees what it holds.

use std::ptr::NonNull;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::arena::{fresh_chunk, ChunkPool, CHUNK};

/// The thread keeping a pool's reserve; ends and is joined on drop.
#[derive(Debug)]
pub(crate) struct Reserve {
    pool: Arc<ChunkPool>,
    thread: Option<JoinHandle<()>>,
}

impl Reserve {
    /// Starts the thread for `pool`, or returns `None` if the pool keeps no
    /// reserve (its cap is below one chunk).
    pub fn start(pool: &Arc<ChunkPool>) -> std::io::Result<Option<Reserve>> {
        if pool.ready() == 0 {
            return Ok(None);
        }
        let p = Arc::clone(pool);
        let thread = std::thread::Builder::new()
            .name("missive-lsm-mem".into())
            .spawn(move || {
                while let Some(wanted) = p.wait_until_wanted() {
                    for _ in 0..wanted {
                        let chunk = fresh_chunk(CHUNK);
                        prefault(chunk, CHUNK);
                        p.add_ready(chunk);
                    }
                }
            })?;
        Ok(Some(Reserve {
            pool: Arc::clone(pool),
            thread: Some(thread),
        }))
    }
}

impl Drop for Reserve {
    fn drop(&mut self) {
        self.pool.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Faults in every page of the `len` bytes at `p` (memory the caller owns
/// and nobody reads yet) by writing a zero into each: one fault at a time.
/// (`MADV_POPULATE_WRITE` does the same in one call, but holds the
/// process's mmap lock for all of it — 4–13 ms per chunk here, traced —
/// and every thread's `mmap` waited behind it, a writer's included.)
fn prefault(p: NonNull<u8>, len: usize) {
    let page = page_size();
    let start = p.as_ptr() as usize;
    let mut off = 0;
    while off < len {
        touch(p, off);
        off += page - (start + off) % page;
    }
}

/// Writes a zero at `p + off` (inside the caller's allocation), so the page
/// holding it is faulted in for writing.
fn touch(p: NonNull<u8>, off: usize) {
    // SAFETY: the callers pass offsets below the allocation's length, and
    // the bytes are uninitialized memory they own: writing one is allowed;
    // volatile so the store is not elided as dead.
    unsafe { p.as_ptr().add(off).write_volatile(0) };
}

/// The system's page size (4 KiB if it cannot be read).
fn page_size() -> usize {
    // SAFETY: sysconf reads a constant of the running system.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsm::memtable::arena::Arena;
    use std::time::{Duration, Instant};

    /// Polls `cond` for up to ten seconds.
    fn eventually(cond: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        cond()
    }

    #[test]
    fn the_reserve_fills_an_empty_pool_and_refills_it_below_half() {
        let pool = Arc::new(ChunkPool::new(8 * CHUNK));
        assert_eq!(pool.ready(), 8);
        assert_eq!(pool.len(), 0);
        let reserve = Reserve::start(&pool).expect("spawn").expect("a reserve");
        assert!(eventually(|| pool.len() == 8), "filled: {}", pool.len());
        // Five takes leave three, below half: refilled to eight.
        let mut a = Arena::with_pool(Some(Arc::clone(&pool)));
        for _ in 0..5 {
            // Four quarters fill an ordinary chunk: one take apiece.
            for _ in 0..4 {
                a.alloc(CHUNK / 4);
            }
        }
        assert!(eventually(|| pool.len() == 8), "refilled: {}", pool.len());
        // The arena's chunks are whole and writable end to end.
        let p = a.alloc(CHUNK / 4);
        // SAFETY: the allocation has CHUNK / 4 bytes.
        unsafe { std::ptr::write_bytes(p.as_ptr(), 0x5a, CHUNK / 4) };
        drop(reserve);
        // The arena's six chunks go back to a full pool: kept up to its cap.
        drop(a);
        assert_eq!(pool.len(), 8);
    }

    #[test]
    fn a_pool_below_one_chunk_keeps_no_reserve() {
        let pool = Arc::new(ChunkPool::new(CHUNK - 1));
        assert_eq!(pool.ready(), 0);
        assert!(Reserve::start(&pool).expect("spawn").is_none());
    }

    #[test]
    fn dropping_the_reserve_ends_its_thread_while_it_waits() {
        let pool = Arc::new(ChunkPool::new(2 * CHUNK));
        let reserve = Reserve::start(&pool).expect("spawn").expect("a reserve");
        assert!(eventually(|| pool.len() == 2));
        let started = Instant::now();
        drop(reserve);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn prefault_leaves_memory_writable_at_any_alignment() {
        for (len, shift) in [(CHUNK, 0usize), (3 * 4096 + 17, 64), (100, 8), (1, 0)] {
            let layout = std::alloc::Layout::from_size_align(len + shift, 64).expect("layout");
            // SAFETY: non-zero size.
            let raw = unsafe { std::alloc::alloc(layout) };
            let p = NonNull::new(raw).expect("memory");
            // SAFETY: `shift` < the allocation's size.
            let q = unsafe { NonNull::new_unchecked(raw.add(shift)) };
            prefault(q, len);
            // SAFETY: `[q, q + len)` is inside the allocation.
            unsafe { std::ptr::write_bytes(q.as_ptr(), 0xee, len) };
            // SAFETY: allocated above with `layout`.
            unsafe { std::alloc::dealloc(p.as_ptr(), layout) };
        }
    }
}
