//! Model-based property test: random appends, truncates, purges, meta
//! writes, reopens and (on the fault file system) simulated power cuts across
//! several streams, checked after every step against a plain in-memory model.
//! Small segments make rolls and segment deletion happen constantly.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on surprises"
)]

use crate::common;

use std::collections::{BTreeMap, HashMap};

use missive_engine::io::FaultFsControl;
use missive_engine::log::{Compression, Log, LogOptions, StreamId};
use missive_engine::Error;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append {
        stream: u64,
        entries: Vec<Vec<u8>>,
    },
    /// Truncate after `last - back`.
    Truncate {
        stream: u64,
        back: u64,
    },
    /// Purge up to `first - 1 + fwd` (may pass the last entry).
    Purge {
        stream: u64,
        fwd: u64,
    },
    SetMeta {
        stream: u64,
        key: u8,
        value: Vec<u8>,
    },
    Reopen,
    /// A power cut (fault fs) or a drop without close (real files).
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    let stream = 0u64..3;
    prop_oneof![
        10 => (stream.clone(), prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..6))
            .prop_map(|(stream, entries)| Op::Append { stream, entries }),
        2 => (stream.clone(), 0u64..8).prop_map(|(stream, back)| Op::Truncate { stream, back }),
        4 => (stream.clone(), 0u64..40).prop_map(|(stream, fwd)| Op::Purge { stream, fwd }),
        2 => (stream, 0u8..3, prop::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(stream, key, value)| Op::SetMeta { stream, key, value }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

#[derive(Debug, Clone)]
struct ModelStream {
    /// Index of entries[0].
    first: u64,
    entries: Vec<Vec<u8>>,
    purged: u64,
    meta: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Default for ModelStream {
    fn default() -> Self {
        ModelStream {
            first: 1,
            entries: Vec::new(),
            purged: 0,
            meta: BTreeMap::new(),
        }
    }
}

impl ModelStream {
    fn last(&self) -> u64 {
        self.first - 1 + self.entries.len() as u64
    }
}

fn check(log: &Log, model: &HashMap<u64, ModelStream>) {
    for id in 0u64..4 {
        let fresh = ModelStream::default();
        let m = model.get(&id).unwrap_or(&fresh);
        let b = log.bounds(StreamId(id));
        assert_eq!(
            (b.first, b.last),
            (m.first, m.last()),
            "bounds of stream {id}"
        );
        let got = log.read(StreamId(id), 0..u64::MAX).unwrap();
        assert_eq!(got.len(), m.entries.len(), "entry count of stream {id}");
        for (i, e) in got.iter().enumerate() {
            assert_eq!(e.index, m.first + i as u64);
            assert_eq!(e.data, m.entries[i], "stream {id} entry {}", e.index);
        }
        for key in 0u8..3 {
            assert_eq!(
                log.meta(StreamId(id), &[key]),
                m.meta.get(&vec![key]).cloned(),
                "meta {key} of stream {id}"
            );
        }
    }
}

fn run(ops: Vec<Op>, backend: &common::Backend, compress: bool) {
    let dir = backend.dir();
    let opts = LogOptions {
        segment_size: 4096,
        compression: if compress {
            Compression::Lz4 { min_len: 32 }
        } else {
            Compression::None
        },
        ..LogOptions::default()
    };
    let mut log = Some(backend.open(&dir, opts.clone()));
    let mut model: HashMap<u64, ModelStream> = HashMap::new();
    for op in ops {
        let l = log.as_ref().unwrap();
        match op {
            Op::Append { stream, entries } => {
                let a = l.append(StreamId(stream), &entries).unwrap();
                a.durable.wait().unwrap();
                let m = model.entry(stream).or_default();
                assert_eq!(a.first, m.last() + 1);
                m.entries.extend(entries);
            }
            Op::Truncate { stream, back } => {
                let m = model.entry(stream).or_default();
                let idx = m.last().saturating_sub(back);
                match l.truncate_after(StreamId(stream), idx) {
                    Ok(()) => {
                        assert!(idx >= m.purged);
                        let keep = (idx + 1).saturating_sub(m.first) as usize;
                        m.entries.truncate(keep);
                    }
                    Err(Error::InvalidArgument(_)) => assert!(idx < m.purged),
                    Err(e) => panic!("truncate: {e}"),
                }
            }
            Op::Purge { stream, fwd } => {
                let m = model.entry(stream).or_default();
                let idx = m.first - 1 + fwd;
                l.purge_upto(StreamId(stream), idx).unwrap();
                if idx > m.purged {
                    let drop_n = ((idx + 1 - m.first) as usize).min(m.entries.len());
                    m.entries.drain(..drop_n);
                    m.first = idx + 1;
                    m.purged = idx;
                }
            }
            Op::SetMeta { stream, key, value } => {
                l.set_meta(StreamId(stream), &[key], &value).unwrap();
                model
                    .entry(stream)
                    .or_default()
                    .meta
                    .insert(vec![key], value);
            }
            Op::Reopen => {
                log.take().unwrap().close().unwrap();
                log = Some(backend.open(&dir, opts.clone()));
            }
            Op::Crash => {
                // Everything in the model was acknowledged durable, so a
                // crash must not lose any of it.
                drop(log.take());
                if let Some(ctl) = backend.fault() {
                    ctl.crash();
                }
                log = Some(backend.open(&dir, opts.clone()));
            }
        }
        check(log.as_ref().unwrap(), &model);
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn log_matches_model(ops in prop::collection::vec(op(), 1..120), compress in any::<bool>()) {
        for backend in common::backends() {
            run(ops.clone(), &backend, compress);
        }
    }
}

/// A crash on the fault file system loses unsynced directory entries too:
/// a log that was never opened before must come back empty, not broken.
#[test]
fn crash_right_after_first_open() {
    let ctl = FaultFsControl::new();
    let dir = std::path::PathBuf::from("/fault/log");
    let opts = LogOptions {
        fs: Some(ctl.fs()),
        ..LogOptions::default()
    };
    drop(Log::open(&dir, opts).unwrap());
    ctl.crash();
    let log = Log::open(
        &dir,
        LogOptions {
            fs: Some(ctl.fs()),
            ..LogOptions::default()
        },
    )
    .unwrap();
    assert!(log.bounds(StreamId(1)).is_empty());
}
