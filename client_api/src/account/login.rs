use hearth_core::accounts::LoginOptions;
use ruma::api::client::session::{
    get_login_token, get_login_types, login, logout, logout_all, refresh_token,
};
use ruma::api::client::uiaa::UserIdentifier;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Ruma;
use crate::rate_limit::{Action, Key};

pub async fn login_types(
    _: AppState,
    _: Ruma<get_login_types::v3::Request>,
) -> ApiResult<get_login_types::v3::Response> {
    use get_login_types::v3::{LoginType, PasswordLoginType, TokenLoginType};
    let mut token = TokenLoginType::new();
    token.get_login_token = true;
    Ok(get_login_types::v3::Response::new(vec![
        LoginType::Password(PasswordLoginType::new()),
        LoginType::Token(token),
    ]))
}

pub async fn login(
    state: AppState,
    req: Ruma<login::v3::Request>,
) -> ApiResult<login::v3::Response> {
    state.limit(Action::Login, req.client_ip.map(Key::Ip))?;
    let body = req.body;
    let options = LoginOptions {
        device_id: body.device_id.map(|d| d.to_string()),
        display_name: body.initial_device_display_name,
        refresh_token: body.refresh_token,
    };
    let p = match body.login_info {
        login::v3::LoginInfo::Password(p) => p,
        login::v3::LoginInfo::Token(t) => {
            let new = state
                .core
                .accounts
                .login_with_token(&t.token, options)
                .await?;
            tracing::info!(user_id = %new.user_id, device_id = %new.device_id, "logged in with a login token");
            return Ok(login_response(new));
        }
        _ => {
            return Err(ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "M_UNKNOWN",
                "Unknown login type",
            ));
        }
    };
    #[allow(deprecated)]
    let legacy_user = &p.user;
    let user = match (&p.identifier, legacy_user) {
        (Some(UserIdentifier::Matrix(m)), _) => m.user.clone(),
        (None, Some(u)) => u.clone(),
        _ => return Err(ApiError::forbidden("Invalid username or password")),
    };
    let user_id = state.core.accounts.resolve_login_user(&user)?;
    state.limit(Action::LoginAccount, [Key::User(user_id.to_string())])?;
    let new = state
        .core
        .accounts
        .login(&user_id, &p.password, options)
        .await?;
    tracing::info!(%user_id, device_id = %new.device_id, "logged in");
    Ok(login_response(new))
}

fn login_response(new: hearth_core::accounts::NewLogin) -> login::v3::Response {
    let mut resp = login::v3::Response::new(new.user_id, new.access_token, new.device_id);
    if let Some((refresh_token, lifetime)) = new.refresh {
        resp.refresh_token = Some(refresh_token);
        resp.expires_in = Some(lifetime);
    }
    resp
}

/// `POST /login/get_token`: a single-use token for signing in another device (QR login), after
/// the user confirms their password, as Synapse asks.
pub async fn get_token(
    state: AppState,
    req: Ruma<get_login_token::v1::Request>,
) -> ApiResult<get_login_token::v1::Response> {
    let user = req.session().user_id.clone();
    state
        .uia
        .confirm_password(&state, req.body.auth.as_ref(), &user, "login token")
        .await?;
    let (token, lifetime) = state.core.accounts.issue_login_token(&user);
    Ok(get_login_token::v1::Response::new(lifetime, token))
}

/// `POST /refresh` (spec: "Refreshing access tokens").
pub async fn refresh(
    state: AppState,
    req: Ruma<refresh_token::v3::Request>,
) -> ApiResult<refresh_token::v3::Response> {
    let new = state.core.accounts.refresh(&req.body.refresh_token).await?;
    let mut resp = refresh_token::v3::Response::new(new.access_token);
    if let Some((refresh_token, lifetime)) = new.refresh {
        resp.refresh_token = Some(refresh_token);
        resp.expires_in_ms = Some(lifetime);
    }
    Ok(resp)
}

pub async fn logout(
    state: AppState,
    req: Ruma<logout::v3::Request>,
) -> ApiResult<logout::v3::Response> {
    let s = req.session();
    state
        .core
        .accounts
        .delete_devices(&s.user_id, &[s.device_id.to_string()])
        .await?;
    Ok(logout::v3::Response::new())
}

pub async fn logout_all(
    state: AppState,
    req: Ruma<logout_all::v3::Request>,
) -> ApiResult<logout_all::v3::Response> {
    state
        .core
        .accounts
        .delete_all_devices_except(&req.session().user_id, None)
        .await?;
    Ok(logout_all::v3::Response::new())
}
