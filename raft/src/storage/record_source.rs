//! What apply reads and writes through: one state-machine call's pending
//! writes over the shard's record cache over the LSM.
//!
//! A later command of the same call sees an earlier one's effect (its
//! write is pending here, not yet in the LSM); the call's writes become one
//! atomic `WriteBatch`, with the shard's `Applied` record, so a crash
//! leaves all of them or none. Reads go through the shard's record cache
//! (`record_cache`'s essay: why it cannot serve a stale value); the cache
//! takes the written values once the batch is in the LSM ([`Records::written`]).
//!
//! Only keys that never expire may decide an outcome: the LSM's retention
//! filter uses the local clock, so a read of an expiring key could differ
//! between replicas.
//!
//! Under the state machine the source is the node's LSM; an application's
//! own tests run its rules over a `BTreeMap` ([`Records::over`]) with no
//! disk and no Raft.

use std::collections::{BTreeMap, HashMap};

use serde::de::DeserializeOwned;
use serde::Serialize;

use missive_engine::lsm::{BlobRef, Lsm, WriteBatch};

use crate::error::Result;
use crate::storage::codec;
use crate::storage::record_cache::RecordCache;

/// Where committed records are read from.
pub trait RecordSource: Send + Sync {
    /// The value under `key`, if any.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Up to `limit` records with keys in `[lo, hi)`, in key order.
    fn scan(&self, lo: &[u8], hi: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
}

impl RecordSource for Lsm {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(Lsm::get(self, key)?)
    }

    fn scan(&self, lo: &[u8], hi: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(Lsm::scan(
            self,
            lo,
            Some(hi),
            missive_engine::lsm::Direction::Forward,
            limit,
        )?)
    }
}

