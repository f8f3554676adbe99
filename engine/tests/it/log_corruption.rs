//! Corruption tests: damaged bytes give the documented error naming the file
//! and offset; a torn final record is cut off and reported, at every byte.
//! Every scenario runs on both real I/O back ends.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on surprises"
)]

use std::path::{Path, PathBuf};

use missive_engine::io::IoBackend;
use missive_engine::log::format::{decode_record, Decoded, SEGMENT_HEADER_LEN};
use missive_engine::log::{Log, LogOptions, StreamId};
use missive_engine::Error;

fn backends() -> Vec<IoBackend> {
    let mut v = vec![IoBackend::Std];
    if IoBackend::uring_available() {
        v.push(IoBackend::IoUring);
    } else {
        eprintln!("NOTE: io_uring is unavailable here; its runs are skipped");
    }
    v
}

fn opts(io: IoBackend, segment_size: u64) -> LogOptions {
    LogOptions {
        io,
        segment_size,
        preallocate: false,
        ..LogOptions::default()
    }
}

fn segment(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.log"))
}

/// Offsets of every record in a segment file.
fn record_offsets(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = SEGMENT_HEADER_LEN;
    while let Decoded::Record(r) = decode_record(bytes, at) {
        out.push((at, r.total_len()));
        at += r.total_len();
    }
    out
}

/// Writes `n` 100-byte entries to stream 1 and closes the log.
fn fill(dir: &Path, io: IoBackend, segment_size: u64, n: u64) {
    let log = Log::open(dir, opts(io, segment_size)).unwrap();
    for i in 0..n {
        log.append(StreamId(1), &[vec![i as u8; 100]]).unwrap();
    }
    log.close().unwrap();
}

fn expect_corruption(dir: &Path, io: IoBackend, file: &Path, offset: u64) -> String {
    match Log::open(dir, opts(io, 1 << 20)) {
        Err(Error::Corruption {
            file: f,
            offset: o,
            reason,
        }) => {
            assert_eq!((f.as_path(), o), (file, offset), "wrong place: {reason}");
            reason
        }
        Err(other) => panic!(
            "expected corruption at {}:{offset}, got {other}",
            file.display()
        ),
        Ok(_) => panic!(
            "expected corruption at {}:{offset}, but the log opened",
            file.display()
        ),
    }
}

fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn flipped_body_byte_in_the_middle_is_corruption() {
    for io in backends() {
        let tmp = tempfile::tempdir().unwrap();
        fill(tmp.path(), io, 1 << 20, 10);
        let seg = segment(tmp.path(), 1);
        let recs = record_offsets(&std::fs::read(&seg).unwrap());
        let (off, len) = recs[4];
        flip(&seg, off + len - 10);
        let reason = expect_corruption(tmp.path(), io, &seg, off as u64);
        assert!(reason.contains("checksum"), "{reason}");
        assert!(reason.contains("intact records follow"), "{reason}");
    }
}

#[test]
fn flipped_header_bytes_in_the_middle_are_corruption() {
    for io in backends() {
        // Every header field: crc, len, kind, flags, stream, index.
        for field_at in [0usize, 5, 8, 9, 14, 21] {
            let tmp = tempfile::tempdir().unwrap();
            fill(tmp.path(), io, 1 << 20, 10);
            let seg = segment(tmp.path(), 1);
            let recs = record_offsets(&std::fs::read(&seg).unwrap());
            let (off, _) = recs[3];
            flip(&seg, off + field_at);
            expect_corruption(tmp.path(), io, &seg, off as u64);
        }
    }
}

#[test]
fn damage_in_a_sealed_segment_is_never_forgiven() {
    for io in backends() {
        let tmp = tempfile::tempdir().unwrap();
        fill(tmp.path(), io, 4096, 100);
        let seg = segment(tmp.path(), 1);
        let recs = record_offsets(&std::fs::read(&seg).unwrap());
        // Even the last record of an older segment: it was fsynced before
        // the next segment existed, so this is damage, not a torn write.
        let (off, len) = *recs.last().unwrap();
        flip(&seg, off + len - 1);
        expect_corruption(tmp.path(), io, &seg, off as u64);
    }
}

