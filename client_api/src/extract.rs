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

/// The most a request without an access token may send (login, registration, the unauthenticated
/// reads): their bodies are small, and a stranger must not make the server hold megabytes.
pub const UNAUTHENTICATED_BODY_BYTES: usize = 64 * 1024;

/// Reads a body of at most `limit` bytes. A declared length over it is refused before anything is
/// read; a body that stalls fails with what the body timeout layer reports.
pub(crate) async fn read_body(
    headers: &axum::http::HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::too_large(format!("Request body exceeds {limit} bytes"));
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            if s.is::<http_body_util::LengthLimitError>() {
                return too_large();
            }
            source = s.source();
        }
        ApiError::new(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            "M_UNKNOWN",
            "The request body did not arrive in time",
        )
    })
}

/// Whether a body is JSON text: UTF-8 throughout (serde skips the contents of strings it ignores
/// without checking them) and well formed.
fn is_json(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok()
        && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
}

/// A parsed ruma request with the session that made it.
pub struct Ruma<T> {
    pub body: T,
    pub session: Option<Session>,
    /// The peer's address, for the limits kept per address.
    pub client_ip: Option<std::net::IpAddr>,
    /// The body as sent, for what ruma's types leave out (a join's content of its own).
    pub raw_body: Bytes,
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
    T: IncomingRequest + Send + 'static,
    T::Authentication: AuthPolicy,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let client_ip = client_ip(&parts);
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
        let limit = if session.is_some() {
            state.config.max_request_bytes
        } else {
            UNAUTHENTICATED_BODY_BYTES.min(state.config.max_request_bytes)
        };
        let bytes = read_body(&parts.headers, body, limit).await?;
        if !bytes.is_empty() && !is_json(&bytes) {
            return Err(ApiError::not_json());
        }
        // Clients may send GETs with no body; ruma expects "{}" for bodies with fields.
        let bytes = if bytes.is_empty() && parts.method != axum::http::Method::GET {
            Bytes::from_static(b"{}")
        } else {
            bytes
        };
        if is_login::<T>() {
            login_has_type(&bytes)?;
        }
        if is::<T, ruma::api::client::room::upgrade_room::v3::Request>() {
            upgrade_version_is_an_id(&bytes)?;
        }
        let bytes = legacy_password_auth(bytes)?;
        let raw_body = bytes.clone();
        let http_req = axum::http::Request::from_parts(parts, bytes);
        // A parser that panics on some body is a bug of ours or ruma's, and the client gets a
        // 400 for it, not a dropped connection or a 500.
        let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            T::try_from_http_request(http_req, &args)
        }))
        .map_err(|_| {
            tracing::error!(
                request = std::any::type_name::<T>(),
                "a request parser panicked"
            );
            ApiError::bad_json("Malformed request body")
        })?;
        let body = parsed.map_err(from_http_error)?;
        Ok(Ruma {
            body,
            session,
            client_ip,
            raw_body,
        })
    }
}

fn is<T: 'static, U: 'static>() -> bool {
    std::any::TypeId::of::<T>() == std::any::TypeId::of::<U>()
}

/// An upgrade to a version that is not even a valid version id (`my_bad_version`) asks for a
/// version this server does not support: `M_UNSUPPORTED_ROOM_VERSION`, as Synapse answers, not
/// the malformed body ruma's parser would make of it.
fn upgrade_version_is_an_id(bytes: &[u8]) -> Result<(), ApiError> {
    #[derive(serde::Deserialize)]
    struct Upgrade {
        new_version: Option<String>,
    }
    match serde_json::from_slice::<Upgrade>(bytes) {
        Ok(Upgrade {
            new_version: Some(v),
        }) if ruma::RoomVersionId::try_from(v.as_str()).is_err() => Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "M_UNSUPPORTED_ROOM_VERSION",
            format!("This server does not support room version {v}"),
        )),
        _ => Ok(()),
    }
}

fn is_login<T: 'static>() -> bool {
    std::any::TypeId::of::<T>()
        == std::any::TypeId::of::<ruma::api::client::session::login::v3::Request>()
}

/// ruma's `LoginInfo` indexes the body's map by `"type"`, which panics when the key is missing;
/// answer that here as the malformed body it is.
fn login_has_type(bytes: &[u8]) -> Result<(), ApiError> {
    #[derive(serde::Deserialize)]
    struct Typed<'a> {
        #[serde(borrow, rename = "type")]
        _login_type: Option<std::borrow::Cow<'a, str>>,
    }
    match serde_json::from_slice::<Typed<'_>>(bytes) {
        Ok(Typed {
            _login_type: Some(_),
        }) => Ok(()),
        Ok(_) => Err(ApiError::bad_json("Missing the login 'type'")),
        Err(e) => Err(ApiError::bad_json(e.to_string())),
    }
}

/// A user-interactive `m.login.password` stage written the r0 way, naming the user in `user`
/// (or a third-party id in `medium` and `address`) rather than in `identifier`, as SyTest still
/// sends it and Synapse still reads it: rewritten with the identifier ruma requires. A stage
/// that names nobody is refused as Synapse refuses it.
fn legacy_password_auth(bytes: Bytes) -> Result<Bytes, ApiError> {
    // Only bodies that can hold such a stage are parsed twice.
    if !bytes
        .windows(b"m.login.password".len())
        .any(|w| w == b"m.login.password")
    {
        return Ok(bytes);
    }
    let Ok(serde_json::Value::Object(mut body)) = serde_json::from_slice(&bytes) else {
        return Ok(bytes);
    };
    let Some(serde_json::Value::Object(auth)) = body.get_mut("auth") else {
        return Ok(bytes);
    };
    if auth.get("type").and_then(|t| t.as_str()) != Some("m.login.password")
        || auth.contains_key("identifier")
    {
        return Ok(bytes);
    }
    let text = |k: &str| auth.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let identifier = match (text("user"), text("medium"), text("address")) {
        (Some(user), _, _) => serde_json::json!({ "type": "m.id.user", "user": user }),
        (None, Some(medium), Some(address)) => {
            serde_json::json!({ "type": "m.id.thirdparty", "medium": medium, "address": address })
        }
        _ => return Err(ApiError::invalid_param("Invalid login submission")),
    };
    auth.insert("identifier".into(), identifier);
    serde_json::to_vec(&body)
        .map(Bytes::from)
        .map_err(|e| ApiError::bad_json(e.to_string()))
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

/// A ruma response with its JSON amended after ruma serialised it: for what ruma leaves out
/// (values equal to their defaults, which clients and SyTest look for) or cannot express.
pub struct Patched<R> {
    pub resp: R,
    pub patch: Box<dyn FnOnce(&mut serde_json::Value) + Send>,
}

impl<R: OutgoingResponse> OutgoingResponse for Patched<R> {
    fn try_into_http_response<T: Default + bytes::BufMut>(
        self,
    ) -> Result<axum::http::Response<T>, ruma::api::error::IntoHttpError> {
        let (parts, body) = self.resp.try_into_http_response::<Vec<u8>>()?.into_parts();
        let mut value: serde_json::Value = serde_json::from_slice(&body)?;
        (self.patch)(&mut value);
        let mut out = T::default();
        out.put_slice(&serde_json::to_vec(&value)?);
        Ok(axum::http::Response::from_parts(parts, out))
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
        let (parts, body) = req.into_parts();
        let bytes = read_body(&parts.headers, body, state.config.max_request_bytes).await?;
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
