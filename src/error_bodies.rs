//! Every error answer is Matrix JSON (`errcode`, `error`), whoever produced it. The handlers'
//! errors already are; this catches the rest, which axum and its extractors answer in plain text
//! or with no body at all: a path segment that is not UTF-8, a WebSocket request without its
//! upgrade headers, a range that cannot be satisfied, a body that timed out.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

/// The longest text of a plain answer carried over into `error`.
const MAX_TEXT: usize = 200;

pub async fn matrix_json_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if status.as_u16() < 400 || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // The texts come from axum's rejections and are short; anything longer is cut, not read.
    let text = axum::body::to_bytes(body, 4 * MAX_TEXT)
        .await
        .ok()
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .map(|t| t.trim().chars().take(MAX_TEXT).collect::<String>())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("Error").to_owned());
    let body = serde_json::json!({ "errcode": errcode(status), "error": text }).to_string();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

/// The errcode Synapse gives each status when nothing more specific applies.
fn errcode(status: StatusCode) -> &'static str {
    match status {
        StatusCode::UNAUTHORIZED => "M_UNAUTHORIZED",
        StatusCode::FORBIDDEN => "M_FORBIDDEN",
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => "M_UNRECOGNIZED",
        StatusCode::PAYLOAD_TOO_LARGE => "M_TOO_LARGE",
        StatusCode::TOO_MANY_REQUESTS => "M_LIMIT_EXCEEDED",
        _ => "M_UNKNOWN",
    }
}
