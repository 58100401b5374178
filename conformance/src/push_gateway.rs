//! A push gateway for tests: it speaks only the Push Gateway API (`POST
//! /_matrix/push/v1/notify`), records every notification it receives, and
//! answers `{"rejected": [...]}` with the pushkeys it was told to reject.
//!
//! It is a few lines of HTTP/1.1 over tokio rather than a web framework, so
//! the harness stays light; it keeps connections alive as reqwest expects.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<(Instant, Value)>>,
    reject: Mutex<HashSet<String>>,
    arrived: Notify,
}

/// A running test gateway. Stops when dropped.
pub struct TestPushGateway {
    port: u16,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl TestPushGateway {
    /// Starts a gateway on a free loopback port.
    pub async fn start() -> Self {
        Self::start_on(crate::free_port()).await
    }

    /// Starts a gateway on a given port (to bring up a gateway that was down).
    pub async fn start_on(port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the test push gateway");
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, s.clone()));
            }
        });
        Self { port, shared, task }
    }

    /// The URL a pusher's `data.url` gets.
    pub fn url(&self) -> String {
        url_on(self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Answer future notifications for this pushkey with `rejected`.
    pub fn reject(&self, pushkey: &str) {
        self.shared
            .reject
            .lock()
            .unwrap()
            .insert(pushkey.to_owned());
    }

    /// Everything received so far: the `notification` objects, in order.
    pub fn received(&self) -> Vec<Value> {
        self.received_at().into_iter().map(|(_, v)| v).collect()
    }

    /// Everything received so far, with the instant each arrived.
    pub fn received_at(&self) -> Vec<(Instant, Value)> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Waits until at least `n` notifications arrived (panics after `timeout`).
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let arrived = self.shared.arrived.notified();
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "the push gateway got {} notifications, expected {n}: {got:#?}",
                    got.len()
                );
            }
            let _ = tokio::time::timeout(left, arrived).await;
        }
    }
}

impl Drop for TestPushGateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The notify URL of a gateway on `port` (which may not be listening yet).
pub fn url_on(port: u16) -> String {
    format!("http://127.0.0.1:{port}{NOTIFY_PATH}")
}

async fn serve(conn: TcpStream, shared: Arc<Shared>) {
    let mut conn = BufReader::new(conn);
    loop {
        let mut request_line = String::new();
        match conn.read_line(&mut request_line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if conn.read_exact(&mut body).await.is_err() {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let (status, answer) = if method == "POST" && path == NOTIFY_PATH {
            match serde_json::from_slice::<Value>(&body) {
                Ok(v) if v["notification"].is_object() => {
                    let n = v["notification"].clone();
                    let reject = shared.reject.lock().unwrap().clone();
                    let rejected: Vec<Value> = n["devices"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|d| d["pushkey"].as_str())
                        .filter(|k| reject.contains(*k))
                        .map(|k| json!(k))
                        .collect();
                    shared.received.lock().unwrap().push((Instant::now(), n));
                    shared.arrived.notify_waiters();
                    ("200 OK", json!({ "rejected": rejected }))
                }
                _ => ("400 Bad Request", json!({ "error": "not a notification" })),
            }
        } else {
            ("404 Not Found", json!({}))
        };
        let text = answer.to_string();
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            text.len()
        );
        let stream = conn.get_mut();
        if stream.write_all(head.as_bytes()).await.is_err()
            || stream.write_all(text.as_bytes()).await.is_err()
        {
            return;
        }
    }
}
