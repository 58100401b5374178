//! The Server-Server API: this server's signing keys, request signing and verification
//! (X-Matrix), server discovery, and the queries other servers make of ours. Transactions,
//! joins and backfill build on these.
//!
//! [`Federation`] is both sides: its [`client::Client`] talks to peers, and it implements
//! `hearth_core::remote::Remote`, through which the core asks peers for what it lacks.

mod auth;
mod backfill;
pub mod client;
mod discovery;
mod error;
mod events;
mod gaps;
mod joining;
mod keys;
mod media;
mod membership;
pub mod outbound;
pub mod pdu;
mod query;
mod sender;
mod server_keys;
mod transactions;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::routing::get;
use hearth_core::Core;
use hearth_core::keys::ServerKeys;
use hearth_core::remote::{Remote, RemoteFuture};
use hearth_core::rooms::create::MemberProfile;
use ruma::UserId;
use serde_json::{Value, json};

pub use error::FedError;

/// Ephemeral updates kept per destination while it cannot be reached.
const MAX_QUEUED_EDUS: usize = 1000;

/// How this server treats its peers' TLS.
#[derive(Clone, Debug, Default)]
pub struct FederationConfig {
    /// Off only for test peers with self-made certificates.
    pub verify_tls: bool,
    /// An extra certificate authority (PEM) to trust, e.g. a test CA.
    pub extra_ca_pem: Option<Vec<u8>>,
    /// Addresses this server never connects to (loopback, private networks, ...).
    pub ip_range_denylist: outbound::IpRanges,
}

pub struct Federation {
    keys: Arc<ServerKeys>,
    client: client::Client,
    key_cache: server_keys::KeyCache,
    /// Set once the core exists (it needs this object first, as its `Remote`).
    core: std::sync::OnceLock<Arc<Core>>,
    /// Ephemeral updates waiting for each destination's next transaction.
    edus: parking_lot::Mutex<std::collections::HashMap<ruma::OwnedServerName, Vec<Value>>>,
    /// The wake-up of each destination's sender task.
    queues: parking_lot::Mutex<
        std::collections::HashMap<ruma::OwnedServerName, Arc<tokio::sync::Notify>>,
    >,
    this: std::sync::Weak<Federation>,
    /// Ids of transactions that carry only EDUs (unique within this process; their ids start
    /// from the boot time so that they do not repeat across restarts either).
    edu_txns: std::sync::atomic::AtomicU64,
}

impl Federation {
    pub fn new(keys: Arc<ServerKeys>, config: &FederationConfig) -> Result<Arc<Self>, String> {
        let client = client::Client::new(keys.clone(), config)?;
        Ok(Arc::new_cyclic(|this| Self {
            keys,
            client,
            key_cache: Default::default(),
            core: Default::default(),
            edus: Default::default(),
            queues: Default::default(),
            this: this.clone(),
            edu_txns: std::sync::atomic::AtomicU64::new(hearth_core::util::now_ms()),
        }))
    }
}

impl Federation {
    async fn post_keys(
        &self,
        server: &ruma::ServerName,
        path: &str,
        body: Value,
    ) -> hearth_core::Result<Value> {
        self.client
            .request(server, http::Method::POST, path, Some(&body))
            .await
            .map_err(|e| hearth_core::Error::Unknown(e.to_string()))
    }
}

