//! Wiping a removed replica: when a shard's replica leaves this node, its
//! data, its Raft log and its applied state leave the node's storage, and
//! the group starts over empty — so moving replicas around does not leak
//! space, and a replica added back later starts from the leader's
//! snapshot (or its whole log), never from a log whose data is gone.
//!
//! # When
//!
//! Right after the node is told it was removed (`Rpc::Retire`, see
//! `membership`: the configuration without it has committed, so no quorum
//! of any configuration the group can still use counts this replica), and
//! at start for every shard still listed in `RETIRED` — a wipe a crash
//! cut short, or a replica a build before wipes retired. (A replica
//! removed while its node was down is retired, then wiped, once the node
//! is back and learns of it: `directory`'s `retire_if_removed`.) A wipe ends by
//! taking the shard off `RETIRED`: the fresh group names no members, so
//! it neither campaigns nor serves; the first AppendEntries or snapshot
//! of a leader that adds it back fills it like any new learner's.
//!
//! # The steps, and why this order survives a crash anywhere
//!
//! ```text
//!  1. stop the group's Raft (nothing more is appended or applied)
//!  2. log: Reset the shard's stream, then write its vote back
//!  3. LSM: one batch deleting every key of the shard's ranges and its
//!     Applied record; flush; forget the stream's flushed position
//!  4. open a fresh Raft on the empty storage, take the shard off RETIRED
//! ```
//!
//! - A crash after 2 but before 3's flush leaves an empty log beside the
//!   old applied state: consistent on its own (openraft takes it as a
//!   snapshot it has no log for), and wiped again at the next start, as
//!   the shard is still in `RETIRED`.
//! - The batch in 3 is atomic and the flush makes it durable: the tables
//!   then hold neither the data nor the Applied record, and the next full
//!   compaction drops the deleted versions from the files (the tests read
//!   the files). The flushed position is forgotten (`Lsm::forget_position`)
//!   because the stream now numbers from 1 again: the old position would
//!   tell the log store that new entries are already in the tables.
//! - The vote is kept: Raft needs a node never to vote twice in a term, and
//!   keeping it costs one meta record.
//! - A leader adding the replica back while 1 runs reaches a stopped Raft
//!   (its calls fail and it retries) or, before, revives the shard
//!   (`membership::revive_if_retired`); the wipe checks again once the
//!   Raft has stopped and then reopens the group on its storage unwiped.
//!
//! Only a replica that is no member of its group's configuration may be
//! wiped: a voter or learner whose log went backwards would break Raft's
//! guarantees, and openraft's leader panics when a follower it tracks
//! reports a shorter log ("follower log reversion"). That holds because a
//! shard is in `RETIRED` only between its removal and the first
//! AppendEntries of a leader that adds it back, which revives it before
//! anything is appended — and a removed node's progress is dropped by the
//! leader, so a re-added one starts from nothing.
//!
//! Wipes run one at a time under `Shared::wiping`, which shutdown also
//! takes, so no group is reopened after the node began to stop.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use missive_engine::log::Log;
use missive_engine::lsm::{Lsm, WriteBatch};

use crate::app::App;
use crate::error::{Error, Result};
use crate::ids::ShardId;
use crate::shared::Shared;
use crate::storage::codec::META_VOTE;
use crate::storage::meta::applied_key;
use crate::storage::state_machine::delete_ranges;

/// Steps 2 and 3 of the module docs on a stopped (or not yet started)
/// group: the shard's log stream reset (its vote kept), its key ranges
/// and applied state deleted from the LSM and flushed. Blocking. Returns
/// how many keys were deleted.
pub(crate) fn wipe_storage(
    log: &Log,
    lsm: &Lsm,
    shard: ShardId,
    ranges: &[(Vec<u8>, Option<Vec<u8>>)],
) -> Result<u64> {
    let stream = shard.stream();
    let vote = log.meta(stream, META_VOTE);
    log.reset(stream)?;
    if let Some(v) = vote {
        log.set_meta(stream, META_VOTE, &v)?;
    }
    let mut batch = WriteBatch::new();
    let deleted = delete_ranges(lsm, ranges, &mut batch)?;
    batch.delete(applied_key(shard));
    lsm.apply(&batch, None)?;
    lsm.flush()?;
    lsm.forget_position(stream)?;
    Ok(deleted)
}

impl<A: App> Shared<A> {
    /// Wipes this node's retired replica of `shard` and reopens its group
    /// empty (see the [module documentation](self)). Returns whether it
    /// wiped: not if the node is stopping or the shard was revived.
    pub(crate) async fn wipe_retired(self: Arc<Self>, shard: ShardId) -> Result<bool> {
        let _one_at_a_time = self.wiping.lock().await;
        if self.stopping.load(Ordering::SeqCst) || !self.retired.contains(shard) {
            return Ok(false);
        }
        let g = self.group(shard)?;
        g.raft()
            .shutdown()
            .await
            .map_err(|e| Error::Fatal(format!("{shard}: stopping its Raft: {e}")))?;
        // Added back while it stopped: reopened as it is.
        let wipe = self.retired.contains(shard);
        if wipe {
            let (log, lsm) = (Arc::clone(&self.log), Arc::clone(&self.lsm));
            let ranges =
                crate::cluster::split::ranges_on_record(&self.lsm, &self.slot_map(), shard)?;
            let deleted =
                tokio::task::spawn_blocking(move || wipe_storage(&log, &lsm, shard, &ranges))
                    .await
                    .map_err(|e| Error::Fatal(format!("wiping {shard}: {e}")))??;
            tracing::info!(%shard, deleted, "removed replica wiped: its data, log and applied state are gone");
        }
        let opened = self
            .opener
            .open(&self.slot_map(), shard, true, &g.seen, &g.owned)
            .await?;
        g.cell.replace(opened.raft);
        g.stale_ok.store(!opened.unconfirmed, Ordering::Relaxed);
        if wipe {
            self.retired.revive(shard)?;
            g.seen.wipes.fetch_add(1, Ordering::Relaxed);
            // What the application derived from this shard's notices no
            // longer matches its (now empty) records.
            self.app.installed(shard);
        }
        Ok(wipe)
    }
}

/// Runs [`Shared::wipe_retired`] in the background, logging a failure (the
/// next start wipes what is still in `RETIRED`).
pub(crate) fn spawn<A: App>(shared: Arc<Shared<A>>, shard: ShardId) {
    tokio::spawn(async move {
        if let Err(e) = shared.wipe_retired(shard).await {
            tracing::warn!(%shard, error = %e, "wiping the removed replica failed; the next start retries");
        }
    });
}
