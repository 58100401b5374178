//! `POST /search` (spec: "Server Side Search"): `room_events` with ranking or recency, filters,
//! event context, room state, groupings and highlights.
//!
//! A plain handler rather than ruma's request type: the filter may carry Hearth's date range
//! (`hearth.since_ts`, `hearth.until_ts`), which ruma's `RoomEventFilter` would drop.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use hearth_core::rooms::timeline::TimelineEvent;
use hearth_core::search::{SearchOrder, SearchQuery, SearchResults};
use ruma::api::client::filter::RoomEventFilter;
use ruma::{RoomId, UserId};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, JsonBody, QueryParams};
use crate::filter::event_filter;
use crate::rooms::token;

#[derive(Deserialize)]
pub struct Params {
    next_batch: Option<String>,
}

#[derive(Deserialize)]
struct Body {
    search_categories: Categories,
}

#[derive(Deserialize)]
struct Categories {
    room_events: Option<RoomEvents>,
}

#[derive(Deserialize)]
struct RoomEvents {
    search_term: String,
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    filter: Option<Value>,
    order_by: Option<String>,
    event_context: Option<EventContext>,
    #[serde(default)]
    include_state: bool,
    groupings: Option<Groupings>,
}

#[derive(Deserialize)]
struct EventContext {
    before_limit: Option<u32>,
    after_limit: Option<u32>,
    #[serde(default)]
    include_profile: bool,
}

#[derive(Deserialize)]
struct Groupings {
    #[serde(default)]
    group_by: Vec<GroupBy>,
}

#[derive(Deserialize)]
struct GroupBy {
    key: String,
}

/// Synapse's default page of search results.
const DEFAULT_LIMIT: usize = 10;

pub async fn search(
    State(state): State<AppState>,
    Auth(s): Auth,
    QueryParams(params): QueryParams<Params>,
    JsonBody(body): JsonBody,
) -> ApiResult<Json<Value>> {
    let body: Body = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_json(format!("Invalid search query: {e}")))?;
    let Some(req) = body.search_categories.room_events else {
        return Ok(Json(json!({ "search_categories": {} })));
    };
    for key in &req.keys {
        if !hearth_core::search::ALL_KEYS.contains(&key.as_str()) {
            return Err(ApiError::invalid_param(format!("Unknown search key {key}")));
        }
    }
    let order = match req.order_by.as_deref() {
        None | Some("rank") => SearchOrder::Rank,
        Some("recent") => SearchOrder::Recent,
        Some(other) => {
            return Err(ApiError::invalid_param(format!(
                "order_by must be rank or recent, not {other}"
            )));
        }
    };
    let raw_filter = req.filter.clone().unwrap_or_else(|| json!({}));
    let filter: RoomEventFilter = serde_json::from_value(raw_filter.clone())
        .map_err(|e| ApiError::bad_json(format!("Invalid filter: {e}")))?;
    let strings = |v: &Value| -> Option<Vec<String>> {
        v.as_array().map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
    };
    let ts = |key: &str| -> ApiResult<Option<u64>> {
        match &raw_filter[key] {
            Value::Null => Ok(None),
            v => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| ApiError::invalid_param(format!("{key} must be a timestamp"))),
        }
    };
    let query = SearchQuery {
        term: req.search_term.clone(),
        keys: req.keys.clone(),
        filter: event_filter(&filter),
        rooms: strings(&raw_filter["rooms"]),
        not_rooms: strings(&raw_filter["not_rooms"]).unwrap_or_default(),
        since_ts: ts("hearth.since_ts")?,
        until_ts: ts("hearth.until_ts")?,
        order,
        next_batch: params.next_batch,
        limit: filter
            .limit
            .map_or(DEFAULT_LIMIT, |l| u64::from(l) as usize),
    };
    let results = state.core.search.search(&s.user_id, query).await?;
    let viewer = (&*s.user_id, s.device_id.as_str());
    let answer = room_events(&state, viewer, &req, results)?;
    Ok(Json(
        json!({ "search_categories": { "room_events": answer } }),
    ))
}

#[allow(clippy::boxed_local)] // takes what `Rooms::format` returns
fn to_value(raw: Box<serde_json::value::RawValue>) -> Value {
    serde_json::from_str(raw.get()).unwrap_or_default()
}

