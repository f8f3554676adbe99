//! Writeback hints, sent off the appender's path.
//!
//! Every [`WRITEBACK_EVERY`](super::writer) bytes the writer asks the
//! kernel to start writing the segment's new bytes back
//! (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so that no later sync and no
//! dirty-page throttle pays for a whole segment at once. The call does not
//! wait for the I/O, but it does *submit* it, and submitting can block: on
//! this host (ext4 on a virtio disk that reports itself rotational, so the
//! block layer's writeback throttle runs with a 75 ms latency target) it
//! took 128–256 µs typically and up to 16 ms, traced with bpftrace under a
//! sustained ingest while compactions wrote their tables — ~6 900 calls,
//! about 1.4 s of a 33 s run on the thread whose write the caller waits
//! for. (An instrumented run had earlier caught a 141 ms log write whose
//! time was in a pwrite and this hint after it, the two not told apart.)
//!
//! So the writer only queues the range and a thread of its own,
//! `missive-log-wb`, makes the call. Nothing depends on when (or whether)
//! it does: a sync writes back whatever is still dirty regardless. The
//! queue is bounded; when it is full the hint is dropped (the next one
//! covers a later range, and the kernel's own writeback the rest).
//! Dropping the [`Hints`] handle ends the thread once it has drained the
//! queue.
//!
//! The same thread prepares the writer's next segment (`ahead.rs`): a task
//! sent through the same queue ([`Hints::run`]), never dropped once
//! queued.

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::io::LogFile;

/// Hints waiting for the thread. Each is a call that takes ~0.2 ms, and a
/// full queue means the device is far behind; more would only queue I/O
/// the kernel is already throttling.
const QUEUE: usize = 8;

/// One range of a segment to start writing back.
struct Hint {
    file: Arc<dyn LogFile>,
    offset: u64,
    len: u64,
}

/// What the thread does next.
enum Task {
    Writeback(Hint),
    Run(Box<dyn FnOnce() + Send>),
}

/// The writer's end: queues hints for the writeback thread.
pub(crate) struct Hints {
    tx: SyncSender<Task>,
}

impl std::fmt::Debug for Hints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hints")
    }
}

impl Hints {
    /// Starts the writeback thread. `None` if the thread cannot be
    /// started: the writer then makes the calls itself, as before.
    pub fn start() -> Option<(Hints, JoinHandle<()>)> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("missive-log-wb".into())
            .spawn(move || run(&rx))
            .ok()?;
        Some((Hints { tx }, thread))
    }

    /// Asks for `[offset, offset + len)` of `file` to be written back soon.
    pub fn send(&self, file: &Arc<dyn LogFile>, offset: u64, len: u64) {
        let hint = Hint {
            file: Arc::clone(file),
            offset,
            len,
        };
        match self.tx.try_send(Task::Writeback(hint)) {
            Ok(()) | Err(TrySendError::Full(_)) => {}
            // The thread is gone (it never panics, but if it did): make
            // the call here rather than leave the segment's pages dirty.
            Err(TrySendError::Disconnected(t)) => run_one(t),
        }
    }

    /// Queues `task` for the thread; false if the queue is full or the
    /// thread is gone (the task is dropped unrun: the caller does without).
    pub fn run(&self, task: Box<dyn FnOnce() + Send>) -> bool {
        self.tx.try_send(Task::Run(task)).is_ok()
    }
}

fn run(rx: &Receiver<Task>) {
    while let Ok(task) = rx.recv() {
        run_one(task);
    }
}

fn run_one(task: Task) {
    match task {
        Task::Writeback(hint) => start(&hint),
        Task::Run(f) => f(),
    }
}

fn start(h: &Hint) {
    // A hint: if it fails, the next sync writes the bytes back all the
    // same (and reports any real I/O error).
    let _ = h.file.start_writeback(h.offset, h.len);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use std::io;
    use std::sync::Mutex;

    /// A file that records the writeback calls it gets, and on which
    /// thread.
    #[derive(Debug, Default)]
    struct Recorder {
        calls: Mutex<Vec<(u64, u64, String)>>,
    }

    impl LogFile for Recorder {
        fn read_at(&self, _: &mut [u8], _: u64) -> io::Result<()> {
            Ok(())
        }
        fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
            Ok(())
        }
        fn sync_data(&self) -> io::Result<()> {
            Ok(())
        }
        fn sync_all(&self) -> io::Result<()> {
            Ok(())
        }
        fn size(&self) -> io::Result<u64> {
            Ok(0)
        }
        fn allocate(&self, _: u64) -> io::Result<()> {
            Ok(())
        }
        fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
            let me = std::thread::current().name().unwrap_or("").to_owned();
            self.calls.lock().unwrap().push((offset, len, me));
            Ok(())
        }
    }

    #[test]
    fn hints_reach_the_file_on_the_writeback_thread_and_dropping_ends_it() {
        let rec = Arc::new(Recorder::default());
        let file: Arc<dyn LogFile> = rec.clone();
        let (hints, thread) = Hints::start().unwrap();
        for i in 0..3 {
            hints.send(&file, i << 20, 1 << 20);
            // One at a time, so none is dropped for a full queue.
            while rec.calls.lock().unwrap().len() as u64 <= i {
                std::thread::yield_now();
            }
        }
        drop(hints);
        thread.join().unwrap();
        let calls = rec.calls.lock().unwrap().clone();
        let want: Vec<_> = (0..3)
            .map(|i| (i << 20, 1 << 20, "missive-log-wb".to_owned()))
            .collect();
        assert_eq!(calls, want);
    }

    #[test]
    fn without_the_thread_the_sender_makes_the_call_itself() {
        let rec = Arc::new(Recorder::default());
        let file: Arc<dyn LogFile> = rec.clone();
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        drop(rx);
        Hints { tx }.send(&file, 7, 9);
        let calls = rec.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 1);
        assert_eq!((calls[0].0, calls[0].1), (7, 9));
    }
}
