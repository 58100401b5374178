//! Turning an HTTP request into a ruma request type plus the caller's session.
//!
//! Order matters and follows Synapse: authenticate, rate-limit, read the body (bounded), check
//! it is JSON, then let ruma parse it. Each step fails with its own Matrix error.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{
    ConnectInfo, FromRequest, FromRequestParts, MatchedPath, RawPathParams, Request,
};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hearth_core::accounts::Session;
use ruma::api::auth_scheme::{
    AccessToken, AccessTokenOptional, AppserviceToken, AppserviceTokenOptional, NoAccessToken,
    NoAuthentication,
};
use ruma::api::{IncomingRequest, OutgoingResponse};

use crate::AppState;
use crate::error::ApiError;
use crate::rate_limit::Key;

/// How an endpoint treats access tokens, read off ruma's authentication scheme type.
pub trait AuthPolicy {
    const REQUIRED: bool;
    const ACCEPTED: bool;
}
macro_rules! policy {
    ($t:ty, $req:expr, $acc:expr) => {
        impl AuthPolicy for $t {
            const REQUIRED: bool = $req;
            const ACCEPTED: bool = $acc;
        }
    };
}
policy!(AccessToken, true, true);
policy!(AppserviceToken, true, true);
policy!(AccessTokenOptional, false, true);
policy!(AppserviceTokenOptional, false, true);
policy!(NoAuthentication, false, false);
policy!(NoAccessToken, false, false);

pub(crate) fn access_token(parts: &Parts) -> Option<String> {
    if let Some(h) = parts.headers.get(axum::http::header::AUTHORIZATION)
        && let Ok(v) = h.to_str()
        && let Some(t) = v.strip_prefix("Bearer ")
    {
        return Some(t.trim().to_owned());
    }
    let query = parts.uri.query()?;
    url_param(query, "access_token")
}

fn url_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn client_ip(parts: &Parts) -> Option<std::net::IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// Authenticates (as the policy asks) and applies the rate limit.
async fn authenticate(
    parts: &Parts,
    state: &AppState,
    required: bool,
    accepted: bool,
    rate_limited: bool,
) -> Result<Option<Session>, ApiError> {
    let token = if accepted { access_token(parts) } else { None };
    let session = match token {
        Some(t) => Some(state.core.accounts.authenticate(&t)?),
        None if required => return Err(ApiError::missing_token()),
        None => None,
    };
    if rate_limited {
        let key = match &session {
            Some(s) => Some(Key::User(s.user_id.to_string())),
            None => client_ip(parts).map(Key::Ip),
        };
        if let Some(k) = key {
            state.limiter.check(k)?;
        }
    }
    Ok(session)
}

async fn read_body(body: Body, state: &AppState) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, state.config.max_request_bytes)
        .await
        .map_err(|_| {
            ApiError::too_large(format!(
                "Request body exceeds {} bytes",
                state.config.max_request_bytes
            ))
        })
}

/// A parsed ruma request with the session that made it.
pub struct Ruma<T> {
    pub body: T,
    pub session: Option<Session>,
}

impl<T> Ruma<T> {
    /// The caller's session; endpoints with required auth always have one.
    pub fn session(&self) -> &Session {
        self.session.as_ref().expect("authenticated endpoint")
    }
}

/// Routes whose last path segment (the state key) may be empty and so absent from the URL.
fn implied_empty_state_key(parts: &Parts) -> bool {
    parts.extensions.get::<MatchedPath>().is_some_and(|p| {
        p.as_str().ends_with("/state/{event_type}") || p.as_str().ends_with("/state/{event_type}/")
    })
}

impl<T> FromRequest<AppState> for Ruma<T>
where
    T: IncomingRequest + Send,
    T::Authentication: AuthPolicy,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let params = RawPathParams::from_request_parts(&mut parts, state)
            .await
            .map_err(|_| ApiError::invalid_param("Invalid path parameter"))?;
        let mut args: Vec<String> = params.iter().map(|(_, v)| v.to_owned()).collect();
        if implied_empty_state_key(&parts) {
            args.push(String::new());
        }
        // Which endpoints are limited is the spec's call, carried in ruma's metadata (login,
        // register, sending, joining, ...), as Synapse limits them.
        let session = authenticate(
            &parts,
            state,
            <T::Authentication as AuthPolicy>::REQUIRED,
            <T::Authentication as AuthPolicy>::ACCEPTED,
            T::RATE_LIMITED,
        )
        .await?;
        let bytes = read_body(body, state).await?;
        if !bytes.is_empty() && serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err() {
            return Err(ApiError::not_json());
        }
        // Clients may send GETs with no body; ruma expects "{}" for bodies with fields.
        let bytes = if bytes.is_empty() && parts.method != axum::http::Method::GET {
            Bytes::from_static(b"{}")
        } else {
            bytes
        };
        let http_req = axum::http::Request::from_parts(parts, bytes);
        let body = T::try_from_http_request(http_req, &args).map_err(from_http_error)?;
        Ok(Ruma { body, session })
    }
}

fn from_http_error(e: ruma::api::error::FromHttpRequestError) -> ApiError {
    use ruma::api::error::{DeserializationError, FromHttpRequestError};
    match e {
        FromHttpRequestError::Deserialization(DeserializationError::Json(e)) => {
            ApiError::bad_json(e.to_string())
        }
        FromHttpRequestError::Deserialization(d) => ApiError::invalid_param(d.to_string()),
        FromHttpRequestError::MethodMismatch { .. } => ApiError::method_not_allowed(),
        other => ApiError::bad_json(other.to_string()),
    }
}

/// A ruma response as an axum response.
pub struct RumaResponse<T>(pub T);

impl<T: OutgoingResponse> IntoResponse for RumaResponse<T> {
    fn into_response(self) -> Response {
        match self.0.try_into_http_response::<bytes::BytesMut>() {
            Ok(res) => res.map(|b| Body::from(b.freeze())).into_response(),
            Err(e) => {
                tracing::error!(error = %e, "could not serialise a response");
                ApiError::from(hearth_core::Error::internal("response serialisation"))
                    .into_response()
            }
        }
    }
}

/// The caller's session, for handlers that do not use a ruma request type.
pub struct Auth(pub Session);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let session = authenticate(parts, state, true, true, false).await?;
        Ok(Auth(session.expect("required")))
    }
}

/// A JSON body for handlers that do not use a ruma request type.
pub struct JsonBody(pub serde_json::Value);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = read_body(req.into_body(), state).await?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|_| ApiError::not_json())
    }
}

/// Query parameters for handlers that do not use a ruma request type: a value that does not
/// parse is `M_INVALID_PARAM`, not axum's plain-text rejection.
pub struct QueryParams<T>(pub T);

impl<T, S> FromRequestParts<S> for QueryParams<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::try_from_uri(&parts.uri)
            .map(|q| QueryParams(q.0))
            .map_err(|e| ApiError::invalid_param(e.body_text()))
    }
}
