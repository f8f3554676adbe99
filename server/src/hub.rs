//! Live delivery: which WebSocket sessions follow which user's inbox, and
//! waking them when it grows.
//!
//! The hub carries no data. Apply on this replica publishes "user U's
//! inbox reached useq N"; the hub wakes U's sessions, and each reads its
//! inbox from its own cursor. A wake that is lost (the notice channel
//! lagged, a snapshot replaced a shard) costs a wake-everyone, never an
//! event: the store is the queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, watch, Notify};

use missive_raft::apply::InboxNotice;
use missive_raft::command::UserId;

/// Each user's sessions: (session id, its wake-up).
type Sessions = HashMap<UserId, Vec<(u64, Arc<Notify>)>>;

/// Sessions by user.
#[derive(Debug, Default)]
pub struct Hub {
    sessions: Mutex<Sessions>,
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
                    self.wake_all();
                }
                n = notices.recv() => match n {
                    Ok(n) => self.wake_user(n.user),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "inbox notices lagged; waking every session");
                        self.wake_all();
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}
