//! The shards whose replica on this node was removed (see `membership`,
//! "Retirement"): elections stay off for them and their reads and writes
//! are routed, across restarts.
//!
//! # `RETIRED`, byte by byte
//!
//! `[version u8 = 1][postcard(Vec<u32> shard ids)]`, written to
//! `RETIRED.tmp`, fsynced, renamed over `RETIRED`, directory fsynced.
//! Absent means none.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::cluster::identity::{io, write_durably};
#[cfg(test)]
use crate::error::Error;
use crate::error::Result;
use crate::ids::ShardId;
use crate::storage::codec;

/// The shards this node no longer replicates, persisted in `RETIRED`.
#[derive(Debug)]
pub struct Retired {
    path: PathBuf,
    shards: Mutex<BTreeSet<ShardId>>,
}

impl Retired {
    /// Reads `<dir>/RETIRED` (absent: none).
    pub fn load(dir: &Path) -> Result<Retired> {
        let path = dir.join("RETIRED");
        let shards = match std::fs::read(&path) {
            Ok(bytes) => codec::decode::<Vec<u32>>("retired shards", &bytes)?
                .into_iter()
                .map(ShardId)
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(io("read", &path, e)),
        };
        Ok(Retired {
            path,
            shards: Mutex::new(shards),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<ShardId>> {
        self.shards
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `shard` is retired here.
    pub fn contains(&self, shard: ShardId) -> bool {
        self.lock().contains(&shard)
    }

    /// The retired shards.
    pub fn all(&self) -> BTreeSet<ShardId> {
        self.lock().clone()
    }

    /// Marks `shard` retired (durably). Returns false if it already was.
    pub fn retire(&self, shard: ShardId) -> Result<bool> {
        let mut s = self.lock();
        if !s.insert(shard) {
            return Ok(false);
        }
        self.persist(&s)?;
        Ok(true)
    }

    /// Un-retires `shard` (durably). Returns false if it was not retired.
    pub fn revive(&self, shard: ShardId) -> Result<bool> {
        let mut s = self.lock();
        if !s.remove(&shard) {
            return Ok(false);
        }
        self.persist(&s)?;
        Ok(true)
    }

    fn persist(&self, s: &BTreeSet<ShardId>) -> Result<()> {
        let ids: Vec<u32> = s.iter().map(|s| s.0).collect();
        let bytes = codec::encode("retired shards", &ids)?;
        write_durably(&self.path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn retired_shards_survive_a_reload_and_revive() {
        let dir = tempfile::tempdir().unwrap();
        let r = Retired::load(dir.path()).unwrap();
        assert!(r.all().is_empty());
        assert!(r.retire(ShardId(3)).unwrap());
        assert!(!r.retire(ShardId(3)).unwrap());
        assert!(r.retire(ShardId(5)).unwrap());
        let r = Retired::load(dir.path()).unwrap();
        assert_eq!(r.all(), BTreeSet::from([ShardId(3), ShardId(5)]));
        assert!(r.revive(ShardId(3)).unwrap());
        assert!(!r.revive(ShardId(3)).unwrap());
        let r = Retired::load(dir.path()).unwrap();
        assert_eq!(r.all(), BTreeSet::from([ShardId(5)]));
        std::fs::write(dir.path().join("RETIRED"), [9u8, 1, 2]).unwrap();
        assert!(matches!(
            Retired::load(dir.path()),
            Err(Error::Malformed { .. })
        ));
    }
}
