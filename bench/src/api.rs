//! The HTTP side: one pooled client for every request of the run, and the few Client-Server API
//! calls the scenarios use (all standard v3 endpoints).

use std::fmt;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::Method;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::matrix::{MessagesPage, SyncResponse};

pub const V3: &str = "/_matrix/client/v3";

#[derive(Debug)]
pub enum ApiError {
    /// The server answered with a status the caller did not expect.
    Status {
        what: String,
        status: u16,
        errcode: Option<String>,
        body: String,
    },
    /// No answer: connection refused or reset, timeout.
    Transport { what: String, msg: String },
    /// An answer we could not read.
    Decode { what: String, msg: String },
}

impl ApiError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A 404 or 405 (or the M_UNRECOGNIZED that comes with a 400 on some servers) means the
    /// server has no such endpoint: the scenario is skipped, not failed.
    pub fn is_unsupported(&self) -> bool {
        match self {
            ApiError::Status {
                status, errcode, ..
            } => {
                matches!(status, 404 | 405)
                    || (*status == 400 && errcode.as_deref() == Some("M_UNRECOGNIZED"))
            }
            _ => false,
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Status {
                what, status, body, ..
            } => write!(f, "{what} -> HTTP {status} {body}"),
            ApiError::Transport { what, msg } => write!(f, "{what}: {msg}"),
            ApiError::Decode { what, msg } => write!(f, "{what}: bad response: {msg}"),
        }
    }
}

impl std::error::Error for ApiError {}

/// Request counts for the run's summary; atomics because every task of the run updates them.
pub struct Counters {
    pub requests: AtomicU64,
    pub http_errors: AtomicU64,
    pub transport_errors: AtomicU64,
    pub rate_limited: AtomicU64,
    by_status: Vec<AtomicU64>,
    samples: Mutex<Vec<String>>,
}

impl Counters {
    fn new() -> Counters {
        Counters {
            requests: AtomicU64::new(0),
            http_errors: AtomicU64::new(0),
            transport_errors: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            by_status: (0..600).map(|_| AtomicU64::new(0)).collect(),
            samples: Mutex::new(Vec::new()),
        }
    }

    fn status(&self, s: u16) {
        if let Some(c) = self.by_status.get(usize::from(s)) {
            c.fetch_add(1, Relaxed);
        }
    }

    pub fn sample(&self, msg: &str) {
        let mut s = self.samples.lock().unwrap();
        if s.len() < 25 {
            s.push(msg.chars().take(400).collect());
        }
    }

    pub fn report(&self) -> (Value, Vec<String>) {
        let by_status: serde_json::Map<String, Value> = self
            .by_status
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let n = c.load(Relaxed);
                (n > 0).then(|| (i.to_string(), json!(n)))
            })
            .collect();
        let v = json!({
            "total": self.requests.load(Relaxed),
            "http_errors": self.http_errors.load(Relaxed),
            "transport_errors": self.transport_errors.load(Relaxed),
            "rate_limited_429": self.rate_limited.load(Relaxed),
            "by_status": by_status,
        });
        (v, self.samples.lock().unwrap().clone())
    }
}

pub struct Resp {
    pub status: u16,
    pub body: Bytes,
    /// When the last byte of the body arrived: the moment a client could show the content.
    pub at: Instant,
}

impl Resp {
    pub fn json<T: DeserializeOwned>(&self, what: &str) -> Result<T, ApiError> {
        serde_json::from_slice(&self.body).map_err(|e| ApiError::Decode {
            what: what.to_owned(),
            msg: e.to_string(),
        })
    }
}

/// A response body that was counted, not kept.
pub struct Counted {
    pub bytes: u64,
    /// When the last byte arrived.
    pub at: Instant,
}

/// Content's `mxc://<serverName>/<mediaId>`, which names it in the download and thumbnail paths.
#[derive(Debug, Clone, PartialEq)]
pub struct Mxc {
    pub server_name: String,
    pub media_id: String,
}

impl Mxc {
    pub fn parse(uri: &str) -> Option<Mxc> {
        let (server_name, media_id) = uri.strip_prefix("mxc://")?.split_once('/')?;
        (!server_name.is_empty() && !media_id.is_empty() && !media_id.contains('/')).then(|| Mxc {
            server_name: server_name.to_owned(),
            media_id: media_id.to_owned(),
        })
    }

