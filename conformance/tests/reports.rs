//! Reporting content (`POST /rooms/{roomId}/report/{eventId}`, `POST /rooms/{roomId}/report`)
//! and the admin's view of the reports (Synapse's `/_synapse/admin/v1/event_reports`).

mod common;

use common::{sdk_register, token};
use hearth_conformance::{TestServer, assert_matrix_error, enc, json};
use matrix_sdk::ruma::api::client::room::report_room;
use matrix_sdk::ruma::{OwnedRoomId, RoomId};

const PW: &str = "correct horse battery staple";
const ADMIN: &str = "/_synapse/admin/v1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_report_events_and_rooms_and_admins_read_them() {
    let server = TestServer::builder()
        .env("HEARTH_ADMIN_USERS", "@root:localhost")
        .start()
        .await;
    let (_, alice, _) = server.register("alice", PW).await;
    let bob_sdk = sdk_register(&server, "bob", PW).await;
    let bob = token(&bob_sdk);
    let (_, eve, _) = server.register("eve", PW).await;
    let (_, root, _) = server.register("root", PW).await;
    let room = server
        .create_room(
            &alice,
            &json!({ "name": "Market", "invite": ["@bob:localhost"] }),
        )
        .await;
    assert_eq!(server.join_raw(&bob, &room).await.0, 200);
    let rude = server.send_text(&alice, &room, "t1", "buy my spam").await;
    let worse = server.send_text(&alice, &room, "t2", "more spam").await;

    let report = |event: &str| format!("/rooms/{}/report/{}", enc(&room), enc(event));
    let (status, body) = server
        .post(
            &report(&rude),
            &bob,
            &json!({ "reason": "spam", "score": -100 }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({}));
    let (status, _) = server.post(&report(&worse), &bob, &json!({})).await;
    assert_eq!(status, 200);

    // An event that does not exist, or that the reporter cannot see, is not found.
    let resp = server
        .post(&report("$nothing-here"), &bob, &json!({ "reason": "?" }))
        .await;
    assert_matrix_error(&resp, 404, "M_NOT_FOUND");
    let resp = server
        .post(&report(&rude), &eve, &json!({ "reason": "nosy" }))
        .await;
    assert_matrix_error(&resp, 404, "M_NOT_FOUND");
    let resp = server
        .post(&report(&rude), &bob, &json!({ "score": "very bad" }))
        .await;
    assert_matrix_error(&resp, 400, "M_BAD_JSON");

    // Reporting the whole room, through a real client; an unknown room is not found.
    let room_id: OwnedRoomId = RoomId::parse(&room).unwrap();
    bob_sdk
        .send(report_room::v3::Request::new(
            room_id,
            "a market of spam".into(),
        ))
        .await
        .expect("room report");
    let resp = server
        .post(
            &format!("/rooms/{}/report", enc("!nowhere:localhost")),
            &bob,
            &json!({ "reason": "?" }),
        )
        .await;
    assert_matrix_error(&resp, 404, "M_NOT_FOUND");

    // Only admins read reports.
    let list = format!("{}{ADMIN}/event_reports", server.base_url());
    let resp = server.get(&list, &bob).await;
    assert_matrix_error(&resp, 403, "M_FORBIDDEN");

    // Newest first by default, with the room's name and the event's sender.
    let (status, page) = server.get(&list, &root).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["total"], 2, "{page}");
    assert!(page.get("next_token").is_none(), "{page}");
    let reports = page["event_reports"].as_array().unwrap();
    assert_eq!(reports[0]["event_id"], worse);
    let first = &reports[1];
    assert_eq!(first["event_id"], rude);
    assert_eq!(first["room_id"], room);
    assert_eq!(first["user_id"], "@bob:localhost");
    assert_eq!(first["reason"], "spam");
    assert_eq!(first["score"], -100);
    assert_eq!(first["sender"], "@alice:localhost");
    assert_eq!(first["name"], "Market");
    assert!(first["received_ts"].as_u64().unwrap() > 0);

    // Paging oldest first, one at a time.
    let (_, p1) = server.get(&format!("{list}?dir=f&limit=1"), &root).await;
    assert_eq!(p1["event_reports"][0]["event_id"], rude, "{p1}");
    assert_eq!((&p1["next_token"], &p1["total"]), (&json!(1), &json!(2)));
    let (_, p2) = server
        .get(&format!("{list}?dir=f&limit=1&from=1"), &root)
        .await;
    assert_eq!(p2["event_reports"][0]["event_id"], worse, "{p2}");
    assert!(p2.get("next_token").is_none(), "{p2}");
    // Filters: by reporter, by room (substrings, as Synapse's LIKE).
    let (_, none) = server
        .get(&format!("{list}?user_id={}", enc("@eve")), &root)
        .await;
    assert_eq!(none["total"], 0, "{none}");
    let (_, by_room) = server
        .get(&format!("{list}?room_id={}", enc(&room)), &root)
        .await;
    assert_eq!(by_room["total"], 2, "{by_room}");
    let resp = server.get(&format!("{list}?limit=-1"), &root).await;
    assert_matrix_error(&resp, 400, "M_INVALID_PARAM");
    let resp = server.get(&format!("{list}?dir=sideways"), &root).await;
    assert_matrix_error(&resp, 400, "M_INVALID_PARAM");

    // One report, with the event as stored.
    let id = first["id"].as_u64().unwrap();
    let (status, detail) = server.get(&format!("{list}/{id}"), &root).await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["event_json"]["content"]["body"], "buy my spam");
    assert_eq!(detail["reason"], "spam");
    let resp = server.get(&format!("{list}/{id}"), &bob).await;
    assert_matrix_error(&resp, 403, "M_FORBIDDEN");
    let resp = server.get(&format!("{list}/999"), &root).await;
    assert_matrix_error(&resp, 404, "M_NOT_FOUND");
    let resp = server.get(&format!("{list}/first"), &root).await;
    assert_matrix_error(&resp, 400, "M_INVALID_PARAM");

    // Room reports.
    let rooms = format!("{}{ADMIN}/room_reports", server.base_url());
    let resp = server.get(&rooms, &eve).await;
    assert_matrix_error(&resp, 403, "M_FORBIDDEN");
    let (_, page) = server.get(&rooms, &root).await;
    assert_eq!(page["total"], 1, "{page}");
    let r = &page["room_reports"][0];
    assert_eq!(r["room_id"], room);
    assert_eq!(r["reason"], "a market of spam");
    assert_eq!(r["user_id"], "@bob:localhost");
}

#[tokio::test]
async fn reports_survive_a_restart() {
    let mut server = TestServer::builder()
        .env("HEARTH_ADMIN_USERS", "@root:localhost")
        .start()
        .await;
    let (_, alice, _) = server.register("alice", PW).await;
    let (_, root, _) = server.register("root", PW).await;
    let room = server.create_room(&alice, &json!({})).await;
    let ev = server.send_text(&alice, &room, "t1", "hello").await;
    let (status, _) = server
        .post(
            &format!("/rooms/{}/report/{}", enc(&room), enc(&ev)),
            &alice,
            &json!({ "reason": "testing" }),
        )
        .await;
    assert_eq!(status, 200);
    server.kill9();
    server.restart().await;
    let (_, page) = server
        .get(
            &format!("{}{ADMIN}/event_reports", server.base_url()),
            &root,
        )
        .await;
    assert_eq!(page["total"], 1, "{page}");
    assert_eq!(page["event_reports"][0]["reason"], "testing");
}
