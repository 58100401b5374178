//! Push notifications end to end: pushers, push rules and what reaches a push gateway (a small
//! one the tests run on loopback, which records what it receives).

use std::time::Duration;

use hearth_conformance::push_gateway::{TestPushGateway, url_on};
use hearth_conformance::{
    Method, TestServer, Value, assert_matrix_error, assert_matrix_status, enc, free_port, json,
};

const WAIT: Duration = Duration::from_secs(10);

struct User {
    id: String,
    token: String,
}

async fn user(server: &TestServer, name: &str) -> User {
    let (id, token, _) = server.register(name, &format!("pw-{name}-1")).await;
    User { id, token }
}

async fn set_pusher(server: &TestServer, u: &User, pushkey: &str, data: Value) {
    let (status, body) = server
        .post(
            "/pushers/set",
            &u.token,
            &json!({
                "kind": "http",
                "app_id": "org.hearth.test",
                "pushkey": pushkey,
                "app_display_name": "Hearth tests",
                "device_display_name": "Phone",
                "lang": "en",
                "data": data,
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// A room `a` creates, `b` joins.
async fn room(server: &TestServer, a: &User, b: &User, extra: Value) -> String {
    let mut create = json!({ "invite": [b.id] });
    for (k, v) in extra.as_object().unwrap() {
        create[k] = v.clone();
    }
    let room = server.create_room(&a.token, &create).await;
    let (status, body) = server.join_raw(&b.token, &room).await;
    assert_eq!(status, 200, "{body}");
    room
}

async fn pushers(server: &TestServer, u: &User) -> Vec<Value> {
    let (status, body) = server.get("/pushers", &u.token).await;
    assert_eq!(status, 200, "{body}");
    body["pushers"].as_array().unwrap().clone()
}

async fn wait_until_no_pushers(server: &TestServer, u: &User) {
    let deadline = std::time::Instant::now() + WAIT;
    while !pushers(server, u).await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "the pusher stayed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_offline_user_is_pushed_with_counts() {
    let server = TestServer::start().await;
    let gateway = TestPushGateway::start().await;
    let alice = user(&server, "alice").await;
    let bob = user(&server, "bob").await;
    let dm = room(&server, &alice, &bob, json!({ "is_direct": true })).await;
    // Three members: not one-to-one.
    let carol = user(&server, "carol").await;
    let group = room(
        &server,
        &alice,
        &bob,
        json!({ "name": "Garden club", "invite": [bob.id, carol.id] }),
    )
    .await;
    let (status, _) = server.join_raw(&carol.token, &group).await;
    assert_eq!(status, 200);
    // A new pusher gets what happens from now on, not the invites before it.
    set_pusher(
        &server,
        &bob,
        "bob-phone",
        json!({ "url": gateway.url(), "default_payload": { "aps": { "sound": "x" } } }),
    )
    .await;
    let listed = pushers(&server, &bob).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["pushkey"], "bob-phone");
    assert_eq!(listed[0]["data"]["url"], gateway.url());

    let first = server.send_text(&alice.token, &dm, "p1", "hello bob").await;
    let got = gateway.wait_for(1, WAIT).await;
    let n = &got[0];
    assert_eq!(n["event_id"], first);
    assert_eq!(n["room_id"], dm);
    assert_eq!(n["type"], "m.room.message");
    assert_eq!(n["sender"], alice.id);
    assert_eq!(n["content"]["body"], "hello bob");
    assert_eq!(n["counts"]["unread"], 1);
    assert_eq!(n["prio"], "high", "the one-to-one rule plays a sound");
    let device = &n["devices"][0];
    assert_eq!(device["app_id"], "org.hearth.test");
    assert_eq!(device["pushkey"], "bob-phone");
    assert_eq!(device["tweaks"]["sound"], "default");
    assert!(device["data"].get("url").is_none(), "{device}");
    assert_eq!(device["data"]["default_payload"]["aps"]["sound"], "x");
    assert!(device["pushkey_ts"].as_u64().unwrap() > 1_600_000_000);

    server
        .send_text(&alice.token, &group, "p2", "meeting at six")
        .await;
    let got = gateway.wait_for(2, WAIT).await;
    let n = &got[1];
    assert_eq!(n["room_id"], group);
    assert_eq!(n["room_name"], "Garden club");
    assert_eq!(n["counts"]["unread"], 2, "two rooms have unread messages");
    assert_eq!(n["prio"], "low", "a group message makes no sound");

    // The same counts in Bob's sync, and the list of his notifications.
    let (_, sync) = server.get("/sync?timeout=0", &bob.token).await;
    assert_eq!(
        sync["rooms"]["join"][&dm]["unread_notifications"]["notification_count"],
        1
    );
    let (status, list) = server.get("/notifications", &bob.token).await;
    assert_eq!(status, 200, "{list}");
    // The invites that came before are notifications too.
    let items: Vec<&Value> = list["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["event"]["type"] == "m.room.message")
        .collect();
    assert_eq!(items.len(), 2, "{list}");
    assert_eq!(items[0]["room_id"], group, "newest first");
    assert_eq!(items[1]["event"]["event_id"], first);
    assert_eq!(items[1]["read"], false);

    // Reading the DM marks its notification read.
    let (status, _) = server
        .post(
            &format!("/rooms/{}/receipt/m.read/{}", enc(&dm), enc(&first)),
            &bob.token,
            &json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, list) = server.get("/notifications?limit=1", &bob.token).await;
    assert_eq!(list["notifications"].as_array().unwrap().len(), 1);
    let next = list["next_token"]
        .as_str()
        .expect("a next token")
        .to_owned();
    let (_, rest) = server
        .get(&format!("/notifications?from={next}"), &bob.token)
        .await;
    assert_eq!(rest["notifications"][0]["event"]["event_id"], first);
    assert_eq!(rest["notifications"][0]["read"], true);
    // The phone hears of the read as a count alone (as Synapse sends it), so that its badge
    // drops: one room is left with something unread.
    let got = gateway.wait_for(3, WAIT).await;
    let n = &got[2];
    assert_eq!(n["counts"]["unread"], 1, "{n}");
    assert_eq!(n["id"], "", "{n}");
    assert!(n.get("event_id").is_none() && n["type"].is_null(), "{n}");
    assert_eq!(n["devices"][0]["pushkey"], "bob-phone", "{n}");
    // A read that changes no count pushes nothing.
    let (status, _) = server
        .post(
            &format!("/rooms/{}/receipt/m.read/{}", enc(&dm), enc(&first)),
            &bob.token,
            &json!({}),
        )
        .await;
    assert_eq!(status, 200);

    // An invite notifies its target.
    let invite_room = server
        .create_room(&alice.token, &json!({ "invite": [bob.id] }))
        .await;
    let got = gateway.wait_for(4, WAIT).await;
    assert_eq!(got.len(), 4, "nothing else was pushed: {got:?}");
    let n = &got[3];
    assert_eq!(n["room_id"], invite_room);
    assert_eq!(n["type"], "m.room.member");
    assert_eq!(n["membership"], "invite");
    assert_eq!(n["user_is_target"], true);
}

#[tokio::test]
async fn keywords_and_mentions_highlight() {
    let server = TestServer::start().await;
    let gateway = TestPushGateway::start().await;
    let alice = user(&server, "alice").await;
    let bob = user(&server, "bob").await;
    let carol = user(&server, "carol").await;
    let room_id = room(
        &server,
        &alice,
        &bob,
        json!({ "invite": [bob.id, carol.id] }),
    )
    .await;
    server.join_raw(&carol.token, &room_id).await;
    set_pusher(&server, &bob, "bob-phone", json!({ "url": gateway.url() })).await;

    let (status, body) = server
        .put(
            "/pushrules/global/content/fruit",
            &bob.token,
            &json!({
                "pattern": "pineapple",
                "actions": ["notify", { "set_tweak": "highlight" }],
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // One at a time: a burst in one room would be pushed as one notification.
    server
        .send_text(&alice.token, &room_id, "k1", "plain words")
        .await;
    gateway.wait_for(1, WAIT).await;
    server
        .send_text(&alice.token, &room_id, "k2", "who wants pineapple?")
        .await;
    gateway.wait_for(2, WAIT).await;
    let (status, _) = server
        .put(
            &format!("/rooms/{}/send/m.room.message/k3", enc(&room_id)),
            &alice.token,
            &json!({
                "msgtype": "m.text",
                "body": "bob: look",
                "m.mentions": { "user_ids": [bob.id] },
            }),
        )
        .await;
    assert_eq!(status, 200);
    let got = gateway.wait_for(3, WAIT).await;
    let highlight = |n: &Value| n["devices"][0]["tweaks"]["highlight"] == true;
    assert!(!highlight(&got[0]), "{}", got[0]);
    assert!(highlight(&got[1]), "the keyword: {}", got[1]);
    assert!(highlight(&got[2]), "the mention: {}", got[2]);
    assert_eq!(got[2]["prio"], "high");

    let (_, list) = server
        .get("/notifications?only=highlight", &bob.token)
        .await;
    let bodies: Vec<&str> = list["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["event"]["content"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["bob: look", "who wants pineapple?"]);
    let (_, sync) = server.get("/sync?timeout=0", &bob.token).await;
    let counts = &sync["rooms"]["join"][&room_id]["unread_notifications"];
    assert_eq!(counts["notification_count"], 3, "{counts}");
    assert_eq!(counts["highlight_count"], 2, "{counts}");
}

#[tokio::test]
async fn a_muted_room_pushes_nothing() {
    let server = TestServer::start().await;
    let gateway = TestPushGateway::start().await;
    let alice = user(&server, "alice").await;
    let bob = user(&server, "bob").await;
    let muted = room(&server, &alice, &bob, json!({})).await;
    let other = room(&server, &alice, &bob, json!({})).await;
    set_pusher(&server, &bob, "bob-phone", json!({ "url": gateway.url() })).await;
    // A rule whose id is no room id (Synapse takes any) leaves the others working.
    let (status, body) = server
        .put(
            "/pushrules/global/room/%23spam:example.com",
            &bob.token,
            &json!({ "actions": ["notify"] }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // What Element does to mute a room: an override rule on its id with no actions.
    let (status, body) = server
        .put(
            &format!("/pushrules/global/override/{}", enc(&muted)),
            &bob.token,
            &json!({
                "conditions": [{ "kind": "event_match", "key": "room_id", "pattern": muted }],
                "actions": [],
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    server.send_text(&alice.token, &muted, "m1", "shh").await;
    server.send_text(&alice.token, &other, "m2", "loud").await;
    let got = gateway.wait_for(1, WAIT).await;
    assert_eq!(got[0]["room_id"], other);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gateway.received().len(), 1, "{:?}", gateway.received());
}

#[tokio::test]
async fn encrypted_events_are_pushed_as_event_ids_only() {
    let server = TestServer::start().await;
    let gateway = TestPushGateway::start().await;
    let alice = user(&server, "alice").await;
    let bob = user(&server, "bob").await;
    let plain = room(&server, &alice, &bob, json!({})).await;
    let room_id = room(
        &server,
        &alice,
        &bob,
        json!({ "initial_state": [{
            "type": "m.room.encryption", "state_key": "",
            "content": { "algorithm": "m.megolm.v1.aes-sha2" },
        }] }),
    )
    .await;
    // The pusher asks for full content: the ciphertext still does not go out.
    set_pusher(&server, &bob, "bob-phone", json!({ "url": gateway.url() })).await;
    let (status, sent) = server
        .put(
            &format!("/rooms/{}/send/m.room.encrypted/e1", enc(&room_id)),
            &alice.token,
            &json!({
                "algorithm": "m.megolm.v1.aes-sha2",
                "ciphertext": "AwgAEnAC...",
                "device_id": "ALICEDEV",
                "sender_key": "x8Rz...",
                "session_id": "s1",
            }),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    let got = gateway.wait_for(1, WAIT).await;
    let n = &got[0];
    assert_eq!(n["event_id"], sent["event_id"]);
    assert_eq!(n["room_id"], room_id);
    assert_eq!(n["prio"], "high");
    assert_eq!(n["counts"]["unread"], 1);
    for absent in [
        "content",
        "type",
        "sender",
        "sender_display_name",
        "room_name",
    ] {
        assert!(n.get(absent).is_none(), "{absent} in {n}");
    }

    // A pusher that asks for `event_id_only` gets that for plain messages too.
    set_pusher(
        &server,
        &bob,
        "bob-phone",
        json!({ "url": gateway.url(), "format": "event_id_only" }),
    )
    .await;
    server.send_text(&alice.token, &plain, "e2", "secret").await;
    let got = gateway.wait_for(2, WAIT).await;
    assert_eq!(got[1]["room_id"], plain);
    assert!(got[1].get("content").is_none(), "{}", got[1]);
    assert_eq!(got[1]["devices"][0]["data"]["format"], "event_id_only");
}

#[tokio::test]
async fn a_gateway_that_was_down_gets_the_push_even_across_a_restart() {
    let mut server = TestServer::start().await;
    let port = free_port();
    let alice = user(&server, "alice").await;
    let bob = user(&server, "bob").await;
    let room_id = room(&server, &alice, &bob, json!({})).await;
    set_pusher(&server, &bob, "bob-phone", json!({ "url": url_on(port) })).await;
    server
        .send_text(&alice.token, &room_id, "d1", "are you there")
        .await;
    server
        .send_text(&alice.token, &room_id, "d2", "hello?")
        .await;
    let last = server
        .send_text(&alice.token, &room_id, "d3", "anyone?")
        .await;
    // The first attempts find nobody; then Hearth dies with the push still pending.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill9();
    server.restart().await;
    let gateway = TestPushGateway::start_on(port).await;
    let got = gateway.wait_for(1, Duration::from_secs(20)).await;
    // The backlog of one room is one push, of its newest message, not three.
    assert_eq!(got[0]["event_id"], last);
    assert_eq!(got[0]["content"]["body"], "anyone?");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gateway.received().len(), 1, "pushed once");
}

#[tokio::test]
async fn a_rejected_pushkey_loses_its_pusher() {
    let server = TestServer::start().await;
    let gateway = TestPushGateway::start().await;
    gateway.reject("stale-key");
    let alice = user(&server, "alice").await;
    let bob = user(&server, "bob").await;
    let room_id = room(&server, &alice, &bob, json!({})).await;
    set_pusher(&server, &bob, "stale-key", json!({ "url": gateway.url() })).await;
    server.send_text(&alice.token, &room_id, "r1", "one").await;
    gateway.wait_for(1, WAIT).await;
    wait_until_no_pushers(&server, &bob).await;
    server.send_text(&alice.token, &room_id, "r2", "two").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gateway.received().len(), 1);
}

#[tokio::test]
async fn pushers_follow_their_device_and_their_pushkey() {
    let server = TestServer::start().await;
    let gateway = TestPushGateway::start().await;
    let bob = user(&server, "bob").await;
    let data = json!({ "url": gateway.url() });
    set_pusher(&server, &bob, "bob-phone", data.clone()).await;

    // A pushkey moves to whoever sets it last, unless they append.
    let eve = user(&server, "eve").await;
    set_pusher(&server, &eve, "bob-phone", data.clone()).await;
    assert!(pushers(&server, &bob).await.is_empty());
    let mut append = json!({
        "kind": "http", "app_id": "org.hearth.test", "pushkey": "bob-phone",
        "app_display_name": "Hearth tests", "device_display_name": "Phone",
        "lang": "en", "data": data, "append": true,
    });
    let (status, _) = server.post("/pushers/set", &bob.token, &append).await;
    assert_eq!(status, 200);
    assert_eq!(pushers(&server, &eve).await.len(), 1);
    assert_eq!(pushers(&server, &bob).await.len(), 1);

    // `kind: null` deletes.
    append["kind"] = Value::Null;
    let (status, _) = server.post("/pushers/set", &eve.token, &append).await;
    assert_eq!(status, 200);
    assert!(pushers(&server, &eve).await.is_empty());

    // Logging out the device that set a pusher removes it.
    let (status, _) = server.post("/logout", &bob.token, &json!({})).await;
    assert_eq!(status, 200);
    let (_, token, _) = server.login("bob", "pw-bob-1").await;
    let (status, body) = server.get("/pushers", &token).await;
    assert_eq!(status, 200);
    assert_eq!(body["pushers"], json!([]));

    // Bad pushers get Matrix errors.
    let bad = |data: Value| {
        json!({
            "kind": "http", "app_id": "org.hearth.test", "pushkey": "k",
            "app_display_name": "a", "device_display_name": "d", "lang": "en", "data": data,
        })
    };
    let resp = server
        .post(
            "/pushers/set",
            &token,
            &bad(json!({ "url": "https://push.example.org/elsewhere" })),
        )
        .await;
    assert_matrix_error(&resp, 400, "M_MISSING_PARAM");
    let resp = server.post("/pushers/set", &token, &bad(json!({}))).await;
    assert_eq!(resp.0, 400, "{}", resp.1);
    let mut email = bad(json!({}));
    email["kind"] = json!("email");
    let resp = server.post("/pushers/set", &token, &email).await;
    assert_eq!(resp.0, 400, "{}", resp.1);
}

#[tokio::test]
async fn push_rules_can_be_read_and_changed() {
    let server = TestServer::start().await;
    let bob = user(&server, "bob").await;
    let (status, all) = server.get("/pushrules/", &bob.token).await;
    assert_eq!(status, 200, "{all}");
    let ids = |kind: &str, v: &Value| -> Vec<String> {
        v["global"][kind]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["rule_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let overrides = ids("override", &all);
    assert_eq!(overrides[0], ".m.rule.master");
    for id in [
        ".m.rule.is_user_mention",
        ".m.rule.is_room_mention",
        ".m.rule.suppress_notices",
    ] {
        assert!(overrides.contains(&id.to_owned()), "{id}");
    }
    let underrides = ids("underride", &all);
    for id in [
        ".m.rule.encrypted",
        ".m.rule.room_one_to_one",
        ".m.rule.message",
    ] {
        assert!(underrides.contains(&id.to_owned()), "{id}");
    }
    // Clients read the same rules from their account data.
    let (_, sync) = server.get("/sync?timeout=0", &bob.token).await;
    let from_sync = sync["account_data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.push_rules")
        .expect("m.push_rules in the initial sync")
        .clone();
    assert_eq!(ids("override", &from_sync["content"]), overrides);

    let put = |id: &str, q: &str| format!("/pushrules/global/sender/{}{q}", enc(id));
    let rule = json!({ "actions": ["notify"] });
    for (id, q) in [("@a:x", ""), ("@b:x", ""), ("@c:x", "?before=%40a%3Ax")] {
        let (status, body) = server.put(&put(id, q), &bob.token, &rule).await;
        assert_eq!(status, 200, "{body}");
    }
    let (_, all) = server.get("/pushrules/global/", &bob.token).await;
    assert_eq!(
        ids("sender", &json!({ "global": all })),
        ["@b:x", "@c:x", "@a:x"]
    );

    let path = "/pushrules/global/sender/%40a%3Ax";
    let (status, _) = server
        .put(
            &format!("{path}/enabled"),
            &bob.token,
            &json!({ "enabled": false }),
        )
        .await;
    assert_eq!(status, 200);
    let (_, e) = server.get(&format!("{path}/enabled"), &bob.token).await;
    assert_eq!(e["enabled"], false);
    let (status, _) = server
        .put(
            &format!("{path}/actions"),
            &bob.token,
            &json!({ "actions": ["notify", { "set_tweak": "sound", "value": "ping" }] }),
        )
        .await;
    assert_eq!(status, 200);
    let (_, r) = server.get(path, &bob.token).await;
    assert_eq!(r["actions"][1]["value"], "ping", "{r}");
    assert_eq!(r["enabled"], false);
    let (status, _) = server
        .request(Method::DELETE, path, Some(&bob.token), None)
        .await;
    assert_eq!(status, 200);
    let resp = server.get(path, &bob.token).await;
    assert_matrix_error(&resp, 404, "M_NOT_FOUND");

    // The server's own rules stay, and rule ids of the server's kind cannot be made.
    let resp = server
        .request(
            Method::DELETE,
            "/pushrules/global/override/.m.rule.master",
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(resp.0, 400, "{}", resp.1);
    let resp = server
        .put("/pushrules/global/sender/.mine", &bob.token, &rule)
        .await;
    assert_eq!(resp.0, 400, "{}", resp.1);
    let resp = server
        .put(&put("@d:x", "?before=nonexistent"), &bob.token, &rule)
        .await;
    assert_eq!(resp.0, 400, "{}", resp.1);
    let (status, _) = server
        .put(
            "/pushrules/global/override/.m.rule.master/enabled",
            &bob.token,
            &json!({ "enabled": true }),
        )
        .await;
    assert_eq!(status, 200, "server rules can be switched");
}

#[tokio::test]
async fn a_user_reading_the_room_is_not_pushed() {
    let server = TestServer::builder()
        .env("HEARTH_PUSH_ONLINE_GRACE_SECS", "1.5")
        .start()
        .await;
    let gateway = TestPushGateway::start().await;
    let alice = user(&server, "alice").await;
    let bob = user(&server, "bob").await;
    let room_id = room(&server, &alice, &bob, json!({})).await;
    set_pusher(&server, &bob, "bob-phone", json!({ "url": gateway.url() })).await;
    let (_, first) = server.get("/sync?timeout=0", &bob.token).await;
    let since = first["next_batch"].as_str().unwrap().to_owned();

    // Bob's client is connected and shows the room: it marks the message read at once.
    let poll = {
        let url = format!("/sync?since={since}&timeout=10000");
        let token = bob.token.clone();
        let server = &server;
        async move { server.get(&url, &token).await }
    };
    let send = server.send_text(&alice.token, &room_id, "o1", "you see this live");
    let ((_, woke), event) = tokio::join!(poll, send);
    assert!(woke["rooms"]["join"][&room_id].is_object(), "{woke}");
    let (status, _) = server
        .post(
            &format!("/rooms/{}/receipt/m.read/{}", enc(&room_id), enc(&event)),
            &bob.token,
            &json!({}),
        )
        .await;
    assert_eq!(status, 200);

    // A message he does not read reaches his phone once the grace has passed.
    let unread = server
        .send_text(&alice.token, &room_id, "o2", "and this?")
        .await;
    let got = gateway.wait_for(1, WAIT).await;
    assert_eq!(got[0]["event_id"], unread, "only the unread one: {got:?}");
}

/// The ids of the rules of one kind, in order, from a list of rules.
fn rule_ids(rules: &Value) -> Vec<String> {
    rules
        .as_array()
        .unwrap_or_else(|| panic!("not a list of rules: {rules}"))
        .iter()
        .map(|r| r["rule_id"].as_str().unwrap().to_owned())
        .collect()
}

/// The ids of a user's rules of one kind, from `GET /pushrules/global/{kind}/`.
async fn kind_rule_ids(server: &TestServer, u: &User, kind: &str) -> Vec<String> {
    let (status, list) = server
        .get(&format!("/pushrules/global/{kind}/"), &u.token)
        .await;
    assert_eq!(status, 200, "{list}");
    rule_ids(&list)
}

/// Every way of reading a rule agrees on it: alone, in its kind's list, in the scope, in all
/// rules, and its `enabled` and `actions`.
async fn check_rule(server: &TestServer, u: &User, kind: &str, path_id: &str, id: &str) {
    let (status, rule) = server
        .get(&format!("/pushrules/global/{kind}/{path_id}"), &u.token)
        .await;
    assert_eq!(status, 200, "{rule}");
    assert_eq!(rule["rule_id"], id, "{rule}");
    assert_eq!(rule["default"], false);
    assert_eq!(rule["enabled"], true);
    assert_eq!(rule["actions"], json!(["notify"]));
    let (status, list) = server
        .get(&format!("/pushrules/global/{kind}/"), &u.token)
        .await;
    assert_eq!(status, 200, "{list}");
    assert!(rule_ids(&list).contains(&id.to_owned()), "{list}");
    let (status, scope) = server.get("/pushrules/global/", &u.token).await;
    assert_eq!(status, 200, "{scope}");
    assert!(rule_ids(&scope[kind]).contains(&id.to_owned()), "{scope}");
    for kind in ["override", "content", "room", "sender", "underride"] {
        assert!(scope[kind].is_array(), "every kind is listed: {scope}");
    }
    let (status, all) = server.get("/pushrules/", &u.token).await;
    assert_eq!(status, 200, "{all}");
    assert!(rule_ids(&all["global"][kind]).contains(&id.to_owned()));
    let (status, e) = server
        .get(
            &format!("/pushrules/global/{kind}/{path_id}/enabled"),
            &u.token,
        )
        .await;
    assert_eq!((status, e), (200, json!({ "enabled": true })));
    let (status, a) = server
        .get(
            &format!("/pushrules/global/{kind}/{path_id}/actions"),
            &u.token,
        )
        .await;
    assert_eq!((status, a), (200, json!({ "actions": ["notify"] })));
}

#[tokio::test]
async fn push_rule_ids_are_any_string_and_every_kind_reads_back() {
    let server = TestServer::start().await;
    let bob = user(&server, "bob").await;
    let notice =
        json!([{ "kind": "event_match", "key": "content.msgtype", "pattern": "m.notice" }]);
    // (kind, id as the path carries it, id, body): SyTest's, raw `@` and `:` and UTF-8 included.
    let cases = [
        (
            "room",
            "%23spam:example.com",
            "#spam:example.com",
            json!({}),
        ),
        ("sender", "@bob:example.com", "@bob:example.com", json!({})),
        (
            "content",
            "my_content_rule",
            "my_content_rule",
            json!({ "pattern": "my_pattern" }),
        ),
        ("content", "тест", "тест", json!({ "pattern": "тест" })),
        (
            "override",
            "my_override_rule",
            "my_override_rule",
            json!({ "conditions": notice }),
        ),
        (
            "underride",
            "my_underride_rule",
            "my_underride_rule",
            json!({ "conditions": notice }),
        ),
    ];
    for (kind, path_id, id, mut body) in cases {
        body["actions"] = json!(["notify"]);
        let (status, resp) = server
            .put(
                &format!("/pushrules/global/{kind}/{path_id}"),
                &bob.token,
                &body,
            )
            .await;
        assert_eq!(status, 200, "{kind} {id}: {resp}");
        check_rule(&server, &bob, kind, path_id, id).await;
    }
    // A content rule shows its pattern; a room rule has no conditions of its own to show.
    let (_, rule) = server
        .get("/pushrules/global/content/my_content_rule", &bob.token)
        .await;
    assert_eq!(rule["pattern"], "my_pattern");
    let (_, rule) = server
        .get("/pushrules/global/room/%23spam:example.com", &bob.token)
        .await;
    assert!(rule.get("conditions").is_none(), "{rule}");
    // The same rules reach the client's account data.
    let (_, sync) = server.get("/sync?timeout=0", &bob.token).await;
    let rules = sync["account_data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.push_rules")
        .expect("m.push_rules in the sync")
        .clone();
    assert_eq!(
        rule_ids(&rules["content"]["global"]["room"]),
        ["#spam:example.com"]
    );
}

#[tokio::test]
async fn room_rules_are_placed_disabled_and_deleted() {
    let server = TestServer::start().await;
    let bob = user(&server, "bob").await;
    let rule = json!({ "actions": ["notify"] });
    let put = |id: &str, q: &str| format!("/pushrules/global/room/{}{q}", enc(id));
    for (id, q) in [
        ("#a:example.com", ""),
        ("#b:example.com", ""),
        ("#c:example.com", "?before=%23a%3Aexample.com"),
        ("#d:example.com", "?after=%23b%3Aexample.com"),
    ] {
        let (status, body) = server.put(&put(id, q), &bob.token, &rule).await;
        assert_eq!(status, 200, "{id}: {body}");
    }
    // New rules come first; `before` and `after` place them.
    assert_eq!(
        kind_rule_ids(&server, &bob, "room").await,
        [
            "#b:example.com",
            "#d:example.com",
            "#c:example.com",
            "#a:example.com"
        ]
    );
    // Putting a rule again changes it where it stands.
    let (status, _) = server
        .put(
            &put("#a:example.com", ""),
            &bob.token,
            &json!({ "actions": [] }),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        kind_rule_ids(&server, &bob, "room").await[3],
        "#a:example.com"
    );

    let a = "/pushrules/global/room/%23a:example.com";
    let (status, _) = server
        .put(
            &format!("{a}/enabled"),
            &bob.token,
            &json!({ "enabled": false }),
        )
        .await;
    assert_eq!(status, 200);
    let (_, got) = server.get(a, &bob.token).await;
    assert_eq!(got["enabled"], false, "{got}");
    assert_eq!(got["actions"], json!([]), "{got}");
    // A bare boolean is taken too, as Synapse takes it from older clients.
    let (status, _) = server
        .put(&format!("{a}/enabled"), &bob.token, &json!(true))
        .await;
    assert_eq!(status, 200);
    let (_, got) = server.get(&format!("{a}/enabled"), &bob.token).await;
    assert_eq!(got, json!({ "enabled": true }));

    let (status, _) = server
        .request(Method::DELETE, a, Some(&bob.token), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        kind_rule_ids(&server, &bob, "room").await,
        ["#b:example.com", "#d:example.com", "#c:example.com"]
    );
    assert_matrix_error(&server.get(a, &bob.token).await, 404, "M_NOT_FOUND");
    let gone = server
        .request(Method::DELETE, a, Some(&bob.token), None)
        .await;
    assert_matrix_error(&gone, 404, "M_NOT_FOUND");
    let gone = server
        .put(
            &format!("{a}/enabled"),
            &bob.token,
            &json!({ "enabled": true }),
        )
        .await;
    assert_matrix_error(&gone, 404, "M_NOT_FOUND");
    let gone = server
        .put(
            &format!("{a}/actions"),
            &bob.token,
            &json!({ "actions": [] }),
        )
        .await;
    assert_matrix_error(&gone, 404, "M_NOT_FOUND");
    // `before` and `after` name rules of the same kind that exist.
    let resp = server
        .put(
            &put("#e:example.com", "?after=nonexistent"),
            &bob.token,
            &rule,
        )
        .await;
    assert_matrix_status(&resp, 400);
}

#[tokio::test]
async fn bad_push_rule_paths_and_bodies_are_refused() {
    let server = TestServer::start().await;
    let bob = user(&server, "bob").await;
    let notify = json!({ "actions": ["notify"] });
    // SyTest's list (tests/61push/80torture.pl) and a few more, each a 400 Matrix error.
    let puts = [
        ("/pushrules/", notify.clone(), "M_UNRECOGNIZED"),
        (
            "/pushrules/not_a_scope/room/%23spam:example.com",
            notify.clone(),
            "M_UNRECOGNIZED",
        ),
        ("/pushrules/global", notify.clone(), "M_UNRECOGNIZED"),
        ("/pushrules/global/", notify.clone(), "M_UNRECOGNIZED"),
        ("/pushrules/global/room", notify.clone(), "M_UNRECOGNIZED"),
        ("/pushrules/global/room/", notify.clone(), "M_UNRECOGNIZED"),
        (
            "/pushrules/global/not_a_template/foo",
            notify.clone(),
            "M_UNRECOGNIZED",
        ),
        (
            "/pushrules/global/room/%23fo%5Co:example.com",
            notify.clone(),
            "M_INVALID_PARAM",
        ),
        (
            "/pushrules/global/room/a%2Fb",
            notify.clone(),
            "M_INVALID_PARAM",
        ),
        (
            "/pushrules/global/room/.mine",
            notify.clone(),
            "M_INVALID_PARAM",
        ),
        (
            "/pushrules/global/override/my_id",
            notify.clone(),
            "M_BAD_JSON",
        ),
        (
            "/pushrules/global/underride/my_id",
            notify.clone(),
            "M_BAD_JSON",
        ),
        (
            "/pushrules/global/underride/my_id",
            json!({ "conditions": [{}], "actions": ["notify"] }),
            "M_BAD_JSON",
        ),
        (
            "/pushrules/global/override/my_id",
            json!({ "conditions": "room", "actions": ["notify"] }),
            "M_BAD_JSON",
        ),
        (
            "/pushrules/global/content/my_id",
            notify.clone(),
            "M_BAD_JSON",
        ),
        (
            "/pushrules/global/room/%23my_room:example.com",
            json!({}),
            "M_BAD_JSON",
        ),
        (
            "/pushrules/global/room/%23my_room:example.com",
            json!([]),
            "M_BAD_JSON",
        ),
        (
            "/pushrules/global/room/%23my_room:example.com",
            json!({ "actions": ["not_an_action"] }),
            "M_BAD_JSON",
        ),
        (
            "/pushrules/global/room/%23my_room:example.com",
            json!({ "actions": [{ "not": "a tweak" }] }),
            "M_BAD_JSON",
        ),
        (
            "/pushrules/global/room/%23my_room:example.com",
            json!({ "actions": "notify" }),
            "M_BAD_JSON",
        ),
        (
            "/pushrules/global/override/.m.rule.master/not_an_attr",
            json!({ "enabled": true }),
            "M_UNRECOGNIZED",
        ),
        (
            "/pushrules/global/override/.m.rule.master/enabled",
            json!({ "enabled": "not a boolean" }),
            "M_BAD_JSON",
        ),
        (
            "/pushrules/global/override/.m.rule.master/actions",
            json!({ "actions": ["not_an_action"] }),
            "M_BAD_JSON",
        ),
        (
            "/pushrules/global/override/.m.rule.master/actions",
            json!(["notify"]),
            "M_BAD_JSON",
        ),
    ];
    for (path, body, errcode) in puts {
        let resp = server.put(path, &bob.token, &body).await;
        assert!(resp.0 == 400, "PUT {path} {body}: {resp:?}");
        assert_matrix_error(&resp, 400, errcode);
    }
    let not_json = server
        .request_raw(
            Method::PUT,
            "/pushrules/global/room/%23r:example.com",
            Some(&bob.token),
            "application/json",
            b"{".to_vec(),
        )
        .await;
    assert_matrix_error(&not_json, 400, "M_NOT_JSON");

    // Reads: a scope or kind wants its trailing slash; unknown scopes, kinds and attributes
    // are 400, an unknown rule 404, and `pushrules` with no slash is no endpoint at all.
    for path in [
        "/pushrules/global",
        "/pushrules/global/room",
        "/pushrules/not_a_scope/",
        "/pushrules/global/not_a_template/",
        "/pushrules/global/override/.m.rule.master/not_an_attr",
        "/pushrules/global/override/.m.rule.master/enabled/more",
    ] {
        let resp = server.get(path, &bob.token).await;
        assert_matrix_error(&resp, 400, "M_UNRECOGNIZED");
    }
    let resp = server.get("/pushrules", &bob.token).await;
    assert_matrix_error(&resp, 404, "M_UNRECOGNIZED");
    let resp = server
        .get("/pushrules/global/override/not_a_rule_id", &bob.token)
        .await;
    assert_matrix_error(&resp, 404, "M_NOT_FOUND");
    for path in [
        "/pushrules/global/room/",
        "/pushrules/global/room/x/enabled",
    ] {
        let resp = server
            .request(Method::DELETE, path, Some(&bob.token), None)
            .await;
        assert_matrix_error(&resp, 400, "M_UNRECOGNIZED");
    }
    let resp = server
        .request(
            Method::POST,
            "/pushrules/global/room/x",
            Some(&bob.token),
            None,
        )
        .await;
    assert_matrix_error(&resp, 405, "M_UNRECOGNIZED");
    // Nobody gets past the access token with a bad path.
    let resp = server.get_anon("/pushrules/not_a_scope/").await;
    assert_matrix_error(&resp, 401, "M_MISSING_TOKEN");
    // Attributes of a rule beyond `enabled` and `actions` read as Synapse shows them.
    let (status, id) = server
        .get(
            "/pushrules/global/override/.m.rule.master/rule_id",
            &bob.token,
        )
        .await;
    assert_eq!((status, id), (200, json!({ "rule_id": ".m.rule.master" })));
}

#[tokio::test]
async fn room_push_rules_follow_an_upgrade_for_every_local_member() {
    let server = TestServer::start().await;
    let alice = user(&server, "alice").await;
    let bob = user(&server, "bob").await;
    let carol = user(&server, "carol").await;
    let old = room(&server, &alice, &bob, json!({ "room_version": "10" })).await;
    let other = server.create_room(&carol.token, &json!({})).await;
    let put = |u: &User, path: String, body: Value| {
        let token = u.token.clone();
        let server = &server;
        async move {
            let (status, resp) = server.put(&path, &token, &body).await;
            assert_eq!(status, 200, "{path}: {resp}");
        }
    };
    // Bob: a room rule and Element's mute (an override on the room id), and a rule he switched
    // off; Alice (who upgrades) a room rule; Carol, not in the room, a rule for it anyway.
    put(
        &bob,
        format!("/pushrules/global/room/{}", enc(&old)),
        json!({ "actions": ["notify"] }),
    )
    .await;
    let mute = json!({
        "conditions": [{ "kind": "event_match", "key": "room_id", "pattern": old }],
        "actions": [],
    });
    put(
        &bob,
        format!("/pushrules/global/override/{}", enc(&old)),
        mute,
    )
    .await;
    let off = json!({
        "conditions": [{ "kind": "event_match", "key": "room_id", "pattern": old }],
        "actions": ["notify"],
    });
    put(&bob, "/pushrules/global/underride/switched_off".into(), off).await;
    put(
        &bob,
        "/pushrules/global/underride/switched_off/enabled".into(),
        json!({ "enabled": false }),
    )
    .await;
    put(
        &bob,
        format!("/pushrules/global/room/{}", enc(&other)),
        json!({ "actions": [] }),
    )
    .await;
    put(
        &alice,
        format!("/pushrules/global/room/{}", enc(&old)),
        json!({ "actions": [] }),
    )
    .await;
    put(
        &carol,
        format!("/pushrules/global/room/{}", enc(&old)),
        json!({ "actions": [] }),
    )
    .await;

    let (status, up) = server
        .post(
            &format!("/rooms/{}/upgrade", enc(&old)),
            &alice.token,
            &json!({ "new_version": "11" }),
        )
        .await;
    assert_eq!(status, 200, "{up}");
    let new = up["replacement_room"].as_str().unwrap().to_owned();

    let (_, rules) = server.get("/pushrules/global/", &bob.token).await;
    assert_eq!(
        rule_ids(&rules["room"]),
        [new.as_str(), &other, &old],
        "{rules}"
    );
    let (_, copied) = server
        .get(&format!("/pushrules/global/room/{}", enc(&new)), &bob.token)
        .await;
    assert_eq!(copied["actions"], json!(["notify"]));
    assert_eq!(copied["enabled"], true);
    let override_ids = rule_ids(&rules["override"]);
    assert_eq!(
        override_ids[..3],
        [".m.rule.master", new.as_str(), &old],
        "{rules}"
    );
    let (_, muted) = server
        .get(
            &format!("/pushrules/global/override/{}", enc(&new)),
            &bob.token,
        )
        .await;
    assert_eq!(
        muted["conditions"],
        json!([{ "kind": "event_match", "key": "room_id", "pattern": new }])
    );
    assert_eq!(muted["actions"], json!([]));
    assert_eq!(
        rule_ids(&rules["underride"])[0],
        "switched_off",
        "a disabled rule stays behind"
    );
    assert!(!rule_ids(&rules["underride"]).contains(&new));

    let (_, rules) = server.get("/pushrules/global/", &alice.token).await;
    assert_eq!(rule_ids(&rules["room"]), [new.as_str(), &old]);
    let (_, rules) = server.get("/pushrules/global/", &carol.token).await;
    assert_eq!(
        rule_ids(&rules["room"]),
        [old.as_str()],
        "Carol was not in the room"
    );
}

#[tokio::test]
async fn making_push_rules_is_rate_limited_switching_them_is_not() {
    let server = TestServer::builder()
        .env("HEARTH_RATE_LIMIT", "true")
        .env("HEARTH_RATE_LIMIT_PER_SECOND", "1")
        .env("HEARTH_RATE_LIMIT_BURST", "3")
        .start()
        .await;
    let bob = user(&server, "bob").await;
    let rule = json!({ "actions": ["notify"] });
    let mut statuses = Vec::new();
    for i in 0..10 {
        let path = format!("/pushrules/global/room/%23r{i}:example.com");
        let resp = server.put(&path, &bob.token, &rule).await;
        if resp.0 != 200 {
            assert_matrix_error(&resp, 429, "M_LIMIT_EXCEEDED");
        }
        statuses.push(resp.0);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    // The spec limits making rules only: switching one and changing its actions are not.
    for _ in 0..10 {
        let (status, body) = server
            .put(
                "/pushrules/global/room/%23r0:example.com/enabled",
                &bob.token,
                &json!({ "enabled": false }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
}
