//! Versions: immutable sets of table files by level. Readers clone an
//! `Arc<Version>` and read from it without locks; a table file is deleted
//! only when the last version using it (and the last reader holding it) is
//! gone.

use std::sync::Arc;

use crate::lsm::table::reader::Table;
use crate::lsm::table::TableId;

/// What the manifest knows about a table. The compaction picker works on
/// these alone, so it can run without any files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    /// The table.
    pub id: TableId,
    /// Its level (0 = flushed memtables, overlapping).
    pub level: u8,
    /// File size in bytes.
    pub size: u64,
    /// Smallest key.
    pub smallest: Vec<u8>,
    /// Largest key.
    pub largest: Vec<u8>,
    /// Smallest sequence number.
    pub min_seq: u64,
    /// Largest sequence number.
    pub max_seq: u64,
    /// Number of versions stored.
    pub entries: u64,
    /// Written by the recompression pass (LZ4-HC, see
    /// `compaction::picker::pick_recompress`): the pass never takes it
    /// again. False for every table a flush or a compaction writes.
    pub recompressed: bool,
}

impl FileMeta {
    /// Whether the key ranges of `self` and `[lo, hi]` intersect.
    pub fn overlaps(&self, lo: &[u8], hi: &[u8]) -> bool {
        self.smallest.as_slice() <= hi && lo <= self.largest.as_slice()
    }
}

/// A table with its metadata.
#[derive(Debug)]
pub(crate) struct TableFile {
    pub meta: FileMeta,
    pub table: Table,
}

/// Number of levels.
pub const LEVELS: usize = 7;

/// An immutable set of tables. Level 0 is ordered newest first (its tables
/// overlap); levels 1.. are ordered by key and do not overlap.
#[derive(Debug, Clone, Default)]
pub(crate) struct Version {
    pub levels: Vec<Vec<Arc<TableFile>>>,
}

impl Version {
    /// The metadata view the picker works on.
    pub fn metas(&self) -> Vec<Vec<FileMeta>> {
        self.levels
            .iter()
            .map(|l| l.iter().map(|t| t.meta.clone()).collect())
            .collect()
    }

    /// A new version with `removed` gone and `added` in place, each level
    /// re-sorted.
    pub fn apply(&self, removed: &[TableId], added: Vec<Arc<TableFile>>) -> Version {
        let mut levels: Vec<Vec<Arc<TableFile>>> = self
            .levels
            .iter()
            .map(|l| {
                l.iter()
                    .filter(|t| !removed.contains(&t.meta.id))
                    .cloned()
                    .collect()
            })
            .collect();
        for t in added {
            let lvl = usize::from(t.meta.level).min(LEVELS - 1);
            levels[lvl].push(t);
        }
        sort_levels(&mut levels);
        Version { levels }
    }

    pub fn all_tables(&self) -> impl Iterator<Item = &Arc<TableFile>> {
        self.levels.iter().flatten()
    }
}

/// Level 0 newest first; other levels by smallest key.
pub(crate) fn sort_levels(levels: &mut [Vec<Arc<TableFile>>]) {
    for (i, l) in levels.iter_mut().enumerate() {
        if i == 0 {
            l.sort_by(|a, b| {
                b.meta
                    .max_seq
                    .cmp(&a.meta.max_seq)
                    .then(b.meta.id.cmp(&a.meta.id))
            });
        } else {
            l.sort_by(|a, b| a.meta.smallest.cmp(&b.meta.smallest));
        }
    }
}
