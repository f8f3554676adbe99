//! The log's contract, scenario by scenario, on every I/O back end.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on surprises"
)]

use crate::common;

use missive_engine::log::{Compression, LogOptions, StreamId, SyncPolicy};
use missive_engine::Error;
use std::time::Duration;

use common::{backends, Backend};

fn each_backend(f: impl Fn(&Backend)) {
    for b in backends() {
        eprintln!("backend: {}", b.name);
        f(&b);
    }
}

#[test]
fn append_read_reopen() {
    each_backend(|b| {
        let dir = b.dir();
        {
            let log = b.open(&dir, LogOptions::default());
            let a = log
                .append(StreamId(1), &[b"one".as_slice(), b"two"])
                .unwrap();
            assert_eq!((a.first, a.last), (1, 2));
            let c = log.append(StreamId(2), &[b"x"]).unwrap();
            assert_eq!((c.first, c.last), (1, 1));
            a.durable.wait().unwrap();
            c.durable.wait().unwrap();
            let got = log.read(StreamId(1), 0..100).unwrap();
            assert_eq!(got.len(), 2);
            assert_eq!(got[1].index, 2);
            assert_eq!(got[1].data, b"two");
            log.close().unwrap();
        }
        let log = b.open(&dir, LogOptions::default());
        assert_eq!(
            log.get(StreamId(1), 1).unwrap().as_deref(),
            Some(&b"one"[..])
        );
        assert_eq!(log.get(StreamId(2), 1).unwrap().as_deref(), Some(&b"x"[..]));
        let a = log.append(StreamId(1), &[b"three"]).unwrap();
        assert_eq!(a.first, 3);
    });
}

#[test]
fn meta_truncate_purge_survive_reopen() {
    each_backend(|b| {
        let dir = b.dir();
        let opts = LogOptions {
            segment_size: 4096,
            ..LogOptions::default()
        };
        {
            let log = b.open(&dir, opts.clone());
            for i in 0..200u32 {
                log.append(StreamId(7), &[i.to_le_bytes()]).unwrap();
            }
            log.set_meta(StreamId(7), b"vote", b"term=3").unwrap();
            log.truncate_after(StreamId(7), 150).unwrap();
            log.purge_upto(StreamId(7), 100).unwrap();
            let a = log.append(StreamId(7), &[b"new151"]).unwrap();
            assert_eq!(a.first, 151);
            a.durable.wait().unwrap();
            assert!(matches!(
                log.truncate_after(StreamId(7), 50),
                Err(Error::InvalidArgument(_))
            ));
        }
        let log = b.open(&dir, opts);
        let bounds = log.bounds(StreamId(7));
        assert_eq!((bounds.first, bounds.last), (101, 151));
        assert_eq!(
            log.meta(StreamId(7), b"vote").as_deref(),
            Some(&b"term=3"[..])
        );
        assert_eq!(
            log.get(StreamId(7), 151).unwrap().as_deref(),
            Some(&b"new151"[..])
        );
        assert_eq!(
            log.get(StreamId(7), 150).unwrap(),
            Some(149u32.to_le_bytes().to_vec())
        );
        assert!(log.get(StreamId(7), 100).unwrap().is_none());
    });
}

#[test]
fn staged_meta_rides_the_next_write_and_starts_none_of_its_own() {
    each_backend(|b| {
        let dir = b.dir();
        // The writer thread never writes staged records on its own here,
        // so only the append below (or the close) can carry them.
        let opts = LogOptions {
            staged_write_delay: Duration::from_secs(3600),
            ..LogOptions::default()
        };
        {
            let log = b.open(&dir, opts.clone());
            log.append(StreamId(7), &[b"e1"])
                .unwrap()
                .durable
                .wait()
                .unwrap();
            let before = log.stats();
            log.stage_meta(StreamId(7), b"committed", b"1").unwrap();
            log.stage_meta(StreamId(7), b"committed", b"2").unwrap();
            std::thread::sleep(Duration::from_millis(50));
            let idle = log.stats();
            assert_eq!(
                (idle.groups, idle.syncs, idle.bytes_written),
                (before.groups, before.syncs, before.bytes_written),
                "a staged record was written or synced on its own"
            );
            assert_eq!(log.meta(StreamId(7), b"committed"), None);
            let a = log.append(StreamId(8), &[b"other stream"]).unwrap();
            a.durable.wait().unwrap();
            let after = log.stats();
            assert_eq!(after.groups, before.groups + 1, "one write for all three");
            assert_eq!(
                log.meta(StreamId(7), b"committed").as_deref(),
                Some(&b"2"[..]),
                "records keep call order: the newer staged value wins"
            );
            // Staged after a durable set_meta of the same key: the newer wins
            // once written, and a close writes what is still staged.
            log.set_meta(StreamId(7), b"vote", b"v1").unwrap();
            log.stage_meta(StreamId(7), b"vote", b"v2").unwrap();
            log.stage_meta(StreamId(7), b"committed", b"3").unwrap();
            log.close().unwrap();
        }
        let log = b.open(&dir, opts);
        assert_eq!(log.meta(StreamId(7), b"vote").as_deref(), Some(&b"v2"[..]));
        assert_eq!(
            log.meta(StreamId(7), b"committed").as_deref(),
            Some(&b"3"[..])
        );
        assert!(matches!(
            log.stage_meta(StreamId(7), &[0u8; 70_000], b"x"),
            Err(Error::InvalidArgument(_))
        ));
    });
}

