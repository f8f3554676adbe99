//! Large entries' bytes kept out of the log: written once, into a pinned
//! blob file of the node's LSM, and applied as references to it.
//!
//! # Why
//!
//! An upload's chunk crossed the disk twice: in its Raft log entry, then
//! in the blob file the LSM's flush wrote it to (`lsm/blob.rs`). Here the
//! log store writes a large entry's bulk values ([`App::take_bulk`]) into
//! the node's current pinned blob file (`lsm/pinned.rs`) and the log record
//! holds only their references (entry format version 2, `codec.rs`); apply
//! puts the references into the LSM (`Records::put_blob_ref`), the flush
//! writes the references into tables, and the bytes are never written
//! again (design.md §4.3.3).
//!
//! # Invariants
//!
//! - **Durable before acknowledged.** openraft's flush callback for an
//!   append fires only once both the log record and the blob file are
//!   synced (`log_store.rs`): a leader never counts itself for an entry
//!   whose bytes a crash could lose.
//! - **Applied only once synced.** A quorum of *other* replicas can commit
//!   an entry before this replica synced its copy; apply waits for the
//!   sync ([`BulkFiles::sync_upto`]) before the LSM takes the reference
//!   (the LSM refuses a reference past a growing file's synced length).
//! - **A torn tail is dropped at boot.** A crash after the log record was
//!   written but before the blob file was synced leaves a record whose
//!   bytes the LSM's open sealed away. Bytes are synced in append order
//!   (one file at a time; a file is finished before the next starts), so
//!   such entries are a suffix of the shard's log, none of them
//!   acknowledged: the log store truncates them before openraft reads the
//!   log (`LogStore::drop_unsynced_tail`).
//! - **A file lives while the log needs it.** A file is pinned until no
//!   shard's log holds an entry that may reference it: each file records,
//!   per stream, the highest log index that put a value in it, and is
//!   unpinned once every such stream's log starts past it (purged, reset
//!   or wiped). A purge goes only as far as the LSM flushed
//!   (`LogStore::with_durable_horizon`), so by then tables reference the
//!   values that are still live and keep the file (the LSM's rule). Files
//!   found pinned at boot are held by every stream up to its last index
//!   then: conservative, released by the next purges.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use missive_engine::log::{Log, StreamId};
use missive_engine::lsm::{BlobRef, Lsm, PinnedBlobWriter};

use crate::error::{Error, Result};
use crate::storage::codec::BulkRef;

/// An entry's bulk values go to a blob file when they carry at least this
/// many bytes: below it the log's own copy is cheaper than a reference.
pub const BULK_MIN_BYTES: usize = 64 << 10;

/// A blob file takes values until it holds this many bytes, then the
/// next one starts (a file goes as a whole, so a smaller one is freed
/// sooner once its entries are purged).
pub const FILE_BYTES: u64 = 256 << 20;

/// The node's bulk files. See the [module documentation](self).
#[derive(Debug)]
pub struct BulkFiles {
    lsm: Arc<Lsm>,
    log: Arc<Log>,
    file_bytes: u64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The file values go to now.
    current: Option<PinnedBlobWriter>,
    /// Pinned files, by id: per stream, the highest log index that may
    /// reference the file.
    holds: BTreeMap<u64, HashMap<StreamId, u64>>,
}

impl BulkFiles {
    /// The node's bulk files over `lsm`, for the entries of `log`. Files
    /// pinned before (a restart) are held by every stream up to its last
    /// index now.
    pub fn open(lsm: Arc<Lsm>, log: Arc<Log>) -> Self {
        Self::with_file_bytes(lsm, log, FILE_BYTES)
    }

