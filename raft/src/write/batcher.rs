//! Packing concurrent writes of a shard into Raft entries.
//!
//! openraft 0.9 pays one log flush per client write, so a command per entry
//! would cap a shard at one fsync's worth of messages. The batcher is group
//! commit one level up: a write is proposed at once if nothing is queued
//! (no added latency when idle), and writes that arrive while entries are
//! being proposed ride together in the next entry, up to `max_batch`
//! commands and about a chunk of bulk bytes (`ENTRY_BULK_BYTES`). Entries
//! are proposed in the order their batches formed; each batch's answers
//! come back when its entry is applied.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, Semaphore};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};

use crate::app::{App, Batch, ENTRY_BULK_BYTES};
use crate::error::Error;
use crate::ids::{NodeAddr, NodeId, ShardId};
use crate::shared::RaftCell;
use crate::types::Raft;

/// One queued write.
pub(crate) struct Pending<A: App> {
    pub(crate) command: A::Command,
    pub(crate) reply: oneshot::Sender<Result<A::Outcome, Error>>,
}

/// Entries proposed but not yet applied, per shard. Bounds memory under
/// overload, and sets how big entries get: while these are in flight the
/// next batch fills. Each entry costs a trip through openraft's core, the
/// log and apply whatever it carries, so a deep pipeline (this was 64)
/// made many small entries and less throughput (docs/benchmarks.md,
/// cluster: 64 → 4 took one node from 7.7K to 17K msgs/s at 64 writers).
/// Once the commit record stopped costing a write per round, 2 did better
/// still on one node and on three (4 → 2: 64 writers 31–33K → 36–41K msgs/s
/// on one node, 9.7–11.1K → 11.1–12.9K on three; 1 024 writers equal or
/// better; e2e delivered p50 at 5 000 msgs/s 4.7–5.8 → 3.1–4.8 ms), while
/// two entries still overlap a follower's append with the next batch.
///
/// More in flight does not buy uploads more either: openraft 0.9's core
/// waits for each append's flush before it takes the next (`RaftCore::
/// append_to_log`), so a shard's entries reach its log one fdatasync at a
/// time however many are queued (measured with 1 MiB pieces: eight bulk
/// entries in flight, 504–521 MiB/s; two, 513–552).
const MAX_IN_FLIGHT: usize = 2;

