//! Watermarks over the log's byte sequence and the completions that wait on
//! them.
//!
//! Every record the log accepts gets a place in one logical byte sequence
//! (its LSN: the count of record bytes accepted before it, plus its own
//! length). The writer publishes `written` (everything below it is readable)
//! and the syncer publishes `durable` (everything below it survived an
//! fdatasync). A waiter only compares its LSN with a watermark, so one
//! fdatasync completes every writer of the group at once. If the log is
//! poisoned, every waiter not yet durable gets the poisoning error.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};

use crate::error::{Error, Result};
use crate::log::Shared;

#[derive(Debug, Default)]
struct Marks {
    written: u64,
    durable: u64,
    poisoned: Option<Arc<Error>>,
    closed: bool,
    /// Async waiters: (LSN they wait for, their waker).
    wakers: Vec<(u64, Waker)>,
}

/// The shared watermarks.
#[derive(Debug, Default)]
pub(crate) struct Watermarks {
    marks: Mutex<Marks>,
    written_cv: Condvar,
    durable_cv: Condvar,
}

impl Watermarks {
    fn lock(&self) -> MutexGuard<'_, Marks> {
        // Only plain integers live here; a panicking thread cannot leave
        // them half-updated.
        self.marks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether everything below `lsn` is readable.
    pub fn is_written(&self, lsn: u64) -> bool {
        self.lock().written >= lsn
    }

    /// Everything below `lsn` is readable.
    pub fn set_written(&self, lsn: u64) {
        let mut m = self.lock();
        m.written = m.written.max(lsn);
        drop(m);
        self.written_cv.notify_all();
    }

    /// Everything below `lsn` is durable. Ignored once the log is
    /// poisoned: after a write or sync failure nothing more completes, even
    /// a sync that raced the failure and succeeded (its waiters hear the
    /// poisoning error, which a caller treats as "outcome unknown").
    pub fn set_durable(&self, lsn: u64) {
        let mut m = self.lock();
        if m.poisoned.is_some() {
            return;
        }
        m.durable = m.durable.max(lsn);
        let durable = m.durable;
        let mut ready = Vec::new();
        m.wakers.retain(|(at, w)| {
            if *at <= durable {
                ready.push(w.clone());
                false
            } else {
                true
            }
        });
        drop(m);
        self.durable_cv.notify_all();
        ready.into_iter().for_each(Waker::wake);
    }

    /// Fails every waiter not yet satisfied, and every later one.
    pub fn poison(&self, cause: Error) -> Arc<Error> {
        let mut m = self.lock();
        let cause = m.poisoned.get_or_insert_with(|| Arc::new(cause)).clone();
        let wakers = std::mem::take(&mut m.wakers);
        drop(m);
        self.written_cv.notify_all();
        self.durable_cv.notify_all();
        wakers.into_iter().for_each(|(_, w)| w.wake());
        cause
    }

    /// Closing: waiters that can no longer be satisfied get `Closed`.
    pub fn close(&self) {
        let mut m = self.lock();
        m.closed = true;
        let wakers = std::mem::take(&mut m.wakers);
        drop(m);
        self.written_cv.notify_all();
        self.durable_cv.notify_all();
        wakers.into_iter().for_each(|(_, w)| w.wake());
    }

    /// The poisoning error, if any.
    pub fn poisoned(&self) -> Option<Arc<Error>> {
        self.lock().poisoned.clone()
    }

    /// Blocks until everything below `lsn` is readable.
    pub fn wait_written(&self, lsn: u64) -> Result<()> {
        let mut m = self.lock();
        loop {
            if m.written >= lsn {
                return Ok(());
            }
            if let Some(cause) = &m.poisoned {
                return Err(Error::Poisoned {
                    cause: cause.clone(),
                });
            }
            if m.closed {
                return Err(Error::Closed);
            }
            m = self
                .written_cv
                .wait(m)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn check_durable(m: &Marks, lsn: u64) -> Option<Result<()>> {
        if m.durable >= lsn {
            Some(Ok(()))
        } else if let Some(cause) = &m.poisoned {
            Some(Err(Error::Poisoned {
                cause: cause.clone(),
            }))
        } else if m.closed {
            Some(Err(Error::Closed))
        } else {
            None
        }
    }

    /// Blocks until everything below `lsn` is durable.
    pub fn wait_durable(&self, lsn: u64) -> Result<()> {
        let mut m = self.lock();
        loop {
            if let Some(r) = Self::check_durable(&m, lsn) {
                return r;
            }
            m = self
                .durable_cv
                .wait(m)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

/// Fires when an append is durable under the log's sync policy.
///
/// Wait on it with [`Durable::wait`] from a thread, or `.await` it. It
/// resolves to `Err(Poisoned)` if the fsync covering it failed, and to
/// `Err(Closed)` if the log was dropped first (under `SyncPolicy::Always`
/// the log's close syncs what it wrote, so that only happens after a failure).
#[derive(Debug, Clone)]
#[must_use = "an append is not durable until its completion fires"]
pub struct Durable {
    lsn: u64,
    marks: Arc<Watermarks>,
    /// The log, so a blocking waiter can run the fdatasync itself.
    shared: Weak<Shared>,
}

impl Durable {
    pub(crate) fn new(lsn: u64, marks: Arc<Watermarks>, shared: Weak<Shared>) -> Self {
        Durable { lsn, marks, shared }
    }

    /// Blocks the calling thread until the append is durable (running the
    /// fdatasync on this thread when no sync is under way).
    pub fn wait(&self) -> Result<()> {
        match self.shared.upgrade() {
            Some(shared) => crate::log::commit::wait_durable(&shared, self.lsn),
            None => self.marks.wait_durable(self.lsn),
        }
    }

    /// Whether it is durable already (never blocks).
    pub fn is_durable(&self) -> bool {
        matches!(
            Watermarks::check_durable(&self.marks.lock(), self.lsn),
            Some(Ok(()))
        )
    }

    /// The log sequence number the completion waits for.
    pub fn lsn(&self) -> u64 {
        self.lsn
    }
}

impl Future for Durable {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut m = self.marks.lock();
        if let Some(r) = Watermarks::check_durable(&m, self.lsn) {
            return Poll::Ready(r);
        }
        if !m
            .wakers
            .iter()
            .any(|(at, w)| *at == self.lsn && w.will_wake(cx.waker()))
        {
            m.wakers.push((self.lsn, cx.waker().clone()));
        }
        Poll::Pending
    }
}
