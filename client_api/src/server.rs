//! Server discovery: `/versions`, `/capabilities`, `/.well-known/matrix/client`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use ruma::api::client::discovery::get_capabilities::v3::{
    RoomVersionStability, RoomVersionsCapability,
};
use ruma::api::client::discovery::{get_capabilities, get_supported_versions};
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::{Patched, Ruma};

/// The spec versions whose Client-Server API Hearth serves.
const VERSIONS: &[&str] = &[
    "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10",
    "v1.11", "v1.12",
];

pub async fn versions(
    _: AppState,
    _: Ruma<get_supported_versions::Request>,
) -> ApiResult<get_supported_versions::Response> {
    let mut resp =
        get_supported_versions::Response::new(VERSIONS.iter().map(|v| v.to_string()).collect());
    // Synapse's key for simplified sliding sync, which matrix-sdk and Element X look for.
    resp.unstable_features = BTreeMap::from([("org.matrix.simplified_msc3575".to_owned(), true)]);
    Ok(resp)
}

pub async fn capabilities(
    state: AppState,
    _: Ruma<get_capabilities::v3::Request>,
) -> ApiResult<Patched<get_capabilities::v3::Response>> {
    let available = hearth_core::rooms::version::SUPPORTED_ROOM_VERSIONS
        .iter()
        .map(|v| (v.clone(), RoomVersionStability::Stable))
        .collect();
    let mut caps = get_capabilities::v3::Capabilities::new();
    caps.room_versions =
        RoomVersionsCapability::new(state.core.config.default_room_version.clone(), available);
    caps.get_login_token.enabled = true;
    Ok(Patched {
        resp: get_capabilities::v3::Response::new(caps),
        // ruma leaves out capabilities at their defaults; clients (and SyTest) look for these
        // explicitly, and Synapse lists them.
        patch: Box::new(|v| {
            let caps = &mut v["capabilities"];
            for name in ["m.change_password", "m.set_displayname", "m.set_avatar_url"] {
                if caps[name].is_null() {
                    caps[name] = json!({ "enabled": true });
                }
            }
        }),
    })
}

pub async fn well_known(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "m.homeserver": { "base_url": state.config.public_base_url } }))
}
