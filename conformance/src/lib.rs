//! Black-box conformance harness for the Hearth homeserver.
//!
//! [`TestServer`] spawns the real `hearth` binary on a free loopback port with
//! a fresh data directory, waits until `GET /_matrix/client/versions` answers
//! 200 and kills the process when dropped.  The helpers on it speak raw HTTP
//! (reqwest + serde_json) so that tests can check status codes and error
//! bodies exactly as the Matrix Client-Server specification describes them.
//!
//! Running: `cargo build -p hearth && cargo test -p hearth-conformance`.
//! The server binary is `<target>/debug/hearth` next to the test binaries,
//! or whatever `HEARTH_BIN` points to. Set `HEARTH_KEEP_DATA=1` to keep the
//! data directories (they are always kept, with the server log, when a test
//! panics). `scripts/synapse-as-hearth.sh` runs the suite against Synapse as
//! a reference.

pub mod push_gateway;

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use reqwest::Method;
pub use serde_json::{Value, json};

/// How long to wait for the server to answer `/versions`.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout of a single raw HTTP request made by the helpers.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

static DIR_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Prefix of every client-server API path used by the tests.
pub const CLIENT_V3: &str = "/_matrix/client/v3";

/// Builder for a [`TestServer`]; lets a test add or override environment
/// variables before the server starts.
#[derive(Debug, Default, Clone)]
pub struct TestServerBuilder {
    env: Vec<(String, String)>,
}

impl TestServerBuilder {
    /// Set an environment variable for the server process (overrides the
    /// harness defaults).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Start the server and wait until it is ready.
    pub async fn start(self) -> TestServer {
        let port = free_port();
        let data_dir = make_data_dir();
        let mut server = TestServer {
            child: None,
            port,
            data_dir,
            extra_env: self.env,
            http: new_http_client(),
            starts: 0,
        };
        server.spawn_and_wait().await;
        server
    }
}

/// A running `hearth` process owned by a test.
#[derive(Debug)]
pub struct TestServer {
    child: Option<Child>,
    port: u16,
    data_dir: PathBuf,
    extra_env: Vec<(String, String)>,
    http: reqwest::Client,
    starts: u32,
}

/// Result of a raw request: HTTP status and the body parsed as JSON (or
/// `Value::Null` when the body is empty, or `Value::String(body)` when it is
/// not JSON).
pub type Response = (u16, Value);

impl TestServer {
    /// Start a server with the default configuration.
    pub async fn start() -> TestServer {
        TestServerBuilder::default().start().await
    }

    /// A builder to add environment variables before starting.
    pub fn builder() -> TestServerBuilder {
        TestServerBuilder::default()
    }

