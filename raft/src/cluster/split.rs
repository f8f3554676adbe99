//! Online shard split: a shard gives the upper part of its slots to a new
//! shard on the same replicas, without moving a byte.
//!
//! # Why nothing moves, and why nothing is lost or doubled
//!
//! Every replica of a shard holds the shard's slots in its node's one LSM,
//! under keys that start with the slot. A new group on the same replicas
//! that owns some of those slots therefore already holds its data; what
//! has to change is only *who decides* about those keys from which point
//! on. That point is an entry of the parent's log:
//!
//! 1. **Reserve** (`ClusterCommand::ReserveSplit`, metadata group): the
//!    child's id, the first id no map or reservation names, so two
//!    concurrent splits never pick the same one.
//! 2. **Cut** (`ClusterCommand::Split { at, child }`, in the parent's log).
//!    Applied — alone in its apply batch on every replica, so its effects
//!    and the state it cuts are the same everywhere — it writes, with the
//!    parent's `Applied` record: the parent's *owner record* (slots
//!    `lo..at`), the child's (`at..hi`), and the child's `Applied` record
//!    seeded at log index 0 with the parent's membership. From the next
//!    command on, the parent refuses anything naming a slot it no longer
//!    owns (`App::misrouted`: deterministic, nothing written, the writer
//!    refreshes its map and retries), and its snapshots, installs and
//!    ownership checks use the new slots. Commands after the cut in the same
//!    entry are refused the same way.
//! 3. **Open** (every replica, right after the cut is in its LSM): the
//!    child's group, on an empty log stream. openraft sees a state machine
//!    at index 0 over an empty log and starts as if a snapshot at index 0
//!    were installed (checked in 0.9.25's `get_initial_state`), so the
//!    child's first leader has nothing to replay; a replica that never
//!    applied the cut (one that installs a later snapshot of the parent,
//!    or one added later) has no seeded state and is sent a snapshot of the
//!    child's slots. The child's data is exactly the parent's keys in
//!    `at..hi` at the cut, identical on every replica that applied it.
//! 4. **Record** (`ClusterCommand::RecordSplit`, metadata group): the
//!    cluster map's routing map gives `at..hi` to the child, and nodes
//!    route there from their next map refresh. Until then a write for the
//!    moved slots reaches the parent, is refused `misrouted`, and retried
//!    after a refresh: the only window, one metadata write long. If the
//!    operator's call dies between 2 and 4, the parent's leader records the
//!    split itself (`directory`'s keeper compares its owner record with the
//!    map every tick).
//!
//! Reads: a linearizable read on the parent for a moved slot is refused
//! once the parent has applied the cut (`Shared::check_owner`), so a read
//! can never miss a write the child acknowledged: such a write is after
//! the cut, so the read index a read obtains after it covers the cut.
//!
//! After a crash, the owner records and the child's seed are durable only
//! once the LSM flushes; the parent re-applies the cut from its log and the
//! child is opened then. At start, a node opens every group that has an
//! owner record in its LSM, besides the founding map's.

use std::ops::Range;
use std::sync::RwLock;

use missive_engine::keys::Slot;

use crate::app::{App, ClusterCommand};
use crate::ids::{LogId, ShardId, StoredMembership};
use crate::storage::codec;
use crate::storage::meta::{applied_key, owner_key, Applied, Owner};
use crate::storage::record_source::Records;

/// Key ranges `[lo, hi)` (`None`: to the end of the key space).
pub(crate) type KeyRanges = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// The slots a data shard owns as its state machine last applied them,
/// shared by the state machine (which changes it at a cut) and the node's
/// read path (which checks a read's slot against it). Empty for the
/// metadata group.
#[derive(Debug, Default)]
pub struct Ownership(RwLock<Owned>);

