//! Presence (spec: "Presence").

use hearth_core::presence::State;
use ruma::api::client::presence::{get_presence, set_presence};
use ruma::presence::PresenceState;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Ruma;

pub(crate) fn state_of(p: &PresenceState) -> ApiResult<State> {
    State::parse(p.as_str())
        .ok_or_else(|| ApiError::invalid_param(format!("Unknown presence state {}", p.as_str())))
}

pub async fn set(
    state: AppState,
    req: Ruma<set_presence::v3::Request>,
) -> ApiResult<set_presence::v3::Response> {
    let s = req.session();
    let b = &req.body;
    if b.user_id != s.user_id {
        return Err(ApiError::forbidden("Cannot set presence for another user"));
    }
    let presence = state_of(&b.presence)?;
    if b.status_msg.as_ref().is_some_and(|m| m.len() > 1024) {
        return Err(ApiError::invalid_param("status_msg is too long"));
    }
    state
        .core
        .presence
        .set(&s.user_id, presence, b.status_msg.clone());
    Ok(set_presence::v3::Response::new())
}

pub async fn get(
    state: AppState,
    req: Ruma<get_presence::v3::Request>,
) -> ApiResult<get_presence::v3::Response> {
    let s = req.session();
    let view = state.core.presence.get(&s.user_id, &req.body.user_id)?;
    let mut resp = get_presence::v3::Response::new(PresenceState::from(view.state.as_str()));
    resp.status_msg = view.status_msg;
    resp.currently_active = Some(view.currently_active);
    resp.last_active_ago = view.last_active_ago.map(std::time::Duration::from_millis);
    Ok(resp)
}
