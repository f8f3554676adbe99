//! The engine's one error type.
//!
//! Callers must be able to act on an error without parsing its message:
//! corruption (stop, page an operator, restore), I/O (the device or the
//! file system failed), poisoned (an earlier write or fsync failed: reopen
//! the log, nothing written after the failure was acknowledged), closed,
//! and invalid arguments (a caller bug). `Display` is written for a person.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// A result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the engine.
///
/// `Clone` because one failure (a failed fsync) must be handed to every
/// writer waiting on the group it failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O call failed.
    #[error("I/O error while trying to {op} {}: {source}", path.display())]
    Io {
        /// What the engine was doing ("write", "fsync", "open", …).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: Arc<io::Error>,
    },

    /// Stored bytes fail a checksum or break an invariant. Never skipped
    /// silently: the file and byte offset say where to look.
    #[error("corrupt data in {} at byte offset {offset}: {reason}", file.display())]
    Corruption {
        /// The damaged file.
        file: PathBuf,
        /// Byte offset of the damaged record or header within `file`.
        offset: u64,
        /// What is wrong, for a person.
        reason: String,
    },

    /// A file was written by a format version this build cannot read.
    #[error("{} has format version {found}, but this build reads version {supported}", file.display())]
    UnsupportedVersion {
        /// The file.
        file: PathBuf,
        /// The version found in its header.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },

    /// An earlier write or fsync failed, so the log refuses further writes
    /// rather than pretend they are durable (after a failed fsync the
    /// kernel may have dropped the dirty pages). Reopen the log to recover.
    #[error("the log refuses writes after an earlier failure (reopen it to recover): {cause}")]
    Poisoned {
        /// The failure that poisoned the log.
        #[source]
        cause: Arc<Error>,
    },

    /// The log was closed (dropped) while the operation was pending.
    #[error("the log is closed")]
    Closed,

    /// Another process (or another `Log` in this one) holds the directory.
    #[error("{} is in use by another process (its LOCK file is held)", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },

    /// The caller asked for something the log cannot do, such as
    /// truncating into the purged prefix or an entry over the size limit.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl Error {
    /// Wraps an `io::Error` with what was being done and to which path.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source: Arc::new(source),
        }
    }

    /// A corruption error at `file`/`offset`.
    pub(crate) fn corruption(
        file: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        Error::Corruption {
            file: file.into(),
            offset,
            reason: reason.into(),
        }
    }

    /// True for damaged stored data (as opposed to a failing device or a
    /// caller error): the operator must restore or repair, retrying won't help.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            Error::Corruption { .. } | Error::UnsupportedVersion { .. }
        )
    }
}
