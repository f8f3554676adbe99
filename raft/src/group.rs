//! Opening one group's Raft on this node's storage: at start for every
//! group, and again for a replica wiped after its removal
//! (`cluster::wipe`), which starts over empty.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use missive_engine::log::Log;
use missive_engine::lsm::Lsm;

use crate::app::App;
use crate::cluster::slots::SlotMap;
use crate::cluster::split::Ownership;
use crate::error::{Error, Result};
use crate::ids::{NodeAddr, NodeId, ShardId};
use crate::shared::GroupCounters;
use crate::storage::log_store::LogStore;
use crate::storage::state_machine::{ApplyHooks, StateMachine};
use crate::transport::client::{NetworkFactory, Peers};
use crate::types::Raft;

/// How long a group's core may take to load its state and report it.
pub(crate) const GROUP_START_WAIT: Duration = Duration::from_secs(10);

/// What opening a group needs, kept for the node's life.
pub(crate) struct GroupOpener<A: App> {
    /// This node's id.
    pub(crate) id: NodeId,
    /// openraft's configuration, the same for every group.
    pub(crate) config: Arc<openraft::Config>,
    /// The application every group runs.
    pub(crate) app: Arc<A>,
    /// The node's log and LSM.
    pub(crate) log: Arc<Log>,
    /// The node's LSM.
    pub(crate) lsm: Arc<Lsm>,
    /// Where received snapshots are staged.
    pub(crate) snapshot_dir: PathBuf,
    /// Apply's signals to the rest of the node.
    pub(crate) hooks: Arc<ApplyHooks>,
    /// Connections to the other nodes.
    pub(crate) peers: Arc<Peers<A>>,
    /// Where large entries' bytes go instead of the log (`storage/bulk.rs`).
    pub(crate) bulk: Arc<crate::storage::bulk::BulkFiles>,
}

/// A group just opened.
pub(crate) struct Opened<A: App> {
    /// Its Raft.
    pub(crate) raft: Raft<A>,
    /// Whether its log holds entries past the commit point on record
    /// (`LogStore::tail_unconfirmed`): stale reads wait for a confirmation.
    pub(crate) unconfirmed: bool,
}

impl<A: App> GroupOpener<A> {
    /// Opens `shard`'s Raft on its log stream and state machine, waits
    /// (briefly) for its first metrics, and counts its events into `seen`.
    pub(crate) async fn open(
        &self,
        slots: &SlotMap,
        shard: ShardId,
        elect: bool,
        seen: &Arc<GroupCounters>,
        owned: &Arc<Ownership>,
    ) -> Result<Opened<A>> {
        let bulk_index = Arc::new(crate::storage::bulk::BulkIndex::default());
        let store = LogStore::new(Arc::clone(&self.log), shard)
            .with_durable_horizon(Arc::clone(&self.lsm))
            .with_bulk(Arc::clone(&self.bulk), Arc::clone(&bulk_index));
        store
            .drop_unsynced_tail()
            .map_err(|e| Error::Fatal(format!("{shard}: reading its log: {e}")))?;
        let unconfirmed = store
            .tail_unconfirmed()
            .map_err(|e| Error::Fatal(format!("{shard}: reading its log: {e}")))?;
        let sm = StateMachine::open_owned(
            Arc::clone(&self.app),
            Arc::clone(&self.lsm),
            slots,
            shard,
            self.snapshot_dir.clone(),
            Arc::clone(&self.hooks),
            Arc::clone(owned),
        )?
        .with_bulk(Arc::clone(&self.bulk), bulk_index);
        let net = NetworkFactory::new(Arc::clone(&self.peers), shard);
        let raft = Raft::new(self.id, Arc::clone(&self.config), net, store, sm)
            .await
            .map_err(|e| Error::Fatal(format!("{shard}: {e}")))?;
        if !elect {
            raft.runtime_config().elect(false);
        }
        // Until the group's core has loaded its vote and configuration
        // and reported them, its metrics are openraft's defaults (term
        // 0, no members) — and routing reads the configuration there
        // (`cluster::locate`): a node just started would think it hosts
        // nothing and route its own shards away.
        let mut metrics = raft.metrics();
        if !metrics.has_changed().unwrap_or(true) {
            let _ = tokio::time::timeout(GROUP_START_WAIT, metrics.changed()).await;
        }
        tokio::spawn(count_events(raft.metrics(), Arc::clone(seen)));
        Ok(Opened { raft, unconfirmed })
    }
}

impl<A: App> GroupOpener<A> {
    /// Opens `shard`'s group (see [`GroupOpener::open`]) and starts its
    /// batcher; returns the group and the batcher's task.
    pub(crate) async fn start(
        &self,
        slots: &SlotMap,
        shard: ShardId,
        seen: Arc<GroupCounters>,
        max_batch: usize,
    ) -> Result<(crate::shared::Group<A>, tokio::task::JoinHandle<()>)> {
        let owned = Arc::new(Ownership::default());
        let opened = self.open(slots, shard, true, &seen, &owned).await?;
        let cell = Arc::new(crate::shared::RaftCell::new(opened.raft));
        let (tx, clients) = tokio::sync::mpsc::channel(4 * max_batch.max(1));
        let (system_tx, system) = tokio::sync::mpsc::channel(4 * max_batch.max(1));
        let task = tokio::spawn(crate::write::batcher::run(
            Arc::clone(&cell),
            shard,
            crate::write::batcher::Lanes { system, clients },
            max_batch.max(1),
        ));
        let group = crate::shared::Group {
            cell,
            batcher: tx,
            system: system_tx,
            stale_ok: std::sync::atomic::AtomicBool::new(!opened.unconfirmed),
            seen,
            owned,
        };
        Ok((group, task))
    }
}

/// Counts a group's elections, leader changes and snapshots from its
/// metrics, until its Raft stops.
async fn count_events(
    mut m: watch::Receiver<openraft::RaftMetrics<NodeId, NodeAddr>>,
    seen: Arc<GroupCounters>,
) {
    let (mut term, mut leader, mut snapshot) = {
        let now = m.borrow_and_update();
        (now.current_term, now.current_leader, now.snapshot)
    };
    while m.changed().await.is_ok() {
        let now = m.borrow_and_update();
        if now.current_term > term {
            seen.elections
                .fetch_add(now.current_term - term, Ordering::Relaxed);
            term = now.current_term;
        }
        if now.current_leader != leader {
            seen.leader_changes.fetch_add(1, Ordering::Relaxed);
            leader = now.current_leader;
        }
        if now.snapshot != snapshot {
            seen.snapshots.fetch_add(1, Ordering::Relaxed);
            snapshot = now.snapshot;
        }
    }
}
