//! The replication layer's one error type.
//!
//! A caller (the message service) must be able to act without parsing a
//! message: [`Error::NotLeader`] says where to go instead, [`Error::Unavailable`]
//! says retry later (no quorum, an election under way, a shutdown), a
//! [`Error::Refused`] change of the cluster map is the operator's to fix,
//! and
//! [`Error::Storage`] carries the engine's own classification (corruption vs
//! I/O vs poisoned). [`Error::Unknown`] is the honest answer when a write may
//! or may not have committed (the leader vanished after accepting it): retry
//! with the same client message id, which the state machine deduplicates.
//!
//! An application's refusals (a command its rules reject) are outcomes, not
//! errors, here: the application's crate turns them into its own error.

use crate::ids::{NodeId, ShardId};

/// A result with the replication layer's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the replication layer can fail with.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// This node does not lead the shard. `leader` is the node that does, if
    /// known, with the address of its transport.
    #[error("{shard} is led by {}", match leader { Some((id, addr)) => format!("node {id} at {addr}"), None => "no node right now (an election is under way)".to_string() })]
    NotLeader {
        /// The shard asked about.
        shard: ShardId,
        /// The current leader and its address, if known.
        leader: Option<(NodeId, String)>,
    },

    /// The shard cannot serve right now (no quorum reachable, shutting down,
    /// a timeout before the write was proposed). Nothing was written.
    #[error("{shard} is unavailable: {reason}")]
    Unavailable {
        /// The shard.
        shard: ShardId,
        /// Why, for a person.
        reason: String,
    },

    /// The write was handed to Raft, but its outcome is unknown (leadership
    /// was lost, or the wait timed out). Retrying an idempotent command is
    /// safe.
    #[error("{shard}: the outcome of the write is unknown: {reason}")]
    Unknown {
        /// The shard.
        shard: ShardId,
        /// Why, for a person.
        reason: String,
    },

    /// The cluster map refused a change (deterministically, on every
    /// replica): a node started with another shard count, a forgotten node
    /// registering again, forgetting a node that still holds replicas.
    #[error("the cluster map refuses: {0}")]
    Refused(String),

    /// This node has no such shard.
    #[error("{0} is not hosted on this node")]
    NoSuchShard(ShardId),

    /// The shard no longer owns the slot asked about: a split gave it to
    /// another shard after the caller's slot map was made. Nothing was
    /// read or written; route again with a fresh map (`Node::read` and
    /// `Node::write` do).
    #[error("{shard} does not own that slot (it split): {reason}")]
    Misrouted {
        /// The shard asked.
        shard: ShardId,
        /// What it said.
        reason: String,
    },

    /// The storage engine failed.
    #[error("storage: {0}")]
    Storage(#[from] missive_engine::Error),

    /// Bytes from disk or the network did not decode.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },

    /// Talking to another node failed.
    #[error("transport to node {node}: {reason}")]
    Transport {
        /// The peer.
        node: NodeId,
        /// What went wrong.
        reason: String,
    },

    /// The caller asked for something impossible (a bad configuration).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// Raft itself stopped (a storage failure inside openraft); the node
    /// must be restarted.
    #[error("raft stopped: {0}")]
    Fatal(String),
}

impl Error {
    /// True when the same request may succeed if retried (possibly at
    /// another node): not-leader, unavailable, unknown outcome, transport.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::NotLeader { .. }
                | Error::Unavailable { .. }
                | Error::Unknown { .. }
                | Error::Transport { .. }
        )
    }

    /// True when stored bytes cannot be read back: an engine checksum or
    /// format failure, or a record that did not decode. Retrying does not
    /// help; the replica needs repair.
    pub fn is_corruption(&self) -> bool {
        match self {
            Error::Storage(e) => e.is_corruption(),
            Error::Malformed { .. } => true,
            _ => false,
        }
    }

    /// Bytes that did not decode as `what`.
    pub fn malformed(what: &'static str, reason: impl ToString) -> Self {
        Error::Malformed {
            what,
            reason: reason.to_string(),
        }
    }
}
