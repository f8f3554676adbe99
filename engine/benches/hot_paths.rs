//! criterion micro-benchmarks of the engine's hot paths, so regressions
//! show: log append and group commit, memtable insert, block encode /
//! decode / seek, bloom probe, and the merge iterator (a scan across a
//! memtable and several overlapping tables).
//!
//! ```sh
//! cargo bench -p missive-engine --bench hot_paths
//! ```
//!
//! The data is the message workload's shape: 19-byte message keys, values
//! of 100 bytes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    reason = "a benchmark"
)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use missive_engine::hot;
use missive_engine::io::IoBackend;
use missive_engine::keys::{conversation_prefix, message_key, ConversationId, Timestamp};
use missive_engine::log::{Log, LogOptions, StreamId, SyncPolicy};
use missive_engine::lsm::{Lsm, LsmOptions, WriteBatch};

/// `n` messages: conversation ids spread over u64, 8 messages each, keys
/// sorted (as a block holds them) when `sorted`.
fn messages(n: usize, sorted: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut v: Vec<_> = (0..n)
        .map(|i| {
            let conv = ConversationId(((i / 8) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let key = message_key(conv, Timestamp(1_000 + (i % 8) as u64 * 10)).to_vec();
            let value: Vec<u8> = (0..100).map(|_| rng.u8(..)).collect();
            (key, value)
        })
        .collect();
    if sorted {
        v.sort();
    } else {
        rng.shuffle(&mut v);
    }
    v
}

fn log_append(c: &mut Criterion) {
    let mut g = c.benchmark_group("log");
    let entry = vec![7u8; 100];
    for (name, sync, io) in [
        ("append/no-sync/std", SyncPolicy::Never, IoBackend::Std),
        (
            "append/no-sync/io_uring",
            SyncPolicy::Never,
            IoBackend::IoUring,
        ),
        ("append+durable/std", SyncPolicy::Always, IoBackend::Std),
        (
            "append+durable/io_uring",
            SyncPolicy::Always,
            IoBackend::IoUring,
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let Ok(log) = Log::open(
            dir.path(),
            LogOptions {
                sync,
                io,
                ..LogOptions::default()
            },
        ) else {
            eprintln!("{name}: this back end is not available here");
            continue;
        };
        g.throughput(Throughput::Elements(1));
        g.bench_function(name, |b| {
            b.iter(|| {
                log.append(StreamId(1), &[&entry])
                    .unwrap()
                    .durable
                    .wait()
                    .unwrap()
            })
        });
    }
    // Group commit: 4 threads append durably at once; per iteration, one
    // append from each.
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(dir.path(), LogOptions::default()).unwrap());
    g.throughput(Throughput::Elements(4));
    g.bench_function("group-commit/4-threads", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for t in 0..4u64 {
                    let log = &log;
                    let entry = &entry;
                    s.spawn(move || {
                        log.append(StreamId(t), &[entry])
                            .unwrap()
                            .durable
                            .wait()
                            .unwrap()
                    });
                }
            })
        })
    });
    g.finish();
}

