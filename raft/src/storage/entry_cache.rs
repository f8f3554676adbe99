//! The newest entries of one shard's Raft log, decoded, for the reads that
//! follow an append.
//!
//! openraft reads every entry back from the log store soon after appending
//! it — to apply it once committed, and to send it to followers. Served from
//! the log, each read is a `pread` of the segment and a postcard decode of
//! every command (~2.7 % of `missived`'s CPU at 5 000 msgs/s); served from
//! here it is a clone of entries still in memory.
//!
//! Invariant: the cache holds a contiguous run of the log's newest entries,
//! `first..first + len`, identical to what the log holds at those indexes.
//! The log store keeps it so by changing the cache and the log together:
//! an append extends the run (or restarts it, if the append does not follow
//! on), a truncation drops the cached suffix *before* the log drops it, a
//! purge drops the cached prefix. A read takes the cache only if it holds
//! the whole range; anything else reads the log. The run is bounded by the
//! entries' encoded bytes, oldest dropped first.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use crate::app::App;
use crate::types::Entry;

/// Encoded bytes of entries kept per shard. Apply and replication read an
/// entry within a Raft round or two of its append, so a small run covers
/// them; at 5 000 msgs/s a shard appends ~500 entries a second of a few
/// KiB each.
pub const CACHE_BYTES: usize = 1 << 20;

/// A shard's newest entries (see the module docs).
#[derive(Debug)]
pub struct EntryCache<A: App> {
    inner: Mutex<Run<A>>,
}

impl<A: App> Default for EntryCache<A> {
    fn default() -> Self {
        EntryCache {
            inner: Mutex::new(Run {
                first: 0,
                entries: VecDeque::new(),
                bytes: 0,
            }),
        }
    }
}

#[derive(Debug)]
struct Run<A: App> {
    /// Raft index of `entries[0]`.
    first: u64,
    /// The entries and their encoded sizes.
    entries: VecDeque<(Entry<A>, usize)>,
    bytes: usize,
}

impl<A: App> Run<A> {
    fn end(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    fn pop_front(&mut self) {
        if let Some((_, n)) = self.entries.pop_front() {
            self.bytes -= n;
            self.first += 1;
        }
    }
}

impl<A: App> EntryCache<A> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Run<A>> {
        // The run is left consistent before anything that could panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Entries just appended to the log at Raft indexes `first..`, with
    /// their encoded sizes.
    pub fn appended(&self, first: u64, entries: impl IntoIterator<Item = (Entry<A>, usize)>) {
        let mut run = self.lock();
        if run.entries.is_empty() || run.end() != first {
            // Not a continuation (first append, or the log restarted after
            // a snapshot): start a new run here.
            run.entries.clear();
            run.bytes = 0;
            run.first = first;
        }
        for (e, n) in entries {
            run.bytes += n;
            run.entries.push_back((e, n));
        }
        while run.bytes > CACHE_BYTES && run.entries.len() > 1 {
            run.pop_front();
        }
    }

    /// Drops cached entries at Raft indexes `>= index` (call before the log
    /// drops them).
    pub fn truncate_from(&self, index: u64) {
        let mut run = self.lock();
        while run.end() > index.max(run.first) {
            if let Some((_, n)) = run.entries.pop_back() {
                run.bytes -= n;
            } else {
                break;
            }
        }
    }

    /// Drops cached entries at Raft indexes `<= index`.
    pub fn purge_upto(&self, index: u64) {
        let mut run = self.lock();
        while !run.entries.is_empty() && run.first <= index {
            run.pop_front();
        }
    }

    /// Entries at Raft indexes `lo..hi`, if the cache holds all of them.
    pub fn get(&self, lo: u64, hi: u64) -> Option<Vec<Entry<A>>> {
        let run = self.lock();
        if lo < run.first || hi > run.end() || hi <= lo {
            return None;
        }
        let from = usize::try_from(lo - run.first).ok()?;
        let to = usize::try_from(hi - run.first).ok()?;
        Some(
            run.entries
                .range(from..to)
                .map(|(e, _)| e.clone())
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use crate::test_app::Kv;
    use crate::types::{LogId, TypeConfig};
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(term: u64, index: u64) -> (Entry<Kv>, usize) {
        let e = openraft::Entry::<TypeConfig<Kv>> {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        };
        (e, 1 << 10)
    }

    fn ids(v: Option<Vec<Entry<Kv>>>) -> Option<Vec<(u64, u64)>> {
        v.map(|v| {
            v.iter()
                .map(|e| (e.log_id.leader_id.term, e.log_id.index))
                .collect()
        })
    }

    #[test]
    fn serves_only_whole_ranges_of_the_current_run() {
        let c = EntryCache::<Kv>::default();
        assert_eq!(ids(c.get(1, 2)), None);
        c.appended(5, (5..10).map(|i| entry(1, i)));
        assert_eq!(ids(c.get(6, 8)), Some(vec![(1, 6), (1, 7)]));
        assert_eq!(ids(c.get(4, 6)), None, "starts before the run");
        assert_eq!(ids(c.get(9, 11)), None, "ends after the run");
        // A truncation then an append from a new leader: the new entries,
        // never the old ones.
        c.truncate_from(8);
        assert_eq!(ids(c.get(7, 9)), None);
        c.appended(8, [entry(2, 8)]);
        assert_eq!(ids(c.get(7, 9)), Some(vec![(1, 7), (2, 8)]));
        // An append that does not follow on restarts the run.
        c.appended(100, [entry(3, 100)]);
        assert_eq!(ids(c.get(7, 8)), None);
        assert_eq!(ids(c.get(100, 101)), Some(vec![(3, 100)]));
        c.purge_upto(100);
        assert_eq!(ids(c.get(100, 101)), None);
        c.appended(101, [entry(3, 101)]);
        assert_eq!(ids(c.get(101, 102)), Some(vec![(3, 101)]));
    }

    #[test]
    fn keeps_its_byte_budget_and_drops_the_oldest() {
        let c = EntryCache::<Kv>::default();
        let n = CACHE_BYTES / (1 << 10);
        c.appended(1, (1..=n as u64 + 10).map(|i| entry(1, i)));
        assert_eq!(ids(c.get(10, 11)), None);
        let last = n as u64 + 10;
        assert!(c.get(last - n as u64 + 1, last + 1).is_some());
        assert_eq!(c.lock().bytes, CACHE_BYTES);
    }
}
