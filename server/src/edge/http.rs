//! The HTTP API under `/v1/`, the WebSocket upgrade, and the operational
//! endpoints (`/healthz`, `/readyz`, `/metrics`). Handlers only translate:
//! JSON in, a `Service` call, JSON out; errors are `ApiError`s.

use axum::extract::{DefaultBodyLimit, Path, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use missive_chat::command::{DeviceId, UserId};
use missive_engine::keys::ConversationId;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::service::Outgoing;
use crate::state::{AppState, Authed, ConvPath, JsonBody, MessagePath, PeerIp, ReactionPath, Q};
use crate::wire::{parse_kind, BodyIn, Id, RevokeIn, SettingsIn, SettingsOut};

/// The OpenAPI document's top: what the API is and how it authenticates.
/// Its paths come from the handlers' `#[utoipa::path]` attributes, through
/// [`api`].
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Missive",
        description = "The HTTP API of missived. docs/protocol.md is the full contract: the WebSocket and gRPC edges, every event, every error code and limit."
    ),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// Every route but `/v1/ws-ticket`'s and the admin ones takes a bearer
/// access token; the admin routes take the admin secret the same way.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            Http, HttpAuthScheme, SecurityRequirement, SecurityScheme,
        };
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        doc.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

/// Every route with its OpenAPI description: registered and described from
/// the same `#[utoipa::path]` attribute, so the document cannot leave a
/// route out (a test also checks it against protocol.md's tables).
fn api() -> OpenApiRouter<AppState> {
    use crate::edge::{admin, media_admin};
    OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
        .routes(routes!(admin_token))
        .routes(routes!(admin::cluster))
        .routes(routes!(admin::add_replica))
        .routes(routes!(admin::remove_replica))
        .routes(routes!(admin::move_replica))
        .routes(routes!(admin::split_shard))
        .routes(routes!(admin::merge_shard))
        .routes(routes!(admin::forget_node))
        .routes(routes!(admin::scrub))
        .routes(routes!(media_admin::list))
        .routes(routes!(media_admin::inspect))
        .routes(routes!(media_admin::verify))
        .routes(routes!(media_admin::gc))
        .routes(routes!(crate::edge::push_admin::dead))
        .routes(routes!(crate::edge::push_admin::replay))
        .routes(routes!(admin::erase_user))
        .routes(routes!(admin::revoke_user))
        .routes(routes!(admin::search_index))
        .routes(routes!(crate::edge::backup::backup_plan))
        .routes(routes!(crate::edge::backup::backup_shard))
        .routes(routes!(crate::edge::backup::restore_reconcile))
        .routes(routes!(crate::edge::backup::verify))
        .routes(routes!(
            crate::edge::backup::restore_check,
            crate::edge::backup::restore
        ))
        .routes(routes!(ws_ticket))
        .routes(routes!(ws_upgrade))
        .routes(routes!(me, set_me))
        .routes(routes!(user_profile))
        .routes(routes!(devices, register_device))
        .routes(routes!(revoke))
        .routes(routes!(set_push_token, clear_push_token))
        .routes(routes!(list, create))
        .routes(routes!(conversation, rename))
        .routes(routes!(configure))
        .routes(routes!(members))
        .routes(routes!(leave))
        .routes(routes!(history, send))
        .routes(routes!(search))
        .routes(routes!(edit, unsend))
        .routes(routes!(react_add, react_remove))
        .routes(routes!(hide))
        .routes(routes!(pins))
        .routes(routes!(pin_add, pin_remove))
        .routes(routes!(blocks))
        .routes(routes!(block_add, block_remove))
        .routes(routes!(receipts, set_receipt))
        .routes(routes!(sync))
        .routes(routes!(crate::edge::media::create_upload))
        .routes(routes!(
            crate::edge::media::upload_status,
            crate::edge::media::append_upload
        ))
        .routes(routes!(crate::edge::media::download))
        .routes(routes!(crate::edge::media::thumbnail))
        .routes(routes!(crate::edge::media::media_url))
        .routes(routes!(
            crate::edge::keys::publish_keys,
            crate::edge::keys::key_status,
            crate::edge::keys::remove_keys
        ))
        .routes(routes!(crate::edge::keys::device_keys))
        .routes(routes!(crate::edge::keys::claim_keys))
}

/// The OpenAPI 3.1 description of the HTTP API (served at
/// `/v1/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().split_for_parts().1
}

#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "operations",
    summary = "This description (OpenAPI 3.1, JSON)",
    security(()),
    responses((status = 200, description = "the document"))
)]
async fn openapi_json() -> Response {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let doc = DOC.get_or_init(|| openapi().to_json().unwrap_or_default());
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        doc.clone(),
    )
        .into_response()
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    summary = "Liveness: 200 while the process runs",
    security(()),
    responses((status = 200, description = "ok"))
)]
async fn healthz() -> &'static str {
    "ok\n"
}

