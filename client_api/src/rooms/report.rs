//! Reporting content (spec: "Reporting content"): `POST /rooms/{roomId}/report/{eventId}` and
//! `POST /rooms/{roomId}/report`.

use axum::Json;
use axum::extract::{Path, State};
use ruma::api::client::room::report_room;
use ruma::{EventId, RoomId};
use serde_json::{Value, json};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, JsonBody, Ruma};

/// A plain handler rather than ruma's type, which no longer carries `score` (deprecated in the
/// spec, still sent by clients and shown by Synapse's admin API); its checks are Synapse's.
pub async fn report_event(
    State(state): State<AppState>,
    Auth(session): Auth,
    Path((room_id, event_id)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> ApiResult<Json<Value>> {
    let room = RoomId::parse(room_id).map_err(|_| ApiError::invalid_param("Invalid room ID"))?;
    let event =
        EventId::parse(event_id).map_err(|_| ApiError::invalid_param("Invalid event ID"))?;
    if !body.is_object() {
        return Err(ApiError::not_json());
    }
    let reason = match &body["reason"] {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        _ => return Err(ApiError::bad_json("Param 'reason' must be a string")),
    };
    let score = match &body["score"] {
        Value::Null => None,
        v => Some(
            v.as_i64()
                .ok_or_else(|| ApiError::bad_json("Param 'score' must be an integer"))?,
        ),
    };
    state
        .core
        .reports
        .report_event(&session.user_id, &room, &event, reason, score)
        .await?;
    Ok(Json(json!({})))
}

pub async fn report_room(
    state: AppState,
    req: Ruma<report_room::v3::Request>,
) -> ApiResult<report_room::v3::Response> {
    let user = req.session().user_id.clone();
    let b = req.body;
    state
        .core
        .reports
        .report_room(&user, &b.room_id, b.reason)
        .await?;
    Ok(report_room::v3::Response::new())
}
