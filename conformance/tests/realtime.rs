//! The real-time layer over HTTP: typing, receipts and unread counts, delivery receipts, presence,
//! to-device messages, and the filters that apply to them.

use std::time::{Duration, Instant};

use hearth_conformance::{TestServer, Value, assert_matrix_error, enc, json};

/// A user with a token and the sync token after their last sync.
struct Session {
    user: String,
    token: String,
    device: String,
    since: String,
}

async fn session(server: &TestServer, name: &str) -> Session {
    let (user, token, device) = server.register(name, &format!("pw-{name}-1")).await;
    let (status, first) = server.get("/sync?timeout=0", &token).await;
    assert_eq!(status, 200, "{first}");
    Session {
        user,
        token,
        device,
        since: first["next_batch"].as_str().unwrap().to_owned(),
    }
}

/// Syncs (long-polling briefly) until `pick` finds something, moving the session's token on;
/// panics after `limit`.
async fn sync_for<T>(
    server: &TestServer,
    s: &mut Session,
    limit: Duration,
    mut pick: impl FnMut(&Value) -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        let (status, body) = server
            .get(&format!("/sync?since={}&timeout=1000", s.since), &s.token)
            .await;
        assert_eq!(status, 200, "{body}");
        s.since = body["next_batch"].as_str().unwrap().to_owned();
        if let Some(found) = pick(&body) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "not seen through /sync in {limit:?}; last response: {body}"
        );
    }
}

fn ephemeral<'a>(sync: &'a Value, room: &str, kind: &str) -> Option<&'a Value> {
    sync["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["type"] == kind)
}

