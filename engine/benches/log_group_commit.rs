//! Group-commit benchmark for the node-wide log.
//!
//! Durable appends of 100-byte entries from 1, 8 and 64 concurrent writers
//! spread over 16 streams, each writer waiting for its completion before the
//! next append (the worst case for a log: nothing to batch but concurrency).
//! Reported per I/O back end: entries/s, fdatasyncs/s, entries per sync, and
//! append→durable latency p50/p99 (hdrhistogram).
//!
//! The anchor, measured in the same run on the same directory: the raw rate
//! of `pwrite(100 B) + fdatasync` from one thread on a preallocated file —
//! the physical limit for a single writer that waits for every write.
//!
//! ```sh
//! cargo bench -p missive-engine --bench log_group_commit
//! MISSIVE_BENCH_SECS=5 MISSIVE_BENCH_DIR=/mnt/nvme cargo bench -p missive-engine --bench log_group_commit
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark binary"
)]

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use missive_engine::io::IoBackend;
use missive_engine::log::{Log, LogOptions, StreamId};

const ENTRY: usize = 100;
const STREAMS: u64 = 16;

struct Row {
    what: String,
    entries_per_s: f64,
    syncs_per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

fn secs() -> Duration {
    let s = std::env::var("MISSIVE_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(s)
}

fn base_dir() -> PathBuf {
    std::env::var_os("MISSIVE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
}

/// One thread: pwrite 100 bytes at the next offset, fdatasync, repeat.
fn raw_fdatasync(dir: &Path, run: Duration) -> Row {
    let path = dir.join("raw-fdatasync");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    // Preallocate and sync once, like the log's segments, so each
    // fdatasync persists data, not allocation.
    file.set_len(0).unwrap();
    file.write_all_at(&vec![0u8; 64 << 20], 0).unwrap();
    file.sync_all().unwrap();
    let buf = [0x5Au8; ENTRY];
    let mut hist = Histogram::<u64>::new(3).unwrap();
    let start = Instant::now();
    let mut off = 0u64;
    let mut n = 0u64;
    while start.elapsed() < run {
        let t = Instant::now();
        file.write_all_at(&buf, off).unwrap();
        file.sync_data().unwrap();
        hist.record(t.elapsed().as_nanos() as u64).unwrap();
        off = (off + ENTRY as u64) % (64 << 20);
        n += 1;
    }
    let el = start.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path).ok();
    Row {
        what: "raw pwrite+fdatasync, 1 thread (anchor)".into(),
        entries_per_s: n as f64 / el,
        syncs_per_s: n as f64 / el,
        p50_us: hist.value_at_quantile(0.5) as f64 / 1e3,
        p99_us: hist.value_at_quantile(0.99) as f64 / 1e3,
    }
}

fn log_run(dir: &Path, io: IoBackend, writers: u64, run: Duration) -> Row {
    let path = dir.join(format!("log-{io:?}-{writers}"));
    let log = Arc::new(
        Log::open(
            &path,
            LogOptions {
                io,
                ..LogOptions::default()
            },
        )
        .unwrap(),
    );
    let backend = log.backend();
    let stop = Arc::new(AtomicBool::new(false));
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3).unwrap()));
    let before = log.stats();
    let start = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let log = Arc::clone(&log);
            let stop = Arc::clone(&stop);
            let hist = Arc::clone(&hist);
            std::thread::spawn(move || {
                let mut local = Histogram::<u64>::new(3).unwrap();
                let entry = [w as u8; ENTRY];
                let stream = StreamId(w % STREAMS);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let a = log.append(stream, &[entry]).unwrap();
                    a.durable.wait().unwrap();
                    local.record(t.elapsed().as_nanos() as u64).unwrap();
                    n += 1;
                }
                hist.lock().unwrap().add(&local).unwrap();
                n
            })
        })
        .collect();
    std::thread::sleep(run);
    stop.store(true, Ordering::Relaxed);
    let entries: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let el = start.elapsed().as_secs_f64();
    let after = log.stats();
    let hist = hist.lock().unwrap();
    drop(log);
    std::fs::remove_dir_all(&path).ok();
    Row {
        what: format!("log {backend}, {writers} writers"),
        entries_per_s: entries as f64 / el,
        syncs_per_s: (after.syncs - before.syncs) as f64 / el,
        p50_us: hist.value_at_quantile(0.5) as f64 / 1e3,
        p99_us: hist.value_at_quantile(0.99) as f64 / 1e3,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // and should only check that the benchmark runs.
    let quick = !std::env::args().any(|a| a == "--bench");
    let run = if quick {
        Duration::from_millis(200)
    } else {
        secs()
    };
    let tmp = tempfile::tempdir_in(base_dir()).unwrap();
    let mut backends = vec![IoBackend::Std];
    if IoBackend::uring_available() {
        backends.push(IoBackend::IoUring);
    } else {
        eprintln!("NOTE: io_uring unavailable on this kernel; std back end only");
    }
    println!(
        "log group commit: {ENTRY}-byte entries, {STREAMS} streams, {:.1} s per row, dir {}",
        run.as_secs_f64(),
        tmp.path().display()
    );
    let mut rows = vec![raw_fdatasync(tmp.path(), run)];
    for &writers in &[1u64, 8, 64] {
        for &io in &backends {
            rows.push(log_run(tmp.path(), io, writers, run));
        }
    }
    let anchor = rows[0].entries_per_s;
    println!();
    println!("| workload | entries/s | fdatasyncs/s | entries/sync | p50 µs | p99 µs | × raw fdatasync |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.1} | {:.0} | {:.0} | {:.2} |",
            r.what,
            r.entries_per_s,
            r.syncs_per_s,
            r.entries_per_s / r.syncs_per_s.max(1e-9),
            r.p50_us,
            r.p99_us,
            r.entries_per_s / anchor
        );
    }
}
