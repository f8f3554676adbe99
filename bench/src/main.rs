//! `missive-bench`: Missive's workloads, side by side with the systems it
//! replaces.
//!
//! # Layout
//!
//! - `main` — the command line and the phases of `missive-bench engine`.
//! - `workload` — the fixed, seeded message workload.
//! - `engines` — the engines under test behind one trait (Missive's `Db`;
//!   RocksDB with `--features rocksdb`).
//! - `cluster` — `missive-bench cluster`: replicated writes on a loopback
//!   cluster, anchored by one node.
//! - `e2e` — `missive-bench e2e`: WebSocket clients against a real
//!   `missived` (its own layout list).
//! - `history` — `missive-bench history`: what edits and reactions cost a
//!   history page, against a plain conversation of the same run.
//! - `media` — `missive-bench media`: uploads, downloads and Range
//!   requests through a real `missived`, against raw sequential I/O.
//! - `search` — `missive-bench search`: the search index's ingest cost,
//!   bytes and query latency, against PostgreSQL full-text search
//!   (`--features postgres`).
//! - `sustained` — `engine --workloads sustained`: ingest until compaction
//!   sets the pace; throughput, stalls and background CPU per GB.
//! - `report` — latency histograms, the human table and JSON lines.
//!
//! `missive-bench engine` runs, in order: `ingest` (batches of 64, log on,
//! no fsync per batch; then flush + full compaction, reported separately as
//! `settle`), `space` (bytes per message on disk after it), `latest50`,
//! `pageback`, `cold` (page cache dropped where permitted, 1 MiB block
//! cache), and `ingest-sync` with 1 and 4 writers (every batch durable
//! before the next); `ingest+settle` is the ingest's rate with the settle's
//! time counted; `idle-work` is what the engine leaves for idle time after
//! that (Missive's LZ4-HC recompression of the deepest level), run to the
//! end before `space` is measured. `sustained` (only when named in `--workloads`) ingests on
//! a fresh store until compaction sets the pace. For Missive the read
//! rows' note adds the block-cache misses per query around the median, p90
//! and p99 of latency: a read's tail is mostly how many blocks it decoded.

mod cluster;
mod e2e;
mod engines;
mod history;
mod media;
mod plot;
mod report;
mod search;
mod sustained;
mod workload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use missive_engine::keys::Timestamp;
use missive_engine::lsm::BottomCompression;

use engines::{Config, Engine, Kind};
use report::{Recorder, Row};
use workload::{conversation_id, Workload, TS0};

/// Missive's benchmarks.
#[derive(Debug, Parser)]
#[command(name = "missive-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The storage-engine workload (see the module docs).
    Engine(EngineArgs),
    /// Replicated durable writes on a loopback cluster vs one node.
    Cluster(cluster::ClusterArgs),
    /// Chat clients over WebSocket against a real missived.
    E2e(e2e::E2eArgs),
    /// History pages of a conversation whose messages were edited and
    /// reacted to, against a plain one, over HTTP to a real missived.
    History(history::HistoryArgs),
    /// The search index: ingest with and without it, its bytes per
    /// message, and query latency against PostgreSQL full-text search.
    Search(search::SearchArgs),
    /// Media uploads and downloads through a real missived, against the
    /// disk's raw sequential write and read.
    Media(media::MediaArgs),
    /// Turn JSON result lines (`engine --json`) into an SVG chart.
    Plot(PlotArgs),
    /// The space floor: bytes per message when only the values, in key
    /// order, are cut into blocks of the same size and LZ4-compressed.
    SpaceFloor {
        /// Messages to generate.
        #[arg(long, default_value_t = 1_000_000)]
        messages: usize,
        /// Conversations they go to (Zipf 1.1).
        #[arg(long, default_value_t = 100_000)]
        conversations: usize,
        /// Workload seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
}

#[derive(Debug, clap::Args)]
struct PlotArgs {
    /// Files of JSON result lines (other lines are skipped).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// The SVG to write.
    #[arg(long, short, default_value = "benchmarks.svg")]
    out: PathBuf,
    /// The chart's title.
    #[arg(long, default_value = "missive-bench engine")]
    title: String,
}