fn memtable(c: &mut Criterion) {
    let mut g = c.benchmark_group("memtable");
    let data = messages(10_000, false);
    g.throughput(Throughput::Elements(data.len() as u64));
    g.bench_function("insert-10k", |b| {
        b.iter(|| hot::memtable_insert(black_box(&data)))
    });
    // The chat pattern the memtable's fingers are for: 200 000 messages in
    // time order over 2 000 conversations, so each sorts just before its
    // conversation's previous message.
    let mut rng = fastrand::Rng::with_seed(11);
    let mut ts = vec![1_000u64; 2_000];
    let chat: Vec<(Vec<u8>, Vec<u8>)> = (0..200_000)
        .map(|_| {
            let c = rng.usize(..ts.len());
            ts[c] += 1 + rng.u64(..5);
            let conv = ConversationId((c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let key = message_key(conv, Timestamp(ts[c])).to_vec();
            (key, (0..100).map(|_| rng.u8(..)).collect())
        })
        .collect();
    g.throughput(Throughput::Elements(chat.len() as u64));
    g.sample_size(20);
    g.bench_function("insert-chat-200k", |b| {
        b.iter(|| hot::memtable_insert(black_box(&chat)))
    });
    // Point reads in the same memtable: each conversation's newest message
    // (next to its finger, as the store's reads of just-written records
    // are), and messages anywhere (mostly far from any finger).
    let mem = hot::Mem::build(&chat);
    let newest: Vec<Vec<u8>> = (0..ts.len())
        .map(|c| {
            let conv = ConversationId((c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            message_key(conv, Timestamp(ts[c])).to_vec()
        })
        .collect();
    let anywhere: Vec<Vec<u8>> = (0..2_000)
        .map(|_| chat[rng.usize(..chat.len())].0.clone())
        .collect();
    g.throughput(Throughput::Elements(newest.len() as u64));
    g.sample_size(50);
    g.bench_function("get-newest-chat-200k", |b| {
        b.iter(|| newest.iter().filter(|k| mem.get(black_box(k))).count())
    });
    g.bench_function("get-anywhere-chat-200k", |b| {
        b.iter(|| anywhere.iter().filter(|k| mem.get(black_box(k))).count())
    });
    g.finish();
}

fn block(c: &mut Criterion) {
    let mut g = c.benchmark_group("block");
    // About one 16 KiB block of messages.
    let data = messages(130, true);
    let payload = hot::block_encode(&data);
    g.throughput(Throughput::Bytes(payload.len() as u64));
    g.bench_function("encode", |b| b.iter(|| hot::block_encode(black_box(&data))));
    g.bench_function("decode", |b| {
        b.iter(|| hot::block_decode(black_box(&payload)).unwrap())
    });
    g.bench_function("lz4-compress", |b| {
        b.iter(|| lz4_flex::compress_prepend_size(black_box(&payload)))
    });
    let compressed = lz4_flex::compress_prepend_size(&payload);
    g.bench_function("lz4-decompress", |b| {
        b.iter(|| lz4::block::decompress(black_box(&compressed), None).unwrap())
    });
    let decoded = hot::block_decode(&payload).unwrap();
    let probes: Vec<_> = data.iter().step_by(7).map(|(k, _)| k.clone()).collect();
    g.throughput(Throughput::Elements(probes.len() as u64));
    g.bench_function("seek", |b| {
        b.iter(|| {
            probes
                .iter()
                .map(|k| decoded.seek(black_box(k)))
                .sum::<usize>()
        })
    });
    g.finish();
}

fn bloom(c: &mut Criterion) {
    let mut g = c.benchmark_group("bloom");
    let prefixes: Vec<Vec<u8>> = (0..100_000u64)
        .map(|i| {
            conversation_prefix(ConversationId(i.wrapping_mul(0x9E37_79B9_7F4A_7C15))).to_vec()
        })
        .collect();
    let filter = hot::bloom_build(&prefixes, 10);
    let absent: Vec<Vec<u8>> = (0..1_000u64)
        .map(|i| {
            conversation_prefix(ConversationId(i.wrapping_mul(0xD1B5_4A32_D192_ED03) | 1)).to_vec()
        })
        .collect();
    g.throughput(Throughput::Elements(1_000));
    g.bench_function("probe-present", |b| {
        b.iter(|| {
            prefixes[..1_000]
                .iter()
                .filter(|p| hot::bloom_probe(&filter, p))
                .count()
        })
    });
    g.bench_function("probe-absent", |b| {
        b.iter(|| {
            absent
                .iter()
                .filter(|p| hot::bloom_probe(&filter, p))
                .count()
        })
    });
    g.finish();
}

fn merge(c: &mut Criterion) {
    let mut g = c.benchmark_group("merge");
    // Four overlapping level-0 tables and a memtable: every conversation
    // has versions in each, so a scan merges five sources.
    let dir = tempfile::tempdir().unwrap();
    let lsm = Lsm::open(
        dir.path(),
        LsmOptions {
            background: false,
            ..LsmOptions::default()
        },
    )
    .unwrap();
    let convs = 200u64;
    for round in 0..5u64 {
        let mut b = WriteBatch::new();
        for conv in 0..convs {
            for m in 0..20u64 {
                let ts = Timestamp(1_000 + (round * 20 + m) * 10);
                b.put(message_key(ConversationId(conv << 40), ts), [7u8; 100]);
            }
        }
        lsm.apply(&b, None).unwrap();
        if round < 4 {
            lsm.flush().unwrap();
        }
    }
    g.throughput(Throughput::Elements(50));
    let mut i = 0u64;
    g.bench_function("latest50-of-5-sources", |b| {
        b.iter_batched(
            || {
                i = (i + 1) % convs;
                ConversationId(i << 40)
            },
            |conv| lsm.latest(conv, 50).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, log_append, memtable, block, bloom, merge);
criterion_main!(benches);
