//! Crash test: a child process appends to several streams from several
//! threads, truncates and purges, and reports every durable completion; the
//! parent SIGKILLs it at random moments, reopens the log and checks that
//!
//! - every entry reported durable is present with the same bytes (unless a
//!   truncate or purge that could remove it was started afterwards),
//! - no stream has a hole (every index from first to last reads back),
//! - no truncated suffix reappears (after a completed truncate, entries past
//!   the cut carry the new epoch),
//! - a completed purge stays purged.
//!
//! The child is this test binary, re-run with the ignored
//! `crash_child_entry` test and environment variables naming its job. It
//! writes one event line per `write(2)` to a file: an intent line before
//! each truncate/purge and a completion line after each durable operation,
//! so the parent knows what may and what must have happened.
//!
//! `MISSIVE_CRASH_CYCLES` (default 50) sets the kill cycles per I/O back end;
//! the seed of a failing run is printed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on surprises"
)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use missive_engine::io::IoBackend;
use missive_engine::log::{Log, LogOptions, StreamId};

const STREAMS: u64 = 8;
const THREADS: u64 = 4;
const ENV_DIR: &str = "MISSIVE_CRASH_CHILD_DIR";
const ENV_CYCLE: &str = "MISSIVE_CRASH_CHILD_CYCLE";
const ENV_IO: &str = "MISSIVE_CRASH_CHILD_IO";
const ENV_SEED: &str = "MISSIVE_CRASH_CHILD_SEED";

fn options(io: IoBackend) -> LogOptions {
    LogOptions {
        io,
        // Small segments: rolls, seals and deletions happen under the kills.
        segment_size: 64 << 10,
        ..LogOptions::default()
    }
}

/// The bytes of entry (stream, index, epoch): self-describing, so the parent
/// can check each one without the child's help.
fn entry_bytes(stream: u64, index: u64, epoch: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(48);
    v.extend_from_slice(&stream.to_le_bytes());
    v.extend_from_slice(&index.to_le_bytes());
    v.extend_from_slice(&epoch.to_le_bytes());
    let h = stream
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(index.wrapping_mul(0xC2B2_AE3D_27D4_EB4F))
        .wrapping_add(epoch);
    let filler = (h % 160) as usize;
    v.extend((0..filler).map(|i| (h >> (i % 56)) as u8 ^ i as u8));
    v
}

fn decode_entry(data: &[u8]) -> Option<(u64, u64, u64)> {
    let f = |r: std::ops::Range<usize>| Some(u64::from_le_bytes(data.get(r)?.try_into().ok()?));
    let (s, i, e) = (f(0..8)?, f(8..16)?, f(16..24)?);
    (entry_bytes(s, i, e) == data).then_some((s, i, e))
}

/// Appends one line to the event file in a single write(2).
fn event(file: &Mutex<std::fs::File>, line: String) {
    let mut f = file.lock().unwrap();
    f.write_all(format!("{line}\n").as_bytes()).unwrap();
}

