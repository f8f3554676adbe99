//! Media against the real server: tus uploads interrupted and resumed,
//! Range downloads, deduplication, who may read an object, signed URLs,
//! and media messages.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use crate::common;

use std::net::SocketAddr;

use serde_json::json;
use tokio::io::AsyncWriteExt;

use common::{config, metric, metrics, start, token, Http};

/// A file of `len` bytes that compresses poorly (as media does).
fn file(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// A tus creation request for `len` bytes named `name` of type `mime`.
fn creation(h: &Http, len: usize, name: &str, mime: &str) -> reqwest::RequestBuilder {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    h.client
        .post(format!("{}/v1/media/uploads", h.base))
        .bearer_auth(&h.token)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", len.to_string())
        .header(
            "Upload-Metadata",
            format!("filename {},filetype {}", b64(name), b64(mime)),
        )
}

/// Creates an upload; its path.
async fn create(h: &Http, len: usize, name: &str, mime: &str) -> String {
    let r = creation(h, len, name, mime).send().await.unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    assert_eq!(r.headers()["tus-resumable"], "1.0.0");
    assert_eq!(r.headers()["upload-offset"], "0");
    r.headers()["location"].to_str().unwrap().to_owned()
}

/// HEAD: the upload's offset.
async fn offset(h: &Http, path: &str) -> u64 {
    let r = h
        .client
        .head(format!("{}{path}", h.base))
        .bearer_auth(&h.token)
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    r.headers()["upload-offset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// PATCH `bytes` at `at`: (status, headers).
async fn patch(h: &Http, path: &str, at: u64, bytes: Vec<u8>) -> (u16, reqwest::header::HeaderMap) {
    let r = h
        .client
        .patch(format!("{}{path}", h.base))
        .bearer_auth(&h.token)
        .header("Tus-Resumable", "1.0.0")
        .header("Content-Type", "application/offset+octet-stream")
        .header("Upload-Offset", at.to_string())
        .body(bytes)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.headers().clone())
}

/// Sends a PATCH whose body stops after `sent` of its declared `len`
/// bytes: the connection closes mid-body, as a phone losing its network.
async fn patch_cut(addr: SocketAddr, token: &str, path: &str, at: u64, body: &[u8], sent: usize) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Tus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\n\
         Upload-Offset: {at}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body[..sent]).await.unwrap();
    s.flush().await.unwrap();
    // Give the server the bytes before the connection goes.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    drop(s);
}

/// Uploads `data` whole; its media id.
async fn upload(h: &Http, data: &[u8], name: &str, mime: &str) -> String {
    let path = create(h, data.len(), name, mime).await;
    let (s, headers) = patch(h, &path, 0, data.to_vec()).await;
    assert_eq!(s, 204);
    assert_eq!(headers["upload-offset"], data.len().to_string().as_str());
    headers["missive-media-id"].to_str().unwrap().to_owned()
}

