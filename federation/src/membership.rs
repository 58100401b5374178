//! Joining rooms of this server from another (spec: "Joining Rooms"), as the resident server.

use axum::Json;
use axum::extract::{Path, State as AxState};
use http::StatusCode;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedRoomId, OwnedUserId, RoomVersionId,
};
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

/// The room and user of a `make_*` request: the user must be of the asking server, and the
/// room's ACL must let that server in.
fn template_target(
    state: &State,
    room_id: String,
    user_id: String,
    signed: &Signed,
) -> Result<(OwnedRoomId, OwnedUserId), FedError> {
    let room_id = OwnedRoomId::try_from(room_id).map_err(|e| invalid(e.to_string()))?;
    let user_id = OwnedUserId::try_from(user_id).map_err(|e| invalid(e.to_string()))?;
    check_acl(state, &room_id, &signed.origin)?;
    if user_id.server_name() != signed.origin {
        return Err(FedError::new(
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
            "The user is not of the asking server",
        ));
    }
    Ok((room_id, user_id))
}

/// The asking server must speak the room's version (its `ver` parameters; a server that names
/// none speaks only version 1).
fn check_version_offered(uri: &http::Uri, version: &RoomVersionId) -> Result<(), FedError> {
    let offered = query_params(uri, "ver");
    if offered.is_empty() && *version == RoomVersionId::V1
        || offered.iter().any(|v| v == version.as_str())
    {
        return Ok(());
    }
    Err(FedError::new(
        StatusCode::BAD_REQUEST,
        "M_INCOMPATIBLE_ROOM_VERSION",
        format!("Your server does not support room version {version}"),
    )
    .with_room_version(version.as_str()))
}

/// `GET /_matrix/federation/v1/make_join/{roomId}/{userId}?ver=…`
pub async fn make_join(
    AxState(state): AxState<State>,
    Path((room_id, user_id)): Path<(String, String)>,
    uri: http::Uri,
    signed: Signed,
) -> Result<Json<Value>, FedError> {
    let (room_id, user_id) = template_target(&state, room_id, user_id, &signed)?;
    let version = state.core.rooms.room_version(&room_id)?;
    check_version_offered(&uri, &version)?;
    // A room every local user has left is not one this server can let anyone into (its view
    // of the room is stale), as Synapse answers.
    let ours = &state.core.config.server_name;
    if !state
        .core
        .rooms
        .servers_in_room(&room_id)?
        .iter()
        .any(|s| s.as_str() == ours.as_str())
    {
        return Err(FedError::new(
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
            "Not an active room on this server",
        ));
    }
    let (version, template) = state.core.rooms.join_template(&room_id, &user_id)?;
    Ok(Json(json!({ "room_version": version, "event": template })))
}

/// The signed member event of `send_join`/`send_leave`: checked (signatures, hash, event id)
/// and a `membership` event of a user of the sending server about themselves.
async fn checked_member_event(
    state: &State,
    room_id: String,
    event_id: String,
    signed: &Signed,
    membership_wanted: &str,
) -> Result<(OwnedRoomId, OwnedEventId, CanonicalJsonObject, String), FedError> {
    let room_id = OwnedRoomId::try_from(room_id).map_err(|e| invalid(e.to_string()))?;
    let event_id = OwnedEventId::try_from(event_id).map_err(|e| invalid(e.to_string()))?;
    check_acl(state, &room_id, &signed.origin)?;
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
            "the member event's content hash does not match",
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
        || membership != Some(membership_wanted)
        || sender_server.as_deref() != Some(&*signed.origin)
    {
        return Err(FedError::bad_json(
            "not a member event of a user of the sending server about themselves",
        ));
    }
    Ok((room_id, event_id, checked.json, sender))
}

/// `PUT /_matrix/federation/v1/send_join/{roomId}/{eventId}`: v2's answer in the `[200, ...]`
/// wrapper of v1 (removed from the spec in v1.18; Synapse and older servers still use it).
pub async fn send_join_v1(
    st: AxState<State>,
    path: Path<(String, String)>,
    signed: Signed,
) -> Result<Json<Value>, FedError> {
    let Json(body) = send_join(st, path, signed).await?;
    Ok(Json(json!([200, body])))
}

