//! Room aliases (spec: "Room aliases"), the room directory ("Listing rooms") and the user
//! directory ("User directory"). The logic is `hearth_core::directory`.

use hearth_core::directory::PublicRoom;
use ruma::api::client::alias::{create_alias, delete_alias, get_alias};
use ruma::api::client::directory::{
    get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility,
};
use ruma::api::client::room::{Visibility, aliases};
use ruma::api::client::user_directory::search_users;
use ruma::directory::{PublicRoomsChunk, PublicRoomsChunkInit, RoomTypeFilter};
use ruma::room::{JoinRuleKind, RoomType};
use ruma::{OwnedRoomAliasId, UInt};

use crate::AppState;
use crate::admin::is_admin;
use crate::error::{ApiError, ApiResult};
use crate::extract::Ruma;

pub async fn put_alias(
    state: AppState,
    req: Ruma<create_alias::v3::Request>,
) -> ApiResult<create_alias::v3::Response> {
    let user = req.session().user_id.clone();
    let b = req.body;
    state
        .core
        .directory
        .put_alias(&user, &b.room_alias, &b.room_id)
        .await?;
    Ok(create_alias::v3::Response::new())
}

pub async fn get_alias(
    state: AppState,
    req: Ruma<get_alias::v3::Request>,
) -> ApiResult<get_alias::v3::Response> {
    let (room_id, servers) = state.core.directory.resolve(&req.body.room_alias).await?;
    Ok(get_alias::v3::Response::new(room_id, servers))
}

pub async fn delete_alias(
    state: AppState,
    req: Ruma<delete_alias::v3::Request>,
) -> ApiResult<delete_alias::v3::Response> {
    let user = req.session().user_id.clone();
    let admin = is_admin(&state, &user)?;
    state
        .core
        .directory
        .delete_alias(&user, &req.body.room_alias, admin)
        .await?;
    Ok(delete_alias::v3::Response::new())
}

pub async fn room_aliases(
    state: AppState,
    req: Ruma<aliases::v3::Request>,
) -> ApiResult<aliases::v3::Response> {
    let list = state
        .core
        .directory
        .room_aliases(&req.session().user_id, &req.body.room_id)?
        .into_iter()
        .filter_map(|a| OwnedRoomAliasId::try_from(a).ok())
        .collect();
    Ok(aliases::v3::Response::new(list))
}

pub async fn visibility(
    state: AppState,
    req: Ruma<get_room_visibility::v3::Request>,
) -> ApiResult<get_room_visibility::v3::Response> {
    let public = state.core.directory.is_public(&req.body.room_id)?;
    Ok(get_room_visibility::v3::Response::new(if public {
        Visibility::Public
    } else {
        Visibility::Private
    }))
}

pub async fn set_visibility(
    state: AppState,
    req: Ruma<set_room_visibility::v3::Request>,
) -> ApiResult<set_room_visibility::v3::Response> {
    let user = req.session().user_id.clone();
    let public = match req.body.visibility {
        Visibility::Public => true,
        Visibility::Private => false,
        _ => return Err(ApiError::invalid_param("Unknown visibility")),
    };
    state
        .core
        .directory
        .set_public(&user, &req.body.room_id, public)
        .await?;
    Ok(set_room_visibility::v3::Response::new())
}

fn chunk(r: PublicRoom) -> PublicRoomsChunk {
    let mut c: PublicRoomsChunk = PublicRoomsChunkInit {
        num_joined_members: UInt::new_saturating(r.joined_members),
        room_id: r.room_id,
        world_readable: r.world_readable,
        guest_can_join: r.guest_can_join,
    }
    .into();
    c.name = r.name;
    c.topic = r.topic;
    c.canonical_alias = r.canonical_alias.and_then(|a| a.try_into().ok());
    c.avatar_url = r.avatar_url.map(Into::into);
    c.join_rule = r
        .join_rule
        .map_or(JoinRuleKind::Public, |j| j.as_str().into());
    c.room_type = r.room_type.map(|t| RoomType::from(t.as_str()));
    c
}

/// The server a room list request names, if it is another one.
fn other_server<'a>(
    server: Option<&'a ruma::ServerName>,
    state: &AppState,
) -> Option<&'a ruma::ServerName> {
    server.filter(|s| *s != state.core.config.server_name)
}

