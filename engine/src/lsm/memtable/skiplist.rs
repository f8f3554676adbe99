//! The memtable's skiplist: one writer at a time, any number of lock-free
//! readers, nodes bump-allocated in an [`Arena`], insert positions found
//! from a per-prefix finger.
//!
//! # Why not a general concurrent skiplist
//!
//! The LSM already serializes writers (`Lsm::apply`'s write lock), so the
//! list needs no compare-and-swap and no epoch-based reclamation: nodes are
//! never unlinked or freed before the whole memtable drops. crossbeam's
//! skiplist paid for both, plus one heap allocation per node and one per
//! key buffer, and its search was 44 % of the ingest writer's time (perf,
//! `missive-bench engine --workloads ingest`): ~20 levels of pointer chasing
//! through 64 MiB of nodes per insert, each step a likely cache miss.
//!
//! # Node layout (in the arena, 8-byte aligned, never moved)
//!
//! ```text
//! 0   head  u64   key bytes 0..8, big-endian, zero-padded
//! 8   head2 u64   key bytes 8..16
//! 16  head3 u64   key bytes 16..24
//! 24  seq   u64
//! 32  key_len u32, 36 value_len u32 (u32::MAX: tombstone)
//! 40  height u32, 44 flags u32 (bit 0: the value is an encoded blob
//!     reference, `lsm::blob::BlobRef`, to bytes in a blob file)
//! 48  next: [AtomicPtr<Node>; height]    level 0 first
//! ..  key bytes, then value bytes
//! ```
//!
//! Order: key ascending, then sequence number descending, so the newest
//! version of a key visible at a snapshot is the first node at or after
//! (key, snapshot). The cached words make most comparisons integer compares
//! inside the node's first cache line (see [`cmp_node`] for why the padding
//! keeps the byte order).
//!
//! # Publication (the invariant readers rely on)
//!
//! The writer fills a node completely — header, key, value, and its own
//! `next` pointers (plain stores; nobody can see the node yet) — and then
//! links it level by level from the bottom with a `Release` store into each
//! predecessor's `next`. Readers load `next` with `Acquire`, so a node they
//! reach is fully written. Every level is a sorted sub-list of level 0 at
//! every instant, so a reader that sees the node at level 2 but not yet at
//! level 1 still finds it (or its successor) by descending. The height in
//! use only grows; a reader with a stale one starts lower and walks more.
//!
//! A search answers the node it *saw* after the predecessor, never the
//! predecessor's `next` read again: between the two loads the writer may
//! link a node there that sorts before the key (a newer, unpublished
//! version of it, or a smaller key), and a seek would answer that. The
//! loom model in `tests/loom_skiplist.rs` checks this protocol under every
//! interleaving and found that race.
//!
//! # Fingers
//!
//! A key's *prefix* here is its first twelve bytes: in the store's keys
//! the keyspace, slot and conversation or user id, plus the record type
//! (or the top byte of a message's reverse timestamp). Keys with one prefix
//! form a contiguous *region* of the list. The finger table maps a hash of
//! the prefix (a direct-mapped table; collisions simply overwrite, and are
//! caught by the checks below) to two sets of nodes:
//!
//! - `preds`: the predecessors the last insert with that prefix found at
//!   levels `0..FINGER_LEVELS`, for the writer. Chat keys arrive in a
//!   pattern — each new message of a conversation sorts just before the
//!   previous one (reverse timestamps) — so its predecessors are nearly
//!   always those of the previous message.
//! - `starts`: the predecessors of the region's first key at levels
//!   `0..START_LEVELS`, for readers. They sort before *every* key with the
//!   prefix, ever: a node before the region has a smaller prefix, and nodes
//!   are never removed; a new first key (a newer message) refreshes them.
//!
//! Why a writer's finger is a valid place to start: predecessors are nodes,
//! nodes are never removed, and `preds[i]` is never after `preds[0]` (a
//! full search sets them all from one key; an insert placed from the finger
//! only moves the levels it walks forward, to that key's predecessors, and
//! a level-i predecessor is never after the level-0 one). So once `preds[0]
//! < key`, walking level i forward from `preds[i]` until the next node is ≥
//! key finds the true predecessor there — only slower when many nodes
//! arrived in between. Only the new node's own levels (1 with probability
//! 3/4) are walked first: no top-down descent at all. Past [`WALK_BUDGET`]
//! steps on one of them the insert descends instead from the finger's top
//! level (`descend_from_finger`: a step there passes ~64 nodes), which
//! places keys a few hundred nodes past their finger — a batch's search
//! postings, one per term of a conversation's message, each landing past
//! the last term's postings — in a dozen steps; past the budget there
//! too, it falls back to a full search from the top.
//!
//! Readers: a point read in the store is mostly of a record in a small
//! region (a conversation's head, a user's entry for one conversation, a
//! conversation's newest message), so descending from the region's start
//! at level 2 takes a few steps through nodes still in cache, where a
//! search from the top takes ~30 through a 64 MiB list. A reader needs no
//! consistent view of a slot — the writer may be rewriting it — only *one*
//! node that is before the key: any node before the key is a valid place to
//! descend from, at any level below its height, and every pointer ever
//! stored at level `i` of a slot was found on level `i` (so its height
//! exceeds `i`). Each pointer is one atomic, stored with `Release` after the node
//! it names was published, loaded with `Acquire`. The reader takes the
//! highest start that is a node (not the head sentinel), checks that it is
//! before the key (a collision or a torn slot fails this), and descends
//! with the walk budget; anything else is a full search from the top.

