//! The media collector: what no live message names any more leaves every
//! replica.
//!
//! # How a collection runs (mark, then sweep)
//!
//! 1. **Mark.** `start` is noted. Every slot's references are scanned (on
//!    the conversation's shard, linearizable); a reference is live while
//!    its message is (the seq index: not unsent, not expired). The live
//!    objects are the hashes with a live reference. Dead references are
//!    deleted as they are found.
//! 2. **Sweep objects.** Every slot's objects are scanned; one that is not
//!    live is deleted (`DeleteObject`) with the cutoff `start − grace`:
//!    the rule deletes it only if it was created and last used before
//!    then. Then its upload's chunks go (`DropUpload`) and its uploaders'
//!    grants (`RevokeGrant`).
//! 3. **Sweep uploads.** An upload still open after `upload_ttl` is
//!    dropped — unless an object names it (a finish interrupted between
//!    its steps: its owner's retry completes it). A duplicate's record
//!    (its chunks went at finish) is dropped after `grace`.
//!
//! # Why nothing live is deleted
//!
//! A send checks the sender's grant and then *touches* the object
//! (`TouchObject`, `last_used = now`) before the message is appended; a
//! store of the same bytes again touches it too. So a reference the mark
//! did not see belongs to a send that touched the object less than a
//! write's timeout before its append — after `start − grace` as long as
//! `grace` is longer than any send (it is hours; a send gives up after
//! seconds) — and `DeleteObject`'s rule refuses. A download never
//! touches: a signed URL to an object whose last message was unsent
//! stops working when the object goes.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use missive_raft::node::Consistency;

use super::records::{decode_reference, slot_range, Hash, Object, Upload, UploadId, UploadState};
use crate::command::{Command, Outcome};
use crate::error::Result;
use crate::node::ChatNode;
use crate::records::{decode_indexed, seq_key};

/// What one collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Live references seen.
    pub live_references: u64,
    /// Dead references (unsent or expired messages) deleted.
    pub dead_references: u64,
    /// Objects deleted.
    pub objects_deleted: u64,
    /// Their bytes.
    pub bytes_deleted: u64,
    /// Objects not referenced but still in their grace period (or used
    /// during the collection).
    pub objects_kept_young: u64,
    /// Abandoned or duplicate uploads dropped.
    pub uploads_dropped: u64,
}

/// When objects and uploads become collectable.
#[derive(Debug, Clone, Copy)]
pub struct GcPolicy {
    /// The collection's start (µs since the epoch).
    pub now_micros: u64,
    /// How long an unreferenced object is kept after it was stored or
    /// last used.
    pub grace: Duration,
    /// How long an upload may stay open.
    pub upload_ttl: Duration,
    /// How long each write waits out an election.
    pub wait: Duration,
}

impl ChatNode {
    /// Marks an object used now (a send is about to name it).
    pub async fn touch_object(&self, hash: &Hash, wait: Duration) -> Result<()> {
        self.write(Command::TouchObject { hash: *hash }, wait)
            .await?;
        Ok(())
    }

    /// Runs one collection over the whole cluster (see the module docs).
    pub async fn collect_media(&self, policy: GcPolicy) -> Result<GcReport> {
        let mut report = GcReport::default();
        let slots = self.slots().clone();
        let all: Vec<_> = slots
            .shards()
            .filter_map(|shard| Some((shard, slots.slots(shard)?)))
            .collect();
        let lin = Consistency::Linearizable;

        // Mark.
        let mut live: HashSet<Hash> = HashSet::new();
        for (shard, range) in &all {
            for slot in range.clone() {
                let (lo, hi) = slot_range(missive_engine::keys::Slot(slot), 0x04);
                for (key, _) in self.scan(*shard, lin, &lo, Some(hi), usize::MAX).await? {
                    let Some((conv, hash, seq)) = decode_reference(&key) else {
                        continue;
                    };
                    let ix = self.get(*shard, lin, &seq_key(conv, seq)).await?;
                    let alive = match ix {
                        Some(ix) => {
                            let ix = decode_indexed(&ix)?;
                            !ix.unsent && ix.expires_at.is_none_or(|at| at > policy.now_micros)
                        }
                        None => false,
                    };
                    if alive {
                        report.live_references += 1;
                        live.insert(hash);
                    } else {
                        self.write(Command::DropReference { conv, hash, seq }, policy.wait)
                            .await?;
                        report.dead_references += 1;
                    }
                }
            }
        }

        // Sweep objects.
        let cutoff = policy
            .now_micros
            .saturating_sub(policy.grace.as_micros() as u64);
        let mut holders: HashSet<UploadId> = HashSet::new();
        let mut to_delete: VecDeque<Hash> = VecDeque::new();
        for (shard, range) in &all {
            for slot in range.clone() {
                let (lo, hi) = slot_range(missive_engine::keys::Slot(slot), 0x02);
                for (key, value) in self.scan(*shard, lin, &lo, Some(hi), usize::MAX).await? {
                    let Some(hash) = key.get(4..36).and_then(|h| <Hash>::try_from(h).ok()) else {
                        continue;
                    };
                    let o: Object = crate::records::decode("media object", &value)?;
                    holders.insert(o.upload);
                    if live.contains(&hash) {
                        continue;
                    }
                    if o.created_at >= cutoff || o.last_used >= cutoff {
                        report.objects_kept_young += 1;
                    } else {
                        to_delete.push_back(hash);
                    }
                }
            }
        }
        for hash in to_delete {
            let cmd = Command::DeleteObject {
                hash,
                unused_since: cutoff,
            };
            let Outcome::ObjectDeleted {
                deleted,
                upload,
                uploaders,
                size,
            } = self.write(cmd, policy.wait).await?
            else {
                continue;
            };
            if !deleted {
                report.objects_kept_young += 1;
                continue;
            }
            holders.remove(&upload);
            self.write(Command::DropUpload { upload }, policy.wait)
                .await?;
            for user in uploaders {
                self.write(Command::RevokeGrant { user, hash }, policy.wait)
                    .await?;
            }
            report.objects_deleted += 1;
            report.bytes_deleted += size;
        }

        // Sweep uploads.
        let ttl_cutoff = policy
            .now_micros
            .saturating_sub(policy.upload_ttl.as_micros() as u64);
        for (shard, range) in &all {
            for slot in range.clone() {
                let (lo, hi) = slot_range(missive_engine::keys::Slot(slot), 0x00);
                for (key, value) in self.scan(*shard, lin, &lo, Some(hi), usize::MAX).await? {
                    let Some(id) = key
                        .get(4..12)
                        .and_then(|b| b.try_into().ok())
                        .map(u64::from_be_bytes)
                    else {
                        continue;
                    };
                    let u: Upload = crate::records::decode("upload", &value)?;
                    let drop = match u.state {
                        UploadState::Open => u.created_at < ttl_cutoff && !holders.contains(&id),
                        UploadState::Finished { kept: false, .. } => u.created_at < cutoff,
                        UploadState::Finished { kept: true, .. } => false,
                    };
                    if drop {
                        self.write(Command::DropUpload { upload: id }, policy.wait)
                            .await?;
                        report.uploads_dropped += 1;
                    }
                }
            }
        }
        Ok(report)
    }
}
