//! Reading a room's events as another server (spec: "Retrieving events", "Backfilling and
//! retrieving missing events"). The logic, and what a server may see, is
//! `hearth_core::rooms::peer_reads`; these handlers add the room's server ACL and the answer's
//! envelope.

use axum::Json;
use axum::extract::{Path, State as AxState};
use http::StatusCode;
use ruma::{OwnedEventId, OwnedRoomId};
use serde_json::{Value, json};

use crate::State;
use crate::auth::Signed;
use crate::error::FedError;
use crate::query::query_params;

fn invalid(m: impl Into<String>) -> FedError {
    FedError::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", m)
}

fn room(state: &State, room_id: &str, signed: &Signed) -> Result<OwnedRoomId, FedError> {
    let room_id = OwnedRoomId::try_from(room_id).map_err(|e| invalid(e.to_string()))?;
    if !state.core.rooms.server_allowed(&room_id, &signed.origin)? {
        return Err(FedError::new(
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
            "The room's server ACL denies this server",
        ));
    }
    Ok(room_id)
}

fn event_ids(values: Vec<String>) -> Result<Vec<OwnedEventId>, FedError> {
    values
        .into_iter()
        .map(|v| OwnedEventId::try_from(v).map_err(|e| invalid(e.to_string())))
        .collect()
}

fn envelope(state: &State, pdus: Vec<Box<serde_json::value::RawValue>>) -> Json<Value> {
    Json(json!({
        "origin": state.core.config.server_name,
        "origin_server_ts": hearth_core::util::now_ms(),
        "pdus": pdus,
    }))
}

/// `GET /_matrix/federation/v1/event/{eventId}`
pub async fn event(
    AxState(state): AxState<State>,
    Path(event_id): Path<String>,
    signed: Signed,
) -> Result<Json<Value>, FedError> {
    let id = OwnedEventId::try_from(event_id).map_err(|e| invalid(e.to_string()))?;
    let pdu = state.core.rooms.event_for_server(&signed.origin, &id)?;
    Ok(envelope(&state, vec![pdu]))
}

fn at_event(uri: &http::Uri) -> Result<OwnedEventId, FedError> {
    let id = query_params(uri, "event_id")
        .into_iter()
        .next()
        .ok_or_else(|| {
            FedError::new(
                StatusCode::BAD_REQUEST,
                "M_MISSING_PARAM",
                "event_id is required",
            )
        })?;
    OwnedEventId::try_from(id).map_err(|e| invalid(e.to_string()))
}

/// `GET /_matrix/federation/v1/state_ids/{roomId}?event_id=…`
pub async fn state_ids(
    AxState(state): AxState<State>,
    Path(room_id): Path<String>,
    uri: http::Uri,
    signed: Signed,
) -> Result<Json<Value>, FedError> {
    let room_id = room(&state, &room_id, &signed)?;
    let at = at_event(&uri)?;
    let ids = state
        .core
        .rooms
        .state_ids_at(&signed.origin, &room_id, &at)?;
    Ok(Json(
        json!({ "pdu_ids": ids.state, "auth_chain_ids": ids.auth_chain }),
    ))
}

/// `GET /_matrix/federation/v1/state/{roomId}?event_id=…`
pub async fn state(
    AxState(state): AxState<State>,
    Path(room_id): Path<String>,
    uri: http::Uri,
    signed: Signed,
) -> Result<Json<Value>, FedError> {
    let room_id = room(&state, &room_id, &signed)?;
    let at = at_event(&uri)?;
    let rooms = &state.core.rooms;
    let ids = rooms.state_ids_at(&signed.origin, &room_id, &at)?;
    Ok(Json(json!({
        "pdus": rooms.pdus_for_server(&signed.origin, &ids.state)?,
        "auth_chain": rooms.pdus_for_server(&signed.origin, &ids.auth_chain)?,
    })))
}

/// `GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}`
pub async fn event_auth(
    AxState(state): AxState<State>,
    Path((room_id, event_id)): Path<(String, String)>,
    signed: Signed,
) -> Result<Json<Value>, FedError> {
    let room_id = room(&state, &room_id, &signed)?;
    let id = OwnedEventId::try_from(event_id).map_err(|e| invalid(e.to_string()))?;
    let chain = state
        .core
        .rooms
        .event_auth_for_server(&signed.origin, &room_id, &id)?;
    Ok(Json(json!({ "auth_chain": chain })))
}

/// `GET /_matrix/federation/v1/backfill/{roomId}?v=…&limit=…`
pub async fn backfill(
    AxState(state): AxState<State>,
    Path(room_id): Path<String>,
    uri: http::Uri,
    signed: Signed,
) -> Result<Json<Value>, FedError> {
    let room_id = room(&state, &room_id, &signed)?;
    let from = event_ids(query_params(&uri, "v"))?;
    let limit = query_params(&uri, "limit")
        .into_iter()
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or(10);
    let pdus = state
        .core
        .rooms
        .backfill(&signed.origin, &room_id, &from, limit)?;
    Ok(envelope(&state, pdus))
}

/// `POST /_matrix/federation/v1/get_missing_events/{roomId}`
pub async fn missing_events(
    AxState(state): AxState<State>,
    Path(room_id): Path<String>,
    signed: Signed,
) -> Result<Json<Value>, FedError> {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        earliest_events: Vec<String>,
        // Synapse answers `{}` (after the ACL check) with no events.
        #[serde(default)]
        latest_events: Vec<String>,
        limit: Option<usize>,
        min_depth: Option<u64>,
    }
    let room_id: OwnedRoomId = room(&state, &room_id, &signed)?;
    let body: Body =
        serde_json::from_slice(&signed.body).map_err(|e| FedError::bad_json(e.to_string()))?;
    let events = state.core.rooms.missing_events(
        &signed.origin,
        &room_id,
        &event_ids(body.earliest_events)?,
        &event_ids(body.latest_events)?,
        body.limit.unwrap_or(10),
        body.min_depth.unwrap_or(0),
    )?;
    Ok(Json(json!({ "events": events })))
}
