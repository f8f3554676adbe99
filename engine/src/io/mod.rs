//! File I/O behind a small trait, so the log runs on three back ends:
//!
//! - [`OsFs::std`]: plain `pwrite` + `fdatasync` (portable; the fallback).
//! - [`OsFs::uring`]: the same calls submitted through io_uring, one ring per
//!   thread (the log's writer and syncer threads each get their own, so a
//!   sync in flight never blocks the next group's write).
//! - [`FaultFs`]: an in-memory file system that remembers what was synced
//!   and, when a test "crashes" it, throws away every write and directory
//!   change that was not. It can also fail a chosen fsync. A SIGKILL keeps
//!   the page cache and so cannot catch a missing fsync; this can.
//!
//! The log never calls `std::fs` directly: everything goes through
//! [`FileSystem`] and [`LogFile`].

mod fault;
pub(crate) mod fd;
mod std_fs;
mod uring;

use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use fault::{FaultFs, FaultFsControl};
pub use std_fs::OsFs;

/// An open file, positioned I/O only (no cursor), shareable across threads.
pub trait LogFile: Send + Sync + Debug {
    /// Reads exactly `buf.len()` bytes at `offset`; `UnexpectedEof` if the
    /// file is shorter.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`, retrying short writes.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes written data durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Makes data and all metadata durable (`fsync`).
    fn sync_all(&self) -> io::Result<()>;
    /// The file's current length in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Reserves blocks for `[0, len)` so later writes there need no block
    /// allocation (and fdatasync no allocation metadata). Extends the file
    /// to at least `len`; the new bytes read as zero.
    fn allocate(&self, len: u64) -> io::Result<()>;
    /// Asks the kernel to start writing `[offset, offset + len)` back to
    /// the device without waiting for it (Linux `sync_file_range` with
    /// `SYNC_FILE_RANGE_WRITE`). Promises nothing about durability: it
    /// spreads the disk writes over time, so that the next sync — and
    /// every other writer the kernel would throttle once too many pages
    /// are dirty — does not pay for all of them at once. A no-op where
    /// unsupported.
    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }
    /// Writes all of `buf` at `offset` and then syncs data. Back ends that
    /// can chain the two in one submission (io_uring `IO_LINK`) override it.
    fn write_and_sync(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_at(buf, offset)?;
        self.sync_data()
    }
}

/// The directory operations the log needs, plus opening files.
pub trait FileSystem: Send + Sync + Debug {
    /// A short name for logs and benchmark reports ("std", "io_uring", "fault").
    fn name(&self) -> &'static str;
    /// Creates a directory and its parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Creates (or truncates) a file for reading and writing.
    fn create(&self, path: &Path) -> io::Result<Arc<dyn LogFile>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn LogFile>>;
    /// Renames `from` to `to`, replacing `to`. Durable only after
    /// [`FileSystem::sync_dir`] on the parent.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file. Durable only after [`FileSystem::sync_dir`].
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// The names (not paths) of the regular files in a directory.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Takes an exclusive advisory lock on `path` (created if missing), held
    /// until the returned guard is dropped. `WouldBlock` if already held.
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Send + Sync>>;
}

/// Which I/O back end a log uses.
///
/// `Std` is the default because it measured faster on every workload we
/// run (docs/benchmarks.md): an fdatasync submitted through io_uring is
/// punted to a kernel io-wq worker, one more thread hand-off per group
/// commit, and small appends cost more to submit than a `pwrite`. On the
/// chat workload (`missive-bench e2e`, 1 000 devices, 4 000 msgs/s) the std
/// log delivered at p99 17 ms where io_uring took 39 ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum IoBackend {
    /// io_uring when the kernel allows it (probed at open), std otherwise.
    Auto,
    /// Plain `pwrite` + `fdatasync`.
    #[default]
    Std,
    /// io_uring; opening fails if the kernel refuses it.
    #[cfg_attr(feature = "serde", serde(rename = "io_uring"))]
    IoUring,
}

impl IoBackend {
    /// Builds the file system for this choice. `Auto` probes io_uring by
    /// creating a ring; seccomp filters and `io_uring_disabled` make that fail.
    pub fn open(self) -> io::Result<Arc<dyn FileSystem>> {
        match self {
            IoBackend::Std => Ok(Arc::new(OsFs::std())),
            IoBackend::IoUring => Ok(Arc::new(OsFs::uring()?)),
            IoBackend::Auto => match OsFs::uring() {
                Ok(fs) => Ok(Arc::new(fs)),
                Err(err) => {
                    tracing::info!(%err, "io_uring unavailable; using the std I/O back end");
                    Ok(Arc::new(OsFs::std()))
                }
            },
        }
    }

    /// Whether this kernel lets us use io_uring.
    pub fn uring_available() -> bool {
        OsFs::uring().is_ok()
    }
}

/// Writes a small file crash-safely: write `name.tmp`, fsync it, rename it
/// over `name`, fsync the directory. After a crash the file is either absent
/// (or its old version) or complete — never partial.
pub fn write_file_atomic(
    fs: &dyn FileSystem,
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> io::Result<PathBuf> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let file = fs.create(&tmp)?;
    file.write_at(bytes, 0)?;
    file.sync_all()?;
    drop(file);
    fs.rename(&tmp, &path)?;
    fs.sync_dir(dir)?;
    Ok(path)
}
