//! The OpenAPI description served at `/v1/openapi.json` against the real
//! binary: every route protocol.md names is in it, and every operation in
//! it is a route the server answers (the router and the document are built
//! from the same handler attributes, so the server has no route the
//! document lacks).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use crate::common;

use std::collections::BTreeSet;

use serde_json::Value;

use common::{config, start};

/// `/v1/conversations/{conv}` → `/v1/conversations/{}`: docs and code name
/// parameters differently (`{s}`, `{shard}`).
fn shape(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

/// Every `METHOD /path` protocol.md names, as (method, shape).
fn documented() -> BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md"))
        .unwrap()
        .replace('\n', " ");
    let mut out = BTreeSet::new();
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
        let needle = format!("`{method} /");
        for (at, _) in text.match_indices(&needle) {
            let rest = &text[at + needle.len() - 1..];
            let Some(end) = rest.find('`') else { continue };
            let path = rest[..end].split('?').next().unwrap().trim();
            if path.contains(' ') || path.contains('…') {
                continue;
            }
            out.insert((method.to_lowercase(), shape(path)));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_described_and_every_description_is_a_route() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", srv.addr());
    let r = http
        .get(format!("{base}/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let doc: Value = r.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
    let mut described = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(op["summary"].is_string(), "{method} {path} has no summary");
            assert!(
                op["responses"].is_object(),
                "{method} {path} has no responses"
            );
            described.insert((method.clone(), path.clone()));
        }
    }
    // Bodies are described by their types, errors by the error answer.
    let send = &doc["paths"]["/v1/conversations/{conv}/messages"]["post"];
    assert!(send["requestBody"].is_object(), "{send}");
    assert!(doc["components"]["schemas"]["ErrorAnswer"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    // protocol.md's routes are all in the document…
    let shapes: BTreeSet<(String, String)> = described
        .iter()
        .map(|(m, p)| (m.clone(), shape(p)))
        .collect();
    let docs = documented();
    assert!(
        docs.len() >= 45,
        "protocol.md names {} routes: {docs:?}",
        docs.len()
    );
    let missing: Vec<_> = docs.difference(&shapes).collect();
    assert!(
        missing.is_empty(),
        "in protocol.md, not in the OpenAPI document: {missing:?}"
    );
    let undocumented: Vec<_> = shapes.difference(&docs).collect();
    assert!(
        undocumented.is_empty(),
        "in the OpenAPI document, not in protocol.md: {undocumented:?}"
    );

    // …and each of its operations is a route of the running server: no
    // answer is the router's "no such endpoint" or a 405.
    for (method, path) in &described {
        let url = format!(
            "{base}{}",
            path.replace("{conv}", "1")
                .replace("{seq}", "1")
                .replace("{emoji}", "%F0%9F%91%8D")
                .replace("{user}", "2")
                .replace("{shard}", "1")
                .replace("{node}", "2")
        );
        let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let r = http.request(m, &url).send().await.unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert_ne!(status, 405, "{method} {path}: {body}");
        assert!(
            !(status == 404 && body.contains("no such endpoint")),
            "{method} {path} is described but not routed"
        );
    }
    // The check above can fail: an undescribed path is the router's 404.
    let r = http
        .get(format!("{base}/v1/not-a-route"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("no such endpoint"));
    srv.shutdown().await.unwrap();
}
