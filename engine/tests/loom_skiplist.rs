//! A loom model of the memtable skiplist's publication protocol
//! (`src/lsm/memtable/skiplist.rs`, "Publication" and "Fingers"), checked
//! under every interleaving loom explores and under the C++11 memory model
//! it simulates — the part of the memtable that no test on real hardware
//! can show right, and that Miri (not installed here) would otherwise
//! check.
//!
//! The model keeps the protocol and nothing else: one writer fills a node
//! completely (its key and value through loom's `UnsafeCell`, so a read that
//! does not happen after the write is reported; its own `next` pointers),
//! then links it bottom-up with `Release` stores into its predecessors,
//! raises the list height with `Release`, and publishes a region start
//! (the readers' finger) with `Release`. Readers load every pointer with
//! `Acquire`, search from the top of the height they see or descend from
//! the finger after checking it sorts before the key, and must (1) only
//! ever read fully written nodes, (2) see each level sorted, and (3) find
//! every key whose insert finished before their search began.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p missive-engine --release
//! --test loom_skiplist` (`.ci/run` does, with its own target directory).
//! `links_published_relaxed_are_caught` runs the same model with the link
//! stores `Relaxed` and expects loom to report the race: the model can
//! fail. `reading_the_successor_again_is_caught` keeps the bug this model
//! found in the list (a seek read its predecessor's `next` twice).
#![cfg(loom)]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use std::ptr;

/// Levels in the model (the real list has 12; two already give a node
/// that is visible at one level and not yet at the other).
const LEVELS: usize = 2;

struct Node {
    key: UnsafeCell<u64>,
    value: UnsafeCell<u64>,
    height: usize,
    next: [AtomicPtr<Node>; LEVELS],
}

impl Node {
    fn alloc(height: usize) -> *mut Node {
        Box::into_raw(Box::new(Node {
            key: UnsafeCell::new(0),
            value: UnsafeCell::new(0),
            height,
            next: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
        }))
    }
}

/// The key of a published node (a tracked read: loom reports it if the
/// node's write does not happen before it).
///
/// # Safety
/// `n` is a node of the list (never freed while the model runs).
unsafe fn key(n: *mut Node) -> u64 {
    unsafe { (*n).key.with(|k| *k) }
}

struct List {
    /// Sentinel of LEVELS levels; its key is never read.
    head: *mut Node,
    /// Levels in use; only grows.
    height: AtomicUsize,
    /// The readers' finger: a node before every key ≥ 100 (or null).
    start: AtomicPtr<Node>,
    /// Every node, freed when the model's execution ends.
    nodes: loom::sync::Mutex<Vec<*mut Node>>,
    /// How the writer links a node into its predecessors (the real list:
    /// Release).
    link: Ordering,
    /// Whether a search reads its predecessor's `next` again at the end
    /// (the real list: no, it answers the node it saw).
    reload: bool,
}

// SAFETY: the model shares raw nodes the way the real list does: written
// by one writer before publication, read through Acquire loads after.
unsafe impl Send for List {}
// SAFETY: as above.
unsafe impl Sync for List {}

impl List {
    fn new(link: Ordering, reload: bool) -> List {
        let head = Node::alloc(LEVELS);
        List {
            head,
            height: AtomicUsize::new(1),
            start: AtomicPtr::new(ptr::null_mut()),
            nodes: loom::sync::Mutex::new(vec![head]),
            link,
            reload,
        }
    }

    /// The writer's insert, in the real list's order of steps.
    fn insert(&self, k: u64, height: usize) {
        let node = Node::alloc(height);
        self.nodes.lock().unwrap().push(node);
        // SAFETY: the node is ours until linked; nodes live until drop.
        unsafe {
            // 1. Fill it completely while nobody can see it.
            (*node).key.with_mut(|p| *p = k);
            (*node).value.with_mut(|p| *p = k * 10);
            // 2. Its predecessors at each level (the writer is alone: the
            //    real list walks with the same Acquire loads).
            let mut preds = [self.head; LEVELS];
            let mut x = self.head;
            for level in (0..LEVELS).rev() {
                loop {
                    let n = (*x).next[level].load(Ordering::Acquire);
                    if n.is_null() || key(n) >= k {
                        break;
                    }
                    x = n;
                }
                preds[level] = x;
            }
            // 3. Its own tower (plain stores in the real list).
            for (i, &pred) in preds.iter().enumerate().take(height) {
                let succ = (*pred).next[i].load(Ordering::Relaxed);
                (*node).next[i].store(succ, Ordering::Relaxed);
            }
            // 4. Link it, bottom-up: every level stays a sorted sub-list
            //    of level 0.
            for (i, &pred) in preds.iter().enumerate().take(height) {
                (*pred).next[i].store(node, self.link);
            }
            // 5. The height in use only grows.
            if height > self.height.load(Ordering::Relaxed) {
                self.height.store(height, Ordering::Release);
            }
            // 6. A new first key of the region refreshes the readers'
            //    finger with its predecessor.
            if k >= 100 && (preds[0] == self.head || key(preds[0]) < 100) {
                self.start.store(preds[0], Ordering::Release);
            }
        }
    }

