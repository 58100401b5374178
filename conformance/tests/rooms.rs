//! Rooms, membership, messages and permissions, driven by matrix-sdk (with
//! raw HTTP where a status code must be checked exactly).

mod common;

use std::time::Duration;

use common::{event_json, sdk_register, sync, sync_until, token};
use hearth_conformance::{
    TestServer, assert_matrix_error, assert_matrix_status, enc, json, message_bodies,
};
use matrix_sdk::{
    RoomState,
    ruma::{
        Int, OwnedEventId, OwnedRoomId,
        api::client::room::create_room::v3::{Request as CreateRoomRequest, RoomPreset},
        events::room::message::RoomMessageEventContent,
    },
};

const PW: &str = "correct horse battery staple";

async fn create_room(client: &matrix_sdk::Client, preset: RoomPreset) -> OwnedRoomId {
    let mut request = CreateRoomRequest::new();
    request.preset = Some(preset);
    request.name = Some("conformance".to_owned());
    let room = client.create_room(request).await.expect("createRoom");
    room.room_id().to_owned()
}

/// alice invites bob into a private room, bob sees the invite via sync and
/// joins, then messages flow both ways and arrive through sync in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_room_invite_join_and_converse() {
    let server = TestServer::start().await;
    let alice = sdk_register(&server, "alice", PW).await;
    let bob = sdk_register(&server, "bob", PW).await;
    let bob_id = bob.user_id().unwrap().to_owned();
    let alice_id = alice.user_id().unwrap().to_owned();

    let room_id = create_room(&alice, RoomPreset::PrivateChat).await;
    sync(&alice).await;
    let alice_room = alice.get_room(&room_id).expect("alice knows the room");
    alice_room
        .invite_user_by_id(&bob_id)
        .await
        .expect("invite bob");

    // bob sees the invite through sync, with stripped state naming the
    // inviter.
    let mut invite_state = Vec::new();
    sync_until(&bob, Duration::from_secs(10), |r| {
        if let Some(invited) = r.rooms.invited.get(&room_id) {
            invite_state = invited
                .invite_state
                .events
                .iter()
                .map(|e| serde_json::from_str(e.json().get()).unwrap())
                .collect();
            true
        } else {
            false
        }
    })
    .await;
    let own_member = invite_state
        .iter()
        .find(|e: &&serde_json::Value| {
            e["type"] == "m.room.member" && e["state_key"] == bob_id.as_str()
        })
        .unwrap_or_else(|| panic!("invite_state lacks bob's member event: {invite_state:?}"));
    assert_eq!(own_member["content"]["membership"], "invite");
    assert_eq!(own_member["sender"], alice_id.as_str());
    assert_eq!(
        bob.get_room(&room_id).map(|r| r.state()),
        Some(RoomState::Invited)
    );

    let bob_room = bob.join_room_by_id(&room_id).await.expect("bob joins");
    assert_eq!(bob_room.state(), RoomState::Joined);
    sync_until(&bob, Duration::from_secs(10), |r| {
        r.rooms.joined.contains_key(&room_id)
    })
    .await;

    // Alternate senders; remember the event ids the server gave us.
    let script = [
        ("alice", "hello bob"),
        ("bob", "hi alice"),
        ("alice", "how are you?"),
        ("bob", "fine, thanks"),
        ("bob", "and you?"),
        ("alice", "great"),
    ];
    sync(&alice).await;
    let mut sent_ids: Vec<OwnedEventId> = Vec::new();
    for (who, text) in script {
        let room = if who == "alice" {
            &alice_room
        } else {
            &bob_room
        };
        let resp = room
            .send(RoomMessageEventContent::text_plain(text))
            .await
            .unwrap_or_else(|e| panic!("{who} sending {text:?}: {e:?}"));
        sent_ids.push(resp.response.event_id);
    }
    let expected: Vec<String> = script.iter().map(|(_, t)| t.to_string()).collect();

    for (name, client) in [("alice", &alice), ("bob", &bob)] {
        let mut seen = Vec::new();
        let mut seen_ids = Vec::new();
        sync_until(client, Duration::from_secs(10), |r| {
            if let Some(joined) = r.rooms.joined.get(&room_id) {
                for ev in &joined.timeline.events {
                    let json = event_json(ev);
                    if json["type"] == "m.room.message" {
                        seen.push(json["content"]["body"].as_str().unwrap().to_owned());
                        seen_ids.push(ev.event_id().unwrap());
                    }
                }
            }
            seen.len() >= expected.len()
        })
        .await;
        assert_eq!(seen, expected, "{name} saw messages out of order");
        assert_eq!(seen_ids, sent_ids, "{name} saw different event ids");
    }

    // /messages agrees with sync.
    let (status, msgs) = server
        .get(
            &format!("/rooms/{}/messages?dir=b&limit=50", enc(room_id.as_str())),
            &token(&bob),
        )
        .await;
    assert_eq!(status, 200, "{msgs}");
    let mut back = message_bodies(msgs["chunk"].as_array().unwrap());
    back.reverse();
    assert_eq!(back, expected);

    // Both are joined members.
    let (status, members) = server
        .get(
            &format!("/rooms/{}/joined_members", enc(room_id.as_str())),
            &token(&alice),
        )
        .await;
    assert_eq!(status, 200, "{members}");
    let joined = members["joined"].as_object().expect("joined map");
    assert!(joined.contains_key(alice_id.as_str()) && joined.contains_key(bob_id.as_str()));
    assert_eq!(joined.len(), 2);

    let (status, rooms) = server.get("/joined_rooms", &token(&bob)).await;
    assert_eq!(status, 200);
    assert_eq!(rooms["joined_rooms"], json!([room_id.as_str()]));
}

