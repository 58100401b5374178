//! `/sync` (spec: "Syncing").

use std::time::Duration;

use hearth_core::streams::SyncToken;
use hearth_core::sync::{RoomUpdate, SyncRequest};
use ruma::UInt;
use ruma::api::client::sync::sync_events::UnreadNotificationsCount;
use ruma::api::client::sync::sync_events::v3::{
    self, Filter, InviteState, InvitedRoom, JoinedRoom, LeftRoom, RoomSummary, State, StateEvents,
    Timeline,
};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Patched, Ruma};
use crate::rooms::{raw, token};
use crate::{filter, presence};

pub(crate) fn parse_sync_token(t: &str) -> ApiResult<SyncToken> {
    SyncToken::parse(t).ok_or_else(|| ApiError::invalid_param(format!("Invalid sync token: {t}")))
}

fn unread(c: hearth_core::unread::Counts) -> UnreadNotificationsCount {
    let mut u = UnreadNotificationsCount::new();
    u.notification_count = UInt::new(c.notification);
    u.highlight_count = UInt::new(c.highlight);
    u
}

/// Long-polls longer than this are cut short; clients simply poll again.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn sync(state: AppState, req: Ruma<v3::Request>) -> ApiResult<SyncAnswer> {
    // Only what the answer needs stays alive across the wait: the request and the parsed
    // filter are dropped here, which keeps an idle long-poll small.
    let (sync_req, state_after, thread_counts) = {
        let s = req.session();
        let b = &req.body;
        let definition = match &b.filter {
            Some(Filter::FilterDefinition(d)) => d.clone(),
            Some(Filter::FilterId(id)) => filter::resolve(&state, &s.user_id, Some(id))?,
            Some(_) | None => Default::default(),
        };
        let sync_req = SyncRequest {
            user_id: s.user_id.clone(),
            device_id: s.device_id.to_string(),
            since: b.since.as_deref().map(parse_sync_token).transpose()?,
            timeout: b.timeout.unwrap_or_default().min(MAX_TIMEOUT),
            full_state: b.full_state,
            filter: filter::sync_filter(&definition),
            state_after: b.use_state_after,
            set_presence: Some(presence::state_of(&b.set_presence)?),
            acknowledges: true,
        };
        (
            sync_req,
            b.use_state_after,
            definition.room.timeline.unread_thread_notifications,
        )
    };
    let session = req.session().clone();
    drop(req);
    let out = until_session_ends(&state, &session, state.core.sync.sync(sync_req)).await?;
    Ok(to_response(out, state_after, thread_counts))
}

/// Runs a long-poll unless the caller's session ends first (logout, device deletion): a
/// logged-out token must not go on receiving what it waited for.
pub(crate) async fn until_session_ends<T>(
    state: &AppState,
    session: &hearth_core::accounts::Session,
    poll: impl std::future::Future<Output = hearth_core::Result<T>>,
) -> ApiResult<T> {
    tokio::select! {
        // The end first: a poll woken by the logout's own commit must not answer.
        biased;
        () = state.core.accounts.session_ended(session) => {
            Err(hearth_core::Error::UnknownToken.into())
        }
        out = poll => Ok(out?),
    }
}

/// A `/sync` answer: ruma's response, with the JSON amended where ruma's serialisation falls
/// short of what clients expect (see `complete`).
pub type SyncAnswer = Patched<v3::Response>;

/// What ruma leaves out of a `/sync` answer and clients (and SyTest) look for: every room's
/// `timeline` (with `limited`), `state`, `ephemeral` and `account_data`, even empty, and the
/// top-level `presence` and `account_data`, as Synapse sends them; and `rooms.knock`, which
/// ruma drops when it is the only section with something (its emptiness check forgets knocks).
fn complete(value: &mut serde_json::Value, knocks: Option<serde_json::Value>) {
    use serde_json::{Value, json};
    let Some(top) = value.as_object_mut() else {
        return;
    };
    for key in ["presence", "account_data"] {
        top.entry(key).or_insert_with(|| json!({ "events": [] }));
    }
    if let Some(knocks) = knocks {
        let rooms = top.entry("rooms").or_insert_with(|| json!({}));
        rooms["knock"] = knocks;
    }
    let Some(rooms) = top.get_mut("rooms").and_then(Value::as_object_mut) else {
        return;
    };
    for (section, keys) in [
        ("join", &["state", "ephemeral", "account_data"][..]),
        ("leave", &["state", "account_data"][..]),
    ] {
        let Some(section) = rooms.get_mut(section).and_then(Value::as_object_mut) else {
            continue;
        };
        for room in section.values_mut().filter_map(Value::as_object_mut) {
            for key in keys {
                room.entry(*key).or_insert_with(|| json!({ "events": [] }));
            }
            let timeline = room
                .entry("timeline")
                .or_insert_with(|| json!({ "events": [] }));
            if let Some(timeline) = timeline.as_object_mut() {
                timeline.entry("events").or_insert_with(|| json!([]));
                timeline.entry("limited").or_insert(json!(false));
            }
        }
    }
}

/// The spec's `/sync` response for what the core computed (shared with the WebSocket transport).
pub(crate) fn to_response(
    out: hearth_core::sync::SyncResponse,
    state_after: bool,
    thread_counts: bool,
) -> SyncAnswer {
    let knocks = (!out.knocked.is_empty()).then(|| {
        let rooms: serde_json::Map<String, serde_json::Value> = out
            .knocked
            .iter()
            .map(|(room, state)| {
                let events: Vec<&serde_json::value::RawValue> =
                    state.iter().map(|e| &**e).collect();
                (
                    room.to_string(),
                    serde_json::json!({ "knock_state": { "events": events } }),
                )
            })
            .collect();
        serde_json::Value::Object(rooms)
    });
    Patched {
        resp: ruma_response(out, state_after, thread_counts),
        patch: Box::new(move |v| complete(v, knocks)),
    }
}

fn ruma_response(
    out: hearth_core::sync::SyncResponse,
    state_after: bool,
    thread_counts: bool,
) -> v3::Response {
    let state_of = |u: &RoomUpdate| {
        let events = StateEvents::with_events(u.state.iter().cloned().map(raw).collect());
        if state_after {
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
    let mut resp = v3::Response::new(out.next_batch.to_string());
    resp.account_data.events = out.account_data.into_iter().map(raw).collect();
    resp.presence.events = out.presence.into_iter().map(raw).collect();
    resp.to_device.events = out.to_device.into_iter().map(raw).collect();
    resp.device_lists.changed = out.device_lists.changed;
    resp.device_lists.left = out.device_lists.left;
    resp.device_one_time_keys_count = out
        .one_time_keys_count
        .into_iter()
        .map(|(alg, n)| (alg.as_str().into(), UInt::new_saturating(n)))
        .collect();
    resp.device_unused_fallback_key_types = Some(
        out.unused_fallback_key_types
            .iter()
            .map(|alg| alg.as_str().into())
            .collect(),
    );
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
        room.ephemeral.events = u.ephemeral.iter().cloned().map(raw).collect();
        if let Some(c) = &u.counts {
            if thread_counts {
                room.unread_notifications = unread(c.main);
                room.unread_thread_notifications = c
                    .threads
                    .iter()
                    .filter_map(|(t, c)| Some((ruma::EventId::parse(t).ok()?, unread(*c))))
                    .collect();
            } else {
                room.unread_notifications = unread(c.total());
            }
        }
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
    resp
}
