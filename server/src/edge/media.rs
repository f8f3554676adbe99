//! Media over HTTP: resumable uploads (tus 1.0's core protocol and its
//! `creation` extension) and downloads with `Range`, `ETag` and caching
//! headers. What a caller may do is `crate::media`'s; this file speaks the
//! protocols.
//!
//! ```text
//! POST  /v1/media/uploads            Upload-Length, Upload-Metadata → 201 Location
//! HEAD  /v1/media/uploads/{upload}   → Upload-Offset, Upload-Length (GET: JSON too)
//! PATCH /v1/media/uploads/{upload}   Upload-Offset, the bytes → 204 Upload-Offset
//!                                    (+ Missive-Media-Id once complete)
//! GET   /v1/media/{media}            ?conversation= (token) or ?exp=&sig= (signed)
//! GET   /v1/media/{media}/thumbnail/{size}   the same access, an image's thumbnail
//! POST  /v1/media/{media}/url        → a signed URL
//! ```
//!
//! A PATCH body is streamed: its bytes are cut at 1 MiB chunk boundaries
//! and each piece is committed (one Raft write) before the next is read,
//! so memory per upload is one chunk, and a connection that drops keeps
//! every piece committed before it dropped — `HEAD` tells the client where
//! to resume. A download streams chunk by chunk the same way.

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;

use missive_chat::media::body::{hash_hex, parse_hash};
use missive_chat::media::image::ImageInfo;
use missive_chat::media::records::{Hash, Object, Upload, UploadId, UploadState};
use missive_engine::keys::ConversationId;

use crate::error::ApiError;
use crate::media::{no_such_media, APPEND_CHUNK};
use crate::service::Service;
use crate::state::{conv_id, AppState, Authed, Q};

/// The tus protocol version spoken.
pub const TUS_VERSION: &str = "1.0.0";
/// The header naming a finished upload's object.
pub const MEDIA_ID_HEADER: &str = "missive-media-id";
/// The header carrying a finished image upload's ThumbHash (base64).
pub const PLACEHOLDER_HEADER: &str = "missive-placeholder";

fn tus_headers(h: &mut HeaderMap) {
    h.insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
}

/// A client naming another tus version gets 412 (tus 1.0 core); one that
/// names none is served (plain HTTP clients).
fn check_tus(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get("tus-resumable") {
        Some(v) if v.as_bytes() != TUS_VERSION.as_bytes() => Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "unsupported_version",
            format!("this server speaks tus {TUS_VERSION}"),
        )),
        _ => Ok(()),
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Result<u64, ApiError> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or_else(|| ApiError::invalid(format!("send the {name} header (a byte count)")))
}

/// `Upload-Metadata`: comma-separated `key base64(value)` pairs (tus 1.0).
/// The file name is `filename` (or `name`), the MIME type `filetype`
/// (or `type`, `mime`); other keys are ignored.
fn upload_metadata(headers: &HeaderMap) -> Result<(String, String), ApiError> {
    use base64::Engine;
    let (mut name, mut mime) = (String::new(), String::new());
    let Some(raw) = headers.get("upload-metadata") else {
        return Ok((name, mime));
    };
    let raw = raw
        .to_str()
        .map_err(|_| ApiError::invalid("Upload-Metadata is ASCII"))?;
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once(' ').unwrap_or((pair, ""));
        let value = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .ok()
            .and_then(|v| String::from_utf8(v).ok())
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "Upload-Metadata's {key:?} is not base64 of UTF-8 text"
                ))
            })?;
        match key {
            "filename" | "name" => name = value,
            "filetype" | "type" | "mime" => mime = value,
            _ => {}
        }
    }
    Ok((name, mime))
}

/// `OPTIONS /v1/media/uploads`: tus discovery (version, extensions, the
/// largest file). A browser's OPTIONS (it sends `Origin`) is a CORS
/// preflight and gets the CORS layer's answer instead: this route sits
/// outside that layer, which would answer every OPTIONS as a preflight.
pub(crate) async fn tus_options(
    State(s): State<AppState>,
    req: axum::extract::Request,
) -> Response {
    use tower::{Layer, ServiceExt};
    if req.headers().contains_key(header::ORIGIN) {
        let cors = crate::edge::cors::layer(s.auth.config());
        let inner = tower::service_fn(|_req: axum::extract::Request| async {
            Ok::<_, std::convert::Infallible>(StatusCode::NO_CONTENT.into_response())
        });
        return match cors.layer(inner).oneshot(req).await {
            Ok(r) => r.into_response(),
            Err(never) => match never {},
        };
    }
    let mut h = HeaderMap::new();
    tus_headers(&mut h);
    h.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    h.insert(
        "tus-extension",
        HeaderValue::from_static("creation,creation-with-upload"),
    );
    h.insert(
        "tus-max-size",
        HeaderValue::from(s.service.media.section.max_file_bytes),
    );
    (StatusCode::NO_CONTENT, h).into_response()
}

