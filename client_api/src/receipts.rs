//! Receipts and the fully read marker (spec: "Receipts", "Read and unread markers").

use hearth_core::receipts::{READ, READ_PRIVATE};
use ruma::api::client::read_marker::set_read_marker;
use ruma::api::client::receipt::create_receipt::{self, v3::ReceiptType};
use ruma::events::receipt::ReceiptThread;
use ruma::{EventId, RoomId, UserId};
use serde_json::json;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Ruma;

pub async fn create_receipt(
    state: AppState,
    req: Ruma<create_receipt::v3::Request>,
) -> ApiResult<create_receipt::v3::Response> {
    let s = req.session();
    let b = &req.body;
    let thread = match &b.thread {
        ReceiptThread::Unthreaded => None,
        other => Some(other.as_str().unwrap_or_default().to_owned()),
    };
    match &b.receipt_type {
        ReceiptType::FullyRead => {
            if thread.is_some() {
                return Err(ApiError::invalid_param(
                    "m.fully_read cannot be set for a thread",
                ));
            }
            fully_read(&state, &s.user_id, &b.room_id, &b.event_id).await?;
        }
        other => {
            state
                .core
                .receipts
                .set(
                    &s.user_id,
                    &b.room_id,
                    other.as_str(),
                    &b.event_id,
                    thread.as_deref(),
                )
                .await?;
            if [READ, READ_PRIVATE].contains(&other.as_str()) {
                state.core.push.pushers.read(&s.user_id);
            }
        }
    }
    Ok(create_receipt::v3::Response::new())
}

pub async fn set_read_marker(
    state: AppState,
    req: Ruma<set_read_marker::v3::Request>,
) -> ApiResult<set_read_marker::v3::Response> {
    let s = req.session();
    let b = &req.body;
    let receipts = &state.core.receipts;
    if let Some(id) = &b.read_receipt {
        receipts.set(&s.user_id, &b.room_id, READ, id, None).await?;
    }
    if let Some(id) = &b.private_read_receipt {
        receipts
            .set(&s.user_id, &b.room_id, READ_PRIVATE, id, None)
            .await?;
    }
    if b.read_receipt.is_some() || b.private_read_receipt.is_some() {
        state.core.push.pushers.read(&s.user_id);
    }
    if let Some(id) = &b.fully_read {
        fully_read(&state, &s.user_id, &b.room_id, id).await?;
    }
    Ok(set_read_marker::v3::Response::new())
}

/// `m.fully_read` is room account data the server keeps: only for joined rooms, only for events
/// of that room.
async fn fully_read(
    state: &AppState,
    user: &UserId,
    room_id: &RoomId,
    event_id: &EventId,
) -> ApiResult<()> {
    let core = &state.core;
    if core.rooms.membership(room_id, user)?.as_deref() != Some("join") {
        return Err(ApiError::forbidden(format!(
            "User {user} is not in room {room_id}"
        )));
    }
    if core
        .rooms
        .timeline_event(event_id)?
        .is_none_or(|e| e.meta.room_id != room_id.as_str())
    {
        return Err(ApiError::not_found("Event not found"));
    }
    core.account_data
        .set(
            user,
            Some(room_id),
            "m.fully_read",
            json!({ "event_id": event_id }),
        )
        .await?;
    Ok(())
}
