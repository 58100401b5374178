//! Room aliases, the public room directory and the user directory.

mod common;

use common::{sdk_register, sync};
use hearth_conformance::{Method, TestServer, Value, assert_matrix_error, enc, json};
use matrix_sdk::ruma::RoomOrAliasId;

const PW: &str = "correct horse battery staple";

#[tokio::test]
async fn aliases_resolve_and_join_and_belong_to_their_makers() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw-alice-1").await;
    let (_, mallory, _) = server.register("mallory", "pw-mallory-1").await;
    let room = server
        .create_room(
            &alice,
            &json!({ "room_alias_name": "garden", "preset": "public_chat" }),
        )
        .await;
    let (status, found) = server
        .get(
            &format!("/directory/room/{}", enc("#garden:localhost")),
            &alice,
        )
        .await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["room_id"], room);
    assert_eq!(found["servers"], json!(["localhost"]));
    let (_, state) = server
        .get(
            &format!("/rooms/{}/state/m.room.canonical_alias/", enc(&room)),
            &alice,
        )
        .await;
    assert_eq!(state["alias"], "#garden:localhost", "{state}");
    let resp = server
        .post(
            "/createRoom",
            &mallory,
            &json!({ "room_alias_name": "garden" }),
        )
        .await;
    assert_matrix_error(&resp, 400, "M_ROOM_IN_USE");

    // A second alias by PUT; taken, foreign and unknown aliases get the right errors.
    let put = |alias: &str| format!("/directory/room/{}", enc(alias));
    let (status, _) = server
        .put(
            &put("#allotment:localhost"),
            &alice,
            &json!({ "room_id": room }),
        )
        .await;
    assert_eq!(status, 200);
    let resp = server
        .put(
            &put("#allotment:localhost"),
            &mallory,
            &json!({ "room_id": room }),
        )
        .await;
    assert_matrix_error(&resp, 409, "M_UNKNOWN");
    let resp = server
        .put(
            &put("#elsewhere:example.org"),
            &alice,
            &json!({ "room_id": room }),
        )
        .await;
    assert_eq!(resp.0, 400, "{}", resp.1);
    let resp = server.get(&put("#nothing:localhost"), &alice).await;
    assert_matrix_error(&resp, 404, "M_NOT_FOUND");

    let (status, listed) = server
        .get(&format!("/rooms/{}/aliases", enc(&room)), &alice)
        .await;
    assert_eq!(status, 200);
    let mut aliases: Vec<&str> = listed["aliases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    aliases.sort();
    assert_eq!(aliases, ["#allotment:localhost", "#garden:localhost"]);
    let resp = server
        .get(&format!("/rooms/{}/aliases", enc(&room)), &mallory)
        .await;
    assert_matrix_error(&resp, 403, "M_FORBIDDEN");

    // Joining by alias, through a real client.
    let bob = sdk_register(&server, "bob", PW).await;
    let alias = RoomOrAliasId::parse("#allotment:localhost").unwrap();
    let joined = bob
        .join_room_by_id_or_alias(&alias, &[])
        .await
        .expect("join by alias");
    assert_eq!(joined.room_id().as_str(), room);
    sync(&bob).await;

    // Only its maker (or the room's moderators) may delete an alias.
    let (status, _) = server
        .request(
            Method::DELETE,
            &put("#allotment:localhost"),
            Some(&mallory),
            None,
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = server
        .request(
            Method::DELETE,
            &put("#allotment:localhost"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let resp = server.get(&put("#allotment:localhost"), &alice).await;
    assert_matrix_error(&resp, 404, "M_NOT_FOUND");
}

fn names(page: &Value) -> Vec<String> {
    page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn the_public_directory_lists_filters_and_pages() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw-alice-1").await;
    let (_, bob, _) = server.register("bob", "pw-bob-1").await;
    let big = server
        .create_room(
            &alice,
            &json!({ "name": "Big garden", "topic": "tomatoes", "visibility": "public", "preset": "public_chat" }),
        )
        .await;
    server.join_raw(&bob, &big).await;
    let small = server
        .create_room(
            &alice,
            &json!({ "name": "Small shed", "visibility": "public", "preset": "public_chat" }),
        )
        .await;
    let hidden = server
        .create_room(&alice, &json!({ "name": "Secret cellar" }))
        .await;

    let (status, page) = server.get("/publicRooms", &bob).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(names(&page), ["Big garden", "Small shed"], "largest first");
    assert_eq!(page["total_room_count_estimate"], 2);
    let first = &page["chunk"][0];
    assert_eq!(first["num_joined_members"], 2);
    assert_eq!(first["topic"], "tomatoes");
    // `public` is the default join rule, which ruma leaves out.
    assert_eq!(first["join_rule"].as_str().unwrap_or("public"), "public");

    let (_, filtered) = server
        .post(
            "/publicRooms",
            &bob,
            &json!({ "filter": { "generic_search_term": "TOMATO" } }),
        )
        .await;
    assert_eq!(names(&filtered), ["Big garden"]);

    let (_, p1) = server
        .post("/publicRooms", &bob, &json!({ "limit": 1 }))
        .await;
    assert_eq!(names(&p1), ["Big garden"]);
    let next = p1["next_batch"].as_str().expect("a next page");
    let (_, p2) = server
        .post("/publicRooms", &bob, &json!({ "limit": 1, "since": next }))
        .await;
    assert_eq!(names(&p2), ["Small shed"]);
    assert!(p2.get("next_batch").is_none(), "{p2}");

    // Visibility: only those who may change the canonical alias may list a room.
    let vis = format!("/directory/list/room/{}", enc(&hidden));
    let (_, v) = server.get(&vis, &alice).await;
    assert_eq!(v["visibility"], "private");
    let resp = server
        .put(&vis, &bob, &json!({ "visibility": "public" }))
        .await;
    assert_matrix_error(&resp, 403, "M_FORBIDDEN");
    let (status, _) = server
        .put(&vis, &alice, &json!({ "visibility": "public" }))
        .await;
    assert_eq!(status, 200);
    let (_, v) = server.get(&vis, &alice).await;
    assert_eq!(v["visibility"], "public");
    let (_, page) = server.get("/publicRooms", &bob).await;
    assert!(names(&page).contains(&"Secret cellar".to_owned()), "{page}");
    // Later events keep the room listed (the room record they write carries the flag).
    server
        .send_text(&alice, &hidden, "v1", "still listed")
        .await;
    let (_, page) = server.get("/publicRooms", &bob).await;
    assert!(names(&page).contains(&"Secret cellar".to_owned()), "{page}");
    let _ = small;
}

#[tokio::test]
async fn the_user_directory_finds_people_one_shares_rooms_with() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw-alice-1").await;
    let (bob_id, bob, _) = server.register("bob", "pw-bob-1").await;
    let (_, _carol, _) = server.register("carol", "pw-carol-1").await;
    let (status, _) = server
        .put(
            &format!("/profile/{}/displayname", enc(&bob_id)),
            &bob,
            &json!({ "displayname": "Robert Gardener" }),
        )
        .await;
    assert_eq!(status, 200);
    let room = server
        .create_room(&alice, &json!({ "invite": [bob_id] }))
        .await;
    server.join_raw(&bob, &room).await;

    let search = |term: &str| json!({ "search_term": term, "limit": 10 });
    let (status, found) = server
        .post("/user_directory/search", &alice, &search("gardener"))
        .await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["results"][0]["user_id"], bob_id);
    assert_eq!(found["results"][0]["display_name"], "Robert Gardener");
    assert_eq!(found["limited"], false);
    // Carol shares no room with Alice and sits in no public room.
    let (_, none) = server
        .post("/user_directory/search", &alice, &search("carol"))
        .await;
    assert_eq!(none["results"], json!([]), "{none}");
}

/// A room puts its members in everyone's directory while anyone may join it or read its
/// history; a private room only in the directory of those who share it, the searcher not
/// among them (as Synapse's `search_all_users: false`).
#[tokio::test]
async fn room_members_are_in_everyones_directory_while_the_room_is_public_or_world_readable() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw-alice-1").await;
    let (bob_id, bob, _) = server.register("bob", "pw-bob-1").await;
    let (_, carol, _) = server.register("carol", "pw-carol-1").await;
    let room = server
        .create_room(
            &alice,
            &json!({ "preset": "private_chat", "invite": [bob_id] }),
        )
        .await;
    server.join_raw(&bob, &room).await;
    let finds_bob = |token: String| {
        let server = &server;
        let bob_id = bob_id.clone();
        async move {
            let (status, found) = server
                .post(
                    "/user_directory/search",
                    &token,
                    &json!({ "search_term": "bob", "limit": 10 }),
                )
                .await;
            assert_eq!(status, 200, "{found}");
            found["results"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["user_id"] == json!(bob_id))
        }
    };
    let set = |kind: &'static str, content: serde_json::Value| {
        let (server, alice, room) = (&server, alice.clone(), room.clone());
        async move {
            let (status, body) = server
                .put(
                    &format!("/rooms/{}/state/{kind}/", enc(&room)),
                    &alice,
                    &content,
                )
                .await;
            assert_eq!(status, 200, "{body}");
        }
    };
    assert!(finds_bob(alice.clone()).await);
    assert!(
        !finds_bob(bob.clone()).await,
        "the searcher through a private room"
    );
    assert!(!finds_bob(carol.clone()).await);

    set("m.room.join_rules", json!({ "join_rule": "public" })).await;
    assert!(finds_bob(carol.clone()).await);
    assert!(finds_bob(bob.clone()).await);
    set("m.room.join_rules", json!({ "join_rule": "invite" })).await;
    assert!(!finds_bob(carol.clone()).await);

    set(
        "m.room.history_visibility",
        json!({ "history_visibility": "world_readable" }),
    )
    .await;
    assert!(finds_bob(carol.clone()).await);
    set(
        "m.room.history_visibility",
        json!({ "history_visibility": "shared" }),
    )
    .await;
    assert!(!finds_bob(carol).await);
}

