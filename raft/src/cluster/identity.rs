//! Files of a node's data directory that are not the engine's: `NODE`,
//! the node's identity, which keeps a data directory from being started as
//! another node or with another shard count; and the one way such files
//! are replaced (also `membership`'s `RETIRED`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::ids::NodeId;

/// An I/O failure on `path` as a storage error.
pub(crate) fn io(op: &'static str, path: &Path, e: std::io::Error) -> Error {
    Error::Storage(missive_engine::Error::Io {
        op,
        path: path.to_path_buf(),
        source: Arc::new(e),
    })
}

/// Replaces the file at `path` with `bytes` so that a crash leaves the old
/// or the new contents, never a mix: temp file, fsync, rename, directory
/// fsync.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .map_err(|e| io("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("rename", path, e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("fsync", dir, e))
}

/// The node's identity, stored at `<data>/NODE` so a data directory is
/// never started as another node or with another shard count:
/// `[version u8 = 1][postcard(Identity)]`, written to a temp file, fsynced,
/// renamed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Identity {
    pub(crate) id: NodeId,
    pub(crate) cluster: String,
    pub(crate) shards: u32,
}

/// The shard count a data directory was created with, if it was ever
/// started (its `NODE` record); `None` for a new directory.
pub fn recorded_shards(dir: &Path) -> Result<Option<u32>> {
    let path = dir.join("NODE");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let have: Identity = crate::storage::codec::decode("node identity", &bytes)?;
            Ok(Some(have.shards))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", &path, e)),
    }
}

/// Checks that `dir` belongs to `want` (records it, for a new directory).
pub(crate) fn check_identity(dir: &Path, want: &Identity) -> Result<()> {
    let path = dir.join("NODE");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let have: Identity = crate::storage::codec::decode("node identity", &bytes)?;
            if &have != want {
                return Err(Error::InvalidArgument(format!(
                    "{} belongs to node {} of cluster {:?} with {} shards; asked to start node {} of {:?} with {}",
                    dir.display(),
                    have.id,
                    have.cluster,
                    have.shards,
                    want.id,
                    want.cluster,
                    want.shards
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_durably(
            &path,
            &crate::storage::codec::encode("node identity", want)?,
        ),
        Err(e) => Err(io("read", &path, e)),
    }
}