    /// `{serverName}/{mediaId}`, encoded for a path: a server name may carry a port.
    pub fn path(&self) -> String {
        format!("{}/{}", enc(&self.server_name), enc(&self.media_id))
    }
}

pub struct Api {
    http: reqwest::Client,
    base: String,
    pub counters: Counters,
    timeout: Duration,
    max_429_retries: u32,
}

pub fn bearer(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer {token}")).expect("access tokens are visible ASCII")
}

impl Api {
    pub fn new(base: &str, timeout: Duration, max_429_retries: u32) -> Result<Api, ApiError> {
        let http = reqwest::Client::builder()
            // Every concurrent request needs its own HTTP/1.1 connection; keep all of them for
            // reuse instead of reconnecting between a scenario's rounds.
            .pool_max_idle_per_host(usize::MAX)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ApiError::Transport {
                what: "building the HTTP client".into(),
                msg: e.to_string(),
            })?;
        Ok(Api {
            http,
            base: base.trim_end_matches('/').to_owned(),
            counters: Counters::new(),
            timeout,
            max_429_retries,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `path` is either absolute (`/_matrix/...`) or relative to the v3 prefix, and carries its
    /// query string already encoded.
    fn url(&self, path: &str) -> String {
        if path.starts_with("/_matrix") {
            format!("{}{path}", self.base)
        } else {
            format!("{}{V3}{path}", self.base)
        }
    }

    /// A JSON request; see [`Api::call_typed`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        auth: Option<&HeaderValue>,
        body: Option<Bytes>,
        timeout: Option<Duration>,
        expect: &[u16],
    ) -> Result<Resp, ApiError> {
        let body = body.map(|b| ("application/json", b));
        self.call_typed(method, path, auth, body, timeout, expect)
            .await
    }

    /// A request with a body of any content type. A 429 is retried with the same `Bytes`, which
    /// is a reference count, not a copy: a media upload is never duplicated in memory.
    pub async fn call_typed(
        &self,
        method: Method,
        path: &str,
        auth: Option<&HeaderValue>,
        body: Option<(&'static str, Bytes)>,
        timeout: Option<Duration>,
        expect: &[u16],
    ) -> Result<Resp, ApiError> {
        let url = self.url(path);
        let what = || what(&method, path);
        let mut attempt = 0;
        loop {
            let mut rb = self
                .http
                .request(method.clone(), &url)
                .timeout(timeout.unwrap_or(self.timeout));
            if let Some(a) = auth {
                rb = rb.header(AUTHORIZATION, a.clone());
            }
            if let Some((content_type, b)) = &body {
                rb = rb.header(CONTENT_TYPE, *content_type).body(b.clone());
            }
            self.counters.requests.fetch_add(1, Relaxed);
            let answer = async {
                let resp = rb.send().await?;
                let status = resp.status().as_u16();
                Ok::<_, reqwest::Error>((status, resp.bytes().await?))
            }
            .await;
            let (status, bytes) = match answer {
                Ok(x) => x,
                Err(e) => return Err(self.transport_error(what(), &e)),
            };
            let at = Instant::now();
            self.counters.status(status);
            if status == 429 && attempt < self.max_429_retries {
                attempt += 1;
                self.counters.rate_limited.fetch_add(1, Relaxed);
                let wait_ms = serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .and_then(|v| v.get("retry_after_ms").and_then(Value::as_u64))
                    .unwrap_or(500);
                tokio::time::sleep(Duration::from_millis(wait_ms.clamp(10, 5000))).await;
                continue;
            }
            if expect.contains(&status) {
                return Ok(Resp {
                    status,
                    body: bytes,
                    at,
                });
            }
            return Err(self.status_error(what(), status, &bytes));
        }
    }

    fn transport_error(&self, what: String, e: &reqwest::Error) -> ApiError {
        self.counters.transport_errors.fetch_add(1, Relaxed);
        let err = ApiError::Transport {
            what,
            msg: error_chain(e),
        };
        self.counters.sample(&err.to_string());
        err
    }

    fn status_error(&self, what: String, status: u16, bytes: &[u8]) -> ApiError {
        self.counters.http_errors.fetch_add(1, Relaxed);
        let errcode = serde_json::from_slice::<Value>(bytes)
            .ok()
            .and_then(|v| v.get("errcode").and_then(Value::as_str).map(str::to_owned));
        let err = ApiError::Status {
            what,
            status,
            errcode,
            body: String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned(),
        };
        self.counters.sample(&err.to_string());
        err
    }

    /// A GET that expects a 200 and counts its body as it arrives instead of keeping it, so that
    /// a 100 MiB download costs the generator no memory. No 429 retry: a retried download would
    /// be timed twice.
    pub async fn get_counted(
        &self,
        path: &str,
        auth: &HeaderValue,
        timeout: Duration,
    ) -> Result<Counted, ApiError> {
        let url = self.url(path);
        self.counters.requests.fetch_add(1, Relaxed);
        let answer = async {
            let mut resp = self
                .http
                .get(&url)
                .timeout(timeout)
                .header(AUTHORIZATION, auth.clone())
                .send()
                .await?;
            let status = resp.status().as_u16();
            if status != 200 {
                return Ok((status, 0, resp.bytes().await?));
            }
            let mut n = 0u64;
            while let Some(chunk) = resp.chunk().await? {
                n += chunk.len() as u64;
            }
            Ok::<_, reqwest::Error>((status, n, Bytes::new()))
        }
        .await;
        let (status, bytes, error_body) = match answer {
            Ok(x) => x,
            Err(e) => return Err(self.transport_error(what(&Method::GET, path), &e)),
        };
        let at = Instant::now();
        self.counters.status(status);
        if status != 200 {
            return Err(self.status_error(what(&Method::GET, path), status, &error_body));
        }
        Ok(Counted { bytes, at })
    }

    /// `POST /_matrix/media/v3/upload`: the `mxc://` URI of the stored content, and when the
    /// answer arrived.
    pub async fn upload(
        &self,
        auth: &HeaderValue,
        content_type: &'static str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(Mxc, Instant), ApiError> {
        let r = self
            .call_typed(
                Method::POST,
                "/_matrix/media/v3/upload",
                Some(auth),
                Some((content_type, body)),
                Some(timeout),
                &[200],
            )
            .await?;
        let v: Value = r.json("POST /upload")?;
        let mxc = v
            .get("content_uri")
            .and_then(Value::as_str)
            .and_then(Mxc::parse)
            .ok_or_else(|| ApiError::Decode {
                what: "POST /upload".into(),
                msg: format!("no mxc:// content_uri in {v}"),
            })?;
        Ok((mxc, r.at))
    }

    pub async fn get(&self, path: &str, auth: Option<&HeaderValue>) -> Result<Resp, ApiError> {
        self.call(Method::GET, path, auth, None, None, &[200]).await
    }

    pub async fn post_json(
        &self,
        path: &str,
        auth: Option<&HeaderValue>,
        body: &Value,
    ) -> Result<Resp, ApiError> {
        let b = Bytes::from(serde_json::to_vec(body).expect("a Value serializes"));
        self.call(Method::POST, path, auth, Some(b), None, &[200])
            .await
    }

    pub async fn versions(&self) -> Result<Value, ApiError> {
        self.get("/_matrix/client/versions", None)
            .await?
            .json("GET /versions")
    }

    pub async fn create_room(&self, auth: &HeaderValue, body: &Value) -> Result<String, ApiError> {
        let v: Value = self
            .post_json("/createRoom", Some(auth), body)
            .await?
            .json("createRoom")?;
        room_id_of(&v, "createRoom")
    }

    pub async fn join(&self, auth: &HeaderValue, room_id: &str) -> Result<(), ApiError> {
        self.post_json(&format!("/join/{}", enc(room_id)), Some(auth), &json!({}))
            .await
            .map(drop)
    }

    /// Sends an `m.text` message. `body` must need no JSON escaping (ours are ASCII words and
    /// digits), which spares the hot path a serializer.
    pub async fn send_text(
        &self,
        auth: &HeaderValue,
        room_enc: &str,
        txn: &str,
        body: &str,
    ) -> Result<Resp, ApiError> {
        debug_assert!(!body.contains(['"', '\\']));
        let content = format!(r#"{{"msgtype":"m.text","body":"{body}"}}"#);
        self.call(
            Method::PUT,
            &format!("/rooms/{room_enc}/send/m.room.message/{}", enc(txn)),
            Some(auth),
            Some(Bytes::from(content)),
            None,
            &[200],
        )
        .await
    }

    pub async fn typing(
        &self,
        auth: &HeaderValue,
        room_id: &str,
        user_id: &str,
        typing: bool,
    ) -> Result<Resp, ApiError> {
        let body: &'static [u8] = if typing {
            br#"{"typing":true,"timeout":30000}"#
        } else {
            br#"{"typing":false}"#
        };
        self.call(
            Method::PUT,
            &format!("/rooms/{}/typing/{}", enc(room_id), enc(user_id)),
            Some(auth),
            Some(Bytes::from_static(body)),
            None,
            &[200],
        )
        .await
    }

    /// A /sync; the request timeout leaves the long-poll room to run out on the server.
    pub async fn sync(
        &self,
        auth: &HeaderValue,
        since: Option<&str>,
        timeout_ms: u64,
        filter: Option<&str>,
        set_presence: &str,
    ) -> Result<(SyncResponse, Instant), ApiError> {
        let mut q = format!(
            "/sync?timeout={timeout_ms}&set_presence={}",
            enc(set_presence)
        );
        if let Some(s) = since {
            let _ = write!(q, "&since={}", enc(s));
        }
        if let Some(f) = filter {
            let _ = write!(q, "&filter={}", enc(f));
        }
        let limit = Duration::from_millis(timeout_ms) + self.timeout;
        let r = self
            .call(Method::GET, &q, Some(auth), None, Some(limit), &[200])
            .await?;
        Ok((r.json("GET /sync")?, r.at))
    }

    pub async fn messages(
        &self,
        auth: &HeaderValue,
        room_enc: &str,
        from: &str,
        limit: usize,
    ) -> Result<MessagesPage, ApiError> {
        let path = format!(
            "/rooms/{room_enc}/messages?dir=b&limit={limit}&from={}",
            enc(from)
        );
        self.get(&path, Some(auth)).await?.json("GET /messages")
    }
}

fn room_id_of(v: &Value, what: &str) -> Result<String, ApiError> {
    v.get("room_id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| ApiError::Decode {
            what: what.into(),
            msg: format!("no room_id in {v}"),
        })
}

/// "GET /path" for error messages: the query string may hold a token.
fn what(method: &Method, path: &str) -> String {
    let p = path.split('?').next().unwrap_or(path);
    format!("{method} {p}")
}

/// reqwest's Display stops at "error sending request"; the cause is further down the chain.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let _ = write!(s, ": {c}");
        src = c.source();
    }
    s
}

