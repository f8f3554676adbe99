//! How a shard's backup stream becomes stored chunks: [`FrameStream`]
//! reads the server's `MSNP` body as it arrives, [`Chunker`] regroups its
//! pairs into chunks whose boundaries depend on the keys alone.
//!
//! # Why key-defined boundaries
//!
//! The server cuts its stream every ~1 MiB of pairs, so one new message
//! shifts every later boundary and no frame of today's stream equals
//! yesterday's. The chunker ignores the server's framing and puts a
//! boundary where the keys say, so a boundary is where it is because of
//! the keys around it, and a change inside one conversation's or one
//! user's records changes the chunk holding them and leaves the others
//! byte for byte as they were — which is what lets a later backup store
//! only the chunks that changed ([`super::store`]). The rules, each a
//! function of the keys and values alone:
//!
//! - **Before an entity** whose name hashes to one of [`ENTITY_CUT_ONE_IN`]
//!   values. Every slotted key starts with its entity's name — tag, slot
//!   and the conversation, user or upload id, [`ENTITY_PREFIX`] bytes
//!   (`missive_engine::keys`, chat's `records`) — and a day's writes
//!   touch some entities and not others: a chunk of a few whole entities
//!   is dirtied only when one of them is. (Cutting before every entity
//!   would dedup best and make a file of every conversation record.)
//! - **After a key** whose BLAKE3 hash is one of [`CUT_ONE_IN`] values:
//!   a conversation of thousands of messages is several chunks, and only
//!   the one holding its newest messages changes (keys sort newest first).
//! - **Around a value** of [`BIG_VALUE`] or more (a media chunk, a
//!   thumbnail): a chunk of its own, so an uploaded file is stored once
//!   however its neighbours change.
//! - **At [`CHUNK_CAP`] bytes**, so a restore frame stays about the size
//!   the server takes (the one rule that depends on position; it applies
//!   only to runs of big entities without a cut for 1 MiB).

use anyhow::{bail, ensure};

use missive_raft::storage::snapshot::{unframe_chunk, Chunk, FILE_HEADER};

/// One key in this many closes a chunk after it.
pub const CUT_ONE_IN: u64 = 128;

/// One entity in this many starts a chunk.
pub const ENTITY_CUT_ONE_IN: u64 = 4;

/// The bytes of a slotted key that name its entity: tag, slot (2), id (8).
pub const ENTITY_PREFIX: usize = 11;

/// A value at least this long is stored as a chunk of its own.
pub const BIG_VALUE: usize = 64 << 10;

/// A chunk closes once its keys and values reach this many bytes.
pub const CHUNK_CAP: usize = 1 << 20;

/// The largest frame a stream may carry (the server's restore limit, and
/// far above its ~1 MiB chunks): a larger length is damage, refused before
/// anything is allocated for it.
const MAX_FRAME: usize = 16 << 20;

