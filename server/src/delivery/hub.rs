//! Live delivery: which WebSocket sessions follow which user's inbox, and
//! waking them when it grows.
//!
//! Apply on this replica publishes "user U's inbox reached useq N, with
//! this event"; the hub wakes U's sessions, and each reads its inbox from
//! its own cursor. A wake that is lost (the notice channel lagged, a
//! snapshot replaced a shard) costs a wake-everyone, never an event: the
//! store is the queue.
//!
//! To spare a live session the store read on every wake, the hub also
//! keeps, for users with a session here, the last [`RECENT`] events in a
//! ring. [`Hub::after`] serves a cursor from the ring only if the ring can
//! vouch for every useq after it (its first entry is at most cursor + 1 and
//! its useqs are consecutive, checked on every push); otherwise the session
//! reads the store as before. The ring is emptied whenever a notice may
//! have been missed (lag, snapshot install), so it never claims to be
//! complete when it is not. A user's events are applied in order on this
//! replica (one shard, one apply loop), so notices arrive in useq order.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, watch, Notify};

use missive_chat::apply::InboxNotice;
use missive_chat::command::UserId;
use missive_chat::records::InboxEvent;

/// Events kept per user with a session here.
pub const RECENT: usize = 64;

/// Each user's sessions: (session id, its wake-up).
type Sessions = HashMap<UserId, Vec<(u64, Arc<Notify>)>>;

/// Each followed user's newest events, consecutive useqs.
type Rings = HashMap<UserId, VecDeque<(u64, Arc<InboxEvent>)>>;

/// Sessions by user.
#[derive(Debug, Default)]
pub struct Hub {
    sessions: Mutex<Sessions>,
    recent: Mutex<Rings>,
    next: std::sync::atomic::AtomicU64,
}

/// A session's registration; unregisters on drop.
#[derive(Debug)]
pub struct Subscription {
    hub: Arc<Hub>,
    user: UserId,
    id: u64,
    /// Woken when the user's inbox may have grown.
    pub wake: Arc<Notify>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut s = self.hub.lock();
        if let Some(v) = s.get_mut(&self.user) {
            v.retain(|(id, _)| *id != self.id);
            if v.is_empty() {
                s.remove(&self.user);
                self.hub.lock_recent().remove(&self.user);
            }
        }
    }
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_recent(&self) -> std::sync::MutexGuard<'_, Rings> {
        self.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Up to `max` events after `cursor` from the ring, or None if the ring
    /// cannot vouch that nothing after `cursor` is missing from it (then
    /// read the store). An empty answer means nothing newer is known here.
    pub fn after(&self, user: UserId, cursor: u64, max: usize) -> Option<Vec<(u64, InboxEvent)>> {
        let rings = self.lock_recent();
        let ring = rings.get(&user)?;
        let (first, _) = ring.front()?;
        if *first > cursor.saturating_add(1) {
            return None;
        }
        Some(
            ring.iter()
                .filter(|(u, _)| *u > cursor)
                .take(max)
                .map(|(u, e)| (*u, InboxEvent::clone(e)))
                .collect(),
        )
    }

    /// Remembers a notice's event for `user`'s sessions, if any.
    fn remember(&self, n: &InboxNotice) {
        if !self.lock().contains_key(&n.user) {
            return;
        }
        let mut rings = self.lock_recent();
        let ring = rings.entry(n.user).or_default();
        if ring
            .back()
            .is_some_and(|(u, _)| u.saturating_add(1) != n.useq.0)
        {
            // A hole (or a replay): what is kept no longer vouches.
            ring.clear();
        }
        ring.push_back((n.useq.0, Arc::clone(&n.event)));
        while ring.len() > RECENT {
            ring.pop_front();
        }
    }

    /// Registers a session following `user`'s inbox.
    pub fn subscribe(self: &Arc<Self>, user: UserId) -> Subscription {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let wake = Arc::new(Notify::new());
        self.lock()
            .entry(user)
            .or_default()
            .push((id, Arc::clone(&wake)));
        Subscription {
            hub: Arc::clone(self),
            user,
            id,
            wake,
        }
    }

    fn wake_user(&self, user: UserId) {
        if let Some(v) = self.lock().get(&user) {
            for (_, n) in v {
                n.notify_one();
            }
        }
    }

    fn wake_all(&self) {
        for v in self.lock().values() {
            for (_, n) in v {
                n.notify_one();
            }
        }
    }

    /// Forwards the node's inbox notices to sessions until `stop`.
    pub async fn run(
        self: Arc<Self>,
        mut notices: broadcast::Receiver<InboxNotice>,
        mut installs: watch::Receiver<u64>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                r = installs.changed() => {
                    if r.is_err() {
                        return;
                    }
                    self.lock_recent().clear();
                    self.wake_all();
                }
                n = notices.recv() => match n {
                    Ok(n) => {
                        self.remember(&n);
                        self.wake_user(n.user);
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "inbox notices lagged; waking every session");
                        self.lock_recent().clear();
                        self.wake_all();
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use missive_chat::records::EventKind;
    use missive_engine::keys::ConversationId;

    fn notice(user: u64, useq: u64) -> InboxNotice {
        InboxNotice {
            user: UserId(user),
            useq: missive_chat::Useq(useq),
            event: Arc::new(InboxEvent {
                conv: ConversationId(7),
                eseq: missive_chat::Eseq(useq),
                event: EventKind::Receipt {
                    user: UserId(9),
                    delivered: missive_chat::Seq(useq),
                    read: missive_chat::Seq(0),
                },
                at: useq,
            }),
        }
    }

    fn useqs(v: Option<Vec<(u64, InboxEvent)>>) -> Option<Vec<u64>> {
        v.map(|v| v.into_iter().map(|(u, _)| u).collect())
    }

    #[test]
    fn the_ring_answers_only_what_it_can_vouch_for() {
        let hub = Arc::new(Hub::default());
        // Nobody follows user 1 yet: nothing is kept.
        hub.remember(&notice(1, 1));
        assert_eq!(useqs(hub.after(UserId(1), 0, 10)), None);
        let sub = hub.subscribe(UserId(1));
        for u in 2..=4 {
            hub.remember(&notice(1, u));
        }
        assert_eq!(useqs(hub.after(UserId(1), 1, 10)), Some(vec![2, 3, 4]));
        assert_eq!(useqs(hub.after(UserId(1), 3, 10)), Some(vec![4]));
        assert_eq!(useqs(hub.after(UserId(1), 4, 10)), Some(vec![]));
        assert_eq!(useqs(hub.after(UserId(1), 2, 1)), Some(vec![3]));
        // Useq 1 was never kept: a cursor before it goes to the store.
        assert_eq!(useqs(hub.after(UserId(1), 0, 10)), None);
        // A hole empties the ring: only what follows it is vouched for.
        hub.remember(&notice(1, 6));
        assert_eq!(useqs(hub.after(UserId(1), 4, 10)), None);
        assert_eq!(useqs(hub.after(UserId(1), 5, 10)), Some(vec![6]));
        // Bounded.
        for u in 7..=(7 + RECENT as u64) {
            hub.remember(&notice(1, u));
        }
        assert_eq!(useqs(hub.after(UserId(1), 6, 1000)), None);
        // The last session gone, the ring goes too.
        drop(sub);
        assert_eq!(useqs(hub.after(UserId(1), 100, 10)), None);
    }
}
