//! Simplified sliding sync (MSC4186) over raw HTTP: lists ordered by recency, ranges, filters,
//! required state, incremental answers per connection, extensions, and unknown positions.

use std::time::Duration;

use hearth_conformance::{TestServer, Value, assert_matrix_error, enc, json};

const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

async fn slide(server: &TestServer, token: &str, pos: Option<&str>, body: &Value) -> Value {
    let path = match pos {
        Some(p) => format!("{PATH}?pos={}&timeout=10000", enc(p)),
        None => PATH.to_owned(),
    };
    let (status, resp) = server.post(&path, token, body).await;
    assert_eq!(status, 200, "{resp}");
    resp
}

fn list(ranges: Value, extra: Value) -> Value {
    let mut l = json!({
        "ranges": ranges,
        "timeline_limit": 1,
        "required_state": [["m.room.name", ""], ["m.room.member", "$ME"]],
    });
    for (k, v) in extra.as_object().unwrap() {
        l[k] = v.clone();
    }
    l
}

/// The rooms of an answer, most recent first, as the client sorts them (by `bump_stamp`).
fn by_recency(resp: &Value) -> Vec<String> {
    let rooms = resp["rooms"].as_object().cloned().unwrap_or_default();
    let mut ids: Vec<(u64, String)> = rooms
        .iter()
        .map(|(id, r)| (r["bump_stamp"].as_u64().unwrap(), id.clone()))
        .collect();
    ids.sort_by(|a, b| b.cmp(a));
    ids.into_iter().map(|(_, id)| id).collect()
}

