//! The operator's HTTP API for the cluster (what `missivectl cluster` and
//! `missivectl shard` call): where every shard's replicas are, and changing
//! them. Every call needs `X-Admin-Secret` matching `auth.admin_secret`.
//!
//! ```text
//!  GET    /v1/admin/cluster                        the cluster map and
//!                                                  every group's placement
//!  POST   /v1/admin/shards/{shard}/replicas        {"node", "addr"}: add
//!  DELETE /v1/admin/shards/{shard}/replicas/{node} remove
//!  POST   /v1/admin/shards/{shard}/move            {"from", "to", "addr"}
//!  POST   /v1/admin/shards/{shard}/split           {"at"?}: give the slots
//!                                                  from `at` on to a new
//!                                                  shard on the same replicas
//!  POST   /v1/admin/shards/{shard}/merge           {"into"}: give every slot
//!                                                  back to the adjoining shard
//!  DELETE /v1/admin/nodes/{node}                   forget a drained node
//!  POST   /v1/admin/scrub                          this node only: purge,
//!                                                  roll the log, compact
//!  POST   /v1/admin/users/{user}/erase             erase a user everywhere
//!                                                  (then scrub each node)
//!  POST   /v1/admin/shards/{shard}/search-index    {"repair"?}: the search
//!                                                  index vs the messages
//! ```
//!
//! Backup and restore have their own module (`backup`); the media calls
//! (`/v1/admin/media…`) theirs (`media_admin`).
//!
//! Shard 0 is the metadata group (the cluster map); its replicas move the
//! same way as a data shard's.
//!
//! A change runs at the shard's leader wherever the call lands, and answers
//! once the new configuration is committed (adding waits for the new
//! replica to catch up first: minutes for a large shard). The answer is the
//! shard's placement afterwards.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use missive_raft::cluster::membership::{Change, Placement};
use missive_raft::{NodeId, ShardId};

use crate::error::ApiError;
use crate::state::{AppState, JsonBody};

/// Refuses callers without the admin secret.
pub(crate) fn require_admin(s: &AppState, headers: &HeaderMap, what: &str) -> Result<(), ApiError> {
    let presented = headers
        .get("x-admin-secret")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if s.auth.is_admin(presented) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("{what} needs X-Admin-Secret matching auth.admin_secret"),
        ))
    }
}

/// A placement as JSON.
fn render(p: &Placement, slots: Option<std::ops::Range<u16>>) -> Value {
    let nodes = |m: &std::collections::BTreeMap<NodeId, String>| {
        m.iter()
            .map(|(id, addr)| json!({ "node": id, "addr": addr }))
            .collect::<Vec<_>>()
    };
    json!({
        "shard": p.shard.0,
        "slots": slots.map(|r| [r.start, r.end]),
        "leader": p.leader,
        "voters": nodes(&p.voters),
        "learners": nodes(&p.learners),
        "config_index": p.config_index,
        "changing": p.changing,
    })
}

/// `GET /v1/admin/cluster`.
#[utoipa::path(
    get,
    path = "/v1/admin/cluster",
    tag = "admin",
    summary = "The cluster: nodes, shards, replicas, leaders",
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
pub(crate) async fn cluster(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers, "reading the cluster's layout")?;
    let node = &s.service.node;
    // A fresh read, so an operator sees every change made so far (a
    // split or merge included: the read updates the slot map listed
    // below); this node's copy if the metadata group cannot answer now.
    let (map, map_error) = match node.refresh_cluster_map().await {
        Ok(m) => (m, None),
        Err(e) => (node.cluster_map(), Some(e.to_string())),
    };
    let mut shards = Vec::new();
    for shard in node.slots().groups() {
        let entry = match node.placement(shard).await {
            Ok(p) => {
                let mut v = render(&p, node.slots().slots(shard));
                v["hosted_here"] = json!(node.hosts(shard));
                v
            }
            Err(e) => json!({ "shard": shard.0, "error": e.to_string() }),
        };
        shards.push(entry);
    }
    let nodes: Vec<Value> = map
        .nodes
        .iter()
        .map(|(id, addr)| {
            let held: Vec<u32> = map.shards_on(*id).iter().map(|s| s.0).collect();
            json!({ "node": id, "addr": addr, "replicas": held })
        })
        .collect();
    Ok(Json(json!({
        "node": node.id(),
        "raft_addr": node.addr(),
        "map": {
            "version": map.version,
            "nodes": nodes,
            "forgotten": map.forgotten,
            "error": map_error,
        },
        "shards": shards,
    })))
}