/// A canonical alias may name only aliases that point to the room (400 `M_BAD_ALIAS`
/// otherwise), and deleting an alias takes it out of the room's canonical alias, as Synapse
/// does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canonical_aliases_must_point_to_the_room_and_go_with_their_alias() {
    let server = TestServer::start().await;
    let (_, tok, _) = server.register("alias-owner", "pw-owner-1").await;
    let room = server.create_room(&tok, &json!({})).await;
    let other = server.create_room(&tok, &json!({})).await;
    for (alias, target) in [("#mine:localhost", &room), ("#theirs:localhost", &other)] {
        let (status, body) = server
            .put(
                &format!("/directory/room/{}", enc(alias)),
                &tok,
                &json!({ "room_id": target }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let path = format!("/rooms/{}/state/m.room.canonical_alias/", enc(&room));
    for bad in [
        json!({ "alias": "#nowhere:localhost" }),
        json!({ "alias": "#theirs:localhost" }),
        json!({ "alias": "#mine:localhost", "alt_aliases": ["#nowhere:localhost"] }),
    ] {
        let resp = server.put(&path, &tok, &bad).await;
        assert_eq!(resp.0, 400, "{bad}: {resp:?}");
        assert_eq!(resp.1["errcode"], "M_BAD_ALIAS", "{bad}: {resp:?}");
    }
    let resp = server
        .put(&path, &tok, &json!({ "alias": "not an alias" }))
        .await;
    assert_eq!(resp.0, 400, "{resp:?}");
    let (status, body) = server
        .put(
            &path,
            &tok,
            &json!({ "alias": "#mine:localhost", "alt_aliases": ["#mine:localhost"] }),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = server
        .request(
            Method::DELETE,
            &format!("/directory/room/{}", enc("#mine:localhost")),
            Some(&tok),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, content) = server.get(&path, &tok).await;
    assert_eq!(status, 200, "{content}");
    assert!(content.get("alias").is_none(), "{content}");
    assert_eq!(content["alt_aliases"], json!([]), "{content}");
}
