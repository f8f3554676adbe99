//! `sustained`: ingest long enough that compaction, not the memtable,
//! sets the pace — what a node that ingests all day can keep up — and what
//! the engine's background work (flushes and compactions) cost in CPU.
//!
//! The short `ingest` phase of `missive-bench engine` ends before the
//! tree has grown its lower levels, and `settle` then compacts everything
//! at once; neither is the steady state. Here the messages (generated
//! before the clock starts) are written in batches of 64 without pauses
//! until `--sustained-messages` are in or `--sustained-secs` have passed.
//! Reported: messages per second over the whole phase and over its last
//! third (the steady state, once compaction has caught up or fallen
//! behind), each batch's write latency (p50 … max), the writes that
//! stalled longer than [`STALL`], and the CPU seconds of the engine's
//! background threads per GB of raw key + value bytes ingested, read from
//! `/proc/self/task/*/stat` for threads named by the engine (Missive:
//! `missive-lsm-*`; RocksDB: `rocksdb:*`, its flush and compaction pools),
//! so both engines are measured the same way — plus the CPU of threads
//! that exited during the phase, which `/proc/self/stat` still counts for
//! the process: both engines' subcompactions run on threads that live for
//! one compaction (Missive's `LsmOptions::subcompactions`, RocksDB's
//! `max_subcompactions`), and a count of live threads alone missed them.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::engines::Engine;
use crate::report::{Recorder, Row};
use crate::workload::Workload;

/// A write slower than this is a stall (the bound).
pub const STALL: Duration = Duration::from_millis(50);

/// How long to ingest.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Messages to generate and write at most.
    pub messages: usize,
    /// Wall-clock bound of the phase.
    pub secs: u64,
}

/// Runs the phase on `db` and returns its row.
pub fn run(
    db: &dyn Engine,
    name: &str,
    limits: Limits,
    conversations: usize,
    seed: u64,
    batch: usize,
) -> Result<Row> {
    eprintln!(
        "[{name}] sustained: generating up to {} messages",
        limits.messages
    );
    let batches = Workload::new(limits.messages, conversations, seed ^ 0x5757).into_batches(batch);
    let threads = db.background_threads();
    let cpu0 = Cpu::now(threads)?;
    let deadline = Duration::from_secs(limits.secs);
    let mut rec = Recorder::new();
    let (mut stalls, mut stalled_for) = (0u64, Duration::ZERO);
    let (mut messages, mut bytes) = (0usize, 0u64);
    // (elapsed, messages) every second, for the last-third rate.
    let mut marks: Vec<(Duration, usize)> = vec![(Duration::ZERO, 0)];
    let start = Instant::now();
    for b in &batches {
        let t = Instant::now();
        db.write(b)?;
        let took = t.elapsed();
        rec.record(took);
        if took > STALL {
            stalls += 1;
            stalled_for += took;
        }
        messages += b.len();
        bytes += b
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum::<u64>();
        let el = start.elapsed();
        if el >= marks.last().map_or(Duration::ZERO, |m| m.0) + Duration::from_secs(1) {
            marks.push((el, messages));
            if marks.len() % 30 == 0 {
                eprintln!(
                    "[{name}] sustained: {messages} messages in {:.0} s",
                    el.as_secs_f64()
                );
            }
        }
        if el >= deadline {
            break;
        }
    }
    let el = start.elapsed();
    let cpu = Cpu::now(threads)?.background_since(&cpu0);
    marks.push((el, messages));
    let third = el.mul_f64(2.0 / 3.0);
    let from = marks
        .iter()
        .rev()
        .find(|m| m.0 <= third)
        .copied()
        .unwrap_or((Duration::ZERO, 0));
    let tail_rate = (messages - from.1) as f64 / (el - from.0).as_secs_f64().max(1e-9);
    let gb = bytes as f64 / 1e9;
    let mut row = rec.row(
        name,
        "sustained",
        "msgs/s",
        messages as f64 / el.as_secs_f64(),
    );
    row.note = format!(
        "{messages} msgs, {:.1} GB in {:.0} s; last third {tail_rate:.0} msgs/s; \
         {stalls} writes > {} ms ({:.1} s in all); background CPU {cpu:.1} s = {:.1} s/GB; {}",
        gb,
        el.as_secs_f64(),
        STALL.as_millis(),
        stalled_for.as_secs_f64(),
        cpu / gb.max(1e-9),
        db.shape()
    );
    Ok(row)
}

