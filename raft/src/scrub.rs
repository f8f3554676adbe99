//! Scrubbing: making what this node's replicas no longer hold leave its
//! disk.
//!
//! An overwritten or deleted value (an unsent message's body, an erased
//! user's records) lingers in three places after the write that replaced
//! it has applied, each for a reason of its own:
//!
//! 1. **The Raft log** keeps the entry that wrote it until the group
//!    purges past it, which openraft does only behind a snapshot, keeping
//!    `max_in_snapshot_log_to_keep` entries more.
//! 2. **Log segments** are deleted whole, once every stream (every group
//!    on the node, the metadata group too) purged all its entries in one,
//!    and never the segment being written.
//! 3. **Tables** keep older versions until a compaction that covers the
//!    key drops them, and never while a snapshot can see them — a group's
//!    current Raft snapshot pins an LSM view.
//!
//! [`Node::scrub`] walks the three in order on this node. First it rolls
//! the log, so everything written so far sits in sealed segments and what
//! arrives from now on goes to a new one (without this, an entry appended
//! between a group's purge and the roll would keep the whole segment, and
//! whatever else it holds, alive). Then, for every group it hosts, it
//! waits until the group has applied every entry those sealed segments
//! hold, builds a snapshot (which flushes the memtables and replaces the
//! pinned view with one taken after all of it) and purges the log up to
//! it, ignoring the usual tail kept for slow followers. Then a second
//! roll's collection deletes the sealed segments, and a full compaction
//! merges every table into one sorted run, dropping every version no
//! current view needs. A follower that falls behind later gets a snapshot
//! instead of the purged entries, as after any purge.
//!
//! It is a node-local operation: run it on every node that holds a
//! replica (the admin API's `POST /v1/admin/scrub`, `missivectl node
//! scrub`), then `missivectl residue` searches each data directory.

use std::time::Duration;

use crate::app::App;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::ShardId;

/// How long one group may take to build its snapshot or purge.
const STEP_WAIT: Duration = Duration::from_secs(60);

/// What a scrub did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// The groups whose logs were purged: (group, purged up to index).
    pub purged: Vec<(ShardId, u64)>,
    /// Log segments before and after.
    pub segments: (usize, usize),
    /// Table files after the compaction.
    pub tables: usize,
}

impl<A: App> Node<A> {
    /// Purges every hosted group's log up to a fresh snapshot, deletes the
    /// log segments that frees, and compacts every table (see the
    /// [module documentation](crate::scrub)). Takes as long as a full
    /// compaction: for an operator, not a request path.
    pub async fn scrub(&self) -> Result<ScrubReport> {
        let segments_before = self.log().segment_seqs().len();
        let log = std::sync::Arc::clone(self.log());
        blocking(move || log.roll()).await?;
        let mut purged = Vec::new();
        let groups: Vec<ShardId> = self.groups().filter(|g| self.hosts(*g)).collect();
        for g in groups {
            // The newest entry the sealed segments may hold for this group,
            // as a Raft index (Raft index i is engine index i + 1).
            let Some(sealed) = self.log().bounds(g.stream()).last.checked_sub(1) else {
                continue;
            };
            let raft = self.raft(g)?;
            let mut metrics = raft.metrics();
            let fatal = |e: openraft::error::Fatal<crate::NodeId>| Error::Fatal(e.to_string());
            wait_for(&mut metrics, g, "apply its log", |m| {
                m.last_applied.map(|l| l.index).filter(|i| *i >= sealed)
            })
            .await?;
            raft.trigger().snapshot().await.map_err(fatal)?;
            let snapshot = wait_for(&mut metrics, g, "build a snapshot", |m| {
                m.snapshot.map(|l| l.index).filter(|i| *i >= sealed)
            })
            .await?;
            raft.trigger().purge_log(snapshot).await.map_err(fatal)?;
            wait_for(&mut metrics, g, "purge its log", |m| {
                m.purged.map(|l| l.index).filter(|i| *i >= sealed)
            })
            .await?;
            purged.push((g, snapshot));
        }
        // The roll's collection deletes the sealed segments every stream
        // has now purged.
        let log = std::sync::Arc::clone(self.log());
        blocking(move || log.roll()).await?;
        let lsm = std::sync::Arc::clone(self.lsm());
        let lsm2 = std::sync::Arc::clone(&lsm);
        blocking(move || lsm2.compact_full()).await?;
        Ok(ScrubReport {
            purged,
            segments: (segments_before, self.log().segment_seqs().len()),
            tables: lsm.files().iter().map(Vec::len).sum(),
        })
    }
}

/// A group's openraft metrics.
type Metrics = openraft::RaftMetrics<crate::NodeId, crate::types::NodeAddr>;

/// Waits until `done` gives a value for the group's metrics (at most
/// [`STEP_WAIT`]).
pub(crate) async fn wait_for(
    metrics: &mut tokio::sync::watch::Receiver<Metrics>,
    group: ShardId,
    what: &str,
    done: impl Fn(&Metrics) -> Option<u64>,
) -> Result<u64> {
    let deadline = tokio::time::Instant::now() + STEP_WAIT;
    loop {
        if let Some(v) = done(&metrics.borrow()) {
            return Ok(v);
        }
        match tokio::time::timeout_at(deadline, metrics.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(Error::Fatal(format!("{group} stopped"))),
            Err(_) => {
                return Err(Error::Unavailable {
                    shard: group,
                    reason: format!("it did not {what} within {} s", STEP_WAIT.as_secs()),
                })
            }
        }
    }
}

async fn blocking(f: impl FnOnce() -> missive_engine::Result<()> + Send + 'static) -> Result<()> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Fatal(format!("a scrub step panicked: {e}")))?
        .map_err(Error::from)
}