/// `PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}`
pub async fn send_join(
    AxState(state): AxState<State>,
    Path((room_id, event_id)): Path<(String, String)>,
    signed: Signed,
) -> Result<Json<Value>, FedError> {
    let (room_id, event_id, json, sender) =
        checked_member_event(&state, room_id, event_id, &signed, "join").await?;
    let rooms = &state.core.rooms;
    rooms
        .append_remote(&room_id, event_id.clone(), json)
        .await?;
    tracing::info!(%room_id, %sender, "remote user joined");
    let chain = rooms.state_and_auth_chain(&room_id, &event_id)?;
    Ok(Json(json!({
        "origin": state.core.config.server_name,
        "state": chain.state,
        "auth_chain": chain.auth_chain,
        "members_omitted": false,
        "servers_in_room": rooms.servers_in_room(&room_id)?,
    })))
}

/// `PUT /_matrix/federation/v1/invite/{roomId}/{eventId}`: the body is the event alone and
/// the answer is wrapped in `[200, ...]`. v1 names no room version: as Synapse, the invite is
/// taken as of version 1 (versions 1 and 2 differ only in state resolution, which an invite
/// does not use).
pub async fn invite_v1(
    AxState(state): AxState<State>,
    Path((room_id, event_id)): Path<(String, String)>,
    signed: Signed,
) -> Result<Json<Value>, FedError> {
    let event: Value =
        serde_json::from_slice(&signed.body).map_err(|e| FedError::bad_json(e.to_string()))?;
    let answered = receive_invite(
        &state,
        room_id,
        event_id,
        &signed,
        RoomVersionId::V1,
        event,
        Vec::new(),
    )
    .await?;
    Ok(Json(json!([200, { "event": answered }])))
}

/// `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}`: another server invites a user of
/// this one.
pub async fn invite(
    AxState(state): AxState<State>,
    Path((room_id, event_id)): Path<(String, String)>,
    signed: Signed,
) -> Result<Json<Value>, FedError> {
    #[derive(serde::Deserialize)]
    struct Body {
        room_version: ruma::RoomVersionId,
        event: Value,
        #[serde(default)]
        invite_room_state: Vec<Value>,
    }
    let body: Body =
        serde_json::from_slice(&signed.body).map_err(|e| FedError::bad_json(e.to_string()))?;
    let answered = receive_invite(
        &state,
        room_id,
        event_id,
        &signed,
        body.room_version,
        body.event,
        body.invite_room_state,
    )
    .await?;
    Ok(Json(json!({ "event": answered })))
}

