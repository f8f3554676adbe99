//! Fuzz entry points: each feeds arbitrary bytes to one of the engine's
//! decoders of on-disk data, exactly as the engine's own read and recovery
//! paths call it, and checks what must hold whatever the bytes are (cargo
//! feature `fuzzing`; the targets in `fuzz/` call these, hidden from the
//! docs and not a stable API).
//!
//! Every format here is checksummed, and random bytes almost never carry a
//! right checksum, so a fuzzer would spend its time in front of the gate.
//! Each entry point therefore runs the bytes twice: as they are (the gate
//! itself), and *resealed* — every checksum the format holds recomputed
//! over the fuzzed bytes first — so the decoder behind the gate sees
//! structurally damaged data that a checksum would not catch (a bug in
//! the writer, or a crafted file). Whatever the input: no panic, no
//! allocation out of proportion to it, and what decodes re-encodes to the
//! same thing.

use std::path::Path;
use std::sync::Arc;

use crate::log::format::{
    self, check_segment_header, decode_record, entry_data, Decoded, RecordKind, RECORD_HEADER_LEN,
    SEGMENT_HEADER_LEN,
};
use crate::log::recovery::scan_segment;
use crate::log::stream::Streams;
use crate::lsm::batch::WriteBatch;
use crate::lsm::cache::BlockCache;
use crate::lsm::manifest::{parse_edits, Edit};
use crate::lsm::table::block::{BlockLayout, DecodedBlock};
use crate::lsm::table::bloom::may_contain;
use crate::lsm::table::reader::Table;
use crate::lsm::table::{TableId, FOOTER_LEN};

fn le_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(..4)?.try_into().ok()?))
}

fn le_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?))
}

/// Writes the crc32 of `buf[over]` at `buf[at..at + 4]` (little-endian),
/// where both fit: how a target reseals a checksum over fuzzed bytes.
pub fn put_crc(buf: &mut [u8], at: usize, over: std::ops::Range<usize>) {
    if over.end <= buf.len() && at + 4 <= buf.len() {
        let crc = crc32fast::hash(&buf[over]);
        buf[at..at + 4].copy_from_slice(&crc.to_le_bytes());
    }
}

/// A log segment, scanned as recovery scans it (header, records, seal,
/// torn-tail rules), every record applied to stream state as replay does
/// and every entry decoded as the read path does.
pub fn log_segment(data: &[u8]) {
    let mut sealed = data.to_vec();
    put_crc(&mut sealed, 28, 0..28);
    let mut pos = SEGMENT_HEADER_LEN;
    while let Some(len) = sealed.get(pos + 4..).and_then(le_u32) {
        let end = pos + RECORD_HEADER_LEN + len as usize;
        if len as usize > format::MAX_PAYLOAD || end > sealed.len() {
            break;
        }
        put_crc(&mut sealed, pos, pos + 4..end);
        pos = end;
    }
    for bytes in [data, &sealed[..]] {
        let seq = bytes.get(12..).and_then(le_u64).unwrap_or(0);
        let _ = check_segment_header(bytes, seq.wrapping_add(1));
        for newest in [false, true] {
            let mut streams = Streams::default();
            let scanned = scan_segment(Path::new("fuzz"), bytes, seq, newest, &mut |rec, at| {
                streams.apply(rec, seq, at as u64)?;
                if matches!(rec.kind, RecordKind::Entry | RecordKind::EntryLz4) {
                    entry_data(rec)?;
                }
                Ok(())
            });
            if let Ok(scan) = scanned {
                assert!(scan.end <= bytes.len(), "a scan ends inside the segment");
                // What recovery keeps decodes again, record by record.
                let mut at = SEGMENT_HEADER_LEN;
                while at < scan.end {
                    match decode_record(bytes, at) {
                        Decoded::Record(r) => at += r.total_len(),
                        other => panic!("a kept record no longer decodes: {other:?}"),
                    }
                }
                assert_eq!(at, scan.end);
                let _ = streams.find_hole();
            }
        }
    }
}

/// One uncompressed data block in either layout (the first byte picks),
/// decoded as a table read decodes it; every entry is then read and
/// sought, as reads do.
pub fn table_block(data: &[u8]) {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let layout = match pick % 3 {
        0 => BlockLayout::Columnar,
        1 => BlockLayout::Interleaved,
        _ => BlockLayout::ColumnarBlobs,
    };
    if let Ok(block) = DecodedBlock::decode(payload.to_vec(), layout) {
        assert!(block.len() <= payload.len(), "more entries than bytes");
        for i in 0..block.len() {
            let (key, seq) = (block.key(i).to_vec(), block.seq(i));
            let _ = block.value(i);
            let _ = block.is_blob(i);
            // Keys need not be sorted in a damaged block; seeking must
            // still answer an index in range.
            assert!(block.seek(&key, seq) <= block.len());
            assert!(block.seek_key(&key) <= block.len());
        }
    }
}