/// See [`Ownership`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owned {
    /// The slots owned now.
    pub(crate) slots: Range<u16>,
    /// The last cut this shard applied: (first slot given away, child).
    pub(crate) last_split: Option<(u16, ShardId)>,
    /// Set once the shard froze to be merged (`cluster::merge`): it owns
    /// nothing any more as far as commands and reads go.
    pub(crate) frozen: Option<crate::storage::meta::Frozen>,
    /// The last shard this one took the slots of (`cluster::merge`).
    pub(crate) last_merge: Option<ShardId>,
}

impl Ownership {
    /// What the shard owns now.
    pub(crate) fn get(&self) -> Owned {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Whether the shard owns `slot` (a frozen shard owns none).
    pub(crate) fn owns(&self, slot: Slot) -> bool {
        let o = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        o.frozen.is_none() && o.slots.contains(&slot.0)
    }

    /// Replaces what the shard owns.
    pub(crate) fn set(&self, owned: Owned) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = owned;
    }
}

/// Reads a shard's owner record from `records` (None: it never split,
/// and owns its run of the founding map).
pub(crate) fn owner_of(
    get: impl FnOnce(&[u8]) -> crate::Result<Option<Vec<u8>>>,
    shard: ShardId,
) -> crate::Result<Option<Owner>> {
    get(&owner_key(shard))?
        .map(|v| codec::decode::<Owner>("owner record", &v))
        .transpose()
}

/// The log id a child's seeded state stands at: index 0 of term 0, where
/// `Raft::initialize` puts a group's first membership.
pub(crate) fn seed_log_id() -> LogId {
    LogId::new(openraft::CommittedLeaderId::new(0, 0), 0)
}

/// The cut's apply rule (see the module essay, step 2). `owned` is what
/// the parent owns before it; on success returns what it owns after. The
/// outcome is the cut's log index, or why it was refused.
pub(crate) fn apply_cut<A: App>(
    parent: ShardId,
    owned: &Owned,
    membership: &StoredMembership,
    index: u64,
    at: u16,
    child: ShardId,
    records: &mut Records<'_>,
) -> crate::Result<(A::Outcome, Option<Owned>)> {
    let run = &owned.slots;
    if at <= run.start || at >= run.end {
        let why = format!(
            "a split of {parent} (slots {}..{}) must fall strictly inside its run, not at {at}",
            run.start, run.end
        );
        return Ok((A::cluster_outcome(Err(why)), None));
    }
    if child.is_directory() || child == parent {
        let why = format!("{child} cannot be the child of a split of {parent}");
        return Ok((A::cluster_outcome(Err(why)), None));
    }
    if membership.membership().get_joint_config().len() > 1 {
        let why = format!("{parent} is changing its replicas; split it once that ends");
        return Ok((A::cluster_outcome(Err(why)), None));
    }
    records.put_as(
        owner_key(parent),
        &Owner {
            slots: run.start..at,
        },
    )?;
    records.put_as(owner_key(child), &Owner { slots: at..run.end })?;
    let seed = seed_log_id();
    records.put_as(
        applied_key(child),
        &Applied {
            last_applied: Some(seed),
            membership: StoredMembership::new(Some(seed), membership.membership().clone()),
        },
    )?;
    let after = Owned {
        slots: run.start..at,
        last_split: Some((at, child)),
        ..owned.clone()
    };
    Ok((A::cluster_outcome(Ok(index)), Some(after)))
}

/// Whether `cmd` is a cut, or a merge's freeze (applied alone likewise).
pub(crate) fn is_cut<A: App>(cmd: &A::Command) -> bool {
    matches!(
        A::as_cluster(cmd),
        Some(ClusterCommand::Split { .. } | ClusterCommand::Freeze { .. })
    )
}

