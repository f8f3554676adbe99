//! End-to-end encryption's HTTP calls: the key directory (publish, status,
//! remove, a user's device list, claims). Encrypted sends go through the
//! ordinary send route (`kind: "encrypted"` with `payloads`).

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;

use missive_chat::command::{DeviceId, UserId};

use crate::e2ee::{bundle_out, PublishIn};
use crate::error::ApiError;
use crate::state::{AppState, Authed, JsonBody, Q};
use crate::wire::Id;

fn user_id(user: &str) -> Result<UserId, ApiError> {
    user.parse::<u64>()
        .map(UserId)
        .map_err(|_| ApiError::not_found(format!("{user:?} is not a user id")))
}

#[utoipa::path(
    put,
    path = "/v1/keys",
    tag = "keys",
    summary = "Publish this device's identity key, signed pre-key and one-time pre-keys",
    request_body = PublishIn,
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
pub(crate) async fn publish_keys(
    State(s): State<AppState>,
    Authed(who): Authed,
    JsonBody(req): JsonBody<PublishIn>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (identity, signed, one_time) = req.parse()?;
    let a = s
        .service
        .publish_keys(who, identity, signed, one_time)
        .await?;
    Ok(Json(a.json()))
}

#[utoipa::path(
    get,
    path = "/v1/keys",
    tag = "keys",
    summary = "This device's one-time pre-keys left",
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
pub(crate) async fn key_status(
    State(s): State<AppState>,
    Authed(who): Authed,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(s.service.key_status(who).await?.json()))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct RemoveQuery {
    /// One of your devices (default: this one).
    #[serde(default)]
    device: Option<String>,
}

#[utoipa::path(
    delete,
    path = "/v1/keys",
    tag = "keys",
    summary = "Remove one of your devices (default: this one) from the key directory",
    params(RemoveQuery),
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
pub(crate) async fn remove_keys(
    State(s): State<AppState>,
    Authed(who): Authed,
    Q(q): Q<RemoveQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let device = match q.device {
        None => who.device,
        Some(d) => DeviceId(
            d.parse()
                .map_err(|_| ApiError::invalid(format!("device {d:?} is not a device id")))?,
        ),
    };
    Ok(Json(s.service.remove_keys(who, device).await?.json()))
}

#[utoipa::path(
    get,
    path = "/v1/users/{user}/keys",
    tag = "keys",
    summary = "A user's device list: identity keys and signed pre-keys (nothing consumed)",
    params(("user" = String, Path, description = "user id (decimal)")),
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
pub(crate) async fn device_keys(
    State(s): State<AppState>,
    _who: Authed,
    Path(user): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let user = user_id(&user)?;
    let list = s.service.device_list(user).await?;
    let devices: Vec<_> = list.iter().map(|(d, k)| bundle_out(*d, k, None)).collect();
    Ok(Json(
        serde_json::json!({ "user": Id(user.0), "devices": devices }),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClaimReq {
    /// Only these devices (default: every device in the list).
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    devices: Vec<Id>,
}

#[utoipa::path(
    post,
    path = "/v1/users/{user}/keys/claim",
    tag = "keys",
    summary = "A bundle per device of a user, each consuming one one-time pre-key",
    params(("user" = String, Path, description = "user id (decimal)")),
    request_body = ClaimReq,
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
pub(crate) async fn claim_keys(
    State(s): State<AppState>,
    Authed(who): Authed,
    Path(user): Path<String>,
    JsonBody(req): JsonBody<ClaimReq>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let user = user_id(&user)?;
    let devices = req.devices.into_iter().map(|d| DeviceId(d.0)).collect();
    let bundles = s.service.claim_keys(who.user, user, devices).await?;
    let devices: Vec<_> = bundles
        .iter()
        .map(|b| bundle_out(b.device, &b.keys, b.one_time))
        .collect();
    Ok(Json(
        serde_json::json!({ "user": Id(user.0), "devices": devices }),
    ))
}
