//! Room history: /messages pagination in both directions and /context.

mod common;

use std::collections::HashSet;

use hearth_conformance::{TestServer, Value, enc, json, message_bodies};
use matrix_sdk::{
    Client,
    room::MessagesOptions,
    ruma::{RoomId, uint},
};

const PW: &str = "history-password";
const N: usize = 300;

fn numbered(i: usize) -> String {
    format!("message {i:03}")
}

async fn room_with_history(server: &TestServer) -> (String, String, Vec<String>) {
    let (_, token, _) = server.register("alice", PW).await;
    let room_id = server
        .create_room(
            &token,
            &json!({ "preset": "private_chat", "name": "history" }),
        )
        .await;
    let mut ids = Vec::with_capacity(N);
    for i in 0..N {
        ids.push(
            server
                .send_text(&token, &room_id, &format!("txn{i}"), &numbered(i))
                .await,
        );
    }
    (token, room_id, ids)
}

/// Event ids of the m.room.message events in `events`, in order.
fn message_ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paginate_300_messages_backwards_and_forwards() {
    let server = TestServer::start().await;
    let (token, room_id, ids) = room_with_history(&server).await;
    let room = enc(&room_id);
    let expected: Vec<String> = (0..N).map(numbered).collect();

    // Initial sync: the tail of the timeline plus a prev_batch token.
    let filter = enc(r#"{"room":{"timeline":{"limit":20}}}"#);
    let (status, sync) = server.get(&format!("/sync?filter={filter}"), &token).await;
    assert_eq!(status, 200, "{sync}");
    let timeline = &sync["rooms"]["join"][&room_id]["timeline"];
    let events = timeline["events"].as_array().expect("timeline events");
    assert!(!events.is_empty() && events.len() <= 20, "{timeline}");
    assert_eq!(
        timeline["limited"], true,
        "300 messages cannot fit: {timeline}"
    );
    let prev_batch = timeline["prev_batch"]
        .as_str()
        .expect("limited timeline has prev_batch")
        .to_owned();
    let tail_bodies = message_bodies(events);
    let tail_ids = message_ids(events);

    // Backwards from prev_batch, 50 at a time.
    let mut back_bodies: Vec<String> = Vec::new();
    let mut back_ids: Vec<String> = Vec::new();
    let mut from = prev_batch;
    for round in 0.. {
        assert!(round < 40, "backward pagination does not terminate");
        let (status, page) = server
            .get(
                &format!("/rooms/{room}/messages?dir=b&limit=50&from={}", enc(&from)),
                &token,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        let chunk = page["chunk"].as_array().expect("chunk");
        assert!(chunk.len() <= 50, "limit=50 exceeded: {}", chunk.len());
        assert_eq!(page["start"].as_str(), Some(from.as_str()));
        back_bodies.extend(message_bodies(chunk));
        back_ids.extend(message_ids(chunk));
        match page["end"].as_str() {
            Some(end) if !chunk.is_empty() => from = end.to_owned(),
            _ => break,
        }
    }
    back_bodies.reverse();
    back_ids.reverse();
    back_bodies.extend(tail_bodies);
    back_ids.extend(tail_ids);
    assert_eq!(
        back_bodies, expected,
        "backward pagination lost or reordered messages"
    );
    assert_eq!(
        back_ids, ids,
        "backward pagination returned other event ids"
    );

    // Forwards from the start of the room, 50 at a time.
    let mut fwd_events: Vec<Value> = Vec::new();
    let mut from: Option<String> = None;
    for round in 0.. {
        assert!(round < 40, "forward pagination does not terminate");
        let path = match &from {
            Some(f) => format!("/rooms/{room}/messages?dir=f&limit=50&from={}", enc(f)),
            None => format!("/rooms/{room}/messages?dir=f&limit=50"),
        };
        let (status, page) = server.get(&path, &token).await;
        assert_eq!(status, 200, "{page}");
        let chunk = page["chunk"].as_array().expect("chunk");
        assert!(chunk.len() <= 50);
        if chunk.is_empty() {
            break;
        }
        fwd_events.extend(chunk.iter().cloned());
        match page["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        fwd_events.first().map(|e| e["type"].clone()),
        Some(json!("m.room.create")),
        "forward pagination from the start begins with m.room.create"
    );
    assert_eq!(message_bodies(&fwd_events), expected);
    assert_eq!(message_ids(&fwd_events), ids);
    let unique: HashSet<&str> = fwd_events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(unique.len(), fwd_events.len(), "duplicate events forwards");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paginate_with_matrix_sdk() {
    let server = TestServer::start().await;
    let (_, room_id, ids) = room_with_history(&server).await;
    let expected: Vec<String> = (0..N).map(numbered).collect();

    let client = Client::builder()
        .homeserver_url(server.base_url())
        .build()
        .await
        .unwrap();
    client
        .matrix_auth()
        .login_username("alice", PW)
        .await
        .expect("login");
    common::sync(&client).await;
    let room = client
        .get_room(&RoomId::parse(&room_id).unwrap())
        .expect("room after sync");

    let mut bodies = Vec::new();
    let mut event_ids = Vec::new();
    let mut from: Option<String> = None;
    for round in 0.. {
        assert!(round < 40, "pagination does not terminate");
        let mut options = MessagesOptions::backward().from(from.as_deref());
        options.limit = uint!(50);
        let page = room.messages(options).await.expect("messages");
        assert!(page.chunk.len() <= 50);
        for ev in &page.chunk {
            let json = common::event_json(ev);
            if json["type"] == "m.room.message" {
                bodies.push(json["content"]["body"].as_str().unwrap().to_owned());
                event_ids.push(ev.event_id().unwrap().to_string());
            }
        }
        match page.end {
            Some(end) if !page.chunk.is_empty() => from = Some(end),
            _ => break,
        }
    }
    bodies.reverse();
    event_ids.reverse();
    assert_eq!(bodies, expected);
    assert_eq!(event_ids, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_returns_neighbours() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("alice", PW).await;
    let room_id = server
        .create_room(&token, &json!({ "preset": "private_chat" }))
        .await;
    let room = enc(&room_id);
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(
            server
                .send_text(&token, &room_id, &format!("t{i}"), &numbered(i))
                .await,
        );
    }

    let pivot = 20;
    let (status, ctx) = server
        .get(
            &format!("/rooms/{room}/context/{}?limit=10", enc(&ids[pivot])),
            &token,
        )
        .await;
    assert_eq!(status, 200, "{ctx}");
    assert_eq!(ctx["event"]["event_id"], ids[pivot].as_str());
    assert_eq!(ctx["event"]["content"]["body"], numbered(pivot));

    let before = ctx["events_before"].as_array().expect("events_before");
    let after = ctx["events_after"].as_array().expect("events_after");
    assert!(!before.is_empty() && !after.is_empty(), "{ctx}");
    assert!(before.len() + after.len() <= 10, "limit=10 exceeded: {ctx}");
    // events_before is in reverse chronological order, nearest first.
    for (k, ev) in before.iter().enumerate() {
        assert_eq!(ev["event_id"], ids[pivot - 1 - k].as_str(), "before[{k}]");
    }
    for (k, ev) in after.iter().enumerate() {
        assert_eq!(ev["event_id"], ids[pivot + 1 + k].as_str(), "after[{k}]");
    }
    // The room state at the event is included.
    let state = ctx["state"].as_array().expect("state");
    assert!(state.iter().any(|e| e["type"] == "m.room.create"), "{ctx}");

    // The returned tokens continue pagination seamlessly.
    let end = ctx["end"].as_str().expect("end token");
    let (status, page) = server
        .get(
            &format!("/rooms/{room}/messages?dir=f&limit=5&from={}", enc(end)),
            &token,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let next = pivot + 1 + after.len();
    assert_eq!(
        message_ids(page["chunk"].as_array().unwrap()),
        ids[next..next + 5].to_vec()
    );
    let start = ctx["start"].as_str().expect("start token");
    let (status, page) = server
        .get(
            &format!("/rooms/{room}/messages?dir=b&limit=5&from={}", enc(start)),
            &token,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let prev = pivot - before.len();
    let mut expect_prev: Vec<String> = ids[prev - 5..prev].to_vec();
    expect_prev.reverse();
    assert_eq!(message_ids(page["chunk"].as_array().unwrap()), expect_prev);

    // Unknown event: 404 M_NOT_FOUND.
    let resp = server
        .get(
            &format!("/rooms/{room}/context/{}", enc("$doesnotexist")),
            &token,
        )
        .await;
    hearth_conformance::assert_matrix_error(&resp, 404, "M_NOT_FOUND");
}
