//! The Server-Server API: this server's signing keys, request signing and verification
//! (X-Matrix), server discovery, and the queries other servers make of ours. Transactions,
//! joins and backfill build on these.
//!
//! [`Federation`] is both sides: its [`client::Client`] talks to peers, and it implements
//! `hearth_core::remote::Remote`, through which the core asks peers for what it lacks.

mod auth;
pub mod client;
mod discovery;
mod error;
mod query;
mod server_keys;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::routing::get;
use hearth_core::Core;
use hearth_core::keys::ServerKeys;
use hearth_core::remote::{Remote, RemoteFuture};
use hearth_core::rooms::create::MemberProfile;
use ruma::{CanonicalJsonValue, UserId};
use serde_json::{Value, json};

pub use error::FedError;

/// How this server treats its peers' TLS.
#[derive(Clone, Debug, Default)]
pub struct FederationConfig {
    /// Off only for test peers with self-made certificates.
    pub verify_tls: bool,
    /// An extra certificate authority (PEM) to trust, e.g. a test CA.
    pub extra_ca_pem: Option<Vec<u8>>,
}

pub struct Federation {
    keys: Arc<ServerKeys>,
    client: client::Client,
    key_cache: server_keys::KeyCache,
}

impl Federation {
    pub fn new(keys: Arc<ServerKeys>, config: &FederationConfig) -> Result<Arc<Self>, String> {
        let client = client::Client::new(keys.clone(), config)?;
        Ok(Arc::new(Self {
            keys,
            client,
            key_cache: Default::default(),
        }))
    }
}

impl Remote for Federation {
    fn profile<'a>(&'a self, user: &'a UserId) -> RemoteFuture<'a, MemberProfile> {
        Box::pin(async move {
            let path = format!(
                "/_matrix/federation/v1/query/profile?user_id={}",
                query::encode(user.as_str())
            );
            let body = self
                .client
                .request(user.server_name(), http::Method::GET, &path, None)
                .await
                .map_err(|e| match e.errcode {
                    "M_NOT_FOUND" => hearth_core::Error::not_found("Profile was not found"),
                    _ => hearth_core::Error::Unknown(e.to_string()),
                })?;
            Ok(MemberProfile {
                displayname: body["displayname"].as_str().map(str::to_owned),
                avatar_url: body["avatar_url"].as_str().map(str::to_owned),
            })
        })
    }
}

/// What the federation handlers reach.
#[derive(Clone)]
pub struct State {
    pub core: Arc<Core>,
    pub federation: Arc<Federation>,
}

/// The federation endpoints, to merge into another router (the client listener, for a
/// TLS-terminating proxy in front).
pub fn routes(core: Arc<Core>, federation: Arc<Federation>) -> Router {
    Router::new()
        .route("/_matrix/key/v2/server", get(server_keys))
        .route("/_matrix/key/v2/server/{key_id}", get(server_keys))
        .route("/_matrix/federation/v1/version", get(version))
        .route("/_matrix/federation/v1/query/profile", get(query::profile))
        .with_state(State { core, federation })
}

/// The federation endpoints alone, for the federation (TLS) listener.
pub fn server(core: Arc<Core>, federation: Arc<Federation>) -> Router {
    routes(core, federation).fallback(|| async {
        FedError::new(
            axum::http::StatusCode::NOT_FOUND,
            "M_UNRECOGNIZED",
            "Unrecognized request",
        )
    })
}

/// How long peers may cache our key response.
const KEY_VALIDITY_MS: u64 = 7 * 24 * 3600 * 1000;

async fn server_keys(axum::extract::State(state): axum::extract::State<State>) -> Json<Value> {
    let keys = &state.federation.keys;
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