fn upload_id(raw: &str) -> Result<UploadId, ApiError> {
    if raw.len() != 16 {
        return Err(no_such_media());
    }
    u64::from_str_radix(raw, 16).map_err(|_| no_such_media())
}

fn media_hash(raw: &str) -> Result<Hash, ApiError> {
    parse_hash(raw).ok_or_else(no_such_media)
}

pub(crate) fn upload_json(id: UploadId, u: &Upload) -> serde_json::Value {
    let media = match &u.state {
        UploadState::Finished { hash, .. } => json!(hash_hex(hash)),
        UploadState::Open => serde_json::Value::Null,
    };
    json!({
        "upload": format!("{id:016x}"),
        "offset": u.received,
        "length": u.length,
        "mime": u.mime,
        "name": u.name,
        "media_id": media,
    })
}

fn offset_headers(u: &Upload) -> HeaderMap {
    let mut h = HeaderMap::new();
    tus_headers(&mut h);
    h.insert("upload-offset", HeaderValue::from(u.received));
    h.insert("upload-length", HeaderValue::from(u.length));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let UploadState::Finished { hash, .. } = &u.state {
        if let Ok(v) = HeaderValue::from_str(&hash_hex(hash)) {
            h.insert(MEDIA_ID_HEADER, v);
        }
    }
    h
}

#[utoipa::path(
    post,
    path = "/v1/media/uploads",
    tag = "media",
    summary = "Start a resumable upload (tus 1.0 creation, creation-with-upload)",
    params(("Upload-Length" = u64, Header, description = "the file's length in bytes"), ("Upload-Metadata" = Option<String>, Header, description = "tus metadata: `filename <base64>,filetype <base64>`")),
    request_body(content = Option<Vec<u8>>, content_type = "application/offset+octet-stream", description = "optional: the file's first bytes (or all of them)"),
    responses((status = 201, description = "created: Location names the upload; Upload-Offset is what the body stored; Missive-Media-Id once complete"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
pub(crate) async fn create_upload(
    State(s): State<AppState>,
    Authed(who): Authed,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_tus(&headers)?;
    if headers.contains_key("upload-defer-length") {
        return Err(ApiError::invalid(
            "declare the length at creation (Upload-Length); deferred lengths are not supported",
        ));
    }
    let length = header_u64(&headers, "upload-length")?;
    let (name, mime) = upload_metadata(&headers)?;
    if !carries_bytes(&headers) {
        let (id, u) = s
            .service
            .create_upload(who.user, length, &mime, &name)
            .await?;
        let mut h = offset_headers(&u);
        h.extend(location(id));
        return Ok((StatusCode::CREATED, h, Json(upload_json(id, &u))).into_response());
    }
    // tus creation-with-upload: the body holds the file's first bytes
    // (or all of them). The creation is queued just ahead of the first
    // piece, so on the shard's leader both ride in one log entry.
    let (mime, name) = s
        .service
        .check_new_upload(who.user, length, &mime, &name)
        .await?;
    let id = s.service.new_upload_id()?;
    let create: Creating<'_> =
        Box::pin(s.service.create_upload_as(id, who.user, length, mime, name));
    let start = Start::Creating { length, create };
    let stored = match append_stream(&s.service, who.user, id, start, body).await {
        Ok((u, hash)) => finish_if_complete(&s.service, who.user, id, u, hash).await,
        Err(e) => Err(e),
    };
    match stored {
        Ok((u, placeholder)) => {
            let mut h = offset_headers(&u);
            h.extend(location(id));
            placeholder_header(&mut h, placeholder);
            Ok((StatusCode::CREATED, h, Json(upload_json(id, &u))).into_response())
        }
        // Created or not, the refusal names where the upload would be:
        // HEAD it to resume (it is 404 if the creation did not happen).
        Err(e) => {
            let mut r = e.into_response();
            r.headers_mut().extend(location(id));
            Ok(r)
        }
    }
}

/// Whether a request's body is upload bytes (tus: `Content-Type:
/// application/offset+octet-stream`).
fn carries_bytes(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "application/offset+octet-stream")
}

/// The `Location` of upload `id`.
fn location(id: UploadId) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/media/uploads/{id:016x}")) {
        h.insert(header::LOCATION, v);
    }
    h
}

/// Adds `Missive-Placeholder` (base64) when the finished upload is an image.
fn placeholder_header(h: &mut HeaderMap, placeholder: Option<Vec<u8>>) {
    if let Some(p) = placeholder {
        use base64::Engine;
        let p = base64::engine::general_purpose::STANDARD.encode(p);
        if let Ok(v) = HeaderValue::from_str(&p) {
            h.insert(PLACEHOLDER_HEADER, v);
        }
    }
}