/// A user who is not invited cannot join a private room nor read it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsider_cannot_join_or_read_private_room() {
    let server = TestServer::start().await;
    let alice = sdk_register(&server, "alice", PW).await;
    let carol = sdk_register(&server, "carol", PW).await;
    let room_id = create_room(&alice, RoomPreset::PrivateChat).await;
    sync(&alice).await;
    alice
        .get_room(&room_id)
        .unwrap()
        .send(RoomMessageEventContent::text_plain("secret"))
        .await
        .expect("send");

    // Through the SDK: the join fails with M_FORBIDDEN.
    let err = carol
        .join_room_by_id(&room_id)
        .await
        .expect_err("carol must not join a private room");
    assert_eq!(
        err.client_api_error_kind(),
        Some(&matrix_sdk::ruma::api::error::ErrorKind::Forbidden),
        "{err:?}"
    );

    let carol_token = token(&carol);
    let room = enc(room_id.as_str());
    assert_matrix_error(
        &server.join_raw(&carol_token, room_id.as_str()).await,
        403,
        "M_FORBIDDEN",
    );
    assert_matrix_error(
        &server
            .post(&format!("/rooms/{room}/join"), &carol_token, &json!({}))
            .await,
        403,
        "M_FORBIDDEN",
    );
    assert_matrix_error(
        &server
            .get(&format!("/rooms/{room}/messages?dir=b"), &carol_token)
            .await,
        403,
        "M_FORBIDDEN",
    );
    assert_matrix_error(
        &server
            .get(&format!("/rooms/{room}/state"), &carol_token)
            .await,
        403,
        "M_FORBIDDEN",
    );
    assert_matrix_error(
        &server
            .send_text_raw(&carol_token, room_id.as_str(), "t1", "let me in")
            .await,
        403,
        "M_FORBIDDEN",
    );

    // carol's sync does not contain the room.
    let response = sync(&carol).await;
    assert!(!response.rooms.joined.contains_key(&room_id));
    assert!(!response.rooms.invited.contains_key(&room_id));
    let (_, rooms) = server.get("/joined_rooms", &carol_token).await;
    assert_eq!(rooms["joined_rooms"], json!([]));
}