use std::cmp::Ordering;
use std::marker::PhantomData;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::arena::{Arena, ChunkPool};
use crate::lsm::key_word;

/// Levels at most: with a branching factor of 4, enough for 16M nodes
/// before searches lengthen (a 64 MiB memtable of chat messages holds ~400K).
pub(crate) const MAX_HEIGHT: usize = 12;
/// Levels of a writer's finger; a node taller than this (1 in 4^4) is
/// placed by a full search.
const FINGER_LEVELS: usize = 4;
/// Levels of a region's start kept for readers. A read descends from the
/// highest: criterion (`memtable/get-*-chat-200k`) with the writer's last
/// predecessors as the start, against searches from the top — from level
/// 1, reads next to a finger −76 % but reads anywhere in a conversation
/// +17 % (the walk gives up more often); from 2, −53 % and −26 %; from 3,
/// −11 % and ±0.
const START_LEVELS: usize = 3;
/// Bytes of a key that make its prefix (see "Fingers").
const PREFIX_BYTES: usize = 12;
/// Finger slots (64 bytes each: one cache line; 2 MiB per memtable). The
/// engine bench (100 000 conversations, ~370 000 versions per memtable)
/// placed 73 % of its inserts from a finger with 4 096 slots and 85 % with
/// 32 768; the rest are a conversation's first message in the memtable.
const FINGER_SLOTS: usize = 32768;
/// Forward steps on one level before a finger is given up for a full search.
const WALK_BUDGET: usize = 16;
/// `value_len` of a tombstone.
const TOMBSTONE: u32 = u32::MAX;
/// `flags` bit: the value bytes are an encoded `BlobRef`, not the value.
const FLAG_BLOB_REF: u32 = 1;

/// A node's fixed part; the tower, key and value follow it in the arena.
#[repr(C)]
pub(crate) struct Node {
    head: u64,
    head2: u64,
    head3: u64,
    seq: u64,
    key_len: u32,
    value_len: u32,
    height: u32,
    /// [`FLAG_BLOB_REF`] or 0.
    flags: u32,
}

/// Bytes before the tower.
const HEADER: usize = std::mem::size_of::<Node>();
const _: () = assert!(HEADER == 48);

type NodePtr = *mut Node;

/// Where `node`'s `next` pointer for `level` lives (the node layout above).
///
/// # Safety
/// `node` points into an allocation of at least `HEADER + 8 * (level + 1)`
/// bytes.
unsafe fn tower(node: NodePtr, level: usize) -> *mut AtomicPtr<Node> {
    // SAFETY: forwarded; the tower starts right after the header, 8-aligned.
    unsafe { node.cast::<u8>().add(HEADER + 8 * level).cast() }
}