/// Whether BLAKE3 of `bytes` (its first 8 bytes, LE) is 0 mod `one_in`.
fn hits(bytes: &[u8], one_in: u64) -> bool {
    let h = blake3::hash(bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(first) % one_in == 0
}

/// The entity a key belongs to (the whole key if shorter).
fn entity(key: &[u8]) -> &[u8] {
    &key[..key.len().min(ENTITY_PREFIX)]
}

/// Pairs in, chunks at key-defined boundaries out (see the module
/// documentation). Keys must arrive ascending, as a shard's stream has
/// them.
#[derive(Debug, Default)]
pub struct Chunker {
    /// The open chunk.
    pairs: Chunk,
    /// Its keys' and values' bytes.
    bytes: usize,
}

impl Chunker {
    /// Adds one pair; the chunks it closed (none, one, or two when a big
    /// value both closes the open chunk and makes its own).
    pub fn push(&mut self, key: Vec<u8>, value: Vec<u8>) -> Vec<Chunk> {
        let mut closed = Vec::new();
        let big = value.len() >= BIG_VALUE;
        let starts_entity = self.pairs.last().is_some_and(|(last, _)| {
            entity(last) != entity(&key) && hits(entity(&key), ENTITY_CUT_ONE_IN)
        });
        if (big || starts_entity) && !self.pairs.is_empty() {
            closed.push(self.take());
        }
        let cut = big || hits(&key, CUT_ONE_IN);
        self.bytes += key.len() + value.len();
        self.pairs.push((key, value));
        if cut || self.bytes >= CHUNK_CAP {
            closed.push(self.take());
        }
        closed
    }

    /// The last, open chunk, if it holds anything.
    pub fn finish(mut self) -> Option<Chunk> {
        (!self.pairs.is_empty()).then(|| self.take())
    }

    /// Closes the open chunk.
    fn take(&mut self) -> Chunk {
        self.bytes = 0;
        std::mem::take(&mut self.pairs)
    }
}

/// The server's `MSNP` stream (`[magic+version][len u32][crc32 u32]
/// [postcard pairs]…`, docs/protocol.md "Backup and restore") parsed as
/// its bytes arrive, every frame's checksum checked.
#[derive(Debug, Default)]
pub struct FrameStream {
    /// Bytes received and not yet parsed.
    buf: Vec<u8>,
    /// Where the unparsed bytes start in `buf`.
    at: usize,
    /// Whether the 5-byte header was read.
    header: bool,
}

impl FrameStream {
    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.at > 0 && self.at == self.buf.len() {
            self.buf.clear();
            self.at = 0;
        } else if self.at > (1 << 20) {
            self.buf.drain(..self.at);
            self.at = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole chunk received, `None` until one is.
    pub fn next_chunk(&mut self) -> anyhow::Result<Option<Chunk>> {
        let rest = &self.buf[self.at..];
        if !self.header {
            if rest.len() < FILE_HEADER.len() {
                return Ok(None);
            }
            ensure!(
                &rest[..FILE_HEADER.len()] == FILE_HEADER,
                "the shard's stream does not start with the MSNP version 1 header"
            );
            self.header = true;
            self.at += FILE_HEADER.len();
            return self.next_chunk();
        }
        let Some(head) = rest.first_chunk::<8>() else {
            return Ok(None);
        };
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        ensure!(
            len <= MAX_FRAME,
            "the shard's stream claims a chunk of {len} bytes (at most {MAX_FRAME})"
        );
        if rest.len() < 8 + len {
            return Ok(None);
        }
        let chunk = unframe_chunk(&rest[..8 + len])?;
        self.at += 8 + len;
        Ok(Some(chunk))
    }

    /// Checks the stream ended between frames, after its header.
    pub fn finish(&self) -> anyhow::Result<()> {
        if !self.header {
            bail!("the shard's stream ended before its header");
        }
        let left = self.buf.len() - self.at;
        ensure!(
            left == 0,
            "the shard's stream ended {left} bytes into a chunk"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use missive_raft::storage::snapshot::frame_chunk;

    /// `n` message-like pairs: 16-byte keys in order, ~150-byte values.
    fn pairs(n: u64) -> Chunk {
        (0..n)
            .map(|i| {
                let mut k = b"\x10conv".to_vec();
                k.extend_from_slice(&(i * 10).to_be_bytes());
                (k, vec![(i % 251) as u8; 150])
            })
            .collect()
    }

    fn chunk_all(pairs: &Chunk) -> Vec<Chunk> {
        let mut c = Chunker::default();
        let mut out = Vec::new();
        for (k, v) in pairs {
            out.extend(c.push(k.clone(), v.clone()));
        }
        out.extend(c.finish());
        out
    }

    #[test]
    fn chunks_hold_every_pair_in_order() {
        let p = pairs(20_000);
        let chunks = chunk_all(&p);
        assert!(chunks.len() > 10, "{} chunks", chunks.len());
        assert_eq!(chunks.concat(), p);
        assert!(chunks.iter().all(|c| !c.is_empty()));
    }

    #[test]
    fn one_change_changes_the_one_chunk_holding_it() {
        let before = pairs(20_000);
        let a = chunk_all(&before);
        // A pair inserted between two, and one value changed elsewhere.
        let mut after = before.clone();
        let mut k = after[5_000].0.clone();
        k.push(0);
        after.insert(5_001, (k, b"new".to_vec()));
        after[15_000].1 = b"edited".to_vec();
        let b = chunk_all(&after);
        // The insert changes its chunk (two, if its key is a boundary),
        // the edit one more; every other chunk is as it was.
        let kept = b.iter().filter(|c| a.contains(c)).count();
        assert!(a.len() > 20, "{} chunks", a.len());
        assert!(
            b.len() - kept <= 3 && a.len() - kept <= 2,
            "{kept} of {} chunks kept (before: {})",
            b.len(),
            a.len()
        );
    }

    #[test]
    fn a_change_in_one_entity_changes_only_the_chunk_of_its_group() {
        // 3 000 entities (conversations) of 1..=6 records each.
        let mut before = Chunk::new();
        for e in 0..3_000u64 {
            for r in 0..(e % 6 + 1) {
                let mut k = vec![0x10, (e >> 8) as u8, e as u8];
                k.extend_from_slice(&e.to_be_bytes());
                k.extend_from_slice(&r.to_be_bytes());
                before.push((k, vec![e as u8; 120]));
            }
        }
        let a = chunk_all(&before);
        // Chunks hold whole groups of entities: ~4 on average.
        assert!(a.len() > 500, "{} chunks", a.len());
        // One entity gains a record; every chunk but its group's stays.
        let mut after = before.clone();
        let at = after
            .iter()
            .position(|(k, _)| k[3..11] == 1_234u64.to_be_bytes())
            .unwrap();
        let mut k = after[at].0.clone();
        k.push(0);
        after.insert(at + 1, (k, b"new".to_vec()));
        let b = chunk_all(&after);
        let kept = b.iter().filter(|c| a.contains(c)).count();
        assert!(
            b.len() - kept <= 2 && a.len() - kept <= 1,
            "{kept} of {} chunks kept (before: {})",
            b.len(),
            a.len()
        );
    }

    #[test]
    fn a_big_value_is_a_chunk_of_its_own_and_a_chunk_stops_at_the_cap() {
        let mut c = Chunker::default();
        assert!(c.push(b"\x70a".to_vec(), vec![1; 10]).len() <= 1);
        let closed = c.push(b"\x70b".to_vec(), vec![2; BIG_VALUE]);
        let last = closed.last().unwrap();
        assert_eq!(last, &vec![(b"\x70b".to_vec(), vec![2; BIG_VALUE])]);
        // Values just under the big size: chunks close at the cap.
        let mut c = Chunker::default();
        let mut sizes = Vec::new();
        for i in 0..100u32 {
            for ch in c.push(i.to_be_bytes().to_vec(), vec![0; BIG_VALUE - 1]) {
                sizes.push(ch.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>());
            }
        }
        assert!(
            sizes.iter().all(|s| *s < CHUNK_CAP + BIG_VALUE),
            "{sizes:?}"
        );
    }

    #[test]
    fn a_stream_parses_in_any_pieces_and_a_cut_or_damaged_one_is_refused() {
        let p = pairs(3_000);
        let mut wire = FILE_HEADER.to_vec();
        for c in p.chunks(700) {
            wire.extend(frame_chunk(&c.to_vec()).unwrap());
        }
        for piece in [1, 7, 4096, wire.len()] {
            let mut s = FrameStream::default();
            let mut got = Chunk::new();
            for bytes in wire.chunks(piece) {
                s.push(bytes);
                while let Some(c) = s.next_chunk().unwrap() {
                    got.extend(c);
                }
            }
            s.finish().unwrap();
            assert_eq!(got, p, "pieces of {piece}");
        }
        let mut s = FrameStream::default();
        s.push(&wire[..wire.len() - 3]);
        while s.next_chunk().unwrap().is_some() {}
        assert!(s.finish().unwrap_err().to_string().contains("into a chunk"));
        let mut bad = wire.clone();
        bad[100] ^= 1;
        let mut s = FrameStream::default();
        s.push(&bad);
        assert!(s.next_chunk().is_err());
        let mut s = FrameStream::default();
        s.push(b"MSNX\x01");
        assert!(s.next_chunk().is_err());
    }
}
