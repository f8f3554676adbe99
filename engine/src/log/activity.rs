//! When the log last made writes durable, for work that gives way to it.
//!
//! The LSM's table writes slow the log's fdatasyncs: on this project's test
//! host (ext4 on a virtio disk whose flush makes the host persist whatever
//! the guest wrote since the last one) a memtable flush writing 1 MiB pieces
//! as fast as it builds them took durable batches' p99 from about 1 ms to
//! 2–4 ms. So the LSM paces its table writes while durable writes are being
//! acknowledged (`lsm/pace.rs`), and this is how it knows: the log records
//! the moment of every successful fdatasync here, and a reader asks whether
//! one happened within some window. A store that never syncs (benchmarks,
//! [`super::SyncPolicy::Never`]) never records, and its tables are never
//! paced.
//!
//! One atomic store per fdatasync, one atomic load per question: no lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The moment of the log's last successful fdatasync.
#[derive(Debug)]
pub struct SyncActivity {
    /// What the stored moments are measured from.
    epoch: Instant,
    /// Nanoseconds since `epoch` of the last sync, plus one; 0: never.
    last: AtomicU64,
}

impl SyncActivity {
    /// No sync yet.
    pub fn new() -> Self {
        SyncActivity {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    /// Notes a sync that just ended.
    pub fn record(&self) {
        let ns = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        self.last.store(ns.saturating_add(1), Ordering::Relaxed);
    }

    /// Whether a sync ended within the last `window`.
    pub fn within(&self, window: Duration) -> bool {
        match self.last.load(Ordering::Relaxed) {
            0 => false,
            last => {
                let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
                let window = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
                now.saturating_sub(last - 1) <= window
            }
        }
    }
}

impl Default for SyncActivity {
    fn default() -> Self {
        SyncActivity::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sync_counts_for_the_window_after_it_and_no_longer() {
        let a = SyncActivity::new();
        assert!(!a.within(Duration::from_secs(3600)), "no sync yet");
        a.record();
        assert!(a.within(Duration::from_secs(3600)));
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            !a.within(Duration::from_millis(5)),
            "20 ms ago is outside 5 ms"
        );
        assert!(a.within(Duration::from_secs(3600)));
        a.record();
        assert!(a.within(Duration::from_millis(5)), "a new sync renews it");
    }
}
