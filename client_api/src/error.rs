//! Matrix error responses: JSON with `errcode` and `error`, and the right HTTP status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hearth_core::Error as CoreError;
use serde_json::{Map, Value, json};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub errcode: &'static str,
    pub message: String,
    /// Extra top-level fields (`retry_after_ms`, a UIA body's `flows`, ...).
    pub extra: Map<String, Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, errcode: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            errcode,
            message: message.into(),
            extra: Map::new(),
        }
    }
    pub fn bad_json(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_BAD_JSON", m)
    }
    pub fn not_json() -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_NOT_JSON", "Content not JSON.")
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "M_FORBIDDEN", m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "M_NOT_FOUND", m)
    }
    pub fn invalid_param(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", m)
    }
    pub fn missing_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "M_MISSING_TOKEN",
            "Missing access token.",
        )
    }
    pub fn unrecognized() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "M_UNRECOGNIZED",
            "Unrecognized request",
        )
    }
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "M_UNRECOGNIZED",
            "Unrecognized request",
        )
    }
    pub fn too_large(m: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE", m)
    }
    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        use StatusCode as S;
        match e {
            CoreError::Forbidden(m) => Self::forbidden(m),
            CoreError::NotFound(m) => Self::not_found(m),
            CoreError::BadJson(m) => Self::bad_json(m),
            CoreError::InvalidParam(m) => Self::invalid_param(m),
            CoreError::MissingParam(m) => Self::new(S::BAD_REQUEST, "M_MISSING_PARAM", m),
            CoreError::InvalidUsername(m) => Self::new(S::BAD_REQUEST, "M_INVALID_USERNAME", m),
            CoreError::UserInUse => {
                Self::new(S::BAD_REQUEST, "M_USER_IN_USE", "User ID already taken.")
            }
            CoreError::UnknownToken => Self::new(
                S::UNAUTHORIZED,
                "M_UNKNOWN_TOKEN",
                "Invalid access token passed.",
            )
            .with("soft_logout", json!(false)),
            CoreError::ExpiredToken => Self::new(
                S::UNAUTHORIZED,
                "M_UNKNOWN_TOKEN",
                "Access token has expired.",
            )
            .with("soft_logout", json!(true)),
            CoreError::IncompatibleRoomVersion(v) => Self::new(
                S::BAD_REQUEST,
                "M_INCOMPATIBLE_ROOM_VERSION",
                format!("Room version {v} is not supported"),
            )
            .with("room_version", json!(v)),
            CoreError::UnsupportedRoomVersion(m) => {
                Self::new(S::BAD_REQUEST, "M_UNSUPPORTED_ROOM_VERSION", m)
            }
            CoreError::TooLarge(m) => Self::too_large(m),
            CoreError::Unrecognized(m) => Self::new(S::BAD_REQUEST, "M_UNRECOGNIZED", m),
            CoreError::QuotaExceeded(m) => Self::new(S::FORBIDDEN, "M_RESOURCE_LIMIT_EXCEEDED", m)
                .with("limit_type", json!("media_quota")),
            CoreError::CannotOverwriteMedia => Self::new(
                S::CONFLICT,
                "M_CANNOT_OVERWRITE_MEDIA",
                "Media ID already has content",
            ),
            CoreError::NotYetUploaded => Self::new(
                S::GATEWAY_TIMEOUT,
                "M_NOT_YET_UPLOADED",
                "Media has not been uploaded yet",
            ),
            CoreError::InvalidSignature(m) => Self::new(S::BAD_REQUEST, "M_INVALID_SIGNATURE", m),
            CoreError::WrongRoomKeysVersion(current) => Self::new(
                S::FORBIDDEN,
                "M_WRONG_ROOM_KEYS_VERSION",
                "Wrong backup version.",
            )
            .with("current_version", json!(current)),
            CoreError::Unknown(m) => Self::new(S::BAD_REQUEST, "M_UNKNOWN", m),
            // Synapse's status and code for a taken alias.
            CoreError::AliasInUse => {
                Self::new(S::CONFLICT, "M_UNKNOWN", "Room alias already taken")
            }
            CoreError::BadAlias(m) => Self::new(S::BAD_REQUEST, "M_BAD_ALIAS", m),
            CoreError::DuplicateAnnotation => Self::new(
                S::BAD_REQUEST,
                "M_DUPLICATE_ANNOTATION",
                "Can't send same reaction twice",
            ),
            CoreError::UnknownPos => Self::new(S::BAD_REQUEST, "M_UNKNOWN_POS", "Unknown position"),
            CoreError::Remote {
                status,
                errcode,
                message,
                room_version,
            } => {
                // The errcode is the remote's, not one of ours: it goes in `extra` (an empty
                // `errcode` leaves the body to it).
                let mut e = Self::new(
                    StatusCode::from_u16(status).unwrap_or(S::BAD_GATEWAY),
                    "",
                    message.clone(),
                )
                .with("errcode", json!(errcode))
                .with("error", json!(message));
                if let Some(v) = room_version {
                    e = e.with("room_version", json!(v));
                }
                e
            }
            CoreError::Internal(m) => {
                // The detail goes to the log, not to the client.
                tracing::error!(error = %m, "internal error");
                Self::new(
                    S::INTERNAL_SERVER_ERROR,
                    "M_UNKNOWN",
                    "Internal server error",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.extra;
        if !self.errcode.is_empty() {
            body.insert("errcode".into(), json!(self.errcode));
            body.insert("error".into(), json!(self.message));
        }
        (self.status, Json(Value::Object(body))).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
