//! `POST /user/{userId}/openid/request_token` (spec: "OpenID").

use hearth_core::openid::OPENID_TOKEN_LIFETIME;
use ruma::api::client::account::request_openid_token;
use ruma::authentication::TokenType;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Ruma;

pub async fn request_token(
    state: AppState,
    req: Ruma<request_openid_token::v3::Request>,
) -> ApiResult<request_openid_token::v3::Response> {
    let user = req.session().user_id.clone();
    if req.body.user_id != user {
        return Err(ApiError::forbidden(
            "Cannot request tokens for other users.",
        ));
    }
    let token = state.core.openid.issue(&user);
    Ok(request_openid_token::v3::Response::new(
        token,
        TokenType::Bearer,
        state.core.config.server_name.clone(),
        OPENID_TOKEN_LIFETIME,
    ))
}
