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

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::lsm::blob::{BlobRef, BlobWriter};
use crate::lsm::compaction::picker::Choice;
use crate::lsm::read::{next_cursor, Cursor, Direction, RunCursor};
use crate::lsm::table::builder::TableBuilder;
use crate::lsm::table::{table_path, TableId};
use crate::lsm::version::{FileMeta, TableFile, Version};
use crate::lsm::Inner;

/// What a compaction did.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outcome {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub versions_dropped: u64,
}

/// How a compaction writes its outputs.
#[derive(Clone, Copy, Default)]
pub(crate) struct How<'a> {
    /// LZ4-HC at `bottom_hc_level` (the recompression pass) instead of the
    /// fast LZ4; the outputs are marked recompressed.
    pub hc: bool,
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
    // Inputs may overlap each other (level 0, or several levels in a full
    // compaction): a cursor each. The tables below form one sorted run.
    let mut cursors: Vec<Box<dyn Cursor>> = Vec::new();
    // Raw cursors: blob references move, their values are not read.
    for t in &inputs {
        cursors.push(Box::new(RunCursor::raw(vec![Arc::clone(t)])?));
    }
    if !below.is_empty() {
        cursors.push(Box::new(RunCursor::raw(below.clone())?));
    }
    let oldest_snapshot = inner.oldest_snapshot();
    let now = inner.now();
    let mut outcome = Outcome {
        bytes_in: inputs.iter().chain(&below).map(|t| t.meta.size).sum(),
        ..Outcome::default()
    };

    let mut outputs: Vec<(TableId, crate::lsm::table::builder::TableSummary)> = Vec::new();
    let mut builder: Option<(TableId, TableBuilder)> = None;
    // Where values relocated out of `how.rewrite_blobs` files go.
    let mut blob_out: Option<BlobWriter> = None;
    let mut prev_key: Vec<u8> = Vec::new();
    let mut have_prev = false;
    let mut newer_seq = u64::MAX;
    let mut since_look = 0u32;
    while let Some(i) = next_cursor(&cursors, Direction::Forward) {
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
        let Some((k, s, v)) = cursors[i].current() else {
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
        let blob_table = cursors[i].current_blob_table();
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
            outcome.versions_dropped += 1;
        } else {
            if builder.is_none() {
                let id = inner.allocate_table_id();
                let b = TableBuilder::create(
                    &table_path(&inner.tables_dir, id),
                    inner.build_options(how.hc),
                )?;
                builder = Some((id, b));
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
            }
        }
        cursors[i].advance()?;
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
    inner.sync_tables_dir()?;

    let mut added = Vec::new();
    for (id, sum) in outputs {
        outcome.bytes_out += sum.size;
        let mut meta = sum.into_meta(id, choice.output_level as u8);
        meta.recompressed = how.hc;
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