/// The key ranges a shard's data occupies on this node: its owner
/// record's slots if it has one, else its run in `slots`; then its owner
/// record itself (a wipe deletes both).
pub(crate) fn ranges_on_record(
    lsm: &missive_engine::lsm::Lsm,
    slots: &crate::cluster::slots::SlotMap,
    shard: ShardId,
) -> crate::Result<KeyRanges> {
    if shard.is_directory() {
        return Ok(slots.key_ranges(shard));
    }
    let run = match owner_of(|k| Ok(lsm.get(k)?), shard)? {
        Some(o) => o.slots,
        None => slots.slots(shard).unwrap_or(0..0),
    };
    let mut r = crate::cluster::slots::slot_key_ranges(&run);
    r.push(crate::storage::meta::owner_range(shard));
    Ok(r)
}

/// How long [`Shared::split`] waits for each of its steps (an election of
/// the parent or the metadata group included).
const STEP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a split did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitDone {
    /// The shard split.
    pub parent: ShardId,
    /// The new shard.
    pub child: ShardId,
    /// The first slot the child took; the parent keeps the slots below.
    pub at: u16,
    /// The parent's log index of the cut (0 when a repeated call found
    /// the cut already made).
    pub cut_index: u64,
}

/// The slot a read is about, if it names one.
fn op_slot(op: &crate::transport::ReadOp) -> Option<Slot> {
    use crate::transport::ReadOp;
    use missive_engine::keys::ConversationId;
    match op {
        ReadOp::Get { key } => crate::cluster::slots::slot_of_key(key),
        ReadOp::Scan { lo, .. } => crate::cluster::slots::slot_of_key(lo),
        ReadOp::Latest { conv, .. } | ReadOp::Before { conv, .. } | ReadOp::After { conv, .. } => {
            Some(Slot::of_conversation(ConversationId(*conv)))
        }
        _ => None,
    }
}

impl<A: App> crate::shared::Shared<A> {
    /// Refuses a read of a data shard about a slot the shard no longer owns
    /// here (it split after the caller routed; see the module essay).
    pub(crate) fn check_owner(
        &self,
        shard: ShardId,
        op: &crate::transport::ReadOp,
    ) -> crate::Result<()> {
        if shard.is_directory() {
            return Ok(());
        }
        let (Some(slot), Ok(g)) = (op_slot(op), self.group(shard)) else {
            return Ok(());
        };
        if g.owned.owns(slot) {
            Ok(())
        } else {
            Err(crate::Error::Misrouted {
                shard,
                reason: format!("slot {} is not {shard}'s", slot.0),
            })
        }
    }

    /// The shard to ask about `op`'s slot after a [`crate::Error::Misrouted`]:
    /// the slot map refreshed from the metadata group.
    pub(crate) async fn reroute_read(
        self: &std::sync::Arc<Self>,
        op: &crate::transport::ReadOp,
    ) -> Option<ShardId> {
        let slot = op_slot(op)?;
        let _ = self.refresh_map().await;
        self.adopt_from_map().await;
        Some(self.slot_map().shard_of_slot(slot))
    }

    /// Takes the cluster map's routing map if it is newer than the one this
    /// node routes by, and opens the groups it names that this node lacks.
    pub(crate) async fn adopt_from_map(self: &std::sync::Arc<Self>) {
        let map = self.cluster_map();
        if let Some(current) = map.current_slots() {
            self.adopt_slots(current);
        }
        if let Err(e) = self.open_new_groups().await {
            tracing::warn!(error = %e, "opening the groups of a split failed; the next tick retries");
        }
        if let Err(e) = self.close_merged_groups().await {
            tracing::warn!(error = %e, "closing a merged group failed; the next tick retries");
        }
    }

