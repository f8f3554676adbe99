//! The chat domain's one error type.
//!
//! A caller (the message service) tells a refusal it must report to its
//! user ([`Error::Rejected`], with a stable code) from a failure of the
//! runtime underneath ([`Error::Runtime`]: not-leader, unavailable,
//! unknown outcome, storage; see `missive_raft::Error`).

use crate::command::RejectCode;

/// A result with the chat domain's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a chat operation can fail with.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The apply rules refused the command (deterministically, on every
    /// replica): no such conversation, not a member, …
    #[error("rejected ({code:?}): {message}")]
    Rejected {
        /// Stable code.
        code: RejectCode,
        /// For a person.
        message: String,
    },

    /// The runtime failed (see its error for what the caller can do).
    #[error(transparent)]
    Runtime(#[from] missive_raft::Error),
}

impl Error {
    /// True when the same request may succeed if retried (possibly at
    /// another node).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Runtime(e) => e.is_retryable(),
            Error::Rejected { .. } => false,
        }
    }

    /// True when stored bytes cannot be read back (see
    /// `missive_raft::Error::is_corruption`).
    pub fn is_corruption(&self) -> bool {
        matches!(self, Error::Runtime(e) if e.is_corruption())
    }
}
