//! Running the compaction picker on a synthetic workload, without disk:
//! what write and space amplification would this configuration cause?
//!
//! The model: each flush adds a level-0 table of `flush_bytes` covering a
//! key range; a compaction's output is the sum of its inputs, less the
//! fraction `overwrite` that newer versions shadow, split into tables of
//! `target_table_bytes` over the inputs' combined key range. Keys are
//! positions in a 64-bit space, encoded big-endian.

use crate::lsm::compaction::picker::{pick, PickerConfig};
use crate::lsm::table::TableId;
use crate::lsm::version::{FileMeta, LEVELS};

/// Where flushes put their keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPattern {
    /// Every flush spans the whole key space (new messages land in every
    /// conversation: the message workload).
    Spread,
    /// Each flush covers a fresh range above the previous (time-ordered keys).
    Sequential,
}

/// A simulation's inputs.
#[derive(Debug, Clone, Copy)]
pub struct SimConfig {
    /// The picker's knobs.
    pub picker: PickerConfig,
    /// Bytes per flushed table.
    pub flush_bytes: u64,
    /// Compaction output table size.
    pub target_table_bytes: u64,
    /// Number of flushes.
    pub flushes: u64,
    /// Where flushes put their keys.
    pub pattern: KeyPattern,
    /// Fraction of a compaction's input shadowed by newer versions (0 for
    /// append-only messages).
    pub overwrite: f64,
}

/// A simulation's result.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SimReport {
    /// Bytes written by flushes.
    pub flushed_bytes: u64,
    /// Bytes written by compactions.
    pub compacted_bytes: u64,
    /// (flushed + compacted) ÷ flushed.
    pub write_amplification: f64,
    /// Final bytes on all levels ÷ the deepest level's bytes.
    pub space_amplification: f64,
    /// The most level-0 tables seen at once.
    pub max_l0_tables: usize,
    /// Compactions run.
    pub compactions: u64,
    /// Final (files, bytes) per level.
    pub levels: Vec<(usize, u64)>,
}

fn key(pos: u64) -> Vec<u8> {
    pos.to_be_bytes().to_vec()
}

fn pos(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = key.len().min(8);
    b[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(b)
}

/// Runs the simulation.
pub fn simulate(cfg: &SimConfig) -> SimReport {
    let mut levels: Vec<Vec<FileMeta>> = vec![Vec::new(); LEVELS];
    let mut next_id = 1u64;
    let mut r = SimReport::default();
    let table = |level: usize, lo: u64, hi: u64, size: u64, next_id: &mut u64| {
        let id = *next_id;
        *next_id += 1;
        FileMeta {
            id: TableId(id),
            level: level as u8,
            size,
            smallest: key(lo),
            largest: key(hi),
            min_seq: id,
            max_seq: id,
            entries: 0,
            recompressed: false,
        }
    };
    let span = u64::MAX / cfg.flushes.max(1);
    for f in 0..cfg.flushes {
        let (lo, hi) = match cfg.pattern {
            KeyPattern::Spread => (0, u64::MAX),
            KeyPattern::Sequential => (f * span, f * span + span - 1),
        };
        levels[0].insert(0, table(0, lo, hi, cfg.flush_bytes, &mut next_id));
        r.flushed_bytes += cfg.flush_bytes;
        r.max_l0_tables = r.max_l0_tables.max(levels[0].len());
        // Compact until the picker is satisfied (bounded: each step moves data down).
        for _ in 0..10_000 {
            let Some(c) = pick(&levels, &cfg.picker) else {
                break;
            };
            let inputs: Vec<&FileMeta> = c.inputs.iter().chain(&c.overlapping).collect();
            let bytes: u64 = inputs.iter().map(|f| f.size).sum();
            let out = ((bytes as f64) * (1.0 - cfg.overwrite.clamp(0.0, 0.99))) as u64;
            let lo = inputs.iter().map(|f| pos(&f.smallest)).min().unwrap_or(0);
            let hi = inputs.iter().map(|f| pos(&f.largest)).max().unwrap_or(0);
            let ids: Vec<TableId> = inputs.iter().map(|f| f.id).collect();
            for l in levels.iter_mut() {
                l.retain(|f| !ids.contains(&f.id));
            }
            let n = out.div_ceil(cfg.target_table_bytes.max(1)).max(1);
            let width = (hi - lo) / n;
            for i in 0..n {
                let a = lo + i * width;
                let b = if i + 1 == n {
                    hi
                } else {
                    a + width.saturating_sub(1)
                };
                levels[c.output_level].push(table(c.output_level, a, b, out / n, &mut next_id));
            }
            levels[c.output_level].sort_by(|a, b| a.smallest.cmp(&b.smallest));
            r.compacted_bytes += out;
            r.compactions += 1;
        }
    }
    let bytes: Vec<u64> = levels
        .iter()
        .map(|l| l.iter().map(|f| f.size).sum())
        .collect();
    let total: u64 = bytes.iter().sum();
    let deepest = bytes.iter().rev().find(|&&b| b > 0).copied().unwrap_or(0);
    r.write_amplification = if r.flushed_bytes == 0 {
        0.0
    } else {
        (r.flushed_bytes + r.compacted_bytes) as f64 / r.flushed_bytes as f64
    };
    r.space_amplification = if deepest == 0 {
        0.0
    } else {
        total as f64 / deepest as f64
    };
    r.levels = levels
        .iter()
        .zip(&bytes)
        .map(|(l, b)| (l.len(), *b))
        .collect();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pattern: KeyPattern) -> SimConfig {
        SimConfig {
            picker: PickerConfig {
                l0_trigger: 4,
                level1_bytes: 256 << 20,
                multiplier: 10,
            },
            flush_bytes: 64 << 20,
            target_table_bytes: 32 << 20,
            flushes: 400,
            pattern,
            overwrite: 0.0,
        }
    }

    #[test]
    fn leveled_bounds_amplification() {
        for p in [KeyPattern::Spread, KeyPattern::Sequential] {
            let r = simulate(&cfg(p));
            assert_eq!(r.flushed_bytes, 400 * (64 << 20));
            assert!(r.max_l0_tables <= 4, "{p:?}: {r:?}");
            assert!(
                r.write_amplification >= 1.0 && r.write_amplification < 40.0,
                "{p:?}: {r:?}"
            );
            assert!(r.space_amplification < 1.5, "{p:?}: {r:?}");
            let live: u64 = r.levels.iter().map(|(_, b)| b).sum();
            assert_eq!(
                live, r.flushed_bytes,
                "append-only data must all survive: {r:?}"
            );
        }
        // Time-ordered keys rarely overlap below, so they cost less to push down.
        let seq = simulate(&cfg(KeyPattern::Sequential));
        let spread = simulate(&cfg(KeyPattern::Spread));
        assert!(
            seq.write_amplification < spread.write_amplification,
            "{seq:?} vs {spread:?}"
        );
    }
}
