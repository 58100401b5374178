//! A push gateway inside the generator, for the `push` scenario: a few lines of HTTP/1.1 over a
//! tokio listener (no web framework) that accept `POST /_matrix/push/v1/notify`, stamp each
//! notification with the moment its body had fully arrived, keep its `event_id` and first
//! device's `pushkey`, and answer `{"rejected": []}`. Connections are kept alive, as a
//! homeserver's HTTP client expects; bodies may come with a Content-Length or chunked.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";
/// Far more than any notification; a larger body is a broken client, not a push.
const MAX_BODY: usize = 1 << 20;
const OK_BODY: &str = r#"{"rejected":[]}"#;

/// One notification, as the gateway saw it.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub at: Instant,
    pub event_id: Option<String>,
    pub pushkey: Option<String>,
}

#[derive(Default)]
struct Shared {
    arrivals: Mutex<Vec<Arrival>>,
    arrived: Notify,
    connections: AtomicU64,
    /// Requests that were not a notification (wrong path or method, unreadable JSON).
    bad_requests: AtomicU64,
}

/// A running gateway; stops listening when dropped.
pub struct PushGateway {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl PushGateway {
    /// Listens on a free loopback port.
    pub async fn start() -> std::io::Result<PushGateway> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                s.connections.fetch_add(1, Relaxed);
                tokio::spawn(serve(conn, Arc::clone(&s)));
            }
        });
        Ok(PushGateway { addr, shared, task })
    }

    /// What a pusher's `data.url` gets.
    pub fn url(&self) -> String {
        format!("http://{}{NOTIFY_PATH}", self.addr)
    }

    /// Notifications received so far.
    pub fn len(&self) -> usize {
        self.shared.arrivals.lock().unwrap().len()
    }

    /// Every notification from index `from` on.
    pub fn since(&self, from: usize) -> Vec<Arrival> {
        let a = self.shared.arrivals.lock().unwrap();
        a.get(from..).unwrap_or_default().to_vec()
    }

    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Relaxed)
    }

    pub fn bad_requests(&self) -> u64 {
        self.shared.bad_requests.load(Relaxed)
    }

    /// Hands every notification past `*cursor`, in arrival order, to `done` until it answers
    /// true (true), or until the deadline (false). `*cursor` ends past the last one handed over.
    pub async fn watch(
        &self,
        cursor: &mut usize,
        deadline: Instant,
        mut done: impl FnMut(&Arrival) -> bool,
    ) -> bool {
        loop {
            // Registered before the check: notify_waiters reaches a Notified from its creation.
            let arrived = self.shared.arrived.notified();
            {
                let a = self.shared.arrivals.lock().unwrap();
                while let Some(x) = a.get(*cursor) {
                    *cursor += 1;
                    if done(x) {
                        return true;
                    }
                }
            }
            if tokio::time::timeout_at(deadline.into(), arrived)
                .await
                .is_err()
            {
                return false;
            }
        }
    }
}

impl Drop for PushGateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One keep-alive connection: requests one after the other until the client closes it.
async fn serve(conn: TcpStream, shared: Arc<Shared>) {
    let _ = conn.set_nodelay(true);
    let mut conn = BufReader::new(conn);
    while let Some(req) = read_request(&mut conn).await {
        let at = Instant::now();
        let (status, body) = match notification(&req) {
            Some(n) => {
                let str_of = |v: &Value| v.as_str().map(str::to_owned);
                shared.arrivals.lock().unwrap().push(Arrival {
                    at,
                    event_id: str_of(&n["event_id"]),
                    pushkey: str_of(&n["devices"][0]["pushkey"]),
                });
                shared.arrived.notify_waiters();
                ("200 OK", OK_BODY.to_owned())
            }
            None => {
                shared.bad_requests.fetch_add(1, Relaxed);
                let status = if req.path == NOTIFY_PATH {
                    "400 Bad Request"
                } else {
                    "404 Not Found"
                };
                (status, json!({ "errcode": "M_UNRECOGNIZED" }).to_string())
            }
        };
        // One write: head and body in one segment.
        let answer = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if conn.get_mut().write_all(answer.as_bytes()).await.is_err() || req.close {
            return;
        }
    }
}

struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
    /// The client asked to close the connection after the answer.
    close: bool,
}

/// The `notification` object of a notify request.
fn notification(req: &Request) -> Option<Value> {
    if req.method != "POST" || req.path != NOTIFY_PATH {
        return None;
    }
    let mut v: Value = serde_json::from_slice(&req.body).ok()?;
    let n = v.get_mut("notification")?.take();
    n.is_object().then_some(n)
}

/// The next request, or None when the connection closed or spoke something else than HTTP/1.1.
async fn read_request<R: AsyncBufRead + Unpin>(conn: &mut R) -> Option<Request> {
    let line = read_line(conn).await?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_owned(), parts.next()?.to_owned());
    let mut close = parts.next() == Some("HTTP/1.0");
    let (mut length, mut chunked) = (0usize, false);
    loop {
        let line = read_line(conn).await?;
        if line.is_empty() {
            break;
        }
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            length = v.parse().ok()?;
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        } else if k.eq_ignore_ascii_case("connection") {
            close = v.eq_ignore_ascii_case("close");
        }
    }
    let body = if chunked {
        read_chunked(conn).await?
    } else {
        if length > MAX_BODY {
            return None;
        }
        let mut body = vec![0; length];
        conn.read_exact(&mut body).await.ok()?;
        body
    };
    Some(Request {
        method,
        path,
        body,
        close,
    })
}

/// A line without its CRLF; None at the end of the stream.
async fn read_line<R: AsyncBufRead + Unpin>(conn: &mut R) -> Option<String> {
    let mut line = String::new();
    match conn.read_line(&mut line).await {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim_end_matches(['\r', '\n']).to_owned()),
    }
}

async fn read_chunked<R: AsyncBufRead + Unpin>(conn: &mut R) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(conn).await?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).ok()?;
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_line(conn).await?.is_empty() {}
            return Some(body);
        }
        if body.len() + size > MAX_BODY {
            return None;
        }
        let start = body.len();
        body.resize(start + size, 0);
        conn.read_exact(&mut body[start..]).await.ok()?;
        read_line(conn).await?;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;

    use super::*;

    fn notify(event_id: &str, pushkey: &str) -> Value {
        json!({ "notification": {
            "event_id": event_id,
            "room_id": "!r:h",
            "counts": { "unread": 1 },
            "devices": [{ "app_id": "a", "pushkey": pushkey }],
        }})
    }

    #[tokio::test]
    async fn records_notifications_over_one_connection() {
        let gw = PushGateway::start().await.unwrap();
        let client = reqwest::Client::new();
        for (e, k) in [("$1", "k1"), ("$2", "k2")] {
            let r = client
                .post(gw.url())
                .json(&notify(e, k))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.json::<Value>().await.unwrap(), json!({ "rejected": [] }));
        }
        let got = gw.since(0);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].event_id.as_deref(), Some("$2"));
        assert_eq!(got[1].pushkey.as_deref(), Some("k2"));
        assert_eq!(gw.connections(), 1, "the connection was kept alive");
        let r = client.post(gw.url()).body("{}").send().await.unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(gw.bad_requests(), 1);
        assert_eq!(gw.len(), 2);
    }

    #[tokio::test]
    async fn reads_chunked_bodies() {
        let gw = PushGateway::start().await.unwrap();
        let body = notify("$c", "kc").to_string();
        let (a, b) = body.split_at(10);
        let req = format!(
            "POST {NOTIFY_PATH} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
             Connection: close\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
        );
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with(OK_BODY));
        let mut cursor = 0;
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut seen = None;
        assert!(
            gw.watch(&mut cursor, deadline, |a| {
                seen = a.event_id.clone();
                true
            })
            .await
        );
        assert_eq!(seen.as_deref(), Some("$c"));
        assert_eq!(cursor, 1);
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(!gw.watch(&mut cursor, soon, |_| true).await);
    }
}