#[derive(Debug, clap::Args)]
struct EngineArgs {
    /// Engine to run.
    #[arg(long, value_enum, default_value_t = Kind::Missive)]
    engine: Kind,
    /// Messages to ingest.
    #[arg(long, default_value_t = 5_000_000)]
    messages: usize,
    /// Conversations they go to (Zipf 1.1).
    #[arg(long, default_value_t = 100_000)]
    conversations: usize,
    /// Messages per durable batch run of `ingest-sync` (per writer count).
    #[arg(long, default_value_t = 500_000)]
    sync_messages: usize,
    /// Queries per read workload (after the warm-up).
    #[arg(long, default_value_t = 200_000)]
    queries: usize,
    /// Warm-up queries before `latest50`.
    #[arg(long, default_value_t = 20_000)]
    warmup: usize,
    /// Queries of each kind in `cold`.
    #[arg(long, default_value_t = 20_000)]
    cold_queries: usize,
    /// Workload seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Block cache for the warm workloads, MiB.
    #[arg(long, default_value_t = 256)]
    cache_mib: u64,
    /// Where to put the data (a fresh temporary directory inside it).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Comma-separated subset of: ingest,space,latest50,pageback,cold,
    /// ingest-sync, and sustained (long; never in the default set).
    #[arg(
        long,
        default_value = "ingest,space,latest50,pageback,cold,ingest-sync"
    )]
    workloads: String,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
    /// Missive's log I/O back end: std (the engine's default), io-uring,
    /// or auto (io_uring where the kernel allows it).
    #[arg(long, value_enum, default_value_t = LogIo::Std)]
    log_io: LogIo,
    /// Missive: write log segments as zeros before use (`LogOptions::
    /// zero_fill`, off by default; a new log's first segment at creation).
    #[arg(long)]
    log_zero_fill: bool,
    /// Keep the data directory afterwards (to look inside with missivectl).
    #[arg(long)]
    keep: bool,
    /// Missive's LZ4 high-compression level for bottom-level tables
    /// (1–12; 0: the fast compressor everywhere).
    #[arg(long, default_value_t = 9, value_parser = clap::value_parser!(i32).range(0..=12))]
    bottom_hc_level: i32,
    /// Missive: recompress bottom-level tables with zstd at this level
    /// (1–19) with a dictionary per table, instead of `--bottom-hc-level`'s
    /// LZ4-HC; 0: LZ4-HC.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..=19))]
    bottom_zstd_level: i32,
    /// Give RocksDB the same bottommost compression as Missive: LZ4HC at
    /// `--bottom-hc-level`, or with `--bottom-zstd-level` zstd at that
    /// level with a 16 KiB dictionary (the configuration is LZ4 on
    /// every level).
    #[arg(long, alias = "rocksdb-bottom-hc")]
    rocksdb_bottom_alike: bool,
    /// RocksDB's data block size, KiB (RocksDB's default is 4; Missive
    /// uses 16, the default here so the tables are alike).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    rocksdb_block_kib: u32,
    /// Missive: key ranges a large compaction is cut into, each merged on
    /// its own thread (`LsmOptions::subcompactions`; default: the cores,
    /// at most 4; 1 = one thread per compaction).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=64))]
    subcompactions: Option<u64>,
    /// RocksDB's `max_subcompactions` (its default, 1, unless set).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    rocksdb_subcompactions: u32,
    /// Missive: MiB/s at which each table is written while durable writes
    /// are being acknowledged (`LsmOptions::paced_write_rate`; 0: never
    /// paced, the engine before 2026-12-07).
    #[arg(long, default_value_t = 48)]
    paced_write_mib: u64,
    /// Read workloads: also count each query's page faults and involuntary
    /// context switches (two `getrusage` calls per query, outside the timed
    /// span but inside the q/s wall time: a diagnostic of what the slow
    /// queries wait for, never for the comparison rows).
    #[arg(long)]
    trace_tails: bool,
    /// Missive: levels written uncompressed above the bottom
    /// (`LsmOptions::uncompressed_levels`; default 2: level 0 and 1; 0:
    /// compress every level, the engine before 2026-12-06).
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=7))]
    uncompressed_levels: Option<u64>,
    /// RocksDB: this many levels from the top without compression
    /// (`compression_per_level`; its tuning guide's advice for level 0 and
    /// 1); default 0, LZ4 everywhere.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=7))]
    rocksdb_uncompressed_levels: u64,
    /// `sustained`: messages to ingest at most (generated first: about
    /// 170 bytes of memory each).
    #[arg(long, default_value_t = 30_000_000)]
    sustained_messages: usize,
    /// `sustained`: seconds to ingest at most.
    #[arg(long, default_value_t = 1200)]
    sustained_secs: u64,
}

