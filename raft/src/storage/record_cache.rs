//! The records apply reads most, kept in memory per shard.
//!
//! Every command reads a few small records before it writes: a message its
//! conversation (membership), the conversation's head, dedup and outbox
//! head; an inbox delivery the user's view of the conversation and the
//! user's head. Through the LSM each is a walk of the active memtable's
//! skiplist, of any immutable ones, and of the tables' filters and blocks —
//! 14 % of `missived`'s CPU at 5 000 msgs/s, most of it skiplist compares
//! for keys the memtable does not hold. A hot conversation's records are
//! read again within milliseconds, so a small cache of encoded values in
//! front of the LSM answers almost all of them.
//!
//! # Why it cannot serve a stale value
//!
//! Invariant: an entry holds exactly the value the LSM holds for its key.
//!
//! - Only the shard's state machine writes the shard's keys (apply and
//!   snapshot install; retention deletes only expiring keys, which apply
//!   never reads), and it runs one call at a time with `&mut` access.
//! - An entry is made from a value just read from the LSM ([`loaded`]).
//!   What a read sees is already in the LSM, whatever happens to the batch
//!   being built.
//! - After a batch is in the LSM, every key it wrote that has an entry is
//!   updated to the written value, a delete removes it ([`written`]). A
//!   batch the LSM refused changes nothing (and stops the state machine).
//! - Installing a snapshot replaces the shard's data wholesale: the cache
//!   is emptied ([`clear`]).
//!
//! Keys written but never read here (messages, inbox and outbox entries,
//! dedup records — read once, absent) never get an entry: only a read
//! makes one, and only a read that found a value — or a read of a record
//! the rules expect to be absent for most keys and read again and again
//! (a user's push devices, read on every delivery to them: 4 200 of the
//! 7 500–8 400 misses a second at 3 000 msgs/s before it was remembered),
//! which asks for its absence to be kept ([`loaded_absent`]).
//!
//! An absent entry obeys the same invariant: it is made from a read that
//! found nothing, and every write of its key after that goes through
//! [`written`]. The one writer outside apply, retention, only deletes,
//! and a delete cannot make "absent" untrue.
//!
//! [`loaded`]: RecordCache::loaded
//! [`loaded_absent`]: RecordCache::loaded_absent
//! [`written`]: RecordCache::written
//! [`clear`]: RecordCache::clear

use quick_cache::unsync::Cache;
use quick_cache::Weighter;

/// Bytes of records kept per shard (keys, values and a per-entry estimate
/// of the cache's own overhead). A record is ~40–200 bytes with its key, so
/// this holds tens of thousands of users' and conversations' records.
pub const CACHE_BYTES: u64 = 8 << 20;

/// What an entry costs beyond its key and value bytes (the cache's slot,
/// two `Vec` headers, allocator rounding), bytes.
const ENTRY_OVERHEAD: u64 = 64;

#[derive(Clone)]
struct RecordWeighter;

impl Weighter<Vec<u8>, Option<Vec<u8>>> for RecordWeighter {
    fn weight(&self, key: &Vec<u8>, value: &Option<Vec<u8>>) -> u64 {
        (key.len() + value.as_ref().map_or(0, Vec::len)) as u64 + ENTRY_OVERHEAD
    }
}

/// One shard's cache of records as stored (see the module docs): a key's
/// value, or `None` where the key is known to be absent.
pub struct RecordCache {
    cache: Cache<Vec<u8>, Option<Vec<u8>>, RecordWeighter>,
    hits: u64,
    misses: u64,
}

impl std::fmt::Debug for RecordCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordCache")
            .field("entries", &self.cache.len())
            .field("bytes", &self.cache.weight())
            .field("hits", &self.hits)
            .field("misses", &self.misses)
            .finish()
    }
}