/// Finishes `u` if its last byte is stored and it is still open: the
/// upload as it stands after, and the image's placeholder if it is one.
async fn finish_if_complete(
    svc: &Service,
    who: missive_chat::UserId,
    id: UploadId,
    u: Upload,
    received_hash: Option<Hash>,
) -> Result<(Upload, Option<Vec<u8>>), ApiError> {
    if u.received == u.length && u.state == UploadState::Open {
        let f = svc
            .finish_upload(who, id, Some(u.clone()), received_hash)
            .await?;
        Ok((f.upload, f.object.image.map(|i| i.placeholder)))
    } else {
        Ok((u, None))
    }
}

#[utoipa::path(
    get,
    path = "/v1/media/uploads/{upload}",
    tag = "media",
    summary = "Where an upload stands (HEAD: the tus offset headers only)",
    params(("upload" = String, Path, description = "upload id (16 hex digits)")),
    responses((status = 200, description = "Upload-Offset, Upload-Length; JSON {upload, offset, length, mime, name, media_id}"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
pub(crate) async fn upload_status(
    State(s): State<AppState>,
    Authed(who): Authed,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = upload_id(&raw)?;
    let u = s.service.upload(who.user, id).await?;
    let mut body = upload_json(id, &u);
    if let UploadState::Finished { hash, .. } = &u.state {
        let object = s.service.object(hash).await?;
        body["image"] = object.image.as_ref().map(image_json).unwrap_or_default();
    }
    Ok((offset_headers(&u), Json(body)).into_response())
}

/// An image's description as the edges send it (`placeholder`: the
/// ThumbHash, base64).
pub fn image_json(i: &ImageInfo) -> serde_json::Value {
    use base64::Engine;
    json!({
        "width": i.width,
        "height": i.height,
        "placeholder": base64::engine::general_purpose::STANDARD.encode(&i.placeholder),
        "thumbnails": i.thumbs.iter().map(|t| json!({
            "size": t.size, "width": t.width, "height": t.height, "mime": t.mime,
        })).collect::<Vec<_>>(),
    })
}

#[utoipa::path(
    patch,
    path = "/v1/media/uploads/{upload}",
    tag = "media",
    summary = "Append bytes to an upload (tus 1.0 core)",
    params(("upload" = String, Path, description = "upload id (16 hex digits)"), ("Upload-Offset" = u64, Header, description = "where the bytes go: the upload's current offset")),
    request_body(content = Vec<u8>, content_type = "application/offset+octet-stream"),
    responses((status = 204, description = "stored: Upload-Offset is the new offset; Missive-Media-Id once complete"), (status = "4XX", description = "refused (409 offset_mismatch: HEAD for the offset)", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
pub(crate) async fn append_upload(
    State(s): State<AppState>,
    Authed(who): Authed,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_tus(&headers)?;
    let id = upload_id(&raw)?;
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if ctype != "application/offset+octet-stream" {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send Content-Type: application/offset+octet-stream",
        ));
    }
    let offset = header_u64(&headers, "upload-offset")?;
    let u = s.service.upload(who.user, id).await?;
    if u.received != offset {
        return Err(offset_mismatch(u.received));
    }
    let mut received_hash = None;
    let u = if u.state == UploadState::Open {
        let (u, hash) = append_stream(&s.service, who.user, id, Start::Stored(u), body).await?;
        received_hash = hash;
        u
    } else {
        // Complete: an empty PATCH re-reads the answer; bytes are refused.
        let mut stream = body.into_data_stream();
        while let Some(piece) = stream.next().await {
            if piece.is_ok_and(|b| !b.is_empty()) {
                return Err(ApiError::invalid(format!(
                    "this upload is complete at {} bytes; it takes no more",
                    u.length
                )));
            }
        }
        u
    };
    let (u, placeholder) = finish_if_complete(&s.service, who.user, id, u, received_hash).await?;
    let mut h = offset_headers(&u);
    placeholder_header(&mut h, placeholder);
    Ok((StatusCode::NO_CONTENT, h).into_response())
}

fn offset_mismatch(received: u64) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "offset_mismatch",
        format!("this upload holds {received} bytes; send Upload-Offset: {received}"),
    )
}

/// Pieces of one PATCH in the log at once. One at a time, each piece
/// waited out a whole Raft round (its log append and sync, apply, answer)
/// before the next was even queued: uploads ran at a quarter of the
/// disk's rate with the server mostly idle. With four queued, the shard's
/// log always has the next piece waiting when a flush ends; each is an
/// entry of its own (`ENTRY_BULK_BYTES`), and eight measured no faster
/// (openraft appends one entry per flush). An upload holds at most nine
/// pieces (9 MiB) in memory: four in flight, four read ahead
/// ([`read_pieces`]), one being cut.
const PIPELINE: usize = 4;

