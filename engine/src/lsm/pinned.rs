//! Blob files the store's owner writes itself, kept by a pin.
//!
//! A log that keeps large values out of its own records (the write-once
//! layout for media, design.md §4.3.3) writes them into a blob file of the
//! store and later applies batches referencing them
//! (`WriteBatch::put_blob_ref`). Until a flush puts those references into
//! a table, no table names the file, and open deletes blob files no table
//! names (orphans of an interrupted flush). A *pin* — a manifest record
//! (tag 8) written before the file is created — keeps it through any
//! restart until its owner lets go ([`Lsm::unpin_blob_file`]: tag 9); from
//! then on the file lives while a table or a memtable references it, like
//! any other, and goes at once if none does.
//!
//! A pinned file is readable while it grows: what
//! [`PinnedBlobWriter::sync`] made durable may be referenced at once, so
//! an owner appends to one file for a long time (one pin, one manifest
//! write per file) and its references are good a sync after the append —
//! the sync it owes its own log anyway. The file is written through the
//! page cache (its last block is written again at each sync, which
//! `O_DIRECT`'s whole-block writes would make a read-modify-write) and
//! mapped anew by the registry when a reader needs more of it than it
//! mapped (`blob::Growth::Live`).
//!
//! Order (what a crash at each point leaves): the pin is durable before
//! the file exists, and the first sync fsyncs the file and its directory
//! entry before any reference to it can be applied, so a crash leaves at
//! worst a pin of a file that is missing, or whose writer stopped before
//! the footer — its synced records are whole, and after them may come a
//! torn tail no reference points into. The store reads such a file up to
//! its last whole record (`blob::Growth::MaybeUnfinished`);
//! [`Lsm::pinned_blob_files`] lists the pins at open, and the owner
//! unpins what its log does not need and starts a new file for new
//! values.

use std::sync::Arc;

use crate::error::Result;
use crate::lsm::blob::{BlobRef, BlobWriter, Growth};
use crate::lsm::manifest::Edit;
use crate::lsm::{lock, Inner, Lsm};

/// Writes one pinned blob file ([module documentation](self)).
pub struct PinnedBlobWriter {
    inner: Arc<Inner>,
    w: BlobWriter,
    /// Bytes durable so far (0: never synced).
    synced: u64,
}

impl std::fmt::Debug for PinnedBlobWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedBlobWriter")
            .field("id", &self.w.id())
            .finish()
    }
}

impl PinnedBlobWriter {
    /// The file's id (what its references name).
    pub fn id(&self) -> u64 {
        self.w.id()
    }

    /// Appends a value; its reference may be applied once a
    /// [`PinnedBlobWriter::sync`] after this returned.
    pub fn append(&mut self, value: &[u8]) -> Result<BlobRef> {
        self.w.append(value)
    }

    /// Appends one value given in pieces (a format's prefix and the bytes
    /// it frames, with no copy to join them first).
    pub fn append_parts(&mut self, parts: &[&[u8]]) -> Result<BlobRef> {
        self.w.append_parts(parts)
    }

    /// Bytes appended so far, synced or not (a caller rolls to a new file
    /// past its own bound).
    pub fn len(&self) -> u64 {
        self.w.len()
    }

    /// Whether nothing but the header was appended.
    pub fn is_empty(&self) -> bool {
        self.w.len() <= crate::lsm::blob::BLOB_HEADER_LEN as u64
    }

    /// Makes everything appended so far durable (the first time, the
    /// file's directory entry too) and readable through the store: their
    /// references may be applied from now on. Returns the durable length
    /// in bytes.
    pub fn sync(&mut self) -> Result<u64> {
        let first = self.synced == 0;
        let len = self.w.sync(first)?;
        if first {
            self.inner.sync_tables_dir()?;
        }
        self.inner
            .stats
            .pinned_blob_bytes_written
            .fetch_add(len - self.synced, std::sync::atomic::Ordering::Relaxed);
        self.synced = len;
        self.inner
            .blobs
            .set_growth(self.w.id(), Some(Growth::Live(len)));
        Ok(len)
    }

    /// The length the last [`PinnedBlobWriter::sync`] made durable.
    pub fn synced_len(&self) -> u64 {
        self.synced
    }

    /// Writes the footer and fsyncs the file and the tables directory:
    /// every reference into it may be applied, and the file is read as a
    /// finished one from now on. Returns the file's id.
    pub fn finish(self) -> Result<u64> {
        let id = self.w.id();
        let summary = self.w.finish()?;
        self.inner.stats.pinned_blob_bytes_written.fetch_add(
            summary.size.saturating_sub(self.synced),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.inner.sync_tables_dir()?;
        self.inner.blobs.finished(id, summary.value_bytes);
        Ok(id)
    }
}

impl Lsm {
    /// Pins a new blob file id durably, then creates the file: see the
    /// [module documentation](self).
    pub fn create_pinned_blob_file(&self) -> Result<PinnedBlobWriter> {
        let id = self.inner.allocate_table_id().0;
        {
            let mut m = lock(&self.inner.manifest);
            let edit = Edit {
                next_table_id: Some(m.1.next_table_id),
                pinned_blobs: vec![id],
                ..Edit::default()
            };
            m.0.append(&edit)?;
            m.1.apply(&edit);
        }
        let w = BlobWriter::create_buffered(&self.inner.tables_dir, id)?;
        self.inner.blobs.set_growth(id, Some(Growth::Live(0)));
        Ok(PinnedBlobWriter {
            inner: Arc::clone(&self.inner),
            w,
            synced: 0,
        })
    }

    /// The pinned blob files, by id (after a restart: the owner's to
    /// reconcile with what it still names).
    pub fn pinned_blob_files(&self) -> Vec<u64> {
        lock(&self.inner.manifest)
            .1
            .pinned_blobs
            .iter()
            .copied()
            .collect()
    }

    /// Drops the pin of blob file `id` durably. A table or memtable that
    /// references the file keeps it (it goes with the last of them);
    /// otherwise it is deleted now (or when the last reader of one of its
    /// values lets go). Unpinning an id that is not pinned does nothing.
    pub fn unpin_blob_file(&self, id: u64) -> Result<()> {
        let mut m = lock(&self.inner.manifest);
        if !m.1.pinned_blobs.contains(&id) {
            return Ok(());
        }
        let edit = Edit {
            unpinned_blobs: vec![id],
            ..Edit::default()
        };
        m.0.append(&edit)?;
        m.1.apply(&edit);
        // Ordered against batches inserting references and against
        // `install` (which holds the manifest lock too).
        let _refs = lock(&self.inner.blob_refs);
        let in_tables = self
            .inner
            .version()
            .all_tables()
            .any(|t| t.table.blob_list.iter().any(|(f, _)| *f == id));
        let in_memtables = {
            let mems = self.inner.mem();
            std::iter::once(&mems.active)
                .chain(&mems.immutables)
                .any(|mem| mem.blob_file_ids().contains(&id))
        };
        if !in_tables && !in_memtables {
            self.inner.blobs.retire(id);
        }
        Ok(())
    }
}
