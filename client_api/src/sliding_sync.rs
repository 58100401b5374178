//! Simplified sliding sync (MSC4186): `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`.
//! The core computes it (`hearth_core::sliding_sync`); this maps ruma's types onto the core's.

use std::time::Duration;

use hearth_core::sliding_sync::{
    ExtensionScope, Hero as CoreHero, ListFilters, ListRequest, RoomConfig, ScopeRoom,
    SlidingRequest, SlidingRoom, ToDeviceRequest,
};
use ruma::UInt;
use ruma::api::client::sync::sync_events::UnreadNotificationsCount;
use ruma::api::client::sync::sync_events::v5::{self, request, response};
use ruma::directory::RoomTypeFilter;
use ruma::serde::Raw;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::Ruma;
use crate::presence;
use crate::rooms::raw;

/// Long-polls longer than this are cut short; clients simply poll again.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

fn config(required_state: &[(ruma::events::StateEventType, String)], limit: UInt) -> RoomConfig {
    RoomConfig {
        required_state: required_state
            .iter()
            .map(|(t, k)| (t.to_string(), k.clone()))
            .collect(),
        timeline_limit: u64::from(limit) as usize,
    }
}

fn room_types(filters: &[RoomTypeFilter]) -> Vec<Option<String>> {
    filters
        .iter()
        .map(|f| f.as_str().map(str::to_owned))
        .collect()
}

fn scope(
    enabled: Option<bool>,
    lists: &Option<Vec<String>>,
    rooms: &Option<Vec<request::ExtensionRoomConfig>>,
) -> ExtensionScope {
    ExtensionScope {
        enabled: enabled == Some(true),
        lists: lists.clone(),
        rooms: rooms.as_ref().map(|rs| {
            rs.iter()
                .map(|r| match r {
                    request::ExtensionRoomConfig::AllSubscribed => ScopeRoom::AllSubscribed,
                    request::ExtensionRoomConfig::Room(id) => ScopeRoom::Room(id.clone()),
                    _ => ScopeRoom::AllSubscribed,
                })
                .collect()
        }),
    }
}

pub async fn sync(state: AppState, req: Ruma<v5::Request>) -> ApiResult<v5::Response> {
    let s = req.session().clone();
    let b = req.body;
    let lists = b
        .lists
        .iter()
        .map(|(name, l)| {
            let f = l.filters.clone().unwrap_or_default();
            let list = ListRequest {
                ranges: l
                    .ranges
                    .iter()
                    .map(|(lo, hi)| (u64::from(*lo) as usize, u64::from(*hi) as usize))
                    .collect(),
                config: config(
                    &l.room_details.required_state,
                    l.room_details.timeline_limit,
                ),
                filters: ListFilters {
                    is_dm: f.is_dm,
                    is_encrypted: f.is_encrypted,
                    is_invite: f.is_invite,
                    room_types: room_types(&f.room_types),
                    not_room_types: room_types(&f.not_room_types),
                },
            };
            (name.clone(), list)
        })
        .collect();
    let e = &b.extensions;
    let core_req = SlidingRequest {
        user_id: s.user_id.clone(),
        device_id: s.device_id.to_string(),
        conn_id: b.conn_id.clone(),
        pos: b.pos.clone(),
        timeout: b.timeout.unwrap_or_default().min(MAX_TIMEOUT),
        set_presence: Some(presence::state_of(&b.set_presence)?),
        lists,
        subscriptions: b
            .room_subscriptions
            .iter()
            .map(|(id, sub)| (id.clone(), config(&sub.required_state, sub.timeline_limit)))
            .collect(),
        to_device: ToDeviceRequest {
            enabled: e.to_device.enabled == Some(true),
            since: e.to_device.since.clone(),
            limit: e.to_device.limit.map(|l| u64::from(l) as usize),
        },
        e2ee: e.e2ee.enabled == Some(true),
        account_data: scope(
            e.account_data.enabled,
            &e.account_data.lists,
            &e.account_data.rooms,
        ),
        receipts: scope(e.receipts.enabled, &e.receipts.lists, &e.receipts.rooms),
        typing: scope(e.typing.enabled, &e.typing.lists, &e.typing.rooms),
    };
    let txn_id = b.txn_id.clone();
    let out =
        crate::sync::until_session_ends(&state, &s, state.core.sliding_sync.sync(core_req)).await?;

    let mut resp = v5::Response::new(out.pos);
    resp.txn_id = txn_id;
    for (name, count) in out.lists {
        let mut list = response::List::default();
        list.count = UInt::new_saturating(count as u64);
        resp.lists.insert(name, list);
    }
    for (id, r) in out.rooms {
        resp.rooms.insert(id, room(r));
    }
    let ext = &mut resp.extensions;
    if let Some((next_batch, events)) = out.to_device {
        let mut td = response::ToDevice::default();
        td.next_batch = next_batch;
        td.events = events.into_iter().map(raw).collect();
        ext.to_device = Some(td);
    }
    ext.e2ee.device_lists.changed = out.device_lists.changed;
    ext.e2ee.device_lists.left = out.device_lists.left;
    if let Some(counts) = out.one_time_keys_count {
        ext.e2ee.device_one_time_keys_count = counts
            .into_iter()
            .map(|(alg, n)| (alg.as_str().into(), UInt::new_saturating(n)))
            .collect();
    }
    ext.e2ee.device_unused_fallback_key_types = out
        .unused_fallback_key_types
        .map(|types| types.iter().map(|alg| alg.as_str().into()).collect());
    ext.account_data.global = out.account_data_global.into_iter().map(raw).collect();
    ext.account_data.rooms = out
        .account_data_rooms
        .into_iter()
        .map(|(id, events)| (id, events.into_iter().map(raw).collect()))
        .collect();
    ext.receipts.rooms = out
        .receipts
        .into_iter()
        .map(|(id, r)| (id, Raw::from_json(r)))
        .collect();
    ext.typing.rooms = out
        .typing
        .into_iter()
        .map(|(id, t)| (id, Raw::from_json(t)))
        .collect();
    Ok(resp)
}

fn room(r: SlidingRoom) -> response::Room {
    let mut room = response::Room::new();
    room.name = r.name;
    room.avatar = match r.avatar {
        None => ruma::JsOption::Undefined,
        Some(None) => ruma::JsOption::Null,
        Some(Some(url)) => ruma::JsOption::Some(url.into()),
    };
    room.initial = r.initial.then_some(true);
    room.is_dm = r.is_dm.then_some(true);
    room.invite_state = r
        .invite_state
        .map(|events| events.into_iter().map(Raw::from_json).collect());
    if let Some(c) = r.counts {
        let mut u = UnreadNotificationsCount::new();
        u.notification_count = UInt::new(c.notification);
        u.highlight_count = UInt::new(c.highlight);
        room.unread_notifications = u;
    }
    room.timeline = r.timeline.into_iter().map(raw).collect();
    room.required_state = r.required_state.into_iter().map(raw).collect();
    room.prev_batch = r.prev_batch;
    room.limited = r.limited;
    room.joined_count = r.joined_count.map(UInt::new_saturating);
    room.invited_count = r.invited_count.map(UInt::new_saturating);
    room.num_live = r.num_live.map(UInt::new_saturating);
    room.bump_stamp = r.bump_stamp.map(UInt::new_saturating);
    room.heroes = r
        .heroes
        .map(|heroes| heroes.into_iter().map(hero).collect());
    room
}

fn hero(h: CoreHero) -> response::Hero {
    let mut out = response::Hero::new(h.user_id);
    out.name = h.displayname;
    out.avatar = h.avatar_url.map(Into::into);
    out
}