    /// A reader's point search: the node with `k`, its value checked.
    fn find(&self, k: u64, from_finger: bool) -> bool {
        // SAFETY: every pointer was loaded with Acquire from a published
        // node's tower or the head; nodes live until drop.
        unsafe {
            let mut x = self.head;
            let mut top = self.height.load(Ordering::Acquire);
            if from_finger {
                let s = self.start.load(Ordering::Acquire);
                // Any node before the key is a valid place to descend from.
                if !s.is_null() && (s == self.head || key(s) < k) {
                    x = s;
                    top = 1.min((*s).height);
                }
            }
            let mut last = None;
            let mut after = ptr::null_mut();
            for level in (0..top).rev() {
                loop {
                    let n = (*x).next[level].load(Ordering::Acquire);
                    after = n;
                    if n.is_null() {
                        break;
                    }
                    let nk = key(n);
                    if level == 0 {
                        assert!(last.is_none_or(|l| l < nk), "level 0 out of order");
                        last = Some(nk);
                    }
                    if nk >= k {
                        break;
                    }
                    x = n;
                }
            }
            // The node the walk saw after the predecessor, as the real
            // `last_before` returns it. Reading the predecessor's `next`
            // again (`self.reload`, what the list did before this model
            // ran) may meet a node linked in between that sorts before `k`.
            let n = if self.reload {
                (*x).next[0].load(Ordering::Acquire)
            } else {
                after
            };
            if n.is_null() || key(n) != k {
                return false;
            }
            assert_eq!((*n).value.with(|v| *v), k * 10, "a node read half written");
            true
        }
    }
}

impl List {
    /// Level 0's keys and the height, for a failure's message.
    fn dump(&self) -> (Vec<u64>, usize, u64) {
        let mut out = Vec::new();
        // SAFETY: as in `find`.
        unsafe {
            let mut x = (*self.head).next[0].load(Ordering::Acquire);
            while !x.is_null() {
                out.push(key(x));
                x = (*x).next[0].load(Ordering::Acquire);
            }
            let s = self.start.load(Ordering::Acquire);
            let sk = if s.is_null() {
                0
            } else if s == self.head {
                1
            } else {
                key(s)
            };
            (out, self.height.load(Ordering::Acquire), sk)
        }
    }
}

impl Drop for List {
    fn drop(&mut self) {
        for n in self.nodes.lock().unwrap().drain(..) {
            // SAFETY: allocated by Node::alloc, freed once, after every
            // thread of the execution has joined.
            drop(unsafe { Box::from_raw(n) });
        }
    }
}

/// One writer inserting into a list that already holds a key, one reader
/// searching top-down and one through the finger, each checking what the
/// writer announced as finished.
fn model(link: Ordering, reload: bool) {
    let mut builder = loom::model::Builder::new();
    // Two preemptions already reach every interleaving of one link step
    // against one search step; three take minutes.
    builder.preemption_bound = Some(2);
    builder.check(move || {
        let list = Arc::new(List::new(link, reload));
        list.insert(50, 1);
        let done = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
        let writer = {
            let (list, done) = (Arc::clone(&list), Arc::clone(&done));
            thread::spawn(move || {
                list.insert(120, 2);
                done[0].store(true, Ordering::Release);
                list.insert(110, 2);
                done[1].store(true, Ordering::Release);
            })
        };
        let readers: Vec<_> = [false, true]
            .into_iter()
            .map(|from_finger| {
                let (list, done) = (Arc::clone(&list), Arc::clone(&done));
                thread::spawn(move || {
                    for (i, k) in [120u64, 110].into_iter().enumerate() {
                        let finished = done[i].load(Ordering::Acquire);
                        let found = list.find(k, from_finger);
                        assert!(
                            found || !finished,
                            "finished insert of {k} not found (finger: {from_finger}): {:?}",
                            list.dump()
                        );
                    }
                })
            })
            .collect();
        writer.join().unwrap();
        for r in readers {
            r.join().unwrap();
        }
        assert!(list.find(110, true) && list.find(120, false));
    });
}

#[test]
fn published_nodes_are_whole_sorted_and_found() {
    model(Ordering::Release, false);
}

#[test]
#[should_panic(expected = "Causality violation")]
fn links_published_relaxed_are_caught() {
    model(Ordering::Relaxed, false);
}

/// The race this model found in the list: a seek that read its
/// predecessor's `next` a second time answered a node linked in between,
/// which sorted before the key (a newer, unpublished version of it, or a
/// smaller key), so a point read missed a finished insert.
#[test]
#[should_panic(expected = "not found")]
fn reading_the_successor_again_is_caught() {
    model(Ordering::Release, true);
}
