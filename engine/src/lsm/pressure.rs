//! How far behind the background threads are — level 0's depth and the
//! immutable memtables — as the writers' backpressure, the compaction
//! picker and the paced table writes read it. The thresholds and why they
//! are where they are: `background.rs`'s essay.

use std::sync::atomic::Ordering;

use crate::lsm::Inner;

/// How many level-0 tables past `l0_slowdown_tables` the store is, if it
/// is there at all.
pub(super) fn slowdown_depth(inner: &Inner) -> Option<u32> {
    let l0 = inner.l0_tables.load(Ordering::Acquire);
    let from = inner.opts.l0_slowdown_tables.max(1);
    (l0 >= from && inner.opts.background).then(|| (l0 - from) as u32)
}

/// Whether level 0 is past halfway from `l0_slowdown_tables` to
/// `l0_stop_tables`: the compaction thread then takes level 0 first,
/// whatever the picker's scores.
pub(super) fn level0_urgent(inner: &Inner) -> bool {
    let from = inner.opts.l0_slowdown_tables.max(1);
    let stop = inner.opts.l0_stop_tables.max(from);
    inner.opts.background && inner.l0_tables.load(Ordering::Acquire) >= from + (stop - from) / 2
}

/// Whether the flush thread waits for compaction before it adds a table.
pub(super) fn l0_full(inner: &Inner) -> bool {
    let stop = inner
        .opts
        .l0_stop_tables
        .max(inner.opts.picker.l0_trigger.max(1));
    inner.l0_tables.load(Ordering::Acquire) >= stop
        && inner.flush_waiters.load(Ordering::Acquire) == 0
}

/// Whether writers are held back or about to be: every immutable memtable
/// slot is taken, or level 0 is at the slowdown or full. Paced table
/// writes (`pace.rs`) then run flat out.
pub(super) fn writers_held_back(inner: &Inner) -> bool {
    slowdown_depth(inner).is_some()
        || l0_full(inner)
        || inner.mem().immutables.len() >= inner.opts.max_immutable_memtables.max(1)
}