/// The router.
pub fn router(state: AppState) -> Router {
    let body_limit = state.service.limits.max_http_body_bytes;
    let (routes, _) = api().split_for_parts();
    let cors = crate::edge::cors::layer(state.auth.config());
    routes
        .merge(crate::edge::web::routes())
        .fallback(|| async { ApiError::not_found("no such endpoint; see docs/protocol.md") })
        .layer(DefaultBodyLimit::max(body_limit))
        // Foreign browser origins are refused before any handler runs;
        // the allowed ones get CORS answers (preflights end there).
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::edge::cors::guard,
        ))
        .layer(cors)
        // tus discovery, outside the CORS layer (which answers every
        // OPTIONS as a preflight); not in the OpenAPI document (OPTIONS).
        .route(
            "/v1/media/uploads",
            axum::routing::options(crate::edge::media::tus_options),
        )
        // Outermost last: an id is set (a client's own `x-request-id` is
        // kept), a span carries it through the handler, and the answer
        // echoes it.
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                // A 503 during an election is the protocol working, not a
                // failure to log at ERROR; ours are logged where they
                // happen (`ApiError::internal`).
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .layer(SetRequestIdLayer::x_request_id(RequestIds::default()))
        .with_state(state)
}

/// Request ids: a random prefix per process and a counter, in hex
/// (`3fa9c2d1-1a`): unique across restarts and nodes in practice, and
/// cheap (no syscall per request).
#[derive(Clone)]
pub(crate) struct RequestIds {
    prefix: u32,
    next: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Default for RequestIds {
    fn default() -> Self {
        let mut raw = [0u8; 4];
        // Without randomness, ids still count up; only their prefix is 0.
        let _ = getrandom::fill(&mut raw);
        RequestIds {
            prefix: u32::from_be_bytes(raw),
            next: std::sync::Arc::default(),
        }
    }
}

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{:08x}-{n:x}", self.prefix);
        axum::http::HeaderValue::from_str(&id)
            .ok()
            .map(RequestId::new)
    }
}