    /// `http://127.0.0.1:<port>`
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server name the server was started with.
    pub fn server_name(&self) -> &'static str {
        "localhost"
    }

    /// The data directory of the server.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Path of the log file holding the server's stdout and stderr.
    pub fn log_path(&self) -> PathBuf {
        self.data_dir.join("hearth.log")
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let start = all.len().saturating_sub(lines);
        all[start..].join("\n")
    }

    /// The server process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the server process is still running (it has not crashed).
    pub fn is_alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The server's resident memory in KiB (Linux's `VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        let pid = self.pid().expect("server running");
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .expect("read VmRSS")
    }

    /// Kill the server with SIGKILL (no graceful shutdown) and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` sends SIGKILL on Unix.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start the server again on the same port and data directory (kills it
    /// first with SIGKILL if it is still running).
    pub async fn restart(&mut self) {
        self.kill9();
        // Pooled keep-alive connections point to the dead process.
        self.http = new_http_client();
        self.spawn_and_wait().await;
    }

    fn binary() -> PathBuf {
        if let Some(bin) = std::env::var_os("HEARTH_BIN") {
            let bin = PathBuf::from(bin);
            assert!(
                bin.is_file(),
                "HEARTH_BIN={} does not exist; build it first: cargo build -p hearth",
                bin.display()
            );
            return bin;
        }
        let exe = std::env::current_exe().expect("current_exe");
        // <target>/debug/deps/<test-binary> -> <target>/debug/hearth
        let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
        if dir.file_name().is_some_and(|n| n == "deps") {
            dir.pop();
        }
        let bin = dir.join(format!("hearth{}", std::env::consts::EXE_SUFFIX));
        assert!(
            bin.is_file(),
            "hearth binary not found at {}; build it first: cargo build -p hearth",
            bin.display()
        );
        bin
    }

    /// Runs another `hearth` command (`rotate-key`, …) against this server's configuration and
    /// data directory; stop the server first where the command needs it.
    pub fn run_command(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(Self::binary());
        cmd.args(args)
            .env("HEARTH_SERVER_NAME", self.server_name())
            .env("HEARTH_LISTEN", format!("127.0.0.1:{}", self.port))
            .env("HEARTH_DATA_DIR", &self.data_dir);
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        cmd.output().expect("run hearth")
    }

    async fn spawn_and_wait(&mut self) {
        self.starts += 1;
        let log_path = self.log_path();
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open server log");
        let log_err = log.try_clone().expect("clone log handle");

        let mut cmd = Command::new(Self::binary());
        cmd.arg("serve")
            .env("HEARTH_SERVER_NAME", self.server_name())
            .env("HEARTH_LISTEN", format!("127.0.0.1:{}", self.port))
            .env("HEARTH_DATA_DIR", &self.data_dir)
            .env("HEARTH_REGISTRATION", "open")
            .env("HEARTH_RATE_LIMIT", "false")
            // Test peers, push gateways and media servers all live on loopback.
            .env("HEARTH_IP_RANGE_DENYLIST", "");
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info,tantivy=warn,ruma_state_res=warn");
        }
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let child = cmd.spawn().expect("spawn hearth");
        self.child = Some(child);

        let url = format!("{}/_matrix/client/versions", self.base_url());
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                panic!(
                    "hearth exited during startup ({status}); log {}:\n{}",
                    log_path.display(),
                    self.log_tail(60)
                );
            }
            if let Ok(resp) = self
                .http
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                && resp.status().as_u16() == 200
            {
                return;
            }
            if Instant::now() > deadline {
                let tail = self.log_tail(60);
                self.kill9();
                panic!(
                    "hearth did not answer GET /_matrix/client/versions within {:?}; log {}:\n{}",
                    STARTUP_TIMEOUT,
                    log_path.display(),
                    tail
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // ----- raw HTTP -----------------------------------------------------

    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else if path.starts_with("/_matrix/") {
            format!("{}{}", self.base_url(), path)
        } else {
            // Shorthand: a path relative to /_matrix/client/v3.
            let sep = if path.starts_with('/') { "" } else { "/" };
            format!("{}{}{}{}", self.base_url(), CLIENT_V3, sep, path)
        }
    }

    /// Send a request with an optional bearer token and optional JSON body.
    ///
    /// `path` is either a full path (`/_matrix/...`) or a path relative to
    /// `/_matrix/client/v3` (e.g. `/account/whoami`).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Response {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        into_response(req.send().await).await
    }

    /// Send a request with an arbitrary raw body and content type.
    pub async fn request_raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> Response {
        let mut req = self
            .http
            .request(method, self.url(path))
            .header("content-type", content_type)
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        into_response(req.send().await).await
    }

    /// `GET path` with a bearer token.
    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.request(Method::GET, path, Some(token), None).await
    }

    /// `POST path` with a bearer token and JSON body.
    pub async fn post(&self, path: &str, token: &str, body: &Value) -> Response {
        self.request(Method::POST, path, Some(token), Some(body))
            .await
    }

    /// `PUT path` with a bearer token and JSON body.
    pub async fn put(&self, path: &str, token: &str, body: &Value) -> Response {
        self.request(Method::PUT, path, Some(token), Some(body))
            .await
    }

    /// Every event of a room a user reads by paging `/messages` back `limit` at a time until
    /// the server says there is nothing further, oldest first, with the last `end` token seen
    /// (where paging forwards from the oldest point starts).
    pub async fn page_back_all(&self, token: &str, room: &str, limit: u32) -> (Vec<Value>, String) {
        let mut events = Vec::new();
        let mut from: Option<String> = None;
        let mut last_end = String::new();
        for _ in 0..1000 {
            let mut path = format!("/rooms/{}/messages?dir=b&limit={limit}", enc(room));
            if let Some(f) = &from {
                path.push_str(&format!("&from={}", enc(f)));
            }
            let (status, page) = self.get(&path, token).await;
            assert_eq!(status, 200, "{page}");
            events.extend(page["chunk"].as_array().cloned().unwrap_or_default());
            match page["end"].as_str() {
                Some(end) => {
                    last_end = end.to_owned();
                    from = Some(end.to_owned());
                }
                None => break,
            }
        }
        events.reverse();
        (events, last_end)
    }

    /// `GET path` without authentication.
    pub async fn get_anon(&self, path: &str) -> Response {
        self.request(Method::GET, path, None, None).await
    }

    /// `POST path` without authentication.
    pub async fn post_anon(&self, path: &str, body: &Value) -> Response {
        self.request(Method::POST, path, None, Some(body)).await
    }

    // ----- account helpers ----------------------------------------------

    /// Register `user` through the UIA `m.login.dummy` flow and return
    /// `(user_id, access_token, device_id)`. Panics on any failure.
    pub async fn register(&self, user: &str, password: &str) -> (String, String, String) {
        let (status, body) = self.try_register(user, password).await;
        assert_eq!(status, 200, "registering {user} failed: {body}");
        let field = |name: &str| {
            body[name]
                .as_str()
                .unwrap_or_else(|| panic!("register response lacks {name}: {body}"))
                .to_owned()
        };
        (field("user_id"), field("access_token"), field("device_id"))
    }

    /// Run the registration UIA dance and return the final response without
    /// asserting success. The first stage must either fail outright (e.g.
    /// M_USER_IN_USE) or be a 401 carrying a `session` and offering
    /// `m.login.dummy`.
    pub async fn try_register(&self, user: &str, password: &str) -> Response {
        let path = "/register";
        let mut body = json!({ "username": user, "password": password });
        let (status, first) = self.post_anon(path, &body).await;
        if status != 401 {
            return (status, first);
        }
        let session = first["session"]
            .as_str()
            .unwrap_or_else(|| panic!("401 from /register without a session: {first}"));
        assert!(
            flows_offer_stage(&first, "m.login.dummy"),
            "/register does not offer m.login.dummy: {first}"
        );
        body["auth"] = json!({ "type": "m.login.dummy", "session": session });
        self.post_anon(path, &body).await
    }

    /// Log in with `m.login.password`; returns `(user_id, access_token,
    /// device_id)`. Panics on failure.
    pub async fn login(&self, user: &str, password: &str) -> (String, String, String) {
        let (status, body) = self.try_login(user, password).await;
        assert_eq!(status, 200, "login of {user} failed: {body}");
        (
            body["user_id"].as_str().expect("user_id").to_owned(),
            body["access_token"]
                .as_str()
                .expect("access_token")
                .to_owned(),
            body["device_id"].as_str().expect("device_id").to_owned(),
        )
    }

    /// `POST /login` with `m.login.password`, not asserting success.
    pub async fn try_login(&self, user: &str, password: &str) -> Response {
        self.post_anon(
            "/login",
            &json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": user },
                "password": password,
            }),
        )
        .await
    }

    /// `POST /createRoom`, returning the room id. Panics on failure.
    pub async fn create_room(&self, token: &str, body: &Value) -> String {
        let (status, resp) = self.post("/createRoom", token, body).await;
        assert_eq!(status, 200, "createRoom failed: {resp}");
        resp["room_id"].as_str().expect("room_id").to_owned()
    }

    /// `PUT /rooms/{room}/send/m.room.message/{txn}` with a text body,
    /// returning the event id. Panics on failure.
    pub async fn send_text(&self, token: &str, room_id: &str, txn: &str, text: &str) -> String {
        let (status, resp) = self.send_text_raw(token, room_id, txn, text).await;
        assert_eq!(status, 200, "sending {text:?} failed: {resp}");
        resp["event_id"].as_str().expect("event_id").to_owned()
    }

    /// Like [`send_text`](Self::send_text) but returns the raw response.
    pub async fn send_text_raw(
        &self,
        token: &str,
        room_id: &str,
        txn: &str,
        text: &str,
    ) -> Response {
        let path = format!("/rooms/{}/send/m.room.message/{}", enc(room_id), enc(txn));
        self.put(&path, token, &json!({ "msgtype": "m.text", "body": text }))
            .await
    }

    /// `POST /rooms/{room}/join` (via `/join/{roomIdOrAlias}`), raw response.
    pub async fn join_raw(&self, token: &str, room_id: &str) -> Response {
        self.post(&format!("/join/{}", enc(room_id)), token, &json!({}))
            .await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() || std::env::var_os("HEARTH_KEEP_DATA").is_some() {
            eprintln!(
                "hearth data dir kept at {} (log: {})",
                self.data_dir.display(),
                self.log_path().display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

fn new_http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("build reqwest client")
}

async fn into_response(result: reqwest::Result<reqwest::Response>) -> Response {
    let resp = result.unwrap_or_else(|e| panic!("HTTP request failed: {e}"));
    let status = resp.status().as_u16();
    let text = resp
        .text()
        .await
        .unwrap_or_else(|e| panic!("reading HTTP body failed: {e}"));
    (status, parse_body(&text))
}

/// Parse a response body: empty -> Null, JSON -> value, otherwise the text.
pub fn parse_body(text: &str) -> Value {
    if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
    }
}

/// Whether a UIA 401 body offers a flow containing `stage`.
pub fn flows_offer_stage(body: &Value, stage: &str) -> bool {
    body["flows"].as_array().is_some_and(|flows| {
        flows.iter().any(|f| {
            f["stages"]
                .as_array()
                .is_some_and(|s| s.iter().any(|x| x == stage))
        })
    })
}

/// Assert that a response is a Matrix error with the given status and
/// errcode, and that the body carries both `errcode` and `error` strings.
#[track_caller]
pub fn assert_matrix_error(resp: &Response, status: u16, errcode: &str) {
    let (got_status, body) = resp;
    assert_eq!(
        (*got_status, body["errcode"].as_str()),
        (status, Some(errcode)),
        "expected {status} {errcode}, got {got_status} {body}"
    );
    assert!(
        body["error"].is_string(),
        "error body lacks an `error` string: {body}"
    );
}

/// Assert that a response is a Matrix error with the given status, whatever
/// its errcode, with both `errcode` and `error` strings in the body.
#[track_caller]
pub fn assert_matrix_status(resp: &Response, status: u16) {
    let (got_status, body) = resp;
    assert_eq!(
        *got_status, status,
        "expected a {status} error, got {got_status} {body}"
    );
    assert!(
        body["errcode"].is_string() && body["error"].is_string(),
        "error body lacks `errcode`/`error` strings: {body}"
    );
}

/// Percent-encode a path segment (room ids contain `!` and `:`, event ids
/// `$`, user ids `@`).
pub fn enc(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len() * 3);
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The bodies of the `m.room.message` events in a list of events, in order.
pub fn message_bodies(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

/// A unique-enough string for transaction ids.
pub fn unique(prefix: &str) -> String {
    let n = DIR_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{nanos}", std::process::id())
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

fn make_data_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(unique("hearth-conformance"));
    std::fs::create_dir_all(&dir).expect("create data dir");
    dir
}
