use ruma::api::client::account::{ThirdPartyIdRemovalStatus, change_password, deactivate};

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::Ruma;

pub async fn change_password(
    state: AppState,
    req: Ruma<change_password::v3::Request>,
) -> ApiResult<change_password::v3::Response> {
    let s = req.session().clone();
    state
        .uia
        .confirm_password(
            &state,
            req.body.auth.as_ref(),
            &s.user_id,
            "change password",
        )
        .await?;
    state
        .core
        .accounts
        .set_password(&s.user_id, &req.body.new_password)
        .await?;
    if req.body.logout_devices {
        state
            .core
            .accounts
            .delete_all_devices_except(&s.user_id, Some(s.device_id.as_str()))
            .await?;
    }
    Ok(change_password::v3::Response::new())
}

pub async fn deactivate(
    state: AppState,
    req: Ruma<deactivate::v3::Request>,
) -> ApiResult<deactivate::v3::Response> {
    let s = req.session().clone();
    state
        .uia
        .confirm_password(&state, req.body.auth.as_ref(), &s.user_id, "deactivate")
        .await?;
    for room_id in state.core.rooms.joined_rooms(&s.user_id)? {
        if let Err(e) = state.core.rooms.leave(&room_id, &s.user_id, None).await {
            tracing::warn!(%room_id, error = %e, "deactivation: could not leave room");
        }
    }
    state.core.accounts.deactivate(&s.user_id).await?;
    tracing::info!(user_id = %s.user_id, "deactivated");
    Ok(deactivate::v3::Response::new(
        ThirdPartyIdRemovalStatus::NoSupport,
    ))
}
