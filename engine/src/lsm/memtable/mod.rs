//! The in-memory write buffer: a skiplist of versions ordered by (key
//! ascending, sequence number descending), so the newest version of a key
//! visible at a snapshot is the first entry at or after (key, snapshot).
//!
//! - `skiplist.rs` — the list: one writer, lock-free readers, insert
//!   positions from per-prefix fingers (its essay: publication, fingers).
//! - `arena.rs` — where its nodes live: 1 MiB chunks, returned with the
//!   memtable to the LSM's chunk pool for the next one.
//! - `reserve.rs` — the thread that keeps that pool stocked with chunks
//!   already faulted in, off the write path.
//!
//! Applying a batch takes the list's writer lock once and bump-allocates one
//! node per version; readers never block the writer or each other.
//!
//! A version may hold a *blob reference* instead of its value: the value
//! was written to a blob file before the batch (by whoever wrote the
//! file), the memtable keeps the file open for as long as it lives, every
//! read resolves the reference through it (checking the value's CRC), and
//! a flush writes the reference into the table, never the bytes again.

mod arena;
mod reserve;
mod skiplist;

pub(crate) use arena::ChunkPool;
pub(crate) use reserve::Reserve;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::log::StreamId;
use crate::lsm::blob::{BlobFile, BlobRef};
use crate::lsm::{lock, SeqNo};

use skiplist::SkipList;
pub(crate) use skiplist::{Entry, WriteGuard};

/// One memtable.
#[derive(Debug, Default)]
pub(crate) struct Memtable {
    list: SkipList,
    /// Bytes of nodes written (keys, values, headers, towers), for rotation.
    bytes: AtomicUsize,
    /// Per log stream, the highest log index whose batch is in here.
    positions: Mutex<HashMap<StreamId, u64>>,
    /// The blob files the versions' blob references point into, open.
    blob_files: Mutex<HashMap<u64, Arc<BlobFile>>>,
}

/// Inserts of one batch, under the list's writer lock.
pub(crate) struct MemWriter<'a> {
    mem: &'a Memtable,
    w: WriteGuard<'a>,
}

impl MemWriter<'_> {
    /// Inserts a version (`value` `None`: a tombstone). Keys and values are
    /// shorter than 4 GiB − 1 (the LSM refuses larger batches).
    pub fn insert(&mut self, key: &[u8], seq: SeqNo, value: Option<&[u8]>) {
        self.w.insert(key, seq.0, value);
    }

    /// Inserts a version whose value is `r` in `file` (open, and the file
    /// `r` names): the memtable holds the file from now on.
    pub fn insert_blob_ref(&mut self, key: &[u8], seq: SeqNo, file: &Arc<BlobFile>, r: &BlobRef) {
        // A growing file is mapped anew as it grows: keep the longest
        // mapping, which covers every reference made so far.
        let mut files = lock(&self.mem.blob_files);
        match files.get(&r.file) {
            Some(held) if held.size() >= file.size() => {}
            _ => {
                files.insert(r.file, Arc::clone(file));
            }
        }
        drop(files);
        self.w.insert_blob_ref(key, seq.0, &r.encode());
    }

    /// Inserts placed from a finger and by a full search, so far.
    pub fn placements(&self) -> (u64, u64) {
        self.w.placements()
    }
}

impl Drop for MemWriter<'_> {
    fn drop(&mut self) {
        self.mem
            .bytes
            .store(self.w.bytes(), AtomicOrdering::Release);
    }
}

impl Memtable {
    /// An empty memtable with chunks of its own (tests and the `hot`
    /// benches; the store's come from its pool).
    #[cfg(any(test, feature = "hot"))]
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty memtable whose node chunks come from, and go back to,
    /// `pool`.
    pub fn with_chunk_pool(pool: &Arc<ChunkPool>) -> Self {
        // Not `..Self::default()`: that would build (and free) a list with
        // a chunk of its own.
        Memtable {
            list: SkipList::with_chunk_pool(Some(Arc::clone(pool))),
            bytes: AtomicUsize::new(0),
            positions: Mutex::new(HashMap::new()),
            blob_files: Mutex::new(HashMap::new()),
        }
    }

