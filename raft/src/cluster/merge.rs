//! Online shard merge: a shard gives all its slots back to the shard whose
//! run they adjoin, on the same replicas, without moving a byte — the
//! reverse of `split`.
//!
//! # Why every replica of the parent takes the same data
//!
//! Both groups have the same voters (the operator moves replicas first if
//! not; the call checks), so every replica of the parent holds the child's
//! slots in its node's LSM, written by its copy of the child. The merge must
//! make the parent take over those keys at one well-defined state of the
//! child on every replica:
//!
//! 1. **Freeze** (`ClusterCommand::Freeze { into }`, in the child's log).
//!    Applied alone, it writes the child's freeze record (`0x50 child:u32
//!    0x04 → [1][postcard { into, index }]`); from then on the child refuses
//!    every command (misrouted: nothing written, the writer routes again)
//!    and every read, so its state is final at the freeze's index `f`.
//! 2. **Merge** (`ClusterCommand::Merge { child, frozen_at: f, start,
//!    end }`, in the parent's log). Every replica of the parent, reaching
//!    this entry, first *waits* until its own copy of the child has applied
//!    `f` (waiting, not refusing, so the outcome is the same everywhere);
//!    then, alone in its apply batch, checks the slots adjoin its own and
//!    writes its owner record with both runs. The child's keys are then the
//!    parent's: the same bytes on every replica, as of `f`.
//! 3. **Record** (`ClusterCommand::RecordMerge`, metadata group): the
//!    routing map gives the child's slots to the parent; the child's id owns
//!    nothing from then on and is never reused.
//! 4. **Close** (every node, from its keeper tick): a node whose copy of
//!    the parent took the child's slots — or that does not replicate the
//!    parent — stops the child's group and deletes its log, its `Applied`,
//!    owner and freeze records (not its data: that is the parent's now).
//!
//! Writes for the child's slots between 1 and 3 are refused and retried
//! (the write path refreshes the map), so the merge's only window is a few
//! Raft writes long. A replica of the parent that installs a snapshot taken
//! after the merge gets the union directly; its copy of the child is closed
//! at step 4 as well.
//!
//! Not handled: changing either group's replicas during a merge. A parent
//! replica whose node holds no copy of the child would wait at step 2 until
//! one arrives (it logs every 10 s); the call refuses to start unless the
//! voters are the same.

use std::ops::Range;
use std::sync::Arc;

use crate::app::{App, ClusterCommand};
use crate::cluster::split::Owned;
use crate::error::{Error, Result};
use crate::ids::{ShardId, StoredMembership};
use crate::shared::Shared;
use crate::storage::meta::{applied_key, frozen_key, owner_key, Frozen, Owner};
use crate::storage::record_source::Records;
use crate::storage::state_machine::ApplyHooks;

/// How long each step of [`Shared::merge`] may take.
const STEP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a merge did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeDone {
    /// The shard that took the slots.
    pub parent: ShardId,
    /// The shard merged away.
    pub child: ShardId,
    /// The child's freeze's log index.
    pub frozen_at: u64,
    /// The parent's log index of the merge (0 when a repeated call found
    /// it already made).
    pub merge_index: u64,
}

/// The freeze's apply rule (module essay, step 1).
pub(crate) fn apply_freeze<A: App>(
    shard: ShardId,
    owned: &Owned,
    membership: &StoredMembership,
    index: u64,
    into: ShardId,
    records: &mut Records<'_>,
) -> Result<(A::Outcome, Option<Owned>)> {
    if into == shard || into.is_directory() {
        let why = format!("{shard} cannot be merged into {into}");
        return Ok((A::cluster_outcome(Err(why)), None));
    }
    if owned.slots.is_empty() {
        let why = format!("{shard} owns no slots to give");
        return Ok((A::cluster_outcome(Err(why)), None));
    }
    if membership.membership().get_joint_config().len() > 1 {
        let why = format!("{shard} is changing its replicas; merge it once that ends");
        return Ok((A::cluster_outcome(Err(why)), None));
    }
    let f = Frozen { into, index };
    records.put_as(frozen_key(shard), &f)?;
    let after = Owned {
        frozen: Some(f),
        ..owned.clone()
    };
    Ok((A::cluster_outcome(Ok(index)), Some(after)))
}