/// How long a proposed write may take before its caller hears "unknown".
pub(crate) const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The leader's clock, µs since the epoch: stamped into each entry.
fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A shard's two queues. The node's own fan-out writes (`Deliver`,
/// `OutboxDone`) go ahead of client writes: under overload every queued
/// client write would otherwise sit in front of each fan-out round, and
/// the fan-out — one round in flight per shard — fell to a trickle while
/// sends kept being acknowledged (missive-bench e2e: 0.3 % of events
/// delivered at 20 000 msgs/s). With the fan-out first, overload shows up
/// where it belongs: as slower `sent` acks, i.e. backpressure on senders.
pub(crate) struct Lanes<A: App> {
    /// The node's own writes (`App::is_system`), served first.
    pub(crate) system: mpsc::Receiver<Pending<A>>,
    /// Everything else.
    pub(crate) clients: mpsc::Receiver<Pending<A>>,
}

/// The writes of the entry that starts with `first`: what is queued joins
/// it, fan-out writes first, up to `max_batch` writes and
/// [`ENTRY_BULK_BYTES`] of bulk bytes. The write that would take the entry
/// past that is left in `carried`: it starts the next entry.
fn fill<A: App>(
    first: Pending<A>,
    lanes: &mut Lanes<A>,
    max_batch: usize,
    carried: &mut Option<Pending<A>>,
) -> Vec<Pending<A>> {
    let mut bytes = A::bulk_bytes(&first.command);
    let mut items = vec![first];
    for lane in [&mut lanes.system, &mut lanes.clients] {
        while carried.is_none() && items.len() < max_batch {
            let Ok(p) = lane.try_recv() else { break };
            let more = A::bulk_bytes(&p.command);
            if more > 0 && bytes + more > ENTRY_BULK_BYTES {
                *carried = Some(p);
            } else {
                bytes += more;
                items.push(p);
            }
        }
    }
    items
}

/// Runs until every sender of both lanes is gone.
pub(crate) async fn run<A: App>(
    cell: Arc<RaftCell<A>>,
    shard: ShardId,
    mut lanes: Lanes<A>,
    max_batch: usize,
) {
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut confirmed_term = None;
    // A write taken off a lane that did not fit in the entry before it.
    let mut carried: Option<Pending<A>> = None;
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(p) => p,
            None => tokio::select! {
                biased;
                Some(p) = lanes.system.recv() => p,
                Some(p) = lanes.clients.recv() => p,
                else => return,
            },
        };
        // Everything that queued while we waited for a permit joins.
        let items = fill(first, &mut lanes, max_batch, &mut carried);
        // The group's current Raft: a wiped replica's is replaced
        // (`cluster::wipe`).
        let raft = cell.get();
        if let Err(e) = confirm_leadership(&raft, shard, &mut confirmed_term).await {
            for p in items {
                let _ = p.reply.send(Err(e.clone()));
            }
            continue;
        }
        let (commands, replies): (Vec<A::Command>, Vec<_>) =
            items.into_iter().map(|p| (p.command, p.reply)).unzip();
        let batch = Batch {
            stamp_micros: now_micros(),
            commands,
        };
        let proposed = raft.client_write_ff(batch).await;
        tokio::spawn(async move {
            let result = match proposed {
                Err(fatal) => Err(Error::Unavailable {
                    shard,
                    reason: format!("raft stopped: {fatal}"),
                }),
                Ok(rx) => match tokio::time::timeout(APPLY_TIMEOUT, rx).await {
                    Err(_) => Err(Error::Unknown {
                        shard,
                        reason: format!("not applied within {APPLY_TIMEOUT:?}"),
                    }),
                    Ok(Err(_)) => Err(Error::Unknown {
                        shard,
                        reason: "the leader stopped before answering".into(),
                    }),
                    Ok(Ok(Ok(resp))) => Ok(resp.data.outcomes),
                    Ok(Ok(Err(e))) => Err(client_write_error(shard, RaftError::APIError(e))),
                },
            };
            match result {
                Ok(outcomes) if outcomes.len() == replies.len() => {
                    for (tx, o) in replies.into_iter().zip(outcomes) {
                        let _ = tx.send(Ok(o));
                    }
                }
                Ok(outcomes) => {
                    let e = Error::Fatal(format!(
                        "{shard}: {} outcomes for {} commands",
                        outcomes.len(),
                        replies.len()
                    ));
                    for tx in replies {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
                Err(e) => {
                    for tx in replies {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
            drop(permit);
        });
    }
}

/// Maps openraft's client-write error onto ours. `ForwardToLeader` means
/// the entry was not (or will never be) committed: this node is not the
/// leader, or the entry was truncated by a new one.
/// How long a leader may take to confirm, once per term, that a quorum
/// still follows it.
const CONFIRM_WAIT: Duration = Duration::from_secs(2);

/// Proposes nothing until this node has confirmed, once in its current
/// term, that a quorum follows it (`ensure_linearizable`: one heartbeat
/// round).
///
/// Why: openraft 0.9 restores a node that led before a restart as leader
/// at once (`Engine::startup`), in its old term. Such a stale leader
/// accepts proposals, cannot commit them, and steps down on the first
/// answer carrying a newer vote — but its proposals' callers wait until
/// the real leader truncates those entries, which can take many seconds
/// (its replication to the restarted node backs off). Measured: a write
/// through a restarted former leader hung for the whole 10 s apply timeout
/// and came back `Unknown`. Confirming first turns that into a prompt
/// `NotLeader`, which the caller retries or forwards.
async fn confirm_leadership<A: App>(
    raft: &Raft<A>,
    shard: ShardId,
    confirmed: &mut Option<u64>,
) -> Result<(), Error> {
    let (term, leads) = {
        let m = raft.metrics();
        let m = m.borrow();
        (m.current_term, m.current_leader == Some(m.id))
    };
    if leads && *confirmed == Some(term) {
        return Ok(());
    }
    match tokio::time::timeout(CONFIRM_WAIT, raft.ensure_linearizable()).await {
        Ok(Ok(_)) => {
            *confirmed = Some(term);
            Ok(())
        }
        Ok(Err(e)) => Err(check_leader_error(shard, e)),
        Err(_) => Err(Error::Unavailable {
            shard,
            reason: format!("leadership not confirmed within {CONFIRM_WAIT:?}"),
        }),
    }
}

/// A failed leadership check (`ensure_linearizable`) as our error:
/// `NotLeader` (with the leader if known) or `Unavailable`; nothing was
/// written either way.
pub(crate) fn check_leader_error(
    shard: ShardId,
    e: RaftError<NodeId, CheckIsLeaderError<NodeId, NodeAddr>>,
) -> Error {
    match e {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => Error::NotLeader {
            shard,
            leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
        },
        RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)) => Error::Unavailable {
            shard,
            reason: q.to_string(),
        },
        RaftError::Fatal(f) => Error::Unavailable {
            shard,
            reason: format!("raft stopped: {f}"),
        },
    }
}

pub(crate) fn client_write_error(
    shard: ShardId,
    e: RaftError<NodeId, ClientWriteError<NodeId, NodeAddr>>,
) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Error::NotLeader {
            shard,
            leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => Error::Unavailable {
            shard,
            reason: c.to_string(),
        },
        RaftError::Fatal(f) => Error::Unavailable {
            shard,
            reason: format!("raft stopped: {f}"),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::test_app::{Kv, KvCommand};

    fn put(
        len: usize,
    ) -> (
        Pending<Kv>,
        oneshot::Receiver<Result<crate::test_app::KvOutcome, Error>>,
    ) {
        let (reply, rx) = oneshot::channel();
        let command = KvCommand::Put {
            key: vec![0, 0, len as u8],
            value: vec![7; len],
        };
        (Pending { command, reply }, rx)
    }

    fn sizes(items: &[Pending<Kv>]) -> Vec<usize> {
        items.iter().map(|p| Kv::bulk_bytes(&p.command)).collect()
    }

    #[test]
    fn an_entry_holds_at_most_a_chunk_of_bulk_bytes() {
        let (system_tx, system) = mpsc::channel(16);
        let (clients_tx, clients) = mpsc::channel(16);
        let mut lanes = Lanes::<Kv> { system, clients };
        let mut waiting = Vec::new();
        let big = ENTRY_BULK_BYTES / 2 + 1;
        for len in [big, 3, big, ENTRY_BULK_BYTES + 5, 0, 4] {
            let (p, rx) = put(len);
            clients_tx.try_send(p).ok().unwrap();
            waiting.push(rx);
        }
        let (p, _rx) = put(1);
        system_tx.try_send(p).ok().unwrap();
        let mut carried = None;
        let mut entries = Vec::new();
        let (first, _rx) = put(2);
        let mut next = Some(first);
        while let Some(first) = next.take().or_else(|| carried.take()) {
            let items = fill(first, &mut lanes, 256, &mut carried);
            entries.push(sizes(&items));
        }
        // Fan-out first; two halves of a chunk never share an entry; one
        // write larger than a chunk goes alone, but for writes without
        // bulk bytes; the queue's order is kept.
        assert_eq!(
            entries,
            vec![
                vec![2, 1, big, 3],
                vec![big],
                vec![ENTRY_BULK_BYTES + 5, 0],
                vec![4],
            ]
        );
        drop(waiting);
    }

    #[test]
    fn max_batch_still_bounds_an_entry() {
        let (_system_tx, system) = mpsc::channel(16);
        let (clients_tx, clients) = mpsc::channel(16);
        let mut lanes = Lanes::<Kv> { system, clients };
        let mut keep = Vec::new();
        for _ in 0..5 {
            let (p, rx) = put(3);
            clients_tx.try_send(p).ok().unwrap();
            keep.push(rx);
        }
        let (first, _rx) = put(3);
        let mut carried = None;
        assert_eq!(fill(first, &mut lanes, 4, &mut carried).len(), 4);
        assert!(carried.is_none());
    }
}
