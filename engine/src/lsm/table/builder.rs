//! Writes one table file: data blocks as they fill, then filter, index and
//! footer, then fsync. The caller fsyncs the directory and records the table
//! in the manifest; an unrecorded table is an orphan deleted at open.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::fd::start_writeback_fd;
use crate::keys::bloom_prefix;
use crate::lsm::blob::BlobRef;
use crate::lsm::table::block::BlockBuilder;
use crate::lsm::table::bloom::BloomBuilder;
pub(crate) use crate::lsm::table::codec::Compression;
use crate::lsm::table::codec::{self, Compressor, DICTIONARY_SAMPLE_BYTES};
use crate::lsm::table::{
    FOOTER_HAS_BLOB_LIST, FOOTER_HAS_DICTIONARY, TABLE_MAGIC, TABLE_VERSION, TABLE_VERSION_BLOBS,
    TABLE_VERSION_FLAGS,
};
use crate::lsm::version::FileMeta;

/// What a finished table holds, for the manifest.
#[derive(Debug, Clone)]
pub(crate) struct TableSummary {
    pub size: u64,
    pub smallest: Vec<u8>,
    pub largest: Vec<u8>,
    pub min_seq: u64,
    pub max_seq: u64,
    pub entries: u64,
}

impl TableSummary {
    /// The manifest's description of the finished table `id` at `level`.
    pub fn into_meta(self, id: crate::lsm::table::TableId, level: u8) -> FileMeta {
        FileMeta {
            id,
            level,
            size: self.size,
            smallest: self.smallest,
            largest: self.largest,
            min_seq: self.min_seq,
            max_seq: self.max_seq,
            entries: self.entries,
            recompressed: false,
        }
    }
}

/// A block held back until the table's dictionary is trained: its
/// uncompressed payload, last key and last sequence number.
type HeldBlock = (Vec<u8>, Vec<u8>, u64);

/// Table-building knobs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BuildOptions {
    pub block_size: usize,
    pub bloom_bits_per_key: u32,
    pub compression: Compression,
}

/// Bytes of a table between requests to the kernel to start writing them
/// back: a flush or compaction writing tens of megabytes with one fsync at
/// the end let the page cache's dirty limit throttle whoever else wrote
/// meanwhile (the log's appenders stalled 40–60 ms under a sustained
/// ingest). Started early, the writeback is spread over the build.
const WRITEBACK_EVERY: u64 = 1 << 20;

pub(crate) struct TableBuilder {
    path: PathBuf,
    out: BufWriter<File>,
    opts: BuildOptions,
    compressor: Compressor,
    /// While the compressor waits for its dictionary: the first blocks,
    /// uncompressed, with their last key and sequence number (written once
    /// the dictionary is trained on them).
    pending: Option<Vec<HeldBlock>>,
    pending_bytes: usize,
    /// Whether the file starts with a dictionary.
    dictionary: bool,
    offset: u64,
    /// Where writeback was last started ([`WRITEBACK_EVERY`]).
    writeback_from: u64,
    block: BlockBuilder,
    index: Vec<u8>,
    index_count: u32,
    bloom: BloomBuilder,
    last_prefix: Vec<u8>,
    smallest: Option<Vec<u8>>,
    largest: Vec<u8>,
    min_seq: u64,
    max_seq: u64,
    entries: u64,
    /// Blob files referenced, with the bytes of the values referenced in
    /// each (the table's blob list, version 3).
    blobs: std::collections::BTreeMap<u64, u64>,
}

impl TableBuilder {
    pub fn create(path: &Path, opts: BuildOptions) -> Result<Self> {
        let file = File::create(path).map_err(|e| Error::io("create", path, e))?;
        let compressor = Compressor::new(opts.compression);
        Ok(TableBuilder {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(256 << 10, file),
            opts,
            pending: compressor.wants_dictionary().then(Vec::new),
            compressor,
            pending_bytes: 0,
            dictionary: false,
            offset: 0,
            writeback_from: 0,
            block: BlockBuilder::new(),
            index: 0u32.to_le_bytes().to_vec(),
            index_count: 0,
            bloom: BloomBuilder::default(),
            last_prefix: Vec::new(),
            smallest: None,
            largest: Vec::new(),
            min_seq: u64::MAX,
            max_seq: 0,
            entries: 0,
            blobs: std::collections::BTreeMap::new(),
        })
    }

