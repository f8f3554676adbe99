//! The read path: one read of a shard's data, served here when this node
//! may (a voter for a linearizable read, any replica for a stale one) after
//! `read_index` made the replica fresh enough, else at the shard's leader.
//!
//! ```text
//!  read(shard, c, op) ─► local? ─► read_index::ensure_read ─► the LSM
//!                     └─ routed: Rpc::Read to the leader as located,
//!                        retried (re-located) while the answer is
//!                        retryable, up to READ_INDEX_WAIT
//! ```
//!
//! Reads are idempotent, so unlike writes they retry through elections
//! and unreachable nodes freely.

mod read_index;

use std::sync::Arc;
use std::time::Duration;

use missive_engine::keys::{ConversationId, Timestamp};
use missive_engine::lsm::Direction;

use crate::app::App;
use crate::error::{Error, Result};
use crate::ids::{NodeId, ShardId};
use crate::shared::Shared;
use crate::transport::failure::from_remote;
use crate::transport::{ReadOp, ReadResult, Reply, Rpc};

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read began (the
    /// leader confirms its leadership with a quorum first).
    Linearizable,
    /// Whatever this replica has applied: may lag, never goes backwards.
    Stale,
}

/// How long a follower read waits for the leader's read index and then
/// for its own apply to reach it; also the budget of a routed read.
pub(crate) const READ_INDEX_WAIT: Duration = Duration::from_secs(5);

impl<A: App> Shared<A> {
    /// One read of `shard`'s data at `c`: here if this node is a voter of
    /// it (or hosts it, for a stale read), else at the leader.
    pub(crate) async fn read(
        self: &Arc<Self>,
        shard: ShardId,
        c: Consistency,
        op: ReadOp,
    ) -> Result<ReadResult> {
        // A slot a split moved after the caller routed: asked again of its
        // owner under the refreshed map (a few times: each split moves a
        // slot once).
        let mut shard = shard;
        let mut tries = 0;
        loop {
            match self.read_once(shard, c, op.clone()).await {
                Err(Error::Misrouted { .. }) if tries < 5 => {
                    tries += 1;
                    match self.reroute_read(&op).await {
                        Some(s) if s != shard => shard = s,
                        _ => tokio::time::sleep(Duration::from_millis(20 << tries)).await,
                    }
                }
                other => return other,
            }
        }
    }

    /// The value under `key` on `shard` at `c`, as [`Shared::read`] of a
    /// `Get` would give it, but when served here a value kept in a blob
    /// file comes as a view of its mapping (`Lsm::get_shared`), not a
    /// copy — the media download path. Anything else (a routed read, a
    /// slot a split moved) takes [`Shared::read`].
    pub(crate) async fn get_shared(
        self: &Arc<Self>,
        shard: ShardId,
        c: Consistency,
        key: &[u8],
    ) -> Result<Option<bytes::Bytes>> {
        let op = ReadOp::Get { key: key.to_vec() };
        let local = match c {
            Consistency::Stale => self.hosts(shard),
            Consistency::Linearizable => self.votes_in(shard),
        };
        if local {
            self.ensure_read(shard, c).await?;
            // As `read_local` does; a slot a split moved goes the long way.
            if self.check_owner(shard, &op).is_ok() {
                return Ok(self.lsm.get_shared(key)?);
            }
        }
        match self.read(shard, c, op).await? {
            ReadResult::Value(v) => Ok(v.map(bytes::Bytes::from)),
            _ => Err(Error::malformed("get", "answer of the wrong kind")),
        }
    }

