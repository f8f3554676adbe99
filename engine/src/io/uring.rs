//! The io_uring back end: reads, writes and fdatasyncs submitted through a
//! ring, one ring per thread.
//!
//! Why one ring per thread: the log's writer thread writes group N+1 while
//! its syncer thread waits on the fdatasync of group N. A shared ring would
//! need a lock around submit-and-wait, and the sync would block the write —
//! the very overlap group commit exists for. A thread-local ring costs two
//! small mappings per thread and no locking.
//!
//! Every call waits for its own completion before returning, so the buffer
//! handed to the kernel outlives the operation. If a submission itself
//! fails, the thread's ring is dropped (the kernel cancels anything left in
//! it) and a fresh one is made on the next call.
//!
//! Short writes and reads are resubmitted for the remainder. In
//! [`LogFile::write_and_sync`] the write and the fdatasync are chained with
//! `IO_LINK`; a short write breaks the chain (the fsync completes with
//! `ECANCELED`), in which case the rest is written and synced separately.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use io_uring::{opcode, squeue, types, IoUring};

use super::fd::{allocate_fd, start_writeback_fd};
use super::LogFile;

/// Entries per thread-local ring: we never have more than two in flight.
const RING_ENTRIES: u32 = 8;
/// The largest single read or write submitted (the kernel caps at ~2 GiB).
const MAX_IO_CHUNK: usize = 1 << 30;

thread_local! {
    static RING: RefCell<Option<IoUring>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's ring, creating it on first use. On error the
/// ring is discarded so no stale submission can outlive its buffer.
fn with_ring<R>(f: impl FnOnce(&mut IoUring) -> io::Result<R>) -> io::Result<R> {
    RING.with(|cell| {
        let mut slot = cell.borrow_mut();
        let ring = match slot.take() {
            Some(ring) => ring,
            None => IoUring::new(RING_ENTRIES)?,
        };
        let mut ring = ring;
        match f(&mut ring) {
            Ok(v) => {
                *slot = Some(ring);
                Ok(v)
            }
            Err(err) => {
                // Only per-operation errors (a negative CQE result) leave the
                // ring clean; we cannot tell them apart cheaply here, and a
                // new ring is cheap, so start afresh.
                drop(ring);
                Err(err)
            }
        }
    })
}

/// Submits the entries and waits for all of their completions; returns the
/// results in submission order (matched by `user_data` = position).
///
/// # Safety
/// Every buffer referenced by `entries` must stay valid until this returns.
unsafe fn submit_all(ring: &mut IoUring, entries: &[squeue::Entry]) -> io::Result<Vec<i32>> {
    {
        let mut sq = ring.submission();
        for entry in entries {
            // SAFETY: the caller keeps the buffers alive until we have
            // reaped every completion below.
            unsafe { sq.push(entry) }
                .map_err(|_| io::Error::other("io_uring submission queue is full"))?;
        }
    }
    let mut results = vec![i32::MIN; entries.len()];
    let mut reaped = 0;
    while reaped < entries.len() {
        match ring.submit_and_wait(entries.len() - reaped) {
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
        for cqe in ring.completion() {
            let Some(slot) = usize::try_from(cqe.user_data())
                .ok()
                .and_then(|i| results.get_mut(i))
            else {
                return Err(io::Error::other(
                    "io_uring completion for an unknown request",
                ));
            };
            *slot = cqe.result();
            reaped += 1;
        }
    }
    Ok(results)
}

fn result_len(res: i32) -> io::Result<usize> {
    if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        // Non-negative i32 always fits in usize on the 64-bit targets we run.
        Ok(usize::try_from(res).unwrap_or(0))
    }
}

/// A file of the io_uring back end.
#[derive(Debug)]
pub(crate) struct UringFile {
    pub(crate) file: File,
}

impl UringFile {
    fn fd(&self) -> types::Fd {
        types::Fd(self.file.as_raw_fd())
    }

    fn write_entry(&self, buf: &[u8], offset: u64) -> squeue::Entry {
        let len = buf.len().min(MAX_IO_CHUNK);
        opcode::Write::new(self.fd(), buf.as_ptr(), len as u32)
            .offset(offset)
            .build()
    }

    fn fsync_entry(&self) -> squeue::Entry {
        opcode::Fsync::new(self.fd())
            .flags(types::FsyncFlags::DATASYNC)
            .build()
    }

    fn run_one(&self, entry: squeue::Entry) -> io::Result<usize> {
        with_ring(|ring| {
            loop {
                // SAFETY: the buffers behind `entry` belong to our caller and
                // live until this function returns; submit_all waits for the
                // completion.
                let res = unsafe { submit_all(ring, &[entry.clone().user_data(0)]) }?;
                let r = res.first().copied().unwrap_or(i32::MIN);
                if r == -libc::EINTR || r == -libc::EAGAIN {
                    continue;
                }
                return result_len(r);
            }
        })
    }
}

impl LogFile for UringFile {
    fn read_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            let len = buf.len().min(MAX_IO_CHUNK);
            let entry = opcode::Read::new(self.fd(), buf.as_mut_ptr(), len as u32)
                .offset(offset)
                .build();
            let n = self.run_one(entry)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "read past the end of the file",
                ));
            }
            buf = &mut buf[n..];
            offset += n as u64;
        }
        Ok(())
    }

    fn write_at(&self, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            let n = self.run_one(self.write_entry(buf, offset))?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "io_uring write wrote nothing",
                ));
            }
            buf = &buf[n..];
            offset += n as u64;
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.run_one(self.fsync_entry()).map(|_| ())
    }

    fn sync_all(&self) -> io::Result<()> {
        self.run_one(opcode::Fsync::new(self.fd()).build())
            .map(|_| ())
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

    fn write_and_sync(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if buf.is_empty() || buf.len() > MAX_IO_CHUNK {
            self.write_at(buf, offset)?;
            return self.sync_data();
        }
        let write = self
            .write_entry(buf, offset)
            .flags(squeue::Flags::IO_LINK)
            .user_data(0);
        let fsync = self.fsync_entry().user_data(1);
        // SAFETY: `buf` outlives the call; submit_all reaps both completions.
        let res = with_ring(|ring| unsafe { submit_all(ring, &[write, fsync]) })?;
        let (w, s) = (
            res.first().copied().unwrap_or(i32::MIN),
            res.get(1).copied().unwrap_or(i32::MIN),
        );
        let written = result_len(w)?;
        if written == buf.len() && s >= 0 {
            return Ok(());
        }
        if s < 0 && s != -libc::ECANCELED {
            return Err(io::Error::from_raw_os_error(-s));
        }
        // Short write (chain broken) or a cancelled sync: finish by hand.
        self.write_at(&buf[written..], offset + written as u64)?;
        self.sync_data()
    }
}

/// Probes the kernel: creates this thread's ring and runs a no-op through it.
/// Fails where io_uring is disabled (`io_uring_disabled`) or seccomp-filtered.
pub(crate) fn probe() -> io::Result<()> {
    with_ring(|ring| {
        let nop = opcode::Nop::new().build().user_data(0);
        // SAFETY: a no-op references no memory.
        let res = unsafe { submit_all(ring, &[nop]) }?;
        result_len(res.first().copied().unwrap_or(i32::MIN)).map(|_| ())
    })
}
