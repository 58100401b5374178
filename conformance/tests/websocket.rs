//! The WebSocket transport: the same updates as /sync, pushed; messages, typing and receipts sent
//! over the socket; reconnecting with the last processed position misses nothing and repeats
//! nothing.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hearth_conformance::{TestServer, Value, enc, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const PATH: &str = "/_matrix/client/unstable/io.hearth/ws";

async fn connect(server: &TestServer, token: &str, since: Option<&str>) -> Socket {
    let base = server.base_url().replace("http://", "ws://");
    let mut url = format!("{base}{PATH}?access_token={}", enc(token));
    if let Some(s) = since {
        url.push_str(&format!("&since={}", enc(s)));
    }
    let (socket, _) = connect_async(url).await.expect("websocket connects");
    socket
}

/// The next JSON frame of a kind, within a few seconds.
async fn next_frame(socket: &mut Socket, kind: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let msg = tokio::time::timeout_at(deadline, socket.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind} frame within 10 s"))
            .expect("socket open")
            .expect("frame");
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(t.as_str()).expect("frames are JSON");
            if v["type"] == kind {
                return v;
            }
        }
    }
}

/// Sync frames until one has an event with this body; returns that frame's body.
async fn frame_with(socket: &mut Socket, text: &str) -> Value {
    loop {
        let f = next_frame(socket, "sync").await;
        if f["body"].to_string().contains(text) {
            return f["body"].clone();
        }
    }
}

async fn send_frame(socket: &mut Socket, frame: Value) {
    socket
        .send(Message::Text(frame.to_string().into()))
        .await
        .expect("send frame");
}