async fn get(
    h: &Http,
    path: &str,
    range: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = h
        .client
        .get(format!("{}{path}", h.base))
        .bearer_auth(&h.token);
    if let Some(r) = range {
        req = req.header("Range", r);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_at_any_point_resumes_to_the_exact_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let srv = start(c.clone()).await;
    let tok = token(&c, 1, 1);
    let h = Http::new(srv.addr(), tok.clone());
    // 2.5 MiB: three chunks, the last short.
    let data = file(5 << 19, 7);
    let path = create(&h, data.len(), "clip.bin", "application/octet-stream").await;
    // Cuts inside a chunk, at a chunk's last byte, on a boundary, one
    // past it, and in the last chunk.
    let cuts = [
        1usize,
        300_000,
        (1 << 20) - 1,
        1 << 20,
        (1 << 20) + 1,
        2_500_000,
    ];
    let mut at = 0u64;
    for cut in cuts {
        let want = cut - at as usize;
        patch_cut(srv.addr(), &tok, &path, at, &data[at as usize..], want).await;
        // The server may still be storing the last piece: the offset only
        // grows, to exactly what arrived.
        let mut now = offset(&h, &path).await;
        for _ in 0..100 {
            if now == cut as u64 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            now = offset(&h, &path).await;
        }
        assert_eq!(now, cut as u64, "after a cut at {cut}");
        at = now;
    }
    // A PATCH from a stale offset is refused with the right one.
    let (s, headers) = patch(&h, &path, 5, data[5..10].to_vec()).await;
    assert_eq!(s, 409);
    let _ = headers;
    // The rest, and the upload finishes.
    let (s, headers) = patch(&h, &path, at, data[at as usize..].to_vec()).await;
    assert_eq!(s, 204);
    let id = headers["missive-media-id"].to_str().unwrap().to_owned();
    assert_eq!(id, hex(blake3::hash(&data).as_bytes()));
    // A finished upload takes no more bytes, and reports its object.
    let (s, v) = h.get(&path).await;
    assert_eq!(s, 200);
    assert_eq!(v["media_id"], id.as_str());
    assert_eq!(v["offset"], data.len() as u64);
    let (s, _) = patch(&h, &path, data.len() as u64, vec![1]).await;
    assert_eq!(s, 400, "bytes past the declared length");
    let (s, _, bytes) = get(&h, &format!("/v1/media/{id}"), None).await;
    assert_eq!(s, 200);
    assert!(bytes == data, "the stored bytes differ from the upload");

    // A body longer than the upload's declared length, in one PATCH from
    // offset 0 (pieces in flight together): refused after the bytes that
    // fit are stored, and an empty PATCH finishes the upload with them.
    let other = file(5 << 19, 8);
    let path = create(&h, other.len(), "long.bin", "application/octet-stream").await;
    let mut longer = other.clone();
    longer.extend_from_slice(b"ten bytes!");
    let (s, _) = patch(&h, &path, 0, longer).await;
    assert_eq!(s, 400, "a body past the declared length");
    assert_eq!(offset(&h, &path).await, other.len() as u64);
    let (s, headers) = patch(&h, &path, other.len() as u64, Vec::new()).await;
    assert_eq!(s, 204);
    let id = headers["missive-media-id"].to_str().unwrap().to_owned();
    assert_eq!(id, hex(blake3::hash(&other).as_bytes()));
    let (_, _, bytes) = get(&h, &format!("/v1/media/{id}"), None).await;
    assert!(bytes == other, "the stored bytes differ from the upload");
    srv.shutdown().await.unwrap();
}

/// The write-once layout (design.md §4.3.3): an upload's whole chunks go
/// to a blob file once, not into the Raft log, and come back byte for
/// byte — before and after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploads_bytes_are_written_once_outside_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let srv = start(c.clone()).await;
    let h = Http::new(srv.addr(), token(&c, 1, 1));
    let counters = |text: &str| {
        (
            metric(text, "missive_log_bytes_written_total").unwrap(),
            metric(text, "missive_lsm_pinned_blob_bytes_written_total").unwrap(),
        )
    };
    let (log0, pinned0) = counters(&metrics(srv.addr()).await);
    let data = file(4 << 20, 11);
    let id = upload(&h, &data, "four.bin", "application/octet-stream").await;
    let (log1, pinned1) = counters(&metrics(srv.addr()).await);
    let mib = f64::from(1 << 20);
    assert!(
        pinned1 - pinned0 >= data.len() as f64,
        "{} bytes to blob files for a {}-byte upload",
        pinned1 - pinned0,
        data.len()
    );
    assert!(
        log1 - log0 < mib,
        "the log took {} bytes of a 4 MiB upload",
        log1 - log0
    );
    let (s, _, bytes) = get(&h, &format!("/v1/media/{id}"), None).await;
    assert_eq!(s, 200);
    assert!(bytes == data, "the stored bytes differ from the upload");
    srv.shutdown().await.unwrap();
    let srv = start(c.clone()).await;
    let h = Http::new(srv.addr(), token(&c, 1, 1));
    let (s, _, bytes) = get(
        &h,
        &format!("/v1/media/{id}"),
        Some("bytes=1048570-1048585"),
    )
    .await;
    assert_eq!(s, 206);
    assert_eq!(bytes, data[1_048_570..=1_048_585]);
    let (_, _, bytes) = get(&h, &format!("/v1/media/{id}"), None).await;
    assert!(bytes == data, "the stored bytes differ after a restart");
    srv.shutdown().await.unwrap();
}