const BATCH: usize = 64;

/// `--log-io`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogIo {
    Auto,
    Std,
    IoUring,
}

impl From<LogIo> for missive_engine::io::IoBackend {
    fn from(x: LogIo) -> Self {
        match x {
            LogIo::Auto => Self::Auto,
            LogIo::Std => Self::Std,
            LogIo::IoUring => Self::IoUring,
        }
    }
}

/// The allocator `missived` runs with, so the engine is measured as it is
/// deployed (both engines of a side-by-side run share it).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Engine(args) => engine(&args),
        Command::Cluster(args) => cluster::run(&args),
        Command::E2e(args) => e2e::run(&args),
        Command::History(args) => history::run(&args),
        Command::Search(args) => search::run(&args),
        Command::Media(args) => media::run(&args),
        Command::Plot(args) => plot::plot(&args.inputs, &args.out, &args.title),
        Command::SpaceFloor {
            messages,
            conversations,
            seed,
        } => {
            let mut all = Workload::new(messages, conversations, seed)
                .into_batches(BATCH)
                .concat();
            all.sort();
            // Fast LZ4 (what every level but the bottom writes) and LZ4 HC
            // at level 4 (the engine's bottom level).
            let hc = lz4::block::CompressionMode::HIGHCOMPRESSION(4);
            let (mut fast, mut high, mut buf) = (0usize, 0usize, Vec::new());
            for (i, (_, v)) in all.iter().enumerate() {
                buf.extend_from_slice(v);
                if buf.len() >= engines::BLOCK_SIZE || i + 1 == all.len() {
                    fast += lz4_flex::compress_prepend_size(&buf).len();
                    high += lz4::block::compress(&buf, Some(hc), true)?.len();
                    buf.clear();
                }
            }
            let per = |n: usize| n as f64 / all.len().max(1) as f64;
            println!(
                "values only, {} KiB LZ4 blocks: {:.1} bytes/msg (fast), {:.1} (HC level 4)",
                engines::BLOCK_SIZE >> 10,
                per(fast),
                per(high)
            );
            Ok(())
        }
    }
}

