//! The client side of Hearth's WebSocket transport (`/_matrix/client/unstable/io.hearth/ws`):
//! sync frames in (each acknowledged), send/typing/receipt requests out, matched to their
//! responses by `request_id`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::api::enc;
use crate::matrix::SyncResponse;
use crate::syncloop::Update;

pub const PATH: &str = "/_matrix/client/unstable/io.hearth/ws";

#[derive(Debug)]
pub enum ConnectError {
    /// The server has no such endpoint (Synapse, or a Hearth without the transport).
    Unsupported(String),
    Failed(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Unsupported(s) | ConnectError::Failed(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for ConnectError {}

#[derive(Debug)]
pub enum Reply {
    Ok(Value),
    Error {
        errcode: String,
        error: String,
    },
    /// The connection ended before the answer came.
    Closed,
}

#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    request_id: Option<Value>,
    #[serde(default)]
    body: Option<Box<RawValue>>,
    #[serde(default)]
    errcode: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Reply>>>>;

pub struct WsClient {
    out: mpsc::UnboundedSender<Message>,
    pending: Pending,
    next_id: AtomicU64,
    /// Sync frames received so far: the idle scenario waits for everyone's first one.
    pub frames: Arc<AtomicU64>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Drop for WsClient {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// `http://host:port` → `ws://host:port/...?access_token=...`.
pub fn url(base: &str, token: &str, since: Option<&str>, set_presence: &str) -> Option<String> {
    let rest = base.strip_prefix("http://")?;
    let mut u = format!(
        "ws://{}{PATH}?access_token={}&set_presence={}",
        rest.trim_end_matches('/'),
        enc(token),
        enc(set_presence)
    );
    if let Some(s) = since {
        u.push_str("&since=");
        u.push_str(&enc(s));
    }
    Some(u)
}

/// Connects and starts the reader and writer tasks. Sync frames go to `updates` as receiver
/// `idx`, when given.
pub async fn connect(
    base: &str,
    token: &str,
    since: Option<&str>,
    set_presence: &str,
    idx: usize,
    updates: Option<mpsc::UnboundedSender<Update>>,
) -> Result<WsClient, ConnectError> {
    let Some(url) = url(base, token, since, set_presence) else {
        return Err(ConnectError::Unsupported(format!(
            "only plain http:// base URLs are supported for WebSockets, not {base}"
        )));
    };
    // tungstenite zero-fills its whole read buffer (128 KiB by default) on the first read: with
    // thousands of idle sockets that is most of our memory, and sync frames are small.
    let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
    let (stream, _) =
        match tokio_tungstenite::connect_async_with_config(url, Some(config), true).await {
            Ok(s) => s,
            // Anything but 101: the server does not speak this transport at this path.
            Err(tungstenite::Error::Http(resp)) => {
                return Err(ConnectError::Unsupported(format!(
                    "HTTP {} on {PATH}",
                    resp.status().as_u16()
                )));
            }
            Err(e) => return Err(ConnectError::Failed(format!("WebSocket connect: {e}"))),
        };
    let (mut sink, mut source) = stream.split();
    let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
    });
    let pending: Pending = Arc::default();
    let frames = Arc::new(AtomicU64::new(0));
    let reader = {
        let pending = Arc::clone(&pending);
        let frames = Arc::clone(&frames);
        let out = out.clone();
        tokio::spawn(async move {
            // Pings are answered by tungstenite itself while this loop reads.
            while let Some(Ok(msg)) = source.next().await {
                let Message::Text(text) = msg else { continue };
                let at = Instant::now();
                let Ok(frame) = serde_json::from_str::<Frame>(text.as_str()) else {
                    crate::log!("ws: unreadable frame: {}", truncate(text.as_str()));
                    continue;
                };
                match frame.kind.as_str() {
                    "sync" => {
                        frames.fetch_add(1, Relaxed);
                        let Some(sync) = frame
                            .body
                            .and_then(|b| serde_json::from_str::<SyncResponse>(b.get()).ok())
                        else {
                            crate::log!("ws: sync frame without a readable body");
                            continue;
                        };
                        let ack = json!({"type": "ack", "next_batch": sync.next_batch});
                        let _ = out.send(Message::text(ack.to_string()));
                        if let Some(tx) = &updates {
                            let _ = tx.send(Update { idx, at, sync });
                        }
                    }
                    kind @ ("response" | "error") => {
                        let id = match frame.request_id {
                            Some(Value::String(s)) => s,
                            Some(v) => v.to_string(),
                            None => continue,
                        };
                        let Some(waiter) = pending.lock().unwrap().remove(&id) else {
                            continue;
                        };
                        let reply = if kind == "response" {
                            let body = frame
                                .body
                                .and_then(|b| serde_json::from_str(b.get()).ok())
                                .unwrap_or(Value::Null);
                            Reply::Ok(body)
                        } else {
                            Reply::Error {
                                errcode: frame.errcode.unwrap_or_default(),
                                error: frame.error.unwrap_or_default(),
                            }
                        };
                        let _ = waiter.send(reply);
                    }
                    _ => {}
                }
            }
            // Waiters whose answers can no longer come learn it now rather than at a timeout.
            for (_, w) in pending.lock().unwrap().drain() {
                let _ = w.send(Reply::Closed);
            }
        })
    };
    Ok(WsClient {
        out,
        pending,
        next_id: AtomicU64::new(1),
        frames,
        reader,
        writer,
    })
}

impl WsClient {
    /// False once the server closed the connection (or it broke).
    pub fn is_open(&self) -> bool {
        !self.reader.is_finished()
    }

    /// Sends a request frame (`fields` without `request_id`) and waits for its answer.
    pub async fn request(&self, mut fields: Value) -> Reply {
        let id = self.next_id.fetch_add(1, Relaxed).to_string();
        fields["request_id"] = Value::String(id.clone());
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        if self.out.send(Message::text(fields.to_string())).is_err() {
            return Reply::Closed;
        }
        rx.await.unwrap_or(Reply::Closed)
    }

    pub async fn send_text(&self, room_id: &str, txn_id: &str, body: &str) -> Reply {
        self.request(json!({
            "type": "send",
            "room_id": room_id,
            "event_type": "m.room.message",
            "txn_id": txn_id,
            "content": {"msgtype": "m.text", "body": body},
        }))
        .await
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(200) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_ws_url() {
        assert_eq!(
            url("http://127.0.0.1:8018/", "tok/1", Some("s5"), "offline").unwrap(),
            "ws://127.0.0.1:8018/_matrix/client/unstable/io.hearth/ws\
             ?access_token=tok%2F1&set_presence=offline&since=s5"
        );
        assert!(url("https://x", "t", None, "offline").is_none());
    }

    #[test]
    fn reads_frames() {
        let f: Frame = serde_json::from_str(
            r#"{"type":"response","request_id":"7","body":{"event_id":"$e"}}"#,
        )
        .unwrap();
        assert_eq!(f.kind, "response");
        assert_eq!(f.request_id, Some(json!("7")));
        let f: Frame = serde_json::from_str(
            r#"{"type":"error","request_id":"8","errcode":"M_FORBIDDEN","error":"no"}"#,
        )
        .unwrap();
        assert_eq!(f.errcode.as_deref(), Some("M_FORBIDDEN"));
    }
}
