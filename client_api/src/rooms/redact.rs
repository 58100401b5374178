//! `PUT /rooms/{roomId}/redact/{eventId}/{txnId}` (spec: "Redactions").

use hearth_core::rooms::{NewEvent, TxnRef};
use ruma::api::client::redact::redact_event;
use serde_json::json;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::Ruma;
use crate::rate_limit::{Action, Key};

pub async fn redact(
    state: AppState,
    req: Ruma<redact_event::v3::Request>,
) -> ApiResult<redact_event::v3::Response> {
    let s = req.session().clone();
    state.limit(Action::Message, [Key::User(s.user_id.to_string())])?;
    let b = req.body;
    let mut content = json!({});
    if let Some(reason) = &b.reason {
        content["reason"] = json!(reason);
    }
    let mut event = NewEvent::message("m.room.redaction", content);
    event.redacts = Some(b.event_id.clone());
    event.txn = Some(TxnRef::redact(
        s.user_id.as_str(),
        s.device_id.as_str(),
        b.room_id.as_str(),
        b.event_id.as_str(),
        b.txn_id.as_str(),
    ));
    let pdu = state.core.rooms.send(&b.room_id, &s.user_id, event).await?;
    Ok(redact_event::v3::Response::new(pdu.event_id.clone()))
}
