//! Segments prepared ahead of their roll (`src/log/ahead.rs`): made (and,
//! with `zero_fill`, written with zeros) on the helper thread, installed by
//! the roll, never left behind — on every I/O back end.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on surprises"
)]

use crate::common;

use std::path::Path;
use std::time::Duration;

use missive_engine::log::{Log, LogOptions, StreamId, SyncPolicy};

use common::backends;

/// Names in `dir` ending in `.tmp` (only on back ends with real files).
fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

fn entry(i: u64) -> Vec<u8> {
    vec![i as u8; 1000]
}

/// Reads back `n` entries of stream 1 and checks each.
fn check(log: &Log, n: u64) {
    let got = log.read(StreamId(1), 1..n + 1).unwrap();
    assert_eq!(got.len() as u64, n);
    for e in got {
        assert_eq!(e.data, entry(e.index), "entry {}", e.index);
    }
}

/// ~6 rolls of 64 KiB segments, slow enough for the helper to have each
/// next segment ready; then the same log reopened.
fn rolls_take_prepared_segments(opts: LogOptions) {
    for b in backends() {
        eprintln!("backend: {} ({opts:?})", b.name);
        let dir = b.dir();
        let n = 400u64;
        {
            let log = b.open(&dir, opts.clone());
            for i in 1..=n {
                let a = log.append(StreamId(1), &[entry(i)]).unwrap();
                a.durable.wait().unwrap();
                // A 64 KiB segment takes the helper well under the ~60 ms
                // between a request (half full) and the roll.
                std::thread::sleep(Duration::from_millis(2));
            }
            let stats = log.stats();
            assert!(stats.segments_created >= 5, "{stats:?}");
            // All, unless the machine stalled the helper for 60 ms.
            assert!(
                stats.segments_prepared * 2 >= stats.segments_created,
                "the rolls made their own segments: {stats:?}"
            );
            if b.fault().is_none() && opts.preallocate {
                // Prepared whole: the newest has its full size on disk.
                let seqs = log.segment_seqs();
                let newest = dir.join(format!("{:020}.log", seqs[seqs.len() - 1]));
                assert_eq!(std::fs::metadata(&newest).unwrap().len(), 64 << 10);
            }
            check(&log, n);
            log.close().unwrap();
        }
        if b.fault().is_none() {
            // The preparation the last half segment asked for is deleted at
            // close, not left for the next open.
            assert_eq!(temp_files(&dir), Vec::<String>::new());
        }
        let log = b.open(&dir, opts.clone());
        assert!(log.recovery_report().removed_temp_files.is_empty());
        check(&log, n);
    }
}

#[test]
fn rolls_install_reserved_segments_made_ahead() {
    rolls_take_prepared_segments(LogOptions {
        segment_size: 64 << 10,
        ..LogOptions::default()
    });
}

#[test]
fn rolls_install_zero_filled_segments_made_ahead() {
    rolls_take_prepared_segments(LogOptions {
        segment_size: 64 << 10,
        zero_fill: true,
        ..LogOptions::default()
    });
}

#[test]
fn without_syncs_or_preallocation_segments_are_still_made_ahead() {
    for (sync, preallocate) in [(SyncPolicy::Never, true), (SyncPolicy::Always, false)] {
        rolls_take_prepared_segments(LogOptions {
            segment_size: 64 << 10,
            zero_fill: true,
            sync,
            preallocate,
            ..LogOptions::default()
        });
    }
}

/// A preparation whose fsync fails leaves the log going (nothing
/// acknowledged depends on the file): the roll makes the segment itself,
/// every entry reads back, no `.tmp` file is left — and the failure is
/// counted, for an operator to see before the disk fails outright.
#[test]
fn a_failed_preparation_is_counted_and_the_roll_makes_the_segment() {
    let b = backends()
        .into_iter()
        .find(|b| b.fault().is_some())
        .expect("the fault back end");
    let ctl = b.fault().unwrap().clone();
    let dir = b.dir();
    // No commit syncs: after the open, the only syncs are the helper's
    // preparation (its file, then its directory) and the rolls'.
    let opts = LogOptions {
        segment_size: 64 << 10,
        sync: SyncPolicy::Never,
        ..LogOptions::default()
    };
    let log = b.open(&dir, opts.clone());
    let mut n = 0u64;
    let mut append = |log: &Log, until: u64| {
        while n < until {
            n += 1;
            log.append(StreamId(1), &[entry(n)]).unwrap();
        }
    };
    append(&log, 20);
    assert_eq!(log.stats().segments_created, 0);
    // The next sync is the preparation's, asked for once the segment is
    // half full (~33 entries of 1 000 bytes in 64 KiB).
    ctl.fail_sync(1);
    append(&log, 40);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while log.stats().segment_preparations_failed == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no failed preparation counted; the failed sync was {:?}",
            ctl.last_failed_sync()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let failed = ctl.last_failed_sync().expect("a sync failed");
    assert!(
        failed.to_string_lossy().ends_with(".ahead.tmp"),
        "the armed failure hit {failed:?}"
    );
    // Past the roll: the log made the segment itself and goes on.
    append(&log, 200);
    let stats = log.stats();
    assert!(stats.segments_created >= 2, "{stats:?}");
    assert_eq!(stats.segment_preparations_failed, 1, "{stats:?}");
    check(&log, n);
    log.close().unwrap();
    let log = b.open(&dir, opts);
    check(&log, n);
}
