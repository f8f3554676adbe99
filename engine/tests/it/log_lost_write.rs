//! Lost-write tests on the fault-injecting file system. A SIGKILL keeps the
//! page cache, so it cannot catch a missing fsync; here a "crash" throws
//! away every byte and directory change that was not synced, and an armed
//! fsync fails with EIO. Recovery must still hold every entry whose
//! completion fired, and after a failed fsync nothing may be acknowledged.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on surprises"
)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use missive_engine::io::FaultFsControl;
use missive_engine::log::{Log, LogOptions, StreamId, SyncPolicy};
use missive_engine::Error;

fn options(ctl: &FaultFsControl) -> LogOptions {
    LogOptions {
        fs: Some(ctl.fs()),
        segment_size: 8 << 10,
        ..LogOptions::default()
    }
}

fn dir() -> PathBuf {
    PathBuf::from("/fault/log")
}

/// Acknowledged entries: (stream, index) → bytes.
type Acked = Arc<Mutex<BTreeMap<(u64, u64), Vec<u8>>>>;

/// Four threads append until the log stops them; returns how many appends
/// were acknowledged.
fn hammer(
    log: &Arc<Log>,
    acked: &Acked,
    seed: u64,
    cycle: u64,
) -> Vec<std::thread::JoinHandle<usize>> {
    (0..4u64)
        .map(|t| {
            let log = Arc::clone(log);
            let acked = Arc::clone(acked);
            std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(seed ^ t);
                let mut n = 0;
                for _ in 0..100_000 {
                    let s = t * 2 + rng.u64(0..2);
                    let batch: Vec<Vec<u8>> = (0..rng.usize(1..6))
                        .map(|k| format!("c{cycle} t{t} k{k} {}", rng.u64(..)).into_bytes())
                        .collect();
                    let Ok(a) = log.append(StreamId(s), &batch) else {
                        break;
                    };
                    if a.durable.wait().is_err() {
                        break;
                    }
                    let mut acked = acked.lock().unwrap();
                    for (i, b) in batch.into_iter().enumerate() {
                        acked.insert((s, a.first + i as u64), b);
                    }
                    n += 1;
                    if rng.u8(..20) == 0 {
                        // Purges make segments go away under the crashes. A
                        // purge that fails may still have reached the disk
                        // (its record can ride another group's fsync), so the
                        // entries stop being owed as soon as it is attempted.
                        let upto = a.last.saturating_sub(30);
                        acked.retain(|(st, i), _| *st != s || *i > upto);
                        drop(acked);
                        if log.purge_upto(StreamId(s), upto).is_err() {
                            break;
                        }
                    }
                }
                n
            })
        })
        .collect()
}

fn verify(log: &Log, acked: &Acked, ctx: &str) {
    for ((s, i), bytes) in acked.lock().unwrap().iter() {
        let got = log.get(StreamId(*s), *i).unwrap();
        assert_eq!(
            got.as_ref(),
            Some(bytes),
            "{ctx}: acknowledged entry {s}/{i} lost"
        );
    }
    for s in 0..8 {
        let b = log.bounds(StreamId(s));
        let n = log.read(StreamId(s), b.first..b.last + 1).unwrap().len() as u64;
        assert_eq!(n, b.last + 1 - b.first, "{ctx}: stream {s} has a hole");
    }
}

#[test]
fn power_cuts_lose_nothing_acknowledged() {
    let seed = std::env::var("MISSIVE_LOST_WRITE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let ctl = FaultFsControl::new();
    let acked: Acked = Arc::default();
    let mut total = 0;
    for cycle in 0..20 {
        let ctx = format!("seed {seed} cycle {cycle}");
        let log =
            Arc::new(Log::open(dir(), options(&ctl)).unwrap_or_else(|e| panic!("{ctx}: {e}")));
        verify(&log, &acked, &ctx);
        let threads = hammer(&log, &acked, rng.u64(..), cycle);
        std::thread::sleep(Duration::from_millis(rng.u64(5..40)));
        // The power cut: everything not synced is gone, every handle dies.
        ctl.crash();
        for t in threads {
            total += t.join().unwrap();
        }
        drop(log);
    }
    let log = Log::open(dir(), options(&ctl)).unwrap();
    verify(&log, &acked, &format!("seed {seed} final"));
    assert!(
        total > 100,
        "seed {seed}: only {total} appends were acknowledged"
    );
    eprintln!("{total} acknowledged appends survived 20 power cuts");
}

#[test]
fn failed_fsync_poisons_and_acknowledges_nothing_after() {
    let seed = std::env::var("MISSIVE_LOST_WRITE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let ctl = FaultFsControl::new();
    let acked: Acked = Arc::default();
    for cycle in 0..10 {
        let ctx = format!("seed {seed} cycle {cycle}");
        let log =
            Arc::new(Log::open(dir(), options(&ctl)).unwrap_or_else(|e| panic!("{ctx}: {e}")));
        verify(&log, &acked, &ctx);
        let mut poisoned = false;
        let mut failed_preparations = 0;
        for _attempt in 0..4 {
            ctl.fail_sync(rng.u64(1..40));
            let threads = hammer(&log, &acked, rng.u64(..), cycle);
            for t in threads {
                t.join().unwrap();
            }
            match log.append(StreamId(0), &[b"after"]) {
                // The threads stopped because the log refused them.
                Err(err) => {
                    assert!(matches!(err, Error::Poisoned { .. }), "{ctx}: {err}");
                    poisoned = true;
                    break;
                }
                // The failure hit a segment being prepared ahead of the
                // roll, which no acknowledged write depends on: the log
                // drops it, goes on, and still holds everything.
                Ok(_) => {
                    let failed = ctl.last_failed_sync();
                    assert!(
                        failed
                            .as_ref()
                            .is_some_and(|p| p.to_string_lossy().ends_with(".tmp")),
                        "{ctx}: the log took no notice of a failed sync of {failed:?}"
                    );
                    verify(&log, &acked, &ctx);
                    // And counts it, for an operator to see (the helper
                    // thread counts once the preparation gives up).
                    failed_preparations += 1;
                    let deadline = std::time::Instant::now() + Duration::from_secs(5);
                    while log.stats().segment_preparations_failed < failed_preparations {
                        assert!(
                            std::time::Instant::now() < deadline,
                            "{ctx}: a failed preparation was not counted"
                        );
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        }
        assert!(poisoned, "{ctx}: four armed failures never reached the log");
        assert!(matches!(
            log.set_meta(StreamId(0), b"k", b"v"),
            Err(Error::Poisoned { .. })
        ));
        drop(log);
        // The failed fsync may have dropped pages: lose everything unsynced.
        ctl.crash();
    }
    let log = Log::open(dir(), options(&ctl)).unwrap();
    verify(&log, &acked, &format!("seed {seed} final"));
}

/// The control experiment: with no fsync at all, a power cut does lose
/// "completed" appends. Proves the fault file system bites, so the tests
/// above could fail.
#[test]
fn without_fsync_a_power_cut_loses_writes() {
    let ctl = FaultFsControl::new();
    let opts = LogOptions {
        sync: SyncPolicy::Never,
        ..options(&ctl)
    };
    let log = Log::open(dir(), opts).unwrap();
    let a = log.append(StreamId(1), &[b"never synced"]).unwrap();
    a.durable.wait().unwrap();
    ctl.crash();
    drop(log);
    let log = Log::open(dir(), options(&ctl)).unwrap();
    assert_eq!(log.get(StreamId(1), 1).unwrap(), None);
}
