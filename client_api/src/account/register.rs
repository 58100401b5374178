use hearth_core::accounts::LoginOptions;
use ruma::api::client::account::register::RegistrationKind;
use ruma::api::client::account::{
    check_registration_token_validity, get_username_availability, register,
};

use crate::error::{ApiError, ApiResult};
use crate::extract::{Patched, Ruma};
use crate::rate_limit::{Action, Key};
use crate::uia::Subject;
use crate::{AppState, RegistrationMode};
use serde_json::json;

pub async fn register(
    state: AppState,
    req: Ruma<register::v3::Request>,
) -> ApiResult<Patched<register::v3::Response>> {
    register_inner(state, req).await.map(without_null_device)
}

/// ruma writes a registration without login (`inhibit_login`) as `"device_id": null`; the spec
/// leaves the key out, as Synapse does, and clients (SyTest) test for the key.
fn without_null_device(resp: register::v3::Response) -> Patched<register::v3::Response> {
    Patched {
        resp,
        patch: Box::new(|v| {
            if let Some(map) = v.as_object_mut()
                && map.get("device_id").is_some_and(|d| d.is_null())
            {
                map.remove("device_id");
            }
        }),
    }
}

async fn register_inner(
    state: AppState,
    req: Ruma<register::v3::Request>,
) -> ApiResult<register::v3::Response> {
    state.limit(Action::Registration, req.client_ip.map(Key::Ip))?;
    let mut body = req.body;
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
    // A retry of a session that registered answers as the first time did (a client that lost
    // the answer must not be told the name is taken), as Synapse does.
    if let Some(outcome) = state.uia.outcome(body.auth.as_ref()) {
        return response_from(&outcome);
    }
    // A later request of the session may leave out what the first one said.
    if let Some(first) = state.uia.params(body.auth.as_ref()) {
        let text = |key: &str| first[key].as_str().map(str::to_owned);
        body.username = body.username.or_else(|| text("username"));
        body.password = body.password.or_else(|| text("password"));
        body.initial_device_display_name = body
            .initial_device_display_name
            .or_else(|| text("initial_device_display_name"));
        body.device_id = body.device_id.or_else(|| text("device_id").map(Into::into));
        body.inhibit_login |= first["inhibit_login"].as_bool().unwrap_or(false);
    }
    // User names are lower case; Synapse folds what clients send.
    body.username = body.username.map(|u| u.to_lowercase());
    // Check the name before the client goes through authentication, as Synapse does.
    if let Some(name) = &body.username {
        let user_id = state.core.accounts.user_id_for(name)?;
        if !state.core.accounts.is_available(&user_id)? {
            return Err(hearth_core::Error::UserInUse.into());
        }
    }
    let params = json!({
        "username": body.username,
        "password": body.password,
        "device_id": body.device_id,
        "initial_device_display_name": body.initial_device_display_name,
        "inhibit_login": body.inhibit_login,
    });
    state
        .uia
        .check(
            &state,
            body.auth.as_ref(),
            flows,
            Subject::Registration,
            "register",
            params,
        )
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
    state.uia.completed(
        body.auth.as_ref(),
        json!({
            "user_id": resp.user_id,
            "access_token": resp.access_token,
            "device_id": resp.device_id,
            "refresh_token": resp.refresh_token,
            "expires_in_ms": resp.expires_in.map(|d| d.as_millis() as u64),
        }),
    );
    Ok(resp)
}

/// A registration's answer again, from what `register` kept of it.
fn response_from(outcome: &serde_json::Value) -> ApiResult<register::v3::Response> {
    let text = |key: &str| outcome[key].as_str().map(str::to_owned);
    let user_id = text("user_id")
        .and_then(|u| ruma::OwnedUserId::try_from(u).ok())
        .ok_or_else(|| ApiError::from(hearth_core::Error::internal("registration outcome")))?;
    let mut resp = register::v3::Response::new(user_id);
    resp.access_token = text("access_token");
    resp.device_id = text("device_id").map(Into::into);
    resp.refresh_token = text("refresh_token");
    resp.expires_in = outcome["expires_in_ms"]
        .as_u64()
        .map(std::time::Duration::from_millis);
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