/// Percent-encodes everything but RFC 3986's unreserved characters: room IDs (`!a:b`), user IDs
/// (`@a:b`) and sync tokens go into paths and query strings as they are.
pub fn enc(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            o.push(char::from(b));
        } else {
            let _ = write!(o, "%{b:02X}");
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_matrix_ids() {
        assert_eq!(enc("!abc:localhost"), "%21abc%3Alocalhost");
        assert_eq!(enc("@u_1.x~-:h"), "%40u_1.x~-%3Ah");
        assert_eq!(enc("{\"a\":1}"), "%7B%22a%22%3A1%7D");
        assert_eq!(enc("é"), "%C3%A9");
    }

    #[test]
    fn unsupported_means_missing_endpoint() {
        let e = |status, errcode: Option<&str>| ApiError::Status {
            what: String::new(),
            status,
            errcode: errcode.map(str::to_owned),
            body: String::new(),
        };
        assert!(e(404, Some("M_UNRECOGNIZED")).is_unsupported());
        assert!(e(400, Some("M_UNRECOGNIZED")).is_unsupported());
        assert!(!e(400, Some("M_BAD_JSON")).is_unsupported());
        assert!(!e(403, None).is_unsupported());
    }

    #[test]
    fn parses_content_uris() {
        let m = Mxc::parse("mxc://localhost:8028/AbC_1").unwrap();
        assert_eq!(m.server_name, "localhost:8028");
        assert_eq!(m.media_id, "AbC_1");
        assert_eq!(m.path(), "localhost%3A8028/AbC_1");
        assert!(Mxc::parse("https://h/x").is_none());
        assert!(Mxc::parse("mxc://h/").is_none());
        assert!(Mxc::parse("mxc://h/a/b").is_none());
    }
}
