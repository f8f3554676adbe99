//! What both back ends do to a file descriptor outside the data path:
//! preallocating a segment's bytes. (It sits here, not in either back end,
//! so that neither has to read the other to see it.)

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
