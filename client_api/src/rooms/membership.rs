use ruma::api::client::knock::knock_room;
use ruma::api::client::membership::{
    ban_user, forget_room, invite_user, join_room_by_id, join_room_by_id_or_alias, joined_rooms,
    kick_user, leave_room, unban_user,
};
use ruma::{OwnedRoomId, RoomId};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Ruma;
use crate::rate_limit::{Action, Key};

/// What a join request asks to have in the member event: its body's keys (a `reason`, or
/// content of the client's own) but the signed third-party invite, which is not content.
fn requested_content(raw_body: &[u8]) -> serde_json::Map<String, serde_json::Value> {
    let mut body: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(raw_body).unwrap_or_default();
    body.remove("third_party_signed");
    body
}

async fn join(
    state: &AppState,
    user: &ruma::UserId,
    room_id: &RoomId,
    requested: &serde_json::Map<String, serde_json::Value>,
    via: &[ruma::OwnedServerName],
) -> ApiResult<OwnedRoomId> {
    state.limit(Action::Join, [Key::User(user.to_string())])?;
    state.limit(Action::JoinPerRoom, [Key::Room(room_id.to_string())])?;
    let profile = state.core.profiles.get(user)?;
    Ok(state
        .core
        .rooms
        .join(room_id, user, &profile, requested, via)
        .await?)
}

pub async fn join_by_id(
    state: AppState,
    req: Ruma<join_room_by_id::v3::Request>,
) -> ApiResult<join_room_by_id::v3::Response> {
    let user = req.session().user_id.clone();
    let room_id = join(
        &state,
        &user,
        &req.body.room_id,
        &requested_content(&req.raw_body),
        &[],
    )
    .await?;
    Ok(join_room_by_id::v3::Response::new(room_id))
}

/// A room id, or the room an alias names with the servers it names to join through.
async fn resolve(
    state: &AppState,
    id_or_alias: &str,
    via: Vec<ruma::OwnedServerName>,
) -> ApiResult<(OwnedRoomId, Vec<ruma::OwnedServerName>)> {
    if let Ok(id) = OwnedRoomId::try_from(id_or_alias) {
        return Ok((id, via));
    }
    let alias = ruma::RoomAliasId::parse(id_or_alias)
        .map_err(|_| ApiError::invalid_param("Neither a room id nor an alias"))?;
    let (room_id, servers) = state.core.directory.resolve(&alias).await?;
    Ok((room_id, if via.is_empty() { servers } else { via }))
}

pub async fn join_by_id_or_alias(
    state: AppState,
    req: Ruma<join_room_by_id_or_alias::v3::Request>,
) -> ApiResult<join_room_by_id_or_alias::v3::Response> {
    let user = req.session().user_id.clone();
    let (room_id, via) = resolve(&state, req.body.room_id_or_alias.as_str(), req.body.via).await?;
    let requested = requested_content(&req.raw_body);
    let room_id = join(&state, &user, &room_id, &requested, &via).await?;
    Ok(join_room_by_id_or_alias::v3::Response::new(room_id))
}

pub async fn knock(
    state: AppState,
    req: Ruma<knock_room::v3::Request>,
) -> ApiResult<knock_room::v3::Response> {
    let user = req.session().user_id.clone();
    let (room_id, via) = resolve(
        &state,
        req.body.room_id_or_alias.as_str(),
        req.body.via.clone(),
    )
    .await?;
    let profile = state.core.profiles.get(&user)?;
    state
        .core
        .rooms
        .knock(&room_id, &user, &profile, req.body.reason.as_deref(), &via)
        .await?;
    Ok(knock_room::v3::Response::new(room_id))
}

pub async fn invite(
    state: AppState,
    req: Ruma<invite_user::v3::Request>,
) -> ApiResult<invite_user::v3::Response> {
    let user = req.session().user_id.clone();
    let invite_user::v3::InvitationRecipient::UserId(invitee) = &req.body.recipient else {
        return Err(ApiError::forbidden("Third party invites are not supported"));
    };
    let target = &invitee.user_id;
    state.limit(
        Action::InvitePerRoom,
        [Key::Room(req.body.room_id.to_string())],
    )?;
    state.limit(Action::InvitePerUser, [Key::User(target.to_string())])?;
    state.limit(Action::InvitePerIssuer, [Key::User(user.to_string())])?;
    // Local invitees get their profile in the invite, as Synapse does.
    let profile = state.core.profiles.get(target).ok();
    state
        .core
        .rooms
        .invite(
            &req.body.room_id,
            &user,
            target,
            profile.as_ref(),
            invitee.reason.as_deref(),
        )
        .await?;
    Ok(invite_user::v3::Response::new())
}

pub async fn leave(
    state: AppState,
    req: Ruma<leave_room::v3::Request>,
) -> ApiResult<leave_room::v3::Response> {
    let user = req.session().user_id.clone();
    state
        .core
        .rooms
        .leave(&req.body.room_id, &user, req.body.reason.as_deref())
        .await?;
    Ok(leave_room::v3::Response::new())
}

pub async fn kick(
    state: AppState,
    req: Ruma<kick_user::v3::Request>,
) -> ApiResult<kick_user::v3::Response> {
    let user = req.session().user_id.clone();
    state
        .core
        .rooms
        .kick(
            &req.body.room_id,
            &user,
            &req.body.user_id,
            req.body.reason.as_deref(),
        )
        .await?;
    Ok(kick_user::v3::Response::new())
}

pub async fn ban(
    state: AppState,
    req: Ruma<ban_user::v3::Request>,
) -> ApiResult<ban_user::v3::Response> {
    let user = req.session().user_id.clone();
    state
        .core
        .rooms
        .ban(
            &req.body.room_id,
            &user,
            &req.body.user_id,
            req.body.reason.as_deref(),
        )
        .await?;
    Ok(ban_user::v3::Response::new())
}

pub async fn unban(
    state: AppState,
    req: Ruma<unban_user::v3::Request>,
) -> ApiResult<unban_user::v3::Response> {
    let user = req.session().user_id.clone();
    state
        .core
        .rooms
        .unban(
            &req.body.room_id,
            &user,
            &req.body.user_id,
            req.body.reason.as_deref(),
        )
        .await?;
    Ok(unban_user::v3::Response::new())
}

pub async fn forget(
    state: AppState,
    req: Ruma<forget_room::v3::Request>,
) -> ApiResult<forget_room::v3::Response> {
    let user = req.session().user_id.clone();
    state.core.rooms.forget(&req.body.room_id, &user).await?;
    Ok(forget_room::v3::Response::new())
}

pub async fn joined_rooms(
    state: AppState,
    req: Ruma<joined_rooms::v3::Request>,
) -> ApiResult<joined_rooms::v3::Response> {
    Ok(joined_rooms::v3::Response::new(
        state.core.rooms.joined_rooms(&req.session().user_id)?,
    ))
}
