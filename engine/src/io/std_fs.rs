//! The portable back end: positioned `pread`/`pwrite` and `fdatasync`
//! through `std::fs::File`. Also home of the directory operations that the
//! io_uring back end shares (they are metadata calls, not the hot path):
//! [`OsFs`] is both back ends, differing only in the file type it hands out.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::fd::{allocate_fd, start_writeback_fd};
use super::uring::UringFile;
use super::{FileSystem, LogFile};

/// The operating system's file system, with file I/O either through plain
/// syscalls or through io_uring. Directory operations are plain syscalls in
/// both (they are metadata calls, off the hot path).
#[derive(Debug, Clone, Copy)]
pub struct OsFs {
    uring: bool,
}

impl OsFs {
    /// `pread`/`pwrite` + `fdatasync` through the standard library.
    pub fn std() -> Self {
        OsFs { uring: false }
    }

    /// The same calls through io_uring. Probes the kernel first (a ring and a
    /// no-op through it) and fails where io_uring is disabled or filtered.
    pub fn uring() -> io::Result<Self> {
        super::uring::probe()?;
        Ok(OsFs { uring: true })
    }

    fn wrap(&self, file: File) -> Arc<dyn LogFile> {
        if self.uring {
            Arc::new(UringFile { file })
        } else {
            Arc::new(StdFile { file })
        }
    }
}

/// A file of the std back end.
#[derive(Debug)]
pub(crate) struct StdFile {
    pub(crate) file: File,
}

impl LogFile for StdFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        // `write_all_at` loops over short writes and EINTR.
        self.file.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        allocate_fd(&self.file, len)
    }

    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        start_writeback_fd(&self.file, offset, len)
    }
}

pub(crate) fn open_rw(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(create)
        .open(path)
}

/// How long [`OsFs::lock`] retries a lock that looks held (see there).
const LOCK_RETRY_FOR: std::time::Duration = std::time::Duration::from_millis(500);

/// Holds an `flock` for as long as it lives (the kernel drops the lock when
/// the descriptor closes, including when the process dies).
struct FlockGuard {
    _file: File,
}

impl FileSystem for OsFs {
    fn name(&self) -> &'static str {
        if self.uring {
            "io_uring"
        } else {
            "std"
        }
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn LogFile>> {
        Ok(self.wrap(open_rw(path, true)?))
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn LogFile>> {
        Ok(self.wrap(open_rw(path, false)?))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                if let Some(name) = entry.file_name().to_str() {
                    names.push(name.to_owned());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn Send + Sync>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        // A lock just released can look held for a moment: a child that
        // another thread of this process is spawning holds a copy of every
        // descriptor (and so of the lock) from its fork until its exec
        // closes them (`O_CLOEXEC`). Measured in the engine's tests, which
        // reopen a directory in a loop while others spawn processes: a
        // reopen failed as `Locked` in every run. A real owner holds the
        // lock far longer than the retries below, and is still refused.
        let deadline = std::time::Instant::now() + LOCK_RETRY_FOR;
        loop {
            // SAFETY: flock on a valid descriptor; no memory is passed.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(Box::new(FlockGuard { _file: file }));
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::WouldBlock || std::time::Instant::now() >= deadline {
                return Err(err);
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
