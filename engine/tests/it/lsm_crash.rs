//! Crash test of the standalone `Db`: a child process writes batches from 4
//! threads and reports each acknowledgment; the parent SIGKILLs it at random
//! moments — with flushes and compactions running, memtables and tables are
//! tiny — reopens, and checks that every acknowledged batch is fully present
//! and no batch is partly visible.
//!
//! Batch `i` of thread `t` puts the 4 message keys of (t, i) and deletes the
//! 4 keys of batch `i - WINDOW`. So after recovery, with `A` the last
//! acknowledged batch of a thread, the batches present must be exactly
//! `A-WINDOW+1 ..= A` (the next batch did not commit) or `A-WINDOW+2 ..= A+1`
//! (it committed but the kill beat its report) — each one whole.
//!
//! `MISSIVE_CRASH_CYCLES` (default 50) sets the kill cycles; the seed of a
//! failing run is printed (`MISSIVE_CRASH_SEED` repeats it).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on surprises"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use missive_engine::keys::{decode_message_key, message_key, ConversationId, Timestamp};
use missive_engine::log::LogOptions;
use missive_engine::lsm::{Db, DbOptions, Direction, LsmOptions, PickerConfig, WriteBatch};

const THREADS: u64 = 4;
const KEYS: u64 = 4;
const WINDOW: u64 = 20;
const ENV_DIR: &str = "MISSIVE_LSM_CRASH_DIR";
const ENV_SEED: &str = "MISSIVE_LSM_CRASH_SEED";

fn options() -> DbOptions {
    DbOptions {
        log: LogOptions {
            segment_size: 256 << 10,
            ..LogOptions::default()
        },
        lsm: LsmOptions {
            memtable_bytes: 16 << 10,
            block_size: 1024,
            target_table_bytes: 32 << 10,
            blob_threshold: Some(150),
            picker: PickerConfig {
                l0_trigger: 2,
                level1_bytes: 64 << 10,
                multiplier: 4,
            },
            ..LsmOptions::default()
        },
    }
}

/// Thread `t`'s conversation; batch `i`, key `j` is timestamp i·KEYS + j.
fn key(t: u64, i: u64, j: u64) -> Vec<u8> {
    message_key(ConversationId(7_000 + t), Timestamp(i * KEYS + j + 1)).to_vec()
}

fn value(t: u64, i: u64, j: u64) -> Vec<u8> {
    let mut v = format!("t{t} b{i} k{j} ").into_bytes();
    // Every other value is above the blob threshold (blob files).
    v.resize(100 + 100 * (j as usize % 2), b'.');
    v
}