/// A bloom filter probed with a prefix: the first byte says how long the
/// filter is (in 8-byte units), the rest is filter then prefix. Never a
/// false negative: a filter built over the prefix must say "maybe".
pub fn bloom(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (filter, prefix) = rest.split_at((usize::from(n) * 8).min(rest.len()));
    let _ = may_contain(filter, prefix);
    let mut b = crate::lsm::table::bloom::BloomBuilder::default();
    b.add(prefix);
    let built = b.finish(u32::from(n % 24) + 1);
    assert!(may_contain(&built, prefix), "a bloom filter lost its key");
}

/// A whole table file: the footer, filter and index regions and every
/// data block resealed, written to a file, opened, verified and read
/// through, as the store opens and reads tables.
pub fn table_file(data: &[u8]) {
    let mut sealed = data.to_vec();
    if sealed.len() >= FOOTER_LEN {
        let foot = sealed.len() - FOOTER_LEN;
        let region = |sealed: &[u8], at: usize| -> Option<(usize, usize)> {
            let o = usize::try_from(le_u64(&sealed[foot + at..])?).ok()?;
            let l = usize::try_from(le_u64(&sealed[foot + at + 8..])?).ok()?;
            (l >= 4 && o.checked_add(l)? <= foot).then_some((o, l))
        };
        // Blocks first (the index names them), then filter and index,
        // then the footer that names those.
        if let Some((o, l)) = region(&sealed, 0) {
            let index = sealed[o..o + l - 4].to_vec();
            if let Some(entries) = Table::parse_index(&index, foot) {
                // A version 4 dictionary: from the start to the first block.
                if let Some(first) = entries.first().map(|e| e.offset as usize) {
                    if first >= 4 {
                        put_crc(&mut sealed, first - 4, 0..first - 4);
                    }
                }
                for e in entries {
                    let (bo, bl) = (e.offset as usize, e.len as usize);
                    put_crc(&mut sealed, bo + bl - 4, bo..bo + bl - 4);
                }
            }
        }
        for at in [16, 0] {
            if let Some((o, l)) = region(&sealed, at) {
                put_crc(&mut sealed, o + l - 4, o..o + l - 4);
            }
        }
        put_crc(&mut sealed, foot + 52, foot..foot + 52);
    }
    let path = scratch_file("table.sst");
    for bytes in [data, &sealed[..]] {
        if std::fs::write(&path, bytes).is_err() {
            return;
        }
        let cache = Arc::new(BlockCache::new(1 << 20));
        let opened = Table::open(&path, TableId(1), cache);
        // The mapping outlives the name: the file goes now, not with the
        // process.
        let _ = std::fs::remove_file(&path);
        let Ok(table) = opened else {
            continue;
        };
        let _ = table.verify();
        for i in 0..table.index.len() {
            let Ok(block) = table.block(i) else { continue };
            if let Some(last) = block.len().checked_sub(1) {
                let key = block.key(last).to_vec();
                let _ = table.may_contain(crate::keys::bloom_prefix(&key));
                let _ = table.get(&key, u64::MAX >> 8);
            }
        }
    }
}

/// A file name of this process for a target that must go through a file
/// (an mmap, a reader that opens a path): in memory (`/dev/shm`) where
/// there is one — a disk write per execution made those targets a hundred
/// times slower — else in the temporary directory. Callers remove it.
pub fn scratch_file(name: &str) -> std::path::PathBuf {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("missive-fuzz-{}-{name}", std::process::id()))
}

/// A manifest file (records resealed), parsed as the store loads it; and
/// the bytes as one edit's payload, which must re-encode to an equal edit.
pub fn manifest(data: &[u8]) {
    if let Some(e) = Edit::decode(data) {
        assert_eq!(Edit::decode(&e.encode()), Some(e), "an edit re-encodes");
    }
    let mut sealed = data.to_vec();
    put_crc(&mut sealed, 12, 0..12);
    let mut pos = 16;
    while let Some(len) = sealed.get(pos + 4..).and_then(le_u32) {
        let Some(end) = (pos + 8)
            .checked_add(len as usize)
            .filter(|&e| e <= sealed.len())
        else {
            break;
        };
        put_crc(&mut sealed, pos, pos + 4..end);
        pos = end;
    }
    for bytes in [data, &sealed[..]] {
        if let Ok(edits) = parse_edits(Path::new("fuzz"), bytes) {
            let mut state = crate::lsm::manifest::ManifestState::default();
            for e in &edits {
                state.apply(e);
            }
            let snap = state.snapshot();
            assert_eq!(Edit::decode(&snap.encode()), Some(snap));
        }
    }
}

/// A write batch (the standalone store's log entry): what decodes walks
/// its operations and re-decodes from its own bytes to the same batch.
pub fn write_batch(data: &[u8]) {
    if let Some(b) = WriteBatch::decode(data) {
        assert_eq!(b.ops().count(), b.len());
        assert_eq!(WriteBatch::decode(b.as_bytes()).as_ref(), Some(&b));
    }
}

