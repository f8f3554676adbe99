//! Browsers: CORS for the allowed origins, every other origin refused, the
//! server's own origin (its web client) accepted, and the client's files
//! served from the binary. The client itself runs in a real browser in
//! `server/web/tests` (see its `run`).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use crate::common;

use std::collections::BTreeSet;

use common::{config, start, token, Ws};
use reqwest::header::{HeaderMap, ORIGIN};
use reqwest::Method;

const ALLOWED: &str = "https://chat.example";
const OTHER: &str = "https://evil.example";

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// A header's comma-separated values, lower-cased.
fn values(h: &HeaderMap, name: &str) -> BTreeSet<String> {
    header(h, name)
        .unwrap_or("")
        .split(',')
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_origin_gets_cors_answers_and_any_other_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    // One history read a second, so a second one answers 429.
    c.limits.history_rate = missive_server::config::Rate::new(1, 1);
    let tok = token(&c, 1, 1);
    let srv = start(c).await;
    let base = format!("http://{}", srv.addr());
    let http = reqwest::Client::new();

    // The preflight of a browser app on the allowed origin asking for a
    // WebSocket ticket (with its token): allowed, cacheable, no cookies.
    let pre = http
        .request(Method::OPTIONS, format!("{base}/v1/ws-ticket"))
        .header(ORIGIN, ALLOWED)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(pre.status().is_success(), "{}", pre.status());
    let h = pre.headers();
    assert_eq!(header(h, "access-control-allow-origin"), Some(ALLOWED));
    assert!(values(h, "access-control-allow-methods").contains("post"));
    let allowed = values(h, "access-control-allow-headers");
    assert!(
        allowed.contains("authorization") && allowed.contains("content-type"),
        "{allowed:?}"
    );
    assert!(
        !allowed.contains("x-admin-secret"),
        "the admin secret stays off other origins"
    );
    assert_eq!(header(h, "access-control-max-age"), Some("600"));
    assert_eq!(header(h, "access-control-allow-credentials"), None);

    // The same preflight from an origin not listed: no permission given.
    let pre = http
        .request(Method::OPTIONS, format!("{base}/v1/ws-ticket"))
        .header(ORIGIN, OTHER)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert_eq!(header(pre.headers(), "access-control-allow-origin"), None);

    // The real requests: the allowed origin is answered with CORS headers,
    // its scripts may read Retry-After and X-Request-Id …
    let ticket = http
        .post(format!("{base}/v1/ws-ticket"))
        .header(ORIGIN, ALLOWED)
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(ticket.status(), 200);
    let h = ticket.headers();
    assert_eq!(header(h, "access-control-allow-origin"), Some(ALLOWED));
    let exposed = values(h, "access-control-expose-headers");
    assert!(
        exposed.contains("retry-after") && exposed.contains("x-request-id"),
        "{exposed:?}"
    );
    assert!(values(h, "vary").contains("origin"));
    // … also on a refusal, so the app can wait as told.
    let mut limited = None;
    for _ in 0..3 {
        let r = http
            .get(format!("{base}/v1/conversations"))
            .header(ORIGIN, ALLOWED)
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
    }
    let limited = limited.expect("a second history read in a second is limited");
    assert_eq!(
        header(limited.headers(), "access-control-allow-origin"),
        Some(ALLOWED)
    );
    assert!(header(limited.headers(), "retry-after").is_some());

    // Another origin is refused before any handler runs, whatever the
    // token; its page could not even read why (no CORS headers).
    let r = http
        .post(format!("{base}/v1/ws-ticket"))
        .header(ORIGIN, OTHER)
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(header(r.headers(), "access-control-allow-origin"), None);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "origin_not_allowed");

    // The server's own origin (its web client) and no origin (a native
    // app) are accepted.
    for origin in [Some(base.as_str()), None] {
        let mut req = http.post(format!("{base}/v1/ws-ticket")).bearer_auth(&tok);
        if let Some(o) = origin {
            req = req.header(ORIGIN, o);
        }
        assert_eq!(req.send().await.unwrap().status(), 200, "{origin:?}");
    }
    // Likewise the WebSocket upgrade.
    for (origin, ok) in [(base.as_str(), true), (ALLOWED, true), (OTHER, false)] {
        let (_, t) = common::Http::new(srv.addr(), tok.clone())
            .post("/v1/ws-ticket", serde_json::json!({}))
            .await;
        let ticket = t["ticket"].as_str().unwrap();
        let r = Ws::try_connect(srv.addr(), None, Some(ticket), Some(origin)).await;
        assert_eq!(r.is_ok(), ok, "{origin}");
    }
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_client_is_served_from_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    let base = format!("http://{}", srv.addr());
    let http = reqwest::Client::new();

    let page = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let h = page.headers().clone();
    assert_eq!(header(&h, "content-type"), Some("text/html; charset=utf-8"));
    let csp = header(&h, "content-security-policy").unwrap_or("");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<script type="module" src="/web/app.js">"#));

    // Every file the page and its modules name is served, with its type.
    let mut names = vec!["app.js".to_string(), "style.css".to_string()];
    let mut seen = BTreeSet::new();
    while let Some(name) = names.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let r = http.get(format!("{base}/web/{name}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{name}");
        let mime = header(r.headers(), "content-type")
            .unwrap_or("")
            .to_string();
        let want = if name.ends_with(".js") {
            "text/javascript"
        } else {
            "text/css"
        };
        assert!(mime.starts_with(want), "{name}: {mime}");
        let text = r.text().await.unwrap();
        for import in text.split("from './").skip(1) {
            if let Some(file) = import.split('\'').next() {
                names.push(file.to_string());
            }
        }
    }
    assert!(seen.len() >= 5, "{seen:?}");

    // Revalidation: the same build answers 304 to its own ETag.
    let r = http.get(format!("{base}/web/app.js")).send().await.unwrap();
    let etag = header(r.headers(), "etag").unwrap().to_string();
    assert_eq!(header(r.headers(), "cache-control"), Some("no-cache"));
    let r = http
        .get(format!("{base}/web/app.js"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    // Anything else under /web is the API's 404.
    let r = http
        .get(format!("{base}/web/../auth.secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .get(format!("{base}/web/secret.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    srv.shutdown().await.unwrap();
}
