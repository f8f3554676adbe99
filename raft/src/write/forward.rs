//! A write's way to its shard's leader: retried while an election is
//! under way, queued on this node's batcher when it hosts the shard (its
//! group answers NotLeader naming the leader if it does not lead, and the
//! write is forwarded once), sent to the leader as located when it does
//! not host the shard.
//!
//! ```text
//!  write(shard, cmd) ─► hosted? ─► batcher lane (system or clients)
//!                    │             └─ NotLeader(l) ─► forward to l (once)
//!                    └─ not hosted ─► locate ─► forward to the leader
//!                                      (a NotLeader naming another
//!                                       leader: learn it, try again)
//! ```
//!
//! Only answers that prove nothing was written are retried, until the
//! caller's election wait runs out: NotLeader (openraft's
//! `ForwardToLeader`: the entry was never proposed, or will never commit),
//! with or without a leader named — a leader named by a node that has just
//! lost the leadership, or by the named leader itself as it hands it over,
//! is tried again after the backoff — and an unreachable node. A write
//! whose outcome is unknown is never sent twice.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::app::App;
use crate::error::{Error, Result};
use crate::ids::{NodeId, ShardId};
use crate::shared::Shared;
use crate::transport::failure::{call_failed, from_remote};
use crate::transport::{Reply, Rpc};
use crate::write::batcher::{self, Pending};

/// The first pause before retrying a write that found no leader.
const RETRY_FIRST: Duration = Duration::from_millis(10);
/// The longest pause between retries: short next to an election (0.5 s),
/// since a retry that finds no leader costs one local call or one refused
/// connect; and a leader elected here ends the pause at once anyway.
const RETRY_MAX: Duration = Duration::from_millis(50);

impl<A: App> Shared<A> {
    /// [`Node::write`] once the shard is known. One span per write (DEBUG:
    /// off by default, nearly free then), inside the caller's request span.
    #[tracing::instrument(level = "debug", name = "raft_write", skip_all, fields(shard = shard.0))]
    pub(crate) async fn write(
        self: &Arc<Self>,
        shard: ShardId,
        command: A::Command,
        election_wait: Duration,
    ) -> Result<A::Outcome> {
        let deadline = tokio::time::Instant::now() + election_wait;
        let mut backoff = RETRY_FIRST;
        loop {
            let r = Arc::clone(self)
                .write_to(shard, command.clone(), true)
                .await;
            let retry = matches!(
                &r,
                Err(Error::NotLeader { .. }) | Err(Error::Transport { .. })
            );
            if !retry || tokio::time::Instant::now() + backoff > deadline {
                return r;
            }
            self.leader_change_or(shard, backoff).await;
            backoff = (backoff * 2).min(RETRY_MAX);
        }
    }

