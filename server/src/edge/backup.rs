//! The operator's backup, restore and cross-replica verification calls
//! (what `missivectl backup`, `restore` and `verify --cluster` use; see
//! `missive_raft::backup` for why a shard's copy is consistent while
//! writes go on, `missive_raft::verify` for how replicas are compared).
//! Every call needs `X-Admin-Secret`.
//!
//! ```text
//!  GET  /v1/admin/backup                 the phases: which keyspaces, in
//!                                        which order
//!  GET  /v1/admin/backup/shards/{shard}?phase=N
//!                                        one phase of one data shard's
//!                                        records at one applied position,
//!                                        streamed as a received-snapshot
//!                                        file (MSNP)
//!  GET  /v1/admin/restore                whether every data shard is empty
//!  POST /v1/admin/restore                one frame of pairs, put into the
//!                                        shards owning their slots here
//!  POST /v1/admin/restore/reconcile      after the last frame: raise each
//!                                        conversation's counters past
//!                                        what the inboxes hold
//!  POST /v1/admin/verify                 every data shard's replicas
//!                                        compared at one log position
//! ```
//!
//! # The backup stream
//!
//! The answer's body is the received-snapshot file format
//! (`missive_raft::storage::snapshot`, byte by byte there and in
//! docs/protocol.md): `"MSNP"`, version 1, then chunks `[len u32 LE][crc32
//! u32 LE][postcard(Vec<(key, value)>)]`, keys ascending. Headers name the
//! position: `x-missive-applied-index`, `-term` and `-node` (absent when
//! the shard has applied nothing), and `x-missive-served-by`. The body is
//! sent chunked; a stream that fails part-way is cut off without its last
//! chunk marker, so a client never mistakes a cut stream for a whole one.
//!
//! # The restore frame
//!
//! The body of `POST /v1/admin/restore` is one chunk framed as in the file
//! (`[len][crc32][postcard pairs]`, at most [`MAX_FRAME`] bytes): a client
//! sends a backup file's chunks one call each, as they are.

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use serde_json::{json, Value};

use missive_engine::keys::Keyspace;
use missive_raft::storage::snapshot::{frame_chunk, unframe_chunk, FILE_HEADER};

use crate::edge::admin::{require_admin, shard_of};
use crate::error::ApiError;
use crate::state::AppState;

/// The largest restore frame taken: a backup's chunks are about 1 MiB.
pub const MAX_FRAME: usize = 16 << 20;

/// A keyspace's name in the answers.
fn keyspace_name(k: Keyspace) -> String {
    format!("{k:?}").to_lowercase()
}

/// `GET /v1/admin/backup`: the phases a backup runs in.
#[utoipa::path(
    get,
    path = "/v1/admin/backup",
    tag = "admin",
    summary = "The phases of a backup: which keyspaces, in which order",
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer))
)]
pub(crate) async fn backup_plan(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers, "planning a backup")?;
    let node = &s.service.node;
    let phases: Vec<Vec<String>> = node
        .backup_phases()
        .into_iter()
        .map(|p| p.into_iter().map(keyspace_name).collect())
        .collect();
    Ok(Json(json!({
        "phases": phases,
        "shard_count": node.slots().shard_count(),
    })))
}

/// The query of a shard's backup stream.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct PhaseQuery {
    /// Which phase (0 first; `GET /v1/admin/backup` lists them).
    #[serde(default)]
    phase: u32,
}

/// `GET /v1/admin/backup/shards/{shard}?phase=N`.
#[utoipa::path(
    get,
    path = "/v1/admin/backup/shards/{shard}",
    tag = "admin",
    summary = "Stream one phase of one data shard's records at one applied position",
    params(("shard" = String, Path, description = "data shard id (1..)"), PhaseQuery),
    responses((status = 200, description = "the shard's records (protocol.md, \"Backup and restore\")"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
pub(crate) async fn backup_shard(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    Query(q): Query<PhaseQuery>,
) -> Result<Response, ApiError> {
    require_admin(&s, &headers, "backing up a shard")?;
    let node = &s.service.node;
    let shard = shard_of(node, &raw)?;
    let phases = node.backup_phases().len();
    if q.phase as usize >= phases {
        return Err(ApiError::invalid(format!(
            "a backup has phases 0..{phases}, not {}",
            q.phase
        )));
    }
    if shard.is_directory() {
        return Err(ApiError::invalid(
            "shard 0 is the metadata group: a backup saves the cluster map from GET \
             /v1/admin/cluster, and a restored cluster builds its own",
        ));
    }
    let stream = node.backup_open(shard, q.phase).await?;
    tracing::info!(%shard, phase = q.phase, applied = ?stream.applied, served_by = stream.served_by, "backup of a shard started");
    let mut resp = Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/octet-stream")
        .header("x-missive-served-by", stream.served_by);
    if let Some(a) = stream.applied {
        resp = resp
            .header("x-missive-applied-index", a.index)
            .header("x-missive-applied-term", a.leader_id.term)
            .header("x-missive-applied-node", a.leader_id.node_id);
    }
    let body = futures_util::stream::unfold(
        (Some(Bytes::from_static(FILE_HEADER)), Some(stream)),
        |(head, stream)| async move {
            if let Some(h) = head {
                return Some((Ok(h), (None, stream)));
            }
            let mut stream = stream?;
            match stream.next_chunk().await {
                Ok(Some(chunk)) => match frame_chunk(&chunk) {
                    Ok(bytes) => Some((Ok(Bytes::from(bytes)), (None, Some(stream)))),
                    Err(e) => Some((Err(e), (None, None))),
                },
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "backup stream failed; cutting it off");
                    Some((Err(e), (None, None)))
                }
            }
        },
    );
    resp.body(Body::from_stream(body))
        .map_err(|e| ApiError::internal(&e))
}

