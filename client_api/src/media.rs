//! Content repository (spec: "Content repository"): uploads stream to disk, authenticated
//! downloads stream from it, with `Range` support.
//!
//! These handlers take axum's body and headers directly instead of ruma's request types, which
//! would buffer a whole upload in memory.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, QueryParams};
use crate::rate_limit::{Action, Key};
use hearth_core::media::{Method, content_disposition};

#[derive(Deserialize)]
pub struct UploadQuery {
    filename: Option<String>,
}

/// `POST /_matrix/media/v3/upload`
pub async fn upload(
    State(state): State<AppState>,
    Auth(session): Auth,
    QueryParams(q): QueryParams<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    check_declared_size(&state, &headers)?;
    state
        .limiter
        .check(Key::User(session.user_id.to_string()))?;
    state.limit(
        Action::MediaCreate,
        [Key::User(session.user_id.to_string())],
    )?;
    let media_id = state
        .core
        .media
        .upload(
            &session.user_id,
            content_type_of(&headers),
            q.filename,
            reader(body),
        )
        .await?;
    let uri = format!("mxc://{}/{media_id}", state.core.config.server_name);
    Ok(axum::Json(json!({ "content_uri": uri })).into_response())
}

/// A declared size past the limit is refused before a byte is read.
fn check_declared_size(state: &AppState, headers: &HeaderMap) -> ApiResult<()> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.core.media.max_upload_bytes()) {
        return Err(hearth_core::Error::TooLarge("Upload too large".into()).into());
    }
    Ok(())
}

fn content_type_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn reader(body: Body) -> impl tokio::io::AsyncRead + Unpin {
    tokio_util::io::StreamReader::new(body.into_data_stream().map_err(std::io::Error::other))
}

/// `POST /_matrix/media/v1/create`
pub async fn create(State(state): State<AppState>, Auth(session): Auth) -> ApiResult<Response> {
    state
        .limiter
        .check(Key::User(session.user_id.to_string()))?;
    state.limit(
        Action::MediaCreate,
        [Key::User(session.user_id.to_string())],
    )?;
    let (media_id, expires) = state.core.media.create_pending(&session.user_id).await?;
    let uri = format!("mxc://{}/{media_id}", state.core.config.server_name);
    Ok(axum::Json(json!({ "content_uri": uri, "unused_expires_at": expires })).into_response())
}

/// `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`
pub async fn upload_created(
    State(state): State<AppState>,
    Auth(session): Auth,
    Path((server_name, media_id)): Path<(String, String)>,
    QueryParams(q): QueryParams<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    check_declared_size(&state, &headers)?;
    state
        .core
        .media
        .upload_pending(
            &session.user_id,
            &server_name,
            &media_id,
            content_type_of(&headers),
            q.filename,
            reader(body),
        )
        .await?;
    Ok(axum::Json(json!({})).into_response())
}

/// `GET /_matrix/client/v1/media/config` (and the older `/_matrix/media/v3/config`)
pub async fn config(State(state): State<AppState>, Auth(_): Auth) -> impl IntoResponse {
    axum::Json(json!({ "m.upload.size": state.core.media.max_upload_bytes() }))
}

#[derive(Deserialize)]
pub struct DownloadQuery {
    timeout_ms: Option<u64>,
}

