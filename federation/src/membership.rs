//! Joining rooms of this server from another (spec: "Joining Rooms"), as the resident server.

use axum::Json;
use axum::extract::{Path, State as AxState};
use http::StatusCode;
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedRoomId, OwnedUserId};
use serde_json::{Value, json};

use crate::State;
use crate::auth::Signed;
use crate::error::FedError;
use crate::pdu::check_signed_pdu;
use crate::query::query_params;

fn invalid(m: impl Into<String>) -> FedError {
    FedError::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", m)
}

/// A server the room's ACL denies may not join it.
fn check_acl(
    state: &State,
    room_id: &ruma::RoomId,
    origin: &ruma::ServerName,
) -> Result<(), FedError> {
    if state.core.rooms.server_allowed(room_id, origin)? {
        Ok(())
    } else {
        Err(FedError::new(
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
            "The room's server ACL denies this server",
        ))
    }
}

/// `GET /_matrix/federation/v1/make_join/{roomId}/{userId}?ver=…`
pub async fn make_join(
    AxState(state): AxState<State>,
    Path((room_id, user_id)): Path<(String, String)>,
    uri: http::Uri,
    signed: Signed,
) -> Result<Json<Value>, FedError> {
    let room_id = OwnedRoomId::try_from(room_id).map_err(|e| invalid(e.to_string()))?;
    let user_id = OwnedUserId::try_from(user_id).map_err(|e| invalid(e.to_string()))?;
    check_acl(&state, &room_id, &signed.origin)?;
    if user_id.server_name() != signed.origin {
        return Err(FedError::new(
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
            "The user is not of the asking server",
        ));
    }
    let (version, template) = state.core.rooms.join_template(&room_id, &user_id)?;
    // A server that names no versions speaks only version 1.
    let supported = query_params(&uri, "ver");
    if !supported.iter().any(|v| v == version.as_str()) {
        return Err(FedError::new(
            StatusCode::BAD_REQUEST,
            "M_INCOMPATIBLE_ROOM_VERSION",
            format!("Your server does not support room version {version}"),
        )
        .with_room_version(version.as_str()));
    }
    Ok(Json(json!({ "room_version": version, "event": template })))
}

/// `PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}`
pub async fn send_join(
    AxState(state): AxState<State>,
    Path((room_id, event_id)): Path<(String, String)>,
    signed: Signed,
) -> Result<Json<Value>, FedError> {
    let room_id = OwnedRoomId::try_from(room_id).map_err(|e| invalid(e.to_string()))?;
    let event_id = OwnedEventId::try_from(event_id).map_err(|e| invalid(e.to_string()))?;
    check_acl(&state, &room_id, &signed.origin)?;
    let value: Value = serde_json::from_slice(&signed.body)
        .map_err(|_| FedError::new(StatusCode::BAD_REQUEST, "M_NOT_JSON", "Content not JSON."))?;
    let Ok(CanonicalJsonValue::Object(pdu)) = CanonicalJsonValue::try_from(value) else {
        return Err(FedError::bad_json(
            "the event must be a canonical JSON object",
        ));
    };
    let pdu: CanonicalJsonObject = pdu;
    let version = state.core.rooms.room_version(&room_id)?;
    let checked = check_signed_pdu(&state.federation, &version, pdu).await?;
    if checked.redacted {
        return Err(FedError::bad_json(
            "the join event's content hash does not match",
        ));
    }
    if checked.event_id != event_id {
        return Err(FedError::bad_json("the event id does not match the event"));
    }
    let field = |k: &str| {
        checked
            .json
            .get(k)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let sender = field("sender").unwrap_or_default();
    let membership = checked
        .json
        .get("content")
        .and_then(|c| c.as_object())
        .and_then(|c| c.get("membership"))
        .and_then(|m| m.as_str());
    let sender_server = OwnedUserId::try_from(sender.as_str())
        .map(|u| u.server_name().to_owned())
        .ok();
    if field("type").as_deref() != Some("m.room.member")
        || field("state_key").as_deref() != Some(sender.as_str())
        || membership != Some("join")
        || sender_server.as_deref() != Some(&*signed.origin)
    {
        return Err(FedError::bad_json(
            "not a join event of a user of the sending server",
        ));
    }
    let rooms = &state.core.rooms;
    rooms
        .append_remote(&room_id, event_id.clone(), checked.json)
        .await?;
    tracing::info!(%room_id, %sender, "remote user joined");
    let chain = rooms.state_and_auth_chain(&room_id, &[event_id])?;
    Ok(Json(json!({
        "origin": state.core.config.server_name,
        "state": chain.state,
        "auth_chain": chain.auth_chain,
        "members_omitted": false,
        "servers_in_room": rooms.servers_in_room(&room_id)?,
    })))
}
