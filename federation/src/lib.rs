//! The Server-Server API. For now: the server's signing keys and version, which peers and key
//! notaries fetch; transactions, joins and backfill build on these.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use hearth_core::Core;
use ruma::CanonicalJsonValue;
use serde_json::{Value, json};

/// How long peers may cache our key response.
const KEY_VALIDITY_MS: u64 = 7 * 24 * 3600 * 1000;

pub fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/_matrix/key/v2/server", get(server_keys))
        .route("/_matrix/key/v2/server/{key_id}", get(server_keys))
        .route("/_matrix/federation/v1/version", get(version))
        .with_state(core)
}

async fn server_keys(State(core): State<Arc<Core>>) -> Json<Value> {
    let keys = &core.keys;
    let body = json!({
        "server_name": keys.server_name,
        "verify_keys": { keys.key_id(): { "key": keys.public_key_base64() } },
        "old_verify_keys": {},
        "valid_until_ts": hearth_core::util::now_ms() + KEY_VALIDITY_MS,
    });
    let Ok(CanonicalJsonValue::Object(mut obj)) = CanonicalJsonValue::try_from(body.clone()) else {
        return Json(body);
    };
    match ruma::signatures::sign_json(keys.server_name.as_str(), &keys.key_pair, &mut obj) {
        Ok(()) => Json(serde_json::to_value(&obj).unwrap_or(body)),
        Err(e) => {
            tracing::error!(error = %e, "could not sign key response");
            Json(body)
        }
    }
}

async fn version() -> Json<Value> {
    Json(json!({ "server": { "name": "Hearth", "version": env!("CARGO_PKG_VERSION") } }))
}
