//! The WebSocket transport (Hearth's own, documented in docs/realtime.md): the same updates as
//! `/sync`, pushed the moment they happen, and typing, receipts and messages sent back over the
//! same socket.
//!
//! A connection runs one loop over three things: the next sync (the same
//! [`hearth_core::sync::SyncService::wait_for_changes`] the long-poll uses, so both transports
//! see the same data in the same order), frames from the client, and a keep-alive timer. The
//! server's position moves on with every frame it sends; what the client has *processed* moves on
//! only with its `ack` frames, which delete acknowledged to-device messages and mark deliveries.
//! A client that reconnects with the `next_batch` of the last frame it processed therefore misses
//! nothing and gets nothing twice.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::response::Response;
use hearth_core::accounts::Session;
use hearth_core::rooms::{NewEvent, TxnRef};
use hearth_core::streams::SyncToken;
use hearth_core::sync::{SyncFilter, SyncRequest};
use ruma::api::OutgoingResponse;
use ruma::{OwnedEventId, OwnedRoomId};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::QueryParams;
use crate::rate_limit::{Action, Key};
use crate::{filter, sync};

pub const PATH: &str = "/_matrix/client/unstable/io.hearth/ws";

/// How long one wait for changes lasts before it starts over (it only bounds the future's life;
/// clients see nothing of it).
const WAIT: Duration = Duration::from_secs(30);

#[derive(Deserialize)]
pub struct Params {
    since: Option<String>,
    filter: Option<String>,
    set_presence: Option<String>,
}

/// An authenticated caller, for handlers outside the ruma-typed endpoints.
pub struct Authed(pub Session);

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let token = crate::extract::access_token(parts).ok_or_else(ApiError::missing_token)?;
        Ok(Authed(state.core.accounts.authenticate(&token)?))
    }
}

pub async fn upgrade(
    State(state): State<AppState>,
    Authed(session): Authed,
    QueryParams(params): QueryParams<Params>,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    let definition = filter::resolve(&state, &session.user_id, params.filter.as_deref())?;
    let since = params
        .since
        .as_deref()
        .map(sync::parse_sync_token)
        .transpose()?;
    let presence = params
        .set_presence
        .as_deref()
        .map(|p| {
            hearth_core::presence::State::parse(p)
                .ok_or_else(|| ApiError::invalid_param(format!("Unknown presence state {p}")))
        })
        .transpose()?;
    let conn = Connection {
        state,
        session,
        filter: filter::sync_filter(&definition),
        state_after: false,
        thread_counts: definition.room.timeline.unread_thread_notifications,
    };
    // tungstenite's default buffers (128 KiB each way) would make every idle connection cost a
    // quarter of a megabyte; frames here are small, and large ones grow the buffer as needed.
    Ok(ws
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(16 << 20)
        .max_message_size(1 << 20)
        .on_upgrade(move |socket| conn.run(socket, since, presence)))
}

type Waiting = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = hearth_core::Result<hearth_core::sync::SyncResponse>>
            + Send,
    >,
>;

struct Connection {
    state: AppState,
    session: Session,
    filter: SyncFilter,
    state_after: bool,
    thread_counts: bool,
}

/// A frame from the client.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientFrame {
    Ack {
        next_batch: String,
    },
    Send {
        request_id: Option<String>,
        room_id: OwnedRoomId,
        event_type: String,
        txn_id: String,
        content: Value,
    },
    Typing {
        request_id: Option<String>,
        room_id: OwnedRoomId,
        typing: bool,
        timeout: Option<u64>,
    },
    Receipt {
        request_id: Option<String>,
        room_id: OwnedRoomId,
        receipt_type: String,
        event_id: OwnedEventId,
        thread_id: Option<String>,
    },
}

impl Connection {
    fn request(&self, since: Option<SyncToken>, timeout: Duration) -> SyncRequest {
        SyncRequest {
            user_id: self.session.user_id.clone(),
            device_id: self.session.device_id.to_string(),
            since,
            timeout,
            full_state: false,
            filter: self.filter.clone(),
            state_after: self.state_after,
            set_presence: None,
            acknowledges: false,
        }
    }

    fn wait(&self, since: Option<SyncToken>, timeout: Duration) -> Waiting {
        let (sync, req) = (self.state.core.sync.clone(), self.request(since, timeout));
        Box::pin(async move { sync.wait_for_changes(&req).await })
    }