    /// Opens the groups this node should have and does not: those with an
    /// owner record in its LSM (a cut applied here), and those the slot map
    /// names whose slots no hosted group here still owns (a replica that
    /// never applied the cut waits for it, so that its copy of the parent
    /// never writes under a child that is already ahead).
    pub(crate) async fn open_new_groups(self: &std::sync::Arc<Self>) -> crate::Result<()> {
        let slots = self.slot_map();
        let have = self.group_ids();
        let mut want: Vec<ShardId> = owner_records(&self.lsm)?
            .into_iter()
            .filter(|s| !have.contains(s))
            .collect();
        let hosted: Vec<_> = self
            .group_list()
            .into_iter()
            .filter(|(s, _)| !s.is_directory() && self.hosts(*s))
            .collect();
        for s in slots.shards() {
            if have.contains(&s) || want.contains(&s) {
                continue;
            }
            let Some(run) = slots.slots(s) else { continue };
            let held = hosted.iter().any(|(_, g)| g.owned.owns(Slot(run.start)));
            if !held {
                want.push(s);
            }
        }
        if want.is_empty() {
            return Ok(());
        }
        // One at a time with wipes, never during or after shutdown.
        let _one = self.wiping.lock().await;
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        for shard in want {
            if self.group(shard).is_ok() {
                continue;
            }
            let seen = std::sync::Arc::new(crate::shared::GroupCounters::default());
            let (group, task) = self
                .opener
                .start(&slots, shard, seen, self.max_batch)
                .await?;
            self.late_tasks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(task);
            self.groups
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(shard, std::sync::Arc::new(group));
            tracing::info!(%shard, slots = ?slots.slots(shard), "group of a split opened");
            self.groups_changed.send_modify(|n| *n += 1);
            self.campaign_if_preferred(shard).await;
        }
        Ok(())
    }

    /// A new group's replicas have never heard from a leader, so none
    /// holds a lease against a candidate: its preferred leader
    /// (`balance::preferred_leader`) campaigns at once instead of waiting
    /// out an election timeout (200–320 ms in which the moved slots take
    /// no write), and wins.
    async fn campaign_if_preferred(&self, shard: ShardId) {
        let Ok(g) = self.group(shard) else { return };
        let raft = g.raft();
        let (voters, leader) = {
            let m = raft.metrics();
            let m = m.borrow();
            let voters: Vec<_> = m.membership_config.membership().voter_ids().collect();
            (voters, m.current_leader)
        };
        if leader.is_none()
            && crate::cluster::balance::preferred_leader(shard, voters) == Some(self.id)
        {
            if let Err(e) = raft.trigger().elect().await {
                tracing::debug!(%shard, error = %e, "campaign of a new group");
            }
        }
    }

    /// Records in the cluster map each cut a group this node leads made
    /// that the map does not show yet (the operator's call that made it
    /// died before recording it).
    pub(crate) async fn record_cuts(
        self: &std::sync::Arc<Self>,
        map: &crate::cluster::cluster_map::ClusterMap,
    ) {
        let Some(current) = map.current_slots() else {
            return;
        };
        for (parent, g) in self.group_list() {
            let Some((at, child)) = g.owned.get().last_split else {
                continue;
            };
            let recorded = current
                .slots(child)
                .is_some_and(|r| r.start == at && !r.is_empty());
            if recorded || !self.leads(parent) {
                continue;
            }
            let cmd = ClusterCommand::RecordSplit { parent, at, child };
            if let Err(e) = self.write_directory(cmd, STEP_WAIT).await {
                tracing::debug!(%parent, %child, error = %e, "recording a split failed; next tick retries");
            }
        }
    }

    /// `of`'s owner record as `on`'s replicas hold it now (a linearizable
    /// read through `on`'s read path: the records are not slot keys).
    pub(crate) async fn owner_on_record(
        &self,
        on: ShardId,
        of: ShardId,
    ) -> crate::Result<Option<crate::storage::meta::Owner>> {
        let op = crate::transport::ReadOp::Get { key: owner_key(of) };
        match self
            .read_once(on, crate::read::Consistency::Linearizable, op)
            .await?
        {
            crate::transport::ReadResult::Value(v) => {
                v.map(|v| codec::decode("owner record", &v)).transpose()
            }
            other => Err(crate::Error::malformed(
                "owner record read",
                format!("answered {other:?}"),
            )),
        }
    }

