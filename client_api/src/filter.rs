//! Filters (spec: "Filtering"): stored per user, applied by `/sync` and `/messages`.

use hearth_core::rooms::timeline::EventFilter;
use hearth_core::sync::SyncFilter;
use ruma::api::client::filter::{
    Filter, FilterDefinition, LazyLoadOptions, RoomEventFilter, create_filter, get_filter,
};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Ruma;

pub async fn create(
    state: AppState,
    req: Ruma<create_filter::v3::Request>,
) -> ApiResult<create_filter::v3::Response> {
    let s = req.session();
    if req.body.user_id != s.user_id {
        return Err(ApiError::forbidden("Cannot create filters for other users"));
    }
    let json =
        serde_json::to_string(&req.body.filter).map_err(|e| ApiError::bad_json(e.to_string()))?;
    let id = state.core.accounts.put_filter(&s.user_id, json).await?;
    Ok(create_filter::v3::Response::new(id.to_string()))
}

pub async fn get(
    state: AppState,
    req: Ruma<get_filter::v3::Request>,
) -> ApiResult<get_filter::v3::Response> {
    let s = req.session();
    if req.body.user_id != s.user_id {
        return Err(ApiError::forbidden("Cannot get filters of other users"));
    }
    let def = load(&state, &s.user_id, &req.body.filter_id)?;
    Ok(get_filter::v3::Response::new(def))
}

fn load(state: &AppState, user: &ruma::UserId, id: &str) -> ApiResult<FilterDefinition> {
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::not_found("No such filter"))?;
    // Filters never change once created, and clients send the same id with every sync.
    let key = (user.to_owned(), id);
    if let Some(def) = state.filters.lock().get(&key) {
        return Ok(def.clone());
    }
    let json = state
        .core
        .accounts
        .filter(user, id)?
        .ok_or_else(|| ApiError::not_found("No such filter"))?;
    let def: FilterDefinition =
        serde_json::from_str(&json).map_err(|e| ApiError::from(hearth_core::Error::internal(e)))?;
    state.filters.lock().put(key, def.clone());
    Ok(def)
}

/// Resolves `/sync`'s `filter` parameter: inline JSON or the id of a stored filter.
pub fn resolve(
    state: &AppState,
    user: &ruma::UserId,
    filter: Option<&str>,
) -> ApiResult<FilterDefinition> {
    match filter {
        None => Ok(FilterDefinition::default()),
        Some(f) if f.trim_start().starts_with('{') => {
            serde_json::from_str(f).map_err(|e| ApiError::bad_json(format!("Invalid filter: {e}")))
        }
        Some(id) => load(state, user, id),
    }
}

/// The parts every filter has (the room event filter and the plain one share them).
fn base_filter(
    types: &Option<Vec<String>>,
    not_types: &[String],
    senders: &Option<Vec<ruma::OwnedUserId>>,
    not_senders: &[ruma::OwnedUserId],
    limit: Option<ruma::UInt>,
) -> EventFilter {
    EventFilter {
        types: types.clone(),
        not_types: not_types.to_vec(),
        senders: senders
            .as_ref()
            .map(|s| s.iter().map(|u| u.to_string()).collect()),
        not_senders: not_senders.iter().map(|u| u.to_string()).collect(),
        limit: limit.map(|l| u64::from(l) as usize),
        ..Default::default()
    }
}

pub fn event_filter(f: &RoomEventFilter) -> EventFilter {
    let (lazy_load_members, include_redundant_members) = match &f.lazy_load_options {
        LazyLoadOptions::Enabled {
            include_redundant_members,
        } => (true, *include_redundant_members),
        _ => (false, false),
    };
    EventFilter {
        lazy_load_members,
        include_redundant_members,
        ..base_filter(&f.types, &f.not_types, &f.senders, &f.not_senders, f.limit)
    }
}

/// The non-room filter (account data, presence) as an event filter.
fn plain_filter(f: &Filter) -> EventFilter {
    base_filter(&f.types, &f.not_types, &f.senders, &f.not_senders, f.limit)
}

pub fn sync_filter(def: &FilterDefinition) -> SyncFilter {
    SyncFilter {
        timeline: event_filter(&def.room.timeline),
        state: event_filter(&def.room.state),
        rooms: def
            .room
            .rooms
            .as_ref()
            .map(|r| r.iter().map(|r| r.to_string()).collect()),
        not_rooms: def.room.not_rooms.iter().map(|r| r.to_string()).collect(),
        include_leave: def.room.include_leave,
        ephemeral: event_filter(&def.room.ephemeral),
        room_account_data: event_filter(&def.room.account_data),
        account_data: plain_filter(&def.account_data),
        presence: plain_filter(&def.presence),
        thread_counts: def.room.timeline.unread_thread_notifications,
        federation_format: def.event_format == ruma::api::client::filter::EventFormat::Federation,
    }
}
