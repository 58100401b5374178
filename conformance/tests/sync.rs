//! /sync: long-polling, token progression and initial sync contents.

use std::time::{Duration, Instant};

use hearth_conformance::{TestServer, Value, enc, json, message_bodies};

const PW: &str = "sync-password";

struct Pair {
    alice: String,
    bob: String,
    room_id: String,
}

async fn alice_and_bob(server: &TestServer, create: Value) -> Pair {
    let (_, alice, _) = server.register("alice", PW).await;
    let (_, bob, _) = server.register("bob", PW).await;
    let room_id = server.create_room(&alice, &create).await;
    let (status, body) = server.join_raw(&bob, &room_id).await;
    assert_eq!(status, 200, "bob joins: {body}");
    Pair {
        alice,
        bob,
        room_id,
    }
}

fn room_timeline<'a>(sync: &'a Value, room_id: &str) -> &'a [Value] {
    sync["rooms"]["join"][room_id]["timeline"]["events"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn next_batch(sync: &Value) -> String {
    sync["next_batch"]
        .as_str()
        .unwrap_or_else(|| panic!("sync without next_batch: {sync}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_returns_promptly_on_new_event() {
    let server = TestServer::start().await;
    let p = alice_and_bob(&server, json!({ "preset": "public_chat" })).await;

    let (status, initial) = server.get("/sync?timeout=0", &p.bob).await;
    assert_eq!(status, 200, "{initial}");
    let since = next_batch(&initial);

    // Idle: with nothing happening the server holds the request open.
    let started = Instant::now();
    let (status, idle) = server
        .get(&format!("/sync?since={}&timeout=2000", enc(&since)), &p.bob)
        .await;
    let idle_elapsed = started.elapsed();
    assert_eq!(status, 200, "{idle}");
    assert!(
        room_timeline(&idle, &p.room_id).is_empty(),
        "no new events expected: {idle}"
    );
    assert!(
        idle_elapsed >= Duration::from_millis(1500),
        "idle long-poll returned after {idle_elapsed:?}, expected to wait ~2 s"
    );
    let since = next_batch(&idle);

    // Active: bob long-polls for 10 s; alice sends after 1 s.
    let poll = async {
        let mut token = since.clone();
        loop {
            let (status, body) = server
                .get(
                    &format!("/sync?since={}&timeout=10000", enc(&token)),
                    &p.bob,
                )
                .await;
            assert_eq!(status, 200, "{body}");
            let received_at = Instant::now();
            if !message_bodies(room_timeline(&body, &p.room_id)).is_empty() {
                return (received_at, body);
            }
            token = next_batch(&body);
        }
    };
    let send = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let sent_at = Instant::now();
        let event_id = server
            .send_text(&p.alice, &p.room_id, "wake", "wake up, bob")
            .await;
        (sent_at, event_id)
    };
    let poll_started = Instant::now();
    let ((received_at, body), (sent_at, event_id)) = tokio::join!(poll, send);
    let latency = received_at.saturating_duration_since(sent_at);
    assert!(
        latency < Duration::from_secs(5),
        "long-poll delivered the event {latency:?} after it was sent (server waited for the timeout?)"
    );
    assert!(
        received_at.duration_since(poll_started) < Duration::from_secs(9),
        "long-poll returned only at its timeout"
    );
    let timeline = room_timeline(&body, &p.room_id);
    assert_eq!(message_bodies(timeline), vec!["wake up, bob"]);
    assert_eq!(timeline.last().unwrap()["event_id"], event_id.as_str());
    assert!(
        !body["rooms"]["join"][&p.room_id]["timeline"]["limited"]
            .as_bool()
            .unwrap_or(false),
        "one new event must not be reported as limited"
    );

    // next_batch moved forward: syncing from it does not re-deliver.
    let new_since = next_batch(&body);
    assert_ne!(new_since, since);
    let (status, again) = server
        .get(
            &format!("/sync?since={}&timeout=0", enc(&new_since)),
            &p.bob,
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        message_bodies(room_timeline(&again, &p.room_id)).is_empty(),
        "event delivered twice: {again}"
    );
    // The older token is still valid and yields the same event again.
    let (status, replay) = server
        .get(&format!("/sync?since={}&timeout=0", enc(&since)), &p.bob)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        message_bodies(room_timeline(&replay, &p.room_id)),
        vec!["wake up, bob"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_sync_delivers_in_order() {
    let server = TestServer::start().await;
    let p = alice_and_bob(&server, json!({ "preset": "public_chat" })).await;
    let (_, initial) = server.get("/sync?timeout=0", &p.bob).await;
    let mut since = next_batch(&initial);

    let mut expected = Vec::new();
    let mut received = Vec::new();
    for batch in 0..3 {
        for i in 0..5 {
            let text = format!("batch {batch} msg {i}");
            let (tok, who) = if i % 2 == 0 {
                (&p.alice, "a")
            } else {
                (&p.bob, "b")
            };
            server
                .send_text(tok, &p.room_id, &format!("{who}{batch}-{i}"), &text)
                .await;
            expected.push(text);
        }
        let (status, body) = server
            .get(&format!("/sync?since={}&timeout=5000", enc(&since)), &p.bob)
            .await;
        assert_eq!(status, 200, "{body}");
        received.extend(message_bodies(room_timeline(&body, &p.room_id)));
        let next = next_batch(&body);
        assert_ne!(next, since, "next_batch must move after new events");
        since = next;
    }
    assert_eq!(received, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_sync_has_state_and_limited_timeline() {
    let server = TestServer::start().await;
    let p = alice_and_bob(
        &server,
        json!({ "preset": "public_chat", "name": "Sync Room", "topic": "about sync" }),
    )
    .await;
    for i in 0..30 {
        server
            .send_text(&p.alice, &p.room_id, &format!("t{i}"), &format!("m{i}"))
            .await;
    }

    let filter = enc(r#"{"room":{"timeline":{"limit":5}}}"#);
    let (status, body) = server
        .get(&format!("/sync?filter={filter}&timeout=0"), &p.bob)
        .await;
    assert_eq!(status, 200, "{body}");
    next_batch(&body);
    let room = &body["rooms"]["join"][&p.room_id];
    assert!(
        room.is_object(),
        "joined room missing from initial sync: {body}"
    );
    let timeline = room["timeline"]["events"].as_array().expect("timeline");
    assert_eq!(
        message_bodies(timeline),
        vec!["m25", "m26", "m27", "m28", "m29"]
    );
    assert_eq!(timeline.len(), 5);
    assert_eq!(room["timeline"]["limited"], true);
    let prev_batch = room["timeline"]["prev_batch"]
        .as_str()
        .expect("prev_batch")
        .to_owned();

    // The state section carries the room state preceding the timeline.
    let state = room["state"]["events"].as_array().expect("state events");
    let find = |ty: &str, key: &str| {
        state
            .iter()
            .find(|e| e["type"] == ty && e["state_key"] == key)
            .unwrap_or_else(|| panic!("state lacks {ty}/{key}: {state:?}"))
    };
    find("m.room.create", "");
    find("m.room.power_levels", "");
    find("m.room.join_rules", "");
    assert_eq!(find("m.room.name", "")["content"]["name"], "Sync Room");
    assert_eq!(find("m.room.topic", "")["content"]["topic"], "about sync");
    for user in ["@alice:localhost", "@bob:localhost"] {
        assert_eq!(find("m.room.member", user)["content"]["membership"], "join");
    }
    let mut seen = std::collections::HashSet::new();
    for e in state {
        assert!(e["event_id"].is_string() && e["sender"].is_string(), "{e}");
        assert!(
            seen.insert((e["type"].to_string(), e["state_key"].to_string())),
            "duplicate state entry {e}"
        );
    }

    // prev_batch continues seamlessly into /messages.
    let (status, page) = server
        .get(
            &format!(
                "/rooms/{}/messages?dir=b&limit=5&from={}",
                enc(&p.room_id),
                enc(&prev_batch)
            ),
            &p.bob,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        message_bodies(page["chunk"].as_array().unwrap()),
        vec!["m24", "m23", "m22", "m21", "m20"]
    );

    // A room the user has not joined is absent.
    let other = server.create_room(&p.alice, &json!({})).await;
    let (_, body) = server.get("/sync?timeout=0", &p.bob).await;
    assert!(body["rooms"]["join"].get(&other).is_none());
}

/// Concurrent senders while a client long-polls: every message reaches the client exactly once,
/// and each sender's messages arrive in the order they were acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_reach_a_long_poll_exactly_once() {
    const SENDERS: usize = 4;
    const EACH: usize = 40;
    let server = std::sync::Arc::new(TestServer::start().await);
    let p = alice_and_bob(&server, json!({ "preset": "public_chat" })).await;
    let mut tokens = vec![p.alice.clone()];
    for i in 1..SENDERS {
        let (_, t, _) = server.register(&format!("sender{i}"), PW).await;
        let (status, body) = server.join_raw(&t, &p.room_id).await;
        assert_eq!(status, 200, "{body}");
        tokens.push(t);
    }
    let filter = enc(&json!({ "room": { "timeline": { "limit": 1000 } } }).to_string());
    let (_, first) = server.get(&format!("/sync?filter={filter}"), &p.bob).await;
    let mut since = next_batch(&first);

    let mut senders = Vec::new();
    for (i, tok) in tokens.into_iter().enumerate() {
        let (server, room) = (server.clone(), p.room_id.clone());
        senders.push(tokio::spawn(async move {
            for n in 0..EACH {
                server
                    .send_text(&tok, &room, &format!("c{i}-{n}"), &format!("{i}:{n}"))
                    .await;
            }
        }));
    }
    let mut seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < SENDERS * EACH && Instant::now() < deadline {
        let url = format!("/sync?filter={filter}&since={since}&timeout=5000");
        let (status, sync) = server.get(&url, &p.bob).await;
        assert_eq!(status, 200, "{sync}");
        assert_ne!(
            sync["rooms"]["join"][&p.room_id]["timeline"]["limited"],
            json!(true),
            "{sync}"
        );
        seen.extend(message_bodies(room_timeline(&sync, &p.room_id)));
        since = next_batch(&sync);
    }
    for s in senders {
        s.await.unwrap();
    }
    assert_eq!(seen.len(), SENDERS * EACH, "every message once: {seen:?}");
    for i in 0..SENDERS {
        let mine: Vec<usize> = seen
            .iter()
            .filter_map(|b| b.split_once(':').filter(|(s, _)| *s == i.to_string()))
            .map(|(_, n)| n.parse().unwrap())
            .collect();
        assert_eq!(mine, (0..EACH).collect::<Vec<_>>(), "sender {i} in order");
    }
}

/// Alice, Bob and Carol in Carol's public room; Alice ignores Bob.
struct Ignoring {
    server: TestServer,
    alice: String,
    bob: String,
    carol: String,
    room: String,
}

async fn alice_ignores_bob() -> Ignoring {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw-alice-1").await;
    let (_, bob, _) = server.register("bob", "pw-bob-1").await;
    let (_, carol, _) = server.register("carol", "pw-carol-1").await;
    let room = server
        .create_room(&carol, &json!({ "preset": "public_chat" }))
        .await;
    for tok in [&alice, &bob] {
        let (status, body) = server.join_raw(tok, &room).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = server
        .put(
            "/user/@alice:localhost/account_data/m.ignored_user_list",
            &alice,
            &json!({ "ignored_users": { "@bob:localhost": {} } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    Ignoring {
        server,
        alice,
        bob,
        carol,
        room,
    }
}

/// `m.ignored_user_list`: what an ignored user sends (but the room's state) and their invites
/// no longer reach the user, through /sync and /messages; the others' messages still do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_users_messages_and_invites_do_not_arrive() {
    let Ignoring {
        server,
        alice,
        bob,
        carol,
        room,
    } = alice_ignores_bob().await;
    server.send_text(&bob, &room, "b1", "from bob").await;
    server.send_text(&carol, &room, "c1", "from carol").await;
    let bob_room = server.create_room(&bob, &json!({})).await;
    let (status, body) = server
        .post(
            &format!("/rooms/{}/invite", enc(&bob_room)),
            &bob,
            &json!({ "user_id": "@alice:localhost" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let (_, sync) = server.get("/sync?timeout=0", &alice).await;
    let text = sync.to_string();
    assert!(!text.contains("from bob"), "{sync}");
    assert!(text.contains("from carol"), "{sync}");
    assert!(sync["rooms"]["invite"].get(&bob_room).is_none(), "{sync}");
    // Bob's membership stays in the room's state.
    let timeline = &sync["rooms"]["join"][&room]["timeline"]["events"];
    let state = &sync["rooms"]["join"][&room]["state"]["events"];
    let all: Vec<&Value> = timeline
        .as_array()
        .into_iter()
        .chain(state.as_array())
        .flatten()
        .collect();
    assert!(
        all.iter().any(|e| e["state_key"] == "@bob:localhost"),
        "{sync}"
    );
    let (_, messages) = server
        .get(
            &format!("/rooms/{}/messages?dir=b&limit=50", enc(&room)),
            &alice,
        )
        .await;
    let bodies = message_bodies(messages["chunk"].as_array().expect("chunk"));
    assert_eq!(bodies, ["from carol"], "{messages}");
}

/// The keys Synapse always sends and clients look for: every joined room's timeline (with
/// `limited`), state, ephemeral and account data, even when empty, and the top-level presence
/// and account data; heroes only for a room without a name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_answers_carry_their_sections_even_when_empty() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw-alice-1").await;
    let (_, bob, _) = server.register("bob", "pw-bob-1").await;
    let named = server
        .create_room(&alice, &json!({ "preset": "public_chat", "name": "Named" }))
        .await;
    let unnamed = server
        .create_room(&alice, &json!({ "preset": "public_chat" }))
        .await;
    for room in [&named, &unnamed] {
        let (status, body) = server.join_raw(&bob, room).await;
        assert_eq!(status, 200, "{body}");
    }
    let (_, first) = server.get("/sync?timeout=0", &alice).await;
    let since = first["next_batch"].as_str().expect("next_batch").to_owned();
    for room in [&named, &unnamed] {
        let r = &first["rooms"]["join"][room.as_str()];
        for key in ["state", "ephemeral", "account_data"] {
            assert!(r[key]["events"].is_array(), "{key}: {r}");
        }
        assert_eq!(r["timeline"]["limited"], json!(false), "{r}");
    }
    assert!(first["presence"]["events"].is_array(), "{first}");
    assert!(first["account_data"]["events"].is_array(), "{first}");
    let heroes = |room: &str| first["rooms"]["join"][room]["summary"]["m.heroes"].clone();
    assert!(
        heroes(&named).as_array().is_none_or(Vec::is_empty),
        "{}",
        heroes(&named)
    );
    assert_eq!(heroes(&unnamed), json!(["@bob:localhost"]));

    // An incremental sync with one message: the room's other sections are there, empty.
    server.send_text(&bob, &named, "t1", "hello").await;
    let (_, next) = server
        .get(&format!("/sync?timeout=0&since={since}"), &alice)
        .await;
    let r = &next["rooms"]["join"][named.as_str()];
    assert_eq!(
        message_bodies(r["timeline"]["events"].as_array().expect("events")),
        ["hello"]
    );
    assert_eq!(r["timeline"]["limited"], json!(false), "{r}");
    assert_eq!(r["state"]["events"], json!([]), "{r}");
    assert!(next["presence"]["events"].is_array(), "{next}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_users_neither_notify_nor_show_receipts() {
    let Ignoring {
        server,
        alice,
        bob,
        carol,
        room,
    } = alice_ignores_bob().await;
    server.send_text(&bob, &room, "b1", "from bob").await;
    let carols = server.send_text(&carol, &room, "c1", "from carol").await;
    for (tok, who) in [(&bob, "bob"), (&carol, "carol")] {
        let (status, body) = server
            .post(
                &format!("/rooms/{}/receipt/m.read/{}", enc(&room), enc(&carols)),
                tok,
                &json!({}),
            )
            .await;
        assert_eq!(status, 200, "{who}: {body}");
    }

    // Events are evaluated for notifications in order: once carol's message counts, bob's
    // would have too.
    let deadline = Instant::now() + Duration::from_secs(10);
    let sync = loop {
        let (status, sync) = server.get("/sync?timeout=0", &alice).await;
        assert_eq!(status, 200, "{sync}");
        let count = &sync["rooms"]["join"][&room]["unread_notifications"]["notification_count"];
        if count.as_u64().unwrap_or(0) >= 1 || Instant::now() > deadline {
            break sync;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let joined = &sync["rooms"]["join"][&room];
    assert_eq!(
        joined["unread_notifications"]["notification_count"], 1,
        "carol's message only: {joined}"
    );
    let receipts = joined["ephemeral"]["events"].to_string();
    assert!(receipts.contains("@carol:localhost"), "{joined}");
    assert!(!receipts.contains("@bob:localhost"), "{joined}");
}
