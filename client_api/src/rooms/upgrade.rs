//! `POST /rooms/{roomId}/upgrade` (spec: "Room Upgrades").

use hearth_core::rooms::upgrade::Upgrade;
use ruma::api::client::room::upgrade_room;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::Ruma;

pub async fn upgrade_room(
    state: AppState,
    req: Ruma<upgrade_room::v3::Request>,
) -> ApiResult<upgrade_room::v3::Response> {
    let user = req.session().user_id.clone();
    let b = req.body;
    let profile = state.core.profiles.get(&user)?;
    let upgrade = Upgrade {
        new_version: b.new_version,
        additional_creators: b.additional_creators,
    };
    let new_room = state
        .core
        .rooms
        .upgrade_room(&user, profile, &b.room_id, upgrade)
        .await?;
    tracing::info!(old_room = %b.room_id, %new_room, "room upgraded");
    // The members' push rules for the old room now hold for the new one too.
    state
        .core
        .push
        .rules
        .room_upgraded(&b.room_id, &new_room)
        .await;
    // And their tags and direct-chat lists.
    for member in state.core.rooms.local_members(&b.room_id)? {
        if let Err(e) = state
            .core
            .account_data
            .room_upgraded_for(&member, &b.room_id, &new_room)
            .await
        {
            tracing::warn!(%member, error = %e, "tags and m.direct not carried to the upgraded room");
        }
    }
    Ok(upgrade_room::v3::Response::new(new_room))
}