    /// Exclusive write access for one batch.
    pub fn writer(&self) -> MemWriter<'_> {
        MemWriter {
            mem: self,
            w: self.list.writer(),
        }
    }

    /// Inserts one version (a batch of one; tests and the `hot` benches).
    #[cfg(any(test, feature = "hot"))]
    pub fn insert(&self, key: &[u8], seq: SeqNo, value: Option<&[u8]>) {
        self.writer().insert(key, seq, value);
    }

    pub fn note_position(&self, stream: StreamId, index: u64) {
        let mut p = self
            .positions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let e = p.entry(stream).or_insert(index);
        *e = (*e).max(index);
    }

    /// Forgets the position noted for `stream` (see `Lsm::forget_position`).
    pub fn forget_position(&self, stream: StreamId) {
        self.positions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&stream);
    }

    pub fn positions(&self) -> HashMap<StreamId, u64> {
        self.positions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Bytes held by the versions, as of the last finished batch.
    pub fn approximate_bytes(&self) -> usize {
        self.bytes.load(AtomicOrdering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.list.len() == 0
    }

    /// Versions held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// The first version at or after (`key`, `seq`): sequence numbers
    /// descending within a key, so `seq` = `u64::MAX` gives the key's newest.
    pub fn seek(&self, key: &[u8], seq: SeqNo) -> Option<Entry<'_>> {
        self.list.seek(key, seq.0)
    }

    /// The last version before (`key`, `seq`).
    pub fn seek_before(&self, key: &[u8], seq: SeqNo) -> Option<Entry<'_>> {
        self.list.seek_before(key, seq.0)
    }

    /// The first version.
    pub fn first(&self) -> Option<Entry<'_>> {
        self.list.first()
    }

    /// The last version.
    pub fn last(&self) -> Option<Entry<'_>> {
        self.list.last()
    }

    /// Every version in order.
    pub fn iter(&self) -> impl Iterator<Item = Entry<'_>> {
        std::iter::successors(self.first(), Entry::next)
    }

    /// The newest version of `key` at `snapshot`: `Some(None)` for a
    /// tombstone, `None` if this memtable has no version visible there. A
    /// value kept here is made a `T` by `inline`, one kept in a blob file
    /// (read and checked) by `blob`.
    pub fn get<T>(
        &self,
        key: &[u8],
        snapshot: SeqNo,
        inline: impl Fn(&[u8]) -> T,
        blob: impl Fn(bytes::Bytes) -> T,
    ) -> Result<Option<Option<T>>> {
        let Some(e) = self.seek(key, snapshot).filter(|e| e.key() == key) else {
            return Ok(None);
        };
        Ok(Some(match e.value() {
            None => None,
            Some(v) if e.is_blob_ref() => Some(blob(self.resolve(v)?)),
            Some(v) => Some(inline(v)),
        }))
    }

    /// The blob files this memtable's blob references point into.
    pub fn blob_file_ids(&self) -> Vec<u64> {
        lock(&self.blob_files).keys().copied().collect()
    }

    /// The value an entry's blob reference (`encoded`, an entry's
    /// [`Entry::value`] where [`Entry::is_blob_ref`]) points to, as a view
    /// of its file's mapping that holds the file open; its CRC checked.
    pub fn resolve(&self, encoded: &[u8]) -> Result<bytes::Bytes> {
        // Both are broken invariants of this module (references are made
        // by `insert_blob_ref` only, with their file), not bad input.
        let r = BlobRef::decode(encoded)
            .ok_or_else(|| Error::corruption("<memtable>", 0, "a malformed blob reference"))?;
        let file = lock(&self.blob_files)
            .get(&r.file)
            .cloned()
            .ok_or_else(|| {
                Error::corruption(
                    "<memtable>",
                    0,
                    format!(
                        "a blob reference to file {} the memtable does not hold",
                        r.file
                    ),
                )
            })?;
        file.shared(&r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Bytes from a small alphabet with zero in it, so that prefixes, zero
    /// padding and equal words all come up.
    fn bytes(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(255u8)], len)
    }

    proptest! {
        #[test]
        fn the_cached_words_keep_the_byte_order(
            shared in bytes(0..30), ta in bytes(0..6), tb in bytes(0..6),
            sa in 0u64..3, sb in 0u64..3,
        ) {
            // Two keys with a common prefix of any length: their first
            // difference falls in either word or past both.
            let a = [shared.as_slice(), &ta].concat();
            let b = [shared.as_slice(), &tb].concat();
            let want = a.cmp(&b).then(sb.cmp(&sa));
            let got = skiplist::cmp_for_test(&a, sa, &b, sb);
            prop_assert_eq!(got, want);
        }
    }

    fn get(m: &Memtable, key: &[u8], snapshot: SeqNo) -> Option<Option<Vec<u8>>> {
        m.get(key, snapshot, <[u8]>::to_vec, |b| b.to_vec())
            .expect("inline values only")
    }

    #[test]
    fn snapshot_reads_pick_the_right_version() {
        let m = Memtable::new();
        m.insert(b"a", SeqNo(1), Some(b"v1"));
        m.insert(b"a", SeqNo(3), Some(b"v3"));
        m.insert(b"a", SeqNo(5), None);
        m.insert(b"b", SeqNo(2), Some(b"b2"));
        assert_eq!(get(&m, b"a", SeqNo(0)), None);
        assert_eq!(get(&m, b"a", SeqNo(2)), Some(Some(b"v1".to_vec())));
        assert_eq!(get(&m, b"a", SeqNo(4)), Some(Some(b"v3".to_vec())));
        assert_eq!(get(&m, b"a", SeqNo(9)), Some(None));
        assert_eq!(get(&m, b"ab", SeqNo(9)), None);
        assert_eq!(get(&m, b"b", SeqNo(9)), Some(Some(b"b2".to_vec())));
    }

    /// The memtable's order as a model: key ascending, seq descending.
    type Model = std::collections::BTreeMap<(Vec<u8>, std::cmp::Reverse<u64>), Option<Vec<u8>>>;

    fn as_model_key(key: &[u8], seq: u64) -> (Vec<u8>, std::cmp::Reverse<u64>) {
        (key.to_vec(), std::cmp::Reverse(seq))
    }

    fn contents(m: &Memtable) -> Vec<(Vec<u8>, u64, Option<Vec<u8>>)> {
        m.iter()
            .map(|e| (e.key().to_vec(), e.seq(), e.value().map(<[u8]>::to_vec)))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Inserts in any order (keys sharing prefixes and first words, so
        /// fingers are used, stale, and refused), then every read agrees
        /// with a sorted model: the whole order, seek and seek_before at
        /// arbitrary probes, first and last.
        #[test]
        fn reads_agree_with_a_sorted_model(
            prefixes in proptest::collection::vec(bytes(0..12), 1..6),
            ops in proptest::collection::vec((0usize..6, bytes(0..14), any::<bool>(), 0usize..40), 1..1500),
            probes in proptest::collection::vec((0usize..6, bytes(0..14), 0u64..1600), 1..40),
        ) {
            let m = Memtable::new();
            let mut model = Model::new();
            for (i, (pi, tail, tomb, vlen)) in ops.iter().enumerate() {
                let key = [prefixes[pi % prefixes.len()].as_slice(), tail].concat();
                let seq = i as u64 + 1;
                let value = (!tomb).then(|| vec![(seq % 251) as u8; *vlen]);
                m.insert(&key, SeqNo(seq), value.as_deref());
                model.insert(as_model_key(&key, seq), value);
            }
            let want: Vec<_> = model.iter().map(|((k, s), v)| (k.clone(), s.0, v.clone())).collect();
            prop_assert_eq!(contents(&m), want);
            prop_assert_eq!(m.len(), model.len());
            let last = m.last().map(|e| (e.key().to_vec(), e.seq()));
            prop_assert_eq!(last, model.keys().next_back().map(|(k, s)| (k.clone(), s.0)));
            for (pi, tail, seq) in probes {
                let key = [prefixes[pi % prefixes.len()].as_slice(), &tail].concat();
                let at = as_model_key(&key, seq);
                let ge = m.seek(&key, SeqNo(seq)).map(|e| (e.key().to_vec(), e.seq()));
                let want_ge = model.range(at.clone()..).next().map(|((k, s), _)| (k.clone(), s.0));
                prop_assert_eq!(ge, want_ge);
                let lt = m.seek_before(&key, SeqNo(seq)).map(|e| (e.key().to_vec(), e.seq()));
                let want_lt = model.range(..at).next_back().map(|((k, s), _)| (k.clone(), s.0));
                prop_assert_eq!(lt, want_lt);
            }
        }
    }

    /// A chat key: conversation, then the reverse timestamp, so each new
    /// message of a conversation sorts before its previous one.
    fn chat_key(conv: u64, ts: u64) -> Vec<u8> {
        let mut k = vec![b'm'];
        k.extend_from_slice(&conv.to_be_bytes());
        k.extend_from_slice(&(u64::MAX - ts).to_be_bytes());
        k
    }

    /// A value a reader can check against its key.
    fn value_for(key: &[u8], seq: u64) -> Vec<u8> {
        let n = 20 + (seq % 90) as usize;
        key.iter().cycle().take(n).copied().collect()
    }

    /// The pattern the fingers are for: many conversations, each message
    /// sorting just before its conversation's previous one. Nearly every
    /// insert is placed from a finger, and the order is right.
    #[test]
    fn chat_inserts_are_placed_from_fingers() {
        let m = Memtable::new();
        let mut rng = 0x1234_5678_u64;
        let mut ts = vec![0u64; 300];
        let n = 60_000u64;
        let mut w = m.writer();
        for seq in 1..=n {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            // Skewed: low conversation numbers are hot.
            let c = ((rng % 300) * (rng % 300) / 300) as usize;
            ts[c] += 1 + rng % 3;
            let conv = (c as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let key = chat_key(conv, ts[c]);
            w.insert(&key, SeqNo(seq), Some(&value_for(&key, seq)));
        }
        let (fingered, full) = w.placements();
        drop(w);
        assert_eq!(fingered + full, n);
        // A full search per new conversation, per tall node and per stale
        // finger; the rest from fingers.
        assert!(
            fingered * 100 >= n * 95,
            "from fingers {fingered}, full searches {full}"
        );
        let all = contents(&m);
        assert_eq!(all.len(), n as usize);
        assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "keys out of order");
        for (k, s, v) in &all {
            assert_eq!(v.as_deref(), Some(value_for(k, *s).as_slice()));
        }

        // Reads start from the fingers too: each conversation's newest
        // message (the finger's own neighbourhood), the one before it, and
        // a key just newer than any (absent) all come back right.
        let before = m.list.finger_reads();
        let mut reads = 0;
        for (c, &t) in ts.iter().enumerate().filter(|(_, &t)| t > 3) {
            let conv = (c as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let newest = chat_key(conv, t);
            let got = get(&m, &newest, SeqNo(n)).expect("the newest message");
            let seq = all.iter().find(|(k, _, _)| *k == newest).map(|e| e.1);
            assert_eq!(got, Some(value_for(&newest, seq.unwrap())));
            assert_eq!(get(&m, &chat_key(conv, t + 1), SeqNo(n)), None);
            let older = m
                .seek(&chat_key(conv, t - 1), SeqNo(n))
                .expect("an older one");
            assert!(older.key() > newest.as_slice() && older.key()[..8] == newest[..8]);
            reads += 3;
        }
        assert_mostly_from_fingers(&m, before, reads);
    }

    /// At least 90 % of the `reads` since the count was `before` started
    /// from a finger.
    fn assert_mostly_from_fingers(m: &Memtable, before: usize, reads: usize) {
        let fingered = m.list.finger_reads() - before;
        assert!(
            fingered * 100 >= reads * 90,
            "reads from fingers {fingered} of {reads}"
        );
    }

    /// The store's reads: each user's records (a head, inbox events, one
    /// entry per conversation) are rewritten in place as new versions,
    /// interleaved across users, and read back by their newest version. A
    /// read descends from its region's start (the head's and the entries'
    /// regions begin before the last insert's finger, so that finger
    /// would not do), and gets the newest value.
    #[test]
    fn reads_of_rewritten_records_start_from_their_region() {
        fn key(user: u64, kind: u8, n: u64) -> Vec<u8> {
            let mut k = vec![b'u', (user % 7) as u8, 0];
            k.extend_from_slice(&user.to_be_bytes());
            k.push(kind);
            if kind != 0 {
                k.extend_from_slice(&n.to_be_bytes());
            }
            k
        }
        let m = Memtable::new();
        let mut newest = std::collections::HashMap::new();
        let mut useq = vec![0u64; 400];
        let mut rng = 0x9876_5432_u64;
        let mut seq = 0;
        {
            let mut w = m.writer();
            for _ in 0..20_000 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let u = (rng % 400) * (rng % 400) / 400;
                useq[u as usize] += 1;
                let writes = [
                    key(u, 1, useq[u as usize]),
                    key(u, 2, rng % 5),
                    key(u, 0, 0),
                ];
                for k in writes {
                    seq += 1;
                    w.insert(&k, SeqNo(seq), Some(&value_for(&k, seq)));
                    newest.insert(k, seq);
                }
            }
        }
        let before = m.list.finger_reads();
        let mut reads = 0;
        for (k, &s) in newest.iter().filter(|(k, _)| k[11] != 1) {
            let got = get(&m, k, SeqNo(seq)).expect("written");
            assert_eq!(got, Some(value_for(k, s)));
            reads += 1;
        }
        assert_mostly_from_fingers(&m, before, reads);
    }

    /// `rounds` keys of prefix "b", each sorting before the previous one
    /// (chat-like), with `between` larger keys of prefix "a" inserted
    /// between each two — so each "b" key's finger (its predecessor, the
    /// largest "a" key then) is `between` nodes behind it on level 0.
    /// Returns the memtable and its (from finger, full search) counts,
    /// after checking the order.
    fn fingers_left_behind(rounds: u64, between: u64) -> (Memtable, u64, u64) {
        let m = Memtable::new();
        let mut w = m.writer();
        let mut seq = 0;
        let mut put = |w: &mut MemWriter<'_>, key: &[u8]| {
            seq += 1;
            w.insert(key, SeqNo(seq), Some(&value_for(key, seq)));
        };
        let mut b = 0u64;
        for round in 0..rounds {
            // One prefix for all of them ("b" and eleven zeros).
            put(
                &mut w,
                &[b"b".as_slice(), &[0; 11], &(u64::MAX - round).to_be_bytes()].concat(),
            );
            for _ in 0..between {
                b += 1;
                // One prefix for all of them ("a", seven zeros and the
                // counter's zero high bytes).
                put(
                    &mut w,
                    &[b"a".as_slice(), &[0; 7], &b.to_be_bytes()].concat(),
                );
            }
        }
        let (fingered, full) = w.placements();
        drop(w);
        let all = contents(&m);
        assert_eq!(all.len() as u64, rounds * (between + 1));
        assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "keys out of order");
        (m, fingered, full)
    }

    /// A finger a few hundred nodes behind its key — past the walk budget
    /// on the key's own levels — is still used: the insert descends from
    /// the finger's top level (as a batch's postings do, term after term).
    #[test]
    fn far_fingers_are_descended_from() {
        let (_, fingered, full) = fingers_left_behind(50, 200);
        // Full searches: the first "b" and "a" keys and the tall nodes (1
        // in 256 of 10 050: 41 in all here), not one more per "b" key (90
        // without the descent).
        assert!(full < 65, "full searches {full}, from fingers {fingered}");
    }

    /// A finger that has gone stale — thousands of keys inserted between two
    /// inserts with its prefix — is given up after its walk budget for a
    /// full search, and the order stays right either way.
    #[test]
    fn stale_fingers_fall_back_to_a_full_search() {
        // 5 000 nodes: ~78 steps on the finger's top level, past the budget.
        let (_, fingered, full) = fingers_left_behind(20, 5_000);
        assert!(full >= 19, "full searches {full}, from fingers {fingered}");
    }

    /// Readers walking and seeking while the writer inserts never see a
    /// half-written node, a key out of order, or a version that goes away.
    #[test]
    fn readers_see_a_consistent_list_while_the_writer_inserts() {
        let m = std::sync::Arc::new(Memtable::new());
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|r| {
                let m = std::sync::Arc::clone(&m);
                let done = std::sync::Arc::clone(&done);
                std::thread::spawn(move || {
                    let mut rounds = 0u64;
                    let mut seen = 0usize;
                    loop {
                        // A pass that starts after the writer finished sees everything.
                        let last = done.load(AtomicOrdering::Acquire) && rounds >= 2;
                        let mut prev: Option<(Vec<u8>, u64)> = None;
                        let mut count = 0usize;
                        for e in m.iter() {
                            let (k, s) = (e.key(), e.seq());
                            assert_eq!(e.value(), Some(value_for(k, s).as_slice()), "reader {r}");
                            if let Some((pk, ps)) = &prev {
                                assert!(
                                    (pk.as_slice(), std::cmp::Reverse(*ps))
                                        < (k, std::cmp::Reverse(s))
                                );
                            }
                            prev = Some((k.to_vec(), s));
                            count += 1;
                        }
                        // Nothing published goes away.
                        assert!(count >= seen, "reader {r}: {count} after {seen}");
                        seen = count;
                        // A seek lands on a version at or after its probe.
                        let probe = chat_key(rounds.wrapping_mul(0x9e37_79b9_7f4a_7c15) % 64, 0);
                        if let Some(e) = m.seek(&probe, SeqNo(u64::MAX)) {
                            assert!(e.key() >= probe.as_slice());
                        }
                        rounds += 1;
                        if last {
                            break;
                        }
                    }
                    seen
                })
            })
            .collect();
        let n = 40_000u64;
        for seq in 1..=n {
            let key = chat_key(seq % 64, seq);
            // Small batches: the writer lock is taken and dropped often.
            m.insert(&key, SeqNo(seq), Some(&value_for(&key, seq)));
        }
        done.store(true, AtomicOrdering::Release);
        for r in readers {
            let seen = r.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
            assert_eq!(seen, n as usize);
        }
    }
}
