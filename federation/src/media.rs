//! Media over federation (spec v1.11, "Content repository" in the Server-Server API): serving
//! local media as `multipart/mixed` (a JSON metadata part, then the bytes), and fetching other
//! servers' media for local users, reading that format as it streams in.
//!
//! Neither side holds a file in memory: the served body is a stream over the file, and the
//! fetched body is a stream that hands the content part on as it arrives, holding back only
//! enough bytes to recognise the closing boundary.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State as AxState};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use hearth_core::media::Method;
use hearth_core::remote::RemoteMedia;
use http::{HeaderValue, header};
use ruma::ServerName;

use crate::State;
use crate::auth::Signed;
use crate::error::FedError;

/// How long fetching one piece of remote media may take (100 MB on a slow link).
const FETCH_TIMEOUT: Duration = Duration::from_secs(600);
/// The metadata and content headers must arrive within this many bytes.
const MAX_HEAD: usize = 64 * 1024;

fn boundary() -> String {
    format!("hearth{}", hearth_core::util::random_string(24))
}

/// A `multipart/mixed` answer: empty metadata, then the file.
async fn multipart(
    path: &std::path::Path,
    content_type: &str,
    filename: Option<&str>,
) -> Result<Response, FedError> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| FedError::from(hearth_core::Error::internal(format!("media file: {e}"))))?;
    let boundary = boundary();
    let disposition = hearth_core::media::content_disposition(content_type, filename);
    let head = format!(
        "\r\n--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{boundary}\r\n\
         Content-Type: {content_type}\r\nContent-Disposition: {disposition}\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let stream = futures_util::stream::once(async move { Ok(Bytes::from(head)) })
        .chain(tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024))
        .chain(futures_util::stream::once(
            async move { Ok(Bytes::from(tail)) },
        ));
    let mut resp = Body::from_stream(stream).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("multipart/mixed; boundary={boundary}")) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    Ok(resp)
}

/// `GET /_matrix/federation/v1/media/download/{mediaId}`
pub async fn download(
    AxState(state): AxState<State>,
    Path(media_id): Path<String>,
    _signed: Signed,
) -> Result<Response, FedError> {
    let own = state.core.config.server_name.to_string();
    let (record, path) = state.core.media.get(&own, &media_id)?;
    let content_type = record
        .content_type
        .as_deref()
        .unwrap_or("application/octet-stream");
    multipart(&path, content_type, record.filename.as_deref()).await
}

#[derive(serde::Deserialize)]
struct ThumbnailQuery {
    width: u32,
    height: u32,
    method: Option<String>,
}

/// `GET /_matrix/federation/v1/media/thumbnail/{mediaId}`
pub async fn thumbnail(
    AxState(state): AxState<State>,
    Path(media_id): Path<String>,
    uri: http::Uri,
    _signed: Signed,
) -> Result<Response, FedError> {
    let Query(q) = Query::<ThumbnailQuery>::try_from_uri(&uri).map_err(|e| {
        FedError::new(
            http::StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
            e.body_text(),
        )
    })?;
    let own = state.core.config.server_name.to_string();
    let method = q
        .method
        .as_deref()
        .and_then(Method::parse)
        .unwrap_or(Method::Scale);
    let thumb = state
        .core
        .media
        .thumbnail(&own, &media_id, q.width.max(1), q.height.max(1), method)
        .await?;
    multipart(&thumb.path, thumb.content_type, None).await
}

type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

fn chunks(resp: reqwest::Response) -> ByteStream {
    Box::pin(futures_util::stream::unfold(resp, |mut resp| async move {
        match resp.chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), resp)),
            Ok(None) => None,
            Err(e) => Some((Err(std::io::Error::other(e)), resp)),
        }
    }))
}

fn bad_peer(server: &ServerName, what: &str) -> hearth_core::Error {
    hearth_core::Error::Unknown(format!("{server} sent malformed media: {what}"))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The headers of a multipart part as lowercase `(name, value)` pairs.
fn part_headers(block: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(block)
        .split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect()
}

/// Fetches `media_id` from its origin: the multipart answer is read up to the content part's
/// headers; the content then streams on. A `Location` part is followed with a plain GET.
pub async fn fetch(
    federation: &crate::Federation,
    server: &ServerName,
    media_id: &str,
) -> hearth_core::Result<RemoteMedia> {
    let path = format!("/_matrix/federation/v1/media/download/{media_id}");
    let resp = federation
        .client
        .get_streaming(server, &path, FETCH_TIMEOUT)
        .await
        .map_err(|e| match e.errcode {
            "M_NOT_FOUND" => hearth_core::Error::not_found("Remote media not found"),
            _ => hearth_core::Error::Unknown(e.to_string()),
        })?;
    let boundary = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| {
            ct.split(';')
                .map(str::trim)
                .find_map(|p| p.strip_prefix("boundary="))
                .map(|b| b.trim_matches('"').to_owned())
        })
        .ok_or_else(|| bad_peer(server, "not multipart"))?;
    let mut stream = chunks(resp);
    let mut buf = BytesMut::new();
    let delimiter = format!("--{boundary}");
    // Wait for: delimiter, JSON part, delimiter, content headers, blank line.
    let (headers, body_start) = loop {
        if let Some(parsed) = parse_head(&buf, delimiter.as_bytes()) {
            break parsed;
        }
        if buf.len() > MAX_HEAD {
            return Err(bad_peer(server, "headers too long"));
        }
        match stream.next().await {
            Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
            Some(Err(e)) => return Err(hearth_core::Error::Unknown(e.to_string())),
            None => return Err(bad_peer(server, "ended early")),
        }
    };
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    if let Some(location) = header("location") {
        let resp = federation
            .client
            .get_url(&location, FETCH_TIMEOUT)
            .await
            .map_err(|e| hearth_core::Error::Unknown(e.to_string()))?;
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = tokio_util::io::StreamReader::new(chunks(resp));
        return Ok(RemoteMedia {
            content_type,
            filename: None,
            body: Box::pin(body),
        });
    }
    let filename = header("content-disposition").and_then(|d| filename_of(&d));
    let rest = buf.split_off(body_start).freeze();
    let content = ContentPart::new(stream, rest, format!("\r\n--{boundary}").into_bytes());
    Ok(RemoteMedia {
        content_type: header("content-type"),
        filename,
        body: Box::pin(tokio_util::io::StreamReader::new(content)),
    })
}

