//! Typing notifications (spec: "Typing Notifications").
//!
//! A plain handler rather than ruma's request type: ruma refuses `{"typing": true}` without a
//! `timeout`, which clients (and SyTest) send and Synapse takes with its 30 s default.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use ruma::{RoomId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, JsonBody};
use crate::rate_limit::Key;

/// Synapse's default and longest typing timeouts.
const DEFAULT_TIMEOUT_MS: u64 = 30_000;
const MAX_TIMEOUT_MS: u64 = 120_000;

#[derive(Deserialize)]
struct Body {
    typing: bool,
    timeout: Option<u64>,
}

pub async fn set_typing(
    State(state): State<AppState>,
    Auth(s): Auth,
    Path((room_id, user_id)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> ApiResult<Json<Value>> {
    state.limiter.check(Key::User(s.user_id.to_string()))?;
    let room_id =
        RoomId::parse(&room_id).map_err(|_| ApiError::invalid_param("Invalid room ID"))?;
    let user_id =
        UserId::parse(&user_id).map_err(|_| ApiError::invalid_param("Invalid user ID"))?;
    if user_id != s.user_id {
        return Err(ApiError::forbidden("Cannot set typing for another user"));
    }
    let body: Body = serde_json::from_value(body).map_err(|e| ApiError::bad_json(e.to_string()))?;
    let timeout = body.typing.then(|| {
        Duration::from_millis(
            body.timeout
                .unwrap_or(DEFAULT_TIMEOUT_MS)
                .min(MAX_TIMEOUT_MS),
        )
    });
    state.core.typing.set(&room_id, &s.user_id, timeout)?;
    Ok(Json(json!({})))
}
