use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// A Matrix error on the federation API, or a failure talking to a peer.
#[derive(Debug)]
pub struct FedError {
    pub status: StatusCode,
    pub errcode: &'static str,
    pub message: String,
    /// `M_INCOMPATIBLE_ROOM_VERSION` names the room's version.
    pub room_version: Option<String>,
    /// A peer's error answer as it came (its status and body), for what passes it on to a
    /// client (a failed `make_join`).
    pub remote: Option<(StatusCode, serde_json::Value)>,
}

impl FedError {
    pub fn new(status: StatusCode, errcode: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            errcode,
            message: message.into(),
            room_version: None,
            remote: None,
        }
    }
    pub fn with_room_version(mut self, version: &str) -> Self {
        self.room_version = Some(version.to_owned());
        self
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED", message)
    }
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_BAD_JSON", message)
    }
    /// A peer could not be reached or answered nonsense.
    pub fn peer(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "M_UNKNOWN", message)
    }
}

impl std::fmt::Display for FedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.errcode,
            self.message
        )
    }
}

impl From<hearth_core::Error> for FedError {
    fn from(e: hearth_core::Error) -> Self {
        use hearth_core::Error as E;
        match e {
            E::Forbidden(m) => Self::new(StatusCode::FORBIDDEN, "M_FORBIDDEN", m),
            E::NotFound(m) => Self::new(StatusCode::NOT_FOUND, "M_NOT_FOUND", m),
            E::BadJson(m) => Self::bad_json(m),
            E::InvalidParam(m) => Self::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", m),
            E::Unknown(m) => Self::new(StatusCode::BAD_REQUEST, "M_UNKNOWN", m),
            E::Remote { message, .. } => Self::peer(message),
            E::IncompatibleRoomVersion(v) => Self::new(
                StatusCode::BAD_REQUEST,
                "M_INCOMPATIBLE_ROOM_VERSION",
                format!("Room version {v} is not supported"),
            )
            .with_room_version(&v),
            other => {
                tracing::error!(error = %other, "federation request failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "M_UNKNOWN",
                    "Internal server error",
                )
            }
        }
    }
}

impl IntoResponse for FedError {
    fn into_response(self) -> Response {
        let mut body = json!({ "errcode": self.errcode, "error": self.message });
        if let Some(v) = self.room_version {
            body["room_version"] = v.into();
        }
        (self.status, Json(body)).into_response()
    }
}
