//! The server side of every node-to-node call: what this node does with
//! each [`Rpc`] (Raft's own messages, snapshot chunks, routed reads and
//! writes, placement questions, replica changes, retirement, signals).
//! `transport::server` decodes the frames and calls [`Dispatch`] here.

use std::sync::Arc;

use openraft::error::{CheckIsLeaderError, RaftError};

use crate::app::App;
use crate::cluster::membership;
use crate::error::Error;
use crate::ids::{NodeId, ShardId};
use crate::shared::Shared;
use crate::storage::snapshot::ShardSnapshot;
use crate::transport::failure::to_remote;
use crate::transport::server::Dispatch;
use crate::transport::{RemoteFailure, Reply, Rpc};

impl<A: App> Dispatch<A> for Shared<A> {
    fn dispatch(
        self: Arc<Self>,
        _from: NodeId,
        shard: ShardId,
        rpc: Rpc<A>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Reply<A>> + Send>> {
        Box::pin(async move {
            // Signals belong to no group.
            let rpc = match rpc {
                Rpc::Signal { payload } => {
                    let _ = self.signals.send(payload.into());
                    return Reply::Signal;
                }
                group_rpc => group_rpc,
            };
            let Ok(g) = self.group(shard) else {
                return Reply::Failed(format!("{shard} is not hosted here"));
            };
            let raft = g.raft();
            match rpc {
                Rpc::Append(req) => {
                    self.revive_if_retired(shard);
                    Reply::Append(raft.append_entries(req).await)
                }
                Rpc::Vote(req) => Reply::Vote(raft.vote(req).await),
                Rpc::SnapshotChunk {
                    snapshot_id,
                    seq,
                    chunk,
                } => Reply::Chunk(
                    self.snapshots
                        .chunk(shard, snapshot_id, seq, &chunk)
                        .map_err(|e| e.to_string()),
                ),
                Rpc::SnapshotDone {
                    snapshot_id,
                    chunks,
                    vote,
                    meta,
                } => match self.snapshots.done(shard, &snapshot_id, chunks) {
                    Ok(path) => Reply::Snapshot(
                        raft.install_full_snapshot(
                            vote,
                            openraft::Snapshot {
                                meta,
                                snapshot: Box::new(ShardSnapshot::Received(path)),
                            },
                        )
                        .await,
                    ),
                    Err(e) => Reply::Failed(e.to_string()),
                },
                Rpc::Signal { .. } => Reply::Signal,
                Rpc::Locate => Reply::Locate(
                    self.hosts(shard)
                        .then(|| membership::placement(&raft, shard)),
                ),
                Rpc::ChangeReplicas { change } => Reply::ChangeReplicas(
                    match self.leads(shard) {
                        true => self.change_replicas(shard, change).await,
                        false => Err(Error::NotLeader {
                            shard,
                            leader: self.known_leader(shard),
                        }),
                    }
                    .map_err(to_remote),
                ),
                Rpc::Retire { removed_at } => match self.retire(shard, removed_at.index) {
                    Ok(()) => Reply::Retired,
                    Err(e) => Reply::Failed(e.to_string()),
                },
                Rpc::Read { op, linearizable } => Reply::Read(
                    self.serve_read(shard, op, linearizable)
                        .await
                        .map_err(to_remote),
                ),
                Rpc::ReadIndex => Reply::ReadIndex(match raft.get_read_log_id().await {
                    Ok((read, _applied)) => Ok(read.map(|l| l.index)),
                    Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                        Err(RemoteFailure::NotLeader {
                            leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
                        })
                    }
                    Err(e) => Err(RemoteFailure::Unavailable(e.to_string())),
                }),
                Rpc::Campaign => {
                    let voter = raft
                        .metrics()
                        .borrow()
                        .membership_config
                        .membership()
                        .get_node(&self.id)
                        .is_some()
                        && !self.retired.contains(shard);
                    if !voter {
                        return Reply::Failed(format!("not a voter of {shard}"));
                    }
                    match raft.trigger().elect().await {
                        Ok(()) => Reply::Campaigning,
                        Err(e) => Reply::Failed(e.to_string()),
                    }
                }
                Rpc::Write { command } => Reply::Write(
                    Arc::clone(&self)
                        .write_to(shard, command, false)
                        .await
                        .map_err(to_remote),
                ),
            }
        })
    }

    fn map_version(&self) -> u64 {
        self.peers.newest_map_version()
    }

    fn heard_map_version(&self, v: u64) {
        self.peers.saw_map_version(v);
    }

    fn refuses(&self, from: NodeId) -> Option<String> {
        self.cluster_map()
            .forgotten
            .contains(&from)
            .then(|| format!("node {from} was removed from the cluster"))
    }
}