/// A piece on its way: where it starts, its bytes (kept to resend it), and
/// the write's answer.
type InFlight<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = (u64, Bytes, Result<Upload, ApiError>)> + Send + 'a>,
>;

/// An upload's creation on its way (creation-with-upload).
type Creating<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Upload, ApiError>> + Send + 'a>>;

/// Where a body's bytes go.
enum Start<'a> {
    /// An upload that exists: after the bytes it holds.
    Stored(Upload),
    /// An upload being created: from its first byte, the creation queued
    /// just ahead of the first piece.
    Creating {
        /// The upload's declared length.
        length: u64,
        /// The creation's write, not yet polled.
        create: Creating<'a>,
    },
}

/// A piece's write once queued: still running, or answered by its first
/// poll already (a refusal before anything was sent).
enum Queued<'a> {
    Running(InFlight<'a>),
    Answered(u64, Bytes, Result<Upload, ApiError>),
}

/// Polls `f` once, now, and gives its output if that finished it. A write
/// queues itself on the shard's batcher (or starts its forward) at its
/// first poll: polling in order queues in order.
async fn poll_once<'a, T>(
    f: &mut std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>,
) -> Option<T> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match f.as_mut().poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

/// Queues the write of `bytes` at `at`.
async fn queue_piece(
    svc: &Service,
    who: missive_chat::UserId,
    id: UploadId,
    at: u64,
    bytes: Bytes,
) -> Queued<'_> {
    let mut write: InFlight<'_> = Box::pin(async move {
        let r = svc.append_upload(who, id, at, bytes.clone()).await;
        (at, bytes, r)
    });
    match poll_once(&mut write).await {
        Some((at, bytes, r)) => Queued::Answered(at, bytes, r),
        None => Queued::Running(write),
    }
}

/// What the body reader hands the writer.
enum Piece {
    /// The bytes at an offset, within one chunk.
    Bytes(u64, Bytes),
    /// The body goes on past the declared length (nothing after this).
    TooLong,
}

/// What the body reader found when the body ended.
struct BodyEnd {
    /// The connection dropped mid-body.
    dropped: bool,
    /// The BLAKE3 state of every byte from offset 0, if the body started
    /// there.
    hasher: Option<blake3::Hasher>,
}

/// Reads the body and cuts it into chunk-bounded pieces from `at`,
/// hashing them as they go by when the body starts at offset 0. It runs
/// as its own task, beside the writes: reading and hashing a 50 MiB body
/// took 40 of a PATCH's 90 ms when the same task also waited for the
/// writes.
async fn read_pieces(
    body: Body,
    mut at: u64,
    length: u64,
    tx: tokio::sync::mpsc::Sender<Piece>,
) -> BodyEnd {
    let mut stream = body.into_data_stream();
    // Only what this node commits from offset 0 is hashed; anything else
    // is read back at finish.
    let mut hasher = (at == 0).then(blake3::Hasher::new);
    let mut dropped = false;
    // The piece being filled, allocated at its final size: a frame is
    // copied in only up to the piece's end, and the rest of it starts the
    // next piece. (Appending whole frames overshot the MiB with almost
    // every piece: a reallocation and a copy of the whole piece each.)
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let (mut frame, end) = match stream.next().await {
            Some(Ok(b)) => (b, false),
            Some(Err(e)) => {
                // The connection went away mid-body: keep what arrived
                // (tus: the client resumes from the stored offset).
                tracing::debug!(error = %e, "upload body ended early");
                dropped = true;
                (Bytes::new(), true)
            }
            None => (Bytes::new(), true),
        };
        while !frame.is_empty() {
            if at + buf.len() as u64 == length {
                // A full piece is sent at once, so `buf` is empty here.
                let _ = tx.send(Piece::TooLong).await;
                return BodyEnd { dropped, hasher };
            }
            // The piece ends at its chunk's end or the file's.
            let piece = (APPEND_CHUNK - at % APPEND_CHUNK).min(length - at) as usize;
            if buf.capacity() < piece {
                buf.reserve_exact(piece - buf.len());
            }
            let n = (piece - buf.len()).min(frame.len());
            buf.extend_from_slice(&frame.split_to(n));
            if buf.len() == piece && !send_piece(&tx, &mut hasher, &mut at, &mut buf).await {
                return BodyEnd { dropped, hasher };
            }
        }
        if end {
            if !buf.is_empty() {
                send_piece(&tx, &mut hasher, &mut at, &mut buf).await;
            }
            return BodyEnd { dropped, hasher };
        }
    }
}

