//! Queries other servers make of ours (spec: "Querying for information").

use axum::Json;
use axum::extract::State as AxState;
use serde_json::{Value, json};

use crate::State;
use crate::auth::Signed;
use crate::error::FedError;

fn query_param(uri: &http::Uri, name: &str) -> Option<String> {
    query_params(uri, name).into_iter().next()
}

/// Every value of a (possibly repeated) query parameter.
pub fn query_params(uri: &http::Uri, name: &str) -> Vec<String> {
    form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .collect()
}

/// `GET /_matrix/federation/v1/query/profile?user_id=…[&field=…]`
pub async fn profile(
    AxState(state): AxState<State>,
    uri: http::Uri,
    signed: Signed,
) -> Result<Json<Value>, FedError> {
    tracing::debug!(origin = %signed.origin, "profile query");
    let user = query_param(&uri, "user_id").ok_or_else(|| {
        FedError::new(
            http::StatusCode::BAD_REQUEST,
            "M_MISSING_PARAM",
            "user_id is required",
        )
    })?;
    let user = ruma::UserId::parse(user).map_err(|e| {
        FedError::new(
            http::StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
            e.to_string(),
        )
    })?;
    if user.server_name() != state.core.config.server_name {
        return Err(FedError::new(
            http::StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
            "User is not local",
        ));
    }
    let profile = state.core.profiles.get(&user)?;
    let mut body = json!({});
    let field = query_param(&uri, "field");
    if field.as_deref().is_none_or(|f| f == "displayname")
        && let Some(d) = profile.displayname
    {
        body["displayname"] = json!(d);
    }
    if field.as_deref().is_none_or(|f| f == "avatar_url")
        && let Some(a) = profile.avatar_url
    {
        body["avatar_url"] = json!(a);
    }
    Ok(Json(body))
}

/// `GET /_matrix/federation/v1/query/directory?room_alias=…`: a local alias's room and the
/// servers in it.
pub async fn directory(
    AxState(state): AxState<State>,
    uri: http::Uri,
    signed: Signed,
) -> Result<Json<Value>, FedError> {
    tracing::debug!(origin = %signed.origin, "directory query");
    let alias = query_param(&uri, "room_alias").ok_or_else(|| {
        FedError::new(
            http::StatusCode::BAD_REQUEST,
            "M_MISSING_PARAM",
            "room_alias is required",
        )
    })?;
    let alias = ruma::RoomAliasId::parse(alias).map_err(|e| {
        FedError::new(
            http::StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
            e.to_string(),
        )
    })?;
    let (room_id, servers) = state.core.directory.resolve_local(&alias)?;
    Ok(Json(json!({ "room_id": room_id, "servers": servers })))
}

/// What `/publicRooms` reads, from the query (GET) or the body (POST).
#[derive(Default, serde::Deserialize)]
pub struct PublicRoomsParams {
    limit: Option<u64>,
    since: Option<String>,
    #[serde(default)]
    filter: PublicRoomsFilter,
}

#[derive(Default, serde::Deserialize)]
struct PublicRoomsFilter {
    generic_search_term: Option<String>,
    room_types: Option<Vec<Option<String>>>,
}

/// `GET /_matrix/federation/v1/publicRooms`.
pub async fn public_rooms(
    AxState(state): AxState<State>,
    uri: http::Uri,
    signed: Signed,
) -> Result<Json<Value>, FedError> {
    let params = PublicRoomsParams {
        limit: query_param(&uri, "limit").and_then(|l| l.parse().ok()),
        since: query_param(&uri, "since"),
        filter: PublicRoomsFilter::default(),
    };
    room_list(&state, &signed, params)
}

/// `POST /_matrix/federation/v1/publicRooms`, with a filter.
pub async fn public_rooms_filtered(
    AxState(state): AxState<State>,
    signed: Signed,
) -> Result<Json<Value>, FedError> {
    let params: PublicRoomsParams = serde_json::from_slice(&signed.body)
        .map_err(|e| FedError::new(http::StatusCode::BAD_REQUEST, "M_BAD_JSON", e.to_string()))?;
    room_list(&state, &signed, params)
}

fn room_list(
    state: &State,
    signed: &Signed,
    p: PublicRoomsParams,
) -> Result<Json<Value>, FedError> {
    tracing::debug!(origin = %signed.origin, "public rooms query");
    let page = state.core.directory.public_rooms(
        p.filter.generic_search_term.as_deref(),
        p.filter.room_types.as_deref(),
        p.limit.map(|l| l as usize),
        p.since.as_deref(),
    )?;
    let chunk: Vec<Value> = page
        .chunk
        .into_iter()
        .map(|r| {
            let mut c = json!({
                "room_id": r.room_id,
                "num_joined_members": r.joined_members,
                "world_readable": r.world_readable,
                "guest_can_join": r.guest_can_join,
                "join_rule": r.join_rule.unwrap_or_else(|| "public".into()),
            });
            let optional = [
                ("name", r.name),
                ("topic", r.topic),
                ("canonical_alias", r.canonical_alias),
                ("avatar_url", r.avatar_url),
                ("room_type", r.room_type),
            ];
            for (k, v) in optional {
                if let Some(v) = v {
                    c[k] = json!(v);
                }
            }
            c
        })
        .collect();
    let mut body = json!({ "chunk": chunk, "total_room_count_estimate": page.total });
    if let Some(n) = page.next_batch {
        body["next_batch"] = json!(n);
    }
    if let Some(p) = page.prev_batch {
        body["prev_batch"] = json!(p);
    }
    Ok(Json(body))
}

/// `GET /_matrix/federation/v1/openid/userinfo?access_token=…`: who an OpenID token belongs to.
/// Asked by third parties, not servers: no request signature.
pub async fn openid_userinfo(
    AxState(state): AxState<State>,
    uri: http::Uri,
) -> Result<Json<Value>, FedError> {
    let token = query_param(&uri, "access_token").ok_or_else(|| {
        FedError::new(
            http::StatusCode::UNAUTHORIZED,
            "M_MISSING_TOKEN",
            "Missing access token",
        )
    })?;
    match state.core.openid.user_of(&token) {
        Some(user) => Ok(Json(json!({ "sub": user }))),
        None => Err(FedError::new(
            http::StatusCode::UNAUTHORIZED,
            "M_UNKNOWN_TOKEN",
            "Access token unknown or expired",
        )),
    }
}
