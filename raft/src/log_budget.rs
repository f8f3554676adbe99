//! Keeping the node's log within a byte budget.
//!
//! # Why
//!
//! A group's log is purged only behind a snapshot, and openraft builds
//! one every `snapshot_every` entries (20 000 by default), then keeps
//! `max_in_snapshot_log_to_keep` (1 000) more. Counted in entries, that
//! is tens of megabytes for chat messages — and gigabytes for media: an
//! upload crosses the log as entries of up to 1 MiB, so one shard taking
//! uploads held ~20 GiB of log before its first purge (a node measured
//! 6.3 GiB of segments, none ever deleted, after 125 uploads of 50 MiB).
//! The tables and blob files hold those bytes already; the log's copy
//! only waited for a snapshot.
//!
//! # What
//!
//! A task per node looks every [`ROUND`]: when the live segments exceed
//! the budget (`NodeConfig::log_budget`), the groups keeping the oldest
//! segment on disk (`Log::oldest_segment_holders`: their oldest entry is
//! in it) build a snapshot now and purge their log up to it — ignoring
//! openraft's tail of kept entries, as a scrub does. The segment is
//! deleted by the log's collection once no stream has an entry in it.
//! Each purge is bounded as always by what the LSM has flushed
//! (`LogStore::purge_bound`; building the snapshot flushed), so nothing
//! a crash would need to re-apply leaves the log. A group is asked at
//! most once per [`COOLDOWN`], so a group that cannot purge yet (a
//! leader still replicating those entries to a follower) is not asked
//! to snapshot again and again.
//!
//! # Cost
//!
//! A snapshot here is a memtable flush and a pinned LSM view, so the
//! budget trades flushes (and a follower further behind than the budget
//! being sent a snapshot instead of entries) for disk. Message traffic
//! never reaches it: 20 000 entries of messages are far below the
//! default budget; bulk uploads reach it every budget's worth of bytes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::app::App;
use crate::ids::ShardId;
use crate::shared::Shared;

/// How often the task looks at the log's size.
const ROUND: Duration = Duration::from_millis(500);

/// The least time between two snapshots the task asks of one group.
const COOLDOWN: Duration = Duration::from_secs(5);

/// Runs until `stop` turns true; nothing when `budget` is 0.
pub(crate) async fn run<A: App>(
    shared: Arc<Shared<A>>,
    budget: u64,
    segment_size: u64,
    mut stop: watch::Receiver<bool>,
) {
    if budget == 0 {
        return;
    }
    let mut asked: HashMap<ShardId, Instant> = HashMap::new();
    while crate::shared::next_round(&mut stop, ROUND).await {
        let live = shared.log.segment_seqs().len() as u64 * segment_size;
        if live <= budget {
            continue;
        }
        let holders = shared.log.oldest_segment_holders();
        let groups: Vec<ShardId> = shared
            .group_ids()
            .into_iter()
            .filter(|g| holders.contains(&g.stream()))
            .collect();
        for g in groups {
            if asked.get(&g).is_some_and(|t| t.elapsed() < COOLDOWN) {
                continue;
            }
            asked.insert(g, Instant::now());
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                match snapshot_and_purge(&shared, g).await {
                    Ok(Some(upto)) => {
                        tracing::debug!(group = %g, upto, live, budget, "log over budget: purged")
                    }
                    Ok(None) => {}
                    Err(err) => tracing::warn!(group = %g, %err, "log over budget: purge failed"),
                }
            });
        }
    }
}

/// Builds a snapshot of `g` covering what it has applied and purges its
/// log up to it; the index purged to, `None` if the group is not here.
async fn snapshot_and_purge<A: App>(shared: &Shared<A>, g: ShardId) -> crate::Result<Option<u64>> {
    let Ok(raft) = shared.group(g).map(|group| group.raft()) else {
        return Ok(None);
    };
    let mut metrics = raft.metrics();
    let applied = match metrics.borrow().last_applied {
        Some(l) => l.index,
        None => return Ok(None),
    };
    let fatal = |e: openraft::error::Fatal<crate::NodeId>| crate::Error::Fatal(e.to_string());
    raft.trigger().snapshot().await.map_err(fatal)?;
    let snapshot = crate::scrub::wait_for(&mut metrics, g, "build a snapshot", |m| {
        m.snapshot.map(|l| l.index).filter(|i| *i >= applied)
    })
    .await?;
    raft.trigger().purge_log(snapshot).await.map_err(fatal)?;
    Ok(Some(snapshot))
}
