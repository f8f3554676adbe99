//! The outbox feed: outbox entries this replica just applied, handed to the
//! shard's fan-out worker in memory so the common case needs no scan of
//! the outbox range (which, between flushes, is mostly tombstones of
//! entries already delivered).
//!
//! The feed is an optimisation, never the source of truth: the outbox in
//! the LSM is. A shard's feed is *active* only while its worker is acting
//! as leader and keeping up. Whenever the feed cannot vouch for holding
//! every entry applied since the worker's last scan — it was inactive, or
//! it overflowed — `take` says so and the worker scans the outbox instead.
//! `take` empties the feed *before* the worker reads the LSM, so an entry
//! is always in the scan, or in the feed, or both (delivering twice is
//! harmless: user shards skip eseqs they have).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use missive_engine::keys::ConversationId;

use crate::ids::Eseq;
use crate::records::OutboxEntry;
use missive_raft::ShardId;

/// Entries a shard's feed holds before it gives up and asks for a scan.
const CAPACITY: usize = 65_536;

/// One applied outbox entry.
#[derive(Debug, Clone)]
pub(crate) struct Fresh {
    /// Its conversation.
    pub conv: ConversationId,
    /// Its per-conversation event sequence.
    pub eseq: Eseq,
    /// The entry as stored.
    pub entry: OutboxEntry,
}

#[derive(Debug, Default)]
struct ShardFeed {
    entries: Vec<Fresh>,
    /// The worker takes from this feed (it leads and is keeping up).
    active: bool,
    /// Entries were dropped since the last `take`.
    lost: bool,
    wake: Arc<Notify>,
}

/// Every shard's feed on this node.
#[derive(Debug, Default)]
pub struct OutboxFeed {
    shards: Mutex<HashMap<ShardId, ShardFeed>>,
}

/// What the worker should do next.
pub(crate) enum Take {
    /// Deliver these (maybe none); nothing was missed.
    Fresh(Vec<Fresh>),
    /// The feed cannot vouch for completeness: scan the outbox.
    Scan,
}

impl OutboxFeed {
    fn with<R>(&self, shard: ShardId, f: impl FnOnce(&mut ShardFeed) -> R) -> R {
        let mut g = self.shards.lock().unwrap_or_else(PoisonError::into_inner);
        f(g.entry(shard).or_default())
    }

    /// The notifier `push` wakes for `shard` (also woken by a snapshot
    /// install, which brings outbox entries without applying them).
    pub(crate) fn waker(&self, shard: ShardId) -> Arc<Notify> {
        self.with(shard, |s| Arc::clone(&s.wake))
    }

    /// Called by apply, after the batch is in the LSM.
    pub(crate) fn push(&self, shard: ShardId, fresh: Vec<Fresh>) {
        let wake = self.with(shard, |s| {
            if s.active {
                if s.entries.len() + fresh.len() > CAPACITY {
                    s.entries = Vec::new();
                    s.lost = true;
                } else {
                    s.entries.extend(fresh);
                }
            }
            Arc::clone(&s.wake)
        });
        wake.notify_one();
    }

    /// A snapshot replaced the shard's data: what it brought was never
    /// pushed.
    pub(crate) fn invalidate(&self, shard: ShardId) {
        let wake = self.with(shard, |s| {
            s.entries = Vec::new();
            s.lost = true;
            Arc::clone(&s.wake)
        });
        wake.notify_one();
    }

    /// The worker's turn: what to deliver, or that it must scan. Activates
    /// the feed (the caller leads the shard).
    pub(crate) fn take(&self, shard: ShardId) -> Take {
        self.with(shard, |s| {
            let complete = s.active && !s.lost;
            s.active = true;
            s.lost = false;
            let entries = std::mem::take(&mut s.entries);
            if complete {
                Take::Fresh(entries)
            } else {
                Take::Scan
            }
        })
    }

    /// The worker does not lead the shard, or failed a delivery: stop
    /// collecting; the next `take` asks for a scan.
    pub(crate) fn deactivate(&self, shard: ShardId) {
        self.with(shard, |s| {
            s.active = false;
            s.entries = Vec::new();
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use crate::records::EventKind;

    fn fresh(eseq: u64) -> Fresh {
        Fresh {
            conv: ConversationId(7),
            eseq: Eseq(eseq),
            entry: OutboxEntry {
                event: EventKind::Receipt {
                    user: crate::command::UserId(1),
                    delivered: crate::ids::Seq(eseq),
                    read: crate::ids::Seq(0),
                },
                recipients: vec![crate::command::UserId(2)],
                at: 0,
            },
        }
    }

    fn eseqs(t: Take) -> Option<Vec<u64>> {
        match t {
            Take::Fresh(v) => Some(v.iter().map(|f| f.eseq.0).collect()),
            Take::Scan => None,
        }
    }

    #[test]
    fn a_feed_vouches_only_for_what_it_saw_while_active() {
        let feed = OutboxFeed::default();
        let s = ShardId(1);
        // Pushed before the worker ever took: not kept, so scan.
        feed.push(s, vec![fresh(1)]);
        assert_eq!(eseqs(feed.take(s)), None);
        // Active now: later pushes come through in order.
        feed.push(s, vec![fresh(2), fresh(3)]);
        feed.push(s, vec![fresh(4)]);
        assert_eq!(eseqs(feed.take(s)), Some(vec![2, 3, 4]));
        assert_eq!(eseqs(feed.take(s)), Some(vec![]));
        // A failed delivery deactivates: what follows needs a scan first.
        feed.deactivate(s);
        feed.push(s, vec![fresh(5)]);
        assert_eq!(eseqs(feed.take(s)), None);
        // A snapshot install invalidates.
        feed.push(s, vec![fresh(6)]);
        feed.invalidate(s);
        assert_eq!(eseqs(feed.take(s)), None);
        // Overflow drops everything and asks for a scan.
        feed.push(s, (0..CAPACITY as u64).map(fresh).collect());
        feed.push(s, vec![fresh(u64::MAX)]);
        assert_eq!(eseqs(feed.take(s)), None);
        assert_eq!(eseqs(feed.take(s)), Some(vec![]));
    }
}
