//! Profiles (spec: "Profiles"): display name and avatar URL.

use axum::Json;
use axum::extract::{Path, State};
use ruma::{OwnedUserId, UserId};
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, JsonBody};

const FIELDS: [&str; 2] = ["displayname", "avatar_url"];

fn parse_user(s: &str) -> ApiResult<OwnedUserId> {
    UserId::parse(s).map_err(|_| ApiError::invalid_param("Invalid user ID"))
}

async fn profile_json(state: &AppState, user: &UserId) -> ApiResult<Map<String, Value>> {
    let p = state.core.profiles.lookup(user).await?;
    let mut m = Map::new();
    if let Some(d) = p.displayname {
        m.insert("displayname".into(), json!(d));
    }
    if let Some(a) = p.avatar_url {
        m.insert("avatar_url".into(), json!(a));
    }
    Ok(m)
}

pub async fn get_profile(
    State(state): State<AppState>,
    Path(user): Path<String>,
) -> ApiResult<Json<Value>> {
    let user = parse_user(&user)?;
    Ok(Json(Value::Object(profile_json(&state, &user).await?)))
}

pub async fn get_field(
    State(state): State<AppState>,
    Path((user, field)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let user = parse_user(&user)?;
    let profile = profile_json(&state, &user).await?;
    match profile.get(&field) {
        Some(v) => Ok(Json(json!({ field: v }))),
        // An unset display name or avatar is null, as Synapse answers it; other keys are unknown.
        None if FIELDS.contains(&field.as_str()) => Ok(Json(json!({ field: null }))),
        None => Err(ApiError::not_found(
            "The requested profile key does not exist.",
        )),
    }
}

pub async fn set_field(
    State(state): State<AppState>,
    Auth(session): Auth,
    Path((user, field)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> ApiResult<Json<Value>> {
    let user = parse_user(&user)?;
    if user != session.user_id {
        return Err(ApiError::forbidden("Cannot set another user's profile"));
    }
    if !FIELDS.contains(&field.as_str()) {
        return Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "M_UNRECOGNIZED",
            format!("Profile field {field} is not supported"),
        ));
    }
    let value = match &body[&field] {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        _ => return Err(ApiError::bad_json(format!("'{field}' must be a string"))),
    };
    if value
        .as_ref()
        .is_some_and(|v| v.len() > 256 && field == "displayname")
    {
        return Err(ApiError::bad_json("displayname is too long"));
    }
    match field.as_str() {
        "displayname" => state.core.profiles.set_displayname(&user, value).await?,
        _ => state.core.profiles.set_avatar_url(&user, value).await?,
    }
    Ok(Json(json!({})))
}
