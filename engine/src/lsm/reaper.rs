//! Freeing flushed memtables where it costs the serving threads least.
//!
//! A 64 MiB memtable is ~650 000 skiplist nodes and as many key/value
//! buffers, scattered over the heap: freeing it is a pointer chase that
//! took 0.2 s (mimalloc) to 0.5 s (glibc) of a core in the e2e benchmark.
//! Two things keep that off the threads serving requests:
//!
//! - The flusher waits (briefly) until it holds the last reference before
//!   letting go. A reader that cloned the memtable list for a lookup would
//!   otherwise drop the last reference and do the whole free inside a
//!   client's request.
//! - With [`super::LsmOptions::yield_to_foreground`], the free happens on a
//!   thread of the lowest priority (nice 19), which runs on time the
//!   serving threads leave idle. Memory comes back a little later; if two
//!   memtables already wait there (the machine has had no idle time), the
//!   flusher frees the next one itself so memory stays bounded.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::lsm::memtable::Memtable;

/// How long the reaper waits for readers to let go of a flushed memtable
/// (it has time; a long scan may hold one).
const REAPER_WAIT: Duration = Duration::from_secs(2);
/// How long the flusher itself waits: it has the next flush to do.
pub(crate) const FLUSHER_WAIT: Duration = Duration::from_millis(50);
/// Memtables waiting to be freed before the flusher frees them itself.
const MAX_PENDING: usize = 2;

/// Waits until `mem` is the last reference (or gives up), then drops it.
pub(crate) fn free_when_sole(mem: Arc<Memtable>, wait: Duration) {
    let deadline = Instant::now() + wait;
    while Arc::strong_count(&mem) > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(mem);
}

/// The low-priority freeing thread.
pub(crate) struct Reaper {
    tx: Option<mpsc::Sender<Arc<Memtable>>>,
    pending: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Reaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reaper")
            .field("pending", &self.pending.load(Ordering::Relaxed))
            .finish()
    }
}

impl Reaper {
    /// Starts the thread.
    pub fn start() -> std::io::Result<Reaper> {
        let (tx, rx) = mpsc::channel::<Arc<Memtable>>();
        let pending = Arc::new(AtomicUsize::new(0));
        let p = Arc::clone(&pending);
        let thread = std::thread::Builder::new()
            .name("missive-lsm-free".into())
            .spawn(move || {
                crate::lsm::priority::set_nice(19, "the memtable-freeing thread");
                for mem in rx {
                    free_when_sole(mem, REAPER_WAIT);
                    p.fetch_sub(1, Ordering::AcqRel);
                }
            })?;
        Ok(Reaper {
            tx: Some(tx),
            pending,
            thread: Some(thread),
        })
    }

    /// Frees `mem` on the reaper thread, or right here if it is behind.
    pub fn free(&self, mem: Arc<Memtable>) {
        let mem = match &self.tx {
            Some(tx) if self.pending.load(Ordering::Acquire) < MAX_PENDING => {
                self.pending.fetch_add(1, Ordering::AcqRel);
                match tx.send(mem) {
                    Ok(()) => return,
                    Err(mpsc::SendError(mem)) => {
                        self.pending.fetch_sub(1, Ordering::AcqRel);
                        mem
                    }
                }
            }
            _ => mem,
        };
        free_when_sole(mem, FLUSHER_WAIT);
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
