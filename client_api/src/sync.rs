//! `/sync` (spec: "Syncing").

use std::time::Duration;

use hearth_core::sync::{RoomUpdate, SyncRequest};
use ruma::UInt;
use ruma::api::client::sync::sync_events::v3::{
    self, Filter, InviteState, InvitedRoom, JoinedRoom, LeftRoom, RoomSummary, State, StateEvents,
    Timeline,
};

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::Ruma;
use crate::filter;
use crate::rooms::{parse_token, raw, token};

/// Long-polls longer than this are cut short; clients simply poll again.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn sync(state: AppState, req: Ruma<v3::Request>) -> ApiResult<v3::Response> {
    let s = req.session().clone();
    let b = req.body;
    let definition = match &b.filter {
        Some(Filter::FilterDefinition(d)) => d.clone(),
        Some(Filter::FilterId(id)) => filter::resolve(&state, &s.user_id, Some(id))?,
        Some(_) | None => Default::default(),
    };
    let since = b.since.as_deref().map(parse_token).transpose()?;
    let out = state
        .core
        .sync
        .sync(SyncRequest {
            user_id: s.user_id.clone(),
            device_id: s.device_id.to_string(),
            since,
            timeout: b.timeout.unwrap_or_default().min(MAX_TIMEOUT),
            full_state: b.full_state,
            filter: filter::sync_filter(&definition),
            state_after: b.use_state_after,
        })
        .await?;

    let state_of = |u: &RoomUpdate| {
        let events = StateEvents::with_events(u.state.iter().cloned().map(raw).collect());
        if b.use_state_after {
            State::After(events)
        } else {
            State::Before(events)
        }
    };
    let timeline_of = |u: &RoomUpdate| {
        let mut t = Timeline::new();
        t.limited = u.limited;
        t.prev_batch = u.prev_batch.map(token);
        t.events = u.timeline.iter().cloned().map(raw).collect();
        t
    };
    let mut resp = v3::Response::new(token(out.next_batch));
    resp.account_data.events = out.account_data.iter().cloned().map(raw).collect();
    for u in &out.joined {
        let mut room = JoinedRoom::new();
        room.timeline = timeline_of(u);
        room.state = state_of(u);
        if let Some(sum) = &u.summary {
            let mut summary = RoomSummary::new();
            summary.heroes = sum.heroes.clone();
            summary.joined_member_count = UInt::new(sum.joined);
            summary.invited_member_count = UInt::new(sum.invited);
            room.summary = summary;
        }
        room.account_data.events = u.account_data.iter().cloned().map(raw).collect();
        resp.rooms.join.insert(u.room_id.clone(), room);
    }
    for (room_id, invite_state) in out.invited {
        let events = invite_state.into_iter().map(raw).collect::<Vec<_>>();
        resp.rooms
            .invite
            .insert(room_id, InvitedRoom::from(InviteState::from(events)));
    }
    for u in &out.left {
        let mut room = LeftRoom::new();
        room.timeline = timeline_of(u);
        room.state = state_of(u);
        resp.rooms.leave.insert(u.room_id.clone(), room);
    }
    Ok(resp)
}
