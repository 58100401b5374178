//! Malformed requests, authentication failures, unknown endpoints, body
//! limits and rate limiting, over raw HTTP.

use hearth_conformance::{Method, TestServer, assert_matrix_error, json};

const PW: &str = "s3cret-password";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_json_and_bad_json() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("alice", PW).await;

    // Not JSON at all.
    for body in [
        &b"this is not json"[..],
        b"{\"unterminated\": ",
        b"\xff\xfe",
    ] {
        assert_matrix_error(
            &server
                .request_raw(
                    Method::POST,
                    "/createRoom",
                    Some(&token),
                    "application/json",
                    body.to_vec(),
                )
                .await,
            400,
            "M_NOT_JSON",
        );
    }
    assert_matrix_error(
        &server
            .request_raw(
                Method::POST,
                "/login",
                None,
                "application/json",
                b"not json".to_vec(),
            )
            .await,
        400,
        "M_NOT_JSON",
    );

    // Valid JSON, wrong shape.
    for body in [
        json!({ "invite": "not-a-list" }),
        json!({ "preset": 12 }),
        json!({ "name": ["a", "list"] }),
    ] {
        assert_matrix_error(
            &server.post("/createRoom", &token, &body).await,
            400,
            "M_BAD_JSON",
        );
    }
    // A top-level value that is not an object: the spec's M_BAD_JSON, though
    // Synapse answers M_NOT_JSON ("Content must be a JSON object"); accept
    // either, but it must be a proper 400 Matrix error.
    for body in [json!([1, 2, 3]), json!("a string")] {
        let resp = server.post("/createRoom", &token, &body).await;
        let code = resp.1["errcode"].as_str().unwrap_or_default().to_owned();
        assert!(
            code == "M_BAD_JSON" || code == "M_NOT_JSON",
            "non-object body: {resp:?}"
        );
        assert_matrix_error(&resp, 400, &code);
    }
    let room_id = server.create_room(&token, &json!({})).await;
    // Missing required key / wrong type in /invite.
    let invite = format!("/rooms/{}/invite", hearth_conformance::enc(&room_id));
    for body in [json!({}), json!({ "user_id": 5 })] {
        assert_matrix_error(
            &server.post(&invite, &token, &body).await,
            400,
            "M_BAD_JSON",
        );
    }
    assert_matrix_error(
        &server
            .put(
                "/profile/@alice:localhost/displayname",
                &token,
                &json!({ "displayname": 42 }),
            )
            .await,
        400,
        "M_BAD_JSON",
    );

    // The server is still fine afterwards.
    let (status, _) = server.get("/account/whoami", &token).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_unknown_tokens() {
    let server = TestServer::start().await;
    server.register("alice", PW).await;

    for path in ["/account/whoami", "/joined_rooms", "/sync", "/devices"] {
        assert_matrix_error(
            &server.request(Method::GET, path, None, None).await,
            401,
            "M_MISSING_TOKEN",
        );
        assert_matrix_error(
            &server.get(path, "syt_not_a_real_token").await,
            401,
            "M_UNKNOWN_TOKEN",
        );
    }
    assert_matrix_error(
        &server
            .request(Method::POST, "/createRoom", None, Some(&json!({})))
            .await,
        401,
        "M_MISSING_TOKEN",
    );
    assert_matrix_error(
        &server.post("/createRoom", "bogus", &json!({})).await,
        401,
        "M_UNKNOWN_TOKEN",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_endpoint_and_wrong_method() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("alice", PW).await;

    for path in [
        "/_matrix/client/v3/this/does/not/exist",
        "/_matrix/client/v3/rooms",
    ] {
        assert_matrix_error(&server.get_anon(path).await, 404, "M_UNRECOGNIZED");
        assert_matrix_error(&server.get(path, &token).await, 404, "M_UNRECOGNIZED");
    }

    // Known paths, unsupported methods.
    assert_matrix_error(
        &server.request(Method::DELETE, "/login", None, None).await,
        405,
        "M_UNRECOGNIZED",
    );
    assert_matrix_error(
        &server
            .request(
                Method::POST,
                "/account/whoami",
                Some(&token),
                Some(&json!({})),
            )
            .await,
        405,
        "M_UNRECOGNIZED",
    );
    assert_matrix_error(
        &server
            .request(Method::PUT, "/createRoom", Some(&token), Some(&json!({})))
            .await,
        405,
        "M_UNRECOGNIZED",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_limit_is_rejected() {
    let server = TestServer::builder()
        .env("HEARTH_MAX_REQUEST_BYTES", "1024")
        .start()
        .await;
    // Small requests work.
    let (_, token, _) = server.register("alice", PW).await;
    let room_id = server.create_room(&token, &json!({})).await;
    server.send_text(&token, &room_id, "small", "fits").await;

    // A valid JSON body larger than the limit.
    let big = "x".repeat(4096);
    assert_matrix_error(
        &server
            .put(
                &format!(
                    "/rooms/{}/send/m.room.message/big",
                    hearth_conformance::enc(&room_id)
                ),
                &token,
                &json!({ "msgtype": "m.text", "body": big }),
            )
            .await,
        413,
        "M_TOO_LARGE",
    );
    assert_matrix_error(
        &server
            .post_anon(
                "/login",
                &json!({ "type": "m.login.password", "user": "alice", "password": big }),
            )
            .await,
        413,
        "M_TOO_LARGE",
    );

    // The large message was not stored.
    let (status, msgs) = server
        .get(
            &format!(
                "/rooms/{}/messages?dir=b&limit=20",
                hearth_conformance::enc(&room_id)
            ),
            &token,
        )
        .await;
    assert_eq!(status, 200, "{msgs}");
    assert_eq!(
        hearth_conformance::message_bodies(msgs["chunk"].as_array().unwrap()),
        vec!["fits"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limiter_answers_429() {
    let server = TestServer::builder()
        .env("HEARTH_RATE_LIMIT", "true")
        .env("HEARTH_RATE_LIMIT_PER_SECOND", "1")
        .env("HEARTH_RATE_LIMIT_BURST", "3")
        // The general allowance alone: logins per address have their own (hostile.rs).
        .env("HEARTH_RATE_LIMITS", "login=off, login_account=off")
        .start()
        .await;

    let mut limited = Vec::new();
    let mut other = Vec::new();
    for _ in 0..20 {
        let resp = server.try_login("nobody", "wrong").await;
        if resp.0 == 429 {
            limited.push(resp);
        } else {
            other.push(resp);
        }
    }
    assert!(
        limited.len() >= 10,
        "expected most of a 20-request burst to be rate limited, got {} 429s; others: {other:?}",
        limited.len()
    );
    for resp in &limited {
        assert_matrix_error(resp, 429, "M_LIMIT_EXCEEDED");
        let retry = resp.1["retry_after_ms"].as_u64();
        assert!(
            retry.is_some_and(|ms| ms > 0),
            "429 without a positive retry_after_ms: {}",
            resp.1
        );
    }
    // The requests that were let through were answered normally.
    for resp in &other {
        assert_matrix_error(resp, 403, "M_FORBIDDEN");
    }
    assert!(
        !other.is_empty(),
        "the burst allowance must let some through"
    );

    // After waiting as instructed, requests pass again.
    let wait = limited.last().unwrap().1["retry_after_ms"]
        .as_u64()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(wait.min(5000) + 100)).await;
    assert_matrix_error(
        &server.try_login("nobody", "wrong").await,
        403,
        "M_FORBIDDEN",
    );
}
