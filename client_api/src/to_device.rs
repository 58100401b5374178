//! Send-to-device messaging (spec: "Send-to-Device messaging").

use ruma::api::client::to_device::send_event_to_device::v3;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::Ruma;

pub async fn send(state: AppState, req: Ruma<v3::Request>) -> ApiResult<v3::Response> {
    let s = req.session().clone();
    let b = req.body;
    let messages = b
        .messages
        .into_iter()
        .map(|(user, by_device)| {
            let by_device = by_device
                .into_iter()
                .map(|(d, content)| (d.to_string(), content.into_json()))
                .collect();
            (user, by_device)
        })
        .collect();
    state
        .core
        .to_device
        .send(
            &s.user_id,
            s.device_id.as_str(),
            &b.event_type.to_string(),
            b.txn_id.as_str(),
            messages,
        )
        .await?;
    Ok(v3::Response::new())
}
