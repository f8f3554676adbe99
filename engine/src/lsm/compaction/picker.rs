//! Choosing what to compact: a pure function over the files of a version.
//!
//! # Why leveled
//!
//! The message workload is append-mostly (new messages get new keys) and
//! read-mostly at the head of each conversation ("latest 50"). Space and read
//! amplification matter more than write amplification:
//!
//! - Reads: leveled keeps at most one table per level (plus level 0) that can
//!   hold a conversation, so "latest 50" probes ≤ L0 count + 6 bloom filters
//!   and usually reads one or two blocks. Size-tiered keeps several
//!   overlapping runs per tier and probes each.
//! - Space: leveled bounds space amplification near 1.1 (the last level holds
//!   ~90% of the data); size-tiered needs up to 2× free space for a full
//!   merge and keeps shadowed versions and expired messages longer.
//! - Writes: leveled rewrites each byte ~10× per level it descends; with
//!   append-mostly keys most compactions of a conversation's new messages
//!   overlap few files below, which keeps the real cost well under the bound.
//!
//! `missivectl compaction-sim` (tools issue) will run this picker on
//! synthetic workloads to measure both; until then the choice rests on the
//! arguments above.
//!
//! # Rules
//!
//! 1. Score each level: level 0 (flushed memtables, overlapping) as
//!    `tables / l0_trigger`, each level n ≥ 1 as `bytes(n) / target(n)`,
//!    with `target(1) = level1_bytes` and each next level `multiplier`
//!    times larger. The highest score ≥ 1 wins.
//! 2. Level 0 compacts all its tables with the overlapping tables of
//!    level 1 into level 1. A level n ≥ 1 compacts the one table whose
//!    overlap with level n+1 is smallest relative to its own size (the
//!    cheapest to push down), plus those overlapping tables.
//!
//!    Scoring level 0 with the others matters under a sustained ingest:
//!    when level 0 always came first, level 1 was never pushed down while
//!    flushes kept coming (58 tables, 29× its target, after 30M messages),
//!    and every level-0 compaction rewrote all of it — 39 s of compaction
//!    CPU per GB ingested. Ranked by score, level 1 is pushed down as soon
//!    as it is further over its target than level 0 is over its trigger;
//!    the writers' backpressure (`lsm/background.rs`) keeps level 0 from
//!    growing meanwhile.
//! 3. The last level is never compacted down.
//!
//! A compaction is *bottommost* when no level below its output holds keys
//! in its range: only then may tombstones and expired values vanish
//! entirely rather than be carried down as tombstones.
//!
//! # Recompression: LZ4-HC only where it pays
//!
//! Compactions write the fast LZ4 everywhere; a compression that costs
//! several times the CPU (LZ4-HC: ~9 % smaller tables of chat text, 2–3×
//! the CPU of the whole compaction) pays only for data that stays where it
//! is written. When the picker has had nothing to do for a while (5 s),
//! [`pick_recompress`]
//! chooses one table of the deepest level that the pass has not rewritten
//! yet; the worker rewrites it alone, in place, with LZ4-HC (dropping what
//! a bottommost compaction drops), and aborts as soon as the picker has
//! real work again. A node ingesting without pause therefore never pays
//! for HC, and one with idle time converges to the smaller tables. Inline
//! HC (on every compaction into the bottom level) cost a 5M-message ingest
//! with settle ~2× its time, most of it spent compressing level-1 tables
//! of a young tree that the next level-0 compaction rewrote anyway.

use crate::lsm::table::TableId;
use crate::lsm::version::{FileMeta, LEVELS};

/// Knobs of the leveled strategy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PickerConfig {
    /// Level-0 table count that triggers an L0 → L1 compaction.
    pub l0_trigger: usize,
    /// Target size of level 1, in bytes.
    pub level1_bytes: u64,
    /// Each level's target is this many times the one above.
    pub multiplier: u64,
}

impl Default for PickerConfig {
    fn default() -> Self {
        PickerConfig {
            l0_trigger: 4,
            level1_bytes: 256 << 20,
            multiplier: 10,
        }
    }
}

/// What to compact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// The level the inputs come from.
    pub level: usize,
    /// Tables of `level`.
    pub inputs: Vec<FileMeta>,
    /// Tables of `level + 1` overlapping the inputs.
    pub overlapping: Vec<FileMeta>,
    /// The level the output goes to.
    pub output_level: usize,
    /// No level below `output_level` overlaps the range.
    pub bottommost: bool,
}

impl Choice {
    /// Every input table id.
    pub fn all_ids(&self) -> Vec<TableId> {
        self.inputs
            .iter()
            .chain(&self.overlapping)
            .map(|f| f.id)
            .collect()
    }
}

