//! The operator's media API (what `missivectl media` calls): list the
//! objects, inspect one, verify their bytes against their hashes, and run
//! the collector. Every call needs `X-Admin-Secret`.
//!
//! ```text
//!  GET  /v1/admin/media?after=&limit=         objects in key order, a page
//!  GET  /v1/admin/media/{id}                  one object: record, upload,
//!                                             thumbnails, references
//!  POST /v1/admin/media/verify?after=&limit=  re-hash a page of objects
//!  POST /v1/admin/media/gc?grace_secs=        collect now
//! ```
//!
//! A page holds at most `missive_chat::media::audit::MAX_PAGE` objects;
//! `next` names where the following one starts (`null` at the end), so a
//! verification of a large store is many bounded calls, not one long one.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use missive_chat::media::audit::MediaDetail;
use missive_chat::media::body::{hash_hex, parse_hash};
use missive_chat::media::records::{Hash, Object};

use super::admin::require_admin;
use super::media::{image_json, upload_json};
use crate::error::ApiError;
use crate::state::AppState;

/// The objects of a page when the caller names no limit.
const DEFAULT_PAGE: usize = 100;

/// Where a page starts and how long it is.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
pub(crate) struct PageQuery {
    /// Start after this media id (the previous page's `next`).
    after: Option<String>,
    /// At most this many objects (1–1000, default 100).
    limit: Option<usize>,
}

impl PageQuery {
    fn after(&self) -> Result<Option<Hash>, ApiError> {
        self.after
            .as_deref()
            .map(|a| {
                parse_hash(a).ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "after must be a media id (64 hex digits)",
                    )
                })
            })
            .transpose()
    }
}

/// An object as the admin API shows it.
fn object_json(hash: &Hash, o: &Object) -> Value {
    json!({
        "media_id": hash_hex(hash),
        "size": o.size,
        "mime": o.mime,
        "created_at": o.created_at,
        "last_used": o.last_used,
        "upload": format!("{:016x}", o.upload),
        "uploaders": o.uploaders.iter().map(|u| u.0.to_string()).collect::<Vec<_>>(),
        "image": o.image.as_ref().map(image_json),
    })
}

fn next_json(next: Option<Hash>) -> Value {
    next.map_or(Value::Null, |h| json!(hash_hex(&h)))
}

/// Lists stored objects, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/admin/media",
    tag = "admin",
    summary = "List stored media objects (a page, in key order)",
    params(PageQuery),
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
pub(crate) async fn list(
    State(s): State<AppState>,
    headers: HeaderMap,
    crate::state::Q(q): crate::state::Q<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers, "listing media")?;
    let after = q.after()?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    let page = s.service.node.list_media(after.as_ref(), limit).await?;
    Ok(Json(json!({
        "objects": page.objects.iter().map(|(h, o)| object_json(h, o)).collect::<Vec<_>>(),
        "next": next_json(page.next),
    })))
}

/// Everything stored about one object.
#[utoipa::path(
    get,
    path = "/v1/admin/media/{id}",
    tag = "admin",
    summary = "Inspect one media object",
    params(("id" = String, Path, description = "media id (64 hex digits)")),
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
pub(crate) async fn inspect(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers, "inspecting media")?;
    let hash = parse_hash(&id).ok_or_else(crate::media::no_such_media)?;
    let Some(MediaDetail {
        object,
        upload,
        thumbnails,
        references,
    }) = s.service.node.inspect_media(&hash).await?
    else {
        return Err(crate::media::no_such_media());
    };
    let mut v = object_json(&hash, &object);
    v["upload_record"] = upload.map_or(Value::Null, |u| upload_json(object.upload, &u));
    v["thumbnails_stored"] = thumbnails
        .iter()
        .map(|(size, bytes)| json!({"size": size, "bytes": bytes}))
        .collect();
    v["references"] = references
        .iter()
        .map(|(conv, seq)| json!({"conversation": conv.0.to_string(), "seq": seq.0}))
        .collect();
    Ok(Json(v))
}

/// Re-reads a page of objects and checks each against its hash.
#[utoipa::path(
    post,
    path = "/v1/admin/media/verify",
    tag = "admin",
    summary = "Verify a page of media objects against their hashes",
    params(PageQuery),
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
pub(crate) async fn verify(
    State(s): State<AppState>,
    headers: HeaderMap,
    crate::state::Q(q): crate::state::Q<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers, "verifying media")?;
    let after = q.after()?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    let r = s.service.node.verify_media(after.as_ref(), limit).await?;
    if !r.damaged.is_empty() {
        tracing::error!(damaged = r.damaged.len(), "media verification found damage");
    }
    Ok(Json(json!({
        "objects": r.objects,
        "bytes": r.bytes,
        "damaged": r.damaged.iter().map(|(h, d)| json!({
            "media_id": hash_hex(h),
            "problem": d.to_string(),
        })).collect::<Vec<_>>(),
        "next": next_json(r.next),
    })))
}

/// The query of a media collection.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
pub(crate) struct GcQuery {
    /// Keep unreferenced objects stored or used within this many seconds
    /// (default `media.unreferenced_grace_secs`).
    grace_secs: Option<u64>,
}

/// Runs the media collector now over the whole cluster
/// (`missive_chat::media::gc`) and answers what it did.
#[utoipa::path(
    post,
    path = "/v1/admin/media/gc",
    tag = "admin",
    summary = "Collect media no live message names (every shard)",
    params(GcQuery),
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
pub(crate) async fn gc(
    State(s): State<AppState>,
    headers: HeaderMap,
    crate::state::Q(q): crate::state::Q<GcQuery>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers, "collecting media")?;
    let grace = q.grace_secs.map(std::time::Duration::from_secs);
    let r = s.service.collect_media(grace).await?;
    tracing::info!(?r, "media collected (operator)");
    Ok(Json(json!({
        "live_references": r.live_references,
        "dead_references": r.dead_references,
        "objects_deleted": r.objects_deleted,
        "bytes_deleted": r.bytes_deleted,
        "objects_kept_young": r.objects_kept_young,
        "uploads_dropped": r.uploads_dropped,
    })))
}