/// Where `node`'s key starts (its value follows the key).
///
/// # Safety
/// `node` points into an allocation of at least `HEADER + 8 * height` bytes.
unsafe fn data(node: NodePtr, height: usize) -> *mut u8 {
    // SAFETY: forwarded.
    unsafe { node.cast::<u8>().add(HEADER + 8 * height) }
}

/// The `next` pointer of `node` at `level`.
///
/// # Safety
/// `node` is a live node of this list (or its head) with a height > `level`.
unsafe fn slot<'a>(node: NodePtr, level: usize) -> &'a AtomicPtr<Node> {
    // SAFETY: the tower holds `height` initialized `AtomicPtr`s.
    unsafe { &*tower(node, level) }
}

/// The node after `node` at `level`, null at the end.
///
/// # Safety
/// As for [`slot`].
unsafe fn next(node: NodePtr, level: usize) -> NodePtr {
    // SAFETY: forwarded.
    unsafe { slot(node, level) }.load(AtomicOrdering::Acquire)
}

/// The key bytes of `node`.
///
/// # Safety
/// `node` is a live, published node (not the head); the slice lives as long
/// as the list's arena.
unsafe fn key_of<'a>(node: NodePtr) -> &'a [u8] {
    // SAFETY: written before publication, never changed afterwards.
    unsafe {
        let h = &*node;
        std::slice::from_raw_parts(data(node, h.height as usize), h.key_len as usize)
    }
}

/// What a search looks for: a key at a sequence number, with its words.
pub(crate) struct Probe<'k> {
    head: u64,
    head2: u64,
    head3: u64,
    key: &'k [u8],
    seq: u64,
    /// A hash of the key's prefix (its first [`PREFIX_BYTES`]).
    tag: u64,
}

impl<'k> Probe<'k> {
    /// The position of `key` at `seq`: after every version of `key` newer
    /// than `seq`, before (or at) the rest.
    pub fn new(key: &'k [u8], seq: u64) -> Self {
        let (head, head2) = (key_word(key, 0), key_word(key, 8));
        Probe {
            head,
            head2,
            head3: key_word(key, 16),
            key,
            seq,
            tag: (head ^ prefix_tail(head2).rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        }
    }

    /// Whether `node`'s key has this probe's prefix.
    ///
    /// # Safety
    /// `node` is a live, published node (not the head).
    unsafe fn same_prefix(&self, node: NodePtr) -> bool {
        // SAFETY: the header is written before publication, never changed.
        let n = unsafe { &*node };
        n.head == self.head && prefix_tail(n.head2) == prefix_tail(self.head2)
    }
}

/// The prefix's part of a key's second word (bytes 8..[`PREFIX_BYTES`]).
fn prefix_tail(head2: u64) -> u64 {
    head2 >> (8 * (16 - PREFIX_BYTES))
}

/// Orders `node` against `p`: by key bytes, then sequence number descending.
///
/// The words are the keys' bytes 0..8, 8..16, 16..24, big-endian and
/// zero-padded: keys differ in their first eight bytes unless they share a
/// keyspace and most of an id, the records of one conversation or user
/// differ within the next eight, and two messages of one conversation
/// (19-byte keys) differ in the last three. Zero padding keeps the order:
/// where two padded words differ after equal earlier words, the keys differ
/// at that byte or one ended there (and so is the smaller). Equal words
/// over two keys of at most 24 bytes make the shorter a prefix of the
/// longer, so the lengths decide; longer keys fall through to the bytes.
///
/// # Safety
/// `node` is a live, published node (not the head).
unsafe fn cmp_node(node: NodePtr, p: &Probe<'_>) -> Ordering {
    // SAFETY: the header is written before publication, never changed.
    let n = unsafe { &*node };
    n.head
        .cmp(&p.head)
        .then_with(|| n.head2.cmp(&p.head2))
        .then_with(|| n.head3.cmp(&p.head3))
        .then_with(|| {
            let (la, lb) = (n.key_len as usize, p.key.len());
            if la <= 24 && lb <= 24 {
                la.cmp(&lb)
            } else {
                // SAFETY: forwarded.
                let k = unsafe { key_of(node) };
                if la >= 24 && lb >= 24 {
                    k[24..].cmp(&p.key[24..])
                } else {
                    k.cmp(p.key)
                }
            }
        })
        .then_with(|| p.seq.cmp(&n.seq))
}

/// One slot of the finger table (see "Fingers" above). Written by the
/// writer only; read by readers without a lock (a torn slot is harmless).
#[repr(C, align(64))]
struct Finger {
    /// The prefix hash the slot holds.
    tag: AtomicU64,
    /// The last insert's predecessors, for the writer. Null: empty.
    preds: [AtomicPtr<Node>; FINGER_LEVELS],
    /// The region start's predecessors, for readers. Null: unknown.
    starts: [AtomicPtr<Node>; START_LEVELS],
}

const _: () = assert!(std::mem::size_of::<Finger>() == 64);

impl Finger {
    fn empty() -> Self {
        Finger {
            tag: AtomicU64::new(0),
            preds: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
            starts: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
        }
    }

