//! The shared, size-bounded cache of decoded blocks (quick_cache: a
//! scan-resistant CLOCK-Pro variant, so one long page-back scan does not
//! flush the hot conversations out).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use quick_cache::sync::Cache;
use quick_cache::Weighter;

use crate::lsm::table::block::DecodedBlock;
use crate::lsm::table::TableId;

#[derive(Clone)]
struct BlockWeighter;

impl Weighter<(TableId, u32), Arc<DecodedBlock>> for BlockWeighter {
    fn weight(&self, _key: &(TableId, u32), block: &Arc<DecodedBlock>) -> u64 {
        block.memory() as u64
    }
}

/// Decoded blocks by (table, block number).
pub(crate) struct BlockCache {
    cache: Cache<(TableId, u32), Arc<DecodedBlock>, BlockWeighter>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("bytes", &self.cache.weight())
            .finish()
    }
}

impl BlockCache {
    /// A cache holding about `capacity_bytes` of decoded blocks.
    pub fn new(capacity_bytes: u64) -> Self {
        // quick_cache wants an estimate of the item count; blocks are ~16 KiB.
        let items = (capacity_bytes / 16_384).max(16) as usize;
        BlockCache {
            cache: Cache::with_weighter(items, capacity_bytes.max(1), BlockWeighter),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn get(&self, key: (TableId, u32)) -> Option<Arc<DecodedBlock>> {
        let v = self.cache.get(&key);
        let c = if v.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        c.fetch_add(1, Ordering::Relaxed);
        v
    }

    pub fn insert(&self, key: (TableId, u32), block: Arc<DecodedBlock>) {
        self.cache.insert(key, block);
    }

    /// (hits, misses) since open.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}
