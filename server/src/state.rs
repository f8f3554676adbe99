//! What every edge handler reaches: the shared state ([`AppState`]) and
//! the extractors that turn a request's parts into our types with our
//! error codes. The HTTP, WebSocket, gRPC and admin edges all import this;
//! none imports another edge.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use missive_engine::keys::ConversationId;

use crate::auth::{Auth, Caller, Token};
use crate::delivery::hub::Hub;
use crate::delivery::presence::Presence;
use crate::error::ApiError;
use crate::rate::IpRates;
use crate::revocation::Revoked;
use crate::service::Service;
use crate::sockets::Sockets;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The message service.
    pub service: Arc<Service>,
    /// Token checks.
    pub auth: Arc<Auth>,
    /// Live sessions.
    pub hub: Arc<Hub>,
    /// Presence and typing.
    pub presence: Arc<Presence>,
    /// Turns true when the server begins shutting down.
    pub shutdown: watch::Receiver<bool>,
    /// Each user's open sockets here, against their cap.
    pub sockets: Arc<Sockets>,
    /// New connections and sockets per client IP.
    pub ips: Arc<IpRates>,
    /// Each user's token revocations, as this node last read them.
    pub revoked: Arc<Revoked>,
}

impl AppState {
    /// The state of a server over `service`; the socket cap and the
    /// per-IP rates come from its limits.
    pub fn new(
        service: Arc<Service>,
        auth: Arc<Auth>,
        hub: Arc<Hub>,
        presence: Arc<Presence>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let limits = &service.limits;
        AppState {
            sockets: Arc::new(Sockets::new(limits.max_sockets_per_user)),
            ips: Arc::new(IpRates::new(limits, Arc::clone(&service.metrics))),
            revoked: Arc::new(Revoked::default()),
            service,
            auth,
            hub,
            presence,
            shutdown,
        }
    }

    /// The caller of a request with `Authorization: Bearer <token>`, if
    /// the token is valid and not revoked.
    pub async fn authenticate(&self, headers: &axum::http::HeaderMap) -> Result<Token, ApiError> {
        let t = self.auth.from_headers(headers)?;
        self.revoked.check(&self.service, &t).await?;
        Ok(t)
    }

    /// The caller of a WebSocket ticket, redeemed: valid, not revoked,
    /// and never redeemed before (on any node).
    pub async fn redeem_ticket(&self, ticket: &str) -> Result<Token, ApiError> {
        let t = self.auth.from_ticket(ticket)?;
        self.revoked.check(&self.service, &t).await?;
        if let Some(id) = t.id {
            self.service
                .use_ticket(t.caller.user, id, t.expires_at)
                .await?;
        }
        Ok(t)
    }

    /// Revokes `user`'s tokens of `scope`; this node's sockets of theirs
    /// check theirs at once, and every other node is told to (see
    /// `revocation`).
    pub async fn revoke(
        &self,
        user: missive_chat::command::UserId,
        scope: missive_chat::command::RevokeScope,
    ) -> Result<(), ApiError> {
        self.service.revoke_sessions(user, scope).await?;
        self.revoked.forget(user);
        self.sockets.wake(user);
        self.service
            .node
            .signal(crate::delivery::presence::Signal::Revoked { user: user.0 }.encode());
        Ok(())
    }
}

/// A JSON body whose rejections are our error codes.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(r) => Err(match &r {
                JsonRejection::MissingJsonContentType(_) => ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "send Content-Type: application/json",
                ),
                JsonRejection::JsonSyntaxError(_) => {
                    ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", r.body_text())
                }
                JsonRejection::JsonDataError(_) => ApiError::invalid(r.body_text()),
                _ if r.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    "the request body is larger than limits.max_http_body_bytes",
                ),
                _ => ApiError::new(r.status(), "bad_request", r.body_text()),
            }),
        }
    }
}

/// The authenticated caller of an HTTP request.
pub struct Authed(pub Caller);

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state
            .authenticate(&parts.headers)
            .await
            .map(|t| Authed(t.caller))
    }
}

/// The client's IP address, as the listener accepted it (None where a
/// request did not come through it: the in-process tests' routers).
pub struct PeerIp(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for PeerIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(PeerIp(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// Query parameters with our error codes.
pub struct Q<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Q(v))
            .map_err(|r| ApiError::invalid(r.body_text()))
    }
}

pub(crate) fn conv_id(raw: &str) -> Result<ConversationId, ApiError> {
    raw.parse::<u64>()
        .map(ConversationId)
        .map_err(|_| ApiError::not_found(format!("{raw:?} is not a conversation id")))
}

fn message_seq(raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>()
        .map_err(|_| ApiError::not_found(format!("{raw:?} is not a message seq")))
}

/// A conversation id and a message seq in the path
/// (`…/{conv}/messages/{seq}`).
pub struct MessagePath(pub ConversationId, pub u64);

impl<S: Send + Sync> FromRequestParts<S> for MessagePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path((conv, seq)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|r| ApiError::invalid(r.body_text()))?;
        Ok(MessagePath(conv_id(&conv)?, message_seq(&seq)?))
    }
}

/// A conversation id, a message seq and an emoji (percent-decoded) in the
/// path (`…/{conv}/messages/{seq}/reactions/{emoji}`).
pub struct ReactionPath(pub ConversationId, pub u64, pub String);

impl<S: Send + Sync> FromRequestParts<S> for ReactionPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path((conv, seq, emoji)) =
            Path::<(String, String, String)>::from_request_parts(parts, state)
                .await
                .map_err(|r| ApiError::invalid(r.body_text()))?;
        Ok(ReactionPath(conv_id(&conv)?, message_seq(&seq)?, emoji))
    }
}

/// A conversation id in the path.
pub struct ConvPath(pub ConversationId);

impl<S: Send + Sync> FromRequestParts<S> for ConvPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|r| ApiError::invalid(r.body_text()))?;
        conv_id(&raw).map(ConvPath)
    }
}
