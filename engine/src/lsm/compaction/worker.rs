//! Carrying out a compaction the picker chose.
//!
//! The inputs are merged in internal order (key ascending, newest first) and
//! each version is kept or dropped:
//!
//! - A version older than a newer version of its key that every live
//!   snapshot can see is shadowed for everyone: dropped.
//! - A tombstone every snapshot can see is dropped when the compaction is
//!   bottommost (nothing below could hold an older value it must hide).
//! - A value the retention hook calls expired becomes a tombstone, or is
//!   dropped outright where a tombstone could be; either way its bytes are
//!   gone from the output.
//!
//! - In a bottommost compaction, the surviving version every snapshot can
//!   see is written with sequence number 0 (it orders below everything).
//!
//! Flushes run beside it on their own thread (`lsm/background.rs`); a
//! flush installs its table on the current version under the manifest
//! lock, and this compaction's inputs were chosen before that table
//! existed, so either may install first.
//!
//! Outputs are split at `target_table_bytes`, only between keys, so the
//! tables of a level never share a key. They are fsynced, the directory is
//! fsynced, and one manifest edit swaps inputs for outputs; the input files
//! are deleted once no reader holds them.
//!
//! # Subcompactions
//!
//! A large compaction (a level-0 compaction merges every level-0 table with
//! level 1; a full compaction merges everything) is cut into up to
//! `LsmOptions::subcompactions` key ranges of about equal bytes, weighed by
//! the inputs' block indexes, and each range is merged on a thread of its
//! own. The cuts fall between user keys, so every version of a key meets
//! the rules above in one range; each range writes its own tables, and the
//! ranges being disjoint, so are their tables. One manifest edit installs
//! all of them, or — if any range failed — none (the others' tables are
//! removed). Why: one compaction thread was what capped a sustained ingest
//! on two cores, the writers paced down while a core sat idle
//! (docs/benchmarks.md). Compactions that may be abandoned (the
//! recompression pass) or that relocate blob values run unsplit.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::lsm::blob::{BlobRef, BlobWriter};
use crate::lsm::compaction::picker::Choice;
use crate::lsm::pace::WritePacer;
use crate::lsm::read::{Cursor, ForwardMerge, RunCursor};
use crate::lsm::table::builder::{TableBuilder, TableSummary};
use crate::lsm::table::{table_path, TableId};
use crate::lsm::version::{FileMeta, TableFile, Version};
use crate::lsm::{Inner, Written};

/// What a compaction did.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outcome {
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// For the debug log of each compaction.
    #[allow(dead_code, reason = "read through Debug only")]
    pub versions_dropped: u64,
    /// Key ranges merged side by side (`LsmOptions::subcompactions`).
    pub parts: usize,
}

/// How a compaction writes its outputs.
#[derive(Clone, Copy, Default)]
pub(crate) struct How<'a> {
    /// The bottom level's compression (`LsmOptions::bottom_compression`:
    /// the recompression pass) instead of the fast LZ4; the outputs are
    /// marked recompressed.
    pub recompress: bool,
    /// Asked every [`ABORT_LOOK_EVERY`] versions: true stops the
    /// compaction, removes what it wrote and changes nothing.
    pub abort: Option<&'a dyn Fn() -> bool>,
    /// Blob files whose referenced values this compaction copies into a
    /// new blob file (they hold garbage; see `blob.rs`); every other
    /// reference moves as it is.
    pub rewrite_blobs: Option<&'a std::collections::HashSet<u64>>,
}

/// Versions merged between calls of `How::abort`.
const ABORT_LOOK_EVERY: u32 = 4096;

