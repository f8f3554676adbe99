//! A follower's side of a snapshot transfer: the chunks of each shard's
//! incoming snapshot, appended in order to a staging file under
//! `<data>/snapshots/` (format in `snapshot`), handed to openraft to install
//! once the leader says the last one was sent.
//!
//! One transfer per shard at a time: chunk 0 starts (or restarts) it, and a
//! chunk out of order or of another snapshot id is refused, so the leader
//! sends the snapshot again from the start. Staged files of a transfer
//! interrupted by a restart are deleted at start (`node`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::cluster::identity::io;
use crate::error::{Error, Result};
use crate::ids::ShardId;
use crate::storage::snapshot::{Chunk, SnapshotWriter};

/// The snapshots being received, per shard.
pub(crate) struct SnapshotReceiver {
    /// Where the staging files go.
    dir: PathBuf,
    receiving: Mutex<HashMap<ShardId, Receiving>>,
}

/// One transfer under way.
struct Receiving {
    snapshot_id: String,
    /// The chunk expected next (chunks count from 0).
    next: u64,
    writer: SnapshotWriter,
}

impl SnapshotReceiver {
    /// Receives into files under `dir` (created on the first chunk).
    pub(crate) fn new(dir: PathBuf) -> Self {
        SnapshotReceiver {
            dir,
            receiving: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ShardId, Receiving>> {
        self.receiving
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The staging file of `shard`'s snapshot `snapshot_id`, created empty.
    fn create(&self, shard: ShardId, snapshot_id: &str) -> Result<SnapshotWriter> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io("create", &self.dir, e))?;
        let path = self
            .dir
            .join(format!("recv-{}-{}.snap", shard.0, sanitize(snapshot_id)));
        SnapshotWriter::create(&path)
    }

    /// Appends chunk `seq` of `shard`'s snapshot `snapshot_id`.
    pub(crate) fn chunk(
        &self,
        shard: ShardId,
        snapshot_id: String,
        seq: u64,
        chunk: &Chunk,
    ) -> Result<()> {
        let mut r = self.lock();
        if seq == 0 {
            let writer = self.create(shard, &snapshot_id)?;
            r.insert(
                shard,
                Receiving {
                    snapshot_id: snapshot_id.clone(),
                    next: 0,
                    writer,
                },
            );
        }
        let Some(rcv) = r.get_mut(&shard) else {
            return Err(Error::malformed(
                "snapshot chunk",
                format!("chunk {seq} of a snapshot never begun"),
            ));
        };
        if rcv.snapshot_id != snapshot_id || rcv.next != seq {
            return Err(Error::malformed(
                "snapshot chunk",
                format!(
                    "expected chunk {} of {}, got {seq} of {snapshot_id}",
                    rcv.next, rcv.snapshot_id
                ),
            ));
        }
        rcv.writer.push(chunk)?;
        rcv.next += 1;
        Ok(())
    }

    /// Ends `shard`'s transfer of `snapshot_id`, sent in `chunks` chunks:
    /// the complete, synced file to install.
    pub(crate) fn done(&self, shard: ShardId, snapshot_id: &str, chunks: u64) -> Result<PathBuf> {
        let mut r = self.lock();
        match r.remove(&shard) {
            Some(rcv) if rcv.snapshot_id == snapshot_id && rcv.next == chunks => {
                rcv.writer.finish()
            }
            // An empty shard's snapshot has no chunks at all.
            None if chunks == 0 => self.create(shard, snapshot_id)?.finish(),
            _ => Err(Error::malformed(
                "snapshot",
                format!("{snapshot_id} ended before all {chunks} chunks arrived"),
            )),
        }
    }
}

/// A snapshot id (the leader's choice) made safe as part of a file name.
fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn chunks_in_order_make_one_file_and_a_gap_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let rx = SnapshotReceiver::new(dir.path().join("snapshots"));
        let shard = ShardId(3);
        let chunk: Chunk = vec![(b"k".to_vec(), b"v".to_vec())];
        rx.chunk(shard, "1-2/x".into(), 0, &chunk).unwrap();
        rx.chunk(shard, "1-2/x".into(), 1, &chunk).unwrap();
        let err = rx.chunk(shard, "1-2/x".into(), 3, &chunk).unwrap_err();
        assert!(err.to_string().contains("expected chunk 2"), "{err}");
        let path = rx.done(shard, "1-2/x", 2).unwrap();
        assert!(path.ends_with("recv-3-1-2_x.snap"), "{}", path.display());
        // A transfer that ends early is refused.
        rx.chunk(shard, "y".into(), 0, &chunk).unwrap();
        assert!(rx.done(shard, "y", 2).is_err());
        // An empty snapshot has no chunks.
        assert!(rx.done(ShardId(4), "z", 0).is_ok());
    }
}