/// Hands the piece in `buf` (starting at `*at`) to the writer, hashing it
/// on the way; `buf` is left empty, `*at` past the piece. False: the
/// writer gave up (an error went to the client).
async fn send_piece(
    tx: &tokio::sync::mpsc::Sender<Piece>,
    hasher: &mut Option<blake3::Hasher>,
    at: &mut u64,
    buf: &mut Vec<u8>,
) -> bool {
    let bytes = Bytes::from(std::mem::take(buf));
    if let Some(h) = hasher.as_mut() {
        h.update(&bytes);
    }
    let n = bytes.len() as u64;
    if tx.send(Piece::Bytes(*at, bytes)).await.is_err() {
        return false;
    }
    *at += n;
    true
}

/// Commits the body's bytes in chunk-bounded pieces, up to [`PIPELINE`] in
/// flight, while [`read_pieces`] reads and hashes the body beside it.
/// Returns the upload after the last piece, and — when this body carried
/// the whole file from offset 0 and every piece committed — the BLAKE3 of
/// those bytes, so finishing need not read them back. A body longer than
/// the declared length is refused after the bytes that fit are stored.
///
/// Order: each piece's write is queued on the shard's batcher when it is
/// created (its first poll, below), so pieces enter the log in offset
/// order on the leader's own node. Where this node forwards them to
/// another leader, each forward is its own call and two can arrive out of
/// order: the later one is refused (`offset_mismatch`, nothing written) and
/// is sent again once the pieces before it are in — answers are taken in
/// offset order, so a piece is resent only after everything before it
/// committed. A piece refused twice is a real mismatch (another PATCH
/// moved the upload): the client is told where it stands.
async fn append_stream(
    svc: &Service,
    who: missive_chat::UserId,
    id: UploadId,
    start: Start<'_>,
    body: Body,
) -> Result<(Upload, Option<Hash>), ApiError> {
    let (at, length) = match &start {
        Start::Stored(u) => (u.received, u.length),
        Start::Creating { length, .. } => (0, *length),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(PIPELINE);
    let reader = tokio::spawn(read_pieces(body, at, length, tx));
    let mut inflight = std::collections::VecDeque::new();
    // What the reader sent before the upload existed, still to handle.
    let mut early = None;
    let (u, created) = match start {
        Start::Stored(u) => (u, false),
        Start::Creating { mut create, .. } => {
            let first = rx.recv().await;
            let answered = poll_once(&mut create).await;
            match first {
                Some(Piece::Bytes(at, bytes)) => {
                    inflight.push_back(queue_piece(svc, who, id, at, bytes).await)
                }
                other => early = other,
            }
            let u = match answered {
                Some(r) => r,
                None => create.await,
            }?;
            (u, true)
        }
    };
    let mut p = Pipeline {
        svc,
        who,
        id,
        u,
        created,
        in_place: true,
        inflight,
    };
    loop {
        let piece = match early.take() {
            Some(piece) => piece,
            None => match rx.recv().await {
                Some(piece) => piece,
                None => break,
            },
        };
        let (at, bytes) = match piece {
            Piece::Bytes(at, bytes) => (at, bytes),
            Piece::TooLong => {
                p.settle_all().await?;
                return Err(ApiError::invalid(format!(
                    "the upload was declared {} bytes long; the body is longer",
                    p.u.length
                )));
            }
        };
        if p.inflight.len() == PIPELINE {
            p.settle_one().await?;
        }
        p.inflight
            .push_back(queue_piece(svc, who, id, at, bytes).await);
    }
    p.settle_all().await?;
    let end = reader.await.map_err(|e| ApiError::internal(&e))?;
    let u = p.u;
    if end.dropped {
        tracing::debug!(upload = %format!("{id:016x}"), offset = u.received, "upload paused");
    }
    let hash = end
        .hasher
        .filter(|_| p.in_place && u.received == u.length)
        .map(|h| *h.finalize().as_bytes());
    Ok((u, hash))
}

/// The writes of one PATCH in flight, and the upload as the last settled
/// one left it.
struct Pipeline<'a> {
    svc: &'a Service,
    who: missive_chat::UserId,
    id: UploadId,
    u: Upload,
    /// This request created the upload (creation-with-upload): its first
    /// piece, forwarded, may reach the leader before the creation does.
    created: bool,
    /// Every piece stored exactly where it was sent (else the hash of the
    /// body is not the hash of the upload).
    in_place: bool,
    inflight: std::collections::VecDeque<Queued<'a>>,
}

