use std::collections::BTreeMap;

use ruma::api::client::membership::{get_member_events, joined_members};
use ruma::events::room::member::MembershipState;

use super::{parse_token, raw};
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Patched, Ruma};

pub async fn members(
    state: AppState,
    req: Ruma<get_member_events::v3::Request>,
) -> ApiResult<get_member_events::v3::Response> {
    let s = req.session().clone();
    let b = &req.body;
    let rooms = &state.core.rooms;
    let access = rooms.access(&b.room_id, &s.user_id)?;
    let at = match &b.at {
        Some(t) => parse_token(t)?.min(access.max_pos),
        None => access.max_pos,
    };
    let group = rooms
        .state_group_at(&b.room_id, at)?
        .ok_or_else(|| ApiError::not_found("Room not found"))?;
    let wanted = |m: &str| {
        let m = MembershipState::from(m);
        b.membership
            .as_ref()
            .is_none_or(|w| w.to_string() == m.to_string())
            && b.not_membership
                .as_ref()
                .is_none_or(|n| n.to_string() != m.to_string())
    };
    let viewer = Some((&*s.user_id, s.device_id.as_str()));
    let chunk = rooms
        .state_events(group)?
        .into_iter()
        .filter(|e| e.pdu.membership().is_some_and(|m| wanted(&m)))
        .map(|e| raw(rooms.format(&e, viewer, true)))
        .collect();
    Ok(get_member_events::v3::Response::new(chunk))
}

pub async fn joined_members(
    state: AppState,
    req: Ruma<joined_members::v3::Request>,
) -> ApiResult<Patched<joined_members::v3::Response>> {
    let s = req.session().clone();
    let rooms = &state.core.rooms;
    let room_id = &req.body.room_id;
    // Members, and anyone while the room is world readable (a preview), as Synapse allows.
    let access = rooms.access(room_id, &s.user_id)?;
    if !access.current {
        return Err(ApiError::forbidden("You aren't a member of the room"));
    }
    let mut joined = BTreeMap::new();
    for (key, id) in rooms.current_state(room_id)?.iter() {
        if key.0 != "m.room.member" {
            continue;
        }
        let Some(pdu) = rooms.pdu(id)? else { continue };
        if pdu.membership().as_deref() != Some("join") {
            continue;
        }
        let content = pdu.content_value();
        let mut member = joined_members::v3::RoomMember::new();
        member.display_name = content["displayname"].as_str().map(str::to_owned);
        member.avatar_url = content["avatar_url"].as_str().map(Into::into);
        if let Ok(user) = ruma::OwnedUserId::try_from(key.1.as_str()) {
            joined.insert(user, member);
        }
    }
    Ok(Patched {
        resp: joined_members::v3::Response::new(joined),
        // Both keys for every member, null when unset, as Synapse answers (ruma leaves them out).
        patch: Box::new(|v| {
            if let Some(members) = v["joined"].as_object_mut() {
                for member in members.values_mut() {
                    for key in ["display_name", "avatar_url"] {
                        if member[key].is_null() {
                            member[key] = serde_json::Value::Null;
                        }
                    }
                }
            }
        }),
    })
}
