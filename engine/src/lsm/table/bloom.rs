//! Bloom filters over key prefixes.
//!
//! `bits ‖ k u8`, probed with double hashing of xxh3-64: probe i sets bit
//! `(h1 + i·h2) mod m`, h1/h2 the low and high halves of the hash. xxh3 is
//! specified and stable, so filters written by one build read in another.

/// Builds a filter.
#[derive(Debug, Default)]
pub(crate) struct BloomBuilder {
    hashes: Vec<u64>,
}

fn hash(prefix: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(prefix)
}

impl BloomBuilder {
    /// Adds a prefix (callers skip consecutive duplicates).
    pub fn add(&mut self, prefix: &[u8]) {
        self.hashes.push(hash(prefix));
    }

    /// Encodes the filter for `bits_per_key` bits per added prefix.
    pub fn finish(&self, bits_per_key: u32) -> Vec<u8> {
        let n = self.hashes.len().max(1);
        let bits = (n * bits_per_key.max(1) as usize).max(64);
        let bytes = bits.div_ceil(8);
        let m = (bytes * 8) as u64;
        // k = bits_per_key · ln 2, the false-positive optimum.
        let k = ((f64::from(bits_per_key) * 0.69) as u32).clamp(1, 30);
        let mut out = vec![0u8; bytes + 1];
        for &h in &self.hashes {
            let (mut x, delta) = (h & 0xFFFF_FFFF, h >> 32 | 1);
            for _ in 0..k {
                let bit = x % m;
                out[(bit / 8) as usize] |= 1 << (bit % 8);
                x = x.wrapping_add(delta);
            }
        }
        out[bytes] = k as u8;
        out
    }
}

/// Whether `prefix` may have been added to the encoded `filter`. A filter
/// that is too short to be one answers "maybe" (never a false negative).
pub(crate) fn may_contain(filter: &[u8], prefix: &[u8]) -> bool {
    let Some((&k, bits)) = filter.split_last() else {
        return true;
    };
    if bits.is_empty() || k == 0 {
        return true;
    }
    let m = (bits.len() * 8) as u64;
    let h = hash(prefix);
    let (mut x, delta) = (h & 0xFFFF_FFFF, h >> 32 | 1);
    for _ in 0..k {
        let bit = x % m;
        if bits[(bit / 8) as usize] & (1 << (bit % 8)) == 0 {
            return false;
        }
        x = x.wrapping_add(delta);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let mut b = BloomBuilder::default();
        for i in 0u64..10_000 {
            b.add(&i.to_be_bytes());
        }
        let f = b.finish(10);
        assert!((0u64..10_000).all(|i| may_contain(&f, &i.to_be_bytes())));
        let fp = (10_000u64..110_000)
            .filter(|i| may_contain(&f, &i.to_be_bytes()))
            .count();
        assert!(
            fp < 2_000,
            "false positive rate {fp}/100000 is far above ~1%"
        );
    }
}