/// Finds the content part's headers; answers them and where the content starts.
fn parse_head(buf: &[u8], delimiter: &[u8]) -> Option<(Vec<(String, String)>, usize)> {
    let first = find(buf, delimiter)?;
    let after_first = first + delimiter.len();
    let second = after_first + find(&buf[after_first..], delimiter)?;
    let headers_start = second + delimiter.len();
    let headers_len = find(&buf[headers_start..], b"\r\n\r\n")?;
    let block = &buf[headers_start..headers_start + headers_len];
    Some((part_headers(block), headers_start + headers_len + 4))
}

/// `filename*=utf-8''…` (RFC 8187) or `filename="…"`.
fn filename_of(disposition: &str) -> Option<String> {
    for param in disposition.split(';').map(str::trim) {
        if let Some(v) = param.strip_prefix("filename*=") {
            let encoded = v.split("''").nth(1).unwrap_or(v);
            return percent_encoding::percent_decode_str(encoded)
                .decode_utf8()
                .ok()
                .map(|c| c.into_owned());
        }
    }
    disposition
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("filename="))
        .map(|v| v.trim_matches('"').to_owned())
}

/// The last part's content: everything up to the closing delimiter. The last bytes stay held
/// until more arrive, since the delimiter may straddle two chunks.
struct ContentPart {
    inner: ByteStream,
    held: BytesMut,
    closing: Vec<u8>,
    /// How much of `held` was searched for the delimiter already.
    scanned: usize,
    done: bool,
}

impl ContentPart {
    fn new(inner: ByteStream, start: Bytes, closing: Vec<u8>) -> Self {
        Self {
            inner,
            held: BytesMut::from(&start[..]),
            closing,
            scanned: 0,
            done: false,
        }
    }

    /// Hands on all but the bytes that could start the delimiter.
    fn release(&mut self) -> Bytes {
        let keep = self.closing.len() - 1;
        let n = self.held.len() - keep;
        let out = self.held.split_to(n).freeze();
        self.scanned = self.held.len();
        out
    }
}

impl Stream for ContentPart {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let keep = self.closing.len() - 1;
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            // Only the new bytes (and the few before them a delimiter could start in) are
            // searched, so small chunks do not make this quadratic.
            let from = self.scanned.saturating_sub(keep);
            if let Some(at) = find(&self.held[from..], &self.closing) {
                self.done = true;
                let content = self.held.split_to(from + at).freeze();
                return Poll::Ready((!content.is_empty()).then_some(Ok(content)));
            }
            self.scanned = self.held.len();
            if self.held.len() > keep + 64 * 1024 {
                return Poll::Ready(Some(Ok(self.release())));
            }
            match self.inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => self.held.extend_from_slice(&chunk),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(std::io::Error::other(
                        "the media ended without its closing boundary",
                    ))));
                }
                Poll::Pending if self.held.len() > keep => {
                    return Poll::Ready(Some(Ok(self.release())));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse_all(body: &[u8], boundary: &str, chunk: usize) -> Vec<u8> {
        let head = parse_head(body, format!("--{boundary}").as_bytes()).unwrap();
        let pieces: Vec<std::io::Result<Bytes>> = body[head.1..]
            .chunks(chunk)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let mut part = ContentPart::new(
            Box::pin(futures_util::stream::iter(pieces)),
            Bytes::new(),
            format!("\r\n--{boundary}").into_bytes(),
        );
        let mut out = Vec::new();
        while let Some(c) = part.next().await {
            out.extend_from_slice(&c.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn the_content_part_comes_out_whole_however_it_is_chunked() {
        let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let body = [
            b"\r\n--XyZ\r\nContent-Type: application/json\r\n\r\n{}\r\n--XyZ\r\nContent-Type: image/png\r\nContent-Disposition: inline; filename*=utf-8''a%20b.png\r\n\r\n".as_slice(),
            &content,
            b"\r\n--XyZ--\r\n",
        ]
        .concat();
        let (headers, _) = parse_head(&body, b"--XyZ").unwrap();
        assert!(headers.contains(&("content-type".into(), "image/png".into())));
        assert_eq!(
            filename_of("inline; filename*=utf-8''a%20b.png").as_deref(),
            Some("a b.png")
        );
        for chunk in [1, 3, 7, 4096, 1 << 20] {
            assert!(
                parse_all(&body, "XyZ", chunk).await == content,
                "chunk size {chunk}"
            );
        }
    }
}