/// Clock ticks per second of `/proc`'s CPU times: 100 on every Linux
/// this runs on (USER_HZ, fixed by the kernel's ABI).
const TICKS: f64 = 100.0;

/// CPU seconds (user + system) of this process at one moment.
struct Cpu {
    /// Its live threads named by the engine.
    named: f64,
    /// All its live threads.
    live: f64,
    /// The whole process, threads that exited included.
    process: f64,
}

impl Cpu {
    fn now(prefixes: &[&str]) -> Result<Cpu> {
        let stat = std::fs::read_to_string("/proc/self/stat").context("read /proc/self/stat")?;
        let process = stat_cpu_ticks(&stat).context("parse /proc/self/stat")? as f64 / TICKS;
        Ok(Cpu {
            named: thread_cpu(prefixes)?,
            live: thread_cpu(&[""])?,
            process,
        })
    }

    /// The background work's CPU seconds since `before`: the named threads'
    /// and those of threads that exited meanwhile (the process's CPU not
    /// found in a live thread: subcompactions' threads).
    fn background_since(&self, before: &Cpu) -> f64 {
        let exited = (self.process - before.process) - (self.live - before.live);
        (self.named - before.named) + exited.max(0.0)
    }
}

/// CPU seconds (user + system) used so far by this process's threads
/// whose name starts with one of `prefixes`.
pub fn thread_cpu(prefixes: &[&str]) -> Result<f64> {
    let mut ticks = 0u64;
    let tasks = Path::new("/proc/self/task");
    for e in std::fs::read_dir(tasks).context("list /proc/self/task")? {
        let dir = e?.path();
        // A thread may exit between the listing and the reads: skip it.
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if !prefixes.iter().any(|p| comm.trim_end().starts_with(p)) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        ticks += stat_cpu_ticks(&stat)
            .with_context(|| format!("parse {}", dir.join("stat").display()))?;
    }
    Ok(ticks as f64 / TICKS)
}

/// utime + stime of a `/proc/*/stat` line. The command name (field 2) is
/// in parentheses and may hold spaces, so fields are counted after the
/// last ')': utime and stime are fields 14 and 15, the 12th and 13th
/// after it.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime_after_a_name_with_spaces() {
        let line = "4242 (rocksdb:low 0) S 1 2 3 4 5 6 7 8 9 10 250 17 0 0 20 0";
        assert_eq!(stat_cpu_ticks(line), Some(267));
        assert_eq!(stat_cpu_ticks("garbage"), None);
    }

    /// Spins on a new thread named `name` until `cpu()`, read between
    /// rounds of work, reaches `enough` seconds (or 30 s of wall time
    /// pass, and the caller's check fails); what it read last.
    fn spin(name: &str, enough: f64, cpu: fn() -> f64) -> f64 {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let t = Instant::now();
                let mut x = 0u64;
                loop {
                    for _ in 0..1_000_000 {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    }
                    std::hint::black_box(x);
                    let seen = cpu();
                    if seen >= enough || t.elapsed() > Duration::from_secs(30) {
                        return seen;
                    }
                }
            })
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn a_busy_thread_is_counted_and_others_are_not() {
        let seen = spin("bench-cpu-probe", 0.05, || {
            thread_cpu(&["bench-cpu-probe"]).unwrap()
        });
        assert!(seen >= 0.05, "{seen}");
        assert_eq!(thread_cpu(&["no-such-thread"]).unwrap(), 0.0);
    }

    #[test]
    fn a_thread_that_exited_still_counts_as_background() {
        let before = Cpu::now(&["no-such-thread"]).unwrap();
        // A thread that uses 100 ms of CPU, then exits.
        spin("bench-exiting", 0.1, || {
            let own = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
            stat_cpu_ticks(&own).unwrap() as f64 / TICKS
        });
        let spent = Cpu::now(&["no-such-thread"])
            .unwrap()
            .background_since(&before);
        // Other tests' threads exiting meanwhile may add to it; nothing
        // takes the spin away.
        assert!(spent >= 0.09, "{spent}");
    }
}
