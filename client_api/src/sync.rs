//! `/sync` (spec: "Syncing").

use std::collections::BTreeMap;
use std::time::Duration;

use hearth_core::streams::SyncToken;
use hearth_core::sync::{RoomUpdate, SyncRequest};
use ruma::UInt;
use ruma::api::client::sync::sync_events::UnreadNotificationsCount;
use ruma::api::client::sync::sync_events::v3::{
    self, Filter, InviteState, InvitedRoom, JoinedRoom, LeftRoom, RoomSummary, State, StateEvents,
    Timeline,
};
use serde_json::value::{RawValue as RawJsonValue, to_raw_value};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Ruma;
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

/// A `/sync` answer: ruma's response, with its JSON completed where ruma's serialisation falls
/// short of what clients expect (see [`complete`]).
pub struct SyncAnswer {
    resp: v3::Response,
    knocks: Option<Box<RawJsonValue>>,
}

impl ruma::api::OutgoingResponse for SyncAnswer {
    fn try_into_http_response<T: Default + bytes::BufMut>(
        self,
    ) -> Result<http::Response<T>, ruma::api::error::IntoHttpError> {
        let (parts, body) = self.resp.try_into_http_response::<Vec<u8>>()?.into_parts();
        let mut out = T::default();
        out.put_slice(&complete(&body, self.knocks)?);
        Ok(http::Response::from_parts(parts, out))
    }
}

/// One level of a JSON object, its values kept as raw JSON: completing a `/sync` answer reads
/// and writes the few levels it touches and copies the events through untouched (a parse into
/// `serde_json::Value` made every long-poll of a 255-member fan-out half again as slow).
type Level = BTreeMap<String, Box<RawJsonValue>>;

/// What ruma leaves out of a `/sync` answer and clients (and SyTest) look for: every room's
/// `timeline` (with `limited`), `state`, `ephemeral` and `account_data`, even empty, and the
/// top-level `presence` and `account_data`, as Synapse sends them; and `rooms.knock`, which
/// ruma drops when it is the only section with something (its emptiness check forgets knocks).
fn complete(body: &[u8], knocks: Option<Box<RawJsonValue>>) -> serde_json::Result<Vec<u8>> {
    let raw = |s: &str| RawJsonValue::from_string(s.to_owned());
    let fill = |level: &mut Level, keys: &[&str], value: &str| -> serde_json::Result<()> {
        for key in keys {
            if !level.contains_key(*key) {
                level.insert((*key).to_owned(), raw(value)?);
            }
        }
        Ok(())
    };
    let mut top: Level = serde_json::from_slice(body)?;
    fill(&mut top, &["presence", "account_data"], r#"{"events":[]}"#)?;
    let mut rooms: Level = match top.get("rooms") {
        Some(r) => serde_json::from_str(r.get())?,
        None if knocks.is_some() => Level::new(),
        None => return serde_json::to_vec(&top),
    };
    if let Some(knocks) = knocks {
        rooms.insert("knock".to_owned(), knocks);
    }
    for (name, keys) in [
        ("join", &["state", "ephemeral", "account_data"][..]),
        ("leave", &["state", "account_data"][..]),
    ] {
        let Some(section) = rooms.get(name) else {
            continue;
        };
        let mut section: Level = serde_json::from_str(section.get())?;
        for room in section.values_mut() {
            let mut fields: Level = serde_json::from_str(room.get())?;
            fill(&mut fields, keys, r#"{"events":[]}"#)?;
            let mut timeline: Level = match fields.get("timeline") {
                Some(t) => serde_json::from_str(t.get())?,
                None => Level::new(),
            };
            fill(&mut timeline, &["events"], "[]")?;
            fill(&mut timeline, &["limited"], "false")?;
            fields.insert("timeline".to_owned(), to_raw_value(&timeline)?);
            *room = to_raw_value(&fields)?;
        }
        rooms.insert(name.to_owned(), to_raw_value(&section)?);
    }
    top.insert("rooms".to_owned(), to_raw_value(&rooms)?);
    serde_json::to_vec(&top)
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
        to_raw_value(&rooms).ok()
    });
    SyncAnswer {
        resp: ruma_response(out, state_after, thread_counts),
        knocks: knocks.flatten(),
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