    /// [`Shared::read`] once, at `shard`.
    pub(crate) async fn read_once(
        &self,
        shard: ShardId,
        c: Consistency,
        op: ReadOp,
    ) -> Result<ReadResult> {
        let local = match c {
            Consistency::Stale => self.hosts(shard),
            Consistency::Linearizable => self.votes_in(shard),
        };
        if local {
            self.ensure_read(shard, c).await?;
            return self.read_local(shard, &op);
        }
        let deadline = tokio::time::Instant::now() + READ_INDEX_WAIT;
        let mut refresh = false;
        loop {
            let (target, addr) = self.route_target(shard, refresh).await?;
            let reply = self
                .peers
                .call(
                    target,
                    &addr,
                    shard,
                    Rpc::Read {
                        op: op.clone(),
                        linearizable: c == Consistency::Linearizable,
                    },
                    READ_INDEX_WAIT,
                )
                .await;
            let err = match reply {
                Ok(Reply::Read(Ok(r))) => return Ok(r),
                Ok(Reply::Read(Err(f))) => from_remote(shard, f),
                Ok(other) => Error::Unavailable {
                    shard,
                    reason: format!("unexpected reply {other:?}"),
                },
                Err(e) => Error::Transport {
                    node: target,
                    reason: e.to_string(),
                },
            };
            if !err.is_retryable() || tokio::time::Instant::now() >= deadline {
                return Err(err);
            }
            refresh = true;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `op` served by one node in particular — the one holding a backup
    /// stream or a checkpoint's view — here if it is this node.
    pub(crate) async fn read_on(
        &self,
        node: NodeId,
        addr: &str,
        shard: ShardId,
        op: ReadOp,
        wait: Duration,
    ) -> Result<ReadResult> {
        if node == self.id {
            return match op {
                ReadOp::Checksum { index } => self.checkpoint_checksum(shard, index).await,
                op => self.read_local(shard, &op),
            };
        }
        let rpc = Rpc::Read {
            op,
            linearizable: false,
        };
        match self.peers.call(node, addr, shard, rpc, wait).await {
            Ok(Reply::Read(Ok(r))) => Ok(r),
            Ok(Reply::Read(Err(f))) => Err(from_remote(shard, f)),
            Ok(other) => Err(Error::malformed("read", format!("answered {other:?}"))),
            Err(e) => Err(Error::Transport {
                node,
                reason: e.to_string(),
            }),
        }
    }

    /// A `Read` from a node that does not host the shard.
    pub(crate) async fn serve_read(
        &self,
        shard: ShardId,
        op: ReadOp,
        linearizable: bool,
    ) -> Result<ReadResult> {
        // Asked of this replica in particular, at a log position it waits
        // for itself. The asker named it from the shard's membership at
        // that position, so a replica that has the group but has not yet
        // replicated that far (a non-designated replica learns even its
        // first membership through replication) is behind, not a
        // stranger: it waits like any other, instead of refusing.
        if let ReadOp::Checksum { index } = op {
            if self.group(shard).is_err() || self.retired.contains(shard) {
                return Err(self.not_replicated(shard));
            }
            return self.checkpoint_checksum(shard, index).await;
        }
        if !self.hosts(shard) {
            return Err(self.not_replicated(shard));
        }
        let c = if linearizable {
            Consistency::Linearizable
        } else {
            Consistency::Stale
        };
        self.ensure_read(shard, c).await?;
        self.read_local(shard, &op)
    }

    /// The refusal of a read for a shard this node holds no replica of.
    fn not_replicated(&self, shard: ShardId) -> Error {
        Error::Unavailable {
            shard,
            reason: format!("node {} does not replicate it", self.id),
        }
    }

    /// Serves `op` from this node's LSM (the caller decided it may).
    pub(crate) fn read_local(&self, shard: ShardId, op: &ReadOp) -> Result<ReadResult> {
        self.check_owner(shard, op)?;
        let limit = |l: u64| usize::try_from(l).unwrap_or(usize::MAX);
        Ok(match op {
            ReadOp::BackupOpen { phase } => return self.open_backup(shard, *phase),
            ReadOp::BackupChunk { token, cursor } => {
                return self.backup_chunk(shard, *token, cursor)
            }
            ReadOp::Checksum { .. } => {
                return Err(Error::InvalidArgument(
                    "a checksum is asked of one replica, not read through the read path".into(),
                ))
            }
            ReadOp::App { query } => ReadResult::App(self.app.query(shard, &self.lsm, query)?),
            ReadOp::Get { key } => ReadResult::Value(self.lsm.get(key)?),
            ReadOp::Scan {
                lo,
                hi,
                reverse,
                limit: l,
            } => {
                let dir = if *reverse {
                    Direction::Reverse
                } else {
                    Direction::Forward
                };
                ReadResult::Pairs(self.lsm.scan(lo, hi.as_deref(), dir, limit(*l))?)
            }
            ReadOp::Latest { conv, limit: l } => ReadResult::Messages(
                self.lsm
                    .latest(ConversationId(*conv), limit(*l))?
                    .into_iter()
                    .map(|m| (m.ts.0, m.value))
                    .collect(),
            ),
            ReadOp::Before { conv, ts, limit: l } => ReadResult::Messages(
                self.lsm
                    .before(ConversationId(*conv), Timestamp(*ts), limit(*l))?
                    .into_iter()
                    .map(|m| (m.ts.0, m.value))
                    .collect(),
            ),
            ReadOp::After { conv, ts, limit: l } => ReadResult::Messages(
                self.lsm
                    .after(ConversationId(*conv), Timestamp(*ts), limit(*l))?
                    .into_iter()
                    .map(|m| (m.ts.0, m.value))
                    .collect(),
            ),
        })
    }
}
