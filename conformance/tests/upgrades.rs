//! Room upgrades: `POST /rooms/{roomId}/upgrade`, as Synapse makes them.

mod common;

use std::time::Duration;

use common::{sdk_register, sees_text, sync, token};
use hearth_conformance::{TestServer, Value, assert_matrix_error, enc, json};
use matrix_sdk::ruma::api::client::room::upgrade_room;
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use matrix_sdk::ruma::{OwnedRoomId, RoomId, RoomVersionId};

const PW: &str = "correct horse battery staple";

async fn state(server: &TestServer, token: &str, room: &str, kind: &str, key: &str) -> Value {
    let (status, content) = server
        .get(
            &format!("/rooms/{}/state/{kind}/{}", enc(room), enc(key)),
            token,
        )
        .await;
    assert_eq!(status, 200, "{kind} in {room}: {content}");
    content
}

/// The event id of a room's current state event, from the full state.
async fn state_event_id(server: &TestServer, token: &str, room: &str, kind: &str) -> String {
    let (status, all) = server
        .get(&format!("/rooms/{}/state", enc(room)), token)
        .await;
    assert_eq!(status, 200, "{all}");
    all.as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == kind)
        .and_then(|e| e["event_id"].as_str())
        .unwrap_or_else(|| panic!("no {kind} in {room}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_leaves_a_working_successor_and_silences_the_old_room() {
    let server = TestServer::start().await;
    let alice = sdk_register(&server, "alice", PW).await;
    let bob = sdk_register(&server, "bob", PW).await;
    let (at, bt) = (token(&alice), token(&bob));
    let (_, mallory, _) = server.register("mallory", PW).await;
    let old = server
        .create_room(
            &at,
            &json!({
                "room_version": "10",
                "preset": "public_chat",
                "visibility": "public",
                "room_alias_name": "lounge",
                "name": "Lounge",
                "topic": "Tea and biscuits",
            }),
        )
        .await;
    let (status, _) = server
        .put(
            &format!("/directory/room/{}", enc("#den:localhost")),
            &at,
            &json!({ "room_id": old }),
        )
        .await;
    assert_eq!(status, 200);
    for t in [&bt, &mallory] {
        assert_eq!(server.join_raw(t, &old).await.0, 200);
    }
    let (status, _) = server
        .post(
            &format!("/rooms/{}/ban", enc(&old)),
            &at,
            &json!({ "user_id": "@mallory:localhost", "reason": "crumbs" }),
        )
        .await;
    assert_eq!(status, 200);
    let old_pl = state(&server, &at, &old, "m.room.power_levels", "").await;

    // A member without the power to send a tombstone may not upgrade; nor may anyone to a
    // version the server does not know, or a room it does not know.
    let upgrade = |room: &str| format!("/rooms/{}/upgrade", enc(room));
    let resp = server
        .post(&upgrade(&old), &bt, &json!({ "new_version": "11" }))
        .await;
    assert_matrix_error(&resp, 403, "M_FORBIDDEN");
    for version in ["9999", "my_bad_version"] {
        let resp = server
            .post(&upgrade(&old), &at, &json!({ "new_version": version }))
            .await;
        assert_matrix_error(&resp, 400, "M_UNSUPPORTED_ROOM_VERSION");
    }
    let resp = server
        .post(
            &upgrade("!nowhere:localhost"),
            &at,
            &json!({ "new_version": "11" }),
        )
        .await;
    assert_matrix_error(&resp, 404, "M_NOT_FOUND");
    // The refusals left the old room as it was, and working.
    let resp = server
        .get(
            &format!("/rooms/{}/state/m.room.tombstone/", enc(&old)),
            &at,
        )
        .await;
    assert_matrix_error(&resp, 404, "M_NOT_FOUND");
    server.send_text(&bt, &old, "t0", "before the move").await;

    // The creator upgrades through a real client.
    let old_id = RoomId::parse(&old).unwrap();
    let response = alice
        .send(upgrade_room::v3::Request::new(
            old_id.clone(),
            RoomVersionId::V11,
        ))
        .await
        .expect("upgrade");
    let new_room: OwnedRoomId = response.replacement_room;
    let new = new_room.as_str();
    assert_ne!(new, old);

    // The new room: version 11, made by alice, naming the old room and its tombstone.
    let tombstone_id = state_event_id(&server, &at, &old, "m.room.tombstone").await;
    let create = state(&server, &at, new, "m.room.create", "").await;
    assert_eq!(create["room_version"], "11", "{create}");
    assert_eq!(
        create["predecessor"],
        json!({ "room_id": old, "event_id": tombstone_id })
    );
    let tombstone = state(&server, &at, &old, "m.room.tombstone", "").await;
    assert_eq!(
        tombstone,
        json!({ "body": "This room has been replaced", "replacement_room": new })
    );

    // Its state is the old room's; mallory is still banned; nobody else was invited.
    assert_eq!(
        state(&server, &at, new, "m.room.name", "").await["name"],
        "Lounge"
    );
    assert_eq!(
        state(&server, &at, new, "m.room.topic", "").await["topic"],
        "Tea and biscuits"
    );
    assert_eq!(
        state(&server, &at, new, "m.room.join_rules", "").await["join_rule"],
        "public"
    );
    assert_eq!(
        state(&server, &at, new, "m.room.power_levels", "").await,
        old_pl
    );
    let ban = state(&server, &at, new, "m.room.member", "@mallory:localhost").await;
    assert_eq!(ban["membership"], "ban");
    assert_eq!(ban["reason"], "crumbs");
    let (_, members) = server
        .get(&format!("/rooms/{}/joined_members", enc(new)), &at)
        .await;
    assert_eq!(
        members["joined"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["@alice:localhost"]
    );

    // The aliases and the directory listing moved.
    let canonical = state(&server, &at, new, "m.room.canonical_alias", "").await;
    assert_eq!(canonical["alias"], "#lounge:localhost", "{canonical}");
    let left = state(&server, &at, &old, "m.room.canonical_alias", "").await;
    assert!(left.get("alias").is_none(), "{left}");
    for alias in ["#lounge:localhost", "#den:localhost"] {
        let (_, found) = server
            .get(&format!("/directory/room/{}", enc(alias)), &bt)
            .await;
        assert_eq!(found["room_id"], new, "{alias}: {found}");
    }
    let listed = |room: &str| format!("/directory/list/room/{}", enc(room));
    assert_eq!(
        server.get(&listed(&old), &bt).await.1["visibility"],
        "private"
    );
    assert_eq!(
        server.get(&listed(new), &bt).await.1["visibility"],
        "public"
    );
    let (_, public) = server.get("/publicRooms", &bt).await;
    let ids: Vec<&str> = public["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["room_id"].as_str())
        .collect();
    assert_eq!(ids, [new], "{public}");

    // The old room is read-only for ordinary members (sending and inviting take 50 now).
    let pl = state(&server, &at, &old, "m.room.power_levels", "").await;
    assert_eq!(
        (&pl["events_default"], &pl["invite"]),
        (&json!(50), &json!(50))
    );
    let resp = server.send_text_raw(&bt, &old, "t1", "still here?").await;
    assert_matrix_error(&resp, 403, "M_FORBIDDEN");

    // A client sees the link both ways.
    sync(&alice).await;
    let old_room = alice.get_room(&old_id).expect("alice knows the old room");
    assert_eq!(
        old_room.successor_room().map(|s| s.room_id),
        Some(new_room.clone())
    );
    let new_room_sdk = alice.get_room(&new_room).expect("alice is in the new room");
    let predecessor = new_room_sdk
        .create_content()
        .and_then(|c| c.predecessor)
        .expect("predecessor");
    assert_eq!(predecessor.room_id, old_id);

    // Members follow the tombstone and talk in the successor.
    bob.join_room_by_id(&new_room).await.expect("bob joins");
    alice
        .get_room(&new_room)
        .unwrap()
        .send(RoomMessageEventContent::text_plain(
            "welcome to the new lounge",
        ))
        .await
        .expect("alice sends");
    sees_text(
        &bob,
        &new_room,
        "welcome to the new lounge",
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test]
async fn an_upgrade_to_version_12_makes_the_upgrader_a_creator() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", PW).await;
    let (_, bob, _) = server.register("bob", PW).await;
    let old = server
        .create_room(
            &alice,
            &json!({ "room_version": "11", "name": "Workshop", "invite": ["@bob:localhost"] }),
        )
        .await;
    assert_eq!(server.join_raw(&bob, &old).await.0, 200);
    // Refused only once the new room's events are built (its id comes from its create event):
    // nothing of them stays behind.
    let resp = server
        .post(
            &format!("/rooms/{}/upgrade", enc(&old)),
            &bob,
            &json!({ "new_version": "12" }),
        )
        .await;
    assert_matrix_error(&resp, 403, "M_FORBIDDEN");
    server.send_text(&bob, &old, "t0", "still fine").await;
    // Bob is a moderator with the power to upgrade.
    let mut pl = state(&server, &alice, &old, "m.room.power_levels", "").await;
    pl["users"]["@bob:localhost"] = json!(50);
    pl["events"]["m.room.tombstone"] = json!(50);
    let (status, _) = server
        .put(
            &format!("/rooms/{}/state/m.room.power_levels/", enc(&old)),
            &alice,
            &pl,
        )
        .await;
    assert_eq!(status, 200);

    let (status, body) = server
        .post(
            &format!("/rooms/{}/upgrade", enc(&old)),
            &bob,
            &json!({ "new_version": "12", "additional_creators": ["@alice:localhost"] }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let new = body["replacement_room"].as_str().unwrap();
    // Version 12 rooms are named after their create event, and their creators are not listed
    // in the power levels; the predecessor names no event.
    assert!(!new.contains(':'), "{new}");
    let create = state(&server, &bob, new, "m.room.create", "").await;
    assert_eq!(create["predecessor"], json!({ "room_id": old }));
    assert_eq!(create["additional_creators"], json!(["@alice:localhost"]));
    let new_pl = state(&server, &bob, new, "m.room.power_levels", "").await;
    assert_eq!(new_pl["users"], json!({}), "{new_pl}");
    assert_eq!(new_pl["events"]["m.room.tombstone"], 50);
    assert_eq!(
        state(&server, &bob, new, "m.room.name", "").await["name"],
        "Workshop"
    );
    // Bob, a creator now, may change anything in the new room.
    let (status, _) = server
        .put(
            &format!("/rooms/{}/state/m.room.name/", enc(new)),
            &bob,
            &json!({ "name": "Workshop 2" }),
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_moderator_upgrade_raises_then_restores_their_level() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", PW).await;
    let (_, bob, _) = server.register("bob", PW).await;
    let old = server
        .create_room(
            &alice,
            &json!({ "room_version": "10", "preset": "public_chat" }),
        )
        .await;
    assert_eq!(server.join_raw(&bob, &old).await.0, 200);
    let mut pl = state(&server, &alice, &old, "m.room.power_levels", "").await;
    pl["users"]["@bob:localhost"] = json!(50);
    pl["events"]["m.room.tombstone"] = json!(50);
    let (status, _) = server
        .put(
            &format!("/rooms/{}/state/m.room.power_levels/", enc(&old)),
            &alice,
            &pl,
        )
        .await;
    assert_eq!(status, 200);

    let (status, body) = server
        .post(
            &format!("/rooms/{}/upgrade", enc(&old)),
            &bob,
            &json!({ "new_version": "11" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let new = body["replacement_room"].as_str().unwrap();
    // Copying the state took level 100 for a moment; the room ends with the old levels.
    assert_eq!(
        state(&server, &bob, new, "m.room.power_levels", "").await,
        pl
    );
    // Bob could not restrict the old room's levels (that takes 100); the tombstone stands.
    let old_pl = state(&server, &bob, &old, "m.room.power_levels", "").await;
    assert_eq!(old_pl, pl);
    let tombstone = state(&server, &bob, &old, "m.room.tombstone", "").await;
    assert_eq!(tombstone["replacement_room"], new);
}

/// Rooms of the older versions upgrade to newer ones and back: a version 5 room whose power
/// levels were written as strings becomes a version 11 room with integer levels, and a version
/// 11 room moves to version 9; the members follow and talk in each.
#[tokio::test]
async fn rooms_of_old_versions_upgrade_with_their_levels_made_integers() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", PW).await;
    let (_, bob, _) = server.register("bob", PW).await;
    let old = server
        .create_room(
            &alice,
            &json!({ "room_version": "5", "preset": "public_chat" }),
        )
        .await;
    assert_eq!(server.join_raw(&bob, &old).await.0, 200);
    let mut pl = state(&server, &alice, &old, "m.room.power_levels", "").await;
    pl["users"]["@bob:localhost"] = json!("50");
    pl["kick"] = json!("60");
    let (status, body) = server
        .put(
            &format!("/rooms/{}/state/m.room.power_levels/", enc(&old)),
            &alice,
            &pl,
        )
        .await;
    assert_eq!(status, 200, "version 5 takes string levels: {body}");

    let mut room = old.clone();
    for (version, levels) in [("11", json!({ "bob": 50, "kick": 60 })), ("9", json!(null))] {
        let (status, body) = server
            .post(
                &format!("/rooms/{}/upgrade", enc(&room)),
                &alice,
                &json!({ "new_version": version }),
            )
            .await;
        assert_eq!(status, 200, "to {version}: {body}");
        let new = body["replacement_room"].as_str().unwrap().to_owned();
        let create = state(&server, &alice, &new, "m.room.create", "").await;
        assert_eq!(create["room_version"], version, "{create}");
        assert_eq!(create["predecessor"]["room_id"], room.as_str(), "{create}");
        if !levels.is_null() {
            let pl = state(&server, &alice, &new, "m.room.power_levels", "").await;
            assert_eq!(pl["users"]["@bob:localhost"], levels["bob"], "{pl}");
            assert_eq!(pl["kick"], levels["kick"], "{pl}");
        }
        assert_eq!(server.join_raw(&bob, &new).await.0, 200, "to {version}");
        server
            .send_text(&bob, &new, &format!("t{version}"), "moved")
            .await;
        room = new;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_keep_their_tags_and_direct_chats_across_an_upgrade() {
    let server = TestServer::start().await;
    let (alice_id, alice, _) = server.register("alice", "pw-alice-1").await;
    let (bob_id, bob, _) = server.register("bob", "pw-bob-1").await;
    let room = server
        .create_room(&alice, &json!({ "invite": [bob_id], "is_direct": true }))
        .await;
    let (status, body) = server.join_raw(&bob, &room).await;
    assert_eq!(status, 200, "{body}");
    let tag = format!("/user/{}/rooms/{}/tags/u.work", enc(&bob_id), enc(&room));
    let (status, body) = server.put(&tag, &bob, &json!({ "order": 0.5 })).await;
    assert_eq!(status, 200, "{body}");
    let direct = format!("/user/{}/account_data/m.direct", enc(&bob_id));
    let (status, body) = server
        .put(&direct, &bob, &json!({ alice_id.clone(): [room] }))
        .await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = server
        .post(
            &format!("/rooms/{}/upgrade", enc(&room)),
            &alice,
            &json!({ "new_version": "11" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let new_room = body["replacement_room"]
        .as_str()
        .expect("replacement")
        .to_owned();

    let (status, tags) = server
        .get(
            &format!("/user/{}/rooms/{}/tags", enc(&bob_id), enc(&new_room)),
            &bob,
        )
        .await;
    assert_eq!(status, 200, "{tags}");
    assert_eq!(tags["tags"]["u.work"]["order"], 0.5, "{tags}");
    let (status, direct) = server.get(&direct, &bob).await;
    assert_eq!(status, 200, "{direct}");
    assert_eq!(direct[&alice_id], json!([room, new_room]), "{direct}");
}
