//! History visibility, as /messages, /event, /context and /sync apply it.

use hearth_conformance::{TestServer, Value, assert_matrix_status, enc, json, message_bodies};

async fn history(server: &TestServer, tok: &str, room: &str) -> Vec<String> {
    let (status, body) = server
        .get(
            &format!("/rooms/{}/messages?dir=b&limit=100", enc(room)),
            tok,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut bodies = message_bodies(body["chunk"].as_array().unwrap());
    bodies.reverse();
    bodies
}

/// A public room with the given history visibility, "before" sent, bob joined, "after" sent.
async fn room_with(server: &TestServer, visibility: &str) -> (String, String, String, String) {
    let (_, alice, _) = server
        .register(&format!("a-{visibility}"), "pw-alice-1")
        .await;
    let (_, bob, _) = server
        .register(&format!("b-{visibility}"), "pw-bob-1")
        .await;
    let room = server
        .create_room(
            &alice,
            &json!({
                "preset": "public_chat",
                "initial_state": [{
                    "type": "m.room.history_visibility",
                    "state_key": "",
                    "content": { "history_visibility": visibility }
                }]
            }),
        )
        .await;
    let before = server.send_text(&alice, &room, "t1", "before").await;
    let (status, body) = server
        .post(&format!("/join/{}", enc(&room)), &bob, &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    server.send_text(&alice, &room, "t2", "after").await;
    (alice, bob, room, before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_visibility_hides_what_came_before_the_join() {
    let server = TestServer::start().await;
    let (alice, bob, room, before) = room_with(&server, "joined").await;
    assert_eq!(
        history(&server, &alice, &room).await,
        vec!["before", "after"]
    );
    assert_eq!(history(&server, &bob, &room).await, vec!["after"]);
    let event = format!("/rooms/{}/event/{}", enc(&room), enc(&before));
    assert_matrix_status(&server.get(&event, &bob).await, 404);
    let context = format!("/rooms/{}/context/{}", enc(&room), enc(&before));
    assert_matrix_status(&server.get(&context, &bob).await, 404);

    let (_, sync) = server.get("/sync", &bob).await;
    let timeline: Vec<Value> = sync["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(message_bodies(&timeline), vec!["after"], "{sync}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_visibility_shows_earlier_history_to_members() {
    let server = TestServer::start().await;
    let (_, bob, room, before) = room_with(&server, "shared").await;
    assert_eq!(history(&server, &bob, &room).await, vec!["before", "after"]);
    let (status, body) = server
        .get(
            &format!("/rooms/{}/event/{}", enc(&room), enc(&before)),
            &bob,
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // A non-member cannot read a shared room.
    let (_, carol, _) = server.register("carol", "pw-carol-1").await;
    assert_matrix_status(
        &server
            .get(&format!("/rooms/{}/messages?dir=b", enc(&room)), &carol)
            .await,
        403,
    );
}

/// A change of history visibility is shown to whoever could see the room on either side of it:
/// Bob, joining after a members-only room opened its history, sees the change that let him
/// read on, and not what came before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_the_history_is_seen_by_those_it_lets_in() {
    let server = TestServer::start().await;
    let (alice, bob, room, _) = room_with(&server, "joined").await;
    let (_, carol, _) = server.register("carol", "pw-carol-1").await;
    server.send_text(&alice, &room, "t3", "still closed").await;
    let (status, body) = server
        .put(
            &format!("/rooms/{}/state/m.room.history_visibility/", enc(&room)),
            &alice,
            &json!({ "history_visibility": "shared" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    server.send_text(&alice, &room, "t4", "open now").await;
    let (status, body) = server
        .post(&format!("/join/{}", enc(&room)), &carol, &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");

    let (_, page) = server
        .get(
            &format!("/rooms/{}/messages?dir=b&limit=100", enc(&room)),
            &carol,
        )
        .await;
    let chunk = page["chunk"].as_array().unwrap();
    let mut bodies = message_bodies(chunk);
    bodies.reverse();
    assert_eq!(bodies, vec!["open now"], "{page}");
    // Oldest first: the room's first setting (made while history was still shared by
    // default), then the opening.
    let changes: Vec<&Value> = chunk
        .iter()
        .rev()
        .filter(|e| e["type"] == "m.room.history_visibility")
        .map(|e| &e["content"]["history_visibility"])
        .collect();
    assert_eq!(changes, [&json!("joined"), &json!("shared")], "{page}");
    // Bob, joined all along, sees it too.
    assert!(
        history(&server, &bob, &room)
            .await
            .contains(&"still closed".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn world_readable_rooms_can_be_read_without_joining() {
    let server = TestServer::start().await;
    let (_, _, room, _) = room_with(&server, "world_readable").await;
    let (_, carol, _) = server.register("carol", "pw-carol-1").await;
    assert_eq!(
        history(&server, &carol, &room).await,
        vec!["before", "after"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_who_left_reads_up_to_the_leave() {
    let server = TestServer::start().await;
    let (alice, bob, room, _) = room_with(&server, "shared").await;
    let (status, _) = server
        .post(&format!("/rooms/{}/leave", enc(&room)), &bob, &json!({}))
        .await;
    assert_eq!(status, 200);
    server.send_text(&alice, &room, "t3", "after leaving").await;
    assert_eq!(history(&server, &bob, &room).await, vec!["before", "after"]);
}

/// An invitee has the invite's stripped state and nothing more under `shared` history: the spec
/// keeps shared history for members who joined (and Synapse answers the same). Every read path
/// refuses until the join, and lets the history through after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invitee_reads_nothing_of_a_shared_room_until_joining() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw-alice-1").await;
    let (_, bob, _) = server.register("bob", "pw-bob-1").await;
    let room = server
        .create_room(
            &alice,
            &json!({ "preset": "private_chat", "name": "Secret plans" }),
        )
        .await;
    let secret = server.send_text(&alice, &room, "t1", "the secret").await;
    let (status, body) = server
        .post(
            &format!("/rooms/{}/invite", enc(&room)),
            &alice,
            &json!({ "user_id": "@bob:localhost" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let r = enc(&room);
    let e = enc(&secret);
    for path in [
        format!("/rooms/{r}/messages?dir=b&limit=50"),
        format!("/rooms/{r}/event/{e}"),
        format!("/rooms/{r}/context/{e}"),
        format!("/rooms/{r}/state"),
        format!("/rooms/{r}/state/m.room.name/"),
        format!("/rooms/{r}/members"),
        format!("/rooms/{r}/joined_members"),
        format!("/_matrix/client/v1/rooms/{r}/relations/{e}"),
        format!("/_matrix/client/v1/rooms/{r}/threads"),
    ] {
        let (status, body) = server.get(&path, &bob).await;
        assert!(
            status == 403 || status == 404,
            "{path}: an invitee got {status} {body}"
        );
        assert!(!body.to_string().contains("the secret"), "{path}: {body}");
    }
    let (status, body) = server
        .post(
            "/search",
            &bob,
            &json!({ "search_categories": { "room_events": { "search_term": "secret" } } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["search_categories"]["room_events"]["count"], json!(0));
    // /sync shows the invite's stripped state only.
    let (_, sync) = server.get("/sync?timeout=0", &bob).await;
    assert!(!sync.to_string().contains("the secret"), "{sync}");
    assert!(sync["rooms"]["invite"][&room].is_object(), "{sync}");

    // Once joined, shared history is bob's.
    let (status, body) = server.join_raw(&bob, &room).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(history(&server, &bob, &room).await, ["the secret"]);
    let (status, _) = server.get(&format!("/rooms/{r}/event/{e}"), &bob).await;
    assert_eq!(status, 200);
}

/// `unsigned.membership` (MSC4115, spec v1.11) of the event with body `text` among `events`.
fn membership_of(events: &[Value], text: &str) -> Value {
    let ev = events
        .iter()
        .find(|e| e["content"]["body"] == text)
        .unwrap_or_else(|| panic!("no {text:?} in {events:?}"));
    ev["unsigned"]["membership"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_says_the_readers_membership_at_it() {
    let server = TestServer::start().await;
    let (alice, bob, room, _) = room_with(&server, "shared").await;
    let (status, _) = server
        .post(&format!("/rooms/{}/leave", enc(&room)), &bob, &json!({}))
        .await;
    assert_eq!(status, 200);
    server.send_text(&alice, &room, "m3", "gone").await;
    let (status, _) = server.join_raw(&bob, &room).await;
    assert_eq!(status, 200);
    let back = server.send_text(&alice, &room, "m4", "back").await;
    // Bob's view: "before" came before he joined (leave), "after" while he was joined, "gone"
    // while he was away (shared history shows it to him, as one he was not joined for).
    let (status, page) = server
        .get(
            &format!("/rooms/{}/messages?dir=b&limit=100", enc(&room)),
            &bob,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let chunk = page["chunk"].as_array().unwrap().clone();
    assert_eq!(membership_of(&chunk, "before"), "leave", "{page}");
    assert_eq!(membership_of(&chunk, "after"), "join", "{page}");
    assert_eq!(membership_of(&chunk, "gone"), "leave", "{page}");
    assert_eq!(membership_of(&chunk, "back"), "join", "{page}");
    // Every event carries it, the member events too: his own join counts as joined.
    for ev in &chunk {
        assert!(ev["unsigned"]["membership"].is_string(), "{ev}");
    }
    // The same reader, another sender: alice was joined throughout.
    let (_, alice_page) = server
        .get(
            &format!("/rooms/{}/messages?dir=b&limit=100", enc(&room)),
            &alice,
        )
        .await;
    let alice_chunk = alice_page["chunk"].as_array().unwrap().clone();
    assert_eq!(membership_of(&alice_chunk, "before"), "join");

    // /event and /context.
    let (status, ev) = server
        .get(&format!("/rooms/{}/event/{}", enc(&room), enc(&back)), &bob)
        .await;
    assert_eq!(status, 200, "{ev}");
    assert_eq!(ev["unsigned"]["membership"], "join", "{ev}");
    let (status, ctx) = server
        .get(
            &format!("/rooms/{}/context/{}?limit=10", enc(&room), enc(&back)),
            &bob,
        )
        .await;
    assert_eq!(status, 200, "{ctx}");
    assert_eq!(ctx["event"]["unsigned"]["membership"], "join", "{ctx}");
    let before: Vec<Value> = ctx["events_before"].as_array().unwrap().clone();
    assert_eq!(membership_of(&before, "gone"), "leave", "{ctx}");

    // /sync's timeline.
    let (status, s) = server.get("/sync", &bob).await;
    assert_eq!(status, 200, "{s}");
    let timeline = s["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(membership_of(&timeline, "back"), "join", "{s}");
}