impl RecordSource for BTreeMap<Vec<u8>, Vec<u8>> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(BTreeMap::get(self, key).cloned())
    }

    fn scan(&self, lo: &[u8], hi: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if lo >= hi {
            return Ok(Vec::new());
        }
        Ok(self
            .range(lo.to_vec()..hi.to_vec())
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

/// One state-machine call's view of a shard's records. See the
/// [module documentation](self).
pub struct Records<'a> {
    source: &'a dyn RecordSource,
    /// The shard's records read before, as stored (its module's essay);
    /// none over a test's map.
    cache: Option<&'a mut RecordCache>,
    /// Writes so far; `None` deletes.
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// The pending writes whose value is already in a blob file, there
    /// (`Records::put_blob_ref`): the batch carries the reference.
    by_ref: HashMap<Vec<u8>, BlobRef>,
    /// Where the command being applied keeps its bulk bytes, if its log
    /// store moved them to a blob file (`storage/bulk.rs`).
    bulk: Option<BlobRef>,
    /// The key ranges `[lo, hi)` that are this shard's data
    /// (`SlotMap::key_ranges`); none over a test's map unless given.
    owned: &'a [(Vec<u8>, Option<Vec<u8>>)],
}

impl std::fmt::Debug for Records<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl<'a> Records<'a> {
    pub(crate) fn new(
        lsm: &'a Lsm,
        cache: &'a mut RecordCache,
        owned: &'a [(Vec<u8>, Option<Vec<u8>>)],
    ) -> Self {
        Records {
            source: lsm,
            cache: Some(cache),
            pending: BTreeMap::new(),
            by_ref: HashMap::new(),
            bulk: None,
            owned,
        }
    }

    /// Records over `source` with no cache: for an application's tests of
    /// its rules. Take the writes with [`Records::into_writes`]. They own
    /// no key ([`Records::owns`]) unless given ranges with
    /// [`Records::owning`].
    pub fn over(source: &'a dyn RecordSource) -> Self {
        Records {
            source,
            cache: None,
            pending: BTreeMap::new(),
            by_ref: HashMap::new(),
            bulk: None,
            owned: &[],
        }
    }

    /// These records, as the shard whose data is the key ranges `owned`
    /// (`[lo, hi)`, `None`: to the end): for tests.
    pub fn owning(mut self, owned: &'a [(Vec<u8>, Option<Vec<u8>>)]) -> Self {
        self.owned = owned;
        self
    }

    /// Whether `key` is this shard's data: a rule may then write it in the
    /// same batch instead of asking another shard. The same answer on
    /// every replica at the same log position: the ranges come from the
    /// slot map, which is fixed for the life of the cluster (a future
    /// split must change a shard's ranges at an entry of its own log, so
    /// that this stays true — docs/design.md §4.1).
    pub fn owns(&self, key: &[u8]) -> bool {
        crate::storage::state_machine::in_ranges(self.owned, key)
    }

    /// The writes so far, by key (`None`: deleted).
    pub fn into_writes(self) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        self.pending
    }

    /// Reads through the cache (filling it) to the source; an absent key
    /// gets an entry only if `keep_absence`.
    fn load(&mut self, key: &[u8], keep_absence: bool) -> Result<Option<Vec<u8>>> {
        let v = self.source.get(key)?;
        if let Some(cache) = self.cache.as_deref_mut() {
            match &v {
                Some(v) => cache.loaded(key, v),
                None if keep_absence => cache.loaded_absent(key),
                None => {}
            }
        }
        Ok(v)
    }

    /// The value under `key`: this call's own write, else the cache, else
    /// the LSM (and then the cache holds it too).
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.pending.get(key) {
            return Ok(v.clone());
        }
        if let Some(v) = self.cache.as_deref_mut().and_then(|c| c.get(key)) {
            return Ok(v.map(<[u8]>::to_vec));
        }
        self.load(key, false)
    }

    /// The record under `key`, decoded (`codec::decode`; `what` names it in
    /// errors). Decodes in place from the pending write or the cache.
    pub fn get_as<T: DeserializeOwned>(
        &mut self,
        what: &'static str,
        key: &[u8],
    ) -> Result<Option<T>> {
        self.get_as_kept(what, key, false)
    }

    /// [`Records::get_as`] for a record most keys lack and the rules read
    /// again and again (a user's push devices, on every delivery): its
    /// absence is cached too, so the next read does not search the LSM
    /// (`record_cache`'s essay says why that cannot go stale).
    pub fn get_as_often_absent<T: DeserializeOwned>(
        &mut self,
        what: &'static str,
        key: &[u8],
    ) -> Result<Option<T>> {
        self.get_as_kept(what, key, true)
    }

    fn get_as_kept<T: DeserializeOwned>(
        &mut self,
        what: &'static str,
        key: &[u8],
        keep_absence: bool,
    ) -> Result<Option<T>> {
        if let Some(v) = self.pending.get(key) {
            return v.as_deref().map(|v| codec::decode(what, v)).transpose();
        }
        if let Some(v) = self.cache.as_deref_mut().and_then(|c| c.get(key)) {
            return v.map(|v| codec::decode(what, v)).transpose();
        }
        self.load(key, keep_absence)?
            .map(|v| codec::decode(what, &v))
            .transpose()
    }

    /// Up to `limit` records with keys in `[lo, hi)`, in key order, as
    /// this call sees them: its own writes over the source (the cache is
    /// bypassed: it never holds a value the source lacks, only fewer).
    /// For reading a run of adjacent records at once, where point reads
    /// would each descend the LSM; only keys that never decide an outcome
    /// may be read this way if they can expire (see the module docs).
    pub fn scan(&mut self, lo: &[u8], hi: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if lo >= hi || limit == 0 {
            return Ok(Vec::new());
        }
        let mine: Vec<(&Vec<u8>, &Option<Vec<u8>>)> =
            self.pending.range(lo.to_vec()..hi.to_vec()).collect();
        // Each of this call's deletes may hide one of the source's first
        // records: read that many more.
        let deletes = mine.iter().filter(|(_, v)| v.is_none()).count();
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = self
            .source
            .scan(lo, hi, limit.saturating_add(deletes))?
            .into_iter()
            .collect();
        for (k, v) in mine {
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        Ok(merged.into_iter().take(limit).collect())
    }

    /// Writes `value` under `key`.
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.by_ref.remove(&key);
        self.pending.insert(key, Some(value));
    }

    /// Where the command being applied keeps its bulk bytes
    /// (`App::take_bulk`'s `prefix ‖ bytes`) in a blob file, when its log
    /// store put them there: a rule that stores exactly that value under
    /// a key writes it with [`Records::put_blob_ref`], and the bytes are
    /// not written again. `None`: the bytes are only in the command.
    pub fn bulk_ref(&self) -> Option<BlobRef> {
        self.bulk
    }

    /// Sets what [`Records::bulk_ref`] returns (per command, by apply).
    pub(crate) fn set_bulk_ref(&mut self, r: Option<BlobRef>) {
        self.bulk = r;
    }

    /// Writes `value` under `key` as the reference `r` (a
    /// [`Records::bulk_ref`]) to where its bytes already are: `value` must
    /// be those bytes (it is what this call's later reads see).
    pub fn put_blob_ref(&mut self, key: Vec<u8>, r: BlobRef, value: Vec<u8>) {
        debug_assert_eq!(value.len(), r.len as usize, "a reference to another value");
        self.pending.insert(key.clone(), Some(value));
        self.by_ref.insert(key, r);
    }

    /// The blob references the batch carries (apply makes sure each is
    /// synced before the LSM takes it).
    pub(crate) fn blob_refs(&self) -> impl Iterator<Item = &BlobRef> {
        self.by_ref.values()
    }

    /// Writes `v`, encoded (`codec::encode`), under `key`.
    pub fn put_as<T: Serialize>(&mut self, key: Vec<u8>, v: &T) -> Result<()> {
        let bytes = codec::encode("stored record", v)?;
        self.put(key, bytes);
        Ok(())
    }

    /// Deletes `key`.
    pub fn delete(&mut self, key: Vec<u8>) {
        self.by_ref.remove(&key);
        self.pending.insert(key, None);
    }

    /// The accumulated writes, as one atomic batch.
    pub(crate) fn batch(&self) -> WriteBatch {
        let mut b = WriteBatch::new();
        for (k, v) in &self.pending {
            match (v, self.by_ref.get(k)) {
                (Some(_), Some(r)) => b.put_blob_ref(k, r),
                (Some(v), None) => b.put(k, v),
                (None, _) => b.delete(k),
            };
        }
        b
    }

    /// Call once [`Records::batch`]'s batch is in the LSM: the cache takes
    /// the written values.
    pub(crate) fn written(self) {
        if let Some(cache) = self.cache {
            for (k, v) in &self.pending {
                cache.written(k, v.as_deref());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn k(i: u8) -> Vec<u8> {
        vec![7, i]
    }

    #[test]
    fn a_scan_sees_this_calls_writes_over_the_source() {
        let source: BTreeMap<Vec<u8>, Vec<u8>> = (1..=6).map(|i| (k(i), vec![i])).collect();
        let mut r = Records::over(&source);
        r.delete(k(1));
        r.delete(k(2));
        r.put(k(3), vec![30]);
        r.put(k(0), vec![0]);
        r.put(k(9), vec![9]);
        let keys = |v: Vec<(Vec<u8>, Vec<u8>)>| {
            v.into_iter().map(|(k, v)| (k[1], v[0])).collect::<Vec<_>>()
        };
        // The two deletes hide the source's first two: the scan still
        // returns `limit` records when that many exist.
        assert_eq!(
            keys(r.scan(&k(0), &k(8), 4).unwrap()),
            vec![(0, 0), (3, 30), (4, 4), (5, 5)]
        );
        assert_eq!(
            keys(r.scan(&k(1), &k(255), 10).unwrap()),
            vec![(3, 30), (4, 4), (5, 5), (6, 6), (9, 9)]
        );
        assert!(r.scan(&k(5), &k(5), 10).unwrap().is_empty());
        assert!(r.scan(&k(0), &k(9), 0).unwrap().is_empty());
    }
}
