//! Filling a gap in a room's graph: a PDU arrived whose `prev_events` this server lacks (it was
//! down, or the sender's catch-up after an outage sends only each room's latest event, as
//! Synapse's does).
//!
//! The missing events are asked of the sending server with `/get_missing_events`, round after
//! round (each walking back from the oldest events fetched so far), up to `MAX_MISSING` events.
//! Synapse stops after one round of 10; going further means a short outage leaves no hole in
//! the timeline. Each event is checked like any PDU and appended oldest first. Where the gap is
//! longer than that, its far edge is kept with the state the sender reports there
//! (`/state_ids`, then `/event` for what this server lacks; see `hearth_core::rooms::GapEdge`),
//! so the events after it are checked against a known state, and the room goes on.

use std::collections::{BTreeMap, HashSet};

use futures_util::StreamExt;
use hearth_core::rooms::{GapEdge, Rooms};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, RoomId, RoomVersionId, ServerName,
};
use serde_json::{Value, json};

use crate::joining::seg;
use crate::pdu::check_signed_pdu;
use crate::{Federation, State};

/// How many missing events are fetched one by one before the rest of a gap is skipped.
const MAX_MISSING: usize = 200;
/// Events asked for per `/get_missing_events` round.
const PER_ROUND: usize = 50;
/// How far below the new event's depth events are asked for.
const DEPTH_WINDOW: u64 = 2 * MAX_MISSING as u64;
/// Gap edges (missing events whose state is fetched) per gap; more means the sender's graph
/// is unusually wide there, and the event is left to fail.
const MAX_EDGES: usize = 4;
/// State and auth events fetched for one edge.
const MAX_EDGE_EVENTS: usize = 5_000;

/// Fetches and appends the events between what this server has of a room and `event`. Errors
/// are logged: the caller then appends (or rejects) the event as it stands.
pub(crate) async fn fill(
    state: &State,
    origin: &ServerName,
    room_id: &RoomId,
    version: &RoomVersionId,
    event: &CanonicalJsonObject,
    event_id: &OwnedEventId,
) {
    if let Err(e) = try_fill(state, origin, room_id, version, event, event_id).await {
        tracing::info!(%room_id, %origin, event = %event_id, error = %e, "could not fill a gap in the room");
    }
}

fn depth_of(obj: &CanonicalJsonObject) -> u64 {
    match obj.get("depth") {
        Some(CanonicalJsonValue::Integer(i)) => u64::try_from(i64::from(*i)).unwrap_or(0),
        _ => 0,
    }
}

pub(crate) fn prevs_of(obj: &CanonicalJsonObject) -> Vec<OwnedEventId> {
    hearth_core::rooms::version::referenced_ids(obj.get("prev_events"))
}

async fn try_fill(
    state: &State,
    origin: &ServerName,
    room_id: &RoomId,
    version: &RoomVersionId,
    event: &CanonicalJsonObject,
    event_id: &OwnedEventId,
) -> Result<(), String> {
    let rooms = &state.core.rooms;
    let known = |id: &OwnedEventId| rooms.pdu(id).ok().flatten().is_some();
    let earliest = rooms.extremities(room_id).map_err(|e| e.to_string())?;
    let min_depth = depth_of(event).saturating_sub(DEPTH_WINDOW);

    // Checked events by (depth, id): oldest first when appended.
    let mut fetched: BTreeMap<(u64, OwnedEventId), CanonicalJsonObject> = BTreeMap::new();
    let mut have: HashSet<OwnedEventId> = HashSet::new();
    let mut latest = vec![event_id.clone()];
    while fetched.len() < MAX_MISSING && !latest.is_empty() {
        let limit = PER_ROUND.min(MAX_MISSING - fetched.len());
        let events = match missing_events(
            state, origin, room_id, &earliest, &latest, limit, min_depth,
        )
        .await
        {
            Ok(e) => e,
            Err(e) => {
                tracing::info!(%room_id, %origin, error = %e, "get_missing_events failed");
                break;
            }
        };
        let mut progress = false;
        for obj in events {
            if obj.get("room_id").and_then(|r| r.as_str()) != Some(room_id.as_str()) {
                continue;
            }
            // A forged or broken event is left out, as it would be from a transaction; what
            // builds on it is then refused for its unknown prev event.
            let checked = match check_signed_pdu(&state.federation, version, obj).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::info!(%room_id, %origin, error = %e.message, "a missing event failed its checks");
                    continue;
                }
            };
            if known(&checked.event_id) || !have.insert(checked.event_id.clone()) {
                continue;
            }
            progress = true;
            fetched.insert((depth_of(&checked.json), checked.event_id), checked.json);
        }
        if !progress {
            break;
        }
        // The next round walks back from the fetched events whose prevs are still missing.
        latest = fetched
            .iter()
            .filter(|(_, obj)| prevs_of(obj).iter().any(|p| !have.contains(p) && !known(p)))
            .map(|((_, id), _)| id.clone())
            .collect();
    }

    // What is still missing after the rounds: the far edges of the gap. When the sender gave
    // none of the missing events, the event is dropped (its prev events unknown), as Synapse
    // drops it: its state is not asked for at events the sender will not divulge.
    let mut edges: Vec<OwnedEventId> = fetched
        .values()
        .flat_map(prevs_of)
        .filter(|p| !have.contains(p) && !known(p))
        .collect();
    edges.sort();
    edges.dedup();
    if edges.len() > MAX_EDGES {
        return Err(format!("{} gap edges", edges.len()));
    }
    for edge in &edges {
        let edge_state =
            fetch_edge(&state.federation, rooms, origin, room_id, version, edge).await?;
        rooms
            .ingest_gap_edge(room_id, edge_state)
            .await
            .map_err(|e| e.to_string())?;
    }

    let count = fetched.len();
    for ((_, id), obj) in fetched {
        if let Err(e) = rooms.receive_remote(room_id, id.clone(), obj).await {
            tracing::info!(%room_id, event_id = %id, error = %e, "a missing event was rejected");
        }
    }
    tracing::info!(%room_id, %origin, fetched = count, edges = edges.len(), "filled a gap in the room");
    Ok(())
}