    /// Stores `nodes` into the first `nodes.len()` of `slots`. Writer only.
    fn store(slots: &[AtomicPtr<Node>], nodes: &[NodePtr]) {
        for (slot, &n) in slots.iter().zip(nodes) {
            slot.store(n, AtomicOrdering::Release);
        }
    }
}

/// The writer's state, behind the list's mutex.
struct Writer {
    arena: Arena,
    /// xorshift64* state, for node heights.
    rng: u64,
    /// Bytes of nodes written (headers, towers, keys, values).
    bytes: usize,
    /// Inserts placed from a finger / by a full search.
    from_finger: u64,
    full_searches: u64,
}

impl Writer {
    /// A height with P(h > k) = 4^-k.
    fn random_height(&mut self) -> usize {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (1 + r.trailing_zeros() as usize / 2).min(MAX_HEIGHT)
    }
}

/// The skiplist.
pub(crate) struct SkipList {
    /// A sentinel of [`MAX_HEIGHT`] levels before every node; never compared.
    head: NodePtr,
    /// Levels in use (≥ 1); only grows.
    height: AtomicUsize,
    len: AtomicUsize,
    /// Per key prefix (by its tag), the finger slot; written
    /// under `writer`, read by anyone.
    fingers: Box<[Finger]>,
    writer: Mutex<Writer>,
    /// Reads placed from a finger (tests only: a shared counter would make
    /// readers contend for its cache line).
    #[cfg(test)]
    finger_reads: AtomicUsize,
}

// SAFETY: nodes are immutable once published except their `next` pointers,
// which are atomics; everything the writer mutates besides them is behind
// `writer`'s mutex; the arena (and with it every node) lives as long as the
// list, so references handed out are bounded by a borrow of it.
unsafe impl Send for SkipList {}
// SAFETY: as above.
unsafe impl Sync for SkipList {}
// SAFETY: the writer's arena is plain memory it owns.
unsafe impl Send for Writer {}

impl std::fmt::Debug for SkipList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SkipList")
            .field("len", &self.len())
            .field("height", &self.height.load(AtomicOrdering::Relaxed))
            .finish()
    }
}

impl Default for SkipList {
    fn default() -> Self {
        Self::new()
    }
}

impl SkipList {
    /// An empty list.
    pub fn new() -> Self {
        Self::with_chunk_pool(None)
    }

    /// An empty list whose arena takes its chunks from `pool` first.
    pub fn with_chunk_pool(pool: Option<Arc<ChunkPool>>) -> Self {
        let mut arena = Arena::with_pool(pool);
        let head = arena.alloc(HEADER + 8 * MAX_HEIGHT).cast::<Node>().as_ptr();
        // SAFETY: freshly allocated, large enough for a header and a full
        // tower, 8-aligned.
        unsafe {
            ptr::write(
                head,
                Node {
                    head: 0,
                    head2: 0,
                    head3: 0,
                    seq: 0,
                    key_len: 0,
                    value_len: 0,
                    height: MAX_HEIGHT as u32,
                    flags: 0,
                },
            );
            for i in 0..MAX_HEIGHT {
                ptr::write(tower(head, i), AtomicPtr::new(ptr::null_mut()));
            }
        }
        SkipList {
            head,
            height: AtomicUsize::new(1),
            len: AtomicUsize::new(0),
            fingers: (0..FINGER_SLOTS).map(|_| Finger::empty()).collect(),
            #[cfg(test)]
            finger_reads: AtomicUsize::new(0),
            writer: Mutex::new(Writer {
                arena,
                rng: 0x9e37_79b9_7f4a_7c15,
                bytes: 0,
                from_finger: 0,
                full_searches: 0,
            }),
        }
    }