    async fn run(
        self,
        mut socket: WebSocket,
        since: Option<SyncToken>,
        presence: Option<hearth_core::presence::State>,
    ) {
        let core = self.state.core.clone();
        // The user counts as syncing (online) while the socket is open.
        let _online = core.presence.sync_started(&self.session.user_id, presence);
        if let Some(t) = since {
            core.sync
                .acknowledged(&self.session.user_id, self.session.device_id.as_str(), t);
        }
        let ping_every = self.state.config.websocket_ping;
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        let mut last_heard = Instant::now();
        let mut position = since;
        // The first frame always goes out: it tells the client where it stands.
        let mut first = true;
        // The first frame goes out at once, even when nothing changed since `since`.
        let mut next = self.wait(position, Duration::ZERO);
        let ended = core.accounts.session_ended(&self.session);
        tokio::pin!(ended);
        loop {
            tokio::select! {
                // The end first: the logout's own commit also wakes the next frame.
                biased;
                () = &mut ended => {
                    // The token that opened the socket is gone: say why, then close.
                    let err = ApiError::from(hearth_core::Error::UnknownToken);
                    let _ = socket.send(Message::Text(error_frame(None, &err).into())).await;
                    let _ = socket
                        .send(Message::Close(Some(axum::extract::ws::CloseFrame {
                            code: axum::extract::ws::close_code::POLICY,
                            reason: "M_UNKNOWN_TOKEN".into(),
                        })))
                        .await;
                    break;
                }
                out = &mut next => {
                    match out {
                        Ok(resp) => {
                            if first || !resp.is_empty() {
                                first = false;
                                position = Some(resp.next_batch);
                                let body = sync::to_response(resp, self.state_after, self.thread_counts);
                                let Some(frame) = frame("sync", body) else { break };
                                if socket.send(Message::Text(frame.into())).await.is_err() {
                                    break;
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "websocket sync failed");
                            break;
                        }
                    }
                    next = self.wait(position, WAIT);
                }
                msg = socket.recv() => {
                    let Some(Ok(msg)) = msg else { break };
                    last_heard = Instant::now();
                    let reply = match msg {
                        Message::Text(text) => self.handle(text.as_str()).await,
                        Message::Close(_) => break,
                        // Pongs only prove the peer is alive; pings tungstenite answers itself.
                        _ => None,
                    };
                    if let Some(reply) = reply
                        && socket.send(Message::Text(reply.into())).await.is_err()
                    {
                        break;
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > ping_every * 2 {
                        tracing::debug!(user = %self.session.user_id, "websocket peer went silent");
                        break;
                    }
                    if socket.send(Message::Ping(Default::default())).await.is_err() {
                        break;
                    }
                }
            }
        }
    }

    /// Handles one client frame; the reply, if it asks for one.
    async fn handle(&self, text: &str) -> Option<String> {
        let parsed: ClientFrame = match serde_json::from_str::<Value>(text) {
            Err(_) => return Some(error_frame(None, &ApiError::not_json())),
            Ok(v) => match serde_json::from_value(v.clone()) {
                Ok(f) => f,
                Err(e) => {
                    let id = v["request_id"].as_str().map(str::to_owned);
                    let err = if v["type"].is_string()
                        && !["ack", "send", "typing", "receipt"]
                            .contains(&v["type"].as_str().unwrap_or_default())
                    {
                        ApiError::unrecognized()
                    } else {
                        ApiError::bad_json(e.to_string())
                    };
                    return Some(error_frame(id.as_deref(), &err));
                }
            },
        };
        let core = &self.state.core;
        let user = &self.session.user_id;
        match parsed {
            ClientFrame::Ack { next_batch } => match sync::parse_sync_token(&next_batch) {
                Ok(t) => {
                    core.sync
                        .acknowledged(user, self.session.device_id.as_str(), t);
                    None
                }
                Err(e) => Some(error_frame(None, &e)),
            },
            ClientFrame::Send {
                request_id,
                room_id,
                event_type,
                txn_id,
                content,
            } => {
                let result = async {
                    self.state.limiter.check(Key::User(user.to_string()))?;
                    self.state
                        .limit(Action::Message, [Key::User(user.to_string())])?;
                    if !content.is_object() {
                        return Err(ApiError::bad_json("content must be an object"));
                    }
                    let mut event = NewEvent::message(&event_type, content);
                    event.txn = Some(TxnRef::send(
                        user.as_str(),
                        self.session.device_id.as_str(),
                        room_id.as_str(),
                        &event_type,
                        &txn_id,
                    ));
                    let pdu = core.rooms.send(&room_id, user, event).await?;
                    core.presence.touch(user);
                    Ok(json!({ "event_id": pdu.event_id }))
                }
                .await;
                Some(reply(request_id.as_deref(), result))
            }
            ClientFrame::Typing {
                request_id,
                room_id,
                typing,
                timeout,
            } => {
                let timeout = typing.then(|| Duration::from_millis(timeout.unwrap_or(30_000)));
                let result = core
                    .typing
                    .set(&room_id, user, timeout)
                    .map(|()| json!({}))
                    .map_err(ApiError::from);
                Some(reply(request_id.as_deref(), result))
            }
            ClientFrame::Receipt {
                request_id,
                room_id,
                receipt_type,
                event_id,
                thread_id,
            } => {
                let result = core
                    .receipts
                    .set(
                        user,
                        &room_id,
                        &receipt_type,
                        &event_id,
                        thread_id.as_deref(),
                    )
                    .await
                    .map(|()| json!({}))
                    .map_err(ApiError::from);
                Some(reply(request_id.as_deref(), result))
            }
        }
    }
}

/// `{"type": kind, "body": <the response's JSON body>}`.
fn frame(kind: &str, body: impl OutgoingResponse) -> Option<String> {
    let http = body.try_into_http_response::<Vec<u8>>().ok()?;
    let body = String::from_utf8(http.into_body()).ok()?;
    Some(format!(r#"{{"type":"{kind}","body":{body}}}"#))
}

fn reply(request_id: Option<&str>, result: Result<Value, ApiError>) -> String {
    match result {
        Ok(body) => {
            json!({ "type": "response", "request_id": request_id, "body": body }).to_string()
        }
        Err(e) => error_frame(request_id, &e),
    }
}

fn error_frame(request_id: Option<&str>, e: &ApiError) -> String {
    json!({
        "type": "error",
        "request_id": request_id,
        "errcode": e.errcode,
        "error": e.message,
    })
    .to_string()
}
