//! The admin API, at Synapse's paths so that operators' existing tools work. Only what Hearth
//! implements is routed; everything else under `/_synapse/admin` is `M_UNRECOGNIZED`.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use ruma::UserId;
use serde_json::json;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Auth;

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