impl Pipeline<'_> {
    /// Waits for every piece in flight, in order.
    async fn settle_all(&mut self) -> Result<(), ApiError> {
        while !self.inflight.is_empty() {
            self.settle_one().await?;
        }
        Ok(())
    }

    /// Waits for the oldest piece in flight; resends it once if it arrived
    /// before the piece ahead of it (see [`append_stream`]).
    async fn settle_one(&mut self) -> Result<(), ApiError> {
        let Some(write) = self.inflight.pop_front() else {
            return Ok(());
        };
        let (svc, who, id) = (self.svc, self.who, self.id);
        let (at, bytes, r) = match write {
            Queued::Running(w) => w.await,
            Queued::Answered(at, bytes, r) => (at, bytes, r),
        };
        let n = bytes.len() as u64;
        let overtaken = |e: &ApiError| {
            e.code == "offset_mismatch" || (self.created && at == 0 && e.code == "no_such_media")
        };
        let r = match r {
            Err(e) if overtaken(&e) && self.u.received == at => {
                tracing::debug!(upload = %format!("{id:016x}"), at, "a piece overtook the one before it; sent again");
                svc.append_upload(who, id, at, bytes).await
            }
            r => r,
        };
        match r {
            Ok(next) => {
                // The rule stores a piece at `at` only, in full.
                if next.received != at + n {
                    self.in_place = false;
                }
                self.u = next;
                Ok(())
            }
            Err(e) if e.code == "offset_mismatch" => {
                let now = svc.upload(who, id).await?;
                Err(offset_mismatch(now.received))
            }
            Err(e) => Err(e),
        }
    }
}

/// The query of a download.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
pub(crate) struct DownloadQuery {
    /// The conversation whose message references the object (token reads).
    conversation: Option<String>,
    /// A signed URL's expiry (seconds since the epoch).
    exp: Option<u64>,
    /// A signed URL's signature.
    sig: Option<String>,
    /// The file name to offer in Content-Disposition.
    name: Option<String>,
}

fn conversation(raw: Option<&str>) -> Result<Option<ConversationId>, ApiError> {
    raw.map(|c| conv_id(c).map_err(|_| no_such_media()))
        .transpose()
}

