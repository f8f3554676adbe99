//! Each user's open sockets on this node — WebSockets and gRPC `Sync` and
//! `Live` streams — counted against `limits.max_sockets_per_user`.
//!
//! A user has a few devices, each with a socket or two (a tab, a
//! background stream); a thousand sockets for one user is a runaway
//! client or an attack, and each costs the server memory and a wake per
//! event. The count is per node: a cluster's nodes do not share it, so a
//! user may hold up to the cap on each node they reach (clients are
//! normally pinned to one node by the load balancer's hash).
//!
//! The registry also wakes a user's sockets when their tokens may have
//! been revoked (`revocation`): each slot holds a receiver of its user's
//! revocation counter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use tokio::sync::watch;

use missive_chat::command::UserId;

use crate::error::ApiError;

/// Open sockets by user.
#[derive(Debug)]
pub struct Sockets {
    cap: usize,
    /// Per user: open sockets, and the counter [`Sockets::wake`] bumps.
    open: Mutex<HashMap<UserId, (usize, watch::Sender<u64>)>>,
}

/// One admitted socket; gives its place back on drop.
#[derive(Debug)]
pub struct SocketSlot {
    sockets: Arc<Sockets>,
    user: UserId,
    revoked: watch::Receiver<u64>,
}

impl SocketSlot {
    /// Changes when the user's tokens may have been revoked: the socket
    /// should check its own.
    pub fn revocations(&self) -> watch::Receiver<u64> {
        self.revoked.clone()
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let mut open = self.sockets.lock();
        if let Some((n, _)) = open.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.user);
            }
        }
    }
}

impl Sockets {
    /// At most `cap` sockets per user.
    pub fn new(cap: usize) -> Self {
        Sockets {
            cap,
            open: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, (usize, watch::Sender<u64>)>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A place for one more socket of `user`, or 429 `too_many_sockets`.
    pub fn admit(self: &Arc<Self>, user: UserId) -> Result<SocketSlot, ApiError> {
        let mut open = self.lock();
        let (n, tx) = open
            .entry(user)
            .or_insert_with(|| (0, watch::Sender::new(0)));
        if *n >= self.cap {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_sockets",
                format!(
                    "this user already has {} sockets open here (the limit); close one first",
                    self.cap
                ),
            ));
        }
        *n += 1;
        let revoked = tx.subscribe();
        Ok(SocketSlot {
            sockets: Arc::clone(self),
            user,
            revoked,
        })
    }

    /// Wakes `user`'s sockets here to check their tokens.
    pub fn wake(&self, user: UserId) {
        if let Some((_, tx)) = self.lock().get(&user) {
            tx.send_modify(|n| *n += 1);
        }
    }

    /// Users with at least one socket here.
    pub fn users(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn the_cap_is_per_user_and_a_closed_socket_frees_its_place() {
        let s = Arc::new(Sockets::new(2));
        let a1 = s.admit(UserId(1)).unwrap();
        let _a2 = s.admit(UserId(1)).unwrap();
        let e = s.admit(UserId(1)).unwrap_err();
        assert_eq!(e.code, "too_many_sockets");
        let b = s.admit(UserId(2)).unwrap();
        let mut woken = b.revocations();
        s.wake(UserId(1));
        assert!(
            !woken.has_changed().unwrap(),
            "only the user's sockets wake"
        );
        s.wake(UserId(2));
        assert!(woken.has_changed().unwrap());
        woken.mark_unchanged();
        drop(a1);
        let _a3 = s.admit(UserId(1)).unwrap();
        assert_eq!(s.users(), 2);
    }
}