#[test]
#[ignore = "the child process of log_crash; the parent test runs it"]
fn crash_child_entry() {
    let Some(dir) = std::env::var_os(ENV_DIR).map(PathBuf::from) else {
        return;
    };
    let cycle: u64 = std::env::var(ENV_CYCLE).unwrap().parse().unwrap();
    let seed: u64 = std::env::var(ENV_SEED).unwrap().parse().unwrap();
    let io = match std::env::var(ENV_IO).unwrap().as_str() {
        "io_uring" => IoBackend::IoUring,
        _ => IoBackend::Std,
    };
    let events = Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("events"))
            .unwrap(),
    ));
    let log = Arc::new(Log::open(dir.join("log"), options(io)).unwrap());
    let deadline = Instant::now() + Duration::from_secs(20); // never outlive a dead parent
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let log = Arc::clone(&log);
            let events = Arc::clone(&events);
            std::thread::spawn(move || {
                let mut rng =
                    fastrand::Rng::with_seed(seed ^ (t + 1).wrapping_mul(0x1234_5678_9ABC));
                let mine: Vec<u64> = (0..STREAMS).filter(|s| s % THREADS == t).collect();
                let mut epoch: BTreeMap<u64, u64> =
                    mine.iter().map(|s| (*s, cycle << 20)).collect();
                while Instant::now() < deadline {
                    let s = mine[rng.usize(..mine.len())];
                    let id = StreamId(s);
                    let roll = rng.u32(..100);
                    if roll < 3 {
                        let b = log.bounds(id);
                        let idx = b.last.saturating_sub(rng.u64(0..6)).max(b.first - 1);
                        let e = epoch[&s] + 1;
                        event(&events, format!("IT {s} {idx} {e}"));
                        epoch.insert(s, e);
                        log.truncate_after(id, idx).unwrap();
                        event(&events, format!("T {s} {idx} {e}"));
                    } else if roll < 5 {
                        let b = log.bounds(id);
                        let idx = (b.first - 1 + rng.u64(0..40)).min(b.last);
                        event(&events, format!("IP {s} {idx}"));
                        log.purge_upto(id, idx).unwrap();
                        event(&events, format!("P {s} {idx}"));
                    } else {
                        let n = rng.u64(1..9);
                        let first = log.bounds(id).last + 1;
                        let e = epoch[&s];
                        let batch: Vec<_> =
                            (first..first + n).map(|i| entry_bytes(s, i, e)).collect();
                        let a = log.append(id, &batch).unwrap();
                        assert_eq!(a.first, first, "only this thread appends to stream {s}");
                        a.durable.wait().unwrap();
                        event(&events, format!("D {s} {} {} {e}", a.first, a.last));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// What the parent knows about one stream.
#[derive(Debug, Default)]
struct Expect {
    /// index → epoch of entries reported durable and not since put at risk
    /// by a started truncate or purge.
    durable: BTreeMap<u64, u64>,
    /// Completed truncates: entries after `.0` must have epoch ≥ `.1`.
    cuts: Vec<(u64, u64)>,
    /// Highest completed purge.
    purged: u64,
}

fn apply_events(path: &Path, from: usize, model: &mut BTreeMap<u64, Expect>) -> usize {
    let text = std::fs::read(path).unwrap_or_default();
    let mut consumed = from;
    for line in text[from.min(text.len())..].split_inclusive(|&b| b == b'\n') {
        if line.last() != Some(&b'\n') {
            break; // a torn last line: the kill landed mid-write
        }
        consumed += line.len();
        let line = std::str::from_utf8(line).unwrap().trim_end();
        let f: Vec<&str> = line.split(' ').collect();
        let n = |i: usize| f[i].parse::<u64>().unwrap();
        let m = model.entry(n(1)).or_default();
        match f[0] {
            "D" => {
                for i in n(2)..=n(3) {
                    m.durable.insert(i, n(4));
                }
            }
            "IT" => {
                m.durable.split_off(&(n(2) + 1));
            }
            "T" => m.cuts.push((n(2), n(3))),
            "IP" => {
                m.durable = m.durable.split_off(&(n(2) + 1));
            }
            "P" => m.purged = m.purged.max(n(2)),
            other => panic!("unknown event {other:?}"),
        }
    }
    consumed
}

fn verify(log: &Log, model: &BTreeMap<u64, Expect>, seed: u64, cycle: u64) {
    for s in 0..STREAMS {
        let ctx = format!("seed {seed} cycle {cycle} stream {s}");
        let b = log.bounds(StreamId(s));
        let entries = log.read(StreamId(s), b.first..b.last + 1).unwrap();
        assert_eq!(
            entries.len() as u64,
            b.last + 1 - b.first,
            "{ctx}: hole in {}..={}",
            b.first,
            b.last
        );
        let mut present = BTreeMap::new();
        for e in &entries {
            let (es, ei, ee) = decode_entry(&e.data)
                .unwrap_or_else(|| panic!("{ctx}: entry {} has foreign bytes", e.index));
            assert_eq!((es, ei), (s, e.index), "{ctx}: entry in the wrong place");
            present.insert(e.index, ee);
        }
        let Some(m) = model.get(&s) else { continue };
        assert!(
            b.first > m.purged,
            "{ctx}: purge to {} undone, first is {}",
            m.purged,
            b.first
        );
        for (i, epoch) in &m.durable {
            assert_eq!(
                present.get(i),
                Some(epoch),
                "{ctx}: durable entry {i} (epoch {epoch}) lost or changed"
            );
        }
        for (cut, min_epoch) in &m.cuts {
            for (i, epoch) in present.range(cut + 1..) {
                assert!(
                    epoch >= min_epoch,
                    "{ctx}: entry {i} of epoch {epoch} survived a truncate after {cut}"
                );
            }
        }
    }
}

fn crash_cycles(io: IoBackend, io_name: &str) {
    let cycles: u64 = std::env::var("MISSIVE_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let seed = std::env::var("MISSIVE_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("log_crash {io_name}: {cycles} cycles, seed {seed} (MISSIVE_CRASH_SEED to repeat)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let tmp = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut model = BTreeMap::new();
    let mut consumed = 0;
    let mut durable_reports = 0usize;
    let mut torn_tails = 0usize;
    for cycle in 1..=cycles {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "log_crash::crash_child_entry",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ENV_DIR, tmp.path())
            .env(ENV_CYCLE, cycle.to_string())
            .env(ENV_IO, io_name)
            .env(ENV_SEED, rng.u64(..).to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Mostly mid-run; sometimes during the child's own recovery.
        let wait = if rng.u8(..10) == 0 {
            rng.u64(0..15)
        } else {
            rng.u64(20..150)
        };
        std::thread::sleep(Duration::from_millis(wait));
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).ok();
            panic!("seed {seed} cycle {cycle}: child exited by itself ({status}):\n{err}");
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let before = model
            .values()
            .map(|m: &Expect| m.durable.len())
            .sum::<usize>();
        consumed = apply_events(&tmp.path().join("events"), consumed, &mut model);
        durable_reports += model
            .values()
            .map(|m| m.durable.len())
            .sum::<usize>()
            .saturating_sub(before);
        let log = Log::open(tmp.path().join("log"), options(io))
            .unwrap_or_else(|e| panic!("seed {seed} cycle {cycle}: reopen failed: {e}"));
        torn_tails += usize::from(log.recovery_report().torn_tail.is_some());
        verify(&log, &model, seed, cycle);
        log.close().unwrap();
    }
    assert!(
        durable_reports > 0,
        "seed {seed}: the child never reported a durable append"
    );
    eprintln!(
        "log_crash {io_name}: {cycles} kills survived, {durable_reports} durable reports checked, {torn_tails} torn tails cut"
    );
}

#[test]
fn sigkill_std() {
    crash_cycles(IoBackend::Std, "std");
}

#[test]
fn sigkill_io_uring() {
    if !IoBackend::uring_available() {
        eprintln!("NOTE: io_uring is unavailable here; skipping");
        return;
    }
    crash_cycles(IoBackend::IoUring, "io_uring");
}
