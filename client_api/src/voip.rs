//! Calls and bridges, as far as a server without a TURN server or application services goes.
//!
//! Element asks for both right after sign-up. Synapse answers `200 {}` to each when it has
//! neither: the client then knows there is nothing to use, where the `404 M_UNRECOGNIZED` of an
//! unknown endpoint made Element log an error and retry `/thirdparty/protocols`.

use ruma::api::client::thirdparty::{get_protocol, get_protocols};
use ruma::api::client::voip::get_turn_server_info;
use serde_json::json;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Patched, Ruma};

/// `GET /voip/turnServer`: no TURN server is configured, so no credentials (Synapse's `{}`;
/// ruma's response has no empty form, hence the patch).
pub async fn turn_server(
    _: AppState,
    _: Ruma<get_turn_server_info::v3::Request>,
) -> ApiResult<Patched<get_turn_server_info::v3::Response>> {
    Ok(Patched {
        resp: get_turn_server_info::v3::Response::new(
            String::new(),
            String::new(),
            Vec::new(),
            std::time::Duration::ZERO,
        ),
        patch: Box::new(|v| *v = json!({})),
    })
}

/// `GET /thirdparty/protocols`: the protocols of the bridges (application services), none.
pub async fn protocols(
    _: AppState,
    _: Ruma<get_protocols::v3::Request>,
) -> ApiResult<get_protocols::v3::Response> {
    Ok(get_protocols::v3::Response::new(Default::default()))
}

/// `GET /thirdparty/protocol/{protocol}`: no bridge offers it (Synapse's 404).
pub async fn protocol(
    _: AppState,
    req: Ruma<get_protocol::v3::Request>,
) -> ApiResult<get_protocol::v3::Response> {
    Err(ApiError::not_found(format!(
        "Unknown protocol {}",
        req.body.protocol
    )))
}
