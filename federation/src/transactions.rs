//! Incoming transactions (`PUT /_matrix/federation/v1/send/{txnId}`): PDUs are checked and
//! appended one by one, each with its own result. Of the EDUs, typing notifications, read
//! receipts, presence and to-device messages are applied (from users of the sending server
//! only); the others are dropped for now.

use axum::Json;
use axum::extract::{Path, State as AxState};
use hearth_core::receipts::READ;
use hearth_core::rooms::version::VersionRules as _;
use http::StatusCode;
use ruma::{CanonicalJsonValue, EventId, OwnedRoomId, RoomId, ServerName, UserId};
use serde_json::{Map, Value, json};

use crate::State;
use crate::auth::Signed;
use crate::error::FedError;
use crate::pdu::check_signed_pdu;

/// A transaction carries at most 50 PDUs and 100 EDUs (spec).
const MAX_PDUS: usize = 50;
const MAX_EDUS: usize = 100;
/// How long a remote user types unless their server says they stopped (as Synapse).
const REMOTE_TYPING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

pub async fn send(
    AxState(state): AxState<State>,
    Path(txn_id): Path<String>,
    signed: Signed,
) -> Result<Json<Value>, FedError> {
    let body: Value = serde_json::from_slice(&signed.body)
        .map_err(|_| FedError::new(StatusCode::BAD_REQUEST, "M_NOT_JSON", "Content not JSON."))?;
    let pdus = body["pdus"].as_array().cloned().unwrap_or_default();
    let edus = body["edus"].as_array().map_or(0, Vec::len);
    if pdus.len() > MAX_PDUS || edus > MAX_EDUS {
        return Err(FedError::bad_json(
            "too many PDUs or EDUs in one transaction",
        ));
    }
    tracing::debug!(origin = %signed.origin, %txn_id, pdus = pdus.len(), edus, "transaction");
    for edu in body["edus"].as_array().into_iter().flatten() {
        handle_edu(&state, &signed.origin, edu).await;
    }
    let mut results = Map::new();
    for pdu in pdus {
        let (id, outcome) = handle_pdu(&state, &signed.origin, pdu).await;
        if let Some(id) = id {
            results.insert(id, outcome);
        }
    }
    Ok(Json(json!({ "pdus": results })))
}

/// One PDU of a transaction: `(event id, {} or {"error": …})`.
async fn handle_pdu(state: &State, origin: &ServerName, pdu: Value) -> (Option<String>, Value) {
    let room_id = pdu["room_id"]
        .as_str()
        .and_then(|r| OwnedRoomId::try_from(r).ok());
    let Some(room_id) = room_id else {
        return (None, json!({}));
    };
    let Ok(CanonicalJsonValue::Object(obj)) = CanonicalJsonValue::try_from(pdu) else {
        return (None, json!({}));
    };
    let rooms = &state.core.rooms;
    let version = match rooms.room_version(&room_id) {
        Ok(v) => v,
        // A room this server is not in: nothing to do with the event.
        Err(_) => return (None, json!({})),
    };
    if !rooms.server_allowed(&room_id, origin).unwrap_or(false) {
        let id = pdu_event_id(&obj, &version);
        tracing::info!(%room_id, %origin, "refused a PDU: the room's server ACL denies its origin");
        return (
            id,
            json!({ "error": "The room's server ACL denies this server" }),
        );
    }
    // The sender learns of a refusal under the event's id, which the checks do not need.
    let claimed_id = pdu_event_id(&obj, &version);
    let checked = match check_signed_pdu(&state.federation, &version, obj).await {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(%room_id, %origin, error = %e.message, "refused a PDU that failed its checks");
            return (claimed_id, json!({ "error": e.message }));
        }
    };
    let id = checked.event_id.to_string();
    if !rooms
        .missing_prevs(&checked.json)
        .unwrap_or_default()
        .is_empty()
    {
        crate::gaps::fill(
            state,
            origin,
            &room_id,
            &version,
            &checked.json,
            &checked.event_id,
        )
        .await;
    }
    // An event the auth rules refuse is taken (kept as rejected) and answered as accepted, as
    // Synapse answers it: the sender sent what it had to, the refusal is this server's.
    match rooms
        .receive_remote(&room_id, checked.event_id, checked.json)
        .await
    {
        Ok(_) => (Some(id), json!({})),
        Err(e) => {
            tracing::info!(%room_id, event_id = %id, error = %e, "rejected a remote event");
            (Some(id), json!({ "error": e.to_string() }))
        }
    }
}

