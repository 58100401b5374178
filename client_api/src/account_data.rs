//! Client config (spec: "Client Config") and room tagging (spec: "Room Tagging").

use ruma::api::client::config::{
    get_global_account_data, get_room_account_data, set_global_account_data, set_room_account_data,
};
use ruma::api::client::tag::{create_tag, delete_tag, get_tags};
use ruma::{RoomId, UserId};
use serde_json::Value;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Ruma;

/// Types the server maintains itself; clients change them through their own endpoints.
const SERVER_MANAGED: [&str; 2] = ["m.fully_read", "m.push_rules"];

fn own(req_user: &UserId, session_user: &UserId) -> ApiResult<()> {
    if req_user != session_user {
        return Err(ApiError::forbidden(
            "Cannot access another user's account data",
        ));
    }
    Ok(())
}

fn content(raw: &serde_json::value::RawValue) -> ApiResult<Value> {
    serde_json::from_str(raw.get()).map_err(|e| ApiError::bad_json(e.to_string()))
}

async fn set(
    state: &AppState,
    user: &UserId,
    room: Option<&RoomId>,
    kind: &str,
    data: Value,
) -> ApiResult<()> {
    if SERVER_MANAGED.contains(&kind) {
        return Err(ApiError::new(
            axum::http::StatusCode::METHOD_NOT_ALLOWED,
            "M_BAD_JSON",
            format!("Cannot set {kind} through this API"),
        ));
    }
    Ok(state.core.account_data.set(user, room, kind, data).await?)
}

fn get(
    state: &AppState,
    user: &UserId,
    room: Option<&RoomId>,
    kind: &str,
) -> ApiResult<Box<serde_json::value::RawValue>> {
    let value = state
        .core
        .account_data
        .get(user, room, kind)?
        .ok_or_else(|| ApiError::not_found("Account data not found"))?;
    serde_json::value::to_raw_value(&value)
        .map_err(|e| ApiError::from(hearth_core::Error::internal(e)))
}

pub async fn set_global(
    state: AppState,
    req: Ruma<set_global_account_data::v3::Request>,
) -> ApiResult<set_global_account_data::v3::Response> {
    let b = &req.body;
    own(&b.user_id, &req.session().user_id)?;
    set(
        &state,
        &b.user_id,
        None,
        &b.event_type.to_string(),
        content(b.data.json())?,
    )
    .await?;
    Ok(set_global_account_data::v3::Response::new())
}

pub async fn get_global(
    state: AppState,
    req: Ruma<get_global_account_data::v3::Request>,
) -> ApiResult<get_global_account_data::v3::Response> {
    let b = &req.body;
    own(&b.user_id, &req.session().user_id)?;
    let raw = get(&state, &b.user_id, None, &b.event_type.to_string())?;
    Ok(get_global_account_data::v3::Response::new(
        ruma::serde::Raw::from_json(raw),
    ))
}

pub async fn set_room(
    state: AppState,
    req: Ruma<set_room_account_data::v3::Request>,
) -> ApiResult<set_room_account_data::v3::Response> {
    let b = &req.body;
    own(&b.user_id, &req.session().user_id)?;
    set(
        &state,
        &b.user_id,
        Some(&b.room_id),
        &b.event_type.to_string(),
        content(b.data.json())?,
    )
    .await?;
    Ok(set_room_account_data::v3::Response::new())
}

pub async fn get_room(
    state: AppState,
    req: Ruma<get_room_account_data::v3::Request>,
) -> ApiResult<get_room_account_data::v3::Response> {
    let b = &req.body;
    own(&b.user_id, &req.session().user_id)?;
    let raw = get(
        &state,
        &b.user_id,
        Some(&b.room_id),
        &b.event_type.to_string(),
    )?;
    Ok(get_room_account_data::v3::Response::new(
        ruma::serde::Raw::from_json(raw),
    ))
}

pub async fn tags(
    state: AppState,
    req: Ruma<get_tags::v3::Request>,
) -> ApiResult<get_tags::v3::Response> {
    let b = &req.body;
    own(&b.user_id, &req.session().user_id)?;
    let tags = state.core.account_data.tags(&b.user_id, &b.room_id)?;
    let tags = serde_json::from_value(tags)
        .map_err(|e| ApiError::from(hearth_core::Error::internal(e)))?;
    Ok(get_tags::v3::Response::new(tags))
}

pub async fn put_tag(
    state: AppState,
    req: Ruma<create_tag::v3::Request>,
) -> ApiResult<create_tag::v3::Response> {
    let b = &req.body;
    own(&b.user_id, &req.session().user_id)?;
    let info = serde_json::to_value(&b.tag_info).map_err(|e| ApiError::bad_json(e.to_string()))?;
    state
        .core
        .account_data
        .set_tag(&b.user_id, &b.room_id, &b.tag, Some(info))
        .await?;
    Ok(create_tag::v3::Response::new())
}

pub async fn delete_tag(
    state: AppState,
    req: Ruma<delete_tag::v3::Request>,
) -> ApiResult<delete_tag::v3::Response> {
    let b = &req.body;
    own(&b.user_id, &req.session().user_id)?;
    state
        .core
        .account_data
        .set_tag(&b.user_id, &b.room_id, &b.tag, None)
        .await?;
    Ok(delete_tag::v3::Response::new())
}