fn timeline_bodies(sync: &Value, room: &str) -> Vec<String> {
    hearth_conformance::message_bodies(
        sync["rooms"]["join"][room]["timeline"]["events"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_http_see_each_others_messages_and_reconnects_lose_nothing() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw-alice-1").await;
    let (bob_id, bob, bob_device) = server.register("bob", "pw-bob-1").await;
    let room = server
        .create_room(&alice, &json!({ "invite": [bob_id] }))
        .await;
    let (status, _) = server.join_raw(&bob, &room).await;
    assert_eq!(status, 200);

    // The first frame is the initial sync.
    let mut ws = connect(&server, &bob, None).await;
    let first = next_frame(&mut ws, "sync").await;
    assert!(first["body"]["rooms"]["join"][&room].is_object(), "{first}");

    // HTTP → WebSocket.
    server.send_text(&alice, &room, "h1", "over http").await;
    let body = frame_with(&mut ws, "over http").await;
    assert_eq!(timeline_bodies(&body, &room), vec!["over http"]);

    // WebSocket → HTTP, with the request id echoed and the transaction id on bob's own echo.
    let (_, a0) = server.get("/sync?timeout=0", &alice).await;
    let alice_since = a0["next_batch"].as_str().unwrap().to_owned();
    send_frame(
        &mut ws,
        json!({ "type": "send", "request_id": "r1", "room_id": room,
                "event_type": "m.room.message", "txn_id": "w1",
                "content": { "msgtype": "m.text", "body": "over websocket" } }),
    )
    .await;
    let resp = next_frame(&mut ws, "response").await;
    assert_eq!(resp["request_id"], "r1");
    let event_id = resp["body"]["event_id"].as_str().unwrap().to_owned();
    let (_, a1) = server
        .get(&format!("/sync?since={alice_since}&timeout=5000"), &alice)
        .await;
    assert_eq!(timeline_bodies(&a1, &room), vec!["over websocket"], "{a1}");
    let echo = frame_with(&mut ws, "over websocket").await;
    let ev = &echo["rooms"]["join"][&room]["timeline"]["events"][0];
    assert_eq!(ev["event_id"], json!(event_id));
    assert_eq!(ev["unsigned"]["transaction_id"], "w1", "{ev}");
    // The same transaction again is the same event, not a second one.
    send_frame(
        &mut ws,
        json!({ "type": "send", "request_id": "r2", "room_id": room,
                "event_type": "m.room.message", "txn_id": "w1",
                "content": { "msgtype": "m.text", "body": "over websocket" } }),
    )
    .await;
    let again = next_frame(&mut ws, "response").await;
    assert_eq!(again["body"]["event_id"], json!(event_id));

    // Typing over the socket reaches alice's long-poll.
    let a1_since = a1["next_batch"].as_str().unwrap().to_owned();
    send_frame(
        &mut ws,
        json!({ "type": "typing", "request_id": "t", "room_id": room, "typing": true, "timeout": 5000 }),
    )
    .await;
    assert_eq!(next_frame(&mut ws, "response").await["request_id"], "t");
    let (_, a2) = server
        .get(&format!("/sync?since={a1_since}&timeout=5000"), &alice)
        .await;
    let typing = a2["rooms"]["join"][&room]["ephemeral"]["events"].to_string();
    assert!(typing.contains(&bob_id), "{a2}");

    // Bad frames get Matrix errors, and the connection stays up.
    ws.send(Message::Text("not json".into())).await.unwrap();
    assert_eq!(next_frame(&mut ws, "error").await["errcode"], "M_NOT_JSON");
    send_frame(&mut ws, json!({ "type": "fly", "request_id": "x" })).await;
    let err = next_frame(&mut ws, "error").await;
    assert_eq!(
        (err["errcode"].clone(), err["request_id"].clone()),
        (json!("M_UNRECOGNIZED"), json!("x"))
    );
    send_frame(
        &mut ws,
        json!({ "type": "send", "request_id": "y", "room_id": "!nowhere:localhost",
                "event_type": "m.room.message", "txn_id": "w9", "content": {} }),
    )
    .await;
    let err = next_frame(&mut ws, "error").await;
    assert_eq!(err["request_id"], "y");
    assert!(err["errcode"].as_str().unwrap().starts_with("M_"), "{err}");

    // A to-device message arrives in a frame, but bob's connection drops before he processed
    // it: the last frame he processed was the echo. Alice keeps sending meanwhile.
    let (status, _) = server
        .put(
            "/sendToDevice/m.test/td1",
            &alice,
            &json!({ "messages": { &bob_id: { &bob_device: { "n": 7 } } } }),
        )
        .await;
    assert_eq!(status, 200);
    loop {
        let f = next_frame(&mut ws, "sync").await;
        if f["body"]["to_device"]["events"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
        {
            break;
        }
    }
    let processed = echo["next_batch"].as_str().unwrap().to_owned();
    drop(ws);
    for i in 0..3 {
        server
            .send_text(&alice, &room, &format!("o{i}"), &format!("offline {i}"))
            .await;
    }

    // Reconnecting from the last acknowledged position: everything after it, once.
    let mut ws = connect(&server, &bob, Some(&processed)).await;
    let resumed = next_frame(&mut ws, "sync").await["body"].clone();
    assert_eq!(
        timeline_bodies(&resumed, &room),
        vec!["offline 0", "offline 1", "offline 2"],
        "{resumed}"
    );
    let td = resumed["to_device"]["events"].as_array().unwrap();
    assert_eq!(
        td.len(),
        1,
        "unacknowledged to-device message comes again: {resumed}"
    );
    // Acknowledge it; a reconnect from the same old position no longer repeats it.
    let latest = resumed["next_batch"].as_str().unwrap().to_owned();
    send_frame(&mut ws, json!({ "type": "ack", "next_batch": latest })).await;
    // Nothing to read back from an ack; give the server a moment, then reconnect.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(ws);
    let mut ws = connect(&server, &bob, Some(&latest)).await;
    // The first frame comes at once even when nothing changed, and repeats nothing.
    let quiet = next_frame(&mut ws, "sync").await["body"].clone();
    assert!(timeline_bodies(&quiet, &room).is_empty(), "{quiet}");
    server
        .send_text(&alice, &room, "after", "after reconnect")
        .await;
    let body = frame_with(&mut ws, "after reconnect").await;
    assert_eq!(timeline_bodies(&body, &room), vec!["after reconnect"]);
    assert!(
        body["to_device"]["events"]
            .as_array()
            .is_none_or(|e| e.is_empty()),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_needs_a_valid_token() {
    let server = TestServer::start().await;
    let base = server.base_url().replace("http://", "ws://");
    let err = connect_async(format!("{base}{PATH}?access_token=nope"))
        .await
        .expect_err("a bad token is refused");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status(), 401);
        }
        other => panic!("unexpected error {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_websocket_peer_is_dropped_and_a_live_one_kept() {
    let server = TestServer::builder()
        .env("HEARTH_WEBSOCKET_PING_SECS", "0.3")
        .start()
        .await;
    let (_, token, _) = server.register("alice", "pw-alice-1").await;

    // A client that reads (and so answers pings) stays connected well past two intervals.
    let mut live = connect(&server, &token, None).await;
    next_frame(&mut live, "sync").await;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    let mut pings = 0;
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, live.next()).await {
        match msg.expect("live connection stays open") {
            Message::Ping(_) => pings += 1,
            Message::Close(_) => panic!("a live client was disconnected"),
            _ => {}
        }
    }
    assert!(pings >= 2, "the server pings ({pings} pings)");

    // One that stops reading answers no pings: the server gives up on it.
    let mut silent = connect(&server, &token, None).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let closed = async {
        while let Some(msg) = silent.next().await {
            match msg {
                Ok(Message::Close(_)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("the server closed the silent connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_with_nothing_new_still_gets_a_first_frame_at_once() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("alice", "pw-alice-1").await;
    let mut ws = connect(&server, &token, None).await;
    let first = next_frame(&mut ws, "sync").await;
    let since = first["body"]["next_batch"].as_str().unwrap().to_owned();
    drop(ws);
    let started = std::time::Instant::now();
    let mut ws = connect(&server, &token, Some(&since)).await;
    let resumed = next_frame(&mut ws, "sync").await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "first frame took {:?}",
        started.elapsed()
    );
    assert!(resumed["body"]["next_batch"].is_string(), "{resumed}");
}
