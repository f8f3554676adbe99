//! The server's errors: [`Error`] for what stops the server (config, start,
//! storage), and [`ApiError`] — a stable code, an HTTP status and a message
//! for a person — for what a request or a frame did wrong. Every code is
//! listed in docs/protocol.md; codes never change meaning.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// What can stop the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// A file or socket operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The replicated store failed.
    #[error(transparent)]
    Raft(#[from] missive_raft::Error),
    /// The chat domain failed.
    #[error(transparent)]
    Chat(#[from] missive_chat::Error),
}

/// A server result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A request's failure as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status (WebSocket error frames carry only the code).
    pub status: StatusCode,
    /// Stable, machine-readable code (snake_case).
    pub code: &'static str,
    /// For a person.
    pub message: String,
    /// When to retry, for `rate_limited` and the retryable codes.
    pub retry_after_ms: Option<u64>,
    /// For `stale_devices`: the devices an encrypted send missed and
    /// the ones it named that are not in the device lists.
    pub stale: Option<Box<StaleDevices>>,
}

/// What was wrong with an encrypted send's devices: `(user, device)`
/// pairs, sorted.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, utoipa::ToSchema)]
pub struct StaleDevices {
    /// Devices of members that got no payload.
    pub missing_devices: Vec<DeviceRef>,
    /// Payloads for devices that are not in the lists (removed, or never
    /// published keys).
    pub extra_devices: Vec<DeviceRef>,
}

/// A user's device, as `stale_devices` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DeviceRef {
    /// The user (decimal string).
    #[schema(value_type = String)]
    pub user: crate::wire::Id,
    /// The device (decimal string).
    #[schema(value_type = String)]
    pub device: crate::wire::Id,
}

impl ApiError {
    /// An error with a code and a message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_ms: None,
            stale: None,
        }
    }

    /// 409 `stale_devices`: an encrypted send's payloads do not match the
    /// members' device lists.
    pub fn stale_devices(stale: StaleDevices) -> Self {
        let mut e = Self::new(
            StatusCode::CONFLICT,
            "stale_devices",
            format!(
                "the payloads do not match the members' devices: {} missing, {} extra; \
                 fetch the device lists again",
                stale.missing_devices.len(),
                stale.extra_devices.len()
            ),
        );
        e.stale = Some(Box::new(stale));
        e
    }

    /// 400 `invalid`: a field's value is not acceptable.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", message)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403 `not_a_member`: the conversation is not the caller's.
    pub fn not_a_member() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "not_a_member",
            "you are not a member of this conversation",
        )
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 500 `internal`: a failure of ours; details go to the log, not the
    /// client.
    pub fn internal(e: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; it was logged",
        )
    }

    /// With a retry hint.
    pub fn retry_after(mut self, ms: u64) -> Self {
        self.retry_after_ms = Some(ms);
        self
    }
}

/// The retry hint of a 503 whose shard has a known new leader (ms).
pub const RETRY_LEADER_KNOWN_MS: u64 = 50;
/// The retry hint of a 503 while a shard elects or a node is away (ms):
/// about one election (`RaftTiming`: campaigns start 200–320 ms after the
/// leader's last heartbeat).
pub const RETRY_ELECTION_MS: u64 = 300;

impl ApiError {
    /// A shard split moved the data while the request was routed, and the
    /// node's retries ran out before it learned where: nothing was written.
    fn split_under_way() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the conversation's data is moving to a new shard; retry",
        )
        .retry_after(RETRY_LEADER_KNOWN_MS)
    }
}