/// Repeating PUT /send with the same transaction id is idempotent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_with_same_txn_id_is_idempotent() {
    let server = TestServer::start().await;
    let alice = sdk_register(&server, "alice", PW).await;
    let room_id = create_room(&alice, RoomPreset::PrivateChat).await;
    let tok = token(&alice);
    let rid = room_id.as_str();

    let first = server.send_text(&tok, rid, "txn-1", "once").await;
    let second = server.send_text(&tok, rid, "txn-1", "once").await;
    assert_eq!(first, second, "same txnId must give the same event_id");
    let other = server.send_text(&tok, rid, "txn-2", "twice").await;
    assert_ne!(first, other, "different txnId must create a new event");

    // Transaction ids are scoped to the device/access token: another
    // device of the same user reusing "txn-1" sends a new event.
    let (_, tok2, _) = server.login("alice", PW).await;
    let from_other_device = server.send_text(&tok2, rid, "txn-1", "once").await;
    assert_ne!(first, from_other_device);

    let (status, msgs) = server
        .get(
            &format!("/rooms/{}/messages?dir=b&limit=100", enc(rid)),
            &tok,
        )
        .await;
    assert_eq!(status, 200, "{msgs}");
    let chunk = msgs["chunk"].as_array().unwrap();
    let mut got = message_bodies(chunk);
    got.reverse();
    assert_eq!(got, vec!["once", "twice", "once"]);
    let ids: Vec<&str> = chunk
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![from_other_device.as_str(), &other, &first]);

    // The sender's own sync shows the event once, carrying its transaction
    // id for the sending device only.
    let filter = enc(r#"{"room":{"timeline":{"limit":50}}}"#);
    for (tok, expect_txn) in [(&tok, Some("txn-1")), (&tok2, None)] {
        let (status, body) = server.get(&format!("/sync?filter={filter}"), tok).await;
        assert_eq!(status, 200, "{body}");
        let timeline = body["rooms"]["join"][rid]["timeline"]["events"]
            .as_array()
            .unwrap_or_else(|| panic!("room missing from sync: {body}"));
        let copies: Vec<_> = timeline
            .iter()
            .filter(|e| e["event_id"] == first.as_str())
            .collect();
        assert_eq!(
            copies.len(),
            1,
            "event must appear exactly once: {timeline:?}"
        );
        assert_eq!(
            copies[0]["unsigned"]["transaction_id"].as_str(),
            expect_txn,
            "{}",
            copies[0]
        );
        assert_eq!(message_bodies(timeline), vec!["once", "twice", "once"]);
    }
    let (status, event) = server
        .get(&format!("/rooms/{}/event/{}", enc(rid), enc(&first)), &tok)
        .await;
    assert_eq!(status, 200, "{event}");
    assert_eq!(event["content"]["body"], "once");
}

async fn two_members(
    server: &TestServer,
    preset: RoomPreset,
) -> (matrix_sdk::Client, matrix_sdk::Client, OwnedRoomId) {
    let alice = sdk_register(server, "alice", PW).await;
    let bob = sdk_register(server, "bob", PW).await;
    let room_id = create_room(&alice, preset.clone()).await;
    sync(&alice).await;
    if matches!(preset, RoomPreset::PrivateChat) {
        alice
            .get_room(&room_id)
            .unwrap()
            .invite_user_by_id(bob.user_id().unwrap())
            .await
            .expect("invite");
    }
    bob.join_room_by_id(&room_id).await.expect("bob joins");
    sync(&alice).await;
    (alice, bob, room_id)
}