/// `DELETE /v1/admin/nodes/{node}`: removes a node that holds no replica
/// from the cluster map for good (its id can never rejoin, and its old
/// process is shut out of the cluster).
#[utoipa::path(
    delete,
    path = "/v1/admin/nodes/{node}",
    tag = "admin",
    summary = "Forget a node that holds no replica",
    params(("node" = String, Path, description = "node id")),
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
pub(crate) async fn forget_node(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(node): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers, "removing a node")?;
    let id: NodeId = node
        .parse()
        .map_err(|_| ApiError::invalid(format!("{node:?} is not a node id")))?;
    check_node(id, None)?;
    if id == s.service.node.id() {
        return Err(ApiError::invalid(format!(
            "node {id} is the node answering this call; ask another node to forget it"
        )));
    }
    tracing::info!(node = id, "node removal requested");
    let version = s.service.node.forget_node(id).await?;
    Ok(Json(
        json!({ "node": id, "forgotten": true, "map_version": version }),
    ))
}

/// Makes what this node's replicas no longer hold (unsent bodies, erased
/// users) leave its disk: every hosted group's log purged up to a fresh
/// snapshot, the log rolled so the freed segments are deleted, every table
/// compacted (`missive_raft::scrub`). This node only: call it on each.
#[utoipa::path(
    post,
    path = "/v1/admin/scrub",
    tag = "admin",
    summary = "Check every table and log record of this node",
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
pub(crate) async fn scrub(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers, "scrubbing a node")?;
    tracing::info!("scrub requested");
    let r = s.service.node.scrub().await?;
    tracing::info!(?r, "scrub done");
    let purged: Vec<Value> = r
        .purged
        .iter()
        .map(|(g, upto)| json!({ "shard": g.0, "purged_upto": upto }))
        .collect();
    Ok(Json(json!({
        "node": s.service.node.id(),
        "groups": purged,
        "log_segments_before": r.segments.0,
        "log_segments_after": r.segments.1,
        "tables": r.tables,
    })))
}

/// `POST /v1/admin/users/{user}/erase`: erases a user (see
/// `crate::erasure`) and answers the report.
#[utoipa::path(
    post,
    path = "/v1/admin/users/{user}/erase",
    tag = "admin",
    summary = "Erase a user's data on every shard",
    params(("user" = String, Path, description = "user id (decimal)")),
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
pub(crate) async fn erase_user(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Json<crate::erasure::ErasureReport>, ApiError> {
    require_admin(&s, &headers, "erasing a user")?;
    let user = user_id(&raw)?;
    tracing::info!(user, "erasure requested");
    let r = s
        .service
        .erase_user(missive_chat::command::UserId(user))
        .await?;
    tracing::info!(?r, "erasure done");
    Ok(Json(r))
}

/// `POST /v1/admin/users/{user}/revoke`: logs a user's devices out —
/// those named in `devices`, or every one.
#[utoipa::path(
    post,
    path = "/v1/admin/users/{user}/revoke",
    tag = "admin",
    summary = "Log a user's devices out",
    params(("user" = String, Path, description = "user id (decimal)")),
    request_body = crate::wire::RevokeIn,
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
pub(crate) async fn revoke_user(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    crate::state::JsonBody(req): crate::state::JsonBody<crate::wire::RevokeIn>,
) -> Result<axum::http::StatusCode, ApiError> {
    require_admin(&s, &headers, "revoking a user's tokens")?;
    let user = user_id(&raw)?;
    let scope = req.operator_scope()?;
    tracing::info!(user, ?scope, "revocation requested");
    s.revoke(missive_chat::command::UserId(user), scope).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// A user id from the path (non-zero decimal).
fn user_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>()
        .ok()
        .filter(|u| *u > 0)
        .ok_or_else(|| ApiError::invalid(format!("{raw:?} is not a user id")))
}

/// A shard id from the path: a data shard of this cluster or 0.
pub(crate) fn shard_of(node: &missive_chat::ChatNode, raw: &str) -> Result<ShardId, ApiError> {
    let shard = ShardId(
        raw.parse::<u32>()
            .map_err(|_| ApiError::not_found(format!("{raw:?} is not a shard number")))?,
    );
    if !shard.is_directory() && node.slots().slots(shard).is_none() {
        let list: Vec<String> = node.slots().shards().map(|s| s.0.to_string()).collect();
        return Err(ApiError::not_found(format!(
            "there is no shard {raw} (the cluster has shards {}, and 0: the metadata group)",
            list.join(", ")
        )));
    }
    Ok(shard)
}

fn check_node(id: NodeId, addr: Option<&str>) -> Result<(), ApiError> {
    if id == 0 {
        return Err(ApiError::invalid("node ids start at 1"));
    }
    if let Some(a) = addr {
        if a.parse::<std::net::SocketAddr>().is_err() {
            return Err(ApiError::invalid(format!(
                "{a:?} is not a transport address (ip:port, the node's node.raft_listen)"
            )));
        }
    }
    Ok(())
}

async fn apply(s: &AppState, raw: &str, change: Change) -> Result<Json<Value>, ApiError> {
    let node = &s.service.node;
    let shard = shard_of(node, raw)?;
    tracing::info!(%shard, ?change, "replica change requested");
    let p = node
        .change_replicas(shard, change)
        .await
        .map_err(leader_hint)?;
    Ok(Json(render(&p, node.slots().slots(shard))))
}

/// The body of an add.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddReq {
    node: NodeId,
    addr: String,
}