    /// Splits `parent` at slot `at` (its middle slot if `None`) into a new
    /// shard on the same replicas (see the module essay). Safe to repeat
    /// after a failure: a repeated call finds its reservation and the cut
    /// already made.
    pub(crate) async fn split(
        self: &std::sync::Arc<Self>,
        parent: ShardId,
        at: Option<u16>,
    ) -> crate::Result<SplitDone> {
        use crate::Error;
        if parent.is_directory() {
            return Err(Error::InvalidArgument(
                "the metadata group holds no slots to split".into(),
            ));
        }
        // Right after a cluster forms, its first node registers (and so
        // records the slot map) a tick after the metadata group elects.
        let deadline = tokio::time::Instant::now() + STEP_WAIT;
        let current = loop {
            let last = match self.refresh_map().await {
                Ok(map) => match map.current_slots() {
                    Some(current) => break current.clone(),
                    None => Error::Unavailable {
                        shard: ShardId::DIRECTORY,
                        reason: "the cluster has no slot map yet".into(),
                    },
                },
                Err(e) => e,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(last);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        let run = current
            .slots(parent)
            .filter(|r| !r.is_empty())
            .ok_or_else(|| Error::InvalidArgument(format!("{parent} owns no slots")))?;
        let at = at.unwrap_or(run.start + (run.end - run.start) / 2);
        if at <= run.start || at >= run.end {
            return Err(Error::InvalidArgument(format!(
                "{parent} owns slots {}..{}; a split point must fall strictly inside (got {at})",
                run.start, run.end
            )));
        }
        self.write_directory(ClusterCommand::ReserveSplit { parent, at }, STEP_WAIT)
            .await?;
        let map = self.refresh_map().await?;
        let child = map
            .reserved_child(parent, at)
            .ok_or_else(|| Error::Unknown {
                shard: ShardId::DIRECTORY,
                reason: format!("no reservation for splitting {parent} at {at} after reserving it"),
            })?;
        let out = self
            .write(
                parent,
                A::cluster(ClusterCommand::Split { at, child }),
                STEP_WAIT,
            )
            .await?;
        let cut_index = match A::as_cluster_outcome(&out) {
            Some(Ok(index)) => index,
            // A repeated call: the cut is made if the child's owner record
            // is in the parent's replicas (its index is not kept: 0).
            Some(Err(why)) => match self.owner_on_record(parent, child).await? {
                Some(o) if o.slots.start == at => 0,
                _ => return Err(Error::Refused(why)),
            },
            None => {
                return Err(Error::Unknown {
                    shard: parent,
                    reason: format!("the cut answered {out:?}"),
                })
            }
        };
        self.write_directory(ClusterCommand::RecordSplit { parent, at, child }, STEP_WAIT)
            .await?;
        self.refresh_map().await?;
        self.adopt_from_map().await;
        tracing::info!(%parent, %child, at, cut_index, "shard split");
        Ok(SplitDone {
            parent,
            child,
            at,
            cut_index,
        })
    }
}

/// Every data shard with an owner record in the LSM.
pub(crate) fn owner_records(lsm: &missive_engine::lsm::Lsm) -> crate::Result<Vec<ShardId>> {
    let lo = [missive_engine::keys::Keyspace::RaftMeta as u8];
    let hi = missive_engine::keys::prefix_successor(&lo);
    let mut out = Vec::new();
    // Three records per shard at most: a scan of a few hundred keys.
    for (k, _) in lsm.scan(
        &lo,
        hi.as_deref(),
        missive_engine::lsm::Direction::Forward,
        usize::MAX,
    )? {
        if k.len() == 6 && k[5] == 0x03 {
            let shard = ShardId(u32::from_be_bytes([k[1], k[2], k[3], k[4]]));
            if !shard.is_directory() {
                out.push(shard);
            }
        }
    }
    Ok(out)
}