/// The merge's apply rule (module essay, step 2), once this replica's copy
/// of the child has applied its freeze.
pub(crate) fn apply_merge<A: App>(
    shard: ShardId,
    owned: &Owned,
    hooks: &ApplyHooks,
    index: u64,
    (child, frozen_at, slots): (ShardId, u64, Range<u16>),
    records: &mut Records<'_>,
) -> Result<(A::Outcome, Option<Owned>)> {
    let mine = &owned.slots;
    let union = if mine.end == slots.start {
        mine.start..slots.end
    } else if slots.end == mine.start {
        slots.start..mine.end
    } else {
        let why = format!(
            "{child}'s slots {}..{} do not adjoin {shard}'s {}..{}",
            slots.start, slots.end, mine.start, mine.end
        );
        return Ok((A::cluster_outcome(Err(why)), None));
    };
    // The wait before this guaranteed the freeze is here; that it names
    // this shard and that index is what the call proposed.
    match hooks.frozen_at(child) {
        Some(f) if f.into == shard && f.index == frozen_at => {}
        other => {
            let why = format!("{child} froze as {other:?}, not into {shard} at {frozen_at}");
            return Ok((A::cluster_outcome(Err(why)), None));
        }
    }
    records.put_as(
        owner_key(shard),
        &Owner {
            slots: union.clone(),
        },
    )?;
    let after = Owned {
        slots: union,
        last_merge: Some(child),
        ..owned.clone()
    };
    Ok((A::cluster_outcome(Ok(index)), Some(after)))
}

impl<A: App> Shared<A> {
    /// Merges `child` into `parent` (see the module essay): `child`'s
    /// slots must adjoin `parent`'s, and both groups have the same voters.
    /// A repeated call after a failure finishes what the first began.
    pub(crate) async fn merge(
        self: &Arc<Self>,
        parent: ShardId,
        child: ShardId,
    ) -> Result<MergeDone> {
        if parent.is_directory() || child.is_directory() || parent == child {
            return Err(Error::InvalidArgument(format!(
                "cannot merge {child} into {parent}: two different data shards, please"
            )));
        }
        let map = self.refresh_map().await?;
        let current = map
            .current_slots()
            .cloned()
            .ok_or_else(|| Error::Unavailable {
                shard: ShardId::DIRECTORY,
                reason: "the cluster has no slot map yet".into(),
            })?;
        let run = current
            .slots(child)
            .filter(|r| !r.is_empty())
            .ok_or_else(|| Error::InvalidArgument(format!("{child} owns no slots")))?;
        // Adjacency, checked on the map before anything is written.
        current
            .merge(parent, child)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let (p, c) = (
            self.locate(parent, true).await?,
            self.locate(child, true).await?,
        );
        let voters = |pl: &crate::cluster::placement::Placement| {
            pl.voters.keys().copied().collect::<Vec<_>>()
        };
        if voters(&p) != voters(&c) || !c.learners.is_empty() || p.changing || c.changing {
            return Err(Error::InvalidArgument(format!(
                "{child} (voters {:?}) and {parent} (voters {:?}) must have the same voters and no \
                 change under way; move the replicas first",
                voters(&c),
                voters(&p)
            )));
        }
        let out = self
            .write(
                child,
                A::cluster(ClusterCommand::Freeze { into: parent }),
                STEP_WAIT,
            )
            .await?;
        let frozen_at = match A::as_cluster_outcome(&out) {
            Some(Ok(i)) => i,
            Some(Err(why)) => return Err(Error::Refused(why)),
            // Frozen already (a repeated call): its record says where.
            None if A::is_misrouted(&out) => self
                .hooks
                .frozen_at(child)
                .filter(|f| f.into == parent)
                .map(|f| f.index)
                .ok_or_else(|| Error::Refused(format!("{child} is frozen into another shard")))?,
            None => {
                return Err(Error::Unknown {
                    shard: child,
                    reason: format!("the freeze answered {out:?}"),
                })
            }
        };
        let cmd = ClusterCommand::Merge {
            child,
            frozen_at,
            start: run.start,
            end: run.end,
        };
        let out = self.write(parent, A::cluster(cmd), STEP_WAIT).await?;
        let merge_index = match A::as_cluster_outcome(&out) {
            Some(Ok(i)) => i,
            // A repeated call: the merge is made if the parent's owner
            // record covers the child's run (its index is not kept: 0).
            Some(Err(why)) => match self.owner_on_record(parent, parent).await? {
                Some(o) if o.slots.start <= run.start && o.slots.end >= run.end => 0,
                _ => return Err(Error::Refused(why)),
            },
            None => {
                return Err(Error::Unknown {
                    shard: parent,
                    reason: format!("the merge answered {out:?}"),
                })
            }
        };
        self.write_directory(ClusterCommand::RecordMerge { parent, child }, STEP_WAIT)
            .await?;
        self.refresh_map().await?;
        self.adopt_from_map().await;
        tracing::info!(%parent, %child, frozen_at, merge_index, "shards merged");
        Ok(MergeDone {
            parent,
            child,
            frozen_at,
            merge_index,
        })
    }

