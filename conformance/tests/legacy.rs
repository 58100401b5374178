//! The legacy endpoints clients and SyTest still call (spec r0.6.1, "Room events" and "Events"):
//! the v1 event stream `GET /events`, `GET /events/{eventId}`, `GET /initialSync` and
//! `GET /rooms/{roomId}/initialSync`.

use std::time::{Duration, Instant};

use hearth_conformance::{
    Method, TestServer, Value, assert_matrix_error, enc, json, message_bodies,
};

const PW: &str = "legacy-password";

fn chunk(body: &Value) -> &[Value] {
    body["chunk"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("no chunk: {body}"))
}

fn end(body: &Value) -> String {
    body["end"]
        .as_str()
        .unwrap_or_else(|| panic!("no end: {body}"))
        .to_owned()
}

/// `GET /events` from a token (or from now), as `(status, body)`.
async fn events(server: &TestServer, token: &str, query: &str) -> (u16, Value) {
    server.get(&format!("/events?{query}"), token).await
}

/// Polls the stream from `from` until `found` holds for an event (or 10 s pass); returns the
/// events seen and the last `end`.
async fn poll_until(
    server: &TestServer,
    token: &str,
    from: &str,
    extra: &str,
    found: impl Fn(&Value) -> bool,
) -> (Vec<Value>, String) {
    let mut from = from.to_owned();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let (status, body) = events(
            server,
            token,
            &format!("from={}&timeout=1000{extra}", enc(&from)),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert!(body["start"].is_string(), "{body}");
        from = end(&body);
        let done = chunk(&body).iter().any(&found);
        seen.extend(chunk(&body).iter().cloned());
        if done {
            return (seen, from);
        }
    }
    panic!("not found in the stream; saw {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_pages_through_messages_and_long_polls() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", PW).await;
    let room = server.create_room(&alice, &json!({})).await;

    let (status, first) = events(&server, &alice, "timeout=0").await;
    assert_eq!(status, 200, "{first}");
    for key in ["start", "end", "chunk"] {
        assert!(!first[key].is_null(), "{key} missing: {first}");
    }
    let mut from = end(&first);

    let mut sent = Vec::new();
    for i in 0..7 {
        sent.push(
            server
                .send_text(&alice, &room, &format!("t{i}"), &format!("m{i}"))
                .await,
        );
    }
    // `limit` pages through what came since, in order, each `end` just after its page.
    let mut got = Vec::new();
    for _ in 0..10 {
        let (status, page) = events(
            &server,
            &alice,
            &format!("from={}&timeout=0&limit=3", enc(&from)),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        let events = chunk(&page);
        assert!(events.len() <= 3, "limit not applied: {page}");
        for e in events {
            assert_eq!(e["room_id"], room.as_str(), "{e}");
            assert_eq!(e["user_id"], e["sender"], "v1 format: {e}");
            if e["type"] == "m.room.message" {
                got.push(e["event_id"].as_str().unwrap().to_owned());
            }
        }
        assert_eq!(
            page["start"],
            from.as_str(),
            "start is the token asked from"
        );
        from = end(&page);
        if got.len() == sent.len() {
            break;
        }
    }
    assert_eq!(got, sent, "every message once, in order");

    // Caught up: nothing more, and the token stays usable.
    let (status, idle) = events(&server, &alice, &format!("from={}&timeout=0", enc(&from))).await;
    assert_eq!(status, 200);
    assert!(
        message_bodies(chunk(&idle)).is_empty(),
        "nothing new expected: {idle}"
    );
    let from = end(&idle);

    // A long-poll waits, and answers as soon as a message arrives.
    let poll = {
        let url = format!(
            "{}/_matrix/client/v3/events?timeout=20000&from={}",
            server.base_url(),
            enc(&from)
        );
        let token = alice.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let body: Value = reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("long-poll answered")
                .json()
                .await
                .expect("JSON");
            (started.elapsed(), body)
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.send_text(&alice, &room, "late", "late one").await;
    let (took, body) = poll.await.expect("poll task");
    assert_eq!(message_bodies(chunk(&body)), ["late one"], "{body}");
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(10),
        "long-poll answered after {took:?}"
    );

    // The stream's tokens are /sync's: the `r0` path serves the same stream.
    let (status, body) = server
        .get(
            &format!(
                "/_matrix/client/r0/events?timeout=0&from={}",
                enc(&end(&body))
            ),
            &alice,
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_carries_receipts_typing_account_data_and_tags() {
    let server = TestServer::start().await;
    let (alice_id, alice, _) = server.register("alice", PW).await;
    let room = server.create_room(&alice, &json!({})).await;
    let event = server.send_text(&alice, &room, "t0", "hello").await;
    let (_, first) = events(&server, &alice, "timeout=0").await;
    let from = end(&first);

    let r = enc(&room);
    let u = enc(&alice_id);
    let put = |path: String, body: Value| {
        let server = &server;
        let alice = &alice;
        async move {
            let (status, resp) = server.put(&path, alice, &body).await;
            assert_eq!(status, 200, "{path}: {resp}");
        }
    };
    put(
        format!("/user/{u}/account_data/my.global"),
        json!({ "cats": 1 }),
    )
    .await;
    put(
        format!("/user/{u}/rooms/{r}/account_data/my.room"),
        json!({ "rats": 2 }),
    )
    .await;
    put(
        format!("/user/{u}/rooms/{r}/tags/u.work"),
        json!({ "order": 0.5 }),
    )
    .await;
    put(
        format!("/rooms/{r}/typing/{u}"),
        json!({ "typing": true, "timeout": 30000 }),
    )
    .await;
    let (status, body) = server
        .post(
            &format!("/rooms/{r}/receipt/m.read/{}", enc(&event)),
            &alice,
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let (seen, _) = poll_until(&server, &alice, &from, "", |e| e["type"] == "m.receipt").await;
    let find = |kind: &str| {
        seen.iter()
            .find(|e| e["type"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in {seen:?}"))
            .clone()
    };
    let global = find("my.global");
    assert_eq!(global["content"]["cats"], 1);
    assert!(global.get("room_id").is_none(), "{global}");
    let room_data = find("my.room");
    assert_eq!(room_data["content"]["rats"], 2);
    assert_eq!(room_data["room_id"], room.as_str());
    let tags = find("m.tag");
    assert_eq!(tags["room_id"], room.as_str());
    assert_eq!(tags["content"]["tags"]["u.work"]["order"], 0.5);
    let typing = find("m.typing");
    assert_eq!(typing["room_id"], room.as_str());
    assert_eq!(typing["content"]["user_ids"], json!([alice_id]));
    let receipt = find("m.receipt");
    assert_eq!(receipt["room_id"], room.as_str());
    assert!(
        receipt["content"][&event]["m.read"][&alice_id]["ts"].is_u64(),
        "{receipt}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peeking_a_world_readable_room_through_the_stream() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", PW).await;
    let (_, bob, _) = server.register("bob", PW).await;
    let room = server.create_room(&alice, &json!({})).await;
    let other = server.create_room(&alice, &json!({})).await;
    server.send_text(&alice, &room, "t0", "private").await;

    // Not world readable: bob may neither read the stream of the room nor its snapshot.
    let q = format!("room_id={}&timeout=0", enc(&room));
    let resp = events(&server, &bob, &q).await;
    assert_matrix_error(&resp, 403, "M_FORBIDDEN");
    let resp = server
        .get(&format!("/rooms/{}/initialSync", enc(&room)), &bob)
        .await;
    assert_matrix_error(&resp, 403, "M_FORBIDDEN");

    let (status, body) = server
        .put(
            &format!("/rooms/{}/state/m.room.history_visibility/", enc(&room)),
            &alice,
            &json!({ "history_visibility": "world_readable" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    server.send_text(&alice, &room, "t00", "public").await;

    // The snapshot shows what was sent since the room became world readable.
    let (status, snapshot) = server
        .get(&format!("/rooms/{}/initialSync", enc(&room)), &bob)
        .await;
    assert_eq!(status, 200, "{snapshot}");
    assert_eq!(snapshot["room_id"], room.as_str());
    assert!(
        snapshot.get("membership").is_none(),
        "a peeker has no membership: {snapshot}"
    );
    assert_eq!(
        message_bodies(snapshot["messages"]["chunk"].as_array().unwrap()),
        ["public"],
        "{snapshot}"
    );

    let (status, first) = events(&server, &bob, &q).await;
    assert_eq!(status, 200, "{first}");
    server.send_text(&alice, &other, "t1", "elsewhere").await;
    server.send_text(&alice, &room, "t2", "mice").await;
    let (seen, _) = poll_until(
        &server,
        &bob,
        &end(&first),
        &format!("&room_id={}", enc(&room)),
        |e| e["content"]["body"] == "mice",
    )
    .await;
    assert!(
        seen.iter()
            .all(|e| e.get("room_id").is_none_or(|r| r == room.as_str())),
        "only the peeked room's events: {seen:?}"
    );
    assert!(!message_bodies(&seen).contains(&"elsewhere".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_sync_snapshots_rooms_including_departed_ones() {
    let server = TestServer::start().await;
    let (alice_id, alice, _) = server.register("alice", PW).await;
    let (bob_id, bob, _) = server.register("bob", PW).await;
    let room = server
        .create_room(
            &alice,
            &json!({ "preset": "public_chat", "visibility": "public" }),
        )
        .await;
    let (status, body) = server.join_raw(&bob, &room).await;
    assert_eq!(status, 200, "{body}");
    for i in 0..4 {
        server
            .send_text(&alice, &room, &format!("t{i}"), &format!("m{i}"))
            .await;
    }
    let last = server.send_text(&alice, &room, "t4", "last before").await;
    let (r, u) = (enc(&room), enc(&bob_id));
    let (status, _) = server
        .put(&format!("/user/{u}/rooms/{r}/tags/u.fav"), &bob, &json!({}))
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .put(
            &format!("/user/{u}/account_data/my.global"),
            &bob,
            &json!({ "v": 1 }),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .post(
            &format!("/rooms/{r}/receipt/m.read/{}", enc(&last)),
            &bob,
            &json!({}),
        )
        .await;
    assert_eq!(status, 200);

    let (status, snap) = server.get("/initialSync?limit=3", &bob).await;
    assert_eq!(status, 200, "{snap}");
    let rooms = snap["rooms"].as_array().expect("rooms");
    assert_eq!(rooms.len(), 1, "{snap}");
    let r0 = &rooms[0];
    assert_eq!(r0["room_id"], room.as_str());
    assert_eq!(r0["membership"], "join");
    assert_eq!(r0["visibility"], "public");
    let msgs = r0["messages"]["chunk"].as_array().expect("chunk");
    assert_eq!(msgs.len(), 3, "{snap}");
    assert_eq!(msgs[2]["event_id"], last.as_str(), "oldest first");
    assert!(r0["messages"]["start"].is_string() && r0["messages"]["end"].is_string());
    assert!(
        r0["state"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.create"),
        "{snap}"
    );
    assert_eq!(r0["account_data"][0]["type"], "m.tag", "tags first: {snap}");
    assert!(
        snap["account_data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "my.global"),
        "{snap}"
    );
    let receipt = snap["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["room_id"] == room.as_str())
        .unwrap_or_else(|| panic!("no receipts for the room: {snap}"));
    assert!(receipt["content"][&last]["m.read"][&bob_id]["ts"].is_u64());
    assert!(snap["presence"].is_array(), "{snap}");

    // Its `end` starts the event stream where the snapshot stopped.
    server
        .send_text(&alice, &room, "t5", "after snapshot")
        .await;
    let (status, next) = events(
        &server,
        &bob,
        &format!("from={}&timeout=0", enc(&end(&snap))),
    )
    .await;
    assert_eq!(status, 200, "{next}");
    assert_eq!(message_bodies(chunk(&next)), ["after snapshot"], "{next}");

    // Bob leaves; what happens after stays out of his view of the room.
    let (status, _) = server
        .post(&format!("/rooms/{r}/leave"), &bob, &json!({}))
        .await;
    assert_eq!(status, 200);
    server.send_text(&alice, &room, "t6", "after leave").await;
    let (status, body) = server
        .put(
            &format!("/rooms/{r}/state/m.room.topic/"),
            &alice,
            &json!({ "topic": "after leave" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let (_, snap) = server.get("/initialSync", &bob).await;
    assert!(
        snap["rooms"].as_array().unwrap().is_empty(),
        "departed rooms only when archived: {snap}"
    );
    let (status, snap) = server.get("/initialSync?archived=true&limit=2", &bob).await;
    assert_eq!(status, 200, "{snap}");
    let r0 = &snap["rooms"][0];
    assert_eq!(r0["membership"], "leave", "{snap}");
    let msgs = r0["messages"]["chunk"].as_array().unwrap();
    assert_eq!(msgs[0]["content"]["body"], "after snapshot", "{snap}");
    assert_eq!(msgs[1]["type"], "m.room.member", "{snap}");
    assert!(
        !r0["state"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.topic"),
        "state after the leave leaked: {snap}"
    );

    // The single-room snapshot of the departed room: up to the leave.
    let (status, room_snap) = server
        .get(&format!("/rooms/{r}/initialSync?limit=2"), &bob)
        .await;
    assert_eq!(status, 200, "{room_snap}");
    assert_eq!(room_snap["membership"], "leave");
    let ids = |chunk: &Value| {
        chunk
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_id"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&room_snap["messages"]["chunk"]),
        ids(&r0["messages"]["chunk"])
    );
    assert_eq!(room_snap["presence"], json!([]));
    assert_eq!(room_snap["receipts"], json!([]));
    assert_eq!(room_snap["account_data"][0]["type"], "m.tag");
    let _ = alice_id;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_initial_sync_and_single_events() {
    let server = TestServer::start().await;
    let (alice_id, alice, _) = server.register("alice", PW).await;
    let (_, bob, _) = server.register("bob", PW).await;
    let room = server.create_room(&alice, &json!({})).await;
    let r = enc(&room);
    for i in 0..5 {
        server
            .send_text(&alice, &room, &format!("t{i}"), &format!("m{i}"))
            .await;
    }
    let (status, body) = server
        .post(
            &format!(
                "/rooms/{r}/receipt/m.read/{}",
                enc(&server.send_text(&alice, &room, "t5", "m5").await)
            ),
            &alice,
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .put(
            &format!("/user/{}/rooms/{r}/account_data/my.room", enc(&alice_id)),
            &alice,
            &json!({ "rats": true }),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let (status, snap) = server
        .get(&format!("/rooms/{r}/initialSync?limit=3"), &alice)
        .await;
    assert_eq!(status, 200, "{snap}");
    assert_eq!(snap["room_id"], room.as_str());
    assert_eq!(snap["membership"], "join");
    assert_eq!(
        message_bodies(snap["messages"]["chunk"].as_array().unwrap()),
        ["m3", "m4", "m5"]
    );
    // The v1 event format: the sender also as `user_id`.
    assert_eq!(snap["messages"]["chunk"][0]["user_id"], alice_id.as_str());
    assert!(
        snap["state"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.member" && e["user_id"] == alice_id.as_str()),
        "{snap}"
    );
    // The members' presence, each naming its user.
    assert!(
        snap["presence"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.presence" && e["content"]["user_id"] == alice_id.as_str()),
        "{snap}"
    );
    assert_eq!(snap["receipts"][0]["type"], "m.receipt", "{snap}");
    assert_eq!(snap["account_data"][0]["type"], "my.room", "{snap}");

    // `messages.start` pages on back with /messages.
    let start = snap["messages"]["start"].as_str().expect("start");
    let (status, older) = server
        .get(
            &format!("/rooms/{r}/messages?dir=b&limit=3&from={}", enc(start)),
            &alice,
        )
        .await;
    assert_eq!(status, 200, "{older}");
    assert_eq!(
        message_bodies(older["chunk"].as_array().unwrap()),
        ["m2", "m1", "m0"]
    );

    // limit=0: no messages.
    let (_, none) = server
        .get(&format!("/rooms/{r}/initialSync?limit=0"), &alice)
        .await;
    assert_eq!(none["messages"]["chunk"], json!([]), "{none}");

    // A non-member of a private room, and an unknown room, are refused.
    let resp = server.get(&format!("/rooms/{r}/initialSync"), &bob).await;
    assert_matrix_error(&resp, 403, "M_FORBIDDEN");
    let resp = server
        .get(
            &format!("/rooms/{}/initialSync", enc("!nowhere:localhost")),
            &alice,
        )
        .await;
    assert_eq!(resp.0, 403, "{:?}", resp.1);

    // GET /events/{eventId}: the event for who may see it, 404 otherwise.
    let id = snap["messages"]["chunk"][0]["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, ev) = server.get(&format!("/events/{}", enc(&id)), &alice).await;
    assert_eq!(status, 200, "{ev}");
    assert_eq!(ev["event_id"], id.as_str());
    assert_eq!(ev["room_id"], room.as_str());
    assert_eq!(ev["content"]["body"], "m3");
    let resp = server.get(&format!("/events/{}", enc(&id)), &bob).await;
    assert_matrix_error(&resp, 404, "M_NOT_FOUND");
    let resp = server
        .get(&format!("/events/{}", enc("$nope")), &alice)
        .await;
    assert_matrix_error(&resp, 404, "M_NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_matrix_errors_and_logout_ends_the_long_poll() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", PW).await;
    for query in [
        "limit=hello",
        "limit=-2",
        "timeout=hello",
        "from=garbage",
        "room_id=not-a-room",
    ] {
        let resp = events(&server, &alice, query).await;
        assert_eq!(resp.0, 400, "{query}: {:?}", resp.1);
        assert!(resp.1["errcode"].is_string(), "{query}: {:?}", resp.1);
    }
    for query in ["limit=hello", "archived=maybe"] {
        let resp = server.get(&format!("/initialSync?{query}"), &alice).await;
        assert_eq!(resp.0, 400, "{query}: {:?}", resp.1);
        assert!(resp.1["errcode"].is_string(), "{query}: {:?}", resp.1);
    }
    let resp = server
        .get(
            &format!("/rooms/{}/initialSync?limit=x", enc("!a:localhost")),
            &alice,
        )
        .await;
    assert_eq!(resp.0, 400, "{:?}", resp.1);
    let resp = server
        .request(Method::GET, "/events?timeout=0", None, None)
        .await;
    assert_matrix_error(&resp, 401, "M_MISSING_TOKEN");
    let resp = server
        .request(Method::GET, "/initialSync", None, None)
        .await;
    assert_matrix_error(&resp, 401, "M_MISSING_TOKEN");

    // A huge limit is capped, not an error.
    let (status, body) = events(&server, &alice, "limit=100000000&timeout=0").await;
    assert_eq!(status, 200, "{body}");

    // A long-poll of a session that ends answers 401 at once.
    let (_, first) = events(&server, &alice, "timeout=0").await;
    let poll = {
        let url = format!(
            "{}/_matrix/client/v3/events?timeout=30000&from={}",
            server.base_url(),
            enc(&end(&first))
        );
        let token = alice.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let resp = reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("long-poll answered");
            (
                started.elapsed(),
                resp.status().as_u16(),
                resp.json::<Value>().await.ok(),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = server.post("/logout", &alice, &json!({})).await;
    assert_eq!(status, 200);
    let (took, status, body) = poll.await.expect("poll task");
    assert_eq!(status, 401, "{body:?}");
    assert_eq!(body.expect("JSON")["errcode"], "M_UNKNOWN_TOKEN");
    assert!(
        took < Duration::from_secs(10),
        "the long-poll ran on for {took:?}"
    );
}
