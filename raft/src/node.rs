//! A node: the engine (one log, one LSM), one Raft group per shard, the
//! transport, and the API the message service calls.
//!
//! ```text
//!  write(cmd) ─► shard = slots.shard_of(cmd.conversation)
//!     ─► this node leads it?  batcher ─► raft.client_write(Batch) ─► outcome
//!     ─► else forward once to the leader over the transport (its batcher)
//!  read(conv, consistency) ─► Linearizable: raft.ensure_linearizable()
//!     (leader only; else NotLeader with the leader's address) ─► local LSM
//!                          ─► Stale: the local LSM as applied so far
//! ```
//!
//! Every shard has a group on every node — and so has the metadata group,
//! shard 0, which replicates the cluster map (`directory`); a node that is
//! not in a group's membership simply never hears from it. Bootstrap initializes each shard
//! with its replicas (`replicas` nodes of the bootstrap list, rotating), and
//! must be given the same list on every node (openraft accepts the same
//! initial membership from several nodes; it is the first log entry).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use openraft::error::{InitializeError, RaftError};
use openraft::{Config, SnapshotPolicy};

use missive_engine::log::{Log, LogOptions};
use missive_engine::lsm::{Lsm, LsmOptions};

use crate::app::{App, ClusterCommand};
use crate::cluster::cluster_map::ClusterMap;
use crate::cluster::directory;
use crate::cluster::identity::{check_identity, io, Identity};
use crate::cluster::locations::Locations;
use crate::cluster::placement::{Change, Placement};
use crate::cluster::retired::Retired;
use crate::cluster::slots::SlotMap;
use crate::cluster::split;
use crate::cluster::wipe;
use crate::error::{Error, Result};
use crate::group::{GroupOpener, GROUP_START_WAIT};
use crate::ids::{NodeAddr, NodeId, ShardId};
use crate::shared::{GroupCounters, Shared};
use crate::storage::snapshot_receive::SnapshotReceiver;
use crate::storage::state_machine::ApplyHooks;
use crate::transport::client::Peers;
use crate::transport::server::{self, Dispatch};
use crate::transport::{ReadOp, ReadResult, Rpc};
use crate::types::Raft;

/// Raft timing, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct RaftTiming {
    /// Leader heartbeat interval.
    pub heartbeat_ms: u64,
    /// Election timeout range.
    pub election_min_ms: u64,
    /// Election timeout range.
    pub election_max_ms: u64,
}

impl Default for RaftTiming {
    /// Chosen for failover under a second. In openraft 0.9 a follower that
    /// has heard from a leader holds a *lease* of `election_max_ms`: it
    /// refuses to vote and does not campaign until the lease has run out,
    /// and then waits its own random election timeout on top (see
    /// `RaftCore::handle_tick_election`). So from a leader's death to a
    /// new leader takes between `max + min` and `2 × max` after the last
    /// heartbeat: 520–640 ms here, against 3–4 s with the 200 / 1000–2000
    /// ms used before (measured in docs/benchmarks.md, "failover"). The
    /// lease spans five heartbeats and the election timeout three more, so
    /// a follower must miss eight in a row before it campaigns: a loaded
    /// machine does not provoke elections. A node's groups heartbeat each
    /// on their own: 9 groups × 2 followers / 60 ms ≈ 300 small frames a
    /// second on a leader of everything, nothing next to the traffic.
    fn default() -> Self {
        RaftTiming {
            heartbeat_ms: 60,
            election_min_ms: 200,
            election_max_ms: 320,
        }
    }
}

