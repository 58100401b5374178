use ruma::api::Direction;
use ruma::api::client::{context::get_context, message::get_message_events, room::get_room_event};

use hearth_core::rooms::history::TimelinePos;
use hearth_core::rooms::timeline::Reader;

use super::raw;
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Ruma;
use crate::filter::event_filter;

pub async fn messages(
    state: AppState,
    req: Ruma<get_message_events::v3::Request>,
) -> ApiResult<get_message_events::v3::Response> {
    let s = req.session().clone();
    let b = &req.body;
    let rooms = &state.core.rooms;
    if !rooms.exists(&b.room_id)? {
        return Err(ApiError::forbidden("You are not in this room"));
    }
    let access = rooms.access(&b.room_id, &s.user_id)?;
    let backwards = b.dir == Direction::Backward;
    let from = match &b.from {
        Some(t) => parse_position(t)?,
        None if backwards => TimelinePos::Live(access.max_pos),
        // The oldest point this server holds; what it backfills later goes before it.
        None => TimelinePos::History(u64::MAX),
    };
    let to = b.to.as_deref().map(parse_position).transpose()?;
    let mut filter = event_filter(&b.filter);
    filter.ignored_senders = state.core.account_data.ignored_users(&s.user_id)?;
    let limit = (u64::from(b.limit) as usize).clamp(1, 1000);
    let reader = Reader {
        user: &s.user_id,
        room_id: &b.room_id,
        access: &access,
        filter: &filter,
    };
    let page = rooms.messages(reader, from, to, backwards, limit).await?;

    let viewer = Some((&*s.user_id, s.device_id.as_str()));
    let mut resp = get_message_events::v3::Response::new();
    resp.start = from.to_string();
    resp.end = match page.end {
        Some(end) => Some(end.to_string()),
        // A chunk that reached the room's edge still has an end, as Synapse answers (clients
        // and SyTest expect one with every non-empty chunk); paging on from it gives an empty
        // chunk without one. A page that reached the caller's `to` has none: the range is done.
        None if !page.events.is_empty() && to.is_none() => Some(
            if backwards {
                TimelinePos::History(u64::MAX)
            } else {
                TimelinePos::Live(access.max_pos)
            }
            .to_string(),
        ),
        None => None,
    };
    resp.chunk = page
        .events
        .iter()
        .map(|e| raw(rooms.format(e, viewer, true)))
        .collect();
    if filter.lazy_load_members && !page.events.is_empty() {
        // Members as of the newest event of the page.
        let group = page
            .events
            .iter()
            .max_by_key(|e| TimelinePos::after(&e.meta))
            .map_or(0, |e| e.meta.state_after);
        let members =
            rooms.member_events_for(group, page.events.iter().map(|e| e.pdu.sender.to_string()))?;
        resp.state = members
            .iter()
            .map(|e| raw(rooms.format(e, viewer, true)))
            .collect();
    }
    Ok(resp)
}

pub async fn context(
    state: AppState,
    req: Ruma<get_context::v3::Request>,
) -> ApiResult<get_context::v3::Response> {
    let s = req.session().clone();
    let b = &req.body;
    let rooms = &state.core.rooms;
    let (ev, access) = rooms.visible_event(&b.room_id, &s.user_id, &b.event_id)?;
    let mut filter = event_filter(&b.filter);
    filter.ignored_senders = state.core.account_data.ignored_users(&s.user_id)?;
    let limit = u64::from(b.limit) as usize;
    let before_n = limit / 2;
    let after_n = limit - before_n;
    let (at, before_at) = (TimelinePos::after(&ev.meta), TimelinePos::before(&ev.meta));
    let reader = Reader {
        user: &s.user_id,
        room_id: &b.room_id,
        access: &access,
        filter: &filter,
    };
    let before = rooms.history_page(reader, before_at, true, before_n)?;
    let after = rooms.history_page(reader, at, false, after_n)?;
    let viewer = Some((&*s.user_id, s.device_id.as_str()));
    let mut resp = get_context::v3::Response::new();
    resp.start = Some(
        before
            .events
            .last()
            .map_or(before_at, |e| TimelinePos::before(&e.meta))
            .to_string(),
    );
    resp.end = Some(
        after
            .events
            .last()
            .map_or(at, |e| TimelinePos::after(&e.meta))
            .to_string(),
    );
    resp.events_before = before
        .events
        .iter()
        .map(|e| raw(rooms.format(e, viewer, true)))
        .collect();
    resp.event = Some(raw(rooms.format(&ev, viewer, true)));
    resp.events_after = after
        .events
        .iter()
        .map(|e| raw(rooms.format(e, viewer, true)))
        .collect();
    let last = after.events.last().unwrap_or(&ev);
    let state_events = rooms.state_events(last.meta.state_after)?;
    resp.state = state_events
        .iter()
        .filter(|e| {
            !filter.lazy_load_members
                || e.pdu.kind.to_string() != "m.room.member"
                || before
                    .events
                    .iter()
                    .chain(after.events.iter())
                    .chain([&ev])
                    .any(|t| e.pdu.state_key.as_deref() == Some(t.pdu.sender.as_str()))
        })
        .map(|e| raw(rooms.format(e, viewer, true)))
        .collect();
    Ok(resp)
}

fn parse_position(token: &str) -> ApiResult<TimelinePos> {
    token
        .parse()
        .map_err(|()| ApiError::invalid_param(format!("Invalid pagination token: {token}")))
}

pub async fn event(
    state: AppState,
    req: Ruma<get_room_event::v3::Request>,
) -> ApiResult<get_room_event::v3::Response> {
    let s = req.session().clone();
    let b = &req.body;
    let rooms = &state.core.rooms;
    // An event of a room one may not read is answered as missing, as Synapse does (its
    // /context answers 403).
    let (ev, _) = rooms
        .visible_event(&b.room_id, &s.user_id, &b.event_id)
        .map_err(|e| match e {
            hearth_core::Error::Forbidden(_) => hearth_core::Error::not_found("Event not found."),
            e => e,
        })?;
    let viewer = Some((&*s.user_id, s.device_id.as_str()));
    Ok(get_room_event::v3::Response::new(raw(
        rooms.format(&ev, viewer, true)
    )))
}
