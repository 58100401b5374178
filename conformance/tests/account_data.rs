//! Account data (global and per room) and room tags: round trips and delivery through /sync.

use hearth_conformance::{TestServer, assert_matrix_error, enc, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_data_round_trips_and_syncs() {
    let server = TestServer::start().await;
    let (alice, tok, _) = server.register("alice", "pw-alice-1").await;
    let room = server.create_room(&tok, &json!({ "name": "tagged" })).await;
    let (_, first) = server.get("/sync", &tok).await;
    let since = first["next_batch"].as_str().unwrap().to_owned();

    let global = format!("/user/{}/account_data/org.example.settings", enc(&alice));
    let (status, body) = server.put(&global, &tok, &json!({ "theme": "dark" })).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.get(&global, &tok).await;
    assert_eq!((status, body), (200, json!({ "theme": "dark" })));

    let per_room = format!(
        "/user/{}/rooms/{}/account_data/org.example.draft",
        enc(&alice),
        enc(&room)
    );
    let (status, body) = server.put(&per_room, &tok, &json!({ "text": "hi" })).await;
    assert_eq!(status, 200, "{body}");

    let tag = format!(
        "/user/{}/rooms/{}/tags/m.favourite",
        enc(&alice),
        enc(&room)
    );
    let (status, body) = server.put(&tag, &tok, &json!({ "order": 0.5 })).await;
    assert_eq!(status, 200, "{body}");
    let tags = format!("/user/{}/rooms/{}/tags", enc(&alice), enc(&room));
    let (_, body) = server.get(&tags, &tok).await;
    assert_eq!(body["tags"]["m.favourite"]["order"], json!(0.5), "{body}");

    // An incremental sync carries exactly the changes.
    let (status, sync) = server
        .get(&format!("/sync?since={since}&timeout=0"), &tok)
        .await;
    assert_eq!(status, 200, "{sync}");
    let global_events = sync["account_data"]["events"].as_array().unwrap();
    assert_eq!(
        global_events,
        &vec![json!({ "type": "org.example.settings", "content": { "theme": "dark" } })]
    );
    let room_events = sync["rooms"]["join"][&room]["account_data"]["events"]
        .as_array()
        .unwrap();
    let types: Vec<&str> = room_events
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, vec!["org.example.draft", "m.tag"], "{sync}");

    // Removing the tag is a change too, and the next sync has only it.
    let next = sync["next_batch"].as_str().unwrap().to_owned();
    let (status, _) = server
        .request(hearth_conformance::Method::DELETE, &tag, Some(&tok), None)
        .await;
    assert_eq!(status, 200);
    let (_, sync) = server
        .get(&format!("/sync?since={next}&timeout=5000"), &tok)
        .await;
    assert!(
        sync["account_data"]["events"]
            .as_array()
            .is_none_or(|e| e.is_empty()),
        "{sync}"
    );
    let room_events = &sync["rooms"]["join"][&room]["account_data"]["events"];
    assert_eq!(
        room_events,
        &json!([{ "type": "m.tag", "content": { "tags": {} } }]),
        "{sync}"
    );

    // A first sync has the current state of everything.
    let (_, full) = server.get("/sync", &tok).await;
    assert_eq!(
        full["account_data"]["events"][0]["content"]["theme"], "dark",
        "{full}"
    );

    // Server-managed types and other users' data are refused.
    let fully_read = format!(
        "/user/{}/rooms/{}/account_data/m.fully_read",
        enc(&alice),
        enc(&room)
    );
    assert_matrix_error(
        &server
            .put(&fully_read, &tok, &json!({ "event_id": "$x" }))
            .await,
        405,
        "M_BAD_JSON",
    );
    let (_, bob_tok, _) = server.register("bob", "pw-bob-1").await;
    assert_matrix_error(&server.get(&global, &bob_tok).await, 403, "M_FORBIDDEN");
    let missing = format!("/user/{}/account_data/org.example.none", enc(&alice));
    assert_matrix_error(&server.get(&missing, &tok).await, 404, "M_NOT_FOUND");
}