    /// Searches placed from a finger so far (tests only).
    #[cfg(test)]
    pub fn finger_reads(&self) -> usize {
        self.finger_reads.load(AtomicOrdering::Relaxed)
    }

    /// Nodes in the list.
    pub fn len(&self) -> usize {
        self.len.load(AtomicOrdering::Acquire)
    }

    /// Exclusive write access until the guard drops (one lock per batch).
    pub fn writer(&self) -> WriteGuard<'_> {
        WriteGuard {
            list: self,
            w: self.writer.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// Walks from `x` along `level` while the next node sorts before `p`;
    /// returns the last node passed (or `x`), the node seen after it (at
    /// or after `p`, or null), and whether it got there within `budget`
    /// steps (when not, the second is null and means nothing).
    ///
    /// # Safety
    /// `x` is the head or a published node with height > `level`, and is
    /// before `p`.
    unsafe fn walk(
        &self,
        mut x: NodePtr,
        level: usize,
        p: &Probe<'_>,
        budget: usize,
    ) -> (NodePtr, NodePtr, bool) {
        let mut steps = 0;
        loop {
            // SAFETY: `x` has height > `level` (it was reached on `level`).
            let n = unsafe { next(x, level) };
            // SAFETY: non-null `next` pointers are published nodes.
            if n.is_null() || unsafe { cmp_node(n, p) } != Ordering::Less {
                return (x, n, true);
            }
            x = n;
            steps += 1;
            if steps > budget {
                return (x, ptr::null_mut(), false);
            }
        }
    }

    /// The last node before `p` at every level (the head where none is).
    fn find_preds(&self, p: &Probe<'_>, preds: &mut [NodePtr; MAX_HEIGHT]) {
        let mut x = self.head;
        let top = self.height.load(AtomicOrdering::Acquire);
        for (level, pred) in preds.iter_mut().enumerate().rev() {
            if level < top {
                // SAFETY: `x` is the head or a node reached on a level ≥
                // this one, and before `p`.
                x = unsafe { self.walk(x, level, p, usize::MAX) }.0;
            }
            *pred = x;
        }
    }

    /// The last node before `p` on level 0 (or the head), and the node
    /// the search saw right after it (at or after `p`, or null).
    ///
    /// The second is the one *seen*, not the predecessor's `next` read
    /// again: the writer may link a node between the two in the meantime,
    /// and that node may sort before `p` — a newer, unpublished version of
    /// the key, or a smaller key — which a seek must never answer (the
    /// memtable's loom model, `tests/loom_skiplist.rs`, found this).
    fn last_before(&self, p: &Probe<'_>) -> (NodePtr, NodePtr) {
        if let Some(found) = self.last_before_from_finger(p) {
            #[cfg(test)]
            self.finger_reads.fetch_add(1, AtomicOrdering::Relaxed);
            return found;
        }
        let (mut x, mut after) = (self.head, ptr::null_mut());
        for level in (0..self.height.load(AtomicOrdering::Acquire)).rev() {
            // SAFETY: as in `find_preds`.
            (x, after, _) = unsafe { self.walk(x, level, p, usize::MAX) };
        }
        (x, after)
    }

    /// `last_before` by descending from the start of `p`'s region, if its
    /// finger has one that is before `p` and the walk from it stays within
    /// the budget on every level (see "Fingers" above).
    fn last_before_from_finger(&self, p: &Probe<'_>) -> Option<(NodePtr, NodePtr)> {
        let f = &self.fingers[finger_slot(p.tag)];
        if f.tag.load(AtomicOrdering::Relaxed) != p.tag {
            return None;
        }
        // The highest start that is a node: the head sentinel there would
        // be a search from the top of that level.
        let (top, start) = f
            .starts
            .iter()
            .enumerate()
            .rev()
            .map(|(level, a)| (level, a.load(AtomicOrdering::Acquire)))
            .find(|&(_, x)| !x.is_null() && x != self.head)?;
        // SAFETY: a non-null start other than the head is a published node.
        if unsafe { cmp_node(start, p) } != Ordering::Less {
            return None;
        }
        let (mut x, mut after) = (start, ptr::null_mut());
        for level in (0..=top).rev() {
            // SAFETY: `x` is before `p` and was found on a level ≥ this
            // one (a start at level `top` has height > `top`).
            let (y, seen, ok) = unsafe { self.walk(x, level, p, WALK_BUDGET) };
            if !ok {
                return None;
            }
            (x, after) = (y, seen);
        }
        Some((x, after))
    }

    fn entry(&self, n: NodePtr) -> Option<Entry<'_>> {
        (!n.is_null() && n != self.head).then_some(Entry {
            node: n,
            _list: PhantomData,
        })
    }