#[utoipa::path(
    get,
    path = "/v1/media/{media}",
    tag = "media",
    summary = "Download a media object (Range, ETag; a token and ?conversation=, or a signed URL)",
    params(("media" = String, Path, description = "media id (64 hex digits)"), DownloadQuery),
    responses((status = 200, description = "the bytes"), (status = 206, description = "the requested range"), (status = 304, description = "not modified (If-None-Match)"), (status = 416, description = "the range is not satisfiable"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
pub(crate) async fn download(
    State(s): State<AppState>,
    Path(raw): Path<String>,
    Q(q): Q<DownloadQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let hash = media_hash(&raw)?;
    let (object, cache) = access(&s, &hash, &q, &headers).await?;
    serve(
        &s.service,
        &hash_hex(&hash),
        object,
        &cache,
        q.name.as_deref(),
        &headers,
    )
}

/// The object if the request may read it (a signed URL, or a token and
/// the conversation that names it), and the `Cache-Control` to answer
/// with.
async fn access(
    s: &AppState,
    hash: &Hash,
    q: &DownloadQuery,
    headers: &HeaderMap,
) -> Result<(Object, String), ApiError> {
    match (q.exp, q.sig.as_deref()) {
        (Some(exp), Some(sig)) => {
            if !s.service.media.verify(&hash_hex(hash), exp, sig) {
                return Err(no_such_media());
            }
            let left = exp.saturating_sub(now_secs());
            // A CDN may keep it no longer than the URL works.
            let cache = format!("public, max-age={left}, immutable");
            Ok((s.service.object(hash).await?, cache))
        }
        _ => {
            let who = s.authenticate(headers).await?.caller;
            let conv = conversation(q.conversation.as_deref())?;
            let object = s.service.readable_media(who.user, hash, conv).await?;
            Ok((object, "private, max-age=31536000, immutable".to_owned()))
        }
    }
}

#[utoipa::path(
    get,
    path = "/v1/media/{media}/thumbnail/{size}",
    tag = "media",
    summary = "An image's thumbnail (96, 320 or 800: longest side), with the download's access rules",
    params(("media" = String, Path, description = "media id (64 hex digits)"), ("size" = u16, Path, description = "96, 320 or 800"), DownloadQuery),
    responses((status = 200, description = "the thumbnail (JPEG, or PNG with transparency)"), (status = 304, description = "not modified (If-None-Match)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
pub(crate) async fn thumbnail(
    State(s): State<AppState>,
    Path((raw, size)): Path<(String, String)>,
    Q(q): Q<DownloadQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let hash = media_hash(&raw)?;
    let (object, cache) = access(&s, &hash, &q, &headers).await?;
    let thumb = size.parse::<u16>().ok().and_then(|size| {
        object
            .image
            .as_ref()
            .and_then(|i| i.thumbs.iter().find(|t| t.size == size).cloned())
    });
    let Some(thumb) = thumb else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_such_thumbnail",
            "this object has no thumbnail of that size (see its image.thumbnails)",
        ));
    };
    let etag = format!("\"{}-{}\"", hash_hex(&hash), thumb.size);
    let mut h = HeaderMap::new();
    for (k, v) in [
        (header::ETAG, etag.as_str()),
        (header::CACHE_CONTROL, cache.as_str()),
        (header::CONTENT_TYPE, thumb.mime.as_str()),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ] {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    }
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if fresh {
        return Ok((StatusCode::NOT_MODIFIED, h).into_response());
    }
    let bytes = s.service.thumbnail(&hash, thumb.size).await?;
    Ok((h, bytes).into_response())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A requested byte range, resolved against the object's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// The whole object.
    All,
    /// `[start, end)`.
    Part(u64, u64),
    /// Nothing of the object can be served (416).
    Unsatisfiable,
}

/// Parses one `Range: bytes=…` spec (RFC 9110 §14.1.2): `a-b`, `a-`,
/// `-n`. Several ranges, or a unit other than bytes, are served whole
/// (a server may ignore Range); a malformed one is 416, like one that
/// starts past the end.
pub fn parse_range(header: Option<&str>, size: u64) -> Wanted {
    let Some(spec) = header.map(str::trim) else {
        return Wanted::All;
    };
    let Some(spec) = spec.strip_prefix("bytes=") else {
        return Wanted::All;
    };
    if spec.contains(',') {
        return Wanted::All;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Wanted::Unsatisfiable;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| s.parse::<u64>().ok();
    match (a.is_empty(), b.is_empty()) {
        (true, false) => match num(b) {
            Some(0) | None => Wanted::Unsatisfiable,
            Some(_) if size == 0 => Wanted::Unsatisfiable,
            Some(n) => Wanted::Part(size.saturating_sub(n), size),
        },
        (false, _) => match (num(a), if b.is_empty() { Some(u64::MAX) } else { num(b) }) {
            (Some(start), Some(last)) if start <= last && start < size => {
                Wanted::Part(start, last.saturating_add(1).min(size))
            }
            _ => Wanted::Unsatisfiable,
        },
        (true, true) => Wanted::Unsatisfiable,
    }
}

/// Whether a type is shown inline: images, audio and video, except SVG
/// (it can carry script); everything else downloads as an attachment.
fn inline(mime: &str) -> bool {
    (mime.starts_with("image/") && !mime.starts_with("image/svg"))
        || mime.starts_with("audio/")
        || mime.starts_with("video/")
}

fn disposition(mime: &str, name: Option<&str>) -> HeaderValue {
    let kind = if inline(mime) { "inline" } else { "attachment" };
    let name = name
        .and_then(|n| crate::media::check_file_name(n).ok())
        .filter(|n| !n.is_empty());
    let v = match name {
        Some(n) => {
            // RFC 6266: an ASCII fallback, and the exact name in RFC 8187.
            let ascii: String = n
                .chars()
                .map(|c| {
                    if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let mut exact = String::new();
            for b in n.bytes() {
                if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                    exact.push(b as char);
                } else {
                    exact.push_str(&format!("%{b:02X}"));
                }
            }
            format!("{kind}; filename=\"{ascii}\"; filename*=UTF-8''{exact}")
        }
        None => kind.to_owned(),
    };
    HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("attachment"))
}

fn serve(
    svc: &std::sync::Arc<Service>,
    id: &str,
    object: Object,
    cache: &str,
    name: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let etag = format!("\"{id}\"");
    let mut h = HeaderMap::new();
    let set = |h: &mut HeaderMap, k: header::HeaderName, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    set(&mut h, header::ETAG, &etag);
    set(&mut h, header::CACHE_CONTROL, cache);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let matches = |v: &HeaderValue| {
        v.to_str()
            .map(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
            .unwrap_or(false)
    };
    if headers.get(header::IF_NONE_MATCH).is_some_and(matches) {
        return Ok((StatusCode::NOT_MODIFIED, h).into_response());
    }
    set(&mut h, header::CONTENT_TYPE, &object.mime);
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CONTENT_DISPOSITION, disposition(&object.mime, name));
    // If-Range with another validator: serve the whole object.
    let range = match headers.get(header::IF_RANGE) {
        Some(v) if v.to_str().ok().map(str::trim) != Some(etag.as_str()) => None,
        _ => headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
    };
    let size = object.size;
    let (status, start, end) = match parse_range(range, size) {
        Wanted::All => (StatusCode::OK, 0, size),
        Wanted::Part(a, b) => {
            set(
                &mut h,
                header::CONTENT_RANGE,
                &format!("bytes {a}-{}/{size}", b - 1),
            );
            (StatusCode::PARTIAL_CONTENT, a, b)
        }
        Wanted::Unsatisfiable => {
            set(&mut h, header::CONTENT_RANGE, &format!("bytes */{size}"));
            let e = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("this object is {size} bytes; ask for a range inside it"),
            );
            return Ok((h, e).into_response());
        }
    };
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    let body = Body::from_stream(chunks(svc.clone(), object.upload, start, end));
    Ok((status, h, body).into_response())
}

/// How many chunk reads a download keeps in flight: the next chunk is
/// read (from disk, when cold) while the current one is being sent.
const READ_AHEAD: usize = 2;

/// The bytes `[start, end)` of an upload's chunks, in order, with
/// [`READ_AHEAD`] chunk reads in flight (reads commute; the stream yields
/// them in order).
fn chunks(
    svc: std::sync::Arc<Service>,
    upload: UploadId,
    start: u64,
    end: u64,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    use futures_util::StreamExt as _;
    let first = (start / APPEND_CHUNK) as u32;
    let last = if end > start {
        ((end - 1) / APPEND_CHUNK) as u32 + 1
    } else {
        first
    };
    futures_util::stream::iter(first..last)
        .map(move |index| {
            let svc = svc.clone();
            async move {
                let chunk = svc
                    .media_chunk(upload, index)
                    .await
                    .map_err(|e| std::io::Error::other(e.message))?;
                let base = u64::from(index) * APPEND_CHUNK;
                let from = start.saturating_sub(base).min(APPEND_CHUNK) as usize;
                let to = ((end - base).min(APPEND_CHUNK) as usize).min(chunk.len());
                if from >= to {
                    return Err(std::io::Error::other(format!(
                        "upload {upload:x}'s chunk {index} is shorter than its object"
                    )));
                }
                // No copy: the chunk (a view of the engine's blob file when
                // it is in one) becomes the body.
                Ok(chunk.slice(from..to))
            }
        })
        .buffered(READ_AHEAD)
}

/// The body of a URL request.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub(crate) struct UrlIn {
    /// The conversation whose message references the object, unless you
    /// uploaded it.
    #[serde(default)]
    conversation: Option<crate::wire::Id>,
}

