//! Crash durability: anything acknowledged with 200 survives SIGKILL.

use hearth_conformance::{TestServer, Value, enc, json, message_bodies};

const PW: &str = "durable-password";

async fn messages_back(server: &TestServer, token: &str, room_id: &str) -> Vec<Value> {
    let (status, page) = server
        .get(
            &format!("/rooms/{}/messages?dir=b&limit=100", enc(room_id)),
            token,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let mut chunk = page["chunk"].as_array().expect("chunk").clone();
    chunk.reverse();
    chunk
}

fn message_ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_message_survives_sigkill() {
    let mut server = TestServer::start().await;
    let (user_id, token, device_id) = server.register("alice", PW).await;
    let room_id = server
        .create_room(
            &token,
            &json!({ "preset": "private_chat", "name": "durable" }),
        )
        .await;
    let (status, before) = server.get("/sync?timeout=0", &token).await;
    assert_eq!(status, 200, "{before}");
    let since = before["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();

    let event_id = server
        .send_text(&token, &room_id, "d1", "must survive")
        .await;
    server.kill9();
    server.restart().await;

    // The session survived.
    let (status, who) = server.get("/account/whoami", &token).await;
    assert_eq!(status, 200, "access token lost in the crash: {who}");
    assert_eq!(who["user_id"], user_id.as_str());
    assert_eq!(who["device_id"], device_id.as_str());

    // The message is there with the same event id.
    let events = messages_back(&server, &token, &room_id).await;
    assert_eq!(message_bodies(&events), vec!["must survive"]);
    assert_eq!(message_ids(&events), vec![event_id.clone()]);
    let (status, ev) = server
        .get(
            &format!("/rooms/{}/event/{}", enc(&room_id), enc(&event_id)),
            &token,
        )
        .await;
    assert_eq!(status, 200, "{ev}");
    assert_eq!(ev["content"]["body"], "must survive");

    // Sync from a token issued before the crash delivers it; so does an
    // initial sync.
    let (status, inc) = server
        .get(&format!("/sync?since={}&timeout=0", enc(&since)), &token)
        .await;
    assert_eq!(status, 200, "{inc}");
    let timeline = inc["rooms"]["join"][&room_id]["timeline"]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("room missing from incremental sync: {inc}"));
    assert_eq!(message_ids(timeline), vec![event_id.clone()]);
    let (status, initial) = server.get("/sync?timeout=0", &token).await;
    assert_eq!(status, 200);
    let timeline = initial["rooms"]["join"][&room_id]["timeline"]["events"]
        .as_array()
        .expect("room in initial sync");
    assert!(message_ids(timeline).contains(&event_id));

    // The transaction id is still remembered: a retry does not duplicate.
    let retried = server
        .send_text(&token, &room_id, "d1", "must survive")
        .await;
    assert_eq!(retried, event_id, "txnId retry after restart duplicated");

    // The room continues after the restart.
    let next = server
        .send_text(&token, &room_id, "d2", "after restart")
        .await;
    assert_ne!(next, event_id);
    let events = messages_back(&server, &token, &room_id).await;
    assert_eq!(
        message_bodies(&events),
        vec!["must survive", "after restart"]
    );
    assert_eq!(message_ids(&events), vec![event_id, next]);
    let (status, name) = server
        .get(
            &format!("/rooms/{}/state/m.room.name", enc(&room_id)),
            &token,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(name["name"], "durable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_writes_survives_sigkill() {
    let mut server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", PW).await;
    let (bob_id, bob, _) = server.register("bob", PW).await;
    let room_id = server
        .create_room(&alice, &json!({ "preset": "public_chat" }))
        .await;
    let (status, _) = server.join_raw(&bob, &room_id).await;
    assert_eq!(status, 200);

    let mut ids = Vec::new();
    let mut expected = Vec::new();
    for i in 0..20 {
        let (tok, who) = if i % 3 == 0 {
            (&bob, "b")
        } else {
            (&alice, "a")
        };
        let text = format!("{who} {i}");
        ids.push(
            server
                .send_text(tok, &room_id, &format!("burst{i}"), &text)
                .await,
        );
        expected.push(text);
    }
    let (status, _) = server
        .put(
            &format!("/rooms/{}/state/m.room.topic", enc(&room_id)),
            &alice,
            &json!({ "topic": "last write before the crash" }),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .put(
            "/profile/@bob:localhost/displayname",
            &bob,
            &json!({ "displayname": "Bobby" }),
        )
        .await;
    assert_eq!(status, 200);
    server.kill9();

    server.restart().await;
    let events = messages_back(&server, &alice, &room_id).await;
    assert_eq!(message_bodies(&events), expected);
    assert_eq!(message_ids(&events), ids);
    let (status, topic) = server
        .get(
            &format!("/rooms/{}/state/m.room.topic", enc(&room_id)),
            &bob,
        )
        .await;
    assert_eq!(status, 200, "{topic}");
    assert_eq!(topic["topic"], "last write before the crash");
    let (status, profile) = server
        .get(&format!("/profile/{}/displayname", enc(&bob_id)), &alice)
        .await;
    assert_eq!(status, 200, "{profile}");
    assert_eq!(profile["displayname"], "Bobby");

    // Registration state survived: the name is taken, login works.
    let (status, body) = server.try_register("alice", "other").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errcode"], "M_USER_IN_USE");
    server.login("bob", PW).await;

    // And the room keeps going, with members intact.
    server.send_text(&bob, &room_id, "post", "still here").await;
    let (status, members) = server
        .get(&format!("/rooms/{}/joined_members", enc(&room_id)), &alice)
        .await;
    assert_eq!(status, 200, "{members}");
    assert_eq!(members["joined"].as_object().map(|m| m.len()), Some(2));
}

/// Writes a request on a raw connection and closes the connection `after` it, as a client that
/// gives up (or a phone that loses its network) before the answer.
async fn hang_up_after(server: &TestServer, path: &str, body: &Value, after: std::time::Duration) {
    use tokio::io::AsyncWriteExt;
    let content = body.to_string();
    let host = server.base_url().trim_start_matches("http://").to_owned();
    let request = format!(
        "POST /_matrix/client/v3{path} HTTP/1.1\r\nHost: {host}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{content}",
        content.len()
    );
    let mut conn = tokio::net::TcpStream::connect(&host).await.unwrap();
    conn.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(after).await;
    conn.shutdown().await.unwrap();
}

/// A write runs to its end even when its client hangs up before the answer: the server's
/// handler of a closed connection is dropped, and a write dropped midway would leave it half
/// done (here: a registration whose password hash was still being computed). The client can
/// then learn the outcome by asking again, as it would after any lost answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_completes_when_its_client_hangs_up() {
    let server = TestServer::start().await;
    let mut body = json!({ "username": "carl", "password": PW });
    let (status, first) = server.post_anon("/register", &body).await;
    assert_eq!(status, 401, "{first}");
    body["auth"] = json!({ "type": "m.login.dummy", "session": first["session"] });
    hang_up_after(
        &server,
        "/register",
        &body,
        std::time::Duration::from_millis(20),
    )
    .await;

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, login) = server
            .post_anon(
                "/login",
                &json!({
                    "type": "m.login.password",
                    "identifier": { "type": "m.id.user", "user": "carl" },
                    "password": PW,
                }),
            )
            .await;
        if status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the registration whose client hung up never completed: {status} {login}\n{}",
            server.log_tail(20)
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