#[test]
#[ignore = "the child process of lsm_crash; the parent test runs it"]
fn lsm_crash_child_entry() {
    let Some(dir) = std::env::var_os(ENV_DIR).map(PathBuf::from) else {
        return;
    };
    let seed: u64 = std::env::var(ENV_SEED).unwrap().parse().unwrap();
    let events = Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("events"))
            .unwrap(),
    ));
    let db = Arc::new(Db::open(dir.join("db"), options()).unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let db = Arc::clone(&db);
            let events = Arc::clone(&events);
            std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(seed ^ t);
                let mut next = present_batches(&db, t).last().map_or(1, |i| i + 1);
                while Instant::now() < deadline {
                    let mut b = WriteBatch::new();
                    for j in 0..KEYS {
                        b.put(key(t, next, j), value(t, next, j));
                    }
                    if next > WINDOW {
                        for j in 0..KEYS {
                            b.delete(key(t, next - WINDOW, j));
                        }
                    }
                    db.write(&b).unwrap();
                    let line = format!("A {t} {next}\n");
                    events.lock().unwrap().write_all(line.as_bytes()).unwrap();
                    next += 1;
                    if rng.u8(..50) == 0 {
                        std::thread::yield_now();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Batches of thread `t` present in the store; panics on a partial batch.
fn present_batches(db: &Db, t: u64) -> Vec<u64> {
    let conv = ConversationId(7_000 + t);
    let mut count: BTreeMap<u64, u64> = BTreeMap::new();
    let lo = missive_engine::keys::conversation_prefix(conv);
    let hi = missive_engine::keys::prefix_successor(&lo).unwrap();
    for (k, v) in db
        .scan(&lo, Some(&hi), Direction::Forward, usize::MAX)
        .unwrap()
    {
        let (_, ts) = decode_message_key(&k).unwrap();
        let (i, j) = ((ts.0 - 1) / KEYS, (ts.0 - 1) % KEYS);
        assert_eq!(
            v,
            value(t, i, j),
            "thread {t} batch {i} key {j} has foreign bytes"
        );
        *count.entry(i).or_default() += 1;
    }
    for (i, n) in &count {
        assert_eq!(
            *n, KEYS,
            "thread {t} batch {i} is partly visible ({n} of {KEYS} keys)"
        );
    }
    count.into_keys().collect()
}

fn acked(path: &Path, acked: &mut BTreeMap<u64, u64>) {
    let text = std::fs::read(path).unwrap_or_default();
    for line in text.split_inclusive(|&b| b == b'\n') {
        if line.last() != Some(&b'\n') {
            break;
        }
        let f: Vec<u64> = std::str::from_utf8(&line[2..line.len() - 1])
            .unwrap()
            .split(' ')
            .map(|x| x.parse().unwrap())
            .collect();
        let e = acked.entry(f[0]).or_insert(0);
        *e = (*e).max(f[1]);
    }
}

fn expected(a: u64, committed_next: bool) -> BTreeSet<u64> {
    let top = a + u64::from(committed_next);
    (top.saturating_sub(WINDOW - 1).max(1)..=top)
        .filter(|&i| i >= 1)
        .collect()
}

#[test]
fn sigkill_db_with_flushes_and_compactions() {
    let cycles: u64 = std::env::var("MISSIVE_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let seed = std::env::var("MISSIVE_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("lsm_crash: {cycles} cycles, seed {seed} (MISSIVE_CRASH_SEED to repeat)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let tmp = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acks: BTreeMap<u64, u64> = BTreeMap::new();
    let (mut flushes, mut compactions) = (0, 0);
    for cycle in 1..=cycles {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "lsm_crash::lsm_crash_child_entry",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ENV_DIR, tmp.path())
            .env(ENV_SEED, rng.u64(..).to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let wait = if rng.u8(..10) == 0 {
            rng.u64(0..20)
        } else {
            rng.u64(40..300)
        };
        std::thread::sleep(Duration::from_millis(wait));
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).ok();
            panic!("seed {seed} cycle {cycle}: child exited by itself ({status}):\n{err}");
        }
        child.kill().unwrap();
        child.wait().unwrap();
        acked(&tmp.path().join("events"), &mut acks);
        let db = Db::open(tmp.path().join("db"), options())
            .unwrap_or_else(|e| panic!("seed {seed} cycle {cycle}: reopen failed: {e}"));
        for t in 0..THREADS {
            let a = acks.get(&t).copied().unwrap_or(0);
            let present: BTreeSet<u64> = present_batches(&db, t).into_iter().collect();
            assert!(
                present == expected(a, false) || present == expected(a, true),
                "seed {seed} cycle {cycle} thread {t}: acknowledged up to {a}, present {:?}..{:?} ({} batches)",
                present.first(),
                present.last(),
                present.len()
            );
            // What survived is durable now: the next run builds on it.
            if let Some(&top) = present.last() {
                acks.insert(t, top.max(a));
            }
        }
        db.verify().unwrap();
        let s = db.stats();
        flushes += s.files_per_level.iter().sum::<usize>();
        compactions += usize::from(s.files_per_level.iter().skip(1).any(|&n| n > 0));
        drop(db);
    }
    let total: u64 = acks.values().sum();
    assert!(
        total > 100,
        "seed {seed}: only {total} batches acknowledged in all"
    );
    assert!(
        compactions > 0,
        "seed {seed}: no data ever reached level 1: compaction never ran"
    );
    eprintln!("lsm_crash: {cycles} kills, {total} batches acknowledged, tables seen {flushes}");
}