/// The target size of level `n` (n ≥ 1).
pub fn target_bytes(cfg: &PickerConfig, n: usize) -> u64 {
    let mut t = cfg.level1_bytes;
    for _ in 1..n {
        t = t.saturating_mul(cfg.multiplier);
    }
    t
}

fn key_range(files: &[FileMeta]) -> Option<(&[u8], &[u8])> {
    let lo = files.iter().map(|f| f.smallest.as_slice()).min()?;
    let hi = files.iter().map(|f| f.largest.as_slice()).max()?;
    Some((lo, hi))
}

fn overlapping(level: &[FileMeta], lo: &[u8], hi: &[u8]) -> Vec<FileMeta> {
    level
        .iter()
        .filter(|f| f.overlaps(lo, hi))
        .cloned()
        .collect()
}

/// The table the recompression pass should rewrite next (see the module
/// docs), or `None`: the first table, in key order, of the deepest
/// non-empty level below level 0 that the pass has not rewritten. Call it
/// only when [`pick`] has nothing to do.
pub fn pick_recompress(levels: &[Vec<FileMeta>]) -> Option<Choice> {
    let deepest = (1..levels.len()).rev().find(|&n| !levels[n].is_empty())?;
    let file = levels[deepest]
        .iter()
        .filter(|f| !f.recompressed)
        .min_by(|a, b| a.smallest.cmp(&b.smallest))?;
    Some(Choice {
        level: deepest,
        inputs: vec![file.clone()],
        overlapping: Vec::new(),
        output_level: deepest,
        // Nothing lies below the deepest level.
        bottommost: true,
    })
}

/// All of level 0 with the overlapping tables of level 1, into level 1;
/// `None` if level 0 is empty. What [`pick`] chooses when level 0 scores
/// highest, and what the compaction thread runs first, whatever the scores,
/// once level 0 is close to stopping writers (`lsm/background.rs`):
/// a long push-down of a deeper level would otherwise keep level 0 growing
/// until writers stop (a 334 ms stall in a 5M ingest).
pub fn pick_level0(levels: &[Vec<FileMeta>]) -> Option<Choice> {
    let l0 = levels.first()?;
    push_down(levels, 0, l0.clone())
}

/// `inputs` of level `n` with the overlapping tables of level n+1, into
/// level n+1; `None` if `inputs` is empty. Bottommost when no level below
/// n+1 overlaps the whole range.
fn push_down(levels: &[Vec<FileMeta>], n: usize, inputs: Vec<FileMeta>) -> Option<Choice> {
    let empty = Vec::new();
    let level = |m: usize| levels.get(m).unwrap_or(&empty);
    let last = LEVELS.min(levels.len().max(2)) - 1;
    let (lo, hi) = key_range(&inputs)?;
    let overlapping = overlapping(level(n + 1), lo, hi);
    let (lo2, hi2) = key_range(&overlapping).map_or((lo, hi), |(a, b)| (lo.min(a), hi.max(b)));
    let bottommost = (n + 2..=last).all(|m| level(m).iter().all(|f| !f.overlaps(lo2, hi2)));
    Some(Choice {
        level: n,
        overlapping,
        output_level: n + 1,
        bottommost,
        inputs,
    })
}

