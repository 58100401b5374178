//! Server-side key backups (spec: "Server-side key backups").

use std::collections::BTreeMap;

use hearth_core::e2ee::{BackupVersion, Json, RoomKeyUpdate};
use ruma::UInt;
use ruma::api::client::backup::{
    RoomKeyBackup, add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session,
    create_backup_version, delete_backup_keys, delete_backup_keys_for_room,
    delete_backup_keys_for_session, delete_backup_version, get_backup_info, get_backup_keys,
    get_backup_keys_for_room, get_backup_keys_for_session, get_latest_backup_info,
    update_backup_version,
};
use ruma::serde::Raw;

use super::{to_json, to_raw};
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Ruma;

/// The `algorithm` object ruma carries holds both `algorithm` and `auth_data`.
fn split_algorithm<T>(raw: &Raw<T>) -> ApiResult<(String, Json)> {
    let mut json = to_json(raw)?;
    let algorithm = json
        .get("algorithm")
        .and_then(Json::as_str)
        .ok_or_else(|| ApiError::bad_json("algorithm is missing"))?
        .to_owned();
    // Whatever the algorithm puts there is the client's business (Synapse takes any value);
    // only its absence is an error.
    let auth_data = json
        .get_mut("auth_data")
        .map(Json::take)
        .filter(|v| !v.is_null())
        .ok_or_else(|| ApiError::bad_json("auth_data is missing"))?;
    Ok((algorithm, auth_data))
}

fn algorithm_of<T>(v: &BackupVersion) -> Raw<T> {
    to_raw(&serde_json::json!({ "algorithm": v.algorithm, "auth_data": v.auth_data }))
}

fn counts(u: RoomKeyUpdate) -> (String, UInt) {
    (u.etag, UInt::new_saturating(u.count))
}

pub async fn create_version(
    state: AppState,
    req: Ruma<create_backup_version::v3::Request>,
) -> ApiResult<create_backup_version::v3::Response> {
    let (algorithm, auth_data) = split_algorithm(&req.body.algorithm)?;
    let version = state
        .core
        .e2ee
        .create_backup(&req.session().user_id, algorithm, auth_data)
        .await?;
    Ok(create_backup_version::v3::Response::new(version))
}

pub async fn update_version(
    state: AppState,
    req: Ruma<update_backup_version::v3::Request>,
) -> ApiResult<update_backup_version::v3::Response> {
    let (algorithm, auth_data) = split_algorithm(&req.body.algorithm)?;
    if let Some(v) = to_json(&req.body.algorithm)?.get("version")
        && v.as_str() != Some(req.body.version.as_str())
    {
        return Err(ApiError::invalid_param(
            "The version in the body differs from the path's",
        ));
    }
    state
        .core
        .e2ee
        .update_backup(
            &req.session().user_id,
            &req.body.version,
            algorithm,
            auth_data,
        )
        .await?;
    Ok(update_backup_version::v3::Response::new())
}

pub async fn latest_version(
    state: AppState,
    req: Ruma<get_latest_backup_info::v3::Request>,
) -> ApiResult<get_latest_backup_info::v3::Response> {
    let v = state.core.e2ee.backup(&req.session().user_id, None)?;
    Ok(get_latest_backup_info::v3::Response::new(
        algorithm_of(&v),
        UInt::new_saturating(v.count),
        v.etag.clone(),
        v.version.clone(),
    ))
}

pub async fn get_version(
    state: AppState,
    req: Ruma<get_backup_info::v3::Request>,
) -> ApiResult<get_backup_info::v3::Response> {
    let v = state
        .core
        .e2ee
        .backup(&req.session().user_id, Some(&req.body.version))?;
    Ok(get_backup_info::v3::Response::new(
        algorithm_of(&v),
        UInt::new_saturating(v.count),
        v.etag.clone(),
        v.version.clone(),
    ))
}

pub async fn delete_version(
    state: AppState,
    req: Ruma<delete_backup_version::v3::Request>,
) -> ApiResult<delete_backup_version::v3::Response> {
    state
        .core
        .e2ee
        .delete_backup(&req.session().user_id, &req.body.version)
        .await?;
    Ok(delete_backup_version::v3::Response::new())
}

type Sessions = BTreeMap<String, Json>;

fn sessions_of<T>(sessions: &BTreeMap<String, Raw<T>>) -> ApiResult<Sessions> {
    sessions
        .iter()
        .map(|(id, k)| Ok((id.clone(), to_json(k)?)))
        .collect()
}

async fn put(
    state: &AppState,
    req_user: &ruma::UserId,
    version: &str,
    keys: BTreeMap<String, Sessions>,
) -> ApiResult<(String, UInt)> {
    Ok(counts(
        state
            .core
            .e2ee
            .put_room_keys(req_user, version, keys)
            .await?,
    ))
}

