//! What both back ends (and the table builder) do to a file descriptor
//! outside the data path: preallocating a segment's bytes, starting
//! writeback early. (It sits here, not in either back end, so that neither
//! has to read the other to see it.)

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `fallocate(fd, 0, 0, len)`, falling back to `set_len` where the file
/// system does not support it (the bytes then read as zero all the same).
pub(crate) fn allocate_fd(file: &File, len: u64) -> io::Result<()> {
    let Ok(len_off) = libc::off_t::try_from(len) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "allocation length out of range",
        ));
    };
    // SAFETY: fallocate on a valid, open file descriptor; no memory is passed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len_off) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EOPNOTSUPP) {
        if file.metadata()?.len() < len {
            file.set_len(len)?;
        }
        return Ok(());
    }
    Err(err)
}

/// `sync_file_range(fd, offset, len, SYNC_FILE_RANGE_WRITE)`: starts
/// writeback of the range without waiting (see
/// [`super::LogFile::start_writeback`]). A no-op off Linux.
pub(crate) fn start_writeback_fd(file: &File, offset: u64, len: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let (Ok(off), Ok(n)) = (
            libc::off64_t::try_from(offset),
            libc::off64_t::try_from(len),
        ) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "writeback range out of range",
            ));
        };
        // SAFETY: sync_file_range on a valid, open file descriptor; no
        // memory is passed.
        let rc =
            unsafe { libc::sync_file_range(file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
    Ok(())
}