/// The span of one HTTP request (a gRPC call is one too: its path names
/// the method): method, path and request id.
pub(crate) fn request_span<B>(req: &axum::http::Request<B>) -> tracing::Span {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!("http", method = %req.method(), path = req.uri().path(), request_id = id)
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "Readiness: 200 when every group this node replicates has a leader, else 503 naming them",
    responses((status = 200, description = "the answer (protocol.md)"))
)]
async fn readyz(State(s): State<AppState>) -> Response {
    let node = &s.service.node;
    // Shards this node does not replicate are served by routing to their
    // replicas; only its own groups must have a leader.
    let leaderless: Vec<String> = node
        .slots()
        .groups()
        .filter(|sh| node.hosts(*sh))
        .filter(|sh| !matches!(node.leader(*sh), Ok(Some(_))))
        .map(|sh| sh.to_string())
        .collect();
    if leaderless.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no leader known for: {}\n", leaderless.join(", ")),
        )
            .into_response()
    }
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus text exposition of the node's metrics",
    responses((status = 200, description = "the answer (protocol.md)"))
)]
async fn metrics(State(s): State<AppState>) -> Response {
    let mut body = s.service.metrics.render();
    let node = &s.service.node;
    let shards: Vec<_> = node.slots().groups().collect();
    let view = crate::metrics::NodeView {
        log: node.log().stats(),
        lsm: node.lsm().stats(),
        records: node.record_cache_counts(),
        apply: node.apply_latencies(),
        fanout: node.fanout_latencies(),
        local_deliveries: node.local_deliveries(),
        rate_limited_users: s.service.rate_limited_users() as u64,
        leaders: shards
            .iter()
            .map(|sh| (sh.0, node.leader(*sh).ok().flatten().unwrap_or(0)))
            .collect(),
        lag: shards
            .iter()
            .flat_map(|sh| {
                node.replication_lag(*sh)
                    .into_iter()
                    .map(move |(n, lag)| (sh.0, n, lag))
            })
            .collect(),
        cluster_map_version: node.cluster_map().version,
        groups: shards
            .iter()
            .filter_map(|sh| node.group_stats(*sh).map(|g| (sh.0, g)))
            .collect(),
        handovers: node.leader_handovers(),
    };
    body.push_str(&view.render());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
        .into_response()
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct MintReq {
    user: Id,
    device: Id,
    #[serde(default)]
    ttl_secs: Option<u64>,
}

#[utoipa::path(
    post,
    path = "/v1/admin/tokens",
    tag = "admin",
    summary = "Mint an access token (development; needs the admin secret)",
    request_body = MintReq,
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn admin_token(
    State(s): State<AppState>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<MintReq>,
) -> Result<Json<serde_json::Value>, ApiError> {
    crate::edge::admin::require_admin(&s, &headers, "minting tokens")?;
    if req.user.0 == 0 {
        return Err(ApiError::invalid("user must be a non-zero id"));
    }
    let (token, expires_at) = s.auth.access_token(
        Caller {
            user: UserId(req.user.0),
            device: DeviceId(req.device.0),
        },
        req.ttl_secs,
    )?;
    Ok(Json(json!({ "token": token, "expires_at": expires_at })))
}

#[utoipa::path(
    post,
    path = "/v1/ws-ticket",
    tag = "sessions",
    summary = "A single-use WebSocket ticket",
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn ws_ticket(
    State(s): State<AppState>,
    Authed(who): Authed,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (ticket, expires_at) = s.auth.ticket(who)?;
    Ok(Json(json!({ "ticket": ticket, "expires_at": expires_at })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct WsQuery {
    #[serde(default)]
    ticket: Option<String>,
}

/// A WebSocket's read buffer, bytes: tungstenite keeps (and zeroes) this
/// much for every connection's life, so it is sized for the frames chat
/// clients send (a `send` of a short text is ~200 bytes); a larger frame
/// still arrives, in more reads.
const READ_BUFFER: usize = 1024;
/// Frames are gathered up to this many bytes before a write (the session
/// writer flushes after each burst anyway), bytes.
const WRITE_BUFFER: usize = 16 * 1024;

#[utoipa::path(
    get,
    path = "/v1/ws",
    tag = "sessions",
    summary = "Open the WebSocket (see the WebSocket section of protocol.md)",
    params(WsQuery),
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn ws_upgrade(
    State(s): State<AppState>,
    PeerIp(peer): PeerIp,
    headers: HeaderMap,
    Q(q): Q<WsQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    // The origin was checked by `cors::guard`, as for every route.
    if let Some(ip) = peer {
        s.ips.upgrade(ip)?;
    }
    let token = match q.ticket {
        Some(t) => s.redeem_ticket(&t).await?,
        None => s.authenticate(&headers).await?,
    };
    let slot = s.sockets.admit(token.caller.user)?;
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let limits = &s.service.limits;
    // Explicit limits: axum's defaults are 64 MiB messages and an
    // unbounded write buffer. The read buffer is small because chat frames
    // are: tungstenite's default (128 KiB, zeroed as it grows) cost ~140 KiB
    // of RSS per idle connection and showed up as memset in profiles; a
    // larger frame still arrives, in more reads.
    Ok(ws
        .max_message_size(limits.max_frame_bytes)
        .max_frame_size(limits.max_frame_bytes)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(4 * 1024 * 1024)
        .on_upgrade(move |socket| {
            let span = tracing::info_span!(
                "ws",
                user = token.caller.user.0,
                device = token.caller.device.0,
                request_id
            );
            // A task of its own: run inside axum's upgrade task, the
            // session's state sat next to that task's own (the upgrade, the
            // handshake), ~4 KiB more for every connection's life.
            tokio::spawn(tracing::Instrument::instrument(
                crate::edge::ws::session(socket, s, token, slot),
                span,
            ));
            std::future::ready(())
        }))
}

/// Logs devices of the caller out (their tokens stop working).
#[utoipa::path(
    post,
    path = "/v1/devices/revoke",
    tag = "devices",
    summary = "Log devices out (204)",
    request_body = RevokeIn,
    responses((status = 204, description = "done"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn revoke(
    State(s): State<AppState>,
    Authed(who): Authed,
    JsonBody(req): JsonBody<RevokeIn>,
) -> Result<StatusCode, ApiError> {
    let scope = req.scope(who.device)?;
    s.revoke(who.user, scope).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
struct ProfileOut {
    user: Id,
    display_name: String,
}

#[utoipa::path(
    get,
    path = "/v1/users/me",
    tag = "users",
    summary = "Your profile",
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn me(State(s): State<AppState>, Authed(who): Authed) -> Result<Json<ProfileOut>, ApiError> {
    profile_of(&s, who.user).await
}

#[utoipa::path(
    get,
    path = "/v1/users/{user}",
    tag = "users",
    summary = "A user's profile",
    params(("user" = String, Path, description = "user id (decimal)")),
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn user_profile(
    State(s): State<AppState>,
    _who: Authed,
    Path(user): Path<String>,
) -> Result<Json<ProfileOut>, ApiError> {
    let u = user
        .parse::<u64>()
        .map_err(|_| ApiError::not_found(format!("{user:?} is not a user id")))?;
    profile_of(&s, UserId(u)).await
}

async fn profile_of(s: &AppState, user: UserId) -> Result<Json<ProfileOut>, ApiError> {
    let p = s.service.profile(user).await?;
    Ok(Json(ProfileOut {
        user: Id(user.0),
        display_name: p.display_name,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SetProfile {
    display_name: String,
}

#[utoipa::path(
    put,
    path = "/v1/users/me",
    tag = "users",
    summary = "Set your display name",
    request_body = SetProfile,
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn set_me(
    State(s): State<AppState>,
    Authed(who): Authed,
    JsonBody(req): JsonBody<SetProfile>,
) -> Result<Json<ProfileOut>, ApiError> {
    s.service
        .set_profile(who.user, req.display_name.clone())
        .await?;
    Ok(Json(ProfileOut {
        user: Id(who.user.0),
        display_name: req.display_name,
    }))
}

#[derive(Serialize)]
struct DeviceOut {
    device: Id,
    name: String,
    platform: String,
    registered_at: u64,
}

#[utoipa::path(
    get,
    path = "/v1/devices",
    tag = "devices",
    summary = "Your devices",
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn devices(
    State(s): State<AppState>,
    Authed(who): Authed,
) -> Result<Json<serde_json::Value>, ApiError> {
    let list: Vec<DeviceOut> = s
        .service
        .devices(who.user)
        .await?
        .into_iter()
        .map(|(d, dev)| DeviceOut {
            device: Id(d.0),
            name: dev.name,
            platform: dev.platform,
            registered_at: dev.registered_micros,
        })
        .collect();
    Ok(Json(json!({ "devices": list })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RegisterDevice {
    name: String,
    #[serde(default)]
    platform: String,
}

#[utoipa::path(
    post,
    path = "/v1/devices",
    tag = "devices",
    summary = "Register the token's device",
    request_body = RegisterDevice,
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn register_device(
    State(s): State<AppState>,
    Authed(who): Authed,
    JsonBody(req): JsonBody<RegisterDevice>,
) -> Result<Json<serde_json::Value>, ApiError> {
    s.service
        .register_device(who, req.name, req.platform)
        .await?;
    Ok(Json(json!({ "device": Id(who.device.0) })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PushToken {
    token: String,
}

#[utoipa::path(
    put,
    path = "/v1/devices/push",
    tag = "devices",
    summary = "Set this device's push token",
    request_body = PushToken,
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn set_push_token(
    State(s): State<AppState>,
    Authed(who): Authed,
    JsonBody(req): JsonBody<PushToken>,
) -> Result<Json<serde_json::Value>, ApiError> {
    write_push_token(&s, who, Some(req.token)).await
}

#[utoipa::path(
    delete,
    path = "/v1/devices/push",
    tag = "devices",
    summary = "Turn push off for this device",
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn clear_push_token(
    State(s): State<AppState>,
    Authed(who): Authed,
) -> Result<Json<serde_json::Value>, ApiError> {
    write_push_token(&s, who, None).await
}

async fn write_push_token(
    s: &AppState,
    who: Caller,
    token: Option<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let set = token.is_some();
    s.service.set_push_token(who, token).await?;
    Ok(Json(json!({ "device": Id(who.device.0), "push": set })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    before: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

#[utoipa::path(
    get,
    path = "/v1/conversations",
    tag = "conversations",
    summary = "A page of your conversation list, most recently active first",
    params(ListQuery),
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn list(
    State(s): State<AppState>,
    Authed(who): Authed,
    Q(q): Q<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let before = q
        .before
        .as_deref()
        .map(crate::service::ListCursor::parse)
        .transpose()?;
    let (items, next) = s
        .service
        .conversation_page(who.user, before, q.limit)
        .await?;
    Ok(Json(json!({
        "conversations": crate::service::list_out(items),
        "next_before": next.map(crate::service::ListCursor::text),
    })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum CreateReq {
    Direct {
        peer: Id,
    },
    Group {
        name: String,
        #[serde(default)]
        members: Vec<Id>,
    },
}

#[utoipa::path(
    post,
    path = "/v1/conversations",
    tag = "conversations",
    summary = "Create a direct conversation or a group",
    request_body = CreateReq,
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn create(
    State(s): State<AppState>,
    Authed(who): Authed,
    JsonBody(req): JsonBody<CreateReq>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    match req {
        CreateReq::Direct { peer } => {
            let (conv, created) = s.service.create_direct(who.user, UserId(peer.0)).await?;
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((
                status,
                Json(json!({ "conv": Id(conv.0), "created": created })),
            ))
        }
        CreateReq::Group { name, members } => {
            let members = members.into_iter().map(|m| UserId(m.0)).collect();
            let conv = s.service.create_group(who.user, name, members).await?;
            Ok((
                StatusCode::CREATED,
                Json(json!({ "conv": Id(conv.0), "created": true })),
            ))
        }
    }
}

#[utoipa::path(
    get,
    path = "/v1/conversations/{conv}",
    tag = "conversations",
    summary = "A conversation: kind, name, members, admins, settings",
    params(("conv" = String, Path, description = "conversation id (decimal)")),
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn conversation(
    State(s): State<AppState>,
    Authed(who): Authed,
    ConvPath(conv): ConvPath,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (c, last_seq) = s.service.conversation_info(who.user, conv).await?;
    let ids = |v: &[UserId]| v.iter().map(|u| Id(u.0)).collect::<Vec<_>>();
    Ok(Json(json!({
        "conv": Id(conv.0),
        "kind": crate::wire::conversation_kind_name(c.kind),
        "name": c.name,
        "members": ids(&c.members),
        "admins": ids(&c.admins),
        "version": c.version,
        "created_at": c.created_micros,
        "last_seq": last_seq,
        "settings": SettingsOut::from(c.settings),
        "encrypted": c.encrypted,
        "push_previews": c.push_previews,
    })))
}

#[utoipa::path(
    put,
    path = "/v1/conversations/{conv}/settings",
    tag = "conversations",
    summary = "Change a conversation's settings",
    params(("conv" = String, Path, description = "conversation id (decimal)")),
    request_body = SettingsIn,
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn configure(
    State(s): State<AppState>,
    Authed(who): Authed,
    ConvPath(conv): ConvPath,
    JsonBody(req): JsonBody<SettingsIn>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let done = s.service.configure(who.user, conv, req.parse()?).await?;
    let mut answer = json!({
        "conv": Id(conv.0),
        "settings": SettingsOut::from(done.settings),
        "changed": done.changed,
    });
    if let Some(on) = done.push_previews {
        answer["push_previews"] = on.into();
    }
    Ok(Json(answer))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RenameReq {
    name: String,
}

#[utoipa::path(
    patch,
    path = "/v1/conversations/{conv}",
    tag = "conversations",
    summary = "Rename a group",
    params(("conv" = String, Path, description = "conversation id (decimal)")),
    request_body = RenameReq,
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn rename(
    State(s): State<AppState>,
    Authed(who): Authed,
    ConvPath(conv): ConvPath,
    JsonBody(req): JsonBody<RenameReq>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (version, seq) = s
        .service
        .change_members(who.user, conv, vec![], vec![], vec![], Some(req.name))
        .await?;
    Ok(Json(json!({ "version": version, "seq": seq })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct MembersReq {
    #[serde(default)]
    add: Vec<Id>,
    #[serde(default)]
    remove: Vec<Id>,
    #[serde(default)]
    promote: Vec<Id>,
}

#[utoipa::path(
    post,
    path = "/v1/conversations/{conv}/members",
    tag = "conversations",
    summary = "Add, remove or promote members of a group",
    params(("conv" = String, Path, description = "conversation id (decimal)")),
    request_body = MembersReq,
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn members(
    State(s): State<AppState>,
    Authed(who): Authed,
    ConvPath(conv): ConvPath,
    JsonBody(req): JsonBody<MembersReq>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let u = |v: Vec<Id>| v.into_iter().map(|i| UserId(i.0)).collect::<Vec<_>>();
    if req.add.is_empty() && req.remove.is_empty() && req.promote.is_empty() {
        return Err(ApiError::invalid("give add, remove or promote"));
    }
    let (version, seq) = s
        .service
        .change_members(
            who.user,
            conv,
            u(req.add),
            u(req.remove),
            u(req.promote),
            None,
        )
        .await?;
    Ok(Json(json!({ "version": version, "seq": seq })))
}

#[utoipa::path(
    post,
    path = "/v1/conversations/{conv}/leave",
    tag = "conversations",
    summary = "Leave a group",
    params(("conv" = String, Path, description = "conversation id (decimal)")),
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn leave(
    State(s): State<AppState>,
    Authed(who): Authed,
    ConvPath(conv): ConvPath,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (version, seq) = s.service.leave(who.user, conv).await?;
    Ok(Json(json!({ "version": version, "seq": seq })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    #[serde(default)]
    before: Option<u64>,
    #[serde(default)]
    after: Option<u64>,
    #[serde(default)]
    around: Option<u64>,
    #[serde(default)]
    limit: Option<usize>,
}

#[utoipa::path(
    get,
    path = "/v1/conversations/{conv}/messages",
    tag = "messages",
    summary = "A page of history",
    params(("conv" = String, Path, description = "conversation id (decimal)"), HistoryQuery),
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn history(
    State(s): State<AppState>,
    Authed(who): Authed,
    ConvPath(conv): ConvPath,
    Q(q): Q<HistoryQuery>,
) -> Result<HistoryOut, ApiError> {
    let cursor = crate::service::Cursor::of(q.before, q.after, q.around)?;
    let page = s.service.history(who, conv, cursor, q.limit).await?;
    Ok(HistoryOut {
        messages: page.messages,
        next_before: page.next_before,
        next_after: page.next_after,
    })
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct SearchParams {
    /// The words; the last is a prefix unless the text ends in a space.
    q: String,
    /// Only this conversation (decimal id).
    #[serde(default)]
    #[param(value_type = Option<String>)]
    conv: Option<Id>,
    /// Only messages from this user (decimal id).
    #[serde(default)]
    #[param(value_type = Option<String>)]
    sender: Option<Id>,
    /// Only messages sent at or after this ts (µs).
    #[serde(default)]
    since: Option<u64>,
    /// Only messages sent before this ts (µs).
    #[serde(default)]
    until: Option<u64>,
    /// text, media, reply or link.
    #[serde(default)]
    kind: Option<String>,
    /// The previous page's `next`.
    #[serde(default)]
    cursor: Option<String>,
    /// 1..=100 (default 20).
    #[serde(default)]
    limit: Option<usize>,
}

#[utoipa::path(
    get,
    path = "/v1/search",
    tag = "messages",
    summary = "Search your messages",
    params(SearchParams),
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn search(
    State(s): State<AppState>,
    Authed(who): Authed,
    Q(q): Q<SearchParams>,
) -> Result<Json<crate::service::SearchPageOut>, ApiError> {
    let query = crate::service::SearchQuery {
        text: q.q,
        conv: q.conv.map(|c| ConversationId(c.0)),
        sender: q.sender.map(|u| UserId(u.0)),
        since: q.since,
        until: q.until,
        kind: q.kind,
        cursor: q.cursor,
        limit: q.limit,
    };
    Ok(Json(s.service.search(who.user, query).await?))
}

/// A history page. Typed rather than `json!`: that would build every
/// message as a `serde_json::Value` map first (an allocation and a tree
/// insert per field) and serialize it again — most of a page's CPU.
#[derive(Serialize)]
struct HistoryOut {
    messages: Vec<crate::wire::MessageOut>,
    next_before: Option<u64>,
    next_after: Option<u64>,
}

impl IntoResponse for HistoryOut {
    /// Like `Json`, but into a buffer sized for the page up front: `Json`
    /// starts at 128 bytes and doubles, copying a 50-message page (12–17
    /// KiB) eight times over.
    fn into_response(self) -> Response {
        /// Bytes a message usually renders to, its body aside.
        const PER_MESSAGE: usize = 320;
        let guess = 64
            + self
                .messages
                .iter()
                .map(|m| PER_MESSAGE + m.body.as_ref().map_or(0, String::len))
                .sum::<usize>();
        let mut buf = Vec::with_capacity(guess);
        match serde_json::to_writer(&mut buf, &self) {
            Ok(()) => (
                [(
                    axum::http::header::CONTENT_TYPE,
                    axum::http::HeaderValue::from_static("application/json"),
                )],
                buf,
            )
                .into_response(),
            Err(e) => ApiError::internal(&format!("rendering a history page: {e}")).into_response(),
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SendReq {
    client_msg_id: String,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    body_b64: Option<String>,
    #[serde(default)]
    expires_in_ms: Option<u64>,
    #[serde(default)]
    reply_to: Option<u64>,
    #[serde(default)]
    mentions: Vec<Id>,
    #[serde(default)]
    payloads: Vec<crate::e2ee::PayloadIn>,
}

#[utoipa::path(
    post,
    path = "/v1/conversations/{conv}/messages",
    tag = "messages",
    summary = "Send a message (idempotent per client_msg_id)",
    params(("conv" = String, Path, description = "conversation id (decimal)")),
    request_body = SendReq,
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn send(
    State(s): State<AppState>,
    Authed(who): Authed,
    ConvPath(conv): ConvPath,
    JsonBody(req): JsonBody<SendReq>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let kind = parse_kind(req.kind.as_deref().unwrap_or("text"))?;
    let body = BodyIn {
        body: req.body,
        body_b64: req.body_b64,
    }
    .bytes(s.service.limits.max_message_bytes)?;
    let out = Outgoing {
        client_msg_id: req.client_msg_id,
        kind,
        body,
        expires_in_ms: req.expires_in_ms,
        reply_to: req.reply_to,
        mentions: req.mentions.into_iter().map(|m| m.0).collect(),
        payloads: req
            .payloads
            .into_iter()
            .map(crate::e2ee::PayloadIn::parse)
            .collect::<Result<_, _>>()?,
    };
    let a = s.service.send(who, conv, out).await?;
    Ok(Json(json!({
        "conv": Id(conv.0), "seq": a.seq, "ts": a.ts, "duplicate": a.duplicate
    })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct EditReq {
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    body_b64: Option<String>,
}

fn changed(conv: ConversationId, a: crate::service::ChangeAck) -> Json<serde_json::Value> {
    Json(json!({ "conv": Id(conv.0), "seq": a.seq, "at": a.at, "changed": a.changed }))
}

#[utoipa::path(
    patch,
    path = "/v1/conversations/{conv}/messages/{seq}",
    tag = "messages",
    summary = "Edit your message",
    params(("conv" = String, Path, description = "conversation id (decimal)"), ("seq" = String, Path, description = "message seq in the conversation")),
    request_body = EditReq,
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn edit(
    State(s): State<AppState>,
    Authed(who): Authed,
    MessagePath(conv, seq): MessagePath,
    JsonBody(req): JsonBody<EditReq>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body = BodyIn {
        body: req.body,
        body_b64: req.body_b64,
    }
    .bytes(s.service.limits.max_message_bytes)?;
    let a = s.service.edit(who.user, conv, seq, body).await?;
    Ok(changed(conv, a))
}

#[utoipa::path(
    delete,
    path = "/v1/conversations/{conv}/messages/{seq}",
    tag = "messages",
    summary = "Unsend a message (a tombstone for everyone)",
    params(("conv" = String, Path, description = "conversation id (decimal)"), ("seq" = String, Path, description = "message seq in the conversation")),
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn unsend(
    State(s): State<AppState>,
    Authed(who): Authed,
    MessagePath(conv, seq): MessagePath,
) -> Result<Json<serde_json::Value>, ApiError> {
    let a = s.service.unsend(who.user, conv, seq).await?;
    Ok(changed(conv, a))
}

#[utoipa::path(
    put,
    path = "/v1/conversations/{conv}/messages/{seq}/reactions/{emoji}",
    tag = "messages",
    summary = "React to a message",
    params(("conv" = String, Path, description = "conversation id (decimal)"), ("seq" = String, Path, description = "message seq in the conversation"), ("emoji" = String, Path, description = "the reaction (URL-encoded)")),
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn react_add(
    State(s): State<AppState>,
    Authed(who): Authed,
    ReactionPath(conv, seq, emoji): ReactionPath,
) -> Result<Json<serde_json::Value>, ApiError> {
    let a = s.service.react(who.user, conv, seq, emoji, true).await?;
    Ok(changed(conv, a))
}

#[utoipa::path(
    delete,
    path = "/v1/conversations/{conv}/messages/{seq}/reactions/{emoji}",
    tag = "messages",
    summary = "Remove your reaction",
    params(("conv" = String, Path, description = "conversation id (decimal)"), ("seq" = String, Path, description = "message seq in the conversation"), ("emoji" = String, Path, description = "the reaction (URL-encoded)")),
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn react_remove(
    State(s): State<AppState>,
    Authed(who): Authed,
    ReactionPath(conv, seq, emoji): ReactionPath,
) -> Result<Json<serde_json::Value>, ApiError> {
    let a = s.service.react(who.user, conv, seq, emoji, false).await?;
    Ok(changed(conv, a))
}

#[utoipa::path(
    post,
    path = "/v1/conversations/{conv}/messages/{seq}/hide",
    tag = "messages",
    summary = "Delete a message for yourself only",
    params(("conv" = String, Path, description = "conversation id (decimal)"), ("seq" = String, Path, description = "message seq in the conversation")),
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn hide(
    State(s): State<AppState>,
    Authed(who): Authed,
    MessagePath(conv, seq): MessagePath,
) -> Result<Json<serde_json::Value>, ApiError> {
    let a = s.service.hide(who.user, conv, seq).await?;
    Ok(changed(conv, a))
}

#[utoipa::path(
    get,
    path = "/v1/conversations/{conv}/pins",
    tag = "messages",
    summary = "A conversation's pinned messages",
    params(("conv" = String, Path, description = "conversation id (decimal)")),
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn pins(
    State(s): State<AppState>,
    Authed(who): Authed,
    ConvPath(conv): ConvPath,
) -> Result<Json<serde_json::Value>, ApiError> {
    let list = s.service.pins(who, conv).await?;
    Ok(Json(json!({ "pins": crate::wire::pins_out(list) })))
}

#[utoipa::path(
    put,
    path = "/v1/conversations/{conv}/pins/{seq}",
    tag = "messages",
    summary = "Pin a message",
    params(("conv" = String, Path, description = "conversation id (decimal)"), ("seq" = String, Path, description = "message seq in the conversation")),
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn pin_add(
    State(s): State<AppState>,
    Authed(who): Authed,
    MessagePath(conv, seq): MessagePath,
) -> Result<Json<serde_json::Value>, ApiError> {
    let a = s.service.pin(who.user, conv, seq, true).await?;
    Ok(changed(conv, a))
}

#[utoipa::path(
    delete,
    path = "/v1/conversations/{conv}/pins/{seq}",
    tag = "messages",
    summary = "Unpin a message",
    params(("conv" = String, Path, description = "conversation id (decimal)"), ("seq" = String, Path, description = "message seq in the conversation")),
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn pin_remove(
    State(s): State<AppState>,
    Authed(who): Authed,
    MessagePath(conv, seq): MessagePath,
) -> Result<Json<serde_json::Value>, ApiError> {
    let a = s.service.pin(who.user, conv, seq, false).await?;
    Ok(changed(conv, a))
}

#[utoipa::path(
    get,
    path = "/v1/blocks",
    tag = "users",
    summary = "The users you block",
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn blocks(
    State(s): State<AppState>,
    Authed(who): Authed,
) -> Result<Json<serde_json::Value>, ApiError> {
    let list = s.service.blocked(who.user).await?;
    Ok(Json(json!({ "blocked": crate::wire::blocked_out(list) })))
}

fn user_in_path(raw: &str) -> Result<UserId, ApiError> {
    raw.parse::<u64>()
        .map(UserId)
        .map_err(|_| ApiError::not_found(format!("{raw:?} is not a user id")))
}

#[utoipa::path(
    put,
    path = "/v1/blocks/{user}",
    tag = "users",
    summary = "Block a user",
    params(("user" = String, Path, description = "user id (decimal)")),
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn block_add(
    State(s): State<AppState>,
    Authed(who): Authed,
    Path(user): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let u = user_in_path(&user)?;
    s.service.block(who.user, u, true).await?;
    Ok(Json(json!({ "user": Id(u.0), "blocked": true })))
}

#[utoipa::path(
    delete,
    path = "/v1/blocks/{user}",
    tag = "users",
    summary = "Unblock a user",
    params(("user" = String, Path, description = "user id (decimal)")),
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn block_remove(
    State(s): State<AppState>,
    Authed(who): Authed,
    Path(user): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let u = user_in_path(&user)?;
    s.service.block(who.user, u, false).await?;
    Ok(Json(json!({ "user": Id(u.0), "blocked": false })))
}

#[utoipa::path(
    get,
    path = "/v1/conversations/{conv}/receipts",
    tag = "receipts",
    summary = "Every member's delivered and read watermarks",
    params(("conv" = String, Path, description = "conversation id (decimal)")),
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn receipts(
    State(s): State<AppState>,
    Authed(who): Authed,
    ConvPath(conv): ConvPath,
) -> Result<Json<serde_json::Value>, ApiError> {
    let r = s.service.receipts(who.user, conv).await?;
    let list: Vec<serde_json::Value> = r
        .into_iter()
        .map(|(u, r)| json!({ "user": Id(u.0), "delivered": r.delivered, "read": r.read }))
        .collect();
    Ok(Json(json!({ "receipts": list })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ReceiptReq {
    #[serde(default)]
    delivered: Option<u64>,
    #[serde(default)]
    read: Option<u64>,
}

#[utoipa::path(
    post,
    path = "/v1/conversations/{conv}/receipts",
    tag = "receipts",
    summary = "Move your delivered and read watermarks",
    params(("conv" = String, Path, description = "conversation id (decimal)")),
    request_body = ReceiptReq,
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn set_receipt(
    State(s): State<AppState>,
    Authed(who): Authed,
    ConvPath(conv): ConvPath,
    JsonBody(req): JsonBody<ReceiptReq>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (delivered, read) = s
        .service
        .set_receipt(who.user, conv, req.delivered, req.read)
        .await?;
    Ok(Json(json!({ "delivered": delivered, "read": read })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct SyncQuery {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    limit: Option<usize>,
}

#[utoipa::path(
    get,
    path = "/v1/sync",
    tag = "sync",
    summary = "Stored events after a cursor (the WebSocket sync, one page)",
    params(SyncQuery),
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
async fn sync(
    State(s): State<AppState>,
    Authed(who): Authed,
    Q(q): Q<SyncQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = q.limit.unwrap_or(s.service.limits.sync_page);
    if limit == 0 || limit > s.service.limits.sync_page {
        return Err(ApiError::invalid(format!(
            "limit must be 1..={}",
            s.service.limits.sync_page
        )));
    }
    let (events, head) = s.service.inbox_page(who.user, q.after, limit).await?;
    if q.after > head {
        // Beyond this replica: refused if beyond the leader too, else an
        // empty page (this replica is behind; ask again).
        s.service.check_cursor(who.user, q.after).await?;
    }
    let mut out = Vec::with_capacity(events.len());
    let mut cursor = q.after;
    for (useq, e) in events {
        let event = s.service.render_event(&e, who).await?;
        out.push(json!({
            "useq": useq,
            "conv": Id(e.conv.0),
            "at": e.at,
            "event": event,
        }));
        cursor = useq;
    }
    Ok(Json(
        json!({ "events": out, "cursor": cursor, "more": cursor < head }),
    ))
}

/// Fuzz entry (cargo feature `fuzzing`): `body` as the JSON body of the
/// route `pick` names, through the same extractor and the same pure checks
/// as its handler (everything before the handler calls the service).
#[cfg(feature = "fuzzing")]
pub(crate) async fn fuzz_body(pick: u8, body: Vec<u8>) -> Result<(), ApiError> {
    use axum::extract::FromRequest;
    use serde::de::DeserializeOwned;
    async fn take<T: DeserializeOwned>(body: Vec<u8>) -> Result<T, ApiError> {
        let req = axum::http::Request::builder()
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body))
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        JsonBody::<T>::from_request(req, &()).await.map(|b| b.0)
    }
    const MAX: usize = 64 << 10;
    match pick % 14 {
        0 => {
            let r: SendReq = take(body).await?;
            parse_kind(r.kind.as_deref().unwrap_or("text"))?;
            BodyIn {
                body: r.body,
                body_b64: r.body_b64,
            }
            .bytes(MAX)?;
        }
        1 => {
            let r: EditReq = take(body).await?;
            BodyIn {
                body: r.body,
                body_b64: r.body_b64,
            }
            .bytes(MAX)?;
        }
        2 => {
            take::<SettingsIn>(body).await?.parse()?;
        }
        3 => {
            take::<MintReq>(body).await?;
        }
        4 => {
            take::<RevokeIn>(body).await?;
        }
        5 => {
            take::<SetProfile>(body).await?;
        }
        6 => {
            take::<RegisterDevice>(body).await?;
        }
        7 => {
            take::<PushToken>(body).await?;
        }
        8 => {
            take::<CreateReq>(body).await?;
        }
        9 => {
            take::<RenameReq>(body).await?;
        }
        10 => {
            take::<MembersReq>(body).await?;
        }
        11 => {
            take::<ReceiptReq>(body).await?;
        }
        12 => {
            take::<crate::edge::admin::AddReq>(body).await?;
        }
        _ => {
            take::<crate::edge::admin::MoveReq>(body).await?;
        }
    }
    Ok(())
}