    /// Records in the cluster map each merge a group this node leads made
    /// that the map does not show yet.
    pub(crate) async fn record_merges(
        self: &Arc<Self>,
        map: &crate::cluster::cluster_map::ClusterMap,
    ) {
        let Some(current) = map.current_slots() else {
            return;
        };
        for (parent, g) in self.group_list() {
            let Some(child) = g.owned.get().last_merge else {
                continue;
            };
            let recorded = current.slots(child).is_some_and(|r| r.is_empty());
            if recorded || !self.leads(parent) {
                continue;
            }
            let cmd = ClusterCommand::RecordMerge { parent, child };
            if let Err(e) = self.write_directory(cmd, STEP_WAIT).await {
                tracing::debug!(%parent, %child, error = %e, "recording a merge failed; next tick retries");
            }
        }
    }

    /// Closes each group the routing map shows merged away (module essay,
    /// step 4) once this node's copy of its parent took its slots, or when
    /// this node does not replicate the parent.
    pub(crate) async fn close_merged_groups(self: &Arc<Self>) -> Result<()> {
        let slots = self.slot_map();
        for (shard, g) in self.group_list() {
            if shard.is_directory() || !slots.slots(shard).is_some_and(|r| r.is_empty()) {
                continue;
            }
            let first = missive_engine::keys::Slot(g.owned.get().slots.start);
            let parent = slots.shard_of_slot(first);
            let taken = self.group(parent).is_ok_and(|p| p.owned.owns(first));
            if !taken && self.hosts(parent) {
                continue;
            }
            self.close_group(shard).await?;
        }
        Ok(())
    }

    /// Stops `shard`'s group here and deletes its log, `Applied`, owner
    /// and freeze records; its data stays (another group owns it now).
    async fn close_group(self: &Arc<Self>, shard: ShardId) -> Result<()> {
        let _one = self.wiping.lock().await;
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let Some(g) = self
            .groups
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&shard)
        else {
            return Ok(());
        };
        g.raft()
            .shutdown()
            .await
            .map_err(|e| Error::Fatal(format!("{shard}: stopping its Raft: {e}")))?;
        let (log, lsm) = (Arc::clone(&self.log), Arc::clone(&self.lsm));
        tokio::task::spawn_blocking(move || -> Result<()> {
            let stream = shard.stream();
            log.reset(stream)?;
            let mut batch = missive_engine::lsm::WriteBatch::new();
            for k in [applied_key(shard), owner_key(shard), frozen_key(shard)] {
                batch.delete(&k);
            }
            lsm.apply(&batch, None)?;
            lsm.flush()?;
            lsm.forget_position(stream)?;
            Ok(())
        })
        .await
        .map_err(|e| Error::Fatal(format!("closing {shard}: {e}")))??;
        tracing::info!(%shard, "merged group closed: its log and records are gone, its data is its parent's");
        Ok(())
    }
}
