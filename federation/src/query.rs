//! Queries other servers make of ours (spec: "Querying for information").

use axum::Json;
use axum::extract::State as AxState;
use serde_json::{Value, json};

use crate::State;
use crate::auth::Signed;
use crate::error::FedError;

/// Percent-encodes a query parameter value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn query_param(uri: &http::Uri, name: &str) -> Option<String> {
    query_params(uri, name).into_iter().next()
}

/// Every value of a (possibly repeated) query parameter.
pub fn query_params(uri: &http::Uri, name: &str) -> Vec<String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| decode(v))
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
