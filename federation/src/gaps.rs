//! Filling a gap in a room's graph: a PDU arrived whose `prev_events` this server lacks (it was
//! down, or the sender's catch-up after an outage sends only each room's latest event, as
//! Synapse's does). The missing events are asked of the sending server with
//! `/get_missing_events` (between our forward extremities and the new event, at most
//! `MAX_MISSING`), each checked like any PDU and appended oldest first; then the new event fits.

use ruma::{CanonicalJsonValue, OwnedEventId, RoomId, RoomVersionId, ServerName};
use serde_json::json;

use crate::State;
use crate::pdu::check_signed_pdu;

/// Synapse asks for at most 10 missing events; a longer gap needs the state at the event.
const MAX_MISSING: usize = 10;

/// Fetches and appends the events between what this server has of a room and `event`. Errors
/// are logged: the caller then appends (or rejects) the event as it stands.
pub(crate) async fn fill(
    state: &State,
    origin: &ServerName,
    room_id: &RoomId,
    version: &RoomVersionId,
    event: &OwnedEventId,
    min_depth: u64,
) {
    if let Err(e) = try_fill(state, origin, room_id, version, event, min_depth).await {
        tracing::info!(%room_id, %origin, %event, error = %e, "could not fill a gap in the room");
    }
}

async fn try_fill(
    state: &State,
    origin: &ServerName,
    room_id: &RoomId,
    version: &RoomVersionId,
    event: &OwnedEventId,
    min_depth: u64,
) -> Result<(), String> {
    let rooms = &state.core.rooms;
    let earliest = rooms.extremities(room_id).map_err(|e| e.to_string())?;
    let body = json!({
        "earliest_events": earliest,
        "latest_events": [event],
        "limit": MAX_MISSING,
        "min_depth": min_depth,
    });
    let path = format!(
        "/_matrix/federation/v1/get_missing_events/{}",
        crate::joining::seg(room_id.as_str())
    );
    let answer = state
        .federation
        .client
        .request(origin, http::Method::POST, &path, Some(&body))
        .await
        .map_err(|e| e.to_string())?;
    let mut events = Vec::new();
    for pdu in answer["events"].as_array().into_iter().flatten() {
        let Ok(CanonicalJsonValue::Object(obj)) = CanonicalJsonValue::try_from(pdu.clone()) else {
            continue;
        };
        if obj.get("room_id").and_then(|r| r.as_str()) != Some(room_id.as_str()) {
            continue;
        }
        let depth = obj.get("depth").and_then(|d| match d {
            CanonicalJsonValue::Integer(i) => u64::try_from(i64::from(*i)).ok(),
            _ => None,
        });
        events.push((depth.unwrap_or(0), obj));
    }
    // Oldest first, so each event's prevs are there when it is appended.
    events.sort_by_key(|(depth, _)| *depth);
    let fetched = events.len();
    for (_, obj) in events {
        let checked = check_signed_pdu(&state.federation, version, obj)
            .await
            .map_err(|e| e.message.clone())?;
        if let Err(e) = rooms
            .append_remote(room_id, checked.event_id.clone(), checked.json)
            .await
        {
            tracing::info!(%room_id, event_id = %checked.event_id, error = %e, "a missing event was rejected");
        }
    }
    tracing::info!(%room_id, %origin, fetched, "filled a gap in the room");
    Ok(())
}
