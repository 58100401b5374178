//! Queries other servers make of ours (spec: "Querying for information").

use axum::Json;
use axum::extract::State as AxState;
use serde_json::{Value, json};

use crate::State;
use crate::auth::Signed;
use crate::error::FedError;

fn query_param(uri: &http::Uri, name: &str) -> Option<String> {
    query_params(uri, name).into_iter().next()
}

/// Every value of a (possibly repeated) query parameter.
pub fn query_params(uri: &http::Uri, name: &str) -> Vec<String> {
    form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .collect()
}

/// `GET /_matrix/federation/v1/query/profile?user_id=…[&field=…]`
pub async fn profile(
    AxState(state): AxState<State>,
    uri: http::Uri,
    signed: Signed,
) -> Result<Json<Value>, FedError> {
    tracing::debug!(origin = %signed.origin, "profile query");
    let user = query_param(&uri, "user_id").ok_or_else(|| {
        FedError::new(
            http::StatusCode::BAD_REQUEST,
            "M_MISSING_PARAM",
            "user_id is required",
        )
    })?;
    let user = ruma::UserId::parse(user).map_err(|e| {
        FedError::new(
            http::StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
            e.to_string(),
        )
    })?;
    if user.server_name() != state.core.config.server_name {
        return Err(FedError::new(
            http::StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
            "User is not local",
        ));
    }
    let profile = state.core.profiles.get(&user)?;
    let mut body = json!({});
    let field = query_param(&uri, "field");
    if field.as_deref().is_none_or(|f| f == "displayname")
        && let Some(d) = profile.displayname
    {
        body["displayname"] = json!(d);
    }
    if field.as_deref().is_none_or(|f| f == "avatar_url")
        && let Some(a) = profile.avatar_url
    {
        body["avatar_url"] = json!(a);
    }
    Ok(Json(body))
}
