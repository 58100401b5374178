//! End-to-end encryption keys over federation (spec: "End-to-End Encryption" in the
//! Server-Server API): other servers query and claim our users' keys and list their devices.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State as AxState};
use hearth_core::e2ee::KeyQuery;
use ruma::{OwnedUserId, UserId};
use serde_json::{Value, json};

use crate::State;
use crate::auth::Signed;
use crate::error::FedError;

fn bad_json(e: impl std::fmt::Display) -> FedError {
    FedError::new(http::StatusCode::BAD_REQUEST, "M_BAD_JSON", e.to_string())
}

/// Only the users of this server; a server answers for no one else's.
fn local_only<T>(state: &State, map: BTreeMap<OwnedUserId, T>) -> BTreeMap<OwnedUserId, T> {
    map.into_iter()
        .filter(|(u, _)| u.server_name() == state.core.config.server_name)
        .collect()
}

/// `POST /_matrix/federation/v1/user/keys/query`
pub async fn query(
    AxState(state): AxState<State>,
    signed: Signed,
) -> Result<Json<Value>, FedError> {
    #[derive(serde::Deserialize)]
    struct Body {
        device_keys: BTreeMap<OwnedUserId, Vec<String>>,
    }
    let body: Body = serde_json::from_slice(&signed.body).map_err(bad_json)?;
    let query = KeyQuery {
        requester: None,
        users: local_only(&state, body.device_keys),
    };
    let keys = state.core.e2ee.query_keys(&query).await?;
    Ok(Json(json!({
        "device_keys": keys.device_keys,
        "master_keys": keys.master_keys,
        "self_signing_keys": keys.self_signing_keys,
    })))
}

/// `POST /_matrix/federation/v1/user/keys/claim`
pub async fn claim(
    AxState(state): AxState<State>,
    signed: Signed,
) -> Result<Json<Value>, FedError> {
    #[derive(serde::Deserialize)]
    struct Body {
        one_time_keys: BTreeMap<OwnedUserId, BTreeMap<String, String>>,
    }
    let body: Body = serde_json::from_slice(&signed.body).map_err(bad_json)?;
    let claimed = state
        .core
        .e2ee
        .claim_keys(&local_only(&state, body.one_time_keys))
        .await?;
    Ok(Json(json!({ "one_time_keys": claimed.one_time_keys })))
}

/// `GET /_matrix/federation/v1/user/devices/{userId}`
pub async fn devices(
    AxState(state): AxState<State>,
    Path(user_id): Path<String>,
    _signed: Signed,
) -> Result<Json<Value>, FedError> {
    let user = UserId::parse(user_id).map_err(bad_json)?;
    if user.server_name() != state.core.config.server_name {
        return Err(FedError::new(
            http::StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
            "User is not local",
        ));
    }
    let query = KeyQuery {
        requester: None,
        users: BTreeMap::from([(user.clone(), Vec::new())]),
    };
    let mut keys = state.core.e2ee.query_keys(&query).await?;
    let devices: Vec<Value> = keys
        .device_keys
        .remove(&user)
        .unwrap_or_default()
        .into_iter()
        .map(|(device_id, mut k)| {
            let name = k
                .as_object_mut()
                .and_then(|o| o.remove("unsigned"))
                .and_then(|u| u["device_display_name"].as_str().map(str::to_owned));
            let mut d = json!({ "device_id": device_id, "keys": k });
            if let Some(name) = name {
                d["device_display_name"] = json!(name);
            }
            d
        })
        .collect();
    let mut body = json!({
        "user_id": user,
        // The user's latest change: the `prev_id` of their next `m.device_list_update`.
        "stream_id": state.core.store.device_list_latest(user.as_str()).map_err(hearth_core::Error::from)?.unwrap_or(0),
        "devices": devices,
    });
    if let Some(m) = keys.master_keys.remove(&user) {
        body["master_key"] = m;
    }
    if let Some(s) = keys.self_signing_keys.remove(&user) {
        body["self_signing_key"] = s;
    }
    Ok(Json(body))
}