/// How to start a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id (never 0; unique in the cluster, stable for its life).
    pub id: NodeId,
    /// The cluster's name; peers with another name are refused.
    pub cluster: String,
    /// Where the transport listens (port 0: any free port).
    pub listen: SocketAddr,
    /// The data directory (log, LSM, snapshots).
    pub data_dir: PathBuf,
    /// Shards in the cluster (fixed at bootstrap).
    pub shards: u32,
    /// Raft timing.
    pub timing: RaftTiming,
    /// Most commands per Raft entry.
    pub max_batch: usize,
    /// The engine log's options.
    pub log: LogOptions,
    /// The LSM's options. With no `retention` rule of its own, the node
    /// runs the application's ([`App::retention`]).
    pub lsm: LsmOptions,
    /// Raft entries between snapshots of a shard (each snapshot flushes the
    /// memtables and lets the log be purged).
    pub snapshot_every: u64,
    /// Bytes of log segments past which the groups holding the oldest
    /// segment snapshot and purge at once instead of waiting for
    /// `snapshot_every` entries (`log_budget`); 0: no budget. Large
    /// entries (media uploads) reach it long before their count does.
    pub log_budget: u64,
    /// Hand leadership back to each shard's preferred leader
    /// (`cluster::balance`). Off only to measure what balance buys.
    pub balance_leaders: bool,
}

impl NodeConfig {
    /// A config with the defaults for everything but the identity.
    pub fn new(id: NodeId, listen: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        NodeConfig {
            id,
            cluster: "missive".into(),
            listen,
            data_dir: data_dir.into(),
            shards: 8,
            timing: RaftTiming::default(),
            max_batch: 256,
            log: LogOptions::default(),
            lsm: LsmOptions {
                // A node's cores serve clients and Raft too.
                yield_to_foreground: true,
                ..LsmOptions::default()
            },
            snapshot_every: 20_000,
            log_budget: DEFAULT_LOG_BUDGET,
            balance_leaders: true,
        }
    }
}

/// The default [`NodeConfig::log_budget`]: 1 GiB (16 segments of 64 MiB).
pub const DEFAULT_LOG_BUDGET: u64 = 1 << 30;

pub use crate::read::Consistency;

/// A running node. See the [module documentation](self).
pub struct Node<A: App> {
    pub(crate) inner: Arc<Shared<A>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl<A: App> std::fmt::Debug for Node<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.inner.id)
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

pub use crate::cluster::identity::recorded_shards;