    /// The first version at or after `key` at `seq` (see [`Probe::new`]).
    pub fn seek(&self, key: &[u8], seq: u64) -> Option<Entry<'_>> {
        self.entry(self.last_before(&Probe::new(key, seq)).1)
    }

    /// The last version before `key` at `seq`.
    pub fn seek_before(&self, key: &[u8], seq: u64) -> Option<Entry<'_>> {
        self.entry(self.last_before(&Probe::new(key, seq)).0)
    }

    /// The last version in the list.
    pub fn last(&self) -> Option<Entry<'_>> {
        let mut x = self.head;
        for level in (0..self.height.load(AtomicOrdering::Acquire)).rev() {
            loop {
                // SAFETY: `x` was reached on a level ≥ this one.
                let n = unsafe { next(x, level) };
                if n.is_null() {
                    break;
                }
                x = n;
            }
        }
        self.entry(x)
    }

    /// The first version in the list.
    pub fn first(&self) -> Option<Entry<'_>> {
        // SAFETY: the head has every level.
        self.entry(unsafe { next(self.head, 0) })
    }
}

/// A published version, borrowed from the list.
#[derive(Clone, Copy)]
pub(crate) struct Entry<'a> {
    node: NodePtr,
    _list: PhantomData<&'a SkipList>,
}

impl<'a> Entry<'a> {
    fn header(&self) -> &'a Node {
        // SAFETY: a published node of a list borrowed for 'a.
        unsafe { &*self.node }
    }

    /// The user key.
    pub fn key(&self) -> &'a [u8] {
        // SAFETY: as in `header`.
        unsafe { key_of(self.node) }
    }

    /// The sequence number.
    pub fn seq(&self) -> u64 {
        self.header().seq
    }

    /// Whether [`Entry::value`] is an encoded blob reference (the value
    /// itself is in a blob file) rather than the value.
    pub fn is_blob_ref(&self) -> bool {
        self.header().flags & FLAG_BLOB_REF != 0
    }

    /// The value as stored; `None` for a tombstone. For an entry
    /// [`Entry::is_blob_ref`], the reference's encoding, which readers
    /// resolve (`Memtable::resolve`) and a flush writes as a reference.
    pub fn value(&self) -> Option<&'a [u8]> {
        let h = self.header();
        if h.value_len == TOMBSTONE {
            return None;
        }
        // SAFETY: the value follows the key in the node, written before
        // publication; the pointer derives from the node's (the arena
        // chunk's), not from the key slice.
        Some(unsafe {
            let at = data(self.node, h.height as usize).add(h.key_len as usize);
            std::slice::from_raw_parts(at, h.value_len as usize)
        })
    }

    /// The next version in order.
    pub fn next(&self) -> Option<Entry<'a>> {
        // SAFETY: a published node has at least level 0.
        let n = unsafe { next(self.node, 0) };
        (!n.is_null()).then_some(Entry {
            node: n,
            _list: PhantomData,
        })
    }
}

/// The writer's handle; see [`SkipList::writer`].
pub(crate) struct WriteGuard<'a> {
    list: &'a SkipList,
    w: MutexGuard<'a, Writer>,
}