#[utoipa::path(
    post,
    path = "/v1/media/{media}/url",
    tag = "media",
    summary = "A signed, expiring download URL (for a CDN, or an <img> without a token)",
    params(("media" = String, Path, description = "media id (64 hex digits)")),
    request_body = UrlIn,
    responses((status = 200, description = "{url, expires_at, media_id, mime, size}"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
pub(crate) async fn media_url(
    State(s): State<AppState>,
    Authed(who): Authed,
    Path(raw): Path<String>,
    crate::state::JsonBody(body): crate::state::JsonBody<UrlIn>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let hash = media_hash(&raw)?;
    let conv = body.conversation.map(|c| ConversationId(c.0));
    let (url, object) = s.service.media_url(who.user, &hash, conv).await?;
    Ok(Json(url_json(&hash, &url, &object)))
}

/// The answer to a URL request, on every edge.
pub fn url_json(hash: &Hash, url: &crate::media::SignedUrl, object: &Object) -> serde_json::Value {
    let mut v = json!({
        "media_id": hash_hex(hash),
        "url": url.url,
        "expires_at": url.expires_at,
        "mime": object.mime,
        "size": object.size,
    });
    if let Some(i) = &object.image {
        v["image"] = image_json(i);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve_against_the_size() {
        assert_eq!(parse_range(None, 10), Wanted::All);
        assert_eq!(parse_range(Some("bytes=0-0"), 10), Wanted::Part(0, 1));
        assert_eq!(parse_range(Some("bytes=2-5"), 10), Wanted::Part(2, 6));
        assert_eq!(parse_range(Some("bytes=2-"), 10), Wanted::Part(2, 10));
        assert_eq!(parse_range(Some("bytes=5-100"), 10), Wanted::Part(5, 10));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Wanted::Part(7, 10));
        assert_eq!(parse_range(Some("bytes=-30"), 10), Wanted::Part(0, 10));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Wanted::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=5-2"), 10), Wanted::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), Wanted::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=x-y"), 10), Wanted::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10), Wanted::All);
        assert_eq!(parse_range(Some("items=0-1"), 10), Wanted::All);
    }

    #[test]
    fn dispositions_are_inline_only_for_media_and_quote_names() {
        let d = |m, n| disposition(m, n).to_str().unwrap_or_default().to_owned();
        assert_eq!(d("image/png", None), "inline");
        assert_eq!(d("image/svg+xml", None), "attachment");
        assert_eq!(d("text/html", None), "attachment");
        assert_eq!(
            d("application/pdf", Some("q\"3 é.pdf")),
            "attachment; filename=\"q_3 _.pdf\"; filename*=UTF-8''q%223%20%C3%A9.pdf"
        );
    }
}