impl<A: App> Node<A> {
    /// Opens the data directory (recovering the log and the LSM), starts a
    /// Raft group per shard running `app`, and the transport.
    pub async fn start(mut cfg: NodeConfig, app: Arc<A>) -> Result<Node<A>> {
        if cfg.lsm.retention.is_none() {
            cfg.lsm.retention = app.retention();
        }
        if cfg.id == 0 {
            return Err(Error::InvalidArgument("node id 0 is reserved".into()));
        }
        let slots = SlotMap::even(cfg.shards)?;
        let founding = slots.clone();
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| io("create", &cfg.data_dir, e))?;
        check_identity(
            &cfg.data_dir,
            &Identity {
                id: cfg.id,
                cluster: cfg.cluster.clone(),
                shards: cfg.shards,
            },
        )?;
        let log = Arc::new(Log::open(cfg.data_dir.join("log"), cfg.log.clone())?);
        let mut lsm_opts = cfg.lsm.clone();
        // Table writes give way while the log acknowledges durable writes
        // (`LsmOptions::paced_write_rate`): every Raft round is one.
        lsm_opts
            .sync_activity
            .get_or_insert_with(|| log.sync_activity());
        let lsm = Arc::new(Lsm::open(cfg.data_dir.join("lsm"), lsm_opts)?);
        // A flushed table must never hold an effect whose log entry is not
        // durable here (see state_machine).
        let barrier_log = Arc::clone(&log);
        lsm.set_flush_barrier(move || barrier_log.sync());
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| Error::InvalidArgument(format!("cannot listen on {}: {e}", cfg.listen)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::InvalidArgument(format!("no local address: {e}")))?
            .to_string();
        let peers = Arc::new(Peers::new(cfg.id, cfg.cluster.clone()));
        let raft_config = Arc::new(
            Config {
                cluster_name: cfg.cluster.clone(),
                heartbeat_interval: cfg.timing.heartbeat_ms,
                election_timeout_min: cfg.timing.election_min_ms,
                election_timeout_max: cfg.timing.election_max_ms,
                max_payload_entries: 64,
                snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_every),
                max_in_snapshot_log_to_keep: 1000,
                ..Config::default()
            }
            .validate()
            .map_err(|e| Error::InvalidArgument(format!("raft config: {e}")))?,
        );
        let snapshot_dir = cfg.data_dir.join("snapshots");
        // Staged files of an interrupted receive are useless after a restart.
        let _ = std::fs::remove_dir_all(&snapshot_dir);
        let retired = Retired::load(&cfg.data_dir)?;
        let mut groups = BTreeMap::new();
        let mut tasks = Vec::new();
        let hooks = Arc::new(ApplyHooks::new());
        let opener = GroupOpener {
            id: cfg.id,
            config: raft_config,
            app: Arc::clone(&app),
            log: Arc::clone(&log),
            lsm: Arc::clone(&lsm),
            snapshot_dir: snapshot_dir.clone(),
            hooks: Arc::clone(&hooks),
            peers: Arc::clone(&peers),
            bulk: Arc::new(crate::storage::bulk::BulkFiles::open(
                Arc::clone(&lsm),
                Arc::clone(&log),
            )),
        };
        for shard in slots.groups() {
            // A replica retired but not wiped — a crash cut its wipe short,
            // or a build before wipes retired it — starts over empty
            // (`cluster::wipe`).
            let seen = Arc::new(GroupCounters::default());
            if retired.contains(shard) {
                let (log, lsm, ranges) = (
                    Arc::clone(&log),
                    Arc::clone(&lsm),
                    split::ranges_on_record(&lsm, &slots, shard)?,
                );
                let deleted = tokio::task::spawn_blocking(move || {
                    wipe::wipe_storage(&log, &lsm, shard, &ranges)
                })
                .await
                .map_err(|e| Error::Fatal(format!("wiping {shard}: {e}")))??;
                tracing::info!(%shard, deleted, "retired replica wiped at start");
                retired.revive(shard)?;
                seen.wipes.fetch_add(1, Ordering::Relaxed);
            }
            let (group, task) = opener.start(&slots, shard, seen, cfg.max_batch).await?;
            tasks.push(task);
            groups.insert(shard, Arc::new(group));
        }
        // Groups a split created here (their owner records are in the LSM)
        // beyond the founding map's.
        for shard in split::owner_records(&lsm)? {
            if groups.contains_key(&shard) {
                continue;
            }
            let seen = Arc::new(GroupCounters::default());
            let (group, task) = opener.start(&slots, shard, seen, cfg.max_batch).await?;
            tasks.push(task);
            groups.insert(shard, Arc::new(group));
        }
        let inner = Arc::new(Shared {
            app,
            id: cfg.id,
            addr,
            lsm,
            log,
            slots: std::sync::RwLock::new(Arc::new(slots)),
            groups: std::sync::RwLock::new(groups),
            groups_changed: watch::channel(0).0,
            founding: founding.clone(),
            late_tasks: std::sync::Mutex::new(Vec::new()),
            max_batch: cfg.max_batch.max(1),
            peers,
            retired,
            locations: Locations::default(),
            snapshots: SnapshotReceiver::new(snapshot_dir),
            map: watch::channel(Arc::new(ClusterMap::default())).0,
            hooks: Arc::clone(&hooks),
            signals: broadcast::channel(SIGNAL_BUFFER).0,
            handovers: std::sync::atomic::AtomicU64::new(0),
            backups: crate::backup::Sessions::default(),
            opener,
            wiping: tokio::sync::Mutex::new(()),
            stopping: AtomicBool::new(false),
        });
        let (stop, stop_rx) = watch::channel(false);
        tasks.push(tokio::spawn(directory::run(
            Arc::clone(&inner),
            stop_rx.clone(),
        )));
        tasks.push(tokio::spawn(crate::log_budget::run(
            Arc::clone(&inner),
            cfg.log_budget,
            cfg.log.segment_size,
            stop_rx.clone(),
        )));
        if cfg.balance_leaders {
            tasks.push(tokio::spawn(crate::cluster::balance::run(
                Arc::clone(&inner),
                stop_rx.clone(),
            )));
        }
        let dispatch: Arc<dyn Dispatch<A>> = Arc::clone(&inner) as Arc<dyn Dispatch<A>>;
        tasks.push(tokio::spawn(server::serve(
            listener,
            cfg.id,
            cfg.cluster,
            dispatch,
            stop_rx,
        )));
        tracing::info!(node = cfg.id, addr = %inner.addr, shards = cfg.shards, "node started");
        Ok(Node { inner, stop, tasks })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The transport's address (what peers dial).
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// The slot map.
    pub fn slots(&self) -> Arc<SlotMap> {
        self.inner.slot_map()
    }

    /// The connection pool (tests route it through fault proxies).
    pub fn peers(&self) -> &Arc<Peers<A>> {
        &self.inner.peers
    }

    /// The shard's Raft handle (metrics, membership changes).
    pub fn raft(&self, shard: ShardId) -> Result<Raft<A>> {
        self.inner.group(shard).map(|g| g.raft())
    }

    /// Initializes every group this node is a replica of: `replicas` nodes
    /// of `members` per shard, rotating through them so leaders and load
    /// spread, and the metadata group on the first `replicas` nodes. Call
    /// on every node with the same arguments; repeating it after the
    /// cluster formed is a no-op. (The node registers itself in the cluster
    /// map in the background, once the metadata group has a leader.)
    ///
    /// Leaders start spread: a group is initialized by its preferred
    /// leader (`cluster::balance`), which campaigns at once and wins (the
    /// others have heard from no leader, so hold no lease against it) —
    /// with every node a replica of every shard, data shard `s` is led by
    /// the `(s − 1) mod n`-th node, at most ⌈shards / nodes⌉ each.
    /// The other replicas wait [`BOOTSTRAP_FALLBACK`] for it and, if the
    /// group has still not formed (that node is not up), initialize it
    /// themselves: every replica proposes the same configuration at the
    /// same log position, so whichever gets there first is right.
    pub async fn bootstrap(
        &self,
        members: &BTreeMap<NodeId, String>,
        replicas: usize,
    ) -> Result<()> {
        if !members.contains_key(&self.inner.id) {
            return Err(Error::InvalidArgument(format!(
                "node {} is not in the bootstrap list",
                self.inner.id
            )));
        }
        self.inner.locations.add_seeds(members);
        let ids: Vec<NodeId> = members.keys().copied().collect();
        let r = replicas.clamp(1, ids.len());
        for (shard, g) in &self.inner.group_list() {
            // Data shard s starts at position s − 1; the metadata group at 0.
            let first = shard.0.saturating_sub(1) as usize;
            let picked: BTreeMap<NodeId, NodeAddr> = (0..r)
                .map(|k| ids[(first + k) % ids.len()])
                .map(|id| (id, NodeAddr::new(members[&id].clone())))
                .collect();
            if !picked.contains_key(&self.inner.id) {
                continue;
            }
            let designated =
                crate::cluster::balance::preferred_leader(*shard, picked.keys().copied())
                    .unwrap_or(self.inner.id);
            if designated != self.inner.id {
                let raft = g.raft();
                let shard = *shard;
                tokio::spawn(async move {
                    tokio::time::sleep(BOOTSTRAP_FALLBACK).await;
                    if matches!(raft.is_initialized().await, Ok(false)) {
                        tracing::info!(%shard, "its first replica did not form it; initializing");
                        match raft.initialize(picked).await {
                            Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                            Err(e) => tracing::warn!(%shard, error = %e, "initialize"),
                        }
                    }
                });
                continue;
            }
            // A group already formed (a restart, or another voter's
            // initialize reached this one first) is not initialized again:
            // openraft would refuse, logging the refusal at ERROR level on
            // every normal start. A race with a peer's first vote can still
            // get that refusal; it is harmless and ignored below.
            let formed = g
                .raft()
                .is_initialized()
                .await
                .map_err(|e| Error::Fatal(format!("{shard}: initialize: {e}")))?;
            let initialized = if formed {
                Ok(())
            } else {
                g.raft().initialize(picked).await
            };
            match initialized {
                Ok(()) => {}
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(Error::Fatal(format!("{shard}: initialize: {e}"))),
            }
            // initialize() may answer before the metrics (which routing
            // reads) show the new configuration.
            let me = self.inner.id;
            g.raft()
                .wait(Some(GROUP_START_WAIT))
                .metrics(
                    |m| m.membership_config.membership().get_node(&me).is_some(),
                    "initial configuration visible",
                )
                .await
                .map_err(|e| Error::Fatal(format!("{shard}: after initialize: {e}")))?;
        }
        Ok(())
    }

    /// Sends an ephemeral signal (typing, presence) to every node of the
    /// cluster, this one included: each hands it to its [`Node::signals`]
    /// subscribers. Best effort and unordered across nodes — an unreachable
    /// node misses it, nothing retries, nothing is stored — so only state
    /// that is refreshed or harmless to lose may travel this way.
    pub fn signal(&self, payload: Vec<u8>) {
        let payload: Arc<[u8]> = payload.into();
        let _ = self.inner.signals.send(Arc::clone(&payload));
        for (id, addr) in self.inner.known_nodes() {
            let peers = Arc::clone(&self.inner.peers);
            let rpc = Rpc::Signal {
                payload: payload.to_vec(),
            };
            tokio::spawn(async move {
                if let Err(e) = peers.call(id, &addr, ShardId(0), rpc, SIGNAL_TIMEOUT).await {
                    tracing::debug!(node = id, error = %e, "signal not delivered");
                }
            });
        }
    }

    /// Signals from every node (see [`Node::signal`]). A receiver that falls
    /// more than 4 096 signals behind is told it lagged.
    pub fn signals(&self) -> broadcast::Receiver<Arc<[u8]>> {
        self.inner.signals.subscribe()
    }

    /// The replicas of a shard's current membership (voters).
    pub fn voters(&self, shard: ShardId) -> Result<BTreeSet<NodeId>> {
        let m = self.raft(shard)?.metrics().borrow().clone();
        Ok(m.membership_config.membership().voter_ids().collect())
    }

    /// The leader of a shard as this node knows it.
    pub fn leader(&self, shard: ShardId) -> Result<Option<NodeId>> {
        Ok(self.raft(shard)?.metrics().borrow().current_leader)
    }

    /// Whether this node replicates `shard` now (a voter or learner of its
    /// group, not retired).
    pub fn hosts(&self, shard: ShardId) -> bool {
        self.inner.hosts(shard)
    }

    /// Where `shard`'s replicas are: this node's view if it hosts the
    /// shard, else asked of the nodes it knows.
    pub async fn placement(&self, shard: ShardId) -> Result<Placement> {
        self.inner.locate(shard, true).await
    }

    /// Joins an existing cluster without forming any group: remembers
    /// `seeds` (other nodes' ids and transport addresses) to find the
    /// metadata group through, and registers this node in the cluster map
    /// (every node then knows it). Fails if the cluster refuses it (another
    /// shard count, a forgotten id) or its metadata group cannot be reached
    /// within [`directory::JOIN_WAIT`]. An operator then adds this
    /// node's replicas ([`Node::change_replicas`]); until then it routes
    /// every read and write to the shards' replicas.
    pub async fn join(&self, seeds: &BTreeMap<NodeId, String>) -> Result<()> {
        self.inner.locations.add_seeds(seeds);
        // The first node to register defines the cluster's slot map, and
        // the founding members register a tick after their metadata group
        // elects a leader: a node joining a cluster still forming waits for
        // that map instead of registering its own.
        let theirs = directory::cluster_shard_count::<A>(
            self.inner.id,
            self.inner.peers.cluster(),
            seeds,
            directory::JOIN_WAIT,
        )
        .await?;
        let mine = self.inner.founding.shard_count();
        if theirs != mine {
            return Err(Error::Refused(format!(
                "node {} was started with {mine} shards; this cluster has {theirs}",
                self.inner.id
            )));
        }
        self.inner.register(directory::JOIN_WAIT).await?;
        self.inner.refresh_map().await?;
        Ok(())
    }

    /// This node's copy of the cluster map (version 0: not read yet). It
    /// follows the metadata group within seconds (see `directory`).
    pub fn cluster_map(&self) -> Arc<ClusterMap> {
        self.inner.cluster_map()
    }

    /// Reads the cluster map from the metadata group now.
    pub async fn refresh_cluster_map(&self) -> Result<Arc<ClusterMap>> {
        self.inner.refresh_map().await
    }

    /// Removes `node` from the cluster map for good (after its replicas
    /// were moved away: refused while the map places any on it); its id
    /// can never register again. Returns the map's version after it.
    pub async fn forget_node(&self, node: NodeId) -> Result<u64> {
        let v = self
            .inner
            .write_directory(ClusterCommand::ForgetNode { node }, Duration::from_secs(5))
            .await?;
        self.inner.refresh_map().await?;
        Ok(v)
    }

    /// Changes `shard`'s replicas (add, remove, move one), at its leader
    /// wherever that is; returns the placement after the change. Adding
    /// waits until the new replica caught up before it votes (up to
    /// [`crate::cluster::membership::CATCH_UP_WAIT`]). See `membership`.
    pub async fn change_replicas(&self, shard: ShardId, change: Change) -> Result<Placement> {
        self.inner.group(shard)?;
        self.inner.change_replicas(shard, change).await
    }

    /// Runs a command on the shard [`App::shard_of`] names: here if this
    /// node leads it, else forwarded once to the leader. Waits out an
    /// election for up to `election_wait` (NotLeader with no leader known,
    /// or an unreachable leader); never retries a write whose outcome is
    /// unknown. A command the application refuses is an `Ok` outcome.
    pub async fn write(&self, command: A::Command, election_wait: Duration) -> Result<A::Outcome> {
        self.inner.write_routed(command, election_wait).await
    }

    /// [`Node::write`] to a shard the caller chose (the application's
    /// background work, which knows where its items live).
    pub async fn write_to(
        &self,
        shard: ShardId,
        command: A::Command,
        election_wait: Duration,
    ) -> Result<A::Outcome> {
        self.inner.write(shard, command, election_wait).await
    }

    /// Splits `parent` at slot `at` (its middle slot if `None`) into a new
    /// shard on the same replicas, online: see `cluster::split`. Any node
    /// may call it.
    pub async fn split(&self, parent: ShardId, at: Option<u16>) -> Result<split::SplitDone> {
        self.inner.split(parent, at).await
    }

    /// Merges `child` into `parent` (adjoining slots, the same voters),
    /// online: see `cluster::merge`. Any node may call it.
    pub async fn merge(
        &self,
        parent: ShardId,
        child: ShardId,
    ) -> Result<crate::cluster::merge::MergeDone> {
        self.inner.merge(parent, child).await
    }

    /// Changes when this node opened a group after start (a split's
    /// child): per-group work should look at [`Node::groups`] again.
    pub fn groups_changed(&self) -> watch::Receiver<u64> {
        self.inner.groups_changed.subscribe()
    }

    /// Whether this node leads `shard` now (as far as it knows).
    pub fn leads(&self, shard: ShardId) -> bool {
        self.inner.leads(shard)
    }

    /// Every group this node has (hosted or not): the metadata group and
    /// every data shard.
    pub fn groups(&self) -> impl Iterator<Item = ShardId> + '_ {
        self.inner.group_ids().into_iter()
    }

    /// The application this node runs.
    pub fn app(&self) -> &Arc<A> {
        &self.inner.app
    }

    /// Apply's record reads on this node since start: (answered by the
    /// shards' record caches, read from the LSM).
    pub fn record_cache_counts(&self) -> (u64, u64) {
        let h = &self.inner.hooks;
        (
            h.record_hits.load(std::sync::atomic::Ordering::Relaxed),
            h.record_misses.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// How long the state machines' apply calls took on this node.
    pub fn apply_latencies(&self) -> missive_engine::latency::Latencies {
        self.inner.hooks.apply_latency.snapshot()
    }

    /// Where this node leads `shard`: how many entries each other replica
    /// still lacks (the leader's last log index minus the replica's
    /// matched index). Empty where this node does not lead the shard.
    pub fn replication_lag(&self, shard: ShardId) -> Vec<(NodeId, u64)> {
        let Ok(raft) = self.raft(shard) else {
            return Vec::new();
        };
        let m = raft.metrics().borrow().clone();
        let last = m.last_log_index.unwrap_or(0);
        m.replication
            .map(|r| {
                r.into_iter()
                    .filter(|(node, _)| *node != m.id)
                    .map(|(node, matched)| {
                        let have = matched.map_or(0, |l| l.index + 1);
                        (node, (last + 1).saturating_sub(have))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `shard`'s Raft state here and what this node saw of it since it
    /// started (None: not a group of this node).
    pub fn group_stats(&self, shard: ShardId) -> Option<GroupStats> {
        let g = self.inner.group(shard).ok()?;
        let m = g.raft().metrics().borrow().clone();
        let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        Some(GroupStats {
            term: m.current_term,
            log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            elections: n(&g.seen.elections),
            leader_changes: n(&g.seen.leader_changes),
            snapshots: n(&g.seen.snapshots),
            wipes: n(&g.seen.wipes),
        })
    }

    /// Leaderships this node handed to their shard's preferred leader
    /// since it started (`cluster::balance`).
    pub fn leader_handovers(&self) -> u64 {
        self.inner.handovers.load(Ordering::Relaxed)
    }

    /// Changes when a snapshot replaced a shard here: re-read everything.
    pub fn snapshot_installs(&self) -> watch::Receiver<u64> {
        self.inner.hooks.installed.subscribe()
    }

    /// One read of `shard`'s data at `consistency`: here if this node may
    /// serve it (see `read`), else at the shard's leader.
    pub async fn read(
        &self,
        shard: ShardId,
        consistency: Consistency,
        op: ReadOp,
    ) -> Result<ReadResult> {
        self.inner.read(shard, consistency, op).await
    }

    /// The value under `key` on `shard`.
    pub async fn get(
        &self,
        shard: ShardId,
        consistency: Consistency,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        let op = ReadOp::Get { key: key.to_vec() };
        match self.inner.read(shard, consistency, op).await? {
            ReadResult::Value(v) => Ok(v),
            _ => Err(Error::malformed("get", "answer of the wrong kind")),
        }
    }

    /// [`Node::get`], a large value (one the engine keeps in a blob file)
    /// handed out without a copy when this node serves the read.
    pub async fn get_shared(
        &self,
        shard: ShardId,
        consistency: Consistency,
        key: &[u8],
    ) -> Result<Option<bytes::Bytes>> {
        self.inner.get_shared(shard, consistency, key).await
    }

    /// The application's answer to `query` on `shard` (see
    /// [`App::query`]), from a replica read at `consistency`.
    pub async fn query(
        &self,
        shard: ShardId,
        consistency: Consistency,
        query: Vec<u8>,
    ) -> Result<Vec<u8>> {
        match self
            .inner
            .read(shard, consistency, ReadOp::App { query })
            .await?
        {
            ReadResult::App(a) => Ok(a),
            _ => Err(Error::malformed("query", "answer of the wrong kind")),
        }
    }

    /// Key/value pairs of `shard` in `[lo, hi)`, in key order, at most
    /// `limit`.
    pub async fn scan(
        &self,
        shard: ShardId,
        consistency: Consistency,
        lo: &[u8],
        hi: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let op = ReadOp::Scan {
            lo: lo.to_vec(),
            hi,
            reverse: false,
            limit: limit as u64,
        };
        match self.inner.read(shard, consistency, op).await? {
            ReadResult::Pairs(p) => Ok(p),
            _ => Err(Error::malformed("scan", "answer of the wrong kind")),
        }
    }

    /// Stops the transport and every group, and closes the engine (its log
    /// syncs what it wrote). In-memory LSM state is not flushed: the log
    /// replays it on the next start, exactly as after a crash.
    ///
    /// Returns only once the engine's files are released (their LOCKs
    /// dropped), so the same data directory can be opened again at once:
    /// openraft's workers and our completion tasks hold the log and the LSM
    /// for a moment after `Raft::shutdown` returns, and a restart that raced
    /// them failed with `Locked`.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(true);
        {
            // A wipe under way finishes first; none starts after this.
            let _wiping = self.inner.wiping.lock().await;
            self.inner.stopping.store(true, Ordering::SeqCst);
        }
        for (_, g) in self.inner.group_list() {
            let _ = g.raft().shutdown().await;
        }
        let late: Vec<_> = std::mem::take(
            &mut *self
                .inner
                .late_tasks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for t in self.tasks.iter().chain(late.iter()) {
            t.abort();
        }
        for t in late {
            let _ = t.await;
        }
        for t in self.tasks {
            let _ = t.await;
        }
        self.inner.peers.disconnect_all();
        let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
        let inner = sole_owner(self.inner, "the node", deadline).await?;
        let Shared {
            lsm,
            log,
            groups,
            hooks,
            backups,
            opener,
            ..
        } = inner;
        drop(groups);
        // It holds the log and the LSM (and the hooks) to reopen groups.
        drop(opener);
        // Pinned views (backup streams, verification checkpoints) hold the
        // LSM; the rest of `inner` would only drop at the end of this call.
        drop(backups);
        hooks.checkpoints.clear();
        drop(hooks);
        let lsm = sole_owner(lsm, "the LSM", deadline).await?;
        // Dropping the LSM joins its background thread (maybe mid-compaction)
        // and releases its hold on the log (the flush barrier).
        tokio::task::spawn_blocking(move || drop(lsm))
            .await
            .map_err(|e| Error::Fatal(format!("closing the LSM: {e}")))?;
        let log = sole_owner(log, "the log", deadline).await?;
        tokio::task::spawn_blocking(move || log.close())
            .await
            .map_err(|e| Error::Fatal(format!("closing the log: {e}")))??;
        Ok(())
    }

    /// The engine log (for inspection).
    pub fn log(&self) -> &Arc<Log> {
        &self.inner.log
    }

    /// The LSM (for inspection).
    pub fn lsm(&self) -> &Arc<Lsm> {
        &self.inner.lsm
    }
}

/// Signals buffered per subscriber before it is told it lagged.
const SIGNAL_BUFFER: usize = 4096;

/// One group's Raft state on this node and what the node saw of it
/// (`Node::group_stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupStats {
    /// The current term.
    pub term: u64,
    /// The last index in this replica's log (0: empty).
    pub log_index: u64,
    /// The last index applied to its state machine (0: none).
    pub applied_index: u64,
    /// Terms begun since this node started (elections, won or not).
    pub elections: u64,
    /// Changes of the leader this node knows since it started.
    pub leader_changes: u64,
    /// Snapshots built or installed here since this node started.
    pub snapshots: u64,
    /// Times this node's replica was wiped after its removal, since this
    /// node started (`cluster::wipe`).
    pub wipes: u64,
}

/// How long a replica waits for a group's first replica to form it at
/// bootstrap before forming it itself ([`Node::bootstrap`]).
pub const BOOTSTRAP_FALLBACK: Duration = Duration::from_secs(2);

/// How long a signal's delivery to one peer may take before it is dropped.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(2);

/// How long shutdown waits for stopped tasks to let go of the engine.
pub const RELEASE_WAIT: Duration = Duration::from_secs(30);

/// Waits until `arc` is the last handle to its value and takes the value;
/// [`Error::Fatal`] naming `what` if other handles outlive `deadline`
/// (shutdown of the node here, and of an application's tasks around it).
pub async fn sole_owner<T>(
    mut arc: Arc<T>,
    what: &str,
    deadline: tokio::time::Instant,
) -> Result<T> {
    loop {
        match Arc::try_unwrap(arc) {
            Ok(v) => return Ok(v),
            Err(a) if tokio::time::Instant::now() >= deadline => {
                return Err(Error::Fatal(format!(
                    "{what} is still in use {} s after shutdown began ({} handles)",
                    RELEASE_WAIT.as_secs(),
                    Arc::strong_count(&a)
                )))
            }
            Err(a) => {
                arc = a;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}
