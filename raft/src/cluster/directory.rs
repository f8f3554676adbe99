//! The metadata group (shard 0) and the cluster map it replicates: which
//! nodes are in the cluster and where, the slot → shard map, and where each
//! group's replicas are.
//!
//! # Who is the authority for what
//!
//! The map is one record in the metadata group's state machine, changed
//! only through that group's log, so every node that reads it at
//! linearizable consistency sees the same map, and each change bumps its
//! `version`. It holds three things:
//!
//! - **The node directory** (id → transport address). A node registers
//!   itself when it first starts (bootstrap or join) and again whenever its
//!   address changes; an operator forgets it after draining it. A forgotten
//!   id stays tombstoned: its node can never register again (a stale
//!   process coming back must not rejoin the routing), so a replacement
//!   machine gets a new id. This is the list every node sends signals to
//!   and asks where shards are — a node that joined knowing one seed learns
//!   every node from it, and a removed node stops being asked.
//! - **The slot map.** Fixed when the cluster is created (the first node to
//!   register writes it); a node started with another shard count is
//!   refused when it registers, instead of silently computing other shards
//!   for the same conversations.
//! - **Placements**: each group's voters and learners, as its leader last
//!   reported them, with the log index of that configuration. This copy is
//!   a *routing hint*, not the authority: a group's own Raft configuration
//!   decides who its replicas are (it changes by joint consensus in that
//!   group's log, `membership`), and a leader reports it here after the
//!   fact. Two copies can disagree for a moment after a change, so a report
//!   only replaces an older configuration (by index), and whoever routes by
//!   the map asks the named replicas (`Rpc::Locate`, answered from their own
//!   configuration) before sending them anything.
//!
//! # How a node keeps its copy
//!
//! Every node caches the map and runs [`run`]: it re-reads the map when it
//! hears of a newer version, and every [`REFRESH_EVERY`] regardless. It
//! hears of versions three ways: every transport request and response
//! carries the newest version its sender knows of (`transport::Wire`; Raft
//! heartbeats alone spread it to every node hosting anything within a
//! heartbeat or two), apply on a metadata replica announces each version it
//! writes, and a node that writes to the map gets the new version back. Between refreshes the
//! copy may be stale; nothing depends on it being current, only on it
//! converging: a routed call that finds a stale placement refreshes that
//! shard's placement from its replicas (`cluster::locate`).
//!
//! The same task registers the node (until the map lists it at its
//! address); for each group this node leads, reports its configuration
//! when the map's differs; and retires a replica of its own that the map
//! shows was removed while the node was down (it missed the leader's
//! `Retire`), once a replica confirms (`membership`, retirement).
//!
//! # The record, byte by byte
//!
//! Key `0x50 00000000 02` (right after shard 0's `Applied` record), value
//! `[version u8 = 1][postcard(ClusterMap)]`: `version` varint; `slots`
//! option (0/1, then `SlotMap`: its version varint, a length-prefixed
//! sequence of slot ranges as two varints each); `nodes` a length-prefixed
//! sequence of (node id varint, address string); `forgotten` a sequence of
//! node id varints; `shards` a sequence of (shard id varint, `ShardEntry`:
//! voters and learners as sequences of node id varints, `config_index`
//! varint). Fields are append-only. Record version 2 (written once a
//! split was reserved or recorded; `cluster_map::encode`) appends `routing`
//! (option of `SlotMap`: the founding map with every recorded split) and
//! `reserved` (a sequence of (child shard varint, (parent shard varint,
//! slot varint))).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::app::{App, ClusterCommand};
use crate::cluster::membership;
use crate::error::{Error, Result};
use crate::ids::{NodeId, ShardId};
use crate::read::Consistency;
use crate::shared::Shared;
use crate::storage::meta::cluster_map_key;
use crate::transport::{ReadOp, ReadResult, Reply, Rpc};

/// How often the keeper looks at registration and placements.
const TICK: Duration = Duration::from_secs(1);

/// The longest a node goes without re-reading the map.
pub const REFRESH_EVERY: Duration = Duration::from_secs(30);

/// How long one of the keeper's writes may wait out an election.
const WRITE_WAIT: Duration = Duration::from_secs(5);

/// How long a replica may take to confirm a removal.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(1);

/// How long registering at join may wait for the metadata group.
pub const JOIN_WAIT: Duration = Duration::from_secs(15);

pub use crate::cluster::cluster_map::{ClusterMap, ShardEntry};

