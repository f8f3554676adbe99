//! The short fuzz run of the test suite: for every target, each input of
//! `corpus/<target>/` and `regressions/<target>/`, then seeded random
//! mutations of them (bit flips, byte changes, cuts, insertions, splices,
//! length fields set to extremes) — `MISSIVE_FUZZ_MUTATIONS` per target
//! (default 10 000). Not coverage-guided (that is `fuzz/run`), but cheap,
//! deterministic for a seed (`MISSIVE_FUZZ_SEED`), and it runs every
//! target's checks on every CI run. A failure names the target and the
//! mutated input's bytes, to be saved under `regressions/`.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use missive_fuzz::TARGETS;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for kind in ["corpus", "regressions"] {
        let Ok(dir) = std::fs::read_dir(root.join(kind).join(target)) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            let bytes = std::fs::read(&p).unwrap();
            out.push((p, bytes));
        }
    }
    out
}

fn mutate(rng: &mut fastrand::Rng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut b = base.to_vec();
    for _ in 0..rng.usize(1..=4) {
        let at = rng.usize(0..=b.len());
        match rng.u8(0..7) {
            0 if !b.is_empty() => {
                let i = rng.usize(0..b.len());
                b[i] ^= 1 << rng.u8(0..8);
            }
            1 if !b.is_empty() => {
                let i = rng.usize(0..b.len());
                b[i] = rng.u8(..);
            }
            2 => b.truncate(at),
            3 => {
                let n = rng.usize(1..=16);
                let fill: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
                b.splice(at..at, fill);
            }
            4 if !other.is_empty() => {
                let from = rng.usize(0..other.len());
                let to = rng.usize(from..=other.len());
                b.splice(at..at, other[from..to].iter().copied());
            }
            5 if b.len() >= 4 => {
                // A length or count field at an extreme.
                let i = rng.usize(0..=b.len() - 4);
                let v: u32 = [0, 1, 0x7FFF_FFFF, u32::MAX, 0x0100_0000][rng.usize(0..5)];
                b[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            _ if !b.is_empty() => {
                let i = rng.usize(0..b.len());
                b.remove(i);
            }
            _ => b.push(rng.u8(..)),
        }
    }
    b
}

#[test]
fn every_target_survives_its_corpus_and_mutations_of_it() {
    let mutations: usize = std::env::var("MISSIVE_FUZZ_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let seed: u64 = std::env::var("MISSIVE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x4d49_5353);
    let mut failures = Vec::new();
    for (name, target) in TARGETS {
        let inputs = inputs(name);
        assert!(!inputs.is_empty(), "{name} has no corpus");
        for (path, bytes) in &inputs {
            if catch_unwind(AssertUnwindSafe(|| target(bytes))).is_err() {
                failures.push(format!("{name}: {}", path.display()));
            }
        }
        let mut rng = fastrand::Rng::with_seed(seed ^ name.len() as u64);
        for _ in 0..mutations {
            let base = &inputs[rng.usize(0..inputs.len())].1;
            let other = &inputs[rng.usize(0..inputs.len())].1;
            let input = mutate(&mut rng, base, other);
            if catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
                failures.push(format!("{name}: mutated input {input:02x?}"));
                break;
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
