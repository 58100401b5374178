use hearth_core::rooms::NewEvent;
use hearth_core::rooms::TxnRef;
use ruma::api::client::message::send_message_event;
use serde_json::Value;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Ruma;
use crate::rate_limit::{Action, Key};

/// A message event from a user: the message allowance, the send, and the user counted active.
async fn send(
    state: &AppState,
    user: &ruma::UserId,
    room_id: &ruma::RoomId,
    event: NewEvent,
) -> ApiResult<ruma::OwnedEventId> {
    state.limit(Action::Message, [Key::User(user.to_string())])?;
    let pdu = state.core.rooms.send(room_id, user, event).await?;
    state.core.presence.touch(user);
    Ok(pdu.event_id.clone())
}

pub async fn send_message(
    state: AppState,
    req: Ruma<send_message_event::v3::Request>,
) -> ApiResult<send_message_event::v3::Response> {
    let s = req.session().clone();
    let b = req.body;
    let content: Value =
        serde_json::from_str(b.body.json().get()).map_err(|e| ApiError::bad_json(e.to_string()))?;
    let mut event = NewEvent::message(&b.event_type.to_string(), content);
    event.txn = Some(TxnRef::send(
        s.user_id.as_str(),
        s.device_id.as_str(),
        b.room_id.as_str(),
        &b.event_type.to_string(),
        b.txn_id.as_str(),
    ));
    let event_id = send(&state, &s.user_id, &b.room_id, event).await?;
    Ok(send_message_event::v3::Response::new(event_id))
}

/// `POST /rooms/{roomId}/send/{eventType}`: a send without a transaction id, which the spec
/// dropped long ago and clients (and SyTest) still use; Synapse serves it. Each call is a new
/// event.
pub async fn send_message_without_txn(
    axum::extract::State(state): axum::extract::State<AppState>,
    crate::extract::Auth(s): crate::extract::Auth,
    axum::extract::Path((room_id, event_type)): axum::extract::Path<(String, String)>,
    crate::extract::JsonBody(content): crate::extract::JsonBody,
) -> ApiResult<axum::Json<Value>> {
    state.limiter.check(Key::User(s.user_id.to_string()))?;
    let room_id =
        ruma::RoomId::parse(&room_id).map_err(|_| ApiError::invalid_param("Invalid room ID"))?;
    if !content.is_object() {
        return Err(ApiError::bad_json("The content must be a JSON object"));
    }
    let event_id = send(
        &state,
        &s.user_id,
        &room_id,
        NewEvent::message(&event_type, content),
    )
    .await?;
    Ok(axum::Json(serde_json::json!({ "event_id": event_id })))
}