    /// Adds a version; callers add in internal order.
    pub fn add(&mut self, key: &[u8], seq: u64, value: Option<&[u8]>) -> Result<()> {
        self.add_entry(key, seq, value, false)
    }

    /// Adds a version whose value lives in a blob file.
    pub fn add_blob(&mut self, key: &[u8], seq: u64, r: &BlobRef) -> Result<()> {
        *self.blobs.entry(r.file).or_insert(0) += u64::from(r.len);
        self.add_entry(key, seq, Some(&r.encode()), true)
    }

    fn add_entry(&mut self, key: &[u8], seq: u64, value: Option<&[u8]>, blob: bool) -> Result<()> {
        if self.smallest.is_none() {
            self.smallest = Some(key.to_vec());
        }
        let prefix = bloom_prefix(key);
        if prefix != self.last_prefix.as_slice() {
            self.bloom.add(prefix);
            self.last_prefix.clear();
            self.last_prefix.extend_from_slice(prefix);
        }
        self.block.add_entry(key, seq, value, blob);
        self.largest.clear();
        self.largest.extend_from_slice(key);
        self.min_seq = self.min_seq.min(seq);
        self.max_seq = self.max_seq.max(seq);
        self.entries += 1;
        if self.block.raw_len() >= self.opts.block_size {
            self.flush_block()?;
        }
        Ok(())
    }

    /// Bytes written so far plus the open block: for splitting outputs.
    pub fn estimated_size(&self) -> u64 {
        self.offset + (self.pending_bytes + self.block.raw_len()) as u64
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Bytes of the table so far: written to the file or still buffered.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Hands everything buffered to the file and asks the kernel to start
    /// writing it back now, instead of at the next [`WRITEBACK_EVERY`]: the
    /// step of a paced writer (`lsm/pace.rs`), which then sleeps.
    pub fn write_back_now(&mut self) -> Result<()> {
        self.out
            .flush()
            .map_err(|e| Error::io("write", &self.path, e))?;
        self.start_writeback(self.offset);
        Ok(())
    }

    /// Asks the kernel to start writing back the bytes handed to the file
    /// since the last request, up to `handed`. A hint: a failure is left to
    /// the final fsync to report.
    fn start_writeback(&mut self, handed: u64) {
        if handed > self.writeback_from {
            let _ = start_writeback_fd(
                self.out.get_ref(),
                self.writeback_from,
                handed - self.writeback_from,
            );
            self.writeback_from = handed;
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| Error::io("write", &self.path, e))?;
        self.offset += bytes.len() as u64;
        if self.offset - self.writeback_from >= WRITEBACK_EVERY {
            // Only what the buffer has handed the file so far.
            let handed = self.offset - self.out.buffer().len() as u64;
            self.start_writeback(handed);
        }
        Ok(())
    }

    fn flush_block(&mut self) -> Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        let (last_key, last_seq) = {
            let (k, s) = self.block.last();
            (k.to_vec(), s)
        };
        let raw = self.block.take();
        if let Some(pending) = &mut self.pending {
            self.pending_bytes += raw.len();
            pending.push((raw, last_key, last_seq));
            if self.pending_bytes >= DICTIONARY_SAMPLE_BYTES {
                self.write_pending()?;
            }
            return Ok(());
        }
        self.write_block(raw, &last_key, last_seq)
    }

    /// Trains the dictionary on the blocks held back for it, writes it
    /// (first in the file: its block runs to the first data block), then
    /// those blocks.
    fn write_pending(&mut self) -> Result<()> {
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        self.pending_bytes = 0;
        let samples: Vec<&[u8]> = pending.iter().map(|(raw, ..)| raw.as_slice()).collect();
        if let Some(mut dict) = self.compressor.train(&samples) {
            let crc = crc32fast::hash(&dict);
            dict.extend_from_slice(&crc.to_le_bytes());
            self.write(&dict)?;
            self.dictionary = true;
        }
        drop(samples);
        for (raw, last_key, last_seq) in pending {
            self.write_block(raw, &last_key, last_seq)?;
        }
        Ok(())
    }

