//! The admin API, at Synapse's paths so that operators' existing tools work. Only what Hearth
//! implements is routed; everything else under `/_synapse/admin` is `M_UNRECOGNIZED`.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use hearth_core::reports::{Report, ReportPage, ReportQuery};
use ruma::UserId;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, QueryParams};

/// Admins are the accounts marked so and the users the configuration names.
pub(crate) fn is_admin(state: &AppState, user: &UserId) -> ApiResult<bool> {
    let configured = state.config.admin_users.iter().any(|u| u == user.as_str());
    Ok(configured || state.core.accounts.user(user)?.is_some_and(|u| u.admin))
}

fn require_admin(state: &AppState, user: &UserId) -> ApiResult<()> {
    if is_admin(state, user)? {
        Ok(())
    } else {
        Err(ApiError::forbidden("You are not a server admin"))
    }
}

/// `POST /_synapse/admin/v1/media/quarantine/{serverName}/{mediaId}`: takes one item down.
pub async fn quarantine_media(
    State(state): State<AppState>,
    Auth(session): Auth,
    Path((server_name, media_id)): Path<(String, String)>,
) -> ApiResult<Response> {
    require_admin(&state, &session.user_id)?;
    if !state.core.media.quarantine(&server_name, &media_id).await? {
        return Err(ApiError::not_found("Media not found"));
    }
    tracing::info!(admin = %session.user_id, %server_name, %media_id, "media quarantined");
    Ok(axum::Json(json!({})).into_response())
}

/// `POST /_synapse/admin/v1/user/{userId}/media/quarantine`: takes down all a user uploaded
/// (for a deactivated or abusive account).
pub async fn quarantine_user_media(
    State(state): State<AppState>,
    Auth(session): Auth,
    Path(user_id): Path<String>,
) -> ApiResult<Response> {
    require_admin(&state, &session.user_id)?;
    let user = UserId::parse(user_id).map_err(|e| ApiError::invalid_param(e.to_string()))?;
    let n = state.core.media.quarantine_user(&user).await?;
    tracing::info!(admin = %session.user_id, %user, items = n, "user's media quarantined");
    Ok(axum::Json(json!({ "num_quarantined": n })).into_response())
}

/// The query of `GET /_synapse/admin/v1/event_reports` (and of `room_reports`).
#[derive(Deserialize)]
pub struct ReportsParams {
    from: Option<i64>,
    limit: Option<i64>,
    dir: Option<String>,
    user_id: Option<String>,
    room_id: Option<String>,
    event_sender_user_id: Option<String>,
}

impl ReportsParams {
    fn query(self) -> ApiResult<ReportQuery> {
        let count = |v: Option<i64>, default: i64, name: &str| {
            usize::try_from(v.unwrap_or(default)).map_err(|_| {
                ApiError::invalid_param(format!("The {name} parameter must be a positive integer."))
            })
        };
        let newest_first = match self.dir.as_deref() {
            None | Some("b") => true,
            Some("f") => false,
            Some(_) => {
                return Err(ApiError::invalid_param(
                    "Unknown direction: dir must be b or f",
                ));
            }
        };
        Ok(ReportQuery {
            from: count(self.from, 0, "start")?,
            limit: count(self.limit, 100, "limit")?,
            newest_first,
            user_id: self.user_id,
            room_id: self.room_id,
            event_sender: self.event_sender_user_id,
        })
    }
}

/// A report in the shape of Synapse's admin API.
fn report_json(r: &Report, event: bool) -> Value {
    let mut v = json!({
        "id": r.id,
        "received_ts": r.record.received_ts,
        "room_id": r.record.room_id,
        "user_id": r.record.user_id,
        "reason": r.record.reason,
        "canonical_alias": r.canonical_alias,
        "name": r.name,
    });
    if event {
        v["event_id"] = json!(r.record.event_id);
        v["score"] = json!(r.record.score);
        v["sender"] = json!(r.sender);
    }
    v
}

fn page_json(page: &ReportPage, key: &str, event: bool) -> Value {
    let reports: Vec<Value> = page.reports.iter().map(|r| report_json(r, event)).collect();
    let mut v = json!({ key: reports, "total": page.total });
    if let Some(next) = page.next_token {
        v["next_token"] = json!(next);
    }
    v
}

/// `GET /_synapse/admin/v1/event_reports`: reports of events, newest first unless `dir=f`,
/// paged by offset (`from`, `limit`, `next_token`).
pub async fn event_reports(
    State(state): State<AppState>,
    Auth(session): Auth,
    QueryParams(params): QueryParams<ReportsParams>,
) -> ApiResult<Response> {
    require_admin(&state, &session.user_id)?;
    let page = state.core.reports.event_reports(&params.query()?)?;
    Ok(axum::Json(page_json(&page, "event_reports", true)).into_response())
}

/// `GET /_synapse/admin/v1/event_reports/{reportId}`: one report, with the reported event.
pub async fn event_report(
    State(state): State<AppState>,
    Auth(session): Auth,
    Path(report_id): Path<String>,
) -> ApiResult<Response> {
    require_admin(&state, &session.user_id)?;
    let id: u64 = report_id.parse().map_err(|_| {
        ApiError::invalid_param(
            "The report_id parameter must be a string representing a positive integer.",
        )
    })?;
    let (report, event_json) = state
        .core
        .reports
        .event_report(id)?
        .ok_or_else(|| ApiError::not_found("Event report not found"))?;
    let mut v = report_json(&report, true);
    v["event_json"] = event_json.unwrap_or(Value::Null);
    Ok(axum::Json(v).into_response())
}

/// `GET /_synapse/admin/v1/room_reports`: reports of whole rooms (spec v1.13), in the shape of
/// `event_reports`; Synapse keeps these without an admin API to read them.
pub async fn room_reports(
    State(state): State<AppState>,
    Auth(session): Auth,
    QueryParams(params): QueryParams<ReportsParams>,
) -> ApiResult<Response> {
    require_admin(&state, &session.user_id)?;
    let page = state.core.reports.room_reports(&params.query()?)?;
    Ok(axum::Json(page_json(&page, "room_reports", false)).into_response())
}

/// `GET /admin/whois/{userId}` (spec: "Server Administration"): a user's devices and where they
/// were last seen, for the user themselves or a server admin.
pub async fn whois(
    State(state): State<AppState>,
    Auth(session): Auth,
    Path(user_id): Path<String>,
) -> ApiResult<Response> {
    let user = UserId::parse(&user_id).map_err(|_| ApiError::invalid_param("Invalid user ID"))?;
    if user != session.user_id {
        require_admin(&state, &session.user_id)?;
    }
    if user.server_name() != state.core.config.server_name {
        return Err(ApiError::not_found("Not a user of this server"));
    }
    let devices: serde_json::Map<String, Value> = state
        .core
        .accounts
        .devices(&user)?
        .into_iter()
        .map(|(id, d)| {
            let connections: Vec<Value> = d
                .last_seen_ts
                .map(|ts| {
                    json!({ "ip": d.last_seen_ip, "last_seen": ts, "user_agent": Value::Null })
                })
                .into_iter()
                .collect();
            (id, json!({ "sessions": [{ "connections": connections }] }))
        })
        .collect();
    Ok(axum::Json(json!({ "user_id": user, "devices": devices })).into_response())
}