/// How long a download waits for the bytes of a created media id, at most (the spec's default).
const MAX_WAIT_MS: u64 = 20_000;

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}[/{fileName}]`
pub async fn download(
    State(state): State<AppState>,
    Auth(_): Auth,
    Path(path): Path<Vec<String>>,
    QueryParams(q): QueryParams<DownloadQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    download_path(&state, path, q, &headers).await
}

async fn download_path(
    state: &AppState,
    path: Vec<String>,
    q: DownloadQuery,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let mut parts = path.into_iter();
    let (Some(server_name), Some(media_id)) = (parts.next(), parts.next()) else {
        return Err(ApiError::unrecognized());
    };
    let wait =
        std::time::Duration::from_millis(q.timeout_ms.unwrap_or(MAX_WAIT_MS).min(MAX_WAIT_MS));
    let (record, file) = state
        .core
        .media
        .get_waiting(&server_name, &media_id, wait)
        .await?;
    let content_type = record
        .content_type
        .clone()
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    let filename = parts.next().or(record.filename.clone());
    serve_file(
        &file,
        record.size,
        &content_type,
        filename.as_deref(),
        headers,
    )
    .await
}

/// The unauthenticated `GET /_matrix/media/v3/download/...`: frozen by spec v1.11, so it serves
/// nothing unless the operator turned it back on.
pub async fn legacy_download(
    State(state): State<AppState>,
    Path(path): Path<Vec<String>>,
    QueryParams(q): QueryParams<DownloadQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if !state.config.legacy_unauthenticated_media {
        return Err(ApiError::not_found(
            "Media is served by /_matrix/client/v1/media",
        ));
    }
    download_path(&state, path, q, &headers).await
}

/// The unauthenticated `GET /_matrix/media/v3/thumbnail/...`, under the same freeze.
pub async fn legacy_thumbnail(
    State(state): State<AppState>,
    Path((server_name, media_id)): Path<(String, String)>,
    QueryParams(q): QueryParams<ThumbnailQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if !state.config.legacy_unauthenticated_media {
        return Err(ApiError::not_found(
            "Media is served by /_matrix/client/v1/media",
        ));
    }
    thumbnail_of(&state, &server_name, &media_id, q, &headers).await
}

/// A single `bytes=a-b`, `bytes=a-` or `bytes=-n` range within `size`: `(start, len)`.
/// `Err` for a range past the end; `Ok(None)` for no (or an unsupported multi-) range.
fn parse_range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
    else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (start, end) = match (a.parse::<u64>().ok(), b.parse::<u64>().ok()) {
        (Some(s), Some(e)) if s <= e => (s, e.min(size.saturating_sub(1))),
        (Some(s), None) if b.is_empty() => (s, size.saturating_sub(1)),
        (None, Some(n)) if a.is_empty() && n > 0 => {
            (size.saturating_sub(n), size.saturating_sub(1))
        }
        _ => return Ok(None),
    };
    if start >= size {
        return Err(());
    }
    Ok(Some((start, end - start + 1)))
}

#[derive(Deserialize)]
pub struct ThumbnailQuery {
    width: Option<u32>,
    height: Option<u32>,
    method: Option<String>,
}

/// `GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}`
pub async fn thumbnail(
    State(state): State<AppState>,
    Auth(_): Auth,
    Path((server_name, media_id)): Path<(String, String)>,
    QueryParams(q): QueryParams<ThumbnailQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    thumbnail_of(&state, &server_name, &media_id, q, &headers).await
}

async fn thumbnail_of(
    state: &AppState,
    server_name: &str,
    media_id: &str,
    q: ThumbnailQuery,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let (Some(width), Some(height)) = (q.width, q.height) else {
        return Err(
            hearth_core::Error::MissingParam("width and height are required".into()).into(),
        );
    };
    if width == 0 || height == 0 {
        return Err(ApiError::invalid_param("width and height must be positive"));
    }
    let method = match q.method.as_deref() {
        None => Method::Scale,
        Some(m) => Method::parse(m)
            .ok_or_else(|| ApiError::invalid_param("method must be crop or scale"))?,
    };
    let thumb = state
        .core
        .media
        .thumbnail(server_name, media_id, width, height, method)
        .await?;
    serve_file(&thumb.path, thumb.size, thumb.content_type, None, headers).await
}

async fn serve_file(
    path: &std::path::Path,
    size: u64,
    content_type: &str,
    filename: Option<&str>,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| ApiError::from(hearth_core::Error::internal(format!("media file: {e}"))))?;
    let range = match parse_range(headers, size) {
        Ok(r) => r,
        Err(()) => {
            let mut resp = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(resp);
        }
    };
    let (status, start, len) = match range {
        Some((start, len)) => (StatusCode::PARTIAL_CONTENT, start, len),
        None => (StatusCode::OK, 0, size),
    };
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|e| ApiError::from(hearth_core::Error::internal(e)))?;
    }
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
        file.take(len),
        64 * 1024,
    ));
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    let mut set = |name: header::HeaderName, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    };
    set(header::CONTENT_TYPE, content_type);
    set(header::CONTENT_LENGTH, &len.to_string());
    set(
        header::CONTENT_DISPOSITION,
        &content_disposition(content_type, filename),
    );
    set(header::ACCEPT_RANGES, "bytes");
    set(
        header::CONTENT_SECURITY_POLICY,
        "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; media-src 'self'; object-src 'self';",
    );
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(
        header::CACHE_CONTROL,
        "private, max-age=31536000, immutable",
    );
    if status == StatusCode::PARTIAL_CONTENT {
        set(
            header::CONTENT_RANGE,
            &format!("bytes {start}-{}/{size}", start + len - 1),
        );
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(v: &str, size: u64) -> Result<Option<(u64, u64)>, ()> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
        parse_range(&h, size)
    }

    #[test]
    fn ranges_are_read_as_rfc_9110_says() {
        assert_eq!(range("bytes=0-99", 1000), Ok(Some((0, 100))));
        assert_eq!(range("bytes=900-", 1000), Ok(Some((900, 100))));
        assert_eq!(range("bytes=-10", 1000), Ok(Some((990, 10))));
        assert_eq!(range("bytes=990-5000", 1000), Ok(Some((990, 10))));
        assert_eq!(range("bytes=1000-", 1000), Err(()));
        assert_eq!(range("bytes=5-1", 1000), Ok(None));
        assert_eq!(range("bytes=0-1,5-6", 1000), Ok(None));
    }
}