fn engine(a: &EngineArgs) -> Result<()> {
    let base = a.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base)?;
    let tmp = tempfile::tempdir_in(&base)?;
    let want = |w: &str| a.workloads.split(',').any(|x| x.trim() == w);
    let name = match (a.engine, a.log_io) {
        (Kind::Missive, LogIo::Auto) => "missive-auto",
        (Kind::Missive, LogIo::IoUring) => "missive-uring",
        (kind, _) => kind.name(),
    };
    let mut rows: Vec<Row> = Vec::new();
    let emit = |row: &Row, rows: &mut Vec<Row>| {
        if a.json {
            println!("{}", row.json());
        }
        rows.push(row.clone());
    };
    let cfg = |dir: &str, sync: bool, cache_mib: u64| Config {
        dir: tmp.path().join(dir),
        sync,
        block_cache_bytes: cache_mib << 20,
        log_io: a.log_io.into(),
        log_zero_fill: a.log_zero_fill,
        bottom: match (a.bottom_zstd_level, a.bottom_hc_level) {
            (0, 0) => None,
            (0, level) => Some(BottomCompression::lz4hc(level)),
            (level, _) => Some(BottomCompression::zstd(level)),
        },
        rocksdb_bottom_alike: a.rocksdb_bottom_alike,
        rocksdb_block_bytes: a.rocksdb_block_kib as usize * 1024,
        subcompactions: a.subcompactions.map(|n| n as usize),
        paced_write_rate: (a.paced_write_mib > 0).then_some(a.paced_write_mib << 20),
        rocksdb_subcompactions: a.rocksdb_subcompactions,
        uncompressed_levels: a.uncompressed_levels.map(|n| n as usize),
        rocksdb_uncompressed_levels: a.rocksdb_uncompressed_levels as usize,
    };

    // ingest → settle → space → latest50 → pageback, on one store.
    let mut wl = Workload::new(a.messages, a.conversations, a.seed);
    let needs_store = ["ingest", "space", "latest50", "pageback", "cold"]
        .iter()
        .any(|w| want(w));
    if needs_store {
        let db = engines::open(a.engine, &cfg("main", false, a.cache_mib))?;
        // Generate first, so the timed loop measures the engine alone.
        eprintln!("[{name}] generating {} messages", a.messages);
        let batches = wl.all_batches(BATCH);
        eprintln!(
            "[{name}] ingest: {} messages in batches of {BATCH}",
            a.messages
        );
        let mut rec = Recorder::new();
        let bar = progress(batches.len() as u64, "ingest");
        let start = Instant::now();
        for batch in &batches {
            let t = Instant::now();
            db.write(batch)?;
            rec.record(t.elapsed());
            bar.inc(1);
        }
        bar.finish_and_clear();
        let el = start.elapsed();
        if want("ingest") {
            emit(
                &rec.row(
                    name,
                    "ingest",
                    "msgs/s",
                    a.messages as f64 / el.as_secs_f64(),
                ),
                &mut rows,
            );
        }
        eprintln!("[{name}] settle: flush + full compaction");
        let t = Instant::now();
        db.settle()?;
        let settle = t.elapsed();
        drop(batches);
        if want("ingest") {
            let mut r = Recorder::new();
            r.record(settle);
            emit(&r.row(name, "settle", "s", settle.as_secs_f64()), &mut rows);
            // What a load that must end settled costs: the compaction the
            // ingest deferred is counted.
            emit(
                &Row::single(
                    name,
                    "ingest+settle",
                    "msgs/s",
                    a.messages as f64 / (el + settle).as_secs_f64(),
                ),
                &mut rows,
            );
        }
        // What the engine leaves for idle time (Missive's LZ4-HC pass),
        // run to the end before the space and read phases measure.
        let settled_bytes = db.table_bytes()?;
        let t = Instant::now();
        db.finish_idle_work()?;
        let idle = t.elapsed();
        if want("ingest") {
            let mut r = Row::single(name, "idle-work", "s", idle.as_secs_f64());
            r.note = format!(
                "tables {:.1} → {:.1} bytes/msg",
                settled_bytes as f64 / a.messages as f64,
                db.table_bytes()? as f64 / a.messages as f64
            );
            emit(&r, &mut rows);
        }
        if want("space") {
            let bytes = db.table_bytes()?;
            let mut row = Row::single(name, "space", "bytes/msg", bytes as f64 / a.messages as f64);
            row.note = db.shape();
            emit(&row, &mut rows);
        }
        let mut rng = fastrand::Rng::with_seed(a.seed ^ 0xABCD);
        if want("latest50") {
            for _ in 0..a.warmup {
                db.latest(conversation_id(wl.sample_rank(&mut rng)), 50)?;
            }
            emit(
                &reads(
                    &*db,
                    &wl,
                    &mut rng,
                    name,
                    ReadRun {
                        kind: Read::Latest,
                        n: a.queries,
                        name: "latest50",
                        trace_tails: a.trace_tails,
                    },
                )?,
                &mut rows,
            );
        }
        if want("pageback") {
            emit(
                &reads(
                    &*db,
                    &wl,
                    &mut rng,
                    name,
                    ReadRun {
                        kind: Read::PageBack,
                        n: a.queries,
                        name: "pageback",
                        trace_tails: a.trace_tails,
                    },
                )?,
                &mut rows,
            );
        }
        drop(db);
        if want("cold") {
            let dropped = drop_page_cache();
            eprintln!(
                "[{name}] cold: page cache {}, 1 MiB block cache",
                if dropped {
                    "dropped"
                } else {
                    "NOT dropped (not permitted here)"
                }
            );
            let db = engines::open(a.engine, &cfg("main", false, 1))?;
            let note = if dropped {
                "cold"
            } else {
                "cold (page cache not dropped)"
            };
            let mut r = reads(
                &*db,
                &wl,
                &mut rng,
                name,
                ReadRun {
                    kind: Read::Latest,
                    n: a.cold_queries,
                    name: "cold-latest50",
                    trace_tails: a.trace_tails,
                },
            )?;
            r.note = note.into();
            emit(&r, &mut rows);
            let mut r = reads(
                &*db,
                &wl,
                &mut rng,
                name,
                ReadRun {
                    kind: Read::PageBack,
                    n: a.cold_queries,
                    name: "cold-pageback",
                    trace_tails: a.trace_tails,
                },
            )?;
            r.note = note.into();
            emit(&r, &mut rows);
        }
    }

    if want("sustained") {
        let db = engines::open(a.engine, &cfg("sustained", false, a.cache_mib))?;
        let limits = sustained::Limits {
            messages: a.sustained_messages,
            secs: a.sustained_secs,
        };
        emit(
            &sustained::run(&*db, name, limits, a.conversations, a.seed, BATCH)?,
            &mut rows,
        );
    }
    if want("ingest-sync") {
        for writers in [1usize, 4] {
            eprintln!(
                "[{name}] ingest-sync: {writers} writer(s), {} messages",
                a.sync_messages
            );
            let db: Arc<dyn Engine> = Arc::from(engines::open(
                a.engine,
                &cfg(&format!("sync{writers}"), true, a.cache_mib),
            )?);
            // Pre-generate each writer's batches so generation is not timed.
            let gen = Workload::new(a.sync_messages, a.conversations, a.seed ^ writers as u64);
            let mut per: Vec<Vec<Vec<_>>> = vec![Vec::new(); writers];
            for (i, b) in gen.into_batches(BATCH).into_iter().enumerate() {
                per[i % writers].push(b);
            }
            let start = Instant::now();
            let threads: Vec<_> = per
                .into_iter()
                .map(|batches| {
                    let db = Arc::clone(&db);
                    std::thread::spawn(move || -> Result<Recorder> {
                        let mut rec = Recorder::new();
                        for batch in &batches {
                            let t = Instant::now();
                            db.write(batch)?;
                            rec.record(t.elapsed());
                        }
                        Ok(rec)
                    })
                })
                .collect();
            let mut all = Recorder::new();
            for t in threads {
                let rec = t
                    .join()
                    .map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
                all.merge(&rec);
            }
            let el = start.elapsed();
            emit(
                &all.row(
                    name,
                    &format!("ingest-sync-{writers}w"),
                    "msgs/s",
                    a.sync_messages as f64 / el.as_secs_f64(),
                ),
                &mut rows,
            );
        }
    }
    if !a.json {
        report::table(&rows);
    }
    if a.keep {
        eprintln!("[{name}] data kept in {}", tmp.keep().display());
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Read {
    Latest,
    PageBack,
}

/// How to run and label one read workload.
#[derive(Clone, Copy)]
struct ReadRun<'a> {
    kind: Read,
    /// Queries, after any warm-up.
    n: usize,
    /// The row's workload name.
    name: &'a str,
    /// `--trace-tails`.
    trace_tails: bool,
}