impl WriteGuard<'_> {
    /// Bytes of nodes written so far.
    pub fn bytes(&self) -> usize {
        self.w.bytes
    }

    /// Inserts placed from a finger and by a full search, so far.
    pub fn placements(&self) -> (u64, u64) {
        (self.w.from_finger, self.w.full_searches)
    }

    /// Inserts a version (`value` `None`: a tombstone). `(key, seq)` must not
    /// be in the list already (sequence numbers are unique), and the key and
    /// value must each be shorter than 4 GiB − 1.
    pub fn insert(&mut self, key: &[u8], seq: u64, value: Option<&[u8]>) {
        self.insert_flagged(key, seq, value, 0);
    }

    /// Inserts a version whose value is kept in a blob file: `encoded_ref`
    /// is its `BlobRef::encode`, and the entry says so
    /// ([`Entry::is_blob_ref`]).
    pub fn insert_blob_ref(&mut self, key: &[u8], seq: u64, encoded_ref: &[u8]) {
        self.insert_flagged(key, seq, Some(encoded_ref), FLAG_BLOB_REF);
    }

    fn insert_flagged(&mut self, key: &[u8], seq: u64, value: Option<&[u8]>, flags: u32) {
        let (key_len, value_len) = match (
            u32::try_from(key.len()),
            value.map(|v| u32::try_from(v.len())),
        ) {
            (Ok(k), None) => (k, TOMBSTONE),
            (Ok(k), Some(Ok(v))) if v != TOMBSTONE => (k, v),
            // The LSM refuses such batches before they get here.
            _ => panic!("memtable entry too large: key {} bytes", key.len()),
        };
        let p = Probe::new(key, seq);
        let height = self.w.random_height();
        let head = self.list.head;
        let mut preds = [head; MAX_HEIGHT];
        let f = &self.list.fingers[finger_slot(p.tag)];
        // Levels of `preds` found (the rest are the head, unused).
        let found = if self.place_from_finger(&p, f, height, &mut preds) {
            self.w.from_finger += 1;
            height
        } else {
            self.w.full_searches += 1;
            self.list.find_preds(&p, &mut preds);
            if f.tag.load(AtomicOrdering::Relaxed) != p.tag {
                // The slot changes hands: the old region's starts would
                // only send this one's readers elsewhere.
                f.tag.store(p.tag, AtomicOrdering::Relaxed);
                Finger::store(&f.starts, &[ptr::null_mut(); START_LEVELS]);
            }
            Finger::store(&f.preds, &preds[..FINGER_LEVELS]);
            MAX_HEIGHT
        };
        // The first key of its region: the node before it has another
        // prefix. Its predecessors become the region's starts (the levels
        // not walked keep theirs, which are before the region too).
        // SAFETY: `preds[0]` is the head or a published node.
        if preds[0] == head || !unsafe { p.same_prefix(preds[0]) } {
            Finger::store(&f.starts, &preds[..found.min(START_LEVELS)]);
        }

        let v = value.unwrap_or_default();
        let size = HEADER + 8 * height + key.len() + v.len();
        let node = self.w.arena.alloc(size).cast::<Node>().as_ptr();
        self.w.bytes += size.div_ceil(8) * 8;
        // SAFETY: `node` is fresh arena memory of `size` bytes, 8-aligned,
        // invisible to readers until linked below; `preds[i]` are the head
        // or published nodes with height > i (found on level i).
        unsafe {
            ptr::write(
                node,
                Node {
                    head: p.head,
                    head2: p.head2,
                    head3: p.head3,
                    seq,
                    key_len,
                    value_len,
                    height: height as u32,
                    flags,
                },
            );
            for (i, &pred) in preds.iter().enumerate().take(height) {
                ptr::write(tower(node, i), AtomicPtr::new(next(pred, i)));
            }
            let at = data(node, height);
            ptr::copy_nonoverlapping(key.as_ptr(), at, key.len());
            ptr::copy_nonoverlapping(v.as_ptr(), at.add(key.len()), v.len());
            // Publish, bottom level first (see the file's essay).
            for (i, &pred) in preds.iter().enumerate().take(height) {
                slot(pred, i).store(node, AtomicOrdering::Release);
            }
        }
        if height > self.list.height.load(AtomicOrdering::Relaxed) {
            self.list.height.store(height, AtomicOrdering::Release);
        }
        self.list.len.fetch_add(1, AtomicOrdering::Release);
    }

    /// Fills `preds[..height]` from the finger of `p`'s prefix, if it
    /// has one that is before `p` and close to it; updates the finger.
    fn place_from_finger(
        &self,
        p: &Probe<'_>,
        f: &Finger,
        height: usize,
        preds: &mut [NodePtr; MAX_HEIGHT],
    ) -> bool {
        if height > FINGER_LEVELS {
            return false;
        }
        let head = self.list.head;
        // Only this writer stores fingers, so its own loads need no ordering.
        let start = f.preds[0].load(AtomicOrdering::Relaxed);
        // SAFETY: a non-null finger is a published node or the head.
        if f.tag.load(AtomicOrdering::Relaxed) != p.tag
            || start.is_null()
            || (start != head && unsafe { cmp_node(start, p) } != Ordering::Less)
        {
            return false;
        }
        let mut near = true;
        for (level, (pred, start)) in preds.iter_mut().zip(&f.preds).take(height).enumerate() {
            let start = start.load(AtomicOrdering::Relaxed);
            // SAFETY: `start` is the head or a node found on `level`, and is
            // not after `f.preds[0]`, which is before `p` (the writer's
            // slots are consistent: it wrote them all).
            let (x, _, ok) = unsafe { self.list.walk(start, level, p, WALK_BUDGET) };
            if !ok {
                near = false;
                break;
            }
            *pred = x;
        }
        if near {
            Finger::store(&f.preds, &preds[..height]);
            return true;
        }
        self.descend_from_finger(p, f, preds)
    }

    /// The second chance of [`Self::place_from_finger`]: `p` is after the
    /// finger but farther than the walk budget on its own levels — as when
    /// a batch inserts a conversation's postings term by term, each
    /// hundreds of nodes past the last. Descends from the finger's top
    /// level, where a step passes ~4^level nodes, instead of searching from
    /// the list's head through every level. Fills `preds[..FINGER_LEVELS]`.
    ///
    /// Valid starts, level by level: `f.preds[level]` is before `p` (it is
    /// not after `f.preds[0]`, which the caller checked is), and a node the
    /// walk stopped at on the level above is before `p` and taller than
    /// this level.
    fn descend_from_finger(
        &self,
        p: &Probe<'_>,
        f: &Finger,
        preds: &mut [NodePtr; MAX_HEIGHT],
    ) -> bool {
        let mut above: Option<NodePtr> = None;
        for level in (0..FINGER_LEVELS).rev() {
            let start = above.unwrap_or_else(|| f.preds[level].load(AtomicOrdering::Relaxed));
            // SAFETY: see above; `start` is the head or a node of height
            // > `level` before `p`.
            let (x, _, ok) = unsafe { self.list.walk(start, level, p, WALK_BUDGET) };
            if !ok {
                return false;
            }
            // Moved: the finger's own start on the next level may be behind.
            if x != start || above.is_some() {
                above = Some(x);
            }
            preds[level] = x;
        }
        Finger::store(&f.preds, &preds[..FINGER_LEVELS]);
        true
    }
}

/// The finger slot of a prefix hash.
fn finger_slot(tag: u64) -> usize {
    // The tag is a Fibonacci hash: its top bits mix every input bit.
    (tag >> (64 - FINGER_SLOTS.trailing_zeros())) as usize
}

#[cfg(test)]
pub(crate) fn cmp_for_test(a: &[u8], a_seq: u64, b: &[u8], b_seq: u64) -> Ordering {
    let list = SkipList::new();
    list.writer().insert(a, a_seq, None);
    let n = list.first().map(|e| e.node).unwrap_or(ptr::null_mut());
    assert!(!n.is_null());
    // SAFETY: a published node of `list`, which outlives the call.
    unsafe { cmp_node(n, &Probe::new(b, b_seq)) }
}
