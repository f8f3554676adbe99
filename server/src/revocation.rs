//! Whether a token was revoked since it was issued ("log out other
//! devices", an operator logging a user out), checked on every request and
//! every socket, on every node.
//!
//! The truth is the user's `Revocations` record on their shard
//! (`Command::RevokeSessions`; `records::Revocations` says which tokens it
//! covers). Reading it for every request would cost a store read each, so
//! each node caches it per user for [`FRESH`]: a revocation reaches every
//! request on every node within that long. Open sockets do not make
//! requests, so the node that takes a revocation also signals every node
//! (`presence::Signal::Revoked`, the channel presence uses): each drops its
//! cached copy and wakes that user's sockets, which re-check and close
//! (4003 `token_revoked`). A node that misses the signal (cut off at that moment)
//! still refuses the revoked token's next request after [`FRESH`]; its
//! open sockets of that token stay until they reconnect — the documented
//! bound.
//!
//! A cached entry is kept only while it is fresh: the map is pruned of
//! stale entries at most once per [`PRUNE_EVERY`], inline, so its size
//! follows the users active in the last few seconds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use tokio::sync::watch;

use missive_chat::command::UserId;
use missive_chat::records::Revocations;
use missive_raft::node::Consistency;

use crate::auth::Token;
use crate::error::ApiError;
use crate::service::Service;

/// How long a node trusts its copy of a user's revocations.
pub const FRESH: Duration = Duration::from_secs(2);

/// How often stale entries are dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(30);

type Cache = HashMap<UserId, (Arc<Revocations>, Instant)>;

/// Each user's revocations, as this node last read them.
#[derive(Debug)]
pub struct Revoked {
    cache: Mutex<(Cache, Instant)>,
}

impl Default for Revoked {
    fn default() -> Self {
        Revoked {
            cache: Mutex::new((HashMap::new(), Instant::now())),
        }
    }
}

/// 401 `token_revoked`.
pub fn revoked_error() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "token_revoked",
        "this device was logged out; sign in again for a new token",
    )
}

impl Revoked {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Cache, Instant)> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `user`'s revocations: the cached copy while fresh, else read from
    /// the store (a stale read: the replica here, or the shard's; it may
    /// miss a revocation of the last milliseconds, and then the next read
    /// after [`FRESH`] finds it).
    async fn of(&self, svc: &Service, user: UserId) -> Result<Arc<Revocations>, ApiError> {
        {
            let mut g = self.lock();
            let now = Instant::now();
            if now.duration_since(g.1) >= PRUNE_EVERY {
                g.0.retain(|_, (_, at)| now.duration_since(*at) < FRESH);
                g.0.shrink_to_fit();
                g.1 = now;
            }
            if let Some((r, at)) = g.0.get(&user) {
                if now.duration_since(*at) < FRESH {
                    return Ok(Arc::clone(r));
                }
            }
        }
        self.read(svc, user, Consistency::Stale).await
    }

    /// Reads `user`'s revocations and caches them.
    async fn read(
        &self,
        svc: &Service,
        user: UserId,
        consistency: Consistency,
    ) -> Result<Arc<Revocations>, ApiError> {
        let r = Arc::new(svc.node.revocations(user, consistency).await?);
        self.lock().0.insert(user, (Arc::clone(&r), Instant::now()));
        Ok(r)
    }

    /// Ok unless `token` was revoked (401 `token_revoked`).
    pub async fn check(&self, svc: &Service, token: &Token) -> Result<(), ApiError> {
        let r = self.of(svc, token.caller.user).await?;
        if r.revokes(token.caller.device, token.issued_at) {
            return Err(revoked_error());
        }
        Ok(())
    }

    /// Drops the cached copy of `user`'s revocations (they changed).
    pub fn forget(&self, user: UserId) {
        self.lock().0.remove(&user);
    }

    /// Resolves once `token` is found revoked, checking each time its
    /// user's sockets are woken (`wakes`, from `Sockets`); never, if the
    /// waking side goes.
    pub async fn until_revoked(
        self: Arc<Self>,
        svc: Arc<Service>,
        token: Token,
        mut wakes: watch::Receiver<u64>,
    ) {
        while wakes.changed().await.is_ok() {
            // A failed read (no leader right now) is not a revocation; the
            // next wake or request of the token checks again.
            // Linearizable: the wake follows a revocation this replica
            // may not have applied yet.
            let user = token.caller.user;
            // Boxed: inline, the read's state (a Raft read barrier, the
            // transport) made every idle session's task 3 KiB larger.
            let read = Box::pin(self.read(&svc, user, Consistency::Linearizable));
            if let Ok(r) = read.await {
                if r.revokes(token.caller.device, token.issued_at) {
                    return;
                }
            }
        }
        std::future::pending::<()>().await;
    }

    /// Users with a cached copy.
    pub fn cached(&self) -> usize {
        self.lock().0.len()
    }
}