/// tus creation-with-upload: a POST of `len` declared bytes whose body is
/// `body`; (status, headers).
async fn create_with(
    h: &Http,
    len: usize,
    body: Vec<u8>,
    mime: &str,
) -> (u16, reqwest::header::HeaderMap) {
    let r = creation(h, len, "file", mime)
        .header("Content-Type", "application/offset+octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.headers().clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creation_with_upload_stores_the_body_and_says_where_it_stands() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let srv = start(c.clone()).await;
    let h = Http::new(srv.addr(), token(&c, 1, 1));
    let bin = "application/octet-stream";

    // A whole file (two chunks) in the POST: created, stored, finished.
    let data = file(3 << 19, 11);
    let (s, headers) = create_with(&h, data.len(), data.clone(), bin).await;
    assert_eq!(s, 201);
    assert_eq!(headers["upload-offset"], data.len().to_string().as_str());
    let id = headers["missive-media-id"].to_str().unwrap().to_owned();
    assert_eq!(id, hex(blake3::hash(&data).as_bytes()));
    let path = headers["location"].to_str().unwrap().to_owned();
    let (s, v) = h.get(&path).await;
    assert_eq!((s, v["media_id"].as_str()), (200, Some(id.as_str())));
    let (_, _, bytes) = get(&h, &format!("/v1/media/{id}"), None).await;
    assert!(bytes == data, "the stored bytes differ from the upload");

    // Part of a file: created with what came; a PATCH finishes it.
    let data = file(5 << 19, 12);
    let half = data.len() / 2;
    let (s, headers) = create_with(&h, data.len(), data[..half].to_vec(), bin).await;
    assert_eq!(s, 201);
    assert_eq!(headers["upload-offset"], half.to_string().as_str());
    assert!(!headers.contains_key("missive-media-id"));
    let path = headers["location"].to_str().unwrap().to_owned();
    assert_eq!(offset(&h, &path).await, half as u64);
    let (s, headers) = patch(&h, &path, half as u64, data[half..].to_vec()).await;
    assert_eq!(s, 204);
    assert_eq!(
        headers["missive-media-id"].to_str().unwrap(),
        hex(blake3::hash(&data).as_bytes())
    );

    // A body past the declared length: refused, but the refusal names the
    // upload, which holds the bytes that fit; an empty PATCH finishes it.
    let (s, headers) = create_with(&h, 100, file(110, 13), bin).await;
    assert_eq!(s, 400);
    let path = headers["location"].to_str().unwrap().to_owned();
    assert_eq!(offset(&h, &path).await, 100);
    let (s, headers) = patch(&h, &path, 100, Vec::new()).await;
    assert_eq!(s, 204);
    assert_eq!(
        headers["missive-media-id"].to_str().unwrap(),
        hex(blake3::hash(&file(110, 13)[..100]).as_bytes())
    );

    // An empty file in an empty POST is complete at once.
    let (s, headers) = create_with(&h, 0, Vec::new(), bin).await;
    assert_eq!(s, 201);
    assert_eq!(
        headers["missive-media-id"].to_str().unwrap(),
        hex(blake3::hash(b"").as_bytes())
    );

    // An image gets its placeholder in the POST's answer.
    let png = encoded(300, 200, image::ImageFormat::Png);
    let (s, headers) = create_with(&h, png.len(), png, "image/png").await;
    assert_eq!(s, 201);
    assert!(!headers["missive-placeholder"].is_empty());

    // Refused before anything is created: too large, no Location.
    let (s, headers) = create_with(&h, 1 << 40, vec![1, 2, 3], bin).await;
    assert_eq!(s, 413);
    assert!(!headers.contains_key("location"));
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_serve_ranges_etags_and_refuse_bad_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let srv = start(c.clone()).await;
    let h = Http::new(srv.addr(), token(&c, 1, 1));
    let data = file((1 << 20) + 4321, 9);
    // Random bytes: a video (an image would be decoded, and refused).
    let id = upload(&h, &data, "clip.mp4", "video/mp4").await;
    // One PATCH carried it all: the id is the hash taken as it streamed
    // by, and must be the bytes' own.
    assert_eq!(id, hex(blake3::hash(&data).as_bytes()));
    let path = format!("/v1/media/{id}?name=clip.mp4");
    let (s, hd, body) = get(&h, &path, None).await;
    assert_eq!(s, 200);
    assert!(body == data);
    assert_eq!(hd["content-type"], "video/mp4");
    assert_eq!(hd["etag"], format!("\"{id}\"").as_str());
    assert_eq!(hd["accept-ranges"], "bytes");
    assert_eq!(hd["x-content-type-options"], "nosniff");
    assert!(hd["cache-control"].to_str().unwrap().contains("immutable"));
    assert!(hd["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("inline; filename=\"clip.mp4\""));
    let n = data.len();
    for (range, from, to) in [
        ("bytes=0-99", 0, 100),
        ("bytes=1048570-1048590", 1_048_570, 1_048_591),
        ("bytes=1000-", 1000, n),
        ("bytes=-500", n - 500, n),
    ] {
        let (s, hd, body) = get(&h, &path, Some(range)).await;
        assert_eq!(s, 206, "{range}");
        assert!(body == data[from..to], "{range}");
        assert_eq!(
            hd["content-range"],
            format!("bytes {from}-{}/{n}", to - 1).as_str(),
            "{range}"
        );
    }
    for bad in ["bytes=99999999-", "bytes=5-2", "bytes=-0"] {
        let (s, hd, _) = get(&h, &path, Some(bad)).await;
        assert_eq!(s, 416, "{bad}");
        assert_eq!(hd["content-range"], format!("bytes */{n}").as_str());
    }
    let r = h
        .client
        .get(format!("{}{path}", h.base))
        .bearer_auth(&h.token)
        .header("If-None-Match", format!("\"{id}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    // Too large, and a missing length, are refused up front.
    let r = h
        .client
        .post(format!("{}/v1/media/uploads", h.base))
        .bearer_auth(&h.token)
        .header("Upload-Length", ((100u64 << 20) + 1).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = h
        .client
        .post(format!("{}/v1/media/uploads", h.base))
        .bearer_auth(&h.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = h
        .client
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/media/uploads", h.base),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["tus-version"], "1.0.0");
    assert_eq!(
        r.headers()["tus-extension"],
        "creation,creation-with-upload"
    );
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_files_are_stored_once_and_only_readers_may_read() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let srv = start(c.clone()).await;
    let (alice, bob, eve) = (
        Http::new(srv.addr(), token(&c, 1, 1)),
        Http::new(srv.addr(), token(&c, 2, 1)),
        Http::new(srv.addr(), token(&c, 3, 1)),
    );
    let data = file(700_000, 3);
    let id = upload(&alice, &data, "a.pdf", "application/pdf").await;
    // Eve uploads the same bytes: the same id, stored once.
    let again = upload(&eve, &data, "same.pdf", "application/pdf").await;
    assert_eq!(again, id);
    let (s, _, body) = get(&eve, &format!("/v1/media/{id}"), None).await;
    assert_eq!(
        (s, body == data),
        (200, true),
        "an uploader reads their upload"
    );
    // Bob may not read it until a message in a conversation he is in names it.
    let conv = alice.direct(2).await;
    let q = format!("/v1/media/{id}?conversation={conv}");
    let missing = format!("/v1/media/{}?conversation={conv}", "ab".repeat(32));
    let (s1, _, b1) = get(&bob, &q, None).await;
    let (s2, _, b2) = get(&bob, &missing, None).await;
    assert_eq!((s1, s2), (404, 404));
    assert_eq!(
        b1, b2,
        "the refusal says nothing of whether the object exists"
    );
    let body =
        json!({"media_id": id, "mime": "application/pdf", "size": data.len(), "name": "a.pdf"});
    let (s, v) = alice
        .post(
            &format!("/v1/conversations/{conv}/messages"),
            json!({"client_msg_id": "m1", "kind": "media", "body": body.to_string()}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let seq = v["seq"].as_u64().unwrap();
    let (s, _, b) = get(&bob, &q, None).await;
    assert_eq!(
        (s, b == data),
        (200, true),
        "a member reads what a message names"
    );
    // Eve is not in the conversation: naming it does not help her read
    // Bob's... and a stranger's id is refused alike.
    let (s, _, _) = get(&Http::new(srv.addr(), token(&c, 4, 1)), &q, None).await;
    assert_eq!(s, 404);
    // A media message must name something its sender uploaded, with its size.
    let (s, v) = bob
        .post(
            &format!("/v1/conversations/{conv}/messages"),
            json!({"client_msg_id": "m2", "kind": "media", "body": body.to_string()}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("no_such_media")),
        "{v}"
    );
    let wrong = json!({"media_id": id, "mime": "application/pdf", "size": 1});
    let (s, _) = alice
        .post(
            &format!("/v1/conversations/{conv}/messages"),
            json!({"client_msg_id": "m3", "kind": "media", "body": wrong.to_string()}),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = alice
        .post(
            &format!("/v1/conversations/{conv}/messages"),
            json!({"client_msg_id": "m4", "kind": "media", "body": "not json"}),
        )
        .await;
    assert_eq!(s, 400);
    // A signed URL works without a token, for a while, for these bytes only.
    let (s, v) = bob
        .post(
            &format!("/v1/media/{id}/url"),
            json!({"conversation": conv}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let url = v["url"].as_str().unwrap().to_owned();
    let r = reqwest::get(format!("{}{url}", bob.base)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["cache-control"]
        .to_str()
        .unwrap()
        .starts_with("public, max-age="));
    assert!(r.bytes().await.unwrap() == data);
    let forged = url.replace("exp=", "exp=1");
    let r = reqwest::get(format!("{}{forged}", bob.base)).await.unwrap();
    assert_eq!(r.status(), 404);
    let (s, _) = eve
        .post(
            &format!("/v1/media/{id}/url"),
            json!({"conversation": conv}),
        )
        .await;
    assert_eq!(s, 200, "Eve uploaded these bytes too");
    let (s, _) = Http::new(srv.addr(), token(&c, 4, 1))
        .post(
            &format!("/v1/media/{id}/url"),
            json!({"conversation": conv}),
        )
        .await;
    assert_eq!(s, 404);
    // Unsent, the message no longer lets Bob read it.
    let (s, v) = alice
        .delete(&format!("/v1/conversations/{conv}/messages/{seq}"))
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, _, _) = get(&bob, &q, None).await;
    assert_eq!(s, 404);
    // An upload is its owner's: others cannot see or extend it.
    let path = create(&alice, 10, "", "").await;
    let (s, _) = bob.get(&path).await;
    assert_eq!(s, 404);
    let (s, _) = patch(&bob, &path, 0, vec![0; 10]).await;
    assert_eq!(s, 404);
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_and_grpc_hand_out_signed_urls_to_readers_only() {
    use missive_server::edge::grpc::pb;
    use missive_server::edge::grpc::pb::missive_client::MissiveClient;
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let srv = start(c.clone()).await;
    let (alice, bob_tok) = (Http::new(srv.addr(), token(&c, 1, 1)), token(&c, 2, 1));
    let data = file(5000, 11);
    let id = upload(&alice, &data, "v.ogg", "audio/ogg").await;
    let conv = alice.direct(2).await;
    let body = json!({"media_id": id, "mime": "audio/ogg", "size": data.len()});
    let (s, v) = alice
        .post(
            &format!("/v1/conversations/{conv}/messages"),
            json!({"client_msg_id": "v1", "kind": "media", "body": body.to_string()}),
        )
        .await;
    assert_eq!(s, 200, "{v}");

    // WebSocket: Bob asks through the conversation; without it, refused.
    let mut ws = common::Ws::connect(srv.addr(), &bob_tok).await;
    let mut seen = Vec::new();
    let a = ws
        .request(
            json!({"type": "media_url", "media": id, "conv": conv}),
            &mut seen,
        )
        .await;
    assert_eq!(a["type"], "media_url", "{a}");
    assert_eq!(a["size"], data.len() as u64);
    let r = reqwest::get(format!("{}{}", alice.base, a["url"].as_str().unwrap()))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "audio/ogg");
    assert!(r.bytes().await.unwrap() == data);
    let a = ws
        .request(json!({"type": "media_url", "media": id}), &mut seen)
        .await;
    assert_eq!(a["type"], "error", "{a}");
    assert_eq!(a["code"], "no_such_media", "{a}");

    // gRPC: the same rules.
    let mut g = MissiveClient::connect(format!("http://{}", srv.grpc_addr().unwrap()))
        .await
        .unwrap();
    let call = |media: String, conv: u64| {
        let mut r = tonic::Request::new(pb::MediaUrlRequest { media, conv });
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {bob_tok}").parse().unwrap(),
        );
        r
    };
    let ok = g
        .media_url(call(id.clone(), conv.parse().unwrap()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (ok.media_id.as_str(), ok.size),
        (id.as_str(), data.len() as u64)
    );
    let r = reqwest::get(format!("{}{}", alice.base, ok.url))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let refused = g.media_url(call(id.clone(), 0)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound);
    let refused = g.media_url(call("zz".into(), 0)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound);
    srv.shutdown().await.unwrap();
}

fn encoded(w: u32, h: u32, format: image::ImageFormat) -> Vec<u8> {
    let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, 128])
    }));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_get_thumbnails_and_a_placeholder_and_bombs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let srv = start(c.clone()).await;
    let alice = Http::new(srv.addr(), token(&c, 1, 1));
    let bob = Http::new(srv.addr(), token(&c, 2, 1));

    let png = encoded(1000, 500, image::ImageFormat::Png);
    let path = create(&alice, png.len(), "wide.png", "image/png").await;
    let (s, headers) = patch(&alice, &path, 0, png.clone()).await;
    assert_eq!(s, 204);
    assert!(
        !headers["missive-placeholder"].is_empty(),
        "a ThumbHash in the answer"
    );
    let id = headers["missive-media-id"].to_str().unwrap().to_owned();
    let (s, v) = alice.get(&path).await;
    assert_eq!(s, 200);
    assert_eq!(
        (v["image"]["width"].as_u64(), v["image"]["height"].as_u64()),
        (Some(1000), Some(500))
    );
    let sizes: Vec<(u64, u64, u64)> = v["image"]["thumbnails"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["size"].as_u64().unwrap(),
                t["width"].as_u64().unwrap(),
                t["height"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(sizes, [(96, 96, 48), (320, 320, 160), (800, 800, 400)]);
    for (size, w, h) in sizes {
        let (s, hd, bytes) = get(&alice, &format!("/v1/media/{id}/thumbnail/{size}"), None).await;
        assert_eq!(s, 200);
        assert_eq!(hd["content-type"], "image/jpeg");
        let t = image::load_from_memory(&bytes).unwrap();
        assert_eq!((u64::from(t.width()), u64::from(t.height())), (w, h));
    }
    let (s, _, _) = get(&alice, &format!("/v1/media/{id}/thumbnail/50"), None).await;
    assert_eq!(s, 404);
    let (s, _, body) = get(&bob, &format!("/v1/media/{id}/thumbnail/96"), None).await;
    assert_eq!(s, 404, "the thumbnail's access is the object's");
    assert!(String::from_utf8_lossy(&body).contains("no_such_media"));

    // A small JPEG: one thumbnail; a GIF and a WebP decode too.
    for (format, mime) in [
        (image::ImageFormat::Jpeg, "image/jpeg"),
        (image::ImageFormat::Gif, "image/gif"),
        (image::ImageFormat::WebP, "image/webp"),
    ] {
        let bytes = encoded(300, 200, format);
        let path = create(&alice, bytes.len(), "small", mime).await;
        let (s, _) = patch(&alice, &path, 0, bytes).await;
        assert_eq!(s, 204, "{mime}");
        let (_, v) = alice.get(&path).await;
        let t = &v["image"]["thumbnails"];
        assert_eq!(t.as_array().map(Vec::len), Some(1), "{mime}: {v}");
        assert_eq!(
            (t[0]["width"].as_u64(), t[0]["height"].as_u64()),
            (Some(96), Some(64))
        );
    }

    // A PNG whose header claims 100 000 × 100 000 pixels.
    let mut bomb = encoded(1, 1, image::ImageFormat::Png);
    bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32fast::hash(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    let path = create(&alice, bomb.len(), "bomb.png", "image/png").await;
    let r = alice
        .client
        .patch(format!("{}{path}", alice.base))
        .bearer_auth(&alice.token)
        .header("Content-Type", "application/offset+octet-stream")
        .header("Upload-Offset", "0")
        .body(bomb)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "bad_image", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("100000×100000"),
        "{v}"
    );
    let (_, v) = alice.get(&path).await;
    assert!(v["media_id"].is_null(), "a refused image is no object: {v}");
    srv.shutdown().await.unwrap();
}

/// Runs the collector now (grace 0: everything unreferenced goes).
async fn collect(h: &Http) -> serde_json::Value {
    let r = h
        .client
        .post(format!("{}/v1/admin/media/gc?grace_secs=0", h.base))
        .header("x-admin-secret", "test-admin-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_deletes_media_once_no_live_message_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.media.upload_ttl_secs = 0;
    c.media.gc_interval_secs = 0;
    let srv = start(c.clone()).await;
    let (alice, bob) = (
        Http::new(srv.addr(), token(&c, 1, 1)),
        Http::new(srv.addr(), token(&c, 2, 1)),
    );
    let conv = alice.direct(2).await;
    let kept = file((1 << 20) + 10, 21);
    let a = upload(&alice, &kept, "a.bin", "").await;
    let b = upload(&alice, &file(1000, 22), "b.bin", "").await;
    let open = create(&alice, 5000, "c.bin", "").await;
    let (s, _) = patch(&alice, &open, 0, vec![1; 100]).await;
    assert_eq!(s, 204);
    let mut seqs = Vec::new();
    for m in ["m1", "m2"] {
        let body = json!({"media_id": a, "mime": "application/octet-stream", "size": kept.len()});
        let (s, v) = alice
            .post(
                &format!("/v1/conversations/{conv}/messages"),
                json!({"client_msg_id": m, "kind": "media", "body": body.to_string()}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        seqs.push(v["seq"].as_u64().unwrap());
    }
    let r = collect(&alice).await;
    assert_eq!(r["live_references"], 2, "{r}");
    assert_eq!(r["objects_deleted"], 1, "the unsent upload: {r}");
    assert_eq!(r["uploads_dropped"], 1, "the abandoned upload: {r}");
    let (s, _, _) = get(&alice, &format!("/v1/media/{b}"), None).await;
    assert_eq!(s, 404, "never sent, collected");
    let (s, _) = alice.get(&open).await;
    assert_eq!(s, 404, "abandoned, dropped");
    let q = format!("/v1/media/{a}?conversation={conv}");
    let (s, _, bytes) = get(&bob, &q, None).await;
    assert_eq!((s, bytes == kept), (200, true));

    // One of two messages unsent: still named, kept.
    let (s, _) = alice
        .delete(&format!("/v1/conversations/{conv}/messages/{}", seqs[0]))
        .await;
    assert_eq!(s, 200);
    let r = collect(&alice).await;
    assert_eq!(
        (r["objects_deleted"].as_u64(), r["dead_references"].as_u64()),
        (Some(0), Some(1)),
        "{r}"
    );
    let (s, _, _) = get(&bob, &q, None).await;
    assert_eq!(s, 200);
    // The last one unsent: the bytes go, for everyone.
    let (s, _) = alice
        .delete(&format!("/v1/conversations/{conv}/messages/{}", seqs[1]))
        .await;
    assert_eq!(s, 200);
    let r = collect(&alice).await;
    assert_eq!(r["objects_deleted"], 1, "{r}");
    assert_eq!(r["bytes_deleted"], kept.len() as u64, "{r}");
    let (s, _, _) = get(&bob, &q, None).await;
    assert_eq!(s, 404);
    let (s, _, _) = get(&alice, &format!("/v1/media/{a}"), None).await;
    assert_eq!(s, 404, "the uploader's grant went with it");
    // Uploading the same bytes again stores them anew.
    let again = upload(&alice, &kept, "a.bin", "").await;
    assert_eq!(again, a);
    let (s, _, bytes) = get(&alice, &format!("/v1/media/{a}"), None).await;
    assert_eq!((s, bytes == kept), (200, true));
    srv.shutdown().await.unwrap();
}
