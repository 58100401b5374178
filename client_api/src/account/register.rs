use hearth_core::accounts::LoginOptions;
use ruma::api::client::account::register::RegistrationKind;
use ruma::api::client::account::{
    check_registration_token_validity, get_username_availability, register,
};

use crate::error::{ApiError, ApiResult};
use crate::extract::Ruma;
use crate::rate_limit::{Action, Key};
use crate::uia::Subject;
use crate::{AppState, RegistrationMode};

pub async fn register(
    state: AppState,
    req: Ruma<register::v3::Request>,
) -> ApiResult<register::v3::Response> {
    state.limit(Action::Registration, req.client_ip.map(Key::Ip))?;
    let body = req.body;
    if body.kind == RegistrationKind::Guest {
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "M_GUEST_ACCESS_FORBIDDEN",
            "Guest access is disabled",
        ));
    }
    let flows: &[&[&str]] = match state.config.registration {
        RegistrationMode::Closed => {
            return Err(ApiError::forbidden("Registration has been disabled"));
        }
        // Only the dummy flow when anyone may register, as Synapse offers it: offered a token
        // flow as well, Element picks it and asks the user for a token nobody has.
        RegistrationMode::Open => &[&["m.login.dummy"]],
        RegistrationMode::Token => &[&["m.login.registration_token"]],
    };
    // Check the name before the client goes through authentication, as Synapse does.
    if let Some(name) = &body.username {
        let user_id = state.core.accounts.user_id_for(name)?;
        if !state.core.accounts.is_available(&user_id)? {
            return Err(hearth_core::Error::UserInUse.into());
        }
    }
    state
        .uia
        .check(&state, body.auth.as_ref(), flows, Subject::Registration)
        .await?;

    let login = (!body.inhibit_login).then(|| LoginOptions {
        device_id: body.device_id.map(|d| d.to_string()),
        display_name: body.initial_device_display_name.clone(),
        refresh_token: body.refresh_token,
    });
    let (user_id, login) = state
        .core
        .accounts
        .register(body.username.as_deref(), body.password.as_deref(), login)
        .await?;
    tracing::info!(%user_id, "registered");
    let mut resp = register::v3::Response::new(user_id);
    if let Some(l) = login {
        resp.access_token = Some(l.access_token);
        resp.device_id = Some(l.device_id);
        if let Some((refresh_token, lifetime)) = l.refresh {
            resp.refresh_token = Some(refresh_token);
            resp.expires_in = Some(lifetime);
        }
    }
    Ok(resp)
}

pub async fn available(
    state: AppState,
    req: Ruma<get_username_availability::v3::Request>,
) -> ApiResult<get_username_availability::v3::Response> {
    let user_id = state.core.accounts.user_id_for(&req.body.username)?;
    if !state.core.accounts.is_available(&user_id)? {
        return Err(hearth_core::Error::UserInUse.into());
    }
    Ok(get_username_availability::v3::Response::new(true))
}

pub async fn token_validity(
    state: AppState,
    req: Ruma<check_registration_token_validity::v1::Request>,
) -> ApiResult<check_registration_token_validity::v1::Response> {
    if state.config.registration == RegistrationMode::Closed {
        return Err(ApiError::forbidden("Registration has been disabled"));
    }
    let valid = state.config.registration_token.as_deref() == Some(req.body.token.as_str());
    Ok(check_registration_token_validity::v1::Response::new(valid))
}
