//! The operator's push API (what `missivectl push` calls): list the dead
//! letters of the push outbox and replay them. Every call needs
//! `X-Admin-Secret`.
//!
//! ```text
//!  GET  /v1/admin/push/dead?after=&limit=   dead letters, a page, in key order
//!  POST /v1/admin/push/replay               {"jobs": ["user:useq", …]} or {"all": true}
//! ```

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use missive_chat::command::{Command, Outcome};
use missive_chat::push::DeadPush;
use missive_chat::{Useq, UserId};

use super::admin::require_admin;
use crate::error::ApiError;
use crate::state::AppState;

/// The most dead letters one page (or one replay of `all`) reads.
const MAX_PAGE: usize = 1_000;

fn parse_id(s: &str) -> Result<(UserId, Useq), ApiError> {
    let bad = || ApiError::invalid(format!("{s:?} is not a job id (user:useq)"));
    let (u, q) = s.split_once(':').ok_or_else(bad)?;
    Ok((
        UserId(u.parse().map_err(|_| bad())?),
        Useq(q.parse().map_err(|_| bad())?),
    ))
}

fn dead_json((user, useq): (UserId, Useq), d: &DeadPush) -> Value {
    json!({
        "id": format!("{}:{}", user.0, useq.0),
        "user": user.0.to_string(),
        "useq": useq.0,
        "conv": d.job.conv.0.to_string(),
        "seq": d.job.seq.0,
        "sender": d.job.sender.0.to_string(),
        "at": d.job.at,
        "devices": d.job.devices.iter().map(|x| x.0.to_string()).collect::<Vec<_>>(),
        "attempts": d.job.attempts,
        "died_at": d.died_micros,
        "reason": d.reason,
    })
}

/// Where a page starts and how long it is.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeadQuery {
    /// Start after this job id (`user:useq`, the previous page's `next`).
    after: Option<String>,
    /// At most this many (1–1000, default 100).
    limit: Option<usize>,
}

/// Lists dead letters, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/admin/push/dead",
    tag = "admin",
    summary = "List the push notifications given up on (dead letters)",
    params(DeadQuery),
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
pub(crate) async fn dead(
    State(s): State<AppState>,
    headers: HeaderMap,
    crate::state::Q(q): crate::state::Q<DeadQuery>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers, "listing dead push notifications")?;
    let after = q.after.as_deref().map(parse_id).transpose()?;
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let mut page = s.service.node.dead_pushes(after, limit + 1).await?;
    let next = (page.len() > limit).then(|| {
        page.truncate(limit);
        page.last().map(|((u, q), _)| format!("{}:{}", u.0, q.0))
    });
    Ok(Json(json!({
        "dead": page.iter().map(|(id, d)| dead_json(*id, d)).collect::<Vec<_>>(),
        "next": next.flatten(),
    })))
}

/// What to replay.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplayReq {
    /// These job ids (`user:useq`).
    #[serde(default)]
    jobs: Vec<String>,
    /// Every dead letter (up to 1000 per call: call again while `replayed`
    /// is 1000).
    #[serde(default)]
    all: bool,
}

/// Moves dead letters back to the pending jobs, due now.
#[utoipa::path(
    post,
    path = "/v1/admin/push/replay",
    tag = "admin",
    summary = "Replay dead push notifications",
    request_body = ReplayReq,
    responses((status = 200, description = "the answer (protocol.md)"), (status = "4XX", description = "refused", body = crate::error::ErrorAnswer), (status = "5XX", description = "unavailable, retry", body = crate::error::ErrorAnswer))
)]
pub(crate) async fn replay(
    State(s): State<AppState>,
    headers: HeaderMap,
    crate::state::JsonBody(req): crate::state::JsonBody<ReplayReq>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers, "replaying push notifications")?;
    let ids: Vec<(UserId, Useq)> = match (req.all, req.jobs.is_empty()) {
        (true, true) => s
            .service
            .node
            .dead_pushes(None, MAX_PAGE)
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect(),
        (false, false) => req
            .jobs
            .iter()
            .map(|j| parse_id(j))
            .collect::<Result<_, _>>()?,
        _ => return Err(ApiError::invalid("give jobs (a list of ids) or all: true")),
    };
    let mut replayed = 0;
    for (user, useq) in ids {
        if let Outcome::Push { changed } =
            s.service.write(Command::PushReplay { user, useq }).await?
        {
            replayed += changed;
        }
    }
    Ok(Json(json!({ "replayed": replayed })))
}