/// Picks the next compaction for `levels` (index = level), or `None` when
/// every level is within its target.
pub fn pick(levels: &[Vec<FileMeta>], cfg: &PickerConfig) -> Option<Choice> {
    let empty = Vec::new();
    let level = |n: usize| levels.get(n).unwrap_or(&empty);
    let last = LEVELS.min(levels.len().max(2)) - 1;
    let mut best: Option<(f64, usize)> = None;
    let l0_score = level(0).len() as f64 / cfg.l0_trigger.max(1) as f64;
    if l0_score >= 1.0 {
        best = Some((l0_score, 0));
    }
    for n in 1..last {
        let bytes: u64 = level(n).iter().map(|f| f.size).sum();
        let score = bytes as f64 / target_bytes(cfg, n).max(1) as f64;
        if score >= 1.0 && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, n));
        }
    }
    let (_, n) = best?;
    if n == 0 {
        return pick_level0(levels);
    }
    let below = level(n + 1);
    let file = level(n).iter().min_by(|a, b| {
        let cost = |f: &FileMeta| {
            let o: u64 = below
                .iter()
                .filter(|g| g.overlaps(&f.smallest, &f.largest))
                .map(|g| g.size)
                .sum();
            o as f64 / f.size.max(1) as f64
        };
        cost(a)
            .partial_cmp(&cost(b))
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.smallest.cmp(&b.smallest))
    })?;
    push_down(levels, n, vec![file.clone()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(id: u64, level: u8, lo: &str, hi: &str, size: u64) -> FileMeta {
        FileMeta {
            id: TableId(id),
            level,
            size,
            smallest: lo.as_bytes().to_vec(),
            largest: hi.as_bytes().to_vec(),
            min_seq: id,
            max_seq: id,
            entries: 1,
            recompressed: false,
        }
    }

    fn cfg() -> PickerConfig {
        PickerConfig {
            l0_trigger: 4,
            level1_bytes: 1000,
            multiplier: 10,
        }
    }

    #[test]
    fn recompression_takes_the_deepest_level_first_table_not_yet_rewritten() {
        let mut done = f(5, 2, "a", "c", 100);
        done.recompressed = true;
        let levels = vec![
            vec![f(1, 0, "a", "z", 10)],
            vec![f(2, 1, "a", "z", 100)],
            vec![done, f(6, 2, "m", "p", 100), f(7, 2, "d", "k", 100)],
        ];
        let c = pick_recompress(&levels).unwrap();
        assert_eq!(c.inputs.iter().map(|f| f.id.0).collect::<Vec<_>>(), [7]);
        assert_eq!((c.level, c.output_level), (2, 2));
        assert!(c.overlapping.is_empty() && c.bottommost);

        let mut all_done = levels.clone();
        for f in &mut all_done[2] {
            f.recompressed = true;
        }
        assert_eq!(
            pick_recompress(&all_done),
            None,
            "level 1 is not the deepest"
        );
        assert_eq!(pick_recompress(&[vec![f(1, 0, "a", "z", 10)]]), None);
    }

    #[test]
    fn nothing_to_do_when_within_targets() {
        let levels = vec![vec![f(1, 0, "a", "c", 10)], vec![f(2, 1, "a", "z", 500)]];
        assert_eq!(pick(&levels, &cfg()), None);
    }

    #[test]
    fn level0_trigger_takes_all_l0_and_overlapping_l1() {
        let l0: Vec<_> = (1..=4).map(|i| f(i, 0, "c", "f", 10)).collect();
        let l1 = vec![
            f(10, 1, "a", "b", 10),
            f(11, 1, "d", "e", 10),
            f(12, 1, "g", "h", 10),
        ];
        let levels = [l0, l1];
        let c = pick(&levels, &cfg()).unwrap();
        assert_eq!(pick_level0(&levels), Some(c.clone()));
        assert_eq!(pick_level0(&[vec![], levels[1].clone()]), None);
        assert_eq!((c.level, c.output_level, c.inputs.len()), (0, 1, 4));
        assert_eq!(
            c.overlapping.iter().map(|f| f.id.0).collect::<Vec<_>>(),
            vec![11]
        );
        assert!(c.bottommost);
    }

    #[test]
    fn an_oversized_level1_goes_down_before_level0_does() {
        // cfg(): trigger 4, level 1 target 1000 bytes.
        let l0: Vec<_> = (1..=6).map(|i| f(i, 0, "a", "z", 10)).collect(); // 1.5
        let big_l1 = vec![f(10, 1, "a", "m", 1000), f(11, 1, "n", "z", 1000)]; // 2.0
        let c = pick(&[l0, big_l1, vec![]], &cfg()).unwrap();
        assert_eq!((c.level, c.output_level), (1, 2));
        // A deeper level 0 wins again.
        let deeper: Vec<_> = (1..=12).map(|i| f(i, 0, "a", "z", 10)).collect(); // 3.0
        let l1 = vec![f(10, 1, "a", "m", 1000), f(11, 1, "n", "z", 1000)];
        let c = pick(&[deeper, l1, vec![]], &cfg()).unwrap();
        assert_eq!((c.level, c.inputs.len()), (0, 12));
    }

    #[test]
    fn highest_score_level_and_cheapest_file() {
        let l1 = vec![f(1, 1, "a", "c", 600), f(2, 1, "d", "f", 600)]; // 1.2
        let l2 = vec![f(3, 2, "a", "c", 5000), f(4, 2, "d", "f", 10)]; // 0.5
        let l3 = vec![f(5, 3, "a", "z", 10)];
        let c = pick(&[vec![], l1, l2, l3], &cfg()).unwrap();
        assert_eq!(c.level, 1);
        // File 2 overlaps only 10 bytes below; file 1 overlaps 5000.
        assert_eq!(c.inputs[0].id, TableId(2));
        assert_eq!(c.overlapping[0].id, TableId(4));
        assert!(!c.bottommost, "level 3 overlaps the range");
    }

    #[test]
    fn last_level_never_compacts_down() {
        let mut levels = vec![Vec::new(); LEVELS];
        levels[LEVELS - 1] = vec![f(1, (LEVELS - 1) as u8, "a", "z", u64::MAX / 4)];
        assert_eq!(pick(&levels, &cfg()), None);
    }
}