#[tokio::test]
async fn lists_follow_recency_and_answers_carry_only_changes() {
    let server = TestServer::start().await;
    let (status, versions) = server.get_anon("/_matrix/client/versions").await;
    assert_eq!(status, 200);
    assert_eq!(
        versions["unstable_features"]["org.matrix.simplified_msc3575"],
        true
    );
    let (alice_id, alice, _) = server.register("alice", "pw-alice-1").await;
    let mut rooms = Vec::new();
    for i in 0..5 {
        let room = server
            .create_room(&alice, &json!({ "name": format!("Room {i}") }))
            .await;
        server
            .send_text(&alice, &room, &format!("t{i}"), &format!("hello {i}"))
            .await;
        rooms.push(room);
    }
    let body = json!({
        "conn_id": "main",
        "lists": { "all": list(json!([[0, 2]]), json!({})) },
    });
    let first = slide(&server, &alice, None, &body).await;
    assert_eq!(first["lists"]["all"]["count"], 5, "{first}");
    assert_eq!(
        by_recency(&first),
        [rooms[4].clone(), rooms[3].clone(), rooms[2].clone()],
        "the three most recent"
    );
    let r4 = &first["rooms"][&rooms[4]];
    assert_eq!(r4["initial"], true);
    assert_eq!(r4["name"], "Room 4");
    assert_eq!(r4["timeline"].as_array().unwrap().len(), 1);
    assert_eq!(r4["timeline"][0]["content"]["body"], "hello 4");
    assert_eq!(r4["joined_count"], 1);
    let state_types: Vec<(&str, &str)> = r4["required_state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["state_key"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        state_types.contains(&("m.room.name", "")),
        "{state_types:?}"
    );
    assert!(
        state_types.contains(&("m.room.member", alice_id.as_str())),
        "{state_types:?}"
    );
    assert_eq!(state_types.len(), 2, "only what was asked: {state_types:?}");
    assert!(r4["prev_batch"].is_string());
    let pos = first["pos"].as_str().unwrap().to_owned();

    // A message in the oldest room brings it to the top: it comes whole (new to the client),
    // while the rooms the client has and that did not change are left out.
    let poll = slide(&server, &alice, Some(&pos), &body);
    let send = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        server
            .send_text(&alice, &rooms[0], "t9", "back on top")
            .await
    };
    let (second, _) = tokio::join!(poll, send);
    assert_eq!(by_recency(&second), [rooms[0].clone()], "{second}");
    let r0 = &second["rooms"][&rooms[0]];
    assert_eq!(r0["initial"], true);
    assert_eq!(r0["timeline"][0]["content"]["body"], "back on top");
    assert!(
        r0["bump_stamp"].as_u64() > r4["bump_stamp"].as_u64(),
        "{r0} {r4}"
    );
    let pos2 = second["pos"].as_str().unwrap().to_owned();

    // A room the client has gets only its new events.
    let poll = slide(&server, &alice, Some(&pos2), &body);
    let send = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        server.send_text(&alice, &rooms[4], "t10", "news").await
    };
    let (third, _) = tokio::join!(poll, send);
    let r4 = &third["rooms"][&rooms[4]];
    assert!(r4.get("initial").is_none(), "{r4}");
    assert_eq!(r4["num_live"], 1);
    let bodies: Vec<&str> = r4["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["news"]);
    assert!(r4.get("required_state").is_none(), "unchanged state: {r4}");

    // A room the client has but that left the range catches up from where the client left it:
    // a rename while it was out of range shows when a message brings it back.
    let pos3 = third["pos"].as_str().unwrap().to_owned();
    let (status, _) = server
        .put(
            &format!("/rooms/{}/state/m.room.name/", enc(&rooms[2])),
            &alice,
            &json!({ "name": "Renamed" }),
        )
        .await;
    assert_eq!(status, 200);
    server.send_text(&alice, &rooms[4], "t11", "ping").await;
    let fourth = slide(&server, &alice, Some(&pos3), &body).await;
    assert!(
        fourth["rooms"].get(&rooms[2]).is_none(),
        "out of range: {fourth}"
    );
    let pos4 = fourth["pos"].as_str().unwrap().to_owned();
    server
        .send_text(&alice, &rooms[2], "t12", "i am back")
        .await;
    let fifth = slide(&server, &alice, Some(&pos4), &body).await;
    let r2 = &fifth["rooms"][&rooms[2]];
    assert!(r2.get("initial").is_none(), "the client had it: {r2}");
    assert_eq!(r2["name"], "Renamed", "{r2}");
    let names: Vec<&str> = r2["required_state"]
        .as_array()
        .expect("the changed state")
        .iter()
        .filter(|e| e["type"] == "m.room.name")
        .map(|e| e["content"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Renamed"]);

    // The previous position still answers (a retry), an unknown one does not.
    let again = slide(&server, &alice, Some(&pos4), &body).await;
    assert!(again["rooms"][&rooms[2]].is_object());
    let resp = server
        .post(&format!("{PATH}?pos=nonsense"), &alice, &body)
        .await;
    assert_matrix_error(&resp, 400, "M_UNKNOWN_POS");
    let resp = server
        .post(
            &format!("{PATH}?pos={pos}"),
            &alice,
            &json!({ "conn_id": "other" }),
        )
        .await;
    assert_matrix_error(&resp, 400, "M_UNKNOWN_POS");
}

#[tokio::test]
async fn invites_filters_subscriptions_and_extensions() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw-alice-1").await;
    let (bob_id, bob, _) = server.register("bob", "pw-bob-1").await;
    let joined = server
        .create_room(&bob, &json!({ "name": "Bob's own" }))
        .await;
    let invited = server
        .create_room(&alice, &json!({ "name": "Come in", "invite": [bob_id] }))
        .await;
    let (status, _) = server
        .put(
            &format!("/rooms/{}/typing/{}", enc(&joined), enc(&bob_id)),
            &bob,
            &json!({ "typing": true, "timeout": 30000 }),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .put(
            &format!("/user/{}/account_data/org.example.setting", enc(&bob_id)),
            &bob,
            &json!({ "on": true }),
        )
        .await;
    assert_eq!(status, 200);

    let body = json!({
        "lists": {
            "invites": list(json!([[0, 9]]), json!({ "filters": { "is_invite": true } })),
            "rooms": list(json!([[0, 9]]), json!({ "filters": { "is_invite": false } })),
        },
        "extensions": {
            "typing": { "enabled": true },
            "receipts": { "enabled": true },
            "account_data": { "enabled": true },
            "e2ee": { "enabled": true },
            "to_device": { "enabled": true },
        },
    });
    let resp = slide(&server, &bob, None, &body).await;
    assert_eq!(resp["lists"]["invites"]["count"], 1, "{resp}");
    assert_eq!(resp["lists"]["rooms"]["count"], 1, "{resp}");
    let invite = &resp["rooms"][&invited];
    let stripped: Vec<&str> = invite["invite_state"]
        .as_array()
        .expect("invite_state")
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(stripped.contains(&"m.room.name"), "{stripped:?}");
    assert!(stripped.contains(&"m.room.member"), "{stripped:?}");
    let ext = &resp["extensions"];
    assert_eq!(
        ext["typing"]["rooms"][&joined]["content"]["user_ids"],
        json!([bob_id])
    );
    let globals: Vec<&str> = ext["account_data"]["global"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(globals.contains(&"org.example.setting"), "{globals:?}");
    assert!(globals.contains(&"m.push_rules"), "{globals:?}");
    assert!(
        ext["e2ee"]["device_one_time_keys_count"].is_object(),
        "{ext}"
    );
    assert!(ext["to_device"]["next_batch"].is_string(), "{ext}");

    // Messages in a room Bob is only invited to do not send its invite again.
    server
        .send_text(&alice, &invited, "i1", "not for bob yet")
        .await;
    let pos = resp["pos"].as_str().unwrap();
    let (status, later) = server
        .post(&format!("{PATH}?pos={}&timeout=500", enc(pos)), &bob, &body)
        .await;
    assert_eq!(status, 200, "{later}");
    assert!(later["rooms"].get(&invited).is_none(), "{later}");

    // A subscription to a room outside every range still brings it; other users' rooms not.
    let other = server.create_room(&alice, &json!({})).await;
    let sub = json!({
        "lists": { "rooms": list(json!([[0, 0]]), json!({ "filters": { "is_invite": false } })) },
        "room_subscriptions": {
            (joined.clone()): { "timeline_limit": 5, "required_state": [["*", "*"]] },
            (other.clone()): { "timeline_limit": 5 },
        },
    });
    let resp = slide(&server, &bob, None, &sub).await;
    let full_state = resp["rooms"][&joined]["required_state"].as_array().unwrap();
    assert!(full_state.len() >= 5, "all of the state: {full_state:?}");
    assert!(resp["rooms"].get(&other).is_none(), "{resp}");

    // Joining moves the invite to the other list.
    let (status, _) = server.join_raw(&bob, &invited).await;
    assert_eq!(status, 200);
    let resp = slide(&server, &bob, None, &body).await;
    assert_eq!(resp["lists"]["invites"]["count"], 0, "{resp}");
    assert_eq!(resp["lists"]["rooms"]["count"], 2, "{resp}");
}