/// `POST /v1/admin/shards/{shard}/replicas`.
#[utoipa::path(
    post,
    path = "/v1/admin/shards/{shard}/replicas",
    tag = "admin",
    summary = "Add a replica of a shard on a node",
    params(("shard" = String, Path, description = "shard id")),
    request_body = AddReq,
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
pub(crate) async fn add_replica(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(shard): Path<String>,
    JsonBody(req): JsonBody<AddReq>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers, "changing replicas")?;
    check_node(req.node, Some(&req.addr))?;
    let change = Change::Add {
        node: req.node,
        addr: req.addr,
    };
    apply(&s, &shard, change).await
}

/// `DELETE /v1/admin/shards/{shard}/replicas/{node}`.
#[utoipa::path(
    delete,
    path = "/v1/admin/shards/{shard}/replicas/{node}",
    tag = "admin",
    summary = "Remove a shard's replica from a node",
    params(("shard" = String, Path, description = "shard id"), ("node" = String, Path, description = "node id")),
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
pub(crate) async fn remove_replica(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((shard, node)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers, "changing replicas")?;
    let node: NodeId = node
        .parse()
        .map_err(|_| ApiError::invalid(format!("{node:?} is not a node id")))?;
    check_node(node, None)?;
    apply(&s, &shard, Change::Remove { node }).await
}

/// The body of a move.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MoveReq {
    from: NodeId,
    to: NodeId,
    addr: String,
}

/// `POST /v1/admin/shards/{shard}/move`.
#[utoipa::path(
    post,
    path = "/v1/admin/shards/{shard}/move",
    tag = "admin",
    summary = "Move a shard's replica from one node to another",
    params(("shard" = String, Path, description = "shard id")),
    request_body = MoveReq,
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
pub(crate) async fn move_replica(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(shard): Path<String>,
    JsonBody(req): JsonBody<MoveReq>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers, "changing replicas")?;
    check_node(req.from, None)?;
    check_node(req.to, Some(&req.addr))?;
    let change = Change::Move {
        from: req.from,
        to: req.to,
        addr: req.addr,
    };
    apply(&s, &shard, change).await
}

/// The body of a split.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SplitReq {
    /// The first slot the new shard takes (default: the middle of the
    /// shard's run).
    #[serde(default)]
    at: Option<u16>,
}

/// `POST /v1/admin/shards/{shard}/split`.
#[utoipa::path(
    post,
    path = "/v1/admin/shards/{shard}/split",
    tag = "admin",
    summary = "Split a shard online: its upper slots go to a new shard on the same replicas",
    params(("shard" = String, Path, description = "shard id")),
    request_body = SplitReq,
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
pub(crate) async fn split_shard(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(shard): Path<String>,
    JsonBody(req): JsonBody<SplitReq>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers, "splitting a shard")?;
    let node = &s.service.node;
    let parent = shard_of(node, &shard)?;
    if parent.is_directory() {
        return Err(ApiError::invalid(
            "shard 0 is the metadata group: it holds no slots to split",
        ));
    }
    tracing::info!(shard = %parent, at = ?req.at, "split requested");
    let started = std::time::Instant::now();
    let done = node.split(parent, req.at).await.map_err(leader_hint)?;
    let slots = node.slots();
    Ok(Json(json!({
        "parent": done.parent.0,
        "child": done.child.0,
        "at": done.at,
        "cut_index": done.cut_index,
        "parent_slots": slots.slots(done.parent).map(|r| [r.start, r.end]),
        "child_slots": slots.slots(done.child).map(|r| [r.start, r.end]),
        "took_ms": started.elapsed().as_millis() as u64,
    })))
}