    fn write_block(&mut self, raw: Vec<u8>, last_key: &[u8], last_seq: u64) -> Result<()> {
        let (mut payload, kind) = match self.compressor.compress(&raw) {
            Some(c) => c,
            None => (raw, codec::STORED),
        };
        payload.push(kind);
        let crc = crc32fast::hash(&payload);
        payload.extend_from_slice(&crc.to_le_bytes());
        let offset = self.offset;
        self.write(&payload)?;
        self.index
            .extend_from_slice(&(last_key.len() as u16).to_le_bytes());
        self.index.extend_from_slice(last_key);
        self.index.extend_from_slice(&last_seq.to_le_bytes());
        self.index.extend_from_slice(&offset.to_le_bytes());
        self.index
            .extend_from_slice(&(payload.len() as u32).to_le_bytes());
        self.index_count += 1;
        Ok(())
    }

    /// Writes the rest, fsyncs the file, and describes it.
    pub fn finish(mut self) -> Result<TableSummary> {
        self.flush_block()?;
        self.write_pending()?;
        let mut filter = self.bloom.finish(self.opts.bloom_bits_per_key);
        let crc = crc32fast::hash(&filter);
        filter.extend_from_slice(&crc.to_le_bytes());
        let filter_offset = self.offset;
        self.write(&filter)?;
        let count = self.index_count.to_le_bytes();
        self.index[..4].copy_from_slice(&count);
        let crc = crc32fast::hash(&self.index);
        let mut index = std::mem::take(&mut self.index);
        index.extend_from_slice(&crc.to_le_bytes());
        let index_offset = self.offset;
        self.write(&index)?;
        let (version, blob_list_offset) = if self.blobs.is_empty() {
            (TABLE_VERSION, 0)
        } else {
            let mut list = Vec::with_capacity(8 + self.blobs.len() * 16);
            list.extend_from_slice(&(self.blobs.len() as u32).to_le_bytes());
            for (file, bytes) in &self.blobs {
                list.extend_from_slice(&file.to_le_bytes());
                list.extend_from_slice(&bytes.to_le_bytes());
            }
            let crc = crc32fast::hash(&list);
            list.extend_from_slice(&crc.to_le_bytes());
            let at = self.offset;
            self.write(&list)?;
            (TABLE_VERSION_BLOBS, at)
        };
        // Version 4 only when a dictionary needs it: tables without one
        // stay byte for byte what versions 2 and 3 were.
        let (version, flags) = match (self.dictionary, version) {
            (false, v) => (v, 0u16),
            (true, TABLE_VERSION_BLOBS) => (
                TABLE_VERSION_FLAGS,
                FOOTER_HAS_DICTIONARY | FOOTER_HAS_BLOB_LIST,
            ),
            (true, _) => (TABLE_VERSION_FLAGS, FOOTER_HAS_DICTIONARY),
        };

        let mut footer = [0u8; super::FOOTER_LEN];
        footer[0..8].copy_from_slice(&index_offset.to_le_bytes());
        footer[8..16].copy_from_slice(&(index.len() as u64).to_le_bytes());
        footer[16..24].copy_from_slice(&filter_offset.to_le_bytes());
        footer[24..32].copy_from_slice(&(filter.len() as u64).to_le_bytes());
        footer[32..40].copy_from_slice(&self.entries.to_le_bytes());
        footer[40..48].copy_from_slice(&blob_list_offset.to_le_bytes());
        footer[48..50].copy_from_slice(&version.to_le_bytes());
        footer[50..52].copy_from_slice(&flags.to_le_bytes());
        let crc = crc32fast::hash(&footer[0..52]);
        footer[52..56].copy_from_slice(&crc.to_le_bytes());
        footer[56..64].copy_from_slice(&TABLE_MAGIC);
        self.write(&footer)?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| Error::io("write", &self.path, e.into_error()))?;
        file.sync_all()
            .map_err(|e| Error::io("fsync", &self.path, e))?;
        Ok(TableSummary {
            size: self.offset,
            smallest: self.smallest.unwrap_or_default(),
            largest: std::mem::take(&mut self.largest),
            min_seq: if self.entries == 0 { 0 } else { self.min_seq },
            max_seq: self.max_seq,
            entries: self.entries,
        })
    }
}
