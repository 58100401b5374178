//! /sync: which state an incremental sync carries, lazy-loaded members across syncs, rooms that
//! are new to the client, and the presence that comes with them (Synapse's behaviour, which
//! clients and SyTest expect).

use hearth_conformance::{TestServer, Value, enc, json};

const PW: &str = "sync-state-password";

fn next_batch(sync: &Value) -> String {
    sync["next_batch"].as_str().expect("next_batch").to_owned()
}

async fn sync_since(server: &TestServer, token: &str, since: &str, filter: &Value) -> Value {
    let (status, body) = server
        .get(
            &format!(
                "/sync?timeout=0&since={}&filter={}",
                enc(since),
                enc(&filter.to_string())
            ),
            token,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn first_sync(server: &TestServer, token: &str, filter: &Value) -> Value {
    let (status, body) = server
        .get(
            &format!("/sync?timeout=0&filter={}", enc(&filter.to_string())),
            token,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn members_in(events: &Value) -> Vec<String> {
    events
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_display_name_change_is_an_ordinary_incremental_sync() {
    let server = TestServer::start().await;
    let (alice_id, alice, _) = server.register("alice", PW).await;
    let room = server.create_room(&alice, &json!({})).await;
    let all = json!({});
    let since = next_batch(&first_sync(&server, &alice, &all).await);

    let path = format!(
        "/rooms/{}/state/m.room.member/{}",
        enc(&room),
        enc(&alice_id)
    );
    let (status, body) = server
        .put(
            &path,
            &alice,
            &json!({ "membership": "join", "displayname": "Alice A." }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    server
        .send_text(&alice, &room, "t1", "after the rename")
        .await;

    let sync = sync_since(&server, &alice, &since, &all).await;
    let joined = &sync["rooms"]["join"][room.as_str()];
    let timeline = joined["timeline"]["events"].as_array().expect("timeline");
    assert_eq!(
        timeline.len(),
        2,
        "the rename and the message, not the room's history again: {joined}"
    );
    assert_eq!(timeline[0]["content"]["displayname"], "Alice A.");
    assert_eq!(joined["timeline"]["limited"], false, "{joined}");
    assert_eq!(
        joined["state"]["events"].as_array().map(Vec::len),
        Some(0),
        "no state beyond the timeline: {joined}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_loaded_members_are_sent_once_unless_redundant_ones_are_asked_for() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", PW).await;
    let (bob_id, bob, _) = server.register("bob", PW).await;
    let room = server
        .create_room(&alice, &json!({ "preset": "public_chat" }))
        .await;
    let (status, body) = server.join_raw(&bob, &room).await;
    assert_eq!(status, 200, "{body}");
    server.send_text(&bob, &room, "b1", "first").await;

    let lazy = json!({ "room": {
        "state": { "lazy_load_members": true },
        "timeline": { "limit": 1 },
    } });
    let initial = first_sync(&server, &alice, &lazy).await;
    let state = &initial["rooms"]["join"][room.as_str()]["state"]["events"];
    assert!(members_in(state).contains(&bob_id), "{state}");
    let since = next_batch(&initial);

    server.send_text(&bob, &room, "b2", "second").await;
    let sync = sync_since(&server, &alice, &since, &lazy).await;
    let joined = &sync["rooms"]["join"][room.as_str()];
    assert_eq!(
        joined["timeline"]["events"].as_array().map(Vec::len),
        Some(1),
        "{joined}"
    );
    assert!(
        members_in(&joined["state"]["events"]).is_empty(),
        "bob's member event again, though this device has it: {joined}"
    );

    let redundant = json!({ "room": {
        "state": { "lazy_load_members": true, "include_redundant_members": true },
        "timeline": { "limit": 1 },
    } });
    let sync = sync_since(&server, &alice, &since, &redundant).await;
    let state = &sync["rooms"]["join"][room.as_str()]["state"]["events"];
    assert_eq!(members_in(state), vec![bob_id], "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_joined_and_left_between_syncs_comes_with_its_state() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", PW).await;
    let (bob_id, bob, _) = server.register("bob", PW).await;
    let room = server.create_room(&alice, &json!({})).await;
    let (status, body) = server
        .put(
            &format!("/rooms/{}/state/org.example.marker/", enc(&room)),
            &alice,
            &json!({ "marked": true }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .post(
            &format!("/rooms/{}/invite", enc(&room)),
            &alice,
            &json!({ "user_id": bob_id }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let filter = json!({ "room": {
        "timeline": { "types": [] },
        "state": { "types": ["org.example.marker"] },
        "include_leave": true,
    } });
    let since = next_batch(&first_sync(&server, &bob, &filter).await);

    let (status, body) = server.join_raw(&bob, &room).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .post(&format!("/rooms/{}/leave", enc(&room)), &bob, &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");

    let sync = sync_since(&server, &bob, &since, &filter).await;
    let left = &sync["rooms"]["leave"][room.as_str()];
    let state = left["state"]["events"].as_array().expect("state");
    assert_eq!(state.len(), 1, "the room's state up to the leave: {left}");
    assert_eq!(state[0]["content"]["marked"], true, "{left}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newly_joined_room_brings_its_members_presence() {
    let server = TestServer::start().await;
    let (alice_id, alice, _) = server.register("alice", PW).await;
    let (_, bob, _) = server.register("bob", PW).await;
    let room = server
        .create_room(&alice, &json!({ "preset": "public_chat" }))
        .await;
    let (status, body) = server
        .put(
            &format!("/presence/{}/status", enc(&alice_id)),
            &alice,
            &json!({ "presence": "online", "status_msg": "here" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let all = json!({});
    let since = next_batch(&first_sync(&server, &bob, &all).await);
    // Alice's presence is older than bob's token: only the join makes it his business.
    let (status, body) = server.join_raw(&bob, &room).await;
    assert_eq!(status, 200, "{body}");

    let sync = sync_since(&server, &bob, &since, &all).await;
    let from_alice: Vec<&Value> = sync["presence"]["events"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .filter(|e| e["sender"] == alice_id.as_str())
        .collect();
    assert_eq!(from_alice.len(), 1, "{sync}");
    assert_eq!(from_alice[0]["content"]["status_msg"], "here");
    assert_eq!(
        sync["rooms"]["join"][room.as_str()]["timeline"]["limited"],
        true,
        "a room new to the client has history before its timeline"
    );
}
