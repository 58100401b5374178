//! Relations (spec: "Forming relationships between events", "Threading"): `/relations` in its
//! three path shapes, and `/threads`.

use hearth_core::rooms::relations::{RelationsPage, RelationsQuery};
use ruma::api::Direction;
use ruma::api::client::relations::{
    get_relating_events, get_relating_events_with_rel_type,
    get_relating_events_with_rel_type_and_event_type,
};
use ruma::serde::Raw;
use ruma::{EventId, OwnedUserId, RoomId, UInt};

use super::{parse_token, raw, token};
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, QueryParams, Ruma};
use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

/// What the three `/relations` requests have in common.
struct Params<'a> {
    room_id: &'a RoomId,
    event_id: &'a EventId,
    from: Option<&'a str>,
    to: Option<&'a str>,
    dir: Direction,
    limit: Option<UInt>,
    recurse: bool,
}

/// The chunk, `next_batch` and `recursion_depth` of a `/relations` answer.
type Answer<T> = (Vec<Raw<T>>, Option<String>, Option<UInt>);

fn relations<T>(
    state: &AppState,
    user: &OwnedUserId,
    device: &str,
    p: Params<'_>,
    rel_type: Option<String>,
    event_type: Option<String>,
) -> ApiResult<Answer<T>> {
    let query = RelationsQuery {
        rel_type,
        event_type,
        from: p.from.map(parse_token).transpose()?,
        to: p.to.map(parse_token).transpose()?,
        forwards: p.dir == Direction::Forward,
        // Synapse's default page.
        limit: p.limit.map_or(5, |l| u64::from(l) as usize),
        recurse: p.recurse,
    };
    let rooms = &state.core.rooms;
    let RelationsPage {
        events,
        next,
        recursion_depth,
    } = rooms.relations(user, p.room_id, p.event_id, &query)?;
    let viewer = Some((&**user, device));
    let chunk = events
        .iter()
        .map(|e| raw(rooms.format(e, viewer, true)))
        .collect();
    Ok((
        chunk,
        next.map(token),
        recursion_depth.map(|d| UInt::from(d as u32)),
    ))
}

pub async fn all(
    state: AppState,
    req: Ruma<get_relating_events::v1::Request>,
) -> ApiResult<get_relating_events::v1::Response> {
    let s = req.session().clone();
    let b = &req.body;
    let p = Params {
        room_id: &b.room_id,
        event_id: &b.event_id,
        from: b.from.as_deref(),
        to: b.to.as_deref(),
        dir: b.dir,
        limit: b.limit,
        recurse: b.recurse,
    };
    let (chunk, next, depth) = relations(&state, &s.user_id, s.device_id.as_str(), p, None, None)?;
    let mut resp = get_relating_events::v1::Response::new(chunk);
    resp.next_batch = next;
    resp.recursion_depth = depth;
    Ok(resp)
}

pub async fn by_rel_type(
    state: AppState,
    req: Ruma<get_relating_events_with_rel_type::v1::Request>,
) -> ApiResult<get_relating_events_with_rel_type::v1::Response> {
    let s = req.session().clone();
    let b = &req.body;
    let p = Params {
        room_id: &b.room_id,
        event_id: &b.event_id,
        from: b.from.as_deref(),
        to: b.to.as_deref(),
        dir: b.dir,
        limit: b.limit,
        recurse: b.recurse,
    };
    let rel_type = Some(b.rel_type.to_string());
    let (chunk, next, depth) =
        relations(&state, &s.user_id, s.device_id.as_str(), p, rel_type, None)?;
    let mut resp = get_relating_events_with_rel_type::v1::Response::new(chunk);
    resp.next_batch = next;
    resp.recursion_depth = depth;
    Ok(resp)
}

pub async fn by_rel_and_event_type(
    state: AppState,
    req: Ruma<get_relating_events_with_rel_type_and_event_type::v1::Request>,
) -> ApiResult<get_relating_events_with_rel_type_and_event_type::v1::Response> {
    let s = req.session().clone();
    let b = &req.body;
    let p = Params {
        room_id: &b.room_id,
        event_id: &b.event_id,
        from: b.from.as_deref(),
        to: b.to.as_deref(),
        dir: b.dir,
        limit: b.limit,
        recurse: b.recurse,
    };
    let rel_type = Some(b.rel_type.to_string());
    let event_type = Some(b.event_type.to_string());
    let (chunk, next, depth) = relations(
        &state,
        &s.user_id,
        s.device_id.as_str(),
        p,
        rel_type,
        event_type,
    )?;
    let mut resp = get_relating_events_with_rel_type_and_event_type::v1::Response::new(chunk);
    resp.next_batch = next;
    resp.recursion_depth = depth;
    Ok(resp)
}

#[derive(serde::Deserialize)]
pub struct ThreadsQuery {
    from: Option<String>,
    #[serde(default)]
    include: Option<String>,
    limit: Option<u32>,
}

/// `/threads`. A plain handler: ruma's incoming request type insists on `include`, which the
/// spec makes optional and clients (matrix-sdk among them) leave out.
pub async fn threads(
    State(state): State<AppState>,
    Auth(s): Auth,
    Path(room_id): Path<String>,
    QueryParams(q): QueryParams<ThreadsQuery>,
) -> ApiResult<Json<Value>> {
    let room_id = RoomId::parse(&room_id)
        .map_err(|_| ApiError::invalid_param(format!("Invalid room id: {room_id}")))?;
    let participated = match q.include.as_deref() {
        None | Some("all") => false,
        Some("participated") => true,
        Some(other) => {
            return Err(ApiError::invalid_param(format!(
                "include must be all or participated, not {other}"
            )));
        }
    };
    let from = q.from.as_deref().map(parse_token).transpose()?;
    let limit = q.limit.map_or(10, |l| l as usize);
    let rooms = &state.core.rooms;
    let (roots, next) = rooms.threads(&s.user_id, &room_id, participated, from, limit)?;
    let viewer = Some((&*s.user_id, s.device_id.as_str()));
    let chunk: Vec<Value> = roots
        .iter()
        .map(|e| serde_json::from_str(rooms.format(e, viewer, true).get()).unwrap_or_default())
        .collect();
    let mut resp = json!({ "chunk": chunk });
    if let Some(next) = next {
        resp["next_batch"] = json!(token(next));
    }
    Ok(Json(resp))
}
