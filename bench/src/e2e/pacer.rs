//! Wakes each connection at its scheduled send time, to tens of
//! microseconds rather than tokio's millisecond.
//!
//! Latency is measured from the *scheduled* send time (see `client`), so
//! whatever delays the send itself counts against the server. tokio's timer
//! wheel has 1 ms ticks and rounds a deadline up to the next one, and the
//! epoll wait under it rounds a sub-millisecond timeout up to 1 ms: the
//! generator sent ~0.75 ms (p50) to 2–6 ms (p99) after the scheduled time
//! on an otherwise idle loop (the `generator lag` row), inflating every
//! latency it reported by its own timer's granularity. One thread here
//! keeps every connection's next send time in a heap and sleeps on a
//! condition variable until the earliest (futex timeouts are in
//! nanoseconds; the kernel's timer slack is 50 µs), then completes the
//! waiters whose time has come. It is still open-loop: nothing here waits
//! for the server.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::oneshot;

/// A waiter: its time, a tie-breaker, and whom to tell.
struct Waiter {
    at: Instant,
    id: u64,
    tx: oneshot::Sender<()>,
}

impl PartialEq for Waiter {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.id) == (o.at, o.id)
    }
}
impl Eq for Waiter {}
impl PartialOrd for Waiter {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Waiter {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.id).cmp(&(o.at, o.id))
    }
}

#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<Waiter>>,
    next_id: u64,
    closed: bool,
}

/// The pacing thread's handle; dropping the last one stops the thread.
pub struct Pacer {
    shared: Arc<(Mutex<Queue>, Condvar)>,
}

impl Pacer {
    /// Starts the pacing thread.
    pub fn start() -> std::io::Result<Arc<Pacer>> {
        let shared = Arc::new((Mutex::new(Queue::default()), Condvar::new()));
        let s = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("e2e-pacer".into())
            .spawn(move || run(&s))?;
        Ok(Arc::new(Pacer { shared }))
    }

    /// Completes at `at` (at once if it has passed).
    pub fn until(&self, at: Instant) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let (m, cv) = &*self.shared;
        let mut q = m.lock().unwrap_or_else(PoisonError::into_inner);
        let id = q.next_id;
        q.next_id += 1;
        let earliest = q.heap.peek().is_none_or(|Reverse(w)| at < w.at);
        q.heap.push(Reverse(Waiter { at, id, tx }));
        drop(q);
        if earliest {
            // The thread sleeps until the old earliest: wake it to re-arm.
            cv.notify_one();
        }
        rx
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        let (m, cv) = &*self.shared;
        m.lock().unwrap_or_else(PoisonError::into_inner).closed = true;
        cv.notify_one();
    }
}

fn run(shared: &(Mutex<Queue>, Condvar)) {
    let (m, cv) = shared;
    let mut due = Vec::new();
    let mut q = m.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        if q.closed {
            return;
        }
        let now = Instant::now();
        while q.heap.peek().is_some_and(|Reverse(w)| w.at <= now) {
            if let Some(Reverse(w)) = q.heap.pop() {
                due.push(w.tx);
            }
        }
        if !due.is_empty() {
            drop(q);
            for tx in due.drain(..) {
                // A waiter that went away (its connection ended) is fine.
                let _ = tx.send(());
            }
            q = m.lock().unwrap_or_else(PoisonError::into_inner);
            continue;
        }
        q = match q.heap.peek().map(|Reverse(w)| w.at) {
            Some(at) => {
                cv.wait_timeout(q, at.saturating_duration_since(now))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
            None => cv.wait(q).unwrap_or_else(PoisonError::into_inner),
        };
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waiters_complete_in_time_order_and_not_before_their_time() {
        let p = Pacer::start().unwrap();
        let t0 = Instant::now();
        let late = p.until(t0 + Duration::from_millis(30));
        let early = p.until(t0 + Duration::from_millis(10));
        let past = p.until(t0 - Duration::from_millis(1));
        past.await.unwrap();
        early.await.unwrap();
        let e = t0.elapsed();
        assert!(e >= Duration::from_millis(10), "{e:?}");
        late.await.unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(30));
    }
}
