use hearth_core::rooms::NewEvent;
use ruma::api::client::state::get_state_event_for_key::v3::StateEventFormat;
use ruma::api::client::state::{get_state_event_for_key, get_state_events, send_state_event};
use serde_json::Value;

use super::raw;
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Ruma;

pub async fn send_state(
    state: AppState,
    req: Ruma<send_state_event::v3::Request>,
) -> ApiResult<send_state_event::v3::Response> {
    let user = req.session().user_id.clone();
    let b = req.body;
    let content: Value =
        serde_json::from_str(b.body.json().get()).map_err(|e| ApiError::bad_json(e.to_string()))?;
    let kind = b.event_type.to_string();
    if kind == "m.room.canonical_alias" {
        state
            .core
            .directory
            .check_canonical_alias(&b.room_id, &content)
            .await?;
    }
    // The same state again from the same sender is the event already there, not a new one (as
    // Synapse deduplicates it): clients that re-send their settings make no noise in the room.
    if kind != "m.room.member"
        && let Ok(Some(current)) =
            state
                .core
                .rooms
                .visible_state_event(&b.room_id, &user, &kind, &b.state_key)
        && current.sender == user
        && current.content_value() == content
    {
        return Ok(send_state_event::v3::Response::new(
            current.event_id.clone(),
        ));
    }
    let pdu = state
        .core
        .rooms
        .send(
            &b.room_id,
            &user,
            NewEvent::state(&kind, &b.state_key, content),
        )
        .await?;
    Ok(send_state_event::v3::Response::new(pdu.event_id.clone()))
}

pub async fn get_state(
    state: AppState,
    req: Ruma<get_state_events::v3::Request>,
) -> ApiResult<get_state_events::v3::Response> {
    let user = req.session().user_id.clone();
    let events = state.core.rooms.visible_state(&req.body.room_id, &user)?;
    let s = req.session();
    let viewer = Some((&*s.user_id, s.device_id.as_str()));
    Ok(get_state_events::v3::Response::new(
        events
            .iter()
            .map(|e| raw(state.core.rooms.format(e, viewer, true)))
            .collect(),
    ))
}

pub async fn get_state_event(
    state: AppState,
    req: Ruma<get_state_event_for_key::v3::Request>,
) -> ApiResult<get_state_event_for_key::v3::Response> {
    let s = req.session();
    let b = &req.body;
    let kind = b.event_type.to_string();
    let rooms = &state.core.rooms;
    let ev = rooms
        .visible_state_event(&b.room_id, &s.user_id, &kind, &b.state_key)?
        .ok_or_else(|| ApiError::not_found("Event not found."))?;
    if b.format == StateEventFormat::Event {
        let event = rooms
            .timeline_event(&ev.event_id)?
            .ok_or_else(|| ApiError::not_found("Event not found."))?;
        let viewer = Some((&*s.user_id, s.device_id.as_str()));
        return Ok(get_state_event_for_key::v3::Response::new(
            rooms.format(&event, viewer, true),
        ));
    }
    Ok(get_state_event_for_key::v3::Response::new(
        ev.content.clone(),
    ))
}