async fn missing_events(
    state: &State,
    origin: &ServerName,
    room_id: &RoomId,
    earliest: &[OwnedEventId],
    latest: &[OwnedEventId],
    limit: usize,
    min_depth: u64,
) -> Result<Vec<CanonicalJsonObject>, String> {
    let body = json!({
        "earliest_events": earliest,
        "latest_events": latest,
        "limit": limit,
        "min_depth": min_depth,
    });
    let path = format!(
        "/_matrix/federation/v1/get_missing_events/{}",
        seg(room_id.as_str())
    );
    let answer = state
        .federation
        .client
        .request(origin, http::Method::POST, &path, Some(&body))
        .await
        .map_err(|e| e.message)?;
    Ok(objects(&answer["events"]))
}

pub(crate) fn objects(list: &Value) -> Vec<CanonicalJsonObject> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|pdu| match CanonicalJsonValue::try_from(pdu.clone()) {
            Ok(CanonicalJsonValue::Object(obj)) => Some(obj),
            _ => None,
        })
        .collect()
}

/// One event, from `/event`, with its signatures checked.
async fn fetch_event(
    federation: &Federation,
    origin: &ServerName,
    version: &RoomVersionId,
    id: &OwnedEventId,
) -> Result<(OwnedEventId, CanonicalJsonObject), String> {
    let path = format!("/_matrix/federation/v1/event/{}", seg(id.as_str()));
    let answer = federation
        .client
        .request(origin, http::Method::GET, &path, None)
        .await
        .map_err(|e| e.message)?;
    let obj = objects(&answer["pdus"])
        .pop()
        .ok_or_else(|| format!("{origin} sent no PDU for {id}"))?;
    let checked = check_signed_pdu(federation, version, obj)
        .await
        .map_err(|e| e.message)?;
    if &checked.event_id != id {
        return Err(format!("{origin} sent another event for {id}"));
    }
    Ok((checked.event_id, checked.json))
}

/// The state before `edge` as `origin` has it, with every event of it (and of its auth chain)
/// this server lacks.
pub(crate) async fn fetch_edge(
    federation: &Federation,
    rooms: &Rooms,
    origin: &ServerName,
    room_id: &RoomId,
    version: &RoomVersionId,
    edge: &OwnedEventId,
) -> Result<GapEdge, String> {
    let path = format!(
        "/_matrix/federation/v1/state_ids/{}?event_id={}",
        seg(room_id.as_str()),
        seg(edge.as_str())
    );
    let answer = federation
        .client
        .request(origin, http::Method::GET, &path, None)
        .await
        .map_err(|e| e.message)?;
    let ids = |key: &str| -> Vec<OwnedEventId> {
        answer[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().and_then(|s| OwnedEventId::try_from(s).ok()))
            .collect()
    };
    let state_before = ids("pdu_ids");
    let mut need: Vec<OwnedEventId> = state_before
        .iter()
        .chain(ids("auth_chain_ids").iter())
        .filter(|id| rooms.pdu(id).ok().flatten().is_none())
        .cloned()
        .collect();
    need.sort();
    need.dedup();
    if need.len() > MAX_EDGE_EVENTS {
        return Err(format!("{} state events to fetch at a gap", need.len()));
    }
    let event = fetch_event(federation, origin, version, edge).await?;
    let results: Vec<Result<(OwnedEventId, CanonicalJsonObject), String>> =
        futures_util::stream::iter(need)
            .map(|id| async move { fetch_event(federation, origin, version, &id).await })
            .buffer_unordered(8)
            .collect()
            .await;
    let mut missing = Vec::with_capacity(results.len());
    for r in results {
        match r {
            Ok(e) => missing.push(e),
            // Left out of the state: the core keeps what it can authorise.
            Err(e) => {
                tracing::info!(%room_id, %origin, error = %e, "a state event at a gap could not be fetched")
            }
        }
    }
    Ok(GapEdge {
        event,
        state_before,
        missing,
    })
}
