//! Per-user rate limits whose memory follows the users who are active.
//!
//! governor's keyed limiter keeps a state per key it has ever seen; on a
//! server that meets millions of users over its life that map only grows.
//! A key whose bucket is full again (the user has been quiet for a whole
//! refill) carries no information — a fresh key behaves the same — so it
//! is dropped. Pruning runs inline, at most once per `every`, from the
//! check itself: no task to start or stop, and a limiter that sees no
//! traffic does not grow.

use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// A keyed rate limiter that forgets quiet keys.
pub struct KeyedLimit<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    /// When this limiter was made: `pruned_at` counts from it.
    born: Instant,
    /// Milliseconds after `born` of the last prune.
    pruned_at: AtomicU64,
    every: Duration,
}

impl<K: Hash + Eq + Clone> std::fmt::Debug for KeyedLimit<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedLimit")
            .field("keys", &self.limiter.len())
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone> KeyedLimit<K> {
    /// A limiter of `quota` per key that prunes quiet keys at most once
    /// per `every`.
    pub fn new(quota: Quota, every: Duration) -> Self {
        KeyedLimit {
            limiter: RateLimiter::keyed(quota),
            born: Instant::now(),
            pruned_at: AtomicU64::new(0),
            every,
        }
    }

    /// Counts one use by `key`: Ok, or how long until it may try again.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        self.maybe_prune();
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Keys it holds state for.
    pub fn keys(&self) -> usize {
        self.limiter.len()
    }

    fn maybe_prune(&self) {
        let now = self.born.elapsed().as_millis() as u64;
        let last = self.pruned_at.load(Ordering::Relaxed);
        let due = now.saturating_sub(last) >= self.every.as_millis() as u64;
        // One checker wins the prune; the others go on.
        if due
            && self
                .pruned_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use std::num::NonZeroU32;

    use super::*;

    #[test]
    fn quiet_keys_are_forgotten_and_busy_ones_still_limited() {
        // One use per key per 5 ms; prune at every check.
        let quota = Quota::with_period(Duration::from_millis(5))
            .unwrap()
            .allow_burst(NonZeroU32::new(1).unwrap());
        let l = KeyedLimit::new(quota, Duration::ZERO);
        for k in 0..1000u64 {
            assert!(l.check(&k).is_ok());
        }
        assert_eq!(l.keys(), 1000);
        std::thread::sleep(Duration::from_millis(20));
        // The next check prunes the 1000 quiet keys before counting itself.
        assert!(l.check(&7).is_ok());
        assert_eq!(l.keys(), 1);
        // Key 7 has just used its burst: its state was kept and it waits.
        let wait = l.check(&7).unwrap_err();
        assert!(wait <= Duration::from_millis(5), "{wait:?}");
    }

    #[test]
    fn without_pruning_every_key_stays() {
        let quota = Quota::with_period(Duration::from_millis(5)).unwrap();
        let l = KeyedLimit::new(quota, Duration::from_secs(3600));
        for k in 0..100u64 {
            l.check(&k).unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
        l.check(&0).unwrap();
        assert_eq!(l.keys(), 100);
    }
}
