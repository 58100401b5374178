//! The legacy endpoints of spec r0.6.1 ("Room events", "Events") that clients and SyTest still
//! call: `GET /events`, `GET /events/{eventId}`, `GET /initialSync` and
//! `GET /rooms/{roomId}/initialSync`. ruma dropped most of them (its `/events` is the peeking
//! variant, which requires a room), so these are plain handlers: the query parsed with serde,
//! the answer JSON in Synapse's shape. The logic is `hearth_core::legacy`.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use hearth_core::legacy::{RoomSnapshot, StreamRequest};
use ruma::{EventId, OwnedRoomId, RoomId};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue as RawJsonValue;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, QueryParams};
use crate::sync::{parse_sync_token, until_session_ends};

/// Room events per answer (and per room of a snapshot) when the client names no `limit`, as
/// Synapse has it.
const DEFAULT_LIMIT: u64 = 10;
/// `/events` long-polls this long when the client names no `timeout` (Synapse's default)...
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// ...and at most this long: clients simply poll again.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

fn path_param(p: Result<Path<String>, PathRejection>) -> ApiResult<String> {
    p.map(|Path(s)| s)
        .map_err(|_| ApiError::invalid_param("Invalid path parameter"))
}

fn limit(limit: Option<u64>) -> usize {
    let max = hearth_core::legacy::MAX_LIMIT as u64;
    limit.unwrap_or(DEFAULT_LIMIT).min(max) as usize
}

/// The query of `GET /events`. `dir`, `to` and `raw` are accepted and, as in Synapse, of no
/// effect on what the stream gives.
#[derive(Deserialize)]
pub struct EventsQuery {
    from: Option<String>,
    timeout: Option<u64>,
    limit: Option<u64>,
    room_id: Option<OwnedRoomId>,
}

#[derive(Serialize)]
pub struct Chunk {
    chunk: Vec<Box<RawJsonValue>>,
    start: String,
    end: String,
}

pub async fn events(
    State(state): State<AppState>,
    Auth(session): Auth,
    QueryParams(q): QueryParams<EventsQuery>,
) -> ApiResult<Json<Chunk>> {
    let req = StreamRequest {
        user_id: session.user_id.clone(),
        device_id: session.device_id.to_string(),
        from: q.from.as_deref().map(parse_sync_token).transpose()?,
        timeout: q
            .timeout
            .map_or(DEFAULT_TIMEOUT, Duration::from_millis)
            .min(MAX_TIMEOUT),
        limit: limit(q.limit).max(1),
        room_id: q.room_id,
    };
    let out = until_session_ends(&state, &session, state.core.legacy.stream(req)).await?;
    Ok(Json(Chunk {
        chunk: out.chunk,
        start: out.start.to_string(),
        end: out.end.to_string(),
    }))
}

pub async fn event(
    State(state): State<AppState>,
    Auth(session): Auth,
    event_id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Box<RawJsonValue>>> {
    let event_id = path_param(event_id)?;
    let event_id =
        EventId::parse(&event_id).map_err(|_| ApiError::not_found("Event not found."))?;
    let ev = state
        .core
        .legacy
        .event(&session.user_id, session.device_id.as_str(), &event_id)?;
    Ok(Json(ev))
}

#[derive(Deserialize)]
pub struct InitialSyncQuery {
    limit: Option<u64>,
    #[serde(default)]
    archived: bool,
}

/// One room of `GET /initialSync`, or the whole answer of `GET /rooms/{roomId}/initialSync`.
#[derive(Serialize)]
pub struct Room {
    room_id: OwnedRoomId,
    #[serde(skip_serializing_if = "Option::is_none")]
    membership: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    visibility: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inviter: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    invite: Option<Box<RawJsonValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<Chunk>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<Vec<Box<RawJsonValue>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    account_data: Option<Vec<Box<RawJsonValue>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence: Option<Vec<Box<RawJsonValue>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    receipts: Option<Vec<Box<RawJsonValue>>>,
}

/// A room snapshot in the answer's shape: `full` for the one-room endpoint, which also has the
/// room's presence and receipts (the global one has them once, at the top).
fn room(snap: RoomSnapshot, full: bool) -> Room {
    let (invite, inviter) = match snap.invite {
        Some((event, sender)) => (Some(event), Some(sender.to_string())),
        None => (None, None),
    };
    let mut out = Room {
        room_id: snap.room_id,
        membership: snap.membership,
        visibility: (!full).then_some(if snap.public { "public" } else { "private" }),
        inviter,
        invite,
        messages: None,
        state: None,
        account_data: None,
        presence: None,
        receipts: None,
    };
    if let Some(c) = snap.content {
        out.messages = Some(Chunk {
            chunk: c.messages,
            start: c.start,
            end: c.end,
        });
        out.state = Some(c.state);
        out.account_data = Some(c.account_data);
        if full {
            out.presence = Some(c.presence);
            out.receipts = Some(c.receipts);
        }
    }
    out
}

#[derive(Serialize)]
pub struct Snapshot {
    end: String,
    rooms: Vec<Room>,
    presence: Vec<Box<RawJsonValue>>,
    account_data: Vec<Box<RawJsonValue>>,
    receipts: Vec<Box<RawJsonValue>>,
}

pub async fn initial_sync(
    State(state): State<AppState>,
    Auth(session): Auth,
    QueryParams(q): QueryParams<InitialSyncQuery>,
) -> ApiResult<Json<Snapshot>> {
    let snap = state.core.legacy.initial_sync(
        &session.user_id,
        session.device_id.as_str(),
        limit(q.limit),
        q.archived,
    )?;
    Ok(Json(Snapshot {
        end: snap.end.to_string(),
        rooms: snap.rooms.into_iter().map(|r| room(r, false)).collect(),
        presence: snap.presence,
        account_data: snap.account_data,
        receipts: snap.receipts,
    }))
}

#[derive(Deserialize)]
pub struct RoomInitialSyncQuery {
    limit: Option<u64>,
}

pub async fn room_initial_sync(
    State(state): State<AppState>,
    Auth(session): Auth,
    room_id: Result<Path<String>, PathRejection>,
    QueryParams(q): QueryParams<RoomInitialSyncQuery>,
) -> ApiResult<Json<Room>> {
    let room_id = path_param(room_id)?;
    let room_id =
        RoomId::parse(&room_id).map_err(|_| ApiError::invalid_param("Invalid room ID"))?;
    let snap = state.core.legacy.room_initial_sync(
        &session.user_id,
        session.device_id.as_str(),
        &room_id,
        limit(q.limit),
    )?;
    Ok(Json(room(snap, true)))
}