    /// [`BulkFiles::open`] with another file size (tests roll files).
    pub fn with_file_bytes(lsm: Arc<Lsm>, log: Arc<Log>, file_bytes: u64) -> Self {
        let lasts: HashMap<StreamId, u64> = log
            .streams()
            .into_iter()
            .filter_map(|s| {
                let b = log.bounds(s);
                (!b.is_empty()).then_some((s, b.last))
            })
            .collect();
        let holds = lsm
            .pinned_blob_files()
            .into_iter()
            .map(|id| (id, lasts.clone()))
            .collect();
        let files = BulkFiles {
            lsm,
            log,
            file_bytes,
            state: Mutex::new(State {
                current: None,
                holds,
            }),
        };
        // Files no log entry can reference any more go now.
        if let Err(err) = files.release() {
            tracing::warn!(%err, "could not release bulk files at open");
        }
        files
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `prefix ‖ bytes`, a value of the entry at log index `index`
    /// of `stream`, to the current file (starting the next one past the
    /// size bound); returns its reference, good once
    /// [`BulkFiles::sync_upto`] covered it.
    pub fn append(
        &self,
        stream: StreamId,
        index: u64,
        prefix: &[u8],
        bytes: &[u8],
    ) -> Result<BlobRef> {
        let mut st = self.state();
        let full = st
            .current
            .as_ref()
            .is_some_and(|w| !w.is_empty() && w.len() >= self.file_bytes);
        if full {
            if let Some(w) = st.current.take() {
                // Finished (footer, fsync): every reference into it is
                // durable, so `sync_upto` has nothing to do for them.
                w.finish()?;
            }
        }
        let w = match &mut st.current {
            Some(w) => w,
            none => {
                let w = self.lsm.create_pinned_blob_file()?;
                none.insert(w)
            }
        };
        let r = w.append_parts(&[prefix, bytes])?;
        let held = st
            .holds
            .entry(r.file)
            .or_default()
            .entry(stream)
            .or_insert(index);
        *held = (*held).max(index);
        Ok(r)
    }

    /// Makes the value at `r` durable and referable, if it is not yet
    /// (blocks for an fdatasync of the current file).
    pub fn sync_upto(&self, r: &BlobRef) -> Result<()> {
        let mut st = self.state();
        let end = r.offset + u64::from(r.len);
        if let Some(w) = st.current.as_mut() {
            if w.id() == r.file && w.synced_len() < end {
                if w.len() < end {
                    return Err(Error::InvalidArgument(format!(
                        "bulk reference past what blob file {} holds",
                        r.file
                    )));
                }
                w.sync()?;
            }
        }
        Ok(())
    }

    /// Unpins every file that no stream's log can reference any more:
    /// call after a purge. The current file too — finished first, the
    /// next value starts another — so that a purge of every log (what a
    /// scrub does before its full compaction) leaves no deleted value
    /// pinned.
    pub fn release(&self) -> Result<()> {
        let releasable: Vec<u64> = {
            let mut st = self.state();
            let passed = |by: &HashMap<StreamId, u64>| {
                by.iter().all(|(s, last)| {
                    let b = self.log.bounds(*s);
                    b.is_empty() || b.first > *last
                })
            };
            let current = st.current.as_ref().map(PinnedBlobWriter::id);
            if let Some(id) = current {
                if st.holds.get(&id).is_none_or(passed) {
                    if let Some(w) = st.current.take() {
                        w.finish()?;
                    }
                }
            }
            st.holds
                .iter()
                .filter(|(id, by)| {
                    Some(**id) != st.current.as_ref().map(PinnedBlobWriter::id) && passed(by)
                })
                .map(|(id, _)| *id)
                .collect()
        };
        for id in releasable {
            self.lsm.unpin_blob_file(id)?;
            self.state().holds.remove(&id);
            tracing::debug!(file = id, "released a bulk file");
        }
        Ok(())
    }

    /// The files pinned for the log now (for tests and the admin view).
    pub fn pinned(&self) -> Vec<u64> {
        self.state().holds.keys().copied().collect()
    }

    /// The value at `r`, read back (a log read of a version 2 entry): a
    /// view of the file's mapping. Syncs first if it is not yet.
    pub fn read(&self, r: &BlobRef) -> Result<bytes::Bytes> {
        self.sync_upto(r)?;
        Ok(self.lsm.blob_value(r)?)
    }
}

/// Where each entry's moved-out bulk values are, for apply: the log store
/// fills it as it appends or reads entries, the state machine takes from
/// it as it applies them. One per shard.
#[derive(Debug, Default)]
pub struct BulkIndex {
    by_index: Mutex<BTreeMap<u64, Vec<BulkRef>>>,
}

impl BulkIndex {
    fn map(&self) -> MutexGuard<'_, BTreeMap<u64, Vec<BulkRef>>> {
        self.by_index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The entry at Raft index `index` moved out `refs` (none: nothing, and
    /// any earlier entry's record at that index is forgotten).
    pub fn set(&self, index: u64, refs: Vec<BulkRef>) {
        let mut m = self.map();
        if refs.is_empty() {
            m.remove(&index);
        } else {
            m.insert(index, refs);
        }
    }

    /// The references of the entry at `index`.
    pub fn get(&self, index: u64) -> Vec<BulkRef> {
        self.map().get(&index).cloned().unwrap_or_default()
    }

    /// Entries from `index` on are gone (a truncation).
    pub fn truncate_from(&self, index: u64) {
        self.map().split_off(&index);
    }

    /// Entries up to `index` are applied: their records are not needed.
    pub fn applied_upto(&self, index: u64) {
        let mut m = self.map();
        let keep = m.split_off(&index.saturating_add(1));
        *m = keep;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use missive_engine::log::LogOptions;
    use missive_engine::lsm::{LsmOptions, WriteBatch};

    fn open(dir: &std::path::Path) -> (Arc<Lsm>, Arc<Log>) {
        let lsm = Lsm::open(
            dir.join("lsm"),
            LsmOptions {
                background: false,
                ..LsmOptions::default()
            },
        )
        .unwrap();
        let log = Log::open(dir.join("log"), LogOptions::default()).unwrap();
        (Arc::new(lsm), Arc::new(log))
    }

    fn piece(i: u8) -> Vec<u8> {
        (0..200_000u32).map(|j| (j as u8) ^ i).collect()
    }

    /// Values are read back and applied a sync after their append; files
    /// roll at the bound; a file is unpinned once every stream that put a
    /// value in it purged past that entry, and deleted once no table
    /// references it either.
    #[test]
    fn values_are_written_once_read_back_and_released_with_their_entries() {
        let dir = tempfile::tempdir().unwrap();
        let (lsm, log) = open(dir.path());
        let files = BulkFiles::with_file_bytes(Arc::clone(&lsm), Arc::clone(&log), 300_000);
        let (s1, s2) = (StreamId(1), StreamId(2));
        // Log entries 1..=3 of s1 and 1 of s2 name the values.
        for _ in 0..3 {
            log.append(s1, &[b"entry"]).unwrap();
        }
        log.append(s2, &[b"entry"]).unwrap();
        let a = files.append(s1, 1, b"\x01", &piece(1)).unwrap();
        let b = files.append(s2, 1, b"\x01", &piece(2)).unwrap();
        assert_eq!(a.file, b.file);
        // Unsynced: the LSM refuses the reference; a read syncs first.
        let mut batch = WriteBatch::new();
        batch.put_blob_ref(b"a", &a);
        assert!(lsm.apply(&batch, None).is_err());
        let got = files.read(&a).unwrap();
        assert_eq!(got[0], 1);
        assert_eq!(&got[1..], piece(1).as_slice());
        lsm.apply(&batch, None).unwrap();
        // Past 300 000 bytes the next value starts a new file.
        let c = files.append(s1, 3, b"\x01", &piece(3)).unwrap();
        assert_ne!(c.file, a.file);
        files.sync_upto(&c).unwrap();
        assert_eq!(&files.read(&b).unwrap()[1..], piece(2).as_slice());
        assert_eq!(files.pinned(), vec![a.file, c.file]);
        lsm.flush().unwrap();

        // s1 purged past entry 1 but s2 not: the first file stays pinned.
        log.purge_upto(s1, 1).unwrap();
        files.release().unwrap();
        assert_eq!(files.pinned(), vec![a.file, c.file]);
        log.purge_upto(s2, 1).unwrap();
        files.release().unwrap();
        // The first one is unpinned and kept by the table referencing
        // "a"; the current one is still needed by s1's entry 3.
        assert_eq!(files.pinned(), vec![c.file]);
        assert!(!lsm.pinned_blob_files().contains(&a.file));
        assert_eq!(lsm.get(b"a").unwrap().unwrap()[1..], piece(1));
        let mut del = WriteBatch::new();
        del.delete(b"a");
        lsm.apply(&del, None).unwrap();
        lsm.compact_full().unwrap();
        assert!(matches!(
            lsm.blob_value(&a),
            Err(missive_engine::Error::InvalidArgument(_))
        ));
        // Every log past every entry: the current file goes too (finished
        // first; nothing references it), and the next value starts anew.
        log.purge_upto(s1, 3).unwrap();
        files.release().unwrap();
        assert!(files.pinned().is_empty());
        assert!(lsm.pinned_blob_files().is_empty());
        let d = files.append(s1, 4, b"", &piece(4)).unwrap();
        assert!(d.file > c.file);
        assert_eq!(&files.read(&d).unwrap()[..], piece(4).as_slice());
    }

    /// After a restart every file pinned before is held by each stream up
    /// to its last entry then, and released as the streams purge past it.
    #[test]
    fn files_pinned_before_a_restart_are_held_until_the_logs_move_past() {
        let dir = tempfile::tempdir().unwrap();
        let r = {
            let (lsm, log) = open(dir.path());
            let files = BulkFiles::open(Arc::clone(&lsm), Arc::clone(&log));
            log.append(StreamId(5), &[b"e1", b"e2"]).unwrap();
            let r = files.append(StreamId(5), 1, b"", &piece(9)).unwrap();
            files.sync_upto(&r).unwrap();
            r
        };
        let (lsm, log) = open(dir.path());
        let files = BulkFiles::open(Arc::clone(&lsm), Arc::clone(&log));
        assert_eq!(files.pinned(), vec![r.file]);
        assert_eq!(&files.read(&r).unwrap()[..], piece(9).as_slice());
        // Held up to entry 2 (the stream's last at open), not just 1.
        log.purge_upto(StreamId(5), 1).unwrap();
        files.release().unwrap();
        assert_eq!(files.pinned(), vec![r.file]);
        log.purge_upto(StreamId(5), 2).unwrap();
        files.release().unwrap();
        assert!(files.pinned().is_empty());
        assert!(lsm.pinned_blob_files().is_empty());
    }

    #[test]
    fn the_index_forgets_truncated_and_applied_entries() {
        let ix = BulkIndex::default();
        let r = |f| BulkRef {
            command: 0,
            blob: BlobRef {
                file: f,
                offset: 24,
                len: 1,
                crc: 0,
            },
        };
        for i in 1..=5 {
            ix.set(i, vec![r(i)]);
        }
        ix.set(3, Vec::new());
        assert!(ix.get(3).is_empty());
        ix.truncate_from(5);
        assert!(ix.get(5).is_empty());
        ix.applied_upto(1);
        assert!(ix.get(1).is_empty());
        assert_eq!(ix.get(2), vec![r(2)]);
        assert_eq!(ix.get(4), vec![r(4)]);
    }
}
