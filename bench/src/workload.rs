//! The fixed message workload, so runs compare: the same messages, in the
//! same order, for every engine and every run with the same seed.
//!
//! - `messages` messages over `conversations` conversations; each message's
//!   conversation drawn from Zipf(s = 1.1) (a precomputed CDF and a binary
//!   search — exact and deterministic); conversation ids spread over the
//!   64-bit space (a bijective mix of the rank, not 0..N).
//! - Per-conversation timestamps strictly increasing.
//! - Keys: the engine's message key. Values 90–110 bytes: an 8-byte header,
//!   32 incompressible bytes (ids, ciphertext-like), the rest chat-like text
//!   drawn from a small vocabulary (LZ4 ratio of the values around 0.7).

use missive_engine::keys::{message_key, ConversationId, Timestamp, MESSAGE_KEY_LEN};

/// Zipf exponent of conversation popularity.
pub const ZIPF_S: f64 = 1.1;

/// A sampler of conversation ranks 0..n with P(rank k) ∝ 1/(k+1)^s.
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for k in 0..n {
            sum += 1.0 / ((k + 1) as f64).powf(s);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Zipf { cdf }
    }

    pub fn sample(&self, rng: &mut fastrand::Rng) -> usize {
        let u = rng.f64();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

/// A conversation's id from its popularity rank: spread over u64.
pub fn conversation_id(rank: usize) -> ConversationId {
    // splitmix64's finalizer: a bijection, so ids never collide.
    let mut z = (rank as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ConversationId(z ^ (z >> 31))
}

pub const WORDS: &[&str] = &[
    "hey", "hi", "ok", "sure", "lol", "thanks", "see", "you", "tomorrow", "tonight", "at", "the",
    "office", "coffee", "lunch", "meeting", "call", "me", "when", "free", "sounds", "good",
    "great", "haha", "yes", "no", "maybe", "later", "on", "my", "way", "running", "late", "sorry",
    "did", "get", "it", "send", "photo", "love", "this", "what", "time", "where", "are", "we",
    "going", "weekend", "plans", "movie", "dinner", "home", "work", "done", "nice", "cool",
];

/// One message: key and value.
pub type Message = ([u8; MESSAGE_KEY_LEN], Vec<u8>);

/// The message workload.
pub struct Workload {
    pub messages: usize,
    zipf: Zipf,
    rng: fastrand::Rng,
    /// Messages written so far per conversation rank.
    pub counts: Vec<u64>,
    emitted: usize,
}

/// Timestamps: a fixed start, 10 µs apart within a conversation, so
/// message `i` of a conversation has ts `TS0 + 10·i`.
pub const TS0: u64 = 1_700_000_000_000_000;

impl Workload {
    pub fn new(messages: usize, conversations: usize, seed: u64) -> Self {
        Workload {
            messages,
            zipf: Zipf::new(conversations, ZIPF_S),
            rng: fastrand::Rng::with_seed(seed),
            counts: vec![0; conversations],
            emitted: 0,
        }
    }

    /// The key of message `i` of conversation `rank`.
    pub fn key(rank: usize, i: u64) -> [u8; MESSAGE_KEY_LEN] {
        message_key(conversation_id(rank), Timestamp(TS0 + 10 * i))
    }

    /// Appends the next `n` messages (or fewer at the end) to `out`.
    pub fn next_batch(&mut self, n: usize, out: &mut Vec<Message>) {
        out.clear();
        while out.len() < n && self.emitted < self.messages {
            let rank = self.zipf.sample(&mut self.rng);
            let i = self.counts[rank];
            self.counts[rank] += 1;
            out.push((Self::key(rank, i), self.value(rank)));
            self.emitted += 1;
        }
    }

    /// Every batch of the workload, generated at once (the counts are
    /// updated as if they had been written).
    pub fn all_batches(&mut self, n: usize) -> Vec<Vec<Message>> {
        let mut out = Vec::with_capacity(self.messages.div_ceil(n));
        loop {
            let mut b = Vec::with_capacity(n);
            self.next_batch(n, &mut b);
            if b.is_empty() {
                return out;
            }
            out.push(b);
        }
    }

    /// [`Workload::all_batches`], consuming the workload.
    pub fn into_batches(mut self, n: usize) -> Vec<Vec<Message>> {
        self.all_batches(n)
    }

    fn value(&mut self, rank: usize) -> Vec<u8> {
        let target = 90 + self.rng.usize(..=20);
        let mut v = Vec::with_capacity(target);
        // Header: kind, flags, sender (the rank's low bits), a sequence tag.
        v.extend_from_slice(&[1, 0]);
        v.extend_from_slice(&(rank as u16).to_le_bytes());
        v.extend_from_slice(&self.rng.u32(..).to_le_bytes());
        // 32 incompressible bytes.
        for _ in 0..4 {
            v.extend_from_slice(&self.rng.u64(..).to_le_bytes());
        }
        while v.len() < target {
            let w = WORDS[self.rng.usize(..WORDS.len())];
            v.extend_from_slice(w.as_bytes());
            v.push(b' ');
        }
        v.truncate(target);
        v
    }

    /// A conversation rank drawn from the same Zipf (for queries).
    pub fn sample_rank(&self, rng: &mut fastrand::Rng) -> usize {
        self.zipf.sample(rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_sizes_and_compressibility() {
        let mut a = Workload::new(5_000, 1_000, 7);
        let mut b = Workload::new(5_000, 1_000, 7);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        a.next_batch(5_000, &mut x);
        b.next_batch(5_000, &mut y);
        assert_eq!(x, y);
        assert!(x.iter().all(|(_, v)| (90..=110).contains(&v.len())));
        let raw: Vec<u8> = x.iter().flat_map(|(_, v)| v.clone()).collect();
        let ratio = lz4_flex::compress_prepend_size(&raw).len() as f64 / raw.len() as f64;
        assert!((0.5..0.9).contains(&ratio), "lz4 ratio {ratio}");
        // Zipf: the most popular conversation gets far more than the median.
        assert!(a.counts[0] > 20 * a.counts[500].max(1));
    }
}