pub async fn put_keys(
    state: AppState,
    req: Ruma<add_backup_keys::v3::Request>,
) -> ApiResult<add_backup_keys::v3::Response> {
    let mut keys = BTreeMap::new();
    for (room, backup) in &req.body.rooms {
        keys.insert(room.to_string(), sessions_of(&backup.sessions)?);
    }
    let (etag, count) = put(&state, &req.session().user_id, &req.body.version, keys).await?;
    Ok(add_backup_keys::v3::Response::new(etag, count))
}

pub async fn put_room_keys(
    state: AppState,
    req: Ruma<add_backup_keys_for_room::v3::Request>,
) -> ApiResult<add_backup_keys_for_room::v3::Response> {
    let b = &req.body;
    let keys = BTreeMap::from([(b.room_id.to_string(), sessions_of(&b.sessions)?)]);
    let (etag, count) = put(&state, &req.session().user_id, &b.version, keys).await?;
    Ok(add_backup_keys_for_room::v3::Response::new(etag, count))
}

pub async fn put_session_key(
    state: AppState,
    req: Ruma<add_backup_keys_for_session::v3::Request>,
) -> ApiResult<add_backup_keys_for_session::v3::Response> {
    let b = &req.body;
    let session = BTreeMap::from([(b.session_id.clone(), to_json(&b.session_data)?)]);
    let keys = BTreeMap::from([(b.room_id.to_string(), session)]);
    let (etag, count) = put(&state, &req.session().user_id, &b.version, keys).await?;
    Ok(add_backup_keys_for_session::v3::Response::new(etag, count))
}

pub async fn get_keys(
    state: AppState,
    req: Ruma<get_backup_keys::v3::Request>,
) -> ApiResult<get_backup_keys::v3::Response> {
    let keys = state
        .core
        .e2ee
        .room_keys(&req.session().user_id, &req.body.version, None, None)?;
    let mut rooms = BTreeMap::new();
    for (room, sessions) in keys {
        let Ok(room) = ruma::OwnedRoomId::try_from(room) else {
            continue;
        };
        let sessions = sessions
            .iter()
            .map(|(s, k)| (s.clone(), to_raw(k)))
            .collect();
        rooms.insert(room, RoomKeyBackup::new(sessions));
    }
    Ok(get_backup_keys::v3::Response::new(rooms))
}

pub async fn get_room_keys(
    state: AppState,
    req: Ruma<get_backup_keys_for_room::v3::Request>,
) -> ApiResult<get_backup_keys_for_room::v3::Response> {
    let b = &req.body;
    let keys = state.core.e2ee.room_keys(
        &req.session().user_id,
        &b.version,
        Some(b.room_id.as_str()),
        None,
    )?;
    let sessions = keys
        .into_values()
        .flatten()
        .map(|(s, k)| (s, to_raw(&k)))
        .collect();
    Ok(get_backup_keys_for_room::v3::Response::new(sessions))
}

pub async fn get_session_key(
    state: AppState,
    req: Ruma<get_backup_keys_for_session::v3::Request>,
) -> ApiResult<get_backup_keys_for_session::v3::Response> {
    let b = &req.body;
    let key = state
        .core
        .e2ee
        .room_keys(
            &req.session().user_id,
            &b.version,
            Some(b.room_id.as_str()),
            Some(&b.session_id),
        )?
        .into_values()
        .flatten()
        .next()
        .map(|(_, k)| k)
        .ok_or_else(|| ApiError::not_found("No room_keys found"))?;
    Ok(get_backup_keys_for_session::v3::Response::new(to_raw(&key)))
}

async fn delete(
    state: &AppState,
    user: &ruma::UserId,
    version: &str,
    room: Option<&str>,
    session: Option<&str>,
) -> ApiResult<(String, UInt)> {
    Ok(counts(
        state
            .core
            .e2ee
            .delete_room_keys(user, version, room, session)
            .await?,
    ))
}

pub async fn delete_keys(
    state: AppState,
    req: Ruma<delete_backup_keys::v3::Request>,
) -> ApiResult<delete_backup_keys::v3::Response> {
    let (etag, count) = delete(
        &state,
        &req.session().user_id,
        &req.body.version,
        None,
        None,
    )
    .await?;
    Ok(delete_backup_keys::v3::Response::new(etag, count))
}

pub async fn delete_room_keys(
    state: AppState,
    req: Ruma<delete_backup_keys_for_room::v3::Request>,
) -> ApiResult<delete_backup_keys_for_room::v3::Response> {
    let b = &req.body;
    let (etag, count) = delete(
        &state,
        &req.session().user_id,
        &b.version,
        Some(b.room_id.as_str()),
        None,
    )
    .await?;
    Ok(delete_backup_keys_for_room::v3::Response::new(etag, count))
}

pub async fn delete_session_key(
    state: AppState,
    req: Ruma<delete_backup_keys_for_session::v3::Request>,
) -> ApiResult<delete_backup_keys_for_session::v3::Response> {
    let b = &req.body;
    let (etag, count) = delete(
        &state,
        &req.session().user_id,
        &b.version,
        Some(b.room_id.as_str()),
        Some(&b.session_id),
    )
    .await?;
    Ok(delete_backup_keys_for_session::v3::Response::new(
        etag, count,
    ))
}