    /// [`Node::write`]: routed by this node's slot map; a command the shard
    /// refuses as misrouted (it split after the map was made: nothing was
    /// written) is routed again with a refreshed map until the election
    /// wait runs out.
    pub(crate) async fn write_routed(
        self: &Arc<Self>,
        command: A::Command,
        election_wait: Duration,
    ) -> Result<A::Outcome> {
        let deadline = tokio::time::Instant::now() + election_wait;
        let mut backoff = RETRY_FIRST;
        loop {
            let shard = self.app.shard_of(&self.slot_map(), &command)?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let r = self.write(shard, command.clone(), left).await;
            let misrouted = match &r {
                Ok(o) => A::is_misrouted(o),
                Err(Error::Misrouted { .. }) => true,
                Err(_) => false,
            };
            if !misrouted || tokio::time::Instant::now() + backoff > deadline {
                return r;
            }
            if let Err(e) = self.refresh_map().await {
                tracing::debug!(error = %e, "refreshing the map after a misrouted write");
            }
            self.adopt_from_map().await;
            if self.app.shard_of(&self.slot_map(), &command)? == shard {
                // The map does not show the split yet (it is being
                // recorded): wait a little.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
    }

    /// Waits until this node's view of `shard`'s leader changes (an
    /// election ended: retry at once, not after the rest of a backoff) or
    /// `backoff` passes. For a shard not hosted here there is nothing to
    /// watch: just the backoff.
    async fn leader_change_or(&self, shard: ShardId, backoff: Duration) {
        let Ok(g) = self.group(shard) else {
            tokio::time::sleep(backoff).await;
            return;
        };
        let mut metrics = g.raft().metrics();
        let before = metrics.borrow_and_update().current_leader;
        let changed = async {
            while metrics.changed().await.is_ok() {
                if metrics.borrow().current_leader != before {
                    return;
                }
            }
            // The group stopped: nothing will change; let the backoff run.
            std::future::pending::<()>().await;
        };
        let _ = tokio::time::timeout(backoff, changed).await;
    }

    /// One attempt: a shard hosted here goes to its batcher, one hosted
    /// elsewhere to its leader. With `forward`, a NotLeader answer naming
    /// another node sends the write there once; a write that was itself
    /// forwarded here has `forward` false, so it never bounces on.
    pub(crate) async fn write_to(
        self: Arc<Self>,
        shard: ShardId,
        command: A::Command,
        forward: bool,
    ) -> Result<A::Outcome> {
        if forward && !self.hosts(shard) {
            return self.write_remote(shard, command).await;
        }
        let g = self.group(shard)?;
        let (tx, rx) = oneshot::channel();
        let lane = if A::is_system(&command) {
            &g.system
        } else {
            &g.batcher
        };
        lane.send(Pending {
            command: command.clone(),
            reply: tx,
        })
        .await
        .map_err(|_| Error::Unavailable {
            shard,
            reason: "the node is shutting down".into(),
        })?;
        // Queued, maybe proposed: if the answer never comes, the outcome
        // is unknown, not "not written".
        let r = rx.await.map_err(|_| Error::Unknown {
            shard,
            reason: "the node shut down before answering".into(),
        })?;
        match r {
            Err(Error::NotLeader {
                leader: Some((leader, addr)),
                ..
            }) if forward && leader != self.id => self.forward(shard, leader, &addr, command).await,
            other => other,
        }
    }

    /// Sends the write to `leader` (at `addr`), which queues it on its own
    /// batcher; a lost or unanswered call is an unknown outcome.
    pub(crate) async fn forward(
        &self,
        shard: ShardId,
        leader: NodeId,
        addr: &str,
        command: A::Command,
    ) -> Result<A::Outcome> {
        let reply = self
            .peers
            .call(
                leader,
                addr,
                shard,
                Rpc::Write { command },
                batcher::APPLY_TIMEOUT + Duration::from_secs(1),
            )
            .await;
        match reply {
            Ok(Reply::Write(Ok(o))) => Ok(o),
            Ok(Reply::Write(Err(f))) => Err(from_remote(shard, f)),
            other => Err(call_failed(shard, leader, "forwarded", other)),
        }
    }

    /// A write for a shard this node does not host: to its leader.
    pub(crate) async fn write_remote(
        &self,
        shard: ShardId,
        command: A::Command,
    ) -> Result<A::Outcome> {
        let mut refresh = false;
        let mut last = None;
        for _ in 0..3 {
            let (leader, addr) = self.route_target(shard, refresh).await?;
            match self.forward(shard, leader, &addr, command.clone()).await {
                Err(Error::NotLeader {
                    leader: Some((l, a)),
                    ..
                }) if l != leader => {
                    self.locations.learn_leader(shard, l, a);
                    refresh = false;
                }
                Err(e @ Error::Transport { .. }) | Err(e @ Error::NotLeader { .. }) => {
                    refresh = true;
                    last = Some(e);
                }
                other => return other,
            }
        }
        Err(last.unwrap_or(Error::NotLeader {
            shard,
            leader: None,
        }))
    }
}