impl Remote for Federation {
    fn backfill<'a>(
        &'a self,
        room_id: &'a ruma::RoomId,
        servers: &'a [ruma::OwnedServerName],
        from: &'a [ruma::OwnedEventId],
        limit: usize,
    ) -> RemoteFuture<'a, hearth_core::rooms::history::Backfilled> {
        Box::pin(self.backfill_from(room_id, servers, from, limit))
    }

    fn outbound_ready(&self, destinations: &[ruma::OwnedServerName]) {
        self.wake_senders(destinations);
    }

    fn join_remote<'a>(
        &'a self,
        room_id: &'a ruma::RoomId,
        user: &'a UserId,
        servers: &'a [ruma::OwnedServerName],
        content: Value,
    ) -> RemoteFuture<'a, hearth_core::rooms::RemoteJoin> {
        Box::pin(self.join_remote_room(room_id, user, servers, content))
    }

    fn knock_remote<'a>(
        &'a self,
        room_id: &'a ruma::RoomId,
        user: &'a UserId,
        servers: &'a [ruma::OwnedServerName],
        content: Value,
    ) -> RemoteFuture<'a, hearth_core::remote::RemoteKnock> {
        Box::pin(self.knock_remote_room(room_id, user, servers, content))
    }

    fn leave_remote<'a>(
        &'a self,
        room_id: &'a ruma::RoomId,
        user: &'a UserId,
        servers: &'a [ruma::OwnedServerName],
    ) -> RemoteFuture<'a, (ruma::OwnedEventId, ruma::CanonicalJsonObject)> {
        Box::pin(self.leave_remote_room(room_id, user, servers))
    }

    fn send_edu(&self, destinations: &[ruma::OwnedServerName], edu: Value) {
        {
            let mut edus = self.edus.lock();
            for d in destinations {
                let queue = edus.entry(d.clone()).or_default();
                // A peer that is down must not make ephemeral updates pile up without bound.
                if queue.len() < MAX_QUEUED_EDUS {
                    queue.push(edu.clone());
                }
            }
        }
        self.wake_senders(destinations);
    }

    fn query_keys<'a>(
        &'a self,
        server: &'a ruma::ServerName,
        body: Value,
    ) -> RemoteFuture<'a, Value> {
        Box::pin(self.post_keys(server, "/_matrix/federation/v1/user/keys/query", body))
    }

    fn user_devices<'a>(&'a self, user: &'a ruma::UserId) -> RemoteFuture<'a, Value> {
        Box::pin(async move {
            let path = format!(
                "/_matrix/federation/v1/user/devices/{}",
                joining::seg(user.as_str())
            );
            self.client
                .request(user.server_name(), http::Method::GET, &path, None)
                .await
                .map_err(|e| hearth_core::Error::Unknown(e.to_string()))
        })
    }

    fn fetch_media<'a>(
        &'a self,
        server: &'a ruma::ServerName,
        media_id: &'a str,
    ) -> RemoteFuture<'a, hearth_core::remote::RemoteMedia> {
        Box::pin(media::fetch(self, server, media_id))
    }

    fn claim_keys<'a>(
        &'a self,
        server: &'a ruma::ServerName,
        body: Value,
    ) -> RemoteFuture<'a, Value> {
        Box::pin(self.post_keys(server, "/_matrix/federation/v1/user/keys/claim", body))
    }

    fn send_invite<'a>(
        &'a self,
        server: &'a ruma::ServerName,
        room_version: &'a ruma::RoomVersionId,
        event_id: &'a ruma::EventId,
        event: ruma::CanonicalJsonObject,
        invite_room_state: Vec<Value>,
    ) -> RemoteFuture<'a, ruma::CanonicalJsonObject> {
        Box::pin(membership::send_invite(
            self,
            server,
            room_version,
            event_id,
            event,
            invite_room_state,
        ))
    }

    fn query_directory<'a>(
        &'a self,
        alias: &'a ruma::RoomAliasId,
    ) -> RemoteFuture<'a, (ruma::OwnedRoomId, Vec<ruma::OwnedServerName>)> {
        Box::pin(async move {
            let path = format!(
                "/_matrix/federation/v1/query/directory?{}",
                form_urlencoded::Serializer::new(String::new())
                    .append_pair("room_alias", alias.as_str())
                    .finish()
            );
            let body = self
                .client
                .request(alias.server_name(), http::Method::GET, &path, None)
                .await
                .map_err(|e| match e.errcode {
                    "M_NOT_FOUND" => {
                        hearth_core::Error::not_found(format!("Room alias {alias} not found"))
                    }
                    _ => hearth_core::Error::Unknown(e.to_string()),
                })?;
            let room_id = body["room_id"]
                .as_str()
                .and_then(|r| ruma::OwnedRoomId::try_from(r).ok())
                .ok_or_else(|| hearth_core::Error::Unknown("bad directory answer".into()))?;
            let servers = body["servers"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str())
                        .filter_map(|s| ruma::OwnedServerName::try_from(s).ok())
                        .collect()
                })
                .unwrap_or_default();
            Ok((room_id, servers))
        })
    }

    fn public_rooms<'a>(
        &'a self,
        server: &'a ruma::ServerName,
        body: Value,
    ) -> RemoteFuture<'a, Value> {
        Box::pin(async move {
            self.client
                .request(
                    server,
                    http::Method::POST,
                    "/_matrix/federation/v1/publicRooms",
                    Some(&body),
                )
                .await
                .map_err(|e| hearth_core::Error::Unknown(e.to_string()))
        })
    }

    fn profile<'a>(&'a self, user: &'a UserId) -> RemoteFuture<'a, MemberProfile> {
        Box::pin(async move {
            let path = format!(
                "/_matrix/federation/v1/query/profile?{}",
                form_urlencoded::Serializer::new(String::new())
                    .append_pair("user_id", user.as_str())
                    .finish()
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
        .route("/_matrix/key/v2/query", axum::routing::post(notary_many))
        .route("/_matrix/key/v2/query/{server_name}", get(notary_one))
        .route(
            "/_matrix/key/v2/query/{server_name}/{key_id}",
            get(notary_one),
        )
        .route("/_matrix/federation/v1/version", get(version))
        .route("/_matrix/federation/v1/query/profile", get(query::profile))
        .route(
            "/_matrix/federation/v1/openid/userinfo",
            get(query::openid_userinfo),
        )
        .route(
            "/_matrix/federation/v1/query/directory",
            get(query::directory),
        )
        .route(
            "/_matrix/federation/v1/publicRooms",
            get(query::public_rooms).post(query::public_rooms_filtered),
        )
        .route(
            "/_matrix/federation/v1/make_join/{room_id}/{user_id}",
            get(membership::make_join),
        )
        .route(
            "/_matrix/federation/v1/send_join/{room_id}/{event_id}",
            axum::routing::put(membership::send_join_v1),
        )
        .route(
            "/_matrix/federation/v1/send_leave/{room_id}/{event_id}",
            axum::routing::put(membership::send_leave_v1),
        )
        .route(
            "/_matrix/federation/v1/invite/{room_id}/{event_id}",
            axum::routing::put(membership::invite_v1),
        )
        .route(
            "/_matrix/federation/v2/send_join/{room_id}/{event_id}",
            axum::routing::put(membership::send_join),
        )
        .route(
            "/_matrix/federation/v1/make_knock/{room_id}/{user_id}",
            get(membership::make_knock),
        )
        .route(
            "/_matrix/federation/v1/send_knock/{room_id}/{event_id}",
            axum::routing::put(membership::send_knock),
        )
        .route(
            "/_matrix/federation/v1/make_leave/{room_id}/{user_id}",
            get(membership::make_leave),
        )
        .route(
            "/_matrix/federation/v2/send_leave/{room_id}/{event_id}",
            axum::routing::put(membership::send_leave),
        )
        .route(
            "/_matrix/federation/v2/invite/{room_id}/{event_id}",
            axum::routing::put(membership::invite),
        )
        .route(
            "/_matrix/federation/v1/event/{event_id}",
            get(events::event),
        )
        .route(
            "/_matrix/federation/v1/state_ids/{room_id}",
            get(events::state_ids),
        )
        .route("/_matrix/federation/v1/state/{room_id}", get(events::state))
        .route(
            "/_matrix/federation/v1/event_auth/{room_id}/{event_id}",
            get(events::event_auth),
        )
        .route(
            "/_matrix/federation/v1/backfill/{room_id}",
            get(events::backfill),
        )
        .route(
            "/_matrix/federation/v1/get_missing_events/{room_id}",
            axum::routing::post(events::missing_events),
        )
        .route(
            "/_matrix/federation/v1/send/{txn_id}",
            axum::routing::put(transactions::send),
        )
        .route(
            "/_matrix/federation/v1/user/keys/query",
            axum::routing::post(keys::query),
        )
        .route(
            "/_matrix/federation/v1/user/keys/claim",
            axum::routing::post(keys::claim),
        )
        .route(
            "/_matrix/federation/v1/user/devices/{user_id}",
            get(keys::devices),
        )
        .route(
            "/_matrix/federation/v1/media/download/{media_id}",
            get(media::download),
        )
        .route(
            "/_matrix/federation/v1/media/thumbnail/{media_id}",
            get(media::thumbnail),
        )
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

async fn server_keys(axum::extract::State(state): axum::extract::State<State>) -> Json<Value> {
    Json(server_keys::own_key_document(&state.federation.keys))
}

/// `GET /_matrix/key/v2/query/{serverName}` and its older `/{keyId}` form: another server's
/// keys, as this server vouches for them.
async fn notary_one(
    axum::extract::State(state): axum::extract::State<State>,
    axum::extract::Path(path): axum::extract::Path<Vec<String>>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<Json<Value>, FedError> {
    let bad = |m: &str| FedError::new(axum::http::StatusCode::BAD_REQUEST, "M_INVALID_PARAM", m);
    let server = path
        .first()
        .and_then(|s| ruma::ServerName::parse(s).ok())
        .filter(|s| discovery::dialable(s.as_str()))
        .ok_or_else(|| bad("Not a server name"))?;
    let key_ids: Vec<String> = path.get(1).cloned().into_iter().collect();
    let min_valid = match query.get("minimum_valid_until_ts") {
        Some(t) => t
            .parse::<u64>()
            .map_err(|_| bad("minimum_valid_until_ts must be a timestamp"))?,
        None => hearth_core::util::now_ms(),
    };
    let fed = &state.federation;
    // Keys that cannot be had are left out, as for the POST form (and as Synapse answers).
    let docs = fed
        .key_cache
        .notarised(&fed.client, &fed.keys, &server, &key_ids, min_valid)
        .await
        .unwrap_or_else(|e| {
            tracing::debug!(%server, error = %e, "notary: no keys");
            Vec::new()
        });
    Ok(Json(json!({ "server_keys": docs })))
}

/// Servers one notary request may ask about: each may cost a fetch.
const MAX_NOTARY_SERVERS: usize = 50;

/// `POST /_matrix/key/v2/query`: the keys of several servers (`{server: {key_id: {
/// minimum_valid_until_ts}}}`); ones that cannot be had are left out, as the spec says.
async fn notary_many(
    axum::extract::State(state): axum::extract::State<State>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, FedError> {
    let req: Value = serde_json::from_slice(&body).map_err(|_| {
        FedError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "M_NOT_JSON",
            "Content not JSON.",
        )
    })?;
    let servers = req["server_keys"]
        .as_object()
        .ok_or_else(|| FedError::bad_json("server_keys must be an object"))?;
    if servers.len() > MAX_NOTARY_SERVERS {
        return Err(FedError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
            format!("At most {MAX_NOTARY_SERVERS} servers per request"),
        ));
    }
    let fed = &state.federation;
    let now = hearth_core::util::now_ms();
    let mut docs = Vec::new();
    for (name, criteria) in servers {
        let Ok(server) = ruma::ServerName::parse(name) else {
            continue;
        };
        let wanted = criteria.as_object();
        let key_ids: Vec<String> = wanted
            .map(|m| m.keys().take(16).cloned().collect())
            .unwrap_or_default();
        // The strictest of the keys' criteria (the spec's default is now).
        let min_valid = wanted
            .into_iter()
            .flat_map(|m| m.values())
            .filter_map(|c| c["minimum_valid_until_ts"].as_u64())
            .max()
            .unwrap_or(now);
        match fed
            .key_cache
            .notarised(&fed.client, &fed.keys, &server, &key_ids, min_valid)
            .await
        {
            Ok(found) => docs.extend(found),
            Err(e) => tracing::debug!(%server, error = %e, "notary: no keys"),
        }
    }
    Ok(Json(json!({ "server_keys": docs })))
}

async fn version() -> Json<Value> {
    Json(json!({ "server": { "name": "Hearth", "version": env!("CARGO_PKG_VERSION") } }))
}