fn reads(
    db: &dyn Engine,
    wl: &Workload,
    rng: &mut fastrand::Rng,
    engine: &str,
    run: ReadRun<'_>,
) -> Result<Row> {
    let ReadRun {
        kind,
        n,
        name,
        trace_tails,
    } = run;
    let mut rec = Recorder::new();
    // (latency, block-cache misses) per query, where the engine counts
    // misses: the note then says how many misses the median and the tail
    // queries took (what a read's tail is made of; benchmarks.md).
    let counts_misses = db.cache_misses().is_some();
    let mut per_query: Vec<(Duration, u64)> = Vec::with_capacity(if counts_misses { n } else { 0 });
    // With `--trace-tails`: (latency, [minor faults, major faults,
    // involuntary switches]) per query.
    let mut traced: Vec<(Duration, [u64; 3])> = Vec::with_capacity(if trace_tails { n } else { 0 });
    let mut returned = 0usize;
    let bar = progress(n as u64, name);
    let start = Instant::now();
    for i in 0..n {
        if i % 1024 == 0 {
            bar.set_position(i as u64);
        }
        let rank = wl.sample_rank(rng);
        let conv = conversation_id(rank);
        let misses_before = db.cache_misses();
        let usage_before = trace_tails.then(thread_usage);
        let t = Instant::now();
        returned += match kind {
            Read::Latest => db.latest(conv, 50)?,
            Read::PageBack => {
                let count = wl.counts[rank].max(1);
                let cursor = TS0 + 10 * rng.u64(0..count);
                db.before(conv, Timestamp(cursor), 50)?
            }
        };
        let took = t.elapsed();
        rec.record(took);
        if let (Some(a), Some(b)) = (misses_before, db.cache_misses()) {
            per_query.push((took, b.saturating_sub(a)));
        }
        if let Some(a) = usage_before {
            let b = thread_usage();
            traced.push((took, std::array::from_fn(|k| b[k].saturating_sub(a[k]))));
        }
    }
    let el = start.elapsed();
    bar.finish_and_clear();
    let mut row = rec.row(engine, name, "queries/s", n as f64 / el.as_secs_f64());
    row.note = format!("{:.1} msgs/query", returned as f64 / n.max(1) as f64);
    if let Some(bands) = mean_by_latency(per_query) {
        row.note.push_str(&format!("; cache misses/query {bands}"));
    }
    if trace_tails {
        for (k, what) in ["minor faults", "major faults", "preemptions"]
            .iter()
            .enumerate()
        {
            let counts = traced.iter().map(|(d, c)| (*d, c[k])).collect();
            if let Some(bands) = mean_by_latency(counts) {
                row.note.push_str(&format!("; {what}/query {bands}"));
            }
        }
    }
    Ok(row)
}