/// Seed inputs for the targets above, written by this build's own
/// writers: a small standalone store in `dir` (its log segment with the
/// preallocated zeros trimmed, its table and manifest files), a data block,
/// a bloom filter, an edit and a batch. `(target, name, bytes)`.
pub fn seeds(dir: &Path) -> crate::Result<Vec<(&'static str, String, Vec<u8>)>> {
    use crate::keys::{message_key, ConversationId, Timestamp};
    use crate::lsm::{Db, DbOptions};
    let mut out: Vec<(&'static str, String, Vec<u8>)> = Vec::new();
    let db = Db::open(dir, DbOptions::default())?;
    let mut batch = WriteBatch::new();
    for conv in 1..=3u64 {
        for ts in 1..=12u64 {
            let key = message_key(ConversationId(conv), Timestamp(ts * 1000));
            batch.put(key, format!("message {ts} of conversation {conv}"));
        }
        batch.delete(message_key(ConversationId(conv), Timestamp(5000)));
        db.write(&batch)?;
        if conv == 1 {
            out.push(("write_batch", "messages".into(), batch.as_bytes().to_vec()));
        }
        batch.clear();
    }
    db.flush()?;
    drop(db);
    for sub in ["log", "lsm", "lsm/tables"] {
        let entries =
            std::fs::read_dir(dir.join(sub)).map_err(|e| crate::Error::io("list", dir, e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let bytes = std::fs::read(&path).map_err(|e| crate::Error::io("read", &path, e))?;
            let target = if name.ends_with(".log") {
                "log_segment"
            } else if name.ends_with(".sst") {
                "table_file"
            } else if name.starts_with("MANIFEST-") {
                "manifest"
            } else {
                continue;
            };
            let used = bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
            out.push((
                target,
                name,
                bytes[..used.max(SEGMENT_HEADER_LEN.min(bytes.len()))].to_vec(),
            ));
        }
    }
    // Version 4: bottom-level tables of zstd blocks and of LZ4 blocks
    // against a dictionary, each with its dictionary.
    for (sub, bottom) in [
        (
            "zstd",
            crate::lsm::BottomCompression::Zstd {
                level: 3,
                block_size: 1 << 10,
            },
        ),
        (
            "lz4",
            crate::lsm::BottomCompression::Lz4Hc {
                level: 9,
                block_size: 1 << 10,
            },
        ),
    ] {
        use crate::lsm::{Lsm, LsmOptions};
        let zdir = dir.join(sub);
        let lsm = Lsm::open(
            &zdir,
            LsmOptions {
                background: false,
                bottom_compression: Some(bottom),
                ..LsmOptions::default()
            },
        )?;
        let mut batch = WriteBatch::new();
        // Enough blocks to train a dictionary on.
        let words = [
            "see", "you", "at", "the", "office", "later", "lunch", "ok", "late",
        ];
        for ts in 1..=3000u64 {
            let key = message_key(ConversationId(ts % 4), Timestamp(ts * 1000));
            let text: Vec<&str> = (0..8)
                .map(|i| words[(ts * 7 + i * ts / 3) as usize % 9])
                .collect();
            batch.put(key, format!("{ts}: {}", text.join(" ")));
        }
        lsm.apply(&batch, None)?;
        lsm.flush()?;
        lsm.compact_full()?;
        lsm.recompress_all()?;
        let tables = zdir.join("tables");
        let entries =
            std::fs::read_dir(&tables).map_err(|e| crate::Error::io("list", &tables, e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let bytes = std::fs::read(&path).map_err(|e| crate::Error::io("read", &path, e))?;
            out.push(("table_file", format!("{sub}-dictionary.sst"), bytes));
        }
    }
    let mut block = crate::lsm::table::block::BlockBuilder::new();
    let mut bloom = crate::lsm::table::bloom::BloomBuilder::default();
    for ts in (1..=20u64).rev() {
        let key = message_key(ConversationId(9), Timestamp(ts));
        block.add_entry(&key, ts, (ts % 5 != 0).then_some(&b"hello"[..]), false);
        bloom.add(crate::keys::bloom_prefix(&key));
    }
    out.push((
        "table_block",
        "columnar".into(),
        [&[0u8][..], &block.take()].concat(),
    ));
    // Version 3: every third value a blob reference.
    for ts in (1..=20u64).rev() {
        let key = message_key(ConversationId(9), Timestamp(ts));
        let r = crate::lsm::blob::BlobRef {
            file: 7,
            offset: 16 + ts * 100,
            len: 92,
            crc: ts as u32,
        }
        .encode();
        let blob = ts % 3 == 0;
        let value: &[u8] = if blob { &r } else { b"hello" };
        block.add_entry(&key, ts, (ts % 5 != 0).then_some(value), blob);
    }
    out.push((
        "table_block",
        "columnar-blobs".into(),
        [&[2u8][..], &block.take()].concat(),
    ));
    let filter = bloom.finish(10);
    let key = message_key(ConversationId(9), Timestamp(1));
    let n = u8::try_from(filter.len() / 8).unwrap_or(u8::MAX);
    out.push((
        "bloom",
        "filter".into(),
        [
            &[n][..],
            &filter[..usize::from(n) * 8],
            crate::keys::bloom_prefix(&key),
        ]
        .concat(),
    ));
    Ok(out)
}