#[test]
fn a_staged_meta_alone_is_written_and_synced_after_the_delay() {
    each_backend(|b| {
        let dir = b.dir();
        let log = b.open(
            &dir,
            LogOptions {
                staged_write_delay: Duration::from_millis(5),
                ..LogOptions::default()
            },
        );
        log.append(StreamId(3), &[b"e1"])
            .unwrap()
            .durable
            .wait()
            .unwrap();
        // Let the writer thread reach its wait: it must be woken, not
        // find the record on its way there.
        std::thread::sleep(Duration::from_millis(50));
        let before = log.stats();
        log.stage_meta(StreamId(3), b"committed", b"9").unwrap();
        // No other write comes: the writer thread writes it after the delay
        // and the syncer syncs it. (A liveness bound, not a timing target.)
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while log.stats().syncs == before.syncs {
            assert!(
                std::time::Instant::now() < deadline,
                "staged record never written and synced"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            log.meta(StreamId(3), b"committed").as_deref(),
            Some(&b"9"[..])
        );
        assert_eq!(log.stats().groups, before.groups + 1);
    });
}

/// Options whose 4 KiB segments fill after a few dozen small entries.
fn small_segments() -> LogOptions {
    LogOptions {
        segment_size: 4096,
        ..LogOptions::default()
    }
}

/// Appends `n` entries of 100 bytes to `stream`, one append each.
fn fill(log: &missive_engine::log::Log, stream: StreamId, n: u32) {
    for i in 0..n {
        log.append(stream, &[vec![i as u8; 100]]).unwrap();
    }
}

#[test]
fn purge_deletes_segments_but_keeps_meta_and_purge_point() {
    each_backend(|b| {
        let dir = b.dir();
        let opts = small_segments();
        {
            let log = b.open(&dir, opts.clone());
            log.set_meta(StreamId(1), b"flushed", b"42").unwrap();
            fill(&log, StreamId(1), 400);
            log.append(StreamId(2), &[b"keep"]).unwrap();
            log.purge_upto(StreamId(2), 1).unwrap();
            let before = log.segment_seqs().len();
            assert!(before > 5, "expected several segments, got {before}");
            // Collection runs before the purge returns.
            log.purge_upto(StreamId(1), 400).unwrap();
            let after = log.segment_seqs();
            assert!(after.len() < before, "no segment was deleted: {after:?}");
            assert!(log.stats().segments_deleted > 0);
        }
        let log = b.open(&dir, opts);
        assert_eq!(
            log.meta(StreamId(1), b"flushed").as_deref(),
            Some(&b"42"[..])
        );
        let bounds = log.bounds(StreamId(1));
        assert_eq!((bounds.first, bounds.last), (401, 400));
        assert_eq!(log.append(StreamId(1), &[b"next"]).unwrap().first, 401);
        assert_eq!(log.append(StreamId(2), &[b"next"]).unwrap().first, 2);
    });
}

#[test]
fn purge_beyond_last_continues_after_it() {
    each_backend(|b| {
        let dir = b.dir();
        let log = b.open(&dir, LogOptions::default());
        log.append(StreamId(3), &[b"a"]).unwrap();
        log.purge_upto(StreamId(3), 1000).unwrap();
        assert_eq!(log.append(StreamId(3), &[b"b"]).unwrap().first, 1001);
        drop(log);
        let log = b.open(&dir, LogOptions::default());
        let bounds = log.bounds(StreamId(3));
        assert_eq!((bounds.first, bounds.last), (1001, 1001));
    });
}

#[test]
fn compression_round_trips() {
    each_backend(|b| {
        let dir = b.dir();
        let opts = LogOptions {
            compression: Compression::Lz4 { min_len: 16 },
            ..LogOptions::default()
        };
        let text = b"hello hello hello hello hello hello hello hello".repeat(10);
        {
            let log = b.open(&dir, opts.clone());
            log.append(StreamId(1), &[text.as_slice(), b"short"])
                .unwrap();
            assert!(log.stats().bytes_written < text.len() as u64);
        }
        let log = b.open(&dir, opts);
        let got = log.read(StreamId(1), 1..3).unwrap();
        assert_eq!(got[0].data, text);
        assert_eq!(got[1].data, b"short");
    });
}

#[test]
fn sync_policies_complete() {
    each_backend(|b| {
        for policy in [
            SyncPolicy::Always,
            SyncPolicy::EveryMillis(5),
            SyncPolicy::Never,
        ] {
            let dir = b.dir();
            let log = b.open(
                &dir,
                LogOptions {
                    sync: policy,
                    ..LogOptions::default()
                },
            );
            let a = log.append(StreamId(1), &[b"x"]).unwrap();
            a.durable.wait().unwrap();
            assert!(a.durable.is_durable());
            log.set_meta(StreamId(1), b"k", b"v").unwrap();
        }
    });
}

#[test]
fn second_open_of_same_dir_is_refused() {
    let b = &backends()[0];
    let dir = b.dir();
    let _log = b.open(&dir, LogOptions::default());
    let err = b.try_open(&dir, LogOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
}

#[test]
fn oversized_entry_is_rejected() {
    let b = &backends()[0];
    let dir = b.dir();
    let log = b.open(&dir, LogOptions::default());
    let big = vec![0u8; (64 << 20) + 1];
    assert!(matches!(
        log.append(StreamId(1), &[big]),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn indexes_near_u64_max_are_rejected_not_overflowed() {
    let b = &backends()[0];
    let dir = b.dir();
    let log = b.open(&dir, LogOptions::default());
    for bad in [u64::MAX, u64::MAX - 1] {
        assert!(matches!(
            log.purge_upto(StreamId(1), bad),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            log.truncate_after(StreamId(1), bad),
            Err(Error::InvalidArgument(_))
        ));
    }
}

#[test]
fn completion_is_a_future() {
    let b = &backends()[0];
    let dir = b.dir();
    let log = b.open(&dir, LogOptions::default());
    let a = log.append(StreamId(1), &[b"x"]).unwrap();
    common::block_on(a.durable).unwrap();
}

#[test]
fn reset_forgets_a_stream_and_frees_its_segments() {
    each_backend(|b| {
        let dir = b.dir();
        let opts = small_segments();
        {
            let log = b.open(&dir, opts.clone());
            log.set_meta(StreamId(1), b"vote", b"7").unwrap();
            fill(&log, StreamId(1), 400);
            log.purge_upto(StreamId(1), 10).unwrap();
            log.append(StreamId(2), &[b"other"]).unwrap();
            log.set_meta(StreamId(2), b"vote", b"9").unwrap();
            let before = log.segment_seqs().len();
            assert!(before > 5, "expected several segments, got {before}");
            log.reset(StreamId(1)).unwrap();
            // Forgotten at once: no entries, no purge point, no meta.
            let bounds = log.bounds(StreamId(1));
            assert_eq!((bounds.first, bounds.last), (1, 0));
            assert_eq!(log.meta(StreamId(1), b"vote"), None);
            assert!(log.get(StreamId(1), 200).unwrap().is_none());
            // Only stream 2's entry in the first segment keeps anything.
            log.purge_upto(StreamId(2), 1).unwrap();
            let after = log.segment_seqs().len();
            assert!(after < before, "reset freed no segment: {before} → {after}");
            // The stream starts over at 1.
            assert_eq!(log.append(StreamId(1), &[b"again"]).unwrap().first, 1);
        }
        // And so it is after a restart; the other stream is untouched.
        let log = b.open(&dir, opts);
        let bounds = log.bounds(StreamId(1));
        assert_eq!((bounds.first, bounds.last), (1, 1));
        assert_eq!(
            log.get(StreamId(1), 1).unwrap().as_deref(),
            Some(&b"again"[..])
        );
        assert_eq!(log.meta(StreamId(1), b"vote"), None);
        assert_eq!(log.meta(StreamId(2), b"vote").as_deref(), Some(&b"9"[..]));
        assert_eq!(log.append(StreamId(2), &[b"next"]).unwrap().first, 2);
    });
}