/// This thread's minor faults, major faults and involuntary context
/// switches so far (`getrusage(RUSAGE_THREAD)`); zeros if it fails.
fn thread_usage() -> [u64; 3] {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage, RUSAGE_THREAD is Linux's.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        return [0; 3];
    }
    let n = |v: libc::c_long| u64::try_from(v).unwrap_or(0);
    [n(ru.ru_minflt), n(ru.ru_majflt), n(ru.ru_nivcsw)]
}

/// The mean of a per-query count (block-cache misses, page faults) over
/// the queries around the median, p90 and p99 of latency ("1.0 at p50,
/// 2.0 at p90, 1.9 at p99"); `None` without counts (or too few queries for
/// the bands to mean anything).
fn mean_by_latency(mut per_query: Vec<(Duration, u64)>) -> Option<String> {
    let n = per_query.len();
    if n < 1000 {
        return None;
    }
    per_query.sort_unstable();
    let band = |lo: usize, hi: usize| {
        let s = &per_query[n * lo / 1000..n * hi / 1000];
        s.iter().map(|(_, m)| *m).sum::<u64>() as f64 / s.len().max(1) as f64
    };
    Some(format!(
        "{:.1} at p50, {:.1} at p90, {:.1} at p99",
        band(450, 550),
        band(890, 910),
        band(985, 995)
    ))
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{prefix:>14} [{bar:40}] {percent:>3}% {per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(what.to_owned());
    bar
}

/// Drops the OS page cache; false where this process may not.
fn drop_page_cache() -> bool {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", b"3\n")
        .context("drop caches")
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slower queries took more misses here: the bands say so, and too
    /// few queries say nothing.
    #[test]
    fn misses_are_reported_by_latency_band() {
        let per_query: Vec<(Duration, u64)> = (0..10_000u64)
            .map(|i| {
                // The slowest 15 % took two misses, the slowest 1.5 % three.
                let misses = match i {
                    0..=8_499 => 1,
                    8_500..=9_849 => 2,
                    _ => 3,
                };
                (Duration::from_nanos(10_000 + i), misses)
            })
            .rev()
            .collect();
        assert_eq!(
            mean_by_latency(per_query).as_deref(),
            Some("1.0 at p50, 2.0 at p90, 3.0 at p99")
        );
        assert_eq!(mean_by_latency(vec![(Duration::ZERO, 1); 999]), None);
    }
}