impl From<missive_raft::Error> for ApiError {
    fn from(e: missive_raft::Error) -> Self {
        use missive_raft::Error as E;
        match e {
            // A new leader is known: the next try reaches it (the server
            // forwards to it), so say retry at once. Which node it is, and
            // where, is the cluster's business, not the client's.
            E::NotLeader {
                leader: Some(_), ..
            } => {
                tracing::debug!(error = %e, "answering unavailable, leader known");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the conversation's replicas just changed leader; retry now",
                )
                .retry_after(RETRY_LEADER_KNOWN_MS)
            }
            E::NotLeader { .. } | E::Unavailable { .. } | E::Transport { .. } => {
                // The detail names nodes and their internal addresses: the
                // log's, never the client's.
                tracing::debug!(error = %e, "answering unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the conversation's replicas cannot take this now (a leader change or a \
                     node being away); retry",
                )
                .retry_after(RETRY_ELECTION_MS)
            }
            E::Unknown { .. } => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "outcome_unknown",
                "the write may or may not have happened; resend it with the same client_msg_id",
            )
            .retry_after(500),
            E::Refused(message) => Self::new(StatusCode::CONFLICT, "conflict", message),
            E::InvalidArgument(m) => Self::invalid(m),
            E::Misrouted { .. } => {
                tracing::debug!(error = %e, "answering unavailable: a split moved the slot");
                Self::split_under_way()
            }
            other => Self::internal(&other),
        }
    }
}

impl From<missive_chat::Error> for ApiError {
    fn from(e: missive_chat::Error) -> Self {
        use missive_chat::Error as E;
        match e {
            E::Rejected {
                code: missive_chat::command::RejectCode::Misrouted,
                ..
            } => Self::split_under_way(),
            E::Rejected { code, message } => {
                use missive_chat::command::RejectCode as R;
                let status = match code {
                    // One answer, word for word, whether the conversation
                    // is missing or not the caller's: apply's messages
                    // name the ids and differ, and a stranger can compute
                    // any pair's direct id.
                    R::NoSuchConversation | R::NotAMember => return Self::not_a_member(),
                    R::NoSuchMessage => StatusCode::NOT_FOUND,
                    R::Forbidden | R::TooLate | R::Blocked => StatusCode::FORBIDDEN,
                    R::Conflict => StatusCode::CONFLICT,
                    _ => StatusCode::BAD_REQUEST,
                };
                Self::new(status, code.as_str(), message)
            }
            E::Runtime(e) => e.into(),
            other => Self::internal(&other),
        }
    }
}

/// The JSON body of an error (HTTP) and the fields of an error frame.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    /// Stable code.
    pub code: &'a str,
    /// For a person.
    pub message: &'a str,
    /// Retry hint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// With `stale_devices`: which devices.
    #[serde(flatten)]
    pub stale: Option<&'a StaleDevices>,
}

/// An HTTP error answer: `{"error": ErrorBody}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorAnswer<'a> {
    /// What went wrong.
    pub error: ErrorBody<'a>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorAnswer {
            error: ErrorBody {
                code: self.code,
                message: &self.message,
                retry_after_ms: self.retry_after_ms,
                stale: self.stale.as_deref(),
            },
        };
        let mut r = (self.status, axum::Json(body)).into_response();
        if let Some(ms) = self.retry_after_ms {
            let secs = ms.div_ceil(1000).max(1);
            if let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string()) {
                r.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unavailable_answer_names_no_node_and_no_address() {
        let errors = [
            missive_raft::Error::NotLeader {
                shard: missive_raft::ShardId(2),
                leader: Some((3, "127.0.0.3:7080".into())),
            },
            missive_raft::Error::NotLeader {
                shard: missive_raft::ShardId(2),
                leader: None,
            },
            missive_raft::Error::Transport {
                node: 3,
                reason: "connect to 127.0.0.3:7080: refused".into(),
            },
            missive_raft::Error::Unavailable {
                shard: missive_raft::ShardId(2),
                reason: "node 3 does not replicate it".into(),
            },
        ];
        // A known new leader: retry at once; else about one election.
        let waits = [
            RETRY_LEADER_KNOWN_MS,
            RETRY_ELECTION_MS,
            RETRY_ELECTION_MS,
            RETRY_ELECTION_MS,
        ];
        for (e, wait) in errors.into_iter().zip(waits) {
            let a = ApiError::from(e);
            assert_eq!(
                (a.code, a.status),
                ("unavailable", StatusCode::SERVICE_UNAVAILABLE)
            );
            assert_eq!(a.retry_after_ms, Some(wait));
            assert!(
                !a.message.contains("127.0.0") && !a.message.contains("node 3"),
                "{}",
                a.message
            );
        }
    }
}