/// The shard count of the cluster that `seeds` (node id → transport
/// address) belong to, asked before this node opens anything — so a node
/// joining with no `shards` of its own takes the cluster's instead of a
/// default that would be refused. Each seed is asked in turn (a stale read
/// of its copy of the metadata group: the slot map never changes once
/// written), every second until one knows or `wait` runs out. A seed whose
/// map has no slot map yet belongs to a cluster still forming (its members
/// register within a second of their metadata group electing a leader);
/// the joiner waits for it rather than define the slot map itself.
///
/// # Errors
///
/// [`Error::Unavailable`] when no seed told the count within `wait` (with
/// each seed's last answer); [`Error::Malformed`] for a map that does not
/// decode.
pub async fn cluster_shard_count<A: App>(
    me: NodeId,
    cluster: &str,
    seeds: &BTreeMap<NodeId, String>,
    wait: Duration,
) -> Result<u32> {
    let peers = crate::transport::client::Peers::<A>::new(me, cluster.to_string());
    let deadline = Instant::now() + wait;
    loop {
        let mut answers = Vec::new();
        for (&id, addr) in seeds.iter().filter(|(&id, _)| id != me) {
            let rpc = Rpc::Read {
                op: ReadOp::Get {
                    key: cluster_map_key(),
                },
                linearizable: false,
            };
            match peers
                .call(id, addr, ShardId::DIRECTORY, rpc, Duration::from_secs(2))
                .await
            {
                Ok(Reply::Read(Ok(ReadResult::Value(v)))) => {
                    let map: ClusterMap = match v {
                        Some(v) => crate::cluster::cluster_map::decode(&v)?,
                        None => ClusterMap::default(),
                    };
                    if let Some(slots) = map.slots {
                        return Ok(slots.shard_count());
                    }
                    answers.push(format!("node {id} ({addr}): no slot map yet"));
                }
                Ok(other) => answers.push(format!("node {id} ({addr}): {other:?}")),
                Err(e) => answers.push(format!("node {id} ({addr}): {e}")),
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::Unavailable {
                shard: ShardId::DIRECTORY,
                reason: format!(
                    "no seed told its cluster's shard count within {wait:?} (set node.shards \
                     to the cluster's to skip asking): {}",
                    answers.join("; ")
                ),
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

impl<A: App> Shared<A> {
    /// This node's copy of the map (version 0: not read yet).
    pub(crate) fn cluster_map(&self) -> Arc<ClusterMap> {
        Arc::clone(&self.map.borrow())
    }

    /// Re-reads the map from the metadata group (linearizable) and keeps
    /// it if it is newer than the copy.
    pub(crate) async fn refresh_map(&self) -> Result<Arc<ClusterMap>> {
        let key = cluster_map_key();
        let read = self
            .read_once(
                ShardId::DIRECTORY,
                Consistency::Linearizable,
                ReadOp::Get { key },
            )
            .await?;
        let map: ClusterMap = match read {
            ReadResult::Value(Some(v)) => crate::cluster::cluster_map::decode(&v)?,
            ReadResult::Value(None) => ClusterMap::default(),
            other => {
                return Err(Error::Unknown {
                    shard: ShardId::DIRECTORY,
                    reason: format!("reading the cluster map returned {other:?}"),
                })
            }
        };
        let map = Arc::new(map);
        if let Some(current) = map.current_slots() {
            // Route by the newest slot map at once (the keeper opens the
            // groups it names on its next tick).
            self.adopt_slots(current);
        }
        self.map.send_if_modified(|cur| {
            let newer = map.version > cur.version;
            if newer {
                *cur = Arc::clone(&map);
            }
            newer
        });
        self.heard_of_map(map.version);
        Ok(self.cluster_map())
    }

    /// Notes that version `v` of the map exists somewhere.
    pub(crate) fn heard_of_map(&self, v: u64) {
        self.peers.saw_map_version(v);
    }

    /// Runs a metadata command; returns the map's version after it.
    pub(crate) async fn write_directory(
        self: &Arc<Self>,
        command: ClusterCommand,
        wait: Duration,
    ) -> Result<u64> {
        let out = self
            .write(ShardId::DIRECTORY, A::cluster(command), wait)
            .await?;
        match A::as_cluster_outcome(&out) {
            Some(Ok(version)) => {
                self.heard_of_map(version);
                Ok(version)
            }
            Some(Err(message)) => Err(Error::Refused(message)),
            None => Err(Error::Unknown {
                shard: ShardId::DIRECTORY,
                reason: format!("the metadata group answered {out:?}"),
            }),
        }
    }

    /// Registers this node at its address.
    pub(crate) async fn register(self: &Arc<Self>, wait: Duration) -> Result<u64> {
        let cmd = ClusterCommand::RegisterNode {
            node: self.id,
            addr: self.addr.clone(),
            slots: self.founding.clone(),
        };
        self.write_directory(cmd, wait).await
    }

    /// Reports the configuration of every group this node leads whose
    /// entry in `map` differs.
    async fn report_placements(self: &Arc<Self>, map: &ClusterMap) {
        for shard in self.group_ids() {
            if !self.leads(shard) {
                continue;
            }
            let Ok(g) = self.group(shard) else { continue };
            let p = membership::placement(&g.raft(), shard);
            let entry = ShardEntry::from(&p);
            // (The bootstrap configuration is at log index 0: no voters
            // means the group has not loaded one, not index 0.)
            if p.voters.is_empty() || map.shards.get(&shard) == Some(&entry) {
                continue;
            }
            let cmd = ClusterCommand::ReportPlacement {
                shard,
                voters: entry.voters,
                learners: entry.learners,
                config_index: entry.config_index,
            };
            if let Err(e) = self.write_directory(cmd, WRITE_WAIT).await {
                tracing::debug!(%shard, error = %e, "placement report failed; next tick retries");
            }
        }
    }
}

impl<A: App> Shared<A> {
    /// Retires this node's replica of each group whose recorded
    /// configuration is later than the one it holds and leaves it out —
    /// the `Retire` notice it missed while it was down — once one of the
    /// replicas the map names confirms it from its own configuration (the
    /// map is only a hint). A replica wrongly retired would be revived by
    /// its leader's next AppendEntries.
    async fn retire_if_removed(self: &Arc<Self>, map: &ClusterMap) {
        for shard in self.group_ids() {
            let Some(entry) = map.shards.get(&shard) else {
                continue;
            };
            let named = entry.voters.contains(&self.id) || entry.learners.contains(&self.id);
            if named || !self.hosts(shard) || self.leads(shard) {
                continue;
            }
            let Ok(g) = self.group(shard) else { continue };
            let mine = g
                .raft()
                .metrics()
                .borrow()
                .membership_config
                .log_id()
                .map_or(0, |l| l.index);
            if entry.config_index <= mine {
                continue;
            }
            for (id, addr) in map.replicas(shard) {
                let reply = self
                    .peers
                    .call(id, &addr, shard, Rpc::Locate, CONFIRM_TIMEOUT)
                    .await;
                // An unreachable replica, or one no further along than
                // this node, cannot tell.
                let Ok(Reply::Locate(Some(p))) = reply else {
                    continue;
                };
                if p.config_index <= mine {
                    continue;
                }
                if !p.voters.contains_key(&self.id) && !p.learners.contains_key(&self.id) {
                    tracing::info!(%shard, by = id, "this replica was removed while the node was away");
                    if let Err(e) = self.retire(shard, p.config_index) {
                        tracing::warn!(%shard, error = %e, "retiring failed");
                    }
                }
                break;
            }
        }
    }
}

/// Keeps this node's copy of the map current, its registration and its
/// led groups' placements recorded, until `stop` turns true.
pub(crate) async fn run<A: App>(inner: Arc<Shared<A>>, mut stop: watch::Receiver<bool>) {
    let mut heard = inner.peers.map_versions();
    let mut applied = inner.hooks.directory.subscribe();
    // A cut, freeze or merge applied here: open or close groups at once.
    let mut cuts = inner.hooks.cuts.subscribe();
    let mut last_read: Option<Instant> = None;
    let mut refused = false;
    loop {
        tokio::select! {
            r = stop.changed() => if r.is_err() || *stop.borrow() { return },
            _ = heard.changed() => {}
            _ = applied.changed() => {}
            _ = cuts.changed() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
        let newest = (*heard.borrow_and_update()).max(*applied.borrow_and_update());
        let have = inner.cluster_map().version;
        if newest > have || last_read.is_none_or(|t| t.elapsed() >= REFRESH_EVERY) {
            match inner.refresh_map().await {
                Ok(_) => last_read = Some(Instant::now()),
                Err(e) => tracing::debug!(error = %e, "cluster map not readable yet"),
            }
        }
        if last_read.is_none() {
            continue;
        }
        let map = inner.cluster_map();
        if !refused && map.nodes.get(&inner.id) != Some(&inner.addr) {
            match inner.register(WRITE_WAIT).await {
                Ok(_) => {
                    tracing::info!(node = inner.id, addr = %inner.addr, "registered in the cluster map")
                }
                Err(Error::Refused(message)) => {
                    tracing::error!(node = inner.id, %message, "the cluster map refuses this node");
                    refused = true;
                }
                Err(e) => tracing::debug!(error = %e, "registration failed; next tick retries"),
            }
        }
        inner.adopt_from_map().await;
        inner.record_cuts(&map).await;
        inner.record_merges(&map).await;
        inner.report_placements(&map).await;
        inner.retire_if_removed(&map).await;
    }
}