/// After a kick, the kicked user can no longer send, cannot rejoin an
/// invite-only room, and sees the room as left in sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kicked_member_cannot_send() {
    let server = TestServer::start().await;
    let (alice, bob, room_id) = two_members(&server, RoomPreset::PrivateChat).await;
    let rid = room_id.as_str();
    let bob_tok = token(&bob);
    server.send_text(&bob_tok, rid, "b1", "before kick").await;

    alice
        .get_room(&room_id)
        .unwrap()
        .kick_user(bob.user_id().unwrap(), Some("bye"))
        .await
        .expect("kick");

    assert_matrix_error(
        &server
            .send_text_raw(&bob_tok, rid, "b2", "after kick")
            .await,
        403,
        "M_FORBIDDEN",
    );
    // Invite-only: no rejoin without a new invite.
    assert_matrix_error(&server.join_raw(&bob_tok, rid).await, 403, "M_FORBIDDEN");

    let (status, member) = server
        .get(
            &format!(
                "/rooms/{}/state/m.room.member/{}",
                enc(rid),
                enc(bob.user_id().unwrap().as_str())
            ),
            &token(&alice),
        )
        .await;
    assert_eq!(status, 200, "{member}");
    assert_eq!(member["membership"], "leave");
    assert_eq!(member["reason"], "bye");

    sync_until(&bob, Duration::from_secs(10), |r| {
        r.rooms.left.contains_key(&room_id)
    })
    .await;

    // The message refused after the kick is not in the room.
    let (_, msgs) = server
        .get(
            &format!("/rooms/{}/messages?dir=b&limit=50", enc(rid)),
            &token(&alice),
        )
        .await;
    assert_eq!(
        message_bodies(msgs["chunk"].as_array().unwrap()),
        vec!["before kick"]
    );
}

/// A banned user cannot send, cannot rejoin even a public room, and can
/// join again once unbanned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn banned_member_cannot_send_or_rejoin() {
    let server = TestServer::start().await;
    let (alice, bob, room_id) = two_members(&server, RoomPreset::PublicChat).await;
    let rid = room_id.as_str();
    let bob_tok = token(&bob);
    let bob_id = bob.user_id().unwrap().to_owned();
    let alice_room = alice.get_room(&room_id).unwrap();

    alice_room
        .ban_user(&bob_id, Some("spam"))
        .await
        .expect("ban");
    assert_matrix_error(
        &server.send_text_raw(&bob_tok, rid, "b1", "after ban").await,
        403,
        "M_FORBIDDEN",
    );
    // Rejoining while banned is refused. The spec requires a 403 but leaves
    // the errcode open (Synapse answers M_BAD_STATE).
    assert_matrix_status(&server.join_raw(&bob_tok, rid).await, 403);
    // Inviting a banned user is refused as well.
    assert_matrix_status(
        &server
            .post(
                &format!("/rooms/{}/invite", enc(rid)),
                &token(&alice),
                &json!({ "user_id": bob_id.as_str() }),
            )
            .await,
        403,
    );
    let (status, member) = server
        .get(
            &format!(
                "/rooms/{}/state/m.room.member/{}",
                enc(rid),
                enc(bob_id.as_str())
            ),
            &token(&alice),
        )
        .await;
    assert_eq!(status, 200, "{member}");
    assert_eq!(member["membership"], "ban");

    alice_room.unban_user(&bob_id, None).await.expect("unban");
    let (status, body) = server.join_raw(&bob_tok, rid).await;
    assert_eq!(status, 200, "join after unban: {body}");
    server
        .send_text(&bob_tok, rid, "b2", "back after unban")
        .await;
}

/// State changes are gated by power levels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_levels_gate_room_name() {
    let server = TestServer::start().await;
    let (alice, bob, room_id) = two_members(&server, RoomPreset::PrivateChat).await;
    let rid = room_id.as_str();
    let bob_tok = token(&bob);
    let bob_id = bob.user_id().unwrap().to_owned();
    let name_path = format!("/rooms/{}/state/m.room.name", enc(rid));

    let (status, pl) = server
        .get(
            &format!("/rooms/{}/state/m.room.power_levels", enc(rid)),
            &bob_tok,
        )
        .await;
    assert_eq!(status, 200, "{pl}");
    assert!(pl["users"].get(bob_id.as_str()).is_none());

    assert_matrix_error(
        &server
            .put(&name_path, &bob_tok, &json!({ "name": "bob's room" }))
            .await,
        403,
        "M_FORBIDDEN",
    );

    let alice_room = alice.get_room(&room_id).unwrap();
    alice_room
        .update_power_levels(vec![(&bob_id, Int::from(50))])
        .await
        .expect("raise bob to 50");
    let (_, pl) = server
        .get(
            &format!("/rooms/{}/state/m.room.power_levels", enc(rid)),
            &bob_tok,
        )
        .await;
    assert_eq!(pl["users"][bob_id.as_str()], 50, "{pl}");

    let (status, body) = server
        .put(&name_path, &bob_tok, &json!({ "name": "bob's room" }))
        .await;
    assert_eq!(status, 200, "bob at level 50 sets the name: {body}");
    assert!(body["event_id"].is_string());
    let (status, name) = server.get(&name_path, &token(&alice)).await;
    assert_eq!(status, 200);
    assert_eq!(name["name"], "bob's room");

    // bob (50) still cannot change power levels (needs 100 by default).
    let mut pl_body = pl.clone();
    pl_body["users"][bob_id.as_str()] = json!(100);
    assert_matrix_error(
        &server
            .put(
                &format!("/rooms/{}/state/m.room.power_levels", enc(rid)),
                &bob_tok,
                &pl_body,
            )
            .await,
        403,
        "M_FORBIDDEN",
    );
}

