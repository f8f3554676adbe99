//! Latency histograms the engine and the runtime keep for operators (the
//! log's fdatasync, a shard's apply): fixed exponential buckets of atomic
//! counts, so recording is two relaxed adds from any thread and reading is
//! a snapshot. The server exports them as Prometheus histograms; nothing
//! here depends on a metrics library.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets with an upper bound; one more counts everything above.
pub const BUCKETS: usize = 16;

/// The upper bound of bucket `i`, in seconds: 25 µs · 2^i, so 25 µs to
/// ~0.8 s (an fdatasync here takes 70–200 µs; a stalled disk, seconds).
pub fn upper_bound(i: usize) -> f64 {
    25e-6 * f64::from(1u32 << i.min(31))
}

/// Records durations.
#[derive(Debug, Default)]
pub struct Recorder {
    /// Per bucket (not cumulative); the last is above every bound.
    counts: [AtomicU64; BUCKETS + 1],
    sum_nanos: AtomicU64,
}

impl Recorder {
    /// Records one duration.
    pub fn record(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = (0..BUCKETS)
            .find(|&i| secs <= upper_bound(i))
            .unwrap_or(BUCKETS);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// What has been recorded so far.
    pub fn snapshot(&self) -> Latencies {
        Latencies {
            counts: std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed)),
            sum_nanos: self.sum_nanos.load(Ordering::Relaxed),
        }
    }
}

/// A histogram's counts at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latencies {
    /// Per bucket, not cumulative: `counts[i]` for durations in
    /// (`upper_bound(i - 1)`, `upper_bound(i)`], the last above them all.
    pub counts: [u64; BUCKETS + 1],
    /// The recorded durations' sum, in nanoseconds.
    pub sum_nanos: u64,
}

impl Latencies {
    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `(upper bound in seconds, count)` per bucket, not cumulative, the
    /// last bound infinite — the form Prometheus encoders take.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        (0..=BUCKETS)
            .map(|i| {
                let bound = if i == BUCKETS {
                    f64::INFINITY
                } else {
                    upper_bound(i)
                };
                (bound, self.counts[i])
            })
            .collect()
    }

    /// The sum of the recorded durations, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_nanos as f64 / 1e9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_their_buckets() {
        let r = Recorder::default();
        r.record(Duration::from_micros(10));
        r.record(Duration::from_micros(25));
        r.record(Duration::from_micros(26));
        r.record(Duration::from_secs(5));
        let s = r.snapshot();
        assert_eq!(s.count(), 4);
        assert_eq!(s.counts[0], 2, "≤ 25 µs");
        assert_eq!(s.counts[1], 1, "(25, 50] µs");
        assert_eq!(s.counts[BUCKETS], 1, "above every bound");
        let b = s.buckets();
        assert_eq!(
            (b[0], b[1].1, b[BUCKETS]),
            ((25e-6, 2), 1, (f64::INFINITY, 1))
        );
        assert_eq!(s.sum_nanos, 5_000_061_000);
    }
}
