//! Each user's open sockets on this node — WebSockets and gRPC `Sync` and
//! `Live` streams — counted against `limits.max_sockets_per_user`.
//!
//! A user has a few devices, each with a socket or two (a tab, a
//! background stream); a thousand sockets for one user is a runaway
//! client or an attack, and each costs the server memory and a wake per
//! event. The count is per node: a cluster's nodes do not share it, so a
//! user may hold up to the cap on each node they reach (clients are
//! normally pinned to one node by the load balancer's hash).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;

use missive_chat::command::UserId;

use crate::error::ApiError;

/// Open sockets by user.
#[derive(Debug)]
pub struct Sockets {
    cap: usize,
    open: Mutex<HashMap<UserId, usize>>,
}

/// One admitted socket; gives its place back on drop.
#[derive(Debug)]
pub struct SocketSlot {
    sockets: Arc<Sockets>,
    user: UserId,
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let mut open = self.sockets.lock();
        if let Some(n) = open.get_mut(&self.user) {
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, usize>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A place for one more socket of `user`, or 429 `too_many_sockets`.
    pub fn admit(self: &Arc<Self>, user: UserId) -> Result<SocketSlot, ApiError> {
        let mut open = self.lock();
        let n = open.entry(user).or_insert(0);
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
        Ok(SocketSlot {
            sockets: Arc::clone(self),
            user,
        })
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
        let _b = s.admit(UserId(2)).unwrap();
        drop(a1);
        let _a3 = s.admit(UserId(1)).unwrap();
        assert_eq!(s.users(), 2);
    }
}
