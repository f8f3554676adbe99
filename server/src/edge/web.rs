//! The web client: a few static files (`server/web/`) compiled into the
//! binary, so `missived` serves a page a person can chat on with nothing
//! else installed and nothing fetched at run time.
//!
//! `/` is the page, `/web/<file>` its scripts and style. The files are
//! plain ES modules — no build step — so what is in the repository is
//! exactly what is served. They change only with the binary: answers carry
//! an `ETag` (the CRC-32 of the file's bytes) and
//! `Cache-Control: no-cache`, so a browser revalidates and gets 304 until
//! the server is upgraded. The page's Content-Security-Policy lets it run
//! only its own scripts; it may connect to any server (the sign-in form
//! names which missived to talk to).

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::ApiError;
use crate::state::AppState;

/// One served file: its name under `/web/`, type and bytes.
struct Asset {
    name: &'static str,
    mime: &'static str,
    body: &'static str,
}

/// Every file of the client.
const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        mime: "text/html; charset=utf-8",
        body: include_str!("../../web/index.html"),
    },
    Asset {
        name: "style.css",
        mime: "text/css; charset=utf-8",
        body: include_str!("../../web/style.css"),
    },
    Asset {
        name: "app.js",
        mime: "text/javascript; charset=utf-8",
        body: include_str!("../../web/app.js"),
    },
    Asset {
        name: "client.js",
        mime: "text/javascript; charset=utf-8",
        body: include_str!("../../web/client.js"),
    },
    Asset {
        name: "store.js",
        mime: "text/javascript; charset=utf-8",
        body: include_str!("../../web/store.js"),
    },
    Asset {
        name: "view.js",
        mime: "text/javascript; charset=utf-8",
        body: include_str!("../../web/view.js"),
    },
];

/// The page's policy: its own scripts and styles only, no frames, no
/// plugins; connections to any http(s)/ws(s) server, since the client may
/// be pointed at another missived — and pictures from any, for the same
/// reason (a media message's thumbnail comes from the server it talks to,
/// through a signed URL; bodies are drawn as text, so no message can
/// place an image of its own).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data: http: https:; connect-src 'self' http: https: ws: wss:; \
     object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'";

/// The client's routes: `/` and `/web/{file}`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/",
            get(|h: HeaderMap| async move { serve("index.html", &h) }),
        )
        .route(
            "/web/{file}",
            get(|Path(file): Path<String>, h: HeaderMap| async move { serve(&file, &h) }),
        )
}

/// The file `name`, or 304 when the browser holds this build's copy.
fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some((i, asset)) = ASSETS.iter().enumerate().find(|(_, a)| a.name == name) else {
        return ApiError::not_found("no such file").into_response();
    };
    let etag = &etags()[i];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut h = HeaderMap::new();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    if fresh {
        return (StatusCode::NOT_MODIFIED, h).into_response();
    }
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.mime));
    if asset.name == "index.html" {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    (h, asset.body).into_response()
}

/// Each asset's ETag: `"<crc32 of its bytes>"`, computed once.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| format!("\"{:08x}\"", crc32fast::hash(a.body.as_bytes())))
            .collect()
    })
}