/// The event id of a PDU, for the per-PDU results of a transaction.
fn pdu_event_id(obj: &ruma::CanonicalJsonObject, version: &ruma::RoomVersionId) -> Option<String> {
    let rules = version.rules()?;
    rules.event_id_of(obj).ok().map(|id| id.to_string())
}

/// A server may speak only for its own users, and only in rooms they are in (checked by the core)
/// that its server ACL lets it into.
async fn handle_edu(state: &State, origin: &ServerName, edu: &Value) {
    let from_origin = |user: &str| {
        UserId::parse(user)
            .ok()
            .filter(|u| u.server_name() == origin)
    };
    let core = &state.core;
    match edu["edu_type"].as_str() {
        Some("m.typing") => {
            let c = &edu["content"];
            let room = c["room_id"].as_str().and_then(|r| RoomId::parse(r).ok());
            let (Some(room), Some(user)) = (room, c["user_id"].as_str().and_then(from_origin))
            else {
                return;
            };
            if !core.rooms.server_allowed(&room, origin).unwrap_or(false) {
                return;
            }
            let timeout = (c["typing"] == true).then_some(REMOTE_TYPING_TIMEOUT);
            if let Err(e) = core.typing.set(&room, &user, timeout) {
                tracing::debug!(%room, %user, error = %e, "ignored a typing EDU");
            }
        }
        Some("m.receipt") => {
            for (room, by_type) in edu["content"].as_object().into_iter().flatten() {
                let Ok(room) = RoomId::parse(room) else {
                    continue;
                };
                if !core.rooms.server_allowed(&room, origin).unwrap_or(false) {
                    continue;
                }
                for (user, receipt) in by_type["m.read"].as_object().into_iter().flatten() {
                    let Some(user) = from_origin(user) else {
                        continue;
                    };
                    let thread = receipt["data"]["thread_id"].as_str();
                    let last = receipt["event_ids"]
                        .as_array()
                        .and_then(|ids| ids.last())
                        .and_then(|id| id.as_str())
                        .and_then(|id| EventId::parse(id).ok());
                    if let Some(event_id) = last
                        && let Err(e) = core
                            .receipts
                            .set(&user, &room, READ, &event_id, thread)
                            .await
                    {
                        tracing::debug!(%room, %user, error = %e, "ignored a receipt EDU");
                    }
                }
            }
        }
        Some("m.direct_to_device") => {
            let c = &edu["content"];
            let sender = c["sender"].as_str().and_then(from_origin);
            let messages =
                serde_json::from_value::<hearth_core::to_device::Messages>(c["messages"].clone());
            if let (Some(sender), Some(kind), Ok(messages)) = (sender, c["type"].as_str(), messages)
                && let Err(e) = core.to_device.receive_remote(&sender, kind, messages).await
            {
                tracing::warn!(%sender, error = %e, "a to-device EDU could not be queued");
            }
        }
        Some("m.presence") => {
            for push in edu["content"]["push"].as_array().into_iter().flatten() {
                let user = push["user_id"].as_str().and_then(from_origin);
                let presence = push["presence"]
                    .as_str()
                    .and_then(hearth_core::presence::State::parse);
                if let (Some(user), Some(presence)) = (user, presence) {
                    let msg = push["status_msg"].as_str().map(str::to_owned);
                    core.presence.set_remote(
                        &user,
                        presence,
                        msg,
                        push["last_active_ago"].as_u64(),
                    );
                }
            }
        }
        Some(kind @ ("m.device_list_update" | "m.signing_key_update")) => {
            // Applied in order, or the whole list fetched again when one went missing; the
            // local users who share a room with the user hear of it in their next sync.
            let content = &edu["content"];
            if let Some(user) = content["user_id"].as_str().and_then(from_origin) {
                let lists = core.e2ee.device_lists();
                let done = if kind == "m.device_list_update" {
                    lists.incoming_update(&user, content).await
                } else {
                    lists.incoming_signing_keys(&user, content).await
                };
                if let Err(e) = done {
                    tracing::warn!(%user, error = %e, "a device list update could not be recorded");
                }
            }
        }
        _ => {}
    }
}