#[test]
fn a_cut_at_every_byte_of_the_last_record_recovers_to_the_previous_one() {
    for io in backends() {
        let tmp = tempfile::tempdir().unwrap();
        let golden = tmp.path().join("golden");
        fill(&golden, io, 1 << 20, 10);
        let bytes = std::fs::read(segment(&golden, 1)).unwrap();
        let recs = record_offsets(&bytes);
        let (off, len) = *recs.last().unwrap();
        assert_eq!(off + len, bytes.len());
        for cut in off..off + len {
            for zeroed in [false, true] {
                let dir = tmp.path().join(format!("cut-{cut}-{zeroed}"));
                std::fs::create_dir_all(&dir).unwrap();
                let mut damaged = bytes.clone();
                if zeroed {
                    // The tail's pages never reached the disk.
                    damaged[cut..].fill(0);
                } else {
                    damaged.truncate(cut);
                }
                std::fs::write(segment(&dir, 1), &damaged).unwrap();
                let log = Log::open(&dir, opts(io, 1 << 20))
                    .unwrap_or_else(|e| panic!("cut at {cut} (zeroed {zeroed}): {e}"));
                let b = log.bounds(StreamId(1));
                assert_eq!((b.first, b.last), (1, 9), "cut at {cut}");
                let torn = log.recovery_report().torn_tail.clone();
                let has_garbage = damaged[off..].iter().any(|&x| x != 0);
                assert_eq!(torn.is_some(), has_garbage, "cut at {cut}: {torn:?}");
                if let Some(t) = torn {
                    assert_eq!(t.offset, off as u64);
                }
                // The log goes on from there, and the repair is durable.
                let a = log.append(StreamId(1), &[b"after the cut"]).unwrap();
                assert_eq!(a.first, 10);
                a.durable.wait().unwrap();
                drop(log);
                let log = Log::open(&dir, opts(io, 1 << 20)).unwrap();
                assert!(log.recovery_report().torn_tail.is_none());
                assert_eq!(
                    log.get(StreamId(1), 10).unwrap().as_deref(),
                    Some(&b"after the cut"[..])
                );
            }
        }
    }
}

#[test]
fn a_flipped_last_record_is_a_torn_tail() {
    // Indistinguishable from a write the crash interrupted; documented as such.
    for io in backends() {
        let tmp = tempfile::tempdir().unwrap();
        fill(tmp.path(), io, 1 << 20, 10);
        let seg = segment(tmp.path(), 1);
        let recs = record_offsets(&std::fs::read(&seg).unwrap());
        let (off, _) = *recs.last().unwrap();
        flip(&seg, off + 40);
        let log = Log::open(tmp.path(), opts(io, 1 << 20)).unwrap();
        assert_eq!(log.bounds(StreamId(1)).last, 9);
        let torn = log.recovery_report().torn_tail.clone().unwrap();
        assert_eq!((torn.file, torn.offset), (seg, off as u64));
        assert!(torn.reason.contains("checksum"), "{}", torn.reason);
    }
}

#[test]
fn damaged_segment_header_and_unknown_version() {
    for io in backends() {
        let tmp = tempfile::tempdir().unwrap();
        fill(tmp.path(), io, 1 << 20, 3);
        let seg = segment(tmp.path(), 1);
        let good = std::fs::read(&seg).unwrap();

        flip(&seg, 2); // magic
        let reason = expect_corruption(tmp.path(), io, &seg, 0);
        assert!(reason.contains("magic"), "{reason}");

        let mut v3 = good.clone();
        v3[8] = 3; // version 3, checksum recomputed: a newer build's file
        let crc = crc32fast::hash(&v3[0..28]);
        v3[28..32].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&seg, &v3).unwrap();
        match Log::open(tmp.path(), opts(io, 1 << 20)) {
            Err(Error::UnsupportedVersion {
                found: 3,
                supported: 2,
                file,
            }) => assert_eq!(file, seg),
            other => panic!("expected UnsupportedVersion, got {other:?}"),
        }
    }
}

#[test]
fn a_missing_segment_is_named() {
    for io in backends() {
        let tmp = tempfile::tempdir().unwrap();
        fill(tmp.path(), io, 4096, 200);
        assert!(segment(tmp.path(), 4).exists());
        std::fs::remove_file(segment(tmp.path(), 2)).unwrap();
        let reason = expect_corruption(tmp.path(), io, &segment(tmp.path(), 2), 0);
        assert!(reason.contains("missing"), "{reason}");
        // The oldest segment gone: the stream's entries have a hole.
        std::fs::remove_file(segment(tmp.path(), 1)).unwrap();
        std::fs::remove_file(segment(tmp.path(), 3)).unwrap();
        match Log::open(tmp.path(), opts(io, 4096)) {
            Err(Error::Corruption { reason, .. }) => {
                assert!(reason.contains("missing entries"), "{reason}")
            }
            other => panic!("expected a hole to be reported, got {other:?}"),
        }
    }
}
