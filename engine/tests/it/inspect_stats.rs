//! `inspect::stats` (missivectl's `stats`): what it counts as the log's
//! disk.

#![allow(clippy::unwrap_used, reason = "tests")]

use missive_engine::inspect::stats;
use missive_engine::log::{Log, LogOptions, StreamId};

/// A segment made ahead of the roll (`NNN.log.ahead.tmp`) is log disk but
/// not a segment; a stray file is neither.
#[test]
fn the_log_bytes_include_a_segment_made_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    let log = Log::open(
        &log_dir,
        LogOptions {
            segment_size: 1 << 20,
            ..LogOptions::default()
        },
    )
    .unwrap();
    log.append(StreamId(1), &[b"one entry".as_slice()]).unwrap();
    log.close().unwrap();
    let segments: Vec<_> = std::fs::read_dir(&log_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    let before = stats(dir.path()).unwrap();
    assert_eq!(before.log_segments, 1);
    assert_eq!(
        before.log_bytes,
        std::fs::metadata(&segments[0]).unwrap().len()
    );

    // The next segment's name with the ahead suffix, and a stray file.
    let name = segments[0].file_name().unwrap().to_str().unwrap();
    let seq: u64 = name.trim_end_matches(".log").parse().unwrap();
    let next = format!("{:0width$}.log", seq + 1, width = name.len() - 4);
    std::fs::write(log_dir.join(format!("{next}.ahead.tmp")), vec![0u8; 12_345]).unwrap();
    std::fs::write(log_dir.join("notes.txt"), b"not the log's").unwrap();
    let after = stats(dir.path()).unwrap();
    assert_eq!(after.log_segments, 1);
    assert_eq!(after.log_bytes, before.log_bytes + 12_345);
}