/// An invite from another server, as Synapse takes it: the room's ACL first, then the event
/// (format, the sender server's signature: a bad or missing one is 403, hash), which must be
/// an invite of a local user by a user of the sending server; answered signed by this server.
async fn receive_invite(
    state: &State,
    room_id: String,
    event_id: String,
    signed: &Signed,
    room_version: RoomVersionId,
    event: Value,
    invite_room_state: Vec<Value>,
) -> Result<CanonicalJsonObject, FedError> {
    let room_id = OwnedRoomId::try_from(room_id).map_err(|e| invalid(e.to_string()))?;
    let event_id = OwnedEventId::try_from(event_id).map_err(|e| invalid(e.to_string()))?;
    if room_version.rules().is_none() {
        return Err(FedError::new(
            StatusCode::BAD_REQUEST,
            "M_INCOMPATIBLE_ROOM_VERSION",
            format!("Room version {room_version} is not supported"),
        )
        .with_room_version(room_version.as_str()));
    }
    // A room this server is not in has no ACL here to check.
    if state.core.rooms.exists(&room_id)? {
        check_acl(state, &room_id, &signed.origin)?;
    }
    let Ok(CanonicalJsonValue::Object(pdu)) = CanonicalJsonValue::try_from(event) else {
        return Err(FedError::bad_json(
            "the event must be a canonical JSON object",
        ));
    };
    let checked = check_signed_pdu(&state.federation, &room_version, pdu).await?;
    if checked.redacted {
        return Err(FedError::bad_json(
            "the invite's content hash does not match",
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
    let sender_server = field("sender")
        .and_then(|s| OwnedUserId::try_from(s).ok())
        .map(|u| u.server_name().to_owned());
    if field("room_id").as_deref() != Some(room_id.as_str())
        || sender_server.as_deref() != Some(&*signed.origin)
    {
        return Err(FedError::bad_json(
            "not an invite to this room by a user of the sending server",
        ));
    }
    Ok(state
        .core
        .rooms
        .receive_invite(&room_version, event_id, checked.json, invite_room_state)
        .await?)
}

/// Sends an invite to the invitee's server and takes its signature back: the answer must be
/// our event with only signatures added, and the invitee server's signature must verify.
pub(crate) async fn send_invite(
    federation: &crate::Federation,
    server: &ruma::ServerName,
    room_version: &ruma::RoomVersionId,
    event_id: &ruma::EventId,
    event: CanonicalJsonObject,
    invite_room_state: Vec<Value>,
) -> hearth_core::Result<CanonicalJsonObject> {
    use hearth_core::Error as E;
    let rules = room_version
        .rules()
        .ok_or_else(|| E::IncompatibleRoomVersion(room_version.to_string()))?;
    let room_id = event
        .get("room_id")
        .and_then(|r| r.as_str())
        .unwrap_or_default()
        .to_owned();
    let path = format!(
        "/_matrix/federation/v2/invite/{}/{}",
        crate::joining::seg(&room_id),
        crate::joining::seg(event_id.as_str())
    );
    let body = json!({
        "room_version": room_version,
        "event": event,
        "invite_room_state": invite_room_state,
    });
    let answer = match federation
        .client
        .request(server, http::Method::PUT, &path, Some(&body))
        .await
    {
        // A server without v2 (Synapse falls back the same way): v1 takes the event alone and
        // answers `[200, {"event": ...}]`.
        Err(e) if crate::client::Client::is_unknown_endpoint(&e) => {
            let path = path.replacen("/v2/invite/", "/v1/invite/", 1);
            let body = serde_json::to_value(&event).map_err(E::internal)?;
            federation
                .client
                .request(server, http::Method::PUT, &path, Some(&body))
                .await
                .and_then(|a| crate::joining::unwrap_v1(a, "invite"))
        }
        other => other,
    }
    .map_err(|e| match e.errcode {
        "M_FORBIDDEN" => E::forbidden(e.to_string()),
        "M_NOT_FOUND" => E::not_found(e.to_string()),
        "M_BAD_JSON" => E::BadJson(e.to_string()),
        _ => E::Unknown(format!("{server} refused the invite: {e}")),
    })?;
    let returned = match answer
        .get("event")
        .cloned()
        .map(CanonicalJsonValue::try_from)
    {
        Some(Ok(CanonicalJsonValue::Object(returned))) => returned,
        // Floats, out-of-range integers: not JSON a signed event may hold.
        Some(Err(e)) => {
            return Err(E::BadJson(format!(
                "{server} answered the invite with an event that is not canonical JSON: {e}"
            )));
        }
        _ => {
            return Err(E::Unknown(format!(
                "{server} answered the invite without an event"
            )));
        }
    };
    // Same event: the reference hash covers everything but signatures and unsigned data.
    if !hearth_core::rooms::version::same_event(&returned, &event, &rules) {
        return Err(E::Unknown(format!("{server} changed the invite")));
    }
    let keys = federation
        .key_cache
        .keys(&federation.client, &federation.keys, server)
        .await
        .map_err(|e| E::Unknown(e.to_string()))?;
    let mut map = ruma::signatures::PublicKeyMap::new();
    map.insert(server.to_string(), keys);
    let mut redacted = ruma::canonical_json::redact(returned.clone(), &rules.redaction, None)
        .map_err(|e| E::Unknown(e.to_string()))?;
    // `verify_json` checks every signature present: keep only theirs.
    if let Some(CanonicalJsonValue::Object(sigs)) = redacted.get_mut("signatures") {
        sigs.retain(|k, _| k == server.as_str());
    }
    ruma::signatures::verify_json(&map, &redacted)
        .map_err(|e| E::Unknown(format!("{server}'s signature on the invite: {e}")))?;
    // Our event with their signatures added.
    let mut merged = event;
    if let (Some(CanonicalJsonValue::Object(theirs)), Some(CanonicalJsonValue::Object(ours))) =
        (returned.get("signatures"), merged.get_mut("signatures"))
        && let Some(sig) = theirs.get(server.as_str())
    {
        ours.insert(server.to_string(), sig.clone());
    }
    Ok(merged)
}

/// `GET /_matrix/federation/v1/make_leave/{roomId}/{userId}`: a template for a user of the
/// asking server to turn an invite down (or leave).
pub async fn make_leave(
    AxState(state): AxState<State>,
    Path((room_id, user_id)): Path<(String, String)>,
    signed: Signed,
) -> Result<Json<Value>, FedError> {
    let (room_id, user_id) = template_target(&state, room_id, user_id, &signed)?;
    let (version, template) = state.core.rooms.leave_template(&room_id, &user_id)?;
    Ok(Json(json!({ "room_version": version, "event": template })))
}

/// `PUT /_matrix/federation/v1/send_leave/{roomId}/{eventId}`: v2 in v1's `[200, ...]`.
pub async fn send_leave_v1(
    st: AxState<State>,
    path: Path<(String, String)>,
    signed: Signed,
) -> Result<Json<Value>, FedError> {
    let Json(body) = send_leave(st, path, signed).await?;
    Ok(Json(json!([200, body])))
}

/// `PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}`
pub async fn send_leave(
    AxState(state): AxState<State>,
    Path((room_id, event_id)): Path<(String, String)>,
    signed: Signed,
) -> Result<Json<Value>, FedError> {
    let (room_id, event_id, json, sender) =
        checked_member_event(&state, room_id, event_id, &signed, "leave").await?;
    state
        .core
        .rooms
        .append_remote(&room_id, event_id, json)
        .await?;
    tracing::info!(%room_id, %sender, "remote user left (or turned an invite down)");
    Ok(Json(json!({})))
}

/// `GET /_matrix/federation/v1/make_knock/{roomId}/{userId}?ver=…`: a template for a user of the
/// asking server to knock.
pub async fn make_knock(
    AxState(state): AxState<State>,
    Path((room_id, user_id)): Path<(String, String)>,
    uri: http::Uri,
    signed: Signed,
) -> Result<Json<Value>, FedError> {
    let (room_id, user_id) = template_target(&state, room_id, user_id, &signed)?;
    let (version, template) = state.core.rooms.knock_template(&room_id, &user_id)?;
    check_version_offered(&uri, &version)?;
    Ok(Json(json!({ "room_version": version, "event": template })))
}

/// `PUT /_matrix/federation/v1/send_knock/{roomId}/{eventId}`: the knock is appended; the
/// answer is the room's stripped state.
pub async fn send_knock(
    AxState(state): AxState<State>,
    Path((room_id, event_id)): Path<(String, String)>,
    signed: Signed,
) -> Result<Json<Value>, FedError> {
    let (room_id, event_id, json, sender) =
        checked_member_event(&state, room_id, event_id, &signed, "knock").await?;
    let rooms = &state.core.rooms;
    rooms.append_remote(&room_id, event_id, json).await?;
    tracing::info!(%room_id, %sender, "remote user knocked");
    let knocker = OwnedUserId::try_from(sender).map_err(|e| invalid(e.to_string()))?;
    Ok(Json(json!({
        "knock_room_state": rooms.knock_room_state(&room_id, &knocker)?,
    })))
}