/// Setting a display name updates the profile and the member event in the
/// rooms the user is in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn displayname_shows_in_member_event() {
    let server = TestServer::start().await;
    let (alice, bob, room_id) = two_members(&server, RoomPreset::PrivateChat).await;
    let alice_id = alice.user_id().unwrap().to_owned();
    sync(&bob).await;

    alice
        .account()
        .set_display_name(Some("Alice Liddell"))
        .await
        .expect("set displayname");
    assert_eq!(
        alice.account().get_display_name().await.unwrap().as_deref(),
        Some("Alice Liddell")
    );
    let (status, profile) = server
        .get(
            &format!("/profile/{}/displayname", enc(alice_id.as_str())),
            &token(&bob),
        )
        .await;
    assert_eq!(status, 200, "{profile}");
    assert_eq!(profile["displayname"], "Alice Liddell");

    // The spec requires a new m.room.member event in every joined room but
    // not that it be sent before the profile request returns: poll briefly.
    let member_path = format!(
        "/rooms/{}/state/m.room.member/{}",
        enc(room_id.as_str()),
        enc(alice_id.as_str())
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let member = loop {
        let (status, member) = server.get(&member_path, &token(&bob)).await;
        assert_eq!(status, 200, "{member}");
        if member["displayname"] == "Alice Liddell" || std::time::Instant::now() > deadline {
            break member;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(member["displayname"], "Alice Liddell", "{member}");
    assert_eq!(member["membership"], "join");

    let (status, members) = server
        .get(
            &format!("/rooms/{}/members", enc(room_id.as_str())),
            &token(&bob),
        )
        .await;
    assert_eq!(status, 200, "{members}");
    let alice_member = members["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["state_key"] == alice_id.as_str())
        .expect("alice in /members");
    assert_eq!(alice_member["content"]["displayname"], "Alice Liddell");

    // bob receives the member update through sync.
    let mut seen = false;
    sync_until(&bob, Duration::from_secs(10), |r| {
        if let Some(joined) = r.rooms.joined.get(&room_id) {
            seen |= joined.timeline.events.iter().map(event_json).any(|e| {
                e["type"] == "m.room.member"
                    && e["state_key"] == alice_id.as_str()
                    && e["content"]["displayname"] == "Alice Liddell"
            });
        }
        seen
    })
    .await;
}

/// Every stable room version: created, listed by `/capabilities`, invited to, joined,
/// messaged in and redacted in, with event ids of the version's format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_supported_room_version_works_end_to_end() {
    let server = TestServer::start().await;
    let (_, tok, _) = server.register("alice", "pw-alice-1").await;
    let (_, bob_tok, _) = server.register("bob", "pw-bob-1").await;
    let versions = [
        "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12",
    ];
    let (_, caps) = server.get("/capabilities", &tok).await;
    let available = &caps["capabilities"]["m.room_versions"]["available"];
    for version in versions {
        assert_eq!(available[version], "stable", "{caps}");
    }
    for version in versions {
        let room = server
            .create_room(
                &tok,
                &json!({ "room_version": version, "invite": ["@bob:localhost"] }),
            )
            .await;
        if version == "12" {
            assert!(
                !room.contains(':'),
                "v12 room ids carry no server name: {room}"
            );
        }
        let (_, create) = server
            .get(&format!("/rooms/{}/state/m.room.create/", enc(&room)), &tok)
            .await;
        assert_eq!(create["room_version"], version, "{create}");
        let (status, body) = server
            .post(&format!("/rooms/{}/join", enc(&room)), &bob_tok, &json!({}))
            .await;
        assert_eq!(status, 200, "v{version}: {body}");
        let hello = server
            .send_text(&bob_tok, &room, &format!("v{version}"), "hello")
            .await;
        // Versions 1 and 2: ids the server makes up, with its name.
        if version == "1" || version == "2" {
            assert!(
                hello.starts_with('$') && hello.ends_with(":localhost"),
                "v{version}: {hello}"
            );
        } else {
            check_reference_hash_id(version, &hello);
        }
        let (_, sync) = server.get("/sync", &tok).await;
        let timeline = sync["rooms"]["join"][&room]["timeline"]["events"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(
            message_bodies(&timeline),
            vec!["hello"],
            "v{version}: {sync}"
        );
        // The sender redacts it: the content goes, the event stays.
        let (status, body) = server
            .put(
                &format!("/rooms/{}/redact/{}/r{version}", enc(&room), enc(&hello)),
                &bob_tok,
                &json!({ "reason": "oops" }),
            )
            .await;
        assert_eq!(status, 200, "v{version}: {body}");
        let (status, event) = server
            .get(
                &format!("/rooms/{}/event/{}", enc(&room), enc(&hello)),
                &tok,
            )
            .await;
        assert_eq!(status, 200, "v{version}: {event}");
        assert_eq!(event["content"], json!({}), "v{version}: {event}");
    }
    for version in ["0", "13", "9999"] {
        let (status, body) = server
            .post("/createRoom", &tok, &json!({ "room_version": version }))
            .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["errcode"], "M_UNSUPPORTED_ROOM_VERSION");
    }
}

/// Reference hashes: 43 characters of unpadded base64, standard in version 3 and URL-safe from
/// version 4 on.
fn check_reference_hash_id(version: &str, id: &str) {
    let hash = id.strip_prefix('$').expect("event id");
    assert_eq!(hash.len(), 43, "v{version}: {id}");
    let extra = if version == "3" { "+/" } else { "-_" };
    assert!(
        hash.chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(c)),
        "v{version}: {id}"
    );
}

/// A join keeps what the client put in its request beside the membership (as Synapse does):
/// clients and bridges carry their own keys in member events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_keeps_the_content_the_client_sent() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw-alice-1").await;
    let (_, bob, _) = server.register("bob", "pw-bob-1").await;
    let room = server
        .create_room(&alice, &json!({ "preset": "public_chat" }))
        .await;
    let (status, body) = server
        .post(
            &format!("/join/{}", enc(&room)),
            &bob,
            &json!({ "foo": "bar", "reason": "hello", "membership": "leave" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, member) = server
        .get(
            &format!("/rooms/{}/state/m.room.member/@bob:localhost", enc(&room)),
            &bob,
        )
        .await;
    assert_eq!(status, 200, "{member}");
    assert_eq!(member["foo"], "bar", "{member}");
    assert_eq!(member["reason"], "hello", "{member}");
    assert_eq!(
        member["membership"], "join",
        "the membership is the server's: {member}"
    );
    assert_eq!(member["displayname"], "bob", "{member}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_created_at_the_same_moment_are_different_rooms() {
    // A version-12 room is named after its create event: two alike creates by one user in the
    // same millisecond must still be two events.
    let server = TestServer::start().await;
    let (_, token, _) = server.register("alice", "pw-alice-1").await;
    let empty = json!({});
    let creates = (0..16).map(|_| server.post("/createRoom", &token, &empty));
    let answers = futures_util::future::join_all(creates).await;
    let mut ids: Vec<String> = answers
        .into_iter()
        .map(|(status, body)| {
            assert_eq!(status, 200, "{body}");
            body["room_id"].as_str().expect("room_id").to_owned()
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 16, "{ids:?}");
}
