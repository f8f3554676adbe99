//! Errors across the wire: how this node's [`Error`] travels to another
//! node as a [`RemoteFailure`], and how a failure or a lost call comes
//! back as ours. The one rule that matters: a call that may have run on
//! the other side is never reported as one that did not (`Unknown`, not
//! `Transport`), so nothing retries a write whose outcome is unknown.

use crate::app::App;
use crate::error::Error;
use crate::ids::{NodeId, ShardId};
use crate::transport::client::CallError;
use crate::transport::{RemoteFailure, Reply};

/// A failure from another node, as our error.
pub(crate) fn from_remote(shard: ShardId, f: RemoteFailure) -> Error {
    match f {
        RemoteFailure::NotLeader { leader } => Error::NotLeader { shard, leader },
        RemoteFailure::Unavailable(reason) => Error::Unavailable { shard, reason },
        RemoteFailure::Invalid(reason) => Error::InvalidArgument(reason),
        RemoteFailure::Misrouted(reason) => Error::Misrouted { shard, reason },
        RemoteFailure::Unknown(reason) | RemoteFailure::Failed(reason) => {
            Error::Unknown { shard, reason }
        }
    }
}

/// A forwarded call that did not get its expected answer, as our error:
/// never sent (unreachable) is `Transport` — nothing happened; sent but
/// lost, timed out or answered with the wrong kind of reply is `Unknown` —
/// it may have happened.
pub(crate) fn call_failed(
    shard: ShardId,
    node: NodeId,
    doing: &str,
    r: std::result::Result<Reply<impl App>, CallError>,
) -> Error {
    match r {
        Err(CallError::Unreachable(reason)) => Error::Transport { node, reason },
        Err(e) => Error::Unknown {
            shard,
            reason: format!("{doing} to node {node}: {e}"),
        },
        Ok(other) => Error::Unknown {
            shard,
            reason: format!("{doing} to node {node}: unexpected reply {other:?}"),
        },
    }
}

/// Our error, to send to another node.
pub(crate) fn to_remote(e: Error) -> RemoteFailure {
    match e {
        Error::NotLeader { leader, .. } => RemoteFailure::NotLeader { leader },
        Error::Unavailable { reason, .. } => RemoteFailure::Unavailable(reason),
        Error::Unknown { reason, .. } => RemoteFailure::Unknown(reason),
        Error::InvalidArgument(reason) => RemoteFailure::Invalid(reason),
        Error::Misrouted { reason, .. } => RemoteFailure::Misrouted(reason),
        other => RemoteFailure::Failed(other.to_string()),
    }
}
