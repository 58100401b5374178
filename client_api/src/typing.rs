//! Typing notifications (spec: "Typing Notifications").

use ruma::api::client::typing::create_typing_event::v3::{self, Typing};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Ruma;

pub async fn set_typing(state: AppState, req: Ruma<v3::Request>) -> ApiResult<v3::Response> {
    let s = req.session();
    let b = &req.body;
    if b.user_id != s.user_id {
        return Err(ApiError::forbidden("Cannot set typing for another user"));
    }
    let timeout = match &b.state {
        Typing::Yes(info) => Some(info.timeout),
        _ => None,
    };
    state.core.typing.set(&b.room_id, &s.user_id, timeout)?;
    Ok(v3::Response::new())
}