/// The body of a merge.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MergeReq {
    /// The shard that takes the slots (its run adjoins this one's; the
    /// same voters).
    into: u32,
}

/// `POST /v1/admin/shards/{shard}/merge`.
#[utoipa::path(
    post,
    path = "/v1/admin/shards/{shard}/merge",
    tag = "admin",
    summary = "Merge a shard online into the shard whose slots adjoin its own",
    params(("shard" = String, Path, description = "shard id")),
    request_body = MergeReq,
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
pub(crate) async fn merge_shard(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(shard): Path<String>,
    JsonBody(req): JsonBody<MergeReq>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers, "merging shards")?;
    let node = &s.service.node;
    let child = shard_of(node, &shard)?;
    let parent = shard_of(node, &req.into.to_string())?;
    if child.is_directory() || parent.is_directory() {
        return Err(ApiError::invalid(
            "shard 0 is the metadata group: it holds no slots to merge",
        ));
    }
    tracing::info!(%child, %parent, "merge requested");
    let started = std::time::Instant::now();
    let done = node.merge(parent, child).await.map_err(leader_hint)?;
    let slots = node.slots();
    Ok(Json(json!({
        "parent": done.parent.0,
        "child": done.child.0,
        "frozen_at": done.frozen_at,
        "merge_index": done.merge_index,
        "parent_slots": slots.slots(done.parent).map(|r| [r.start, r.end]),
        "took_ms": started.elapsed().as_millis() as u64,
    })))
}

/// An operator's 503 names the shard's new leader when one is known (the
/// admin API shows every node's address anyway; a client's never does).
fn leader_hint(e: missive_raft::Error) -> ApiError {
    match &e {
        missive_raft::Error::NotLeader {
            shard,
            leader: Some((id, addr)),
        } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{shard} just changed leader: node {id} at {addr} leads it now; retry"),
        )
        .retry_after(crate::error::RETRY_LEADER_KNOWN_MS),
        _ => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operators_503_names_the_new_leader_when_known() {
        let known = leader_hint(missive_raft::Error::NotLeader {
            shard: ShardId(2),
            leader: Some((3, "127.0.0.3:7080".into())),
        });
        assert_eq!(known.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            known.retry_after_ms,
            Some(crate::error::RETRY_LEADER_KNOWN_MS)
        );
        assert!(
            known.message.contains("node 3 at 127.0.0.3:7080"),
            "{}",
            known.message
        );
        let electing = leader_hint(missive_raft::Error::NotLeader {
            shard: ShardId(2),
            leader: None,
        });
        assert_eq!(
            electing.retry_after_ms,
            Some(crate::error::RETRY_ELECTION_MS)
        );
        assert!(
            !electing.message.contains("127.0.0") && !electing.message.contains("node 3"),
            "{}",
            electing.message
        );
    }
}

/// Body of `POST /v1/admin/shards/{shard}/search-index`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct IndexReq {
    /// Rebuild what differs (default: only report).
    #[serde(default)]
    repair: bool,
}

/// `POST /v1/admin/shards/{shard}/search-index`: checks the shard's
/// search index against its messages (`crate::index_check`), and with
/// `repair` rebuilds what differs through Raft.
#[utoipa::path(
    post,
    path = "/v1/admin/shards/{shard}/search-index",
    tag = "admin",
    summary = "Check (and rebuild) a shard's search index",
    params(("shard" = String, Path, description = "shard id")),
    request_body = IndexReq,
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
pub(crate) async fn search_index(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(shard): Path<String>,
    JsonBody(req): JsonBody<IndexReq>,
) -> Result<Json<crate::index_check::IndexReport>, ApiError> {
    require_admin(&s, &headers, "checking the search index")?;
    let shard = shard_of(&s.service.node, &shard)?;
    let r = s.service.check_index(shard, req.repair).await?;
    tracing::info!(?r, repair = req.repair, "search index checked");
    Ok(Json(r))
}