/// Carries out `choice`; `None` if `how.abort` stopped it (nothing changed).
pub(crate) fn run(
    inner: &Inner,
    version: &Version,
    choice: &Choice,
    how: How<'_>,
) -> Result<Option<Outcome>> {
    let find = |ids: &[FileMeta]| -> Vec<Arc<TableFile>> {
        version
            .all_tables()
            .filter(|t| ids.iter().any(|m| m.id == t.meta.id))
            .cloned()
            .collect()
    };
    let inputs = find(&choice.inputs);
    let mut below = find(&choice.overlapping);
    below.sort_by(|a, b| a.meta.smallest.cmp(&b.meta.smallest));
    let bytes_in: u64 = inputs.iter().chain(&below).map(|t| t.meta.size).sum();
    let parts = if how.abort.is_none() && how.rewrite_blobs.is_none() {
        let by_size = bytes_in / inner.opts.target_table_bytes.max(1);
        inner.opts.subcompactions.min(by_size as usize).max(1)
    } else {
        1
    };
    let cuts = split_points(inputs.iter().chain(&below), parts);
    let parts = cuts.len() + 1;
    let ranges: Vec<(&[u8], Option<&[u8]>)> = (0..=cuts.len())
        .map(|i| {
            let lo = if i == 0 {
                &[][..]
            } else {
                cuts[i - 1].as_slice()
            };
            (lo, cuts.get(i).map(Vec::as_slice))
        })
        .collect();
    // One snapshot horizon and one clock for every range.
    let job = Job {
        inner,
        inputs: &inputs,
        below: &below,
        choice,
        oldest_snapshot: inner.oldest_snapshot(),
        now: inner.now(),
    };
    let merged: Vec<Result<Option<Merged>>> = if ranges.len() == 1 {
        vec![merge(&job, how, &[], None)]
    } else {
        // Split only without `abort` (above): nothing unshareable crosses.
        let (recompress, rewrite_blobs) = (how.recompress, how.rewrite_blobs);
        let merge_range = |(lo, hi)| {
            let how = How {
                recompress,
                abort: None,
                rewrite_blobs,
            };
            merge(&job, how, lo, hi)
        };
        // The first range on this thread, the others on threads of their
        // own (they inherit this thread's nice value).
        std::thread::scope(|scope| {
            let others: Vec<_> = ranges[1..]
                .iter()
                .map(|&r| scope.spawn(move || merge_range(r)))
                .collect();
            let mut all = vec![merge_range(ranges[0])];
            for h in others {
                // A panic is the compaction thread's, as if it ran there.
                all.push(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
            }
            all
        })
    };
    let mut outputs = Vec::new();
    let mut versions_dropped = 0;
    let mut failed = None;
    for m in merged {
        match m {
            Ok(Some(m)) => {
                outputs.extend(m.outputs);
                versions_dropped += m.versions_dropped;
            }
            // Only an unsplit compaction can abort (`parts` above).
            Ok(None) => return Ok(None),
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    if let Some(e) = failed {
        // The other ranges' tables are named by no version: removed now
        // (a crash here leaves them to recovery, which removes tables the
        // manifest does not name).
        for (id, _) in outputs {
            let _ = std::fs::remove_file(table_path(&inner.tables_dir, id));
        }
        return Err(e);
    }
    inner.sync_tables_dir()?;

    let mut outcome = Outcome {
        bytes_in,
        versions_dropped,
        parts,
        ..Outcome::default()
    };
    let mut added = Vec::new();
    for (id, sum) in outputs {
        outcome.bytes_out += sum.size;
        let mut meta = sum.into_meta(id, choice.output_level as u8);
        meta.recompressed = how.recompress;
        let table = inner.open_table(id)?;
        added.push(Arc::new(TableFile { meta, table }));
    }
    let removed: Vec<(u8, TableId)> = inputs
        .iter()
        .chain(&below)
        .map(|t| (t.meta.level, t.meta.id))
        .collect();
    inner.install(removed, added, None, Vec::new())?;
    for t in inputs.iter().chain(&below) {
        t.table.mark_obsolete();
    }
    Ok(Some(outcome))
}

/// Keys that cut a compaction's inputs into `parts` ranges of about equal
/// bytes, ascending and distinct (fewer when the inputs have too few
/// blocks). Weighed by the tables' block indexes: each block counts its
/// stored length at its last key.
fn split_points<'a>(
    tables: impl Iterator<Item = &'a Arc<TableFile>>,
    parts: usize,
) -> Vec<Vec<u8>> {
    if parts <= 1 {
        return Vec::new();
    }
    let mut marks: Vec<(&[u8], u64)> = tables
        .flat_map(|t| t.table.index.iter())
        .map(|e| (e.last_key.as_slice(), u64::from(e.len)))
        .collect();
    marks.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let total: u64 = marks.iter().map(|m| m.1).sum();
    let mut cuts: Vec<Vec<u8>> = Vec::with_capacity(parts - 1);
    let mut acc = 0u64;
    for (key, len) in marks {
        acc += len;
        let due = (cuts.len() as u64 + 1) * total / parts as u64;
        if cuts.len() + 1 < parts && acc >= due && cuts.last().is_none_or(|c| c.as_slice() < key) {
            cuts.push(key.to_vec());
        }
    }
    cuts
}

/// What merging one key range wrote.
struct Merged {
    /// Its output tables, in key order, written and synced.
    outputs: Vec<(TableId, TableSummary)>,
    versions_dropped: u64,
}

/// What every range of one compaction shares.
struct Job<'a> {
    inner: &'a Inner,
    /// Tables of the input level(s), each a run of its own.
    inputs: &'a [Arc<TableFile>],
    /// Tables of the output level, in key order: one run.
    below: &'a [Arc<TableFile>],
    choice: &'a Choice,
    /// Versions at or below this sequence number every snapshot sees.
    oldest_snapshot: u64,
    /// The clock retention compares against.
    now: crate::keys::Timestamp,
}

/// Merges the inputs' entries with keys in `[lo, hi)` into new tables:
/// one subcompaction. Every version of a key falls in one range, so the
/// rules above hold range by range. `None` if `how.abort` stopped it (its
/// files removed).
fn merge(job: &Job<'_>, how: How<'_>, lo: &[u8], hi: Option<&[u8]>) -> Result<Option<Merged>> {
    let Job {
        inner,
        inputs,
        below,
        choice,
        oldest_snapshot,
        now,
    } = *job;
    // Inputs may overlap each other (level 0, or several levels in a full
    // compaction): a cursor each. The tables below form one sorted run.
    let mut cursors: Vec<Box<dyn Cursor>> = Vec::new();
    // Raw cursors: blob references move, their values are not read.
    for t in inputs {
        cursors.push(Box::new(RunCursor::raw(vec![Arc::clone(t)], lo, hi)?));
    }
    if !below.is_empty() {
        cursors.push(Box::new(RunCursor::raw(below.to_vec(), lo, hi)?));
    }
    let mut merged = ForwardMerge::new(cursors);
    let mut versions_dropped = 0u64;

    let mut outputs: Vec<(TableId, TableSummary)> = Vec::new();
    let mut builder: Option<(TableId, TableBuilder)> = None;
    // Someone waiting for a compaction is counted in `compaction_waiters`,
    // which stops the pacing; otherwise this is background work.
    let mut writes = WritePacer::new(inner, true);
    // Where values relocated out of `how.rewrite_blobs` files go.
    let mut blob_out: Option<BlobWriter> = None;
    let mut prev_key: Vec<u8> = Vec::new();
    let mut have_prev = false;
    let mut newer_seq = u64::MAX;
    let mut since_look = 0u32;
    while let Some(top) = merged.top() {
        since_look += 1;
        if since_look == ABORT_LOOK_EVERY {
            since_look = 0;
            if how.abort.is_some_and(|abort| abort()) {
                let mut ids: Vec<TableId> = outputs.iter().map(|(id, _)| *id).collect();
                if let Some((id, b)) = builder.take() {
                    drop(b);
                    ids.push(id);
                }
                for id in ids {
                    let path = table_path(&inner.tables_dir, id);
                    std::fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
                }
                if let Some(w) = blob_out.take() {
                    w.abandon()?;
                }
                return Ok(None);
            }
        }
        let Some((k, s, v)) = top.current() else {
            break;
        };
        let new_key = !have_prev || k != prev_key.as_slice();
        if new_key {
            // Split outputs only between keys.
            if builder
                .as_ref()
                .is_some_and(|(_, b)| b.estimated_size() >= inner.opts.target_table_bytes)
            {
                if let Some((id, b)) = builder.take() {
                    outputs.push((id, b.finish()?));
                }
            }
            prev_key.clear();
            prev_key.extend_from_slice(k);
            have_prev = true;
            newer_seq = u64::MAX;
        }
        let visible_to_all = s <= oldest_snapshot;
        let mut discard =
            newer_seq <= oldest_snapshot || (v.is_none() && visible_to_all && choice.bottommost);
        let mut value = v;
        // A blob reference: the table that resolves it.
        let blob_table = top.current_blob_table();
        if !discard {
            if let Some(val) = v {
                // Retention reads a value's head; a blob value is mapped,
                // so only the pages it reads come in.
                let val = match blob_table {
                    Some(t) => t.resolve_unchecked(val)?,
                    None => val,
                };
                if inner.is_expired(k, val, now) {
                    if choice.bottommost && visible_to_all {
                        discard = true;
                    } else {
                        value = None;
                    }
                }
            }
        }
        newer_seq = s;
        if discard {
            versions_dropped += 1;
        } else {
            if builder.is_none() {
                let id = inner.allocate_table_id();
                let b = TableBuilder::create(
                    &table_path(&inner.tables_dir, id),
                    inner.build_options(
                        how.recompress,
                        Written::Compaction {
                            level: choice.output_level,
                            bottommost: choice.bottommost,
                        },
                    ),
                )?;
                builder = Some((id, b));
                writes.restart();
            }
            // At the bottom, the one version every snapshot sees needs no
            // sequence number: nothing older exists to order it against
            // and anything newer has a larger one. Zero (like RocksDB)
            // encodes in one byte instead of up to ten.
            let out_seq = if choice.bottommost && visible_to_all {
                0
            } else {
                s
            };
            if let Some((_, b)) = builder.as_mut() {
                match (value, blob_table) {
                    (Some(reference), Some(t)) => {
                        let r = BlobRef::decode(reference).ok_or_else(|| {
                            Error::corruption(&t.path, 0, "malformed blob reference")
                        })?;
                        if how.rewrite_blobs.is_some_and(|set| set.contains(&r.file)) {
                            let w = match &mut blob_out {
                                Some(w) => w,
                                None => blob_out.insert(BlobWriter::create(
                                    &inner.tables_dir,
                                    inner.allocate_table_id().0,
                                )?),
                            };
                            b.add_blob(k, out_seq, &w.append(t.resolve(reference)?)?)?;
                        } else {
                            b.add_blob(k, out_seq, &r)?;
                        }
                    }
                    _ => b.add(k, out_seq, value)?,
                }
                writes.after(b)?;
            }
        }
        merged.advance()?;
    }
    // Relocated values are durable before the tables naming them.
    if let Some(w) = blob_out.take() {
        let sum = w.finish()?;
        inner
            .stats
            .blob_bytes_written
            .fetch_add(sum.size, std::sync::atomic::Ordering::Relaxed);
    }
    if let Some((id, b)) = builder.take() {
        if b.is_empty() {
            let path = table_path(&inner.tables_dir, id);
            drop(b);
            std::fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
        } else {
            outputs.push((id, b.finish()?));
        }
    }
    Ok(Some(Merged {
        outputs,
        versions_dropped,
    }))
}