async fn shared_room(server: &TestServer, a: &Session, b: &Session) -> String {
    let room = server
        .create_room(&a.token, &json!({ "invite": [b.user] }))
        .await;
    let (status, body) = server.join_raw(&b.token, &room).await;
    assert_eq!(status, 200, "{body}");
    room
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_shows_and_expires_by_itself() {
    let server = TestServer::start().await;
    let alice = session(&server, "alice").await;
    let mut bob = session(&server, "bob").await;
    let room = shared_room(&server, &alice, &bob).await;
    let typing = format!("/rooms/{}/typing/{}", enc(&room), enc(&alice.user));

    let (status, body) = server
        .put(
            &typing,
            &alice.token,
            &json!({ "typing": true, "timeout": 1500 }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let users = sync_for(&server, &mut bob, Duration::from_secs(10), |s| {
        ephemeral(s, &room, "m.typing").map(|e| e["content"]["user_ids"].clone())
    })
    .await;
    assert_eq!(users, json!([alice.user]));

    // Nobody stops it: the timeout does, and the change reaches bob by itself.
    let started = Instant::now();
    let users = sync_for(&server, &mut bob, Duration::from_secs(10), |s| {
        ephemeral(s, &room, "m.typing").map(|e| e["content"]["user_ids"].clone())
    })
    .await;
    assert_eq!(users, json!([]));
    assert!(started.elapsed() >= Duration::from_millis(500));

    // Typing for someone else, or in a room one is not in, is refused.
    let other = format!("/rooms/{}/typing/{}", enc(&room), enc(&bob.user));
    let resp = server
        .put(
            &other,
            &alice.token,
            &json!({ "typing": true, "timeout": 1000 }),
        )
        .await;
    assert_matrix_error(&resp, 403, "M_FORBIDDEN");
    let carol = session(&server, "carol").await;
    let carols = format!("/rooms/{}/typing/{}", enc(&room), enc(&carol.user));
    let resp = server
        .put(
            &carols,
            &carol.token,
            &json!({ "typing": true, "timeout": 1000 }),
        )
        .await;
    assert_matrix_error(&resp, 403, "M_FORBIDDEN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_move_unread_counts_and_private_ones_stay_private() {
    let server = TestServer::start().await;
    let mut alice = session(&server, "alice").await;
    let mut bob = session(&server, "bob").await;
    let room = shared_room(&server, &alice, &bob).await;
    let mut last = String::new();
    for i in 0..3 {
        last = server
            .send_text(&alice.token, &room, &format!("t{i}"), &format!("hello {i}"))
            .await;
    }
    // A mention of bob highlights.
    let mention = format!("hey {} look", bob.user);
    let path = format!("/rooms/{}/send/m.room.message/m1", enc(&room));
    let (status, body) = server
        .put(
            &path,
            &alice.token,
            &json!({ "msgtype": "m.text", "body": mention,
                     "m.mentions": { "user_ids": [bob.user] } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let counts = sync_for(&server, &mut bob, Duration::from_secs(10), |s| {
        let c = &s["rooms"]["join"][&room]["unread_notifications"];
        (c["notification_count"] == 4).then(|| c.clone())
    })
    .await;
    assert_eq!(counts["highlight_count"], 1, "{counts}");

    // Bob reads up to the third message, publicly: alice sees it, his count drops to one.
    let receipt = format!("/rooms/{}/receipt/m.read/{}", enc(&room), enc(&last));
    let (status, body) = server.post(&receipt, &bob.token, &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let seen = sync_for(&server, &mut alice, Duration::from_secs(10), |s| {
        ephemeral(s, &room, "m.receipt").map(|e| e["content"].clone())
    })
    .await;
    assert!(seen[&last]["m.read"][&bob.user]["ts"].is_u64(), "{seen}");
    let counts = sync_for(&server, &mut bob, Duration::from_secs(10), |s| {
        let c = &s["rooms"]["join"][&room]["unread_notifications"];
        c.is_object().then(|| c.clone())
    })
    .await;
    assert_eq!(
        counts,
        json!({ "notification_count": 1, "highlight_count": 1 })
    );

    // A private receipt for the newest event clears bob's counts but alice never sees it.
    let (_, latest) = server
        .get(
            &format!("/rooms/{}/messages?dir=b&limit=1", enc(&room)),
            &bob.token,
        )
        .await;
    let newest = latest["chunk"][0]["event_id"].as_str().unwrap().to_owned();
    let private = format!(
        "/rooms/{}/receipt/m.read.private/{}",
        enc(&room),
        enc(&newest)
    );
    let (status, body) = server.post(&private, &bob.token, &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let (own, counts) = sync_for(&server, &mut bob, Duration::from_secs(10), |s| {
        let r = ephemeral(s, &room, "m.receipt")?;
        Some((
            r["content"].clone(),
            s["rooms"]["join"][&room]["unread_notifications"].clone(),
        ))
    })
    .await;
    assert!(
        own[&newest]["m.read.private"][&bob.user].is_object(),
        "{own}"
    );
    assert_eq!(
        counts,
        json!({ "notification_count": 0, "highlight_count": 0 })
    );
    // Alice: a fresh full sync lists bob's public receipt, never the private one.
    let (_, full) = server.get("/sync?timeout=0", &alice.token).await;
    let receipts = ephemeral(&full, &room, "m.receipt").unwrap()["content"].clone();
    assert!(
        receipts[&last]["m.read"][&bob.user].is_object(),
        "{receipts}"
    );
    assert!(
        !receipts.to_string().contains("m.read.private"),
        "{receipts}"
    );

    // A receipt does not move backwards; unknown events and types are refused.
    let (status, _) = server.post(&receipt, &bob.token, &json!({})).await;
    assert_eq!(status, 200);
    let missing = format!("/rooms/{}/receipt/m.read/{}", enc(&room), enc("$nope"));
    assert_matrix_error(
        &server.post(&missing, &bob.token, &json!({})).await,
        404,
        "M_NOT_FOUND",
    );
    let odd = format!("/rooms/{}/receipt/m.bogus/{}", enc(&room), enc(&last));
    let (status, body) = server.post(&odd, &bob.token, &json!({})).await;
    assert_eq!(status, 400, "{body}");

    // The fully read marker is room account data.
    let markers = format!("/rooms/{}/read_markers", enc(&room));
    let (status, body) = server
        .post(&markers, &bob.token, &json!({ "m.fully_read": newest }))
        .await;
    assert_eq!(status, 200, "{body}");
    let data = format!(
        "/user/{}/rooms/{}/account_data/m.fully_read",
        enc(&bob.user),
        enc(&room)
    );
    let (_, body) = server.get(&data, &bob.token).await;
    assert_eq!(body, json!({ "event_id": newest }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threaded_receipts_give_per_thread_counts() {
    let server = TestServer::start().await;
    let alice = session(&server, "alice").await;
    let mut bob = session(&server, "bob").await;
    let room = shared_room(&server, &alice, &bob).await;
    let root = server.send_text(&alice.token, &room, "r", "root").await;
    let mut in_thread = String::new();
    for i in 0..2 {
        let path = format!("/rooms/{}/send/m.room.message/th{i}", enc(&room));
        let (status, body) = server
            .put(
                &path,
                &alice.token,
                &json!({ "msgtype": "m.text", "body": format!("in thread {i}"),
                         "m.relates_to": { "rel_type": "m.thread", "event_id": root } }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        in_thread = body["event_id"].as_str().unwrap().to_owned();
    }
    let filter = enc(
        &json!({ "room": { "timeline": { "unread_thread_notifications": true } } }).to_string(),
    );
    let counts = |s: &Value| {
        (
            s["rooms"]["join"][&room]["unread_notifications"]["notification_count"].clone(),
            s["rooms"]["join"][&room]["unread_thread_notifications"][&root]["notification_count"]
                .clone(),
        )
    };
    let (_, full) = server
        .get(&format!("/sync?timeout=0&filter={filter}"), &bob.token)
        .await;
    assert_eq!(counts(&full), (json!(1), json!(2)), "{full}");
    bob.since = full["next_batch"].as_str().unwrap().to_owned();

    // Reading the thread clears the thread only.
    let receipt = format!("/rooms/{}/receipt/m.read/{}", enc(&room), enc(&in_thread));
    let (status, body) = server
        .post(&receipt, &bob.token, &json!({ "thread_id": root }))
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, after) = server
        .get(
            &format!("/sync?since={}&timeout=5000&filter={filter}", bob.since),
            &bob.token,
        )
        .await;
    let c = counts(&after);
    assert_eq!(c.0, json!(1), "{after}");
    assert!(c.1.is_null() || c.1 == json!(0), "{after}");
    let r = ephemeral(&after, &room, "m.receipt").unwrap();
    assert_eq!(
        r["content"][&in_thread]["m.read"][&bob.user]["thread_id"],
        json!(root)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_receipts_tell_the_sender_a_device_got_the_message() {
    let server = TestServer::start().await;
    let mut alice = session(&server, "alice").await;
    let mut bob = session(&server, "bob").await;
    let mut carol = session(&server, "carol").await;
    let room = shared_room(&server, &alice, &bob).await;
    let (status, body) = server
        .post(
            &format!("/rooms/{}/invite", enc(&room)),
            &alice.token,
            &json!({ "user_id": carol.user }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.join_raw(&carol.token, &room).await;
    assert_eq!(status, 200, "{body}");
    let _ = sync_for(&server, &mut alice, Duration::from_secs(10), |s| {
        s["rooms"]["join"][&room].is_object().then_some(())
    })
    .await;
    let event = server
        .send_text(&alice.token, &room, "d1", "did you get this")
        .await;
    // Carol's device gets it too (and acknowledges it with its next sync).
    let _ = sync_for(&server, &mut carol, Duration::from_secs(10), |s| {
        s.to_string().contains(&event).then_some(())
    })
    .await;

    // Bob's device receives it; its next sync acknowledges that response.
    let _ = sync_for(&server, &mut bob, Duration::from_secs(10), |s| {
        s.to_string().contains(&event).then_some(())
    })
    .await;
    let (status, _) = server
        .get(&format!("/sync?since={}&timeout=0", bob.since), &bob.token)
        .await;
    assert_eq!(status, 200);

    let delivered = sync_for(&server, &mut alice, Duration::from_secs(10), |s| {
        ephemeral(s, &room, "m.receipt").and_then(|r| {
            r["content"][&event]["io.hearth.delivered"]
                .as_object()
                .cloned()
        })
    })
    .await;
    assert!(delivered.contains_key(&bob.user), "{delivered:?}");
    // A delivery is for the sender only: neither bob (whose own it is) nor carol (a bystander)
    // gets receipts of deliveries of alice's message.
    let (status, _) = server
        .get(
            &format!("/sync?since={}&timeout=0", carol.since),
            &carol.token,
        )
        .await;
    assert_eq!(status, 200);
    for s in [&bob, &carol] {
        let (_, full) = server.get("/sync?timeout=0", &s.token).await;
        let receipts =
            ephemeral(&full, &room, "m.receipt").map_or(json!({}), |r| r["content"].clone());
        assert!(
            receipts[&event]["io.hearth.delivered"].is_null(),
            "{}: {receipts}",
            s.user
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_goes_online_then_offline_when_the_client_stops() {
    let server = TestServer::builder()
        .env("HEARTH_PRESENCE_UNAVAILABLE_SECS", "1")
        .env("HEARTH_PRESENCE_OFFLINE_SECS", "2")
        .start()
        .await;
    let alice = session(&server, "alice").await;
    let mut bob = session(&server, "bob").await;
    shared_room(&server, &alice, &bob).await;
    let status_of = |s: &Value, user: &str| {
        s["presence"]["events"]
            .as_array()?
            .iter()
            .rev()
            .find(|e| e["sender"] == user)
            .map(|e| e["content"].clone())
    };

    // Alice syncs: she is online, and bob (who shares a room) sees it.
    let (status, _) = server.get("/sync?timeout=0", &alice.token).await;
    assert_eq!(status, 200);
    let path = format!("/presence/{}/status", enc(&alice.user));
    let (status, body) = server.get(&path, &bob.token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["presence"], "online", "{body}");
    assert_eq!(body["currently_active"], true, "{body}");
    assert!(body["last_active_ago"].as_u64().unwrap() < 10_000, "{body}");

    // A status message set explicitly reaches bob.
    let (status, body) = server
        .put(
            &path,
            &alice.token,
            &json!({ "presence": "online", "status_msg": "lunch" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let content = sync_for(&server, &mut bob, Duration::from_secs(10), |s| {
        status_of(s, &alice.user).filter(|c| c["status_msg"] == "lunch")
    })
    .await;
    assert_eq!(content["presence"], "online");

    // Alice's client stops: unavailable, then offline, by themselves.
    let content = sync_for(&server, &mut bob, Duration::from_secs(15), |s| {
        status_of(s, &alice.user).filter(|c| c["presence"] == "offline")
    })
    .await;
    assert_eq!(content["currently_active"], false);
    let (_, body) = server.get(&path, &bob.token).await;
    assert_eq!(body["presence"], "offline", "{body}");

    // Someone who shares no room does not see it.
    let carol = session(&server, "carol").await;
    assert_matrix_error(&server.get(&path, &carol.token).await, 403, "M_FORBIDDEN");
    let (_, full) = server.get("/sync?timeout=0", &carol.token).await;
    assert!(!full.to_string().contains(&alice.user), "{full}");
    // Setting someone else's presence is refused.
    let resp = server
        .put(&path, &bob.token, &json!({ "presence": "online" }))
        .await;
    assert_matrix_error(&resp, 403, "M_FORBIDDEN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_can_be_switched_off() {
    let server = TestServer::builder()
        .env("HEARTH_PRESENCE", "false")
        .start()
        .await;
    let alice = session(&server, "alice").await;
    let bob = session(&server, "bob").await;
    shared_room(&server, &alice, &bob).await;
    let (status, _) = server.get("/sync?timeout=0", &alice.token).await;
    assert_eq!(status, 200);
    let path = format!("/presence/{}/status", enc(&alice.user));
    let (_, body) = server.get(&path, &bob.token).await;
    assert_eq!(body["presence"], "offline", "{body}");
    let (_, full) = server.get("/sync?timeout=0", &bob.token).await;
    assert!(
        full["presence"]["events"]
            .as_array()
            .is_none_or(|e| e.is_empty()),
        "{full}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_device_messages_arrive_once() {
    let server = TestServer::start().await;
    let alice = session(&server, "alice").await;
    let mut bob = session(&server, "bob").await;
    let send = |txn: &str| format!("/sendToDevice/m.test.ping/{txn}");
    let body = json!({ "messages": { &bob.user: { &bob.device: { "n": 1 } } } });
    let (status, resp) = server.put(&send("t1"), &alice.token, &body).await;
    assert_eq!(status, 200, "{resp}");
    // The same transaction again is not a second message.
    let (status, _) = server.put(&send("t1"), &alice.token, &body).await;
    assert_eq!(status, 200);
    let all = json!({ "messages": { &bob.user: { "*": { "n": 2 } } } });
    let (status, _) = server.put(&send("t2"), &alice.token, &all).await;
    assert_eq!(status, 200);

    let before = bob.since.clone();
    let got = sync_for(&server, &mut bob, Duration::from_secs(10), |s| {
        s["to_device"]["events"]
            .as_array()
            .filter(|e| !e.is_empty())
            .cloned()
    })
    .await;
    let ns: Vec<&Value> = got.iter().map(|e| &e["content"]["n"]).collect();
    assert_eq!(ns, vec![&json!(1), &json!(2)], "{got:?}");
    assert_eq!(got[0]["sender"], json!(alice.user));
    assert_eq!(got[0]["type"], "m.test.ping");

    // Not acknowledged yet: a retry with the old token gets them again...
    let (_, retry) = server
        .get(&format!("/sync?since={before}&timeout=0"), &bob.token)
        .await;
    assert_eq!(retry["to_device"]["events"].as_array().unwrap().len(), 2);
    // ...but once the next sync acknowledged them, never again.
    let (_, next) = server
        .get(&format!("/sync?since={}&timeout=0", bob.since), &bob.token)
        .await;
    assert!(
        next["to_device"]["events"]
            .as_array()
            .is_none_or(|e| e.is_empty()),
        "{next}"
    );
    let (_, old) = server
        .get(&format!("/sync?since={before}&timeout=0"), &bob.token)
        .await;
    assert!(
        old["to_device"]["events"]
            .as_array()
            .is_none_or(|e| e.is_empty()),
        "{old}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_apply_to_ephemeral_presence_and_account_data() {
    let server = TestServer::start().await;
    let alice = session(&server, "alice").await;
    let bob = session(&server, "bob").await;
    let room = shared_room(&server, &alice, &bob).await;
    let t = format!("/rooms/{}/typing/{}", enc(&room), enc(&alice.user));
    let (status, _) = server
        .put(
            &t,
            &alice.token,
            &json!({ "typing": true, "timeout": 30000 }),
        )
        .await;
    assert_eq!(status, 200);
    let data = format!("/user/{}/account_data/org.example.a", enc(&bob.user));
    let (status, _) = server.put(&data, &bob.token, &json!({ "a": 1 })).await;
    assert_eq!(status, 200);
    let (_, _) = server.get("/sync?timeout=0", &alice.token).await;

    let (_, unfiltered) = server.get("/sync?timeout=0", &bob.token).await;
    assert!(
        ephemeral(&unfiltered, &room, "m.typing").is_some(),
        "{unfiltered}"
    );
    let types = |sync: &Value| -> Vec<String> {
        sync["account_data"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(types(&unfiltered), ["org.example.a", "m.push_rules"]);
    assert!(
        !unfiltered["presence"]["events"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    let filter = enc(&json!({
        "room": { "ephemeral": { "not_types": ["m.typing"] } },
        "presence": { "types": [] },
        "account_data": { "not_types": ["org.example.*"] },
    })
    .to_string());
    let (_, filtered) = server
        .get(&format!("/sync?timeout=0&filter={filter}"), &bob.token)
        .await;
    assert!(
        ephemeral(&filtered, &room, "m.typing").is_none(),
        "{filtered}"
    );
    assert!(
        filtered["presence"]["events"]
            .as_array()
            .is_none_or(|e| e.is_empty()),
        "{filtered}"
    );
    assert_eq!(types(&filtered), ["m.push_rules"], "{filtered}");
}
