//! Browsers: which origins may call this server, and CORS for them.
//!
//! A browser sends `Origin` on every cross-origin request (and on a
//! same-origin one that is not a GET). Three kinds of caller:
//!
//! - no `Origin` — a native app, a backend, curl: not a browser's business,
//!   accepted (the token decides);
//! - this server's own origin — the web client it serves (`edge::web`):
//!   accepted (`Auth::check_origin`);
//! - another origin — accepted only if listed in `auth.allowed_origins`.
//!   Those get CORS answers ([`layer`]): preflights say which methods and
//!   headers they may use, and answers expose `Retry-After` and
//!   `X-Request-Id` (and media's tus, Range and ETag headers) to their
//!   scripts. Every other origin is refused by
//!   [`guard`] before any handler runs (403 `origin_not_allowed`, with no
//!   CORS headers, so the page cannot even read that answer), and its
//!   preflights get no `Access-Control-Allow-Origin`.
//!
//! Credentials: none. Missive authenticates with bearer tokens in the
//! `Authorization` header, never cookies, so `Access-Control-Allow-Credentials`
//! is not sent and a browser's ambient cookies open nothing. The admin
//! secret's header is not allowed cross-origin: an operator's calls come
//! from tools, not from other sites' pages.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::AuthSection;
use crate::state::AppState;

/// How long a browser may cache a preflight's answer, seconds.
const PREFLIGHT_MAX_AGE_SECS: u64 = 600;

/// The CORS layer for the origins in `auth.allowed_origins` (validated as
/// origins when the config was checked; one that is not a header value
/// could not have passed, and is skipped).
pub fn layer(auth: &AuthSection) -> CorsLayer {
    let origins: Vec<HeaderValue> = auth
        .allowed_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::HEAD,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::RANGE,
            header::IF_NONE_MATCH,
            HeaderName::from_static("x-request-id"),
            // tus uploads (`edge::media`).
            HeaderName::from_static("tus-resumable"),
            HeaderName::from_static("upload-length"),
            HeaderName::from_static("upload-offset"),
            HeaderName::from_static("upload-metadata"),
        ])
        .expose_headers([
            header::RETRY_AFTER,
            HeaderName::from_static("x-request-id"),
            header::LOCATION,
            header::CONTENT_RANGE,
            header::ETAG,
            HeaderName::from_static("tus-resumable"),
            HeaderName::from_static("upload-offset"),
            HeaderName::from_static("upload-length"),
            HeaderName::from_static("missive-media-id"),
        ])
        .max_age(Duration::from_secs(PREFLIGHT_MAX_AGE_SECS))
}

/// Refuses a request from a browser origin that is neither this server's
/// nor allowed (see the module docs). Preflights never reach it: the CORS
/// layer outside answers them.
pub async fn guard(State(s): State<AppState>, req: Request, next: Next) -> Response {
    match s.auth.check_origin(req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}
