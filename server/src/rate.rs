//! Rate limits whose memory follows the keys that are active: per user
//! for each class of request ([`UserRates`]), per client IP for new
//! connections and sockets ([`IpRates`]).
//!
//! governor's keyed limiter keeps a state per key it has ever seen; on a
//! server that meets millions of users over its life that map only grows.
//! A key whose bucket is full again (the user has been quiet for a whole
//! refill) carries no information — a fresh key behaves the same — so it
//! is dropped. Pruning runs inline, at most once per `every`, from the
//! check itself: no task to start or stop, and a limiter that sees no
//! traffic does not grow.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use missive_chat::command::UserId;

use crate::config::{Limits, Rate};
use crate::error::ApiError;
use crate::metrics::Metrics;

/// How often a limiter forgets keys whose bucket is full again.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

fn quota(r: Rate) -> Quota {
    let per_second = NonZeroU32::new(r.per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(r.burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(per_second).allow_burst(burst)
}

/// What a user's request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Sends, edits, unsends, reactions (`limits.sends_per_second`).
    Send,
    /// History pages and other reads of the past (`limits.history_rate`).
    History,
    /// Receipt writes (`limits.receipt_rate`).
    Receipt,
    /// Conversation creation (`limits.create_rate`).
    Create,
    /// Media uploads started (`limits.upload_rate`).
    Upload,
    /// Key directory writes: publishing and removing a device's keys
    /// (`limits.keys_rate`).
    Keys,
    /// Presence requests and typing (`limits.presence_rate`).
    Presence,
}

impl Class {
    fn what(self) -> &'static str {
        match self {
            Class::Send => "sends",
            Class::History => "history reads",
            Class::Receipt => "receipts",
            Class::Create => "conversations created",
            Class::Upload => "uploads started",
            Class::Keys => "key directory writes",
            Class::Presence => "presence and typing requests",
        }
    }
}

/// The per-user limits of each request class.
#[derive(Debug)]
pub struct UserRates {
    send: KeyedLimit<UserId>,
    history: KeyedLimit<UserId>,
    receipt: KeyedLimit<UserId>,
    create: KeyedLimit<UserId>,
    upload: KeyedLimit<UserId>,
    keys: KeyedLimit<UserId>,
    presence: KeyedLimit<UserId>,
    metrics: std::sync::Arc<Metrics>,
}

impl UserRates {
    /// The limits of `l`.
    pub fn new(l: &Limits, metrics: std::sync::Arc<Metrics>) -> Self {
        let k = |r| KeyedLimit::new(quota(r), PRUNE_EVERY);
        UserRates {
            send: k(Rate::new(l.sends_per_second, l.send_burst)),
            history: k(l.history_rate),
            receipt: k(l.receipt_rate),
            create: k(l.create_rate),
            upload: k(l.upload_rate),
            keys: k(l.keys_rate),
            presence: k(l.presence_rate),
            metrics,
        }
    }

    fn limit(&self, class: Class) -> &KeyedLimit<UserId> {
        match class {
            Class::Send => &self.send,
            Class::History => &self.history,
            Class::Receipt => &self.receipt,
            Class::Create => &self.create,
            Class::Upload => &self.upload,
            Class::Keys => &self.keys,
            Class::Presence => &self.presence,
        }
    }

    /// Counts one request of `class` by `who`: Ok, or 429 `rate_limited`
    /// with the wait.
    pub fn check(&self, class: Class, who: UserId) -> Result<(), ApiError> {
        self.limit(class).check(&who).map_err(|wait| {
            self.metrics.rate_limited.inc();
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many {}; slow down", class.what()),
            )
            .retry_after(wait.as_millis().max(1) as u64)
        })
    }

    /// Users any limiter holds state for (the quiet are forgotten).
    pub fn users(&self) -> usize {
        [
            Class::Send,
            Class::History,
            Class::Receipt,
            Class::Create,
            Class::Upload,
            Class::Keys,
            Class::Presence,
        ]
        .iter()
        .map(|c| self.limit(*c).keys())
        .sum()
    }
}

/// The per-IP limits on new connections and sockets.
#[derive(Debug)]
pub struct IpRates {
    connect: KeyedLimit<IpAddr>,
    upgrade: KeyedLimit<IpAddr>,
    metrics: std::sync::Arc<Metrics>,
}

impl IpRates {
    /// The limits of `l`.
    pub fn new(l: &Limits, metrics: std::sync::Arc<Metrics>) -> Self {
        IpRates {
            connect: KeyedLimit::new(quota(l.connect_rate_per_ip), PRUNE_EVERY),
            upgrade: KeyedLimit::new(quota(l.upgrade_rate_per_ip), PRUNE_EVERY),
            metrics,
        }
    }

    /// Whether a new connection from `ip` may be served (a refused one is
    /// closed at accept: there is no request to answer yet).
    pub fn connect(&self, ip: IpAddr) -> bool {
        let ok = self.connect.check(&ip).is_ok();
        if !ok {
            self.metrics.connections_refused.inc();
        }
        ok
    }

    /// Counts a WebSocket upgrade or a stream opened from `ip`: Ok, or
    /// 429 `rate_limited` with the wait.
    pub fn upgrade(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.upgrade.check(&ip).map_err(|wait| {
            self.metrics.rate_limited.inc();
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many sockets opened from this address; slow down",
            )
            .retry_after(wait.as_millis().max(1) as u64)
        })
    }
}

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