impl RecordCache {
    /// An empty cache of about `capacity_bytes`.
    pub fn new(capacity_bytes: u64) -> Self {
        // quick_cache wants an estimate of the item count.
        let items = (capacity_bytes / 128).max(16) as usize;
        RecordCache {
            cache: Cache::with_weighter(items, capacity_bytes.max(1), RecordWeighter),
            hits: 0,
            misses: 0,
        }
    }

    /// The stored value of `key` (`Some(None)`: known to be absent), if
    /// it has an entry.
    pub fn get(&mut self, key: &[u8]) -> Option<Option<&[u8]>> {
        match self.cache.get(key) {
            Some(v) => {
                self.hits += 1;
                Some(v.as_deref())
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    /// `key` was just read from the LSM and holds `value`.
    pub fn loaded(&mut self, key: &[u8], value: &[u8]) {
        self.cache.insert(key.to_vec(), Some(value.to_vec()));
    }

    /// `key` was just read from the LSM and is absent there; remember that
    /// (only for records read often and usually absent: see the module
    /// docs).
    pub fn loaded_absent(&mut self, key: &[u8]) {
        self.cache.insert(key.to_vec(), None);
    }

    /// A batch that set `key` to `value` (`None`: deleted it) is in the
    /// LSM: an entry of `key`, present or absent, takes the new value.
    pub fn written(&mut self, key: &[u8], value: Option<&[u8]>) {
        if let Some(mut e) = self.cache.get_mut(key) {
            let e = &mut *e;
            match (e.as_mut(), value) {
                (Some(e), Some(v)) => {
                    e.clear();
                    e.extend_from_slice(v);
                }
                (_, v) => *e = v.map(<[u8]>::to_vec),
            }
        }
    }

    /// Forgets everything (the shard's data was replaced).
    pub fn clear(&mut self) {
        self.cache.clear();
    }

    /// (hits, misses) since the last call.
    pub fn take_counts(&mut self) -> (u64, u64) {
        (
            std::mem::take(&mut self.hits),
            std::mem::take(&mut self.misses),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_makes_an_entry_and_a_write_updates_only_entries() {
        let mut c = RecordCache::new(1 << 20);
        assert_eq!(c.get(b"head"), None);
        c.loaded(b"head", b"1");
        assert_eq!(c.get(b"head"), Some(Some(&b"1"[..])));
        c.written(b"head", Some(b"22"));
        assert_eq!(c.get(b"head"), Some(Some(&b"22"[..])));
        // Written but never read: no entry.
        c.written(b"msg", Some(b"body"));
        assert_eq!(c.get(b"msg"), None);
        // A delete leaves the entry saying "absent".
        c.written(b"head", None);
        assert_eq!(c.get(b"head"), Some(None));
        c.loaded(b"a", b"1");
        c.clear();
        assert_eq!(c.get(b"a"), None);
        assert_eq!(c.take_counts(), (3, 3));
        assert_eq!(c.take_counts(), (0, 0));
    }

    #[test]
    fn a_remembered_absence_follows_the_writes_of_its_key() {
        let mut c = RecordCache::new(1 << 20);
        c.loaded_absent(b"devices");
        assert_eq!(c.get(b"devices"), Some(None));
        c.written(b"devices", Some(b"[7]"));
        assert_eq!(c.get(b"devices"), Some(Some(&b"[7]"[..])));
        c.written(b"devices", None);
        assert_eq!(c.get(b"devices"), Some(None));
        c.written(b"devices", Some(b"[8]"));
        assert_eq!(c.get(b"devices"), Some(Some(&b"[8]"[..])));
        c.clear();
        assert_eq!(c.get(b"devices"), None);
    }

    #[test]
    fn the_byte_budget_holds() {
        let mut c = RecordCache::new(64 << 10);
        for i in 0..10_000u32 {
            c.loaded(&i.to_be_bytes(), &[7u8; 100]);
        }
        assert!(c.cache.weight() <= 64 << 10, "{}", c.cache.weight());
        assert!(c.cache.len() > 100, "{}", c.cache.len());
    }
}