/// A room list of another server, asked over federation (`POST /publicRooms`).
async fn remote_list(
    state: &AppState,
    server: &ruma::ServerName,
    body: serde_json::Value,
) -> ApiResult<(
    Vec<PublicRoomsChunk>,
    Option<String>,
    Option<String>,
    Option<UInt>,
)> {
    let answer = state
        .core
        .directory
        .remote_public_rooms(server, body)
        .await?;
    let chunk = answer["chunk"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| serde_json::from_value(r.clone()).ok())
                .collect()
        })
        .unwrap_or_default();
    let text = |k: &str| answer[k].as_str().map(str::to_owned);
    let total = answer["total_room_count_estimate"]
        .as_u64()
        .map(UInt::new_saturating);
    Ok((chunk, text("next_batch"), text("prev_batch"), total))
}

pub async fn public_rooms(
    state: AppState,
    req: Ruma<get_public_rooms::v3::Request>,
) -> ApiResult<get_public_rooms::v3::Response> {
    let b = req.body;
    if let Some(server) = other_server(b.server.as_deref(), &state) {
        let mut body = serde_json::json!({});
        if let Some(l) = b.limit {
            body["limit"] = u64::from(l).into();
        }
        if let Some(since) = &b.since {
            body["since"] = since.as_str().into();
        }
        let (chunk, next, prev, total) = remote_list(&state, server, body).await?;
        let mut resp = get_public_rooms::v3::Response::new(chunk);
        resp.next_batch = next;
        resp.prev_batch = prev;
        resp.total_room_count_estimate = total;
        return Ok(resp);
    }
    let page = state.core.directory.public_rooms(
        None,
        None,
        b.limit.map(|l| u64::from(l) as usize),
        b.since.as_deref(),
    )?;
    let mut resp = get_public_rooms::v3::Response::new(page.chunk.into_iter().map(chunk).collect());
    resp.next_batch = page.next_batch;
    resp.prev_batch = page.prev_batch;
    resp.total_room_count_estimate = Some(UInt::new_saturating(page.total as u64));
    Ok(resp)
}

pub async fn public_rooms_filtered(
    state: AppState,
    req: Ruma<get_public_rooms_filtered::v3::Request>,
) -> ApiResult<get_public_rooms_filtered::v3::Response> {
    let b = req.body;
    if let Some(server) = other_server(b.server.as_deref(), &state) {
        let mut body = serde_json::json!({ "filter": b.filter });
        if let Some(l) = b.limit {
            body["limit"] = u64::from(l).into();
        }
        if let Some(since) = &b.since {
            body["since"] = since.as_str().into();
        }
        let (chunk, next, prev, total) = remote_list(&state, server, body).await?;
        let mut resp = get_public_rooms_filtered::v3::Response::new();
        resp.chunk = chunk;
        resp.next_batch = next;
        resp.prev_batch = prev;
        resp.total_room_count_estimate = total;
        return Ok(resp);
    }
    let types: Vec<Option<String>> = b
        .filter
        .room_types
        .iter()
        .map(|t: &RoomTypeFilter| t.as_str().map(str::to_owned))
        .collect();
    let page = state.core.directory.public_rooms(
        b.filter.generic_search_term.as_deref(),
        Some(&types),
        b.limit.map(|l| u64::from(l) as usize),
        b.since.as_deref(),
    )?;
    let mut resp = get_public_rooms_filtered::v3::Response::new();
    resp.chunk = page.chunk.into_iter().map(chunk).collect();
    resp.next_batch = page.next_batch;
    resp.prev_batch = page.prev_batch;
    resp.total_room_count_estimate = Some(UInt::new_saturating(page.total as u64));
    Ok(resp)
}

pub async fn search_users(
    state: AppState,
    req: Ruma<search_users::v3::Request>,
) -> ApiResult<search_users::v3::Response> {
    let user = req.session().user_id.clone();
    let limit = u64::from(req.body.limit).clamp(1, 1000) as usize;
    let (found, limited) =
        state
            .core
            .directory
            .search_users(&user, &req.body.search_term, limit)?;
    let results = found
        .into_iter()
        .map(|f| {
            let mut u = search_users::v3::User::new(f.user_id);
            u.display_name = f.display_name;
            u.avatar_url = f.avatar_url.map(Into::into);
            u
        })
        .collect();
    Ok(search_users::v3::Response::new(results, limited))
}
