//! Opening a store: what a crash can leave in the directory, and how
//! opening turns it back into a consistent store.
//!
//! # What a crash leaves, and what opening does with it
//!
//! The manifest (`manifest.rs`) is the store's only record of which tables
//! exist: a flush or compaction writes and fsyncs its tables first and only
//! then appends the manifest edit naming them. A crash can therefore leave
//!
//! - table files the manifest does not name (their edit never made it):
//!   nothing refers to them, so they are deleted, and table ids continue
//!   past them;
//! - a torn last manifest edit: `manifest::load` stops at it (the edit's
//!   tables are then orphans, above);
//! - never a named table that is missing: that is corruption, and opening
//!   fails with it rather than serve a store with a hole;
//! - blob files (`blob.rs`) no named table references: written by a flush
//!   or compaction whose edit never made it, or retired by one and not yet
//!   deleted — deleted, unless the manifest pins it (`pinned.rs`: a file
//!   the owner writes itself, kept until it unpins it, finished or not).
//!   A blob file a named table references is fsynced
//!   with its directory entry before that table's edit, so one missing is
//!   corruption too (reported when the table is opened).
//!
//! Sequence numbers continue after the highest any table holds. The
//! memtables' contents are not here at all: they are in the owner's log,
//! past the flushed position of each stream that the manifest records
//! ([`super::Lsm::flushed_positions`]), and the owner replays them.
//!
//! One process owns a directory at a time (its `LOCK`): tables are mapped,
//! and a second writer would change them under the mapping.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::blob::{self, Blobs};
use super::cache::BlockCache;
use super::manifest::{self, ManifestState};
use super::table::{self, reader::Table, table_path};
use super::version::{self, TableFile, LEVELS};
use super::LsmOptions;
use crate::error::{Error, Result};

/// A directory opened and checked: what `Lsm::open` builds the store from.
pub(super) struct Recovered {
    pub(super) tables_dir: PathBuf,
    /// The directory's lock, held for the store's life.
    pub(super) lock: Box<dyn Send + Sync>,
    pub(super) cache: Arc<BlockCache>,
    /// The blob files the tables reference, open.
    pub(super) blobs: Arc<Blobs>,
    /// The number of the manifest file to write next.
    pub(super) number: u64,
    pub(super) state: ManifestState,
    /// Every named table, by level (each level sorted).
    pub(super) levels: Vec<Vec<Arc<TableFile>>>,
    /// The highest sequence number any table holds.
    pub(super) max_seq: u64,
}

/// Locks `dir`, loads its manifest, deletes orphan tables and opens the
/// rest. See the [module documentation](self).
pub(super) fn recover(dir: &Path, opts: &LsmOptions) -> Result<Recovered> {
    let tables_dir = dir.join("tables");
    std::fs::create_dir_all(&tables_dir).map_err(|e| Error::io("create", &tables_dir, e))?;
    // One owner per directory: table files are mapped, and a second
    // writer would change them under the mapping.
    let lock_path = dir.join("LOCK");
    let lock = crate::io::FileSystem::lock(&crate::io::OsFs::std(), &lock_path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            Error::Locked {
                path: lock_path.clone(),
            }
        } else {
            Error::io("lock", &lock_path, e)
        }
    })?;
    let cache = Arc::new(BlockCache::new(opts.block_cache_bytes));
    let blobs = Arc::new(Blobs::new(&tables_dir));
    let (number, mut state) = match manifest::load(dir)? {
        Some((n, s)) => (n + 1, s),
        None => (
            1,
            ManifestState {
                next_table_id: 1,
                ..ManifestState::default()
            },
        ),
    };
    // A pinned file's writer may have stopped before its footer (no
    // writer outlives the process): seal it after its last whole record,
    // which covers everything its owner synced and so everything a table
    // or the owner's log references (`pinned.rs`).
    for &id in &state.pinned_blobs {
        let path = blob::blob_path(&tables_dir, id);
        if path.exists() {
            if let Err(Error::Corruption { .. }) = blob::BlobFile::open(&path, id) {
                let kept = blob::seal_unfinished(&path)?;
                tracing::warn!(path = %path.display(), records = kept, "sealed a pinned blob file its writer left unfinished");
            }
        }
    }
    // Tables the manifest does not name were being written when the
    // process stopped: nothing refers to them.
    let names = std::fs::read_dir(&tables_dir).map_err(|e| Error::io("list", &tables_dir, e))?;
    let mut blob_files = Vec::new();
    for entry in names {
        let entry = entry.map_err(|e| Error::io("list", &tables_dir, e))?;
        let name = entry.file_name();
        if let Some(id) = name.to_str().and_then(blob::parse_blob_name) {
            blob_files.push((id, entry.path()));
            state.next_table_id = state.next_table_id.max(id + 1);
            continue;
        }
        let Some(id) = name.to_str().and_then(table::parse_table_name) else {
            continue;
        };
        if !state.files.contains_key(&id) {
            let p = entry.path();
            std::fs::remove_file(&p).map_err(|e| Error::io("remove the orphan", &p, e))?;
        }
        state.next_table_id = state.next_table_id.max(id.0 + 1);
    }
    let mut levels: Vec<Vec<Arc<TableFile>>> = vec![Vec::new(); LEVELS];
    let mut max_seq = state.last_seq;
    for meta in state.files.values() {
        let path = table_path(&tables_dir, meta.id);
        if !path.exists() {
            return Err(Error::corruption(
                &path,
                0,
                "table named by the manifest is missing",
            ));
        }
        let table = Table::open_with_blobs(&path, meta.id, Arc::clone(&cache), &blobs)?;
        max_seq = max_seq.max(meta.max_seq);
        let lvl = usize::from(meta.level).min(LEVELS - 1);
        levels[lvl].push(Arc::new(TableFile {
            meta: meta.clone(),
            table,
        }));
    }
    // Blob files no table references (and no pin keeps) were being
    // written by a flush or a compaction the crash interrupted, or were
    // retired and not yet deleted: nothing refers to them.
    let referenced: std::collections::HashSet<u64> = levels
        .iter()
        .flatten()
        .flat_map(|t| t.table.blob_list.iter().map(|(f, _)| *f))
        .collect();
    for (id, p) in blob_files {
        // A pinned file is kept for its owner, referenced or not (the
        // manifest's tag 8: `Lsm::create_pinned_blob_file`).
        if !referenced.contains(&id) && !state.pinned_blobs.contains(&id) {
            std::fs::remove_file(&p).map_err(|e| Error::io("remove the orphan", &p, e))?;
        }
    }
    version::sort_levels(&mut levels);
    state.last_seq = max_seq;
    Ok(Recovered {
        tables_dir,
        lock,
        cache,
        blobs,
        number,
        state,
        levels,
        max_seq,
    })
}
