//! Accounts, sessions and devices (spec: "Client Authentication", "Device Management").

pub mod devices;
pub mod login;
pub mod openid;
pub mod password;
pub mod register;

use ruma::api::client::account::whoami;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::Ruma;

pub async fn whoami(
    _: AppState,
    req: Ruma<whoami::v3::Request>,
) -> ApiResult<whoami::v3::Response> {
    let s = req.session();
    let mut resp = whoami::v3::Response::new(s.user_id.clone(), false);
    resp.device_id = Some(s.device_id.clone());
    Ok(resp)
}