fn room_events(
    state: &AppState,
    viewer: (&UserId, &str),
    req: &RoomEvents,
    found: SearchResults,
) -> ApiResult<Value> {
    let rooms = &state.core.rooms;
    let mut results = Vec::with_capacity(found.hits.len());
    for hit in &found.hits {
        let mut result = json!({
            "rank": hit.rank,
            "result": to_value(rooms.format(&hit.event, Some(viewer), true)),
        });
        if let Some(ctx) = &req.event_context {
            result["context"] = context(state, viewer, &hit.event, ctx)?;
        }
        results.push(result);
    }
    let mut answer = json!({
        "count": found.count,
        "highlights": found.highlights,
        "results": results,
    });
    if let Some(next) = &found.next_batch {
        answer["next_batch"] = json!(next);
    }
    if req.include_state {
        let mut states = Map::new();
        for hit in &found.hits {
            let room = hit.event.pdu.room_id.as_str();
            if states.contains_key(room) {
                continue;
            }
            let events: Vec<Value> = rooms
                .visible_state(&hit.event.pdu.room_id, viewer.0)?
                .iter()
                .map(|e| to_value(rooms.format(e, Some(viewer), true)))
                .collect();
            states.insert(room.to_owned(), json!(events));
        }
        answer["state"] = Value::Object(states);
    }
    if let Some(groupings) = &req.groupings {
        let mut groups = Map::new();
        for g in &groupings.group_by {
            let key_of = |e: &TimelineEvent| match g.key.as_str() {
                "room_id" => Some(e.pdu.room_id.to_string()),
                "sender" => Some(e.pdu.sender.to_string()),
                _ => None,
            };
            // Groups in the order of their best result; each lists its results' event ids.
            let mut by: BTreeMap<String, (usize, Vec<String>)> = BTreeMap::new();
            for (i, hit) in found.hits.iter().enumerate() {
                if let Some(k) = key_of(&hit.event) {
                    let entry = by.entry(k).or_insert((i, Vec::new()));
                    entry.1.push(hit.event.pdu.event_id.to_string());
                }
            }
            let mut out = Map::new();
            for (k, (order, ids)) in by {
                let mut group = json!({ "order": order, "results": ids });
                if let Some(next) = &found.next_batch {
                    group["next_batch"] = json!(next);
                }
                out.insert(k, group);
            }
            groups.insert(g.key.clone(), Value::Object(out));
        }
        answer["groups"] = Value::Object(groups);
    }
    Ok(answer)
}

/// Events around a hit, as `/context` gives them, and optionally their senders' profiles.
fn context(
    state: &AppState,
    viewer: (&UserId, &str),
    ev: &TimelineEvent,
    ctx: &EventContext,
) -> ApiResult<Value> {
    let rooms = &state.core.rooms;
    let room: &RoomId = &ev.pdu.room_id;
    let access = rooms.access(room, viewer.0)?;
    let all = hearth_core::rooms::timeline::EventFilter::default();
    let before_limit = ctx.before_limit.unwrap_or(5).min(100) as usize;
    let after_limit = ctx.after_limit.unwrap_or(5).min(100) as usize;
    let pos = ev.meta.pos;
    let reader = hearth_core::rooms::timeline::Reader {
        user: viewer.0,
        room_id: room,
        access: &access,
        filter: &all,
    };
    let (before, after) = (
        if before_limit > 0 {
            rooms
                .page(reader, pos - 1, None, true, before_limit)?
                .events
        } else {
            Vec::new()
        },
        if after_limit > 0 {
            rooms.page(reader, pos, None, false, after_limit)?.events
        } else {
            Vec::new()
        },
    );
    let start = before.last().map_or(pos - 1, |e| e.meta.pos - 1);
    let end = after.last().map_or(pos, |e| e.meta.pos);
    let fmt = |events: &[TimelineEvent]| -> Vec<Value> {
        events
            .iter()
            .map(|e| to_value(rooms.format(e, Some(viewer), true)))
            .collect()
    };
    let mut out = json!({
        "start": token(start),
        "end": token(end),
        "events_before": fmt(&before),
        "events_after": fmt(&after),
    });
    if ctx.include_profile {
        let mut profiles = Map::new();
        for e in before.iter().chain(after.iter()).chain(std::iter::once(ev)) {
            let sender = e.pdu.sender.to_string();
            if profiles.contains_key(&sender) {
                continue;
            }
            let member = rooms.state_event(room, "m.room.member", &sender)?;
            let content = member.map(|m| m.content_value()).unwrap_or_default();
            let mut p = Map::new();
            for field in ["displayname", "avatar_url"] {
                if let Some(v) = content[field].as_str() {
                    p.insert(field.into(), json!(v));
                }
            }
            profiles.insert(sender, Value::Object(p));
        }
        out["profile_info"] = Value::Object(profiles);
    }
    Ok(out)
}