/// `GET /v1/admin/restore`: whether this cluster may take a restore.
#[utoipa::path(
    get,
    path = "/v1/admin/restore",
    tag = "admin",
    summary = "Whether every data shard is empty (a restore's precondition)",
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
pub(crate) async fn restore_check(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers, "checking a restore")?;
    let node = &s.service.node;
    let mut shards = Vec::new();
    let mut empty = true;
    for shard in node.slots().shards() {
        let e = node.shard_is_empty(shard).await?;
        empty &= e;
        shards.push(json!({ "shard": shard.0, "empty": e }));
    }
    Ok(Json(json!({
        "empty": empty,
        "shard_count": node.slots().shard_count(),
        "shards": shards,
    })))
}

/// `POST /v1/admin/restore`: one frame of a backup's pairs.
#[utoipa::path(
    post,
    path = "/v1/admin/restore",
    tag = "admin",
    summary = "Put one frame of a backup's records into this cluster",
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "[len u32 LE][crc32 u32 LE][postcard pairs]"),
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
pub(crate) async fn restore(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers, "restoring a backup")?;
    let bytes = axum::body::to_bytes(body, MAX_FRAME).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "a restore frame is at most {MAX_FRAME} bytes (a backup's chunk is about 1 MiB)"
            ),
        )
    })?;
    let pairs = unframe_chunk(&bytes)
        .map_err(|e| ApiError::invalid(format!("not a restore frame: {e}")))?;
    let n = pairs.len();
    let per_shard = s.service.node.restore(pairs).await?;
    Ok(Json(json!({
        "pairs": n,
        "shards": per_shard
            .iter()
            .map(|(shard, put)| json!({ "shard": shard.0, "pairs": put }))
            .collect::<Vec<_>>(),
    })))
}

/// `POST /v1/admin/restore/reconcile`: after a restore's last frame.
#[utoipa::path(
    post,
    path = "/v1/admin/restore/reconcile",
    tag = "admin",
    summary = "After a restore: raise each conversation's counters past what the inboxes hold",
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
pub(crate) async fn restore_reconcile(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<missive_chat::restore::Reconciled>, ApiError> {
    require_admin(&s, &headers, "reconciling a restore")?;
    let r = s.service.node.reconcile_restored().await?;
    tracing::info!(?r, "restore reconciled");
    Ok(Json(r))
}

/// `POST /v1/admin/verify`: every data shard's replicas compared at one
/// log position each (`missive_raft::verify`).
#[utoipa::path(
    post,
    path = "/v1/admin/verify",
    tag = "admin",
    summary = "Compare every data shard's replicas at one log position",
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
pub(crate) async fn verify(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers, "verifying replicas")?;
    let node = &s.service.node;
    let mut shards = Vec::new();
    let mut agree = true;
    for shard in node.slots().shards() {
        let v = node.verify_shard(shard).await?;
        agree &= v.agrees();
        if !v.agrees() {
            tracing::warn!(%shard, diverging = ?v.diverging, silent = ?v.silent, "replicas differ");
        }
        let replicas: Vec<Value> = v
            .replicas
            .iter()
            .map(|r| match &r.checksum {
                // The hash as hex text: JSON numbers lose a u64's low bits.
                Ok(c) => {
                    json!({ "node": r.node, "pairs": c.pairs, "hash": format!("{:016x}", c.hash) })
                }
                Err(e) => json!({ "node": r.node, "error": e }),
            })
            .collect();
        shards.push(json!({
            "shard": shard.0,
            "index": v.index,
            "agree": v.agrees(),
            "diverging": v.diverging,
            "silent": v.silent,
            "replicas": replicas,
        }));
    }
    Ok(Json(json!({ "agree": agree, "shards": shards })))
}
