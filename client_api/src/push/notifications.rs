//! `GET /notifications`.

use ruma::api::client::push::get_notifications::v3::{self, Notification};
use ruma::serde::Raw;
use ruma::{MilliSecondsSinceUnixEpoch, UInt};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Ruma;

pub async fn list(state: AppState, req: Ruma<v3::Request>) -> ApiResult<v3::Response> {
    let session = req.session();
    let from = match req.body.from.as_deref() {
        Some(t) => Some(
            t.parse::<u64>()
                .map_err(|_| ApiError::invalid_param("Unknown 'from' token"))?,
        ),
        None => None,
    };
    // Synapse's default and cap.
    let limit = req.body.limit.map_or(50, |l| u64::from(l).clamp(1, 1000)) as usize;
    let only_highlight = req.body.only.as_deref() == Some("highlight");
    let (found, next) =
        state
            .core
            .push
            .notifications
            .list(&session.user_id, from, limit, only_highlight)?;
    let viewer = (&*session.user_id, session.device_id.as_str());
    let notifications = found
        .into_iter()
        .map(|n| {
            Notification::new(
                n.actions,
                Raw::from_json(state.core.rooms.format(&n.event, Some(viewer), false)),
                n.read,
                n.event.pdu.room_id.clone(),
                MilliSecondsSinceUnixEpoch(UInt::new(n.ts).unwrap_or_default()),
            )
        })
        .collect();
    let mut resp = v3::Response::new(notifications);
    resp.next_token = next.map(|p| p.to_string());
    Ok(resp)
}
