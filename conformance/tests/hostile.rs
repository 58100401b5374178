//! What an attacker tries, against the real binary: input that used to kill, stall or bloat the
//! server. Each test reproduces one defect of issue 19 and holds its fix.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hearth_conformance::{Method, TestServer, Value, assert_matrix_error, enc, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

const PW: &str = "s3cret-password";
const WS_PATH: &str = "/_matrix/client/unstable/io.hearth/ws";

/// The server still answers an ordinary request, and its process did not die.
async fn assert_alive(server: &mut TestServer, token: &str) {
    assert!(
        server.is_alive(),
        "the server died:\n{}",
        server.log_tail(30)
    );
    let (status, body) = server.get("/account/whoami", token).await;
    assert_eq!(status, 200, "{body}");
}

fn assert_no_panic(server: &TestServer) {
    let log = server.log_tail(2000);
    assert!(!log.contains("panicked"), "a panic in the log:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_terms_are_not_a_query_language_that_can_overflow_the_stack() {
    let mut server = TestServer::start().await;
    let (_, token, _) = server.register("alice", PW).await;
    let room = server.create_room(&token, &json!({})).await;
    server
        .send_text(&token, &room, "t1", "hot pizza tonight")
        .await;
    let search =
        |term: String| json!({ "search_categories": { "room_events": { "search_term": term } } });
    for term in [
        "(".repeat(1000),
        "(".repeat(100_000),
        format!("{}pizza{}", "(".repeat(5000), ")".repeat(5000)),
        "-".repeat(10_000) + "pizza",
        "\"".repeat(10_001),
        "pizza OR ".repeat(5000),
        "[a TO z] title:x +y -z ~2 ^3 *".into(),
    ] {
        let (status, body) = server.post("/search", &token, &search(term)).await;
        assert_eq!(status, 200, "{body}");
    }
    // Words and phrases still search as before.
    let (_, body) = server
        .post("/search", &token, &search("\"hot pizza\" (tonight".into()))
        .await;
    assert_eq!(
        body["search_categories"]["room_events"]["count"],
        json!(1),
        "{body}"
    );
    assert_alive(&mut server, &token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_body_without_a_type_is_bad_json_not_a_panic() {
    let mut server = TestServer::start().await;
    let (_, token, _) = server.register("alice", PW).await;
    for body in [json!({}), json!({ "a": 1 }), json!({ "type": 5 })] {
        let resp = server.post_anon("/login", &body).await;
        assert_matrix_error(&resp, 400, "M_BAD_JSON");
    }
    assert_alive(&mut server, &token).await;
    assert_no_panic(&server);
}

/// Opens the WebSocket and reads its first frame.
async fn open_socket(
    server: &TestServer,
    token: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>> {
    let base = server.base_url().replace("http://", "ws://");
    let (mut socket, _) = connect_async(format!("{base}{WS_PATH}?access_token={}", enc(token)))
        .await
        .expect("websocket connects");
    let first = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .expect("a first frame")
        .expect("open")
        .expect("frame");
    assert!(first.is_text());
    socket
}

/// The socket ends within a few seconds, after an `M_UNKNOWN_TOKEN` error frame.
async fn assert_socket_ends(
    socket: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut saw_error = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, socket.next()).await {
            Err(_) => panic!("the socket of an ended session stayed open"),
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => break,
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("JSON frame");
                if v["type"] == "error" {
                    assert_eq!(v["errcode"], "M_UNKNOWN_TOKEN", "{v}");
                    saw_error = true;
                }
            }
            Ok(Some(Ok(_))) => {}
        }
    }
    assert!(saw_error, "no error frame before the close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_a_session_closes_its_websocket_and_long_poll() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("alice", PW).await;
    let room = server.create_room(&token, &json!({})).await;

    // Logout: the socket and a long-poll of the same token end at once.
    let mut socket = open_socket(&server, &token).await;
    // Sync until nothing is new, so that the long-poll below has only the logout to end it.
    let (_, first) = server.get("/sync?timeout=0", &token).await;
    let mut since = first["next_batch"].as_str().expect("next_batch").to_owned();
    for _ in 0..10 {
        let (_, next) = server
            .get(&format!("/sync?timeout=200&since={since}"), &token)
            .await;
        let next = next["next_batch"].as_str().expect("next_batch").to_owned();
        if next == since {
            break;
        }
        since = next;
    }
    let poll = {
        let url = format!(
            "{}/_matrix/client/v3/sync?timeout=30000&since={since}",
            server.base_url()
        );
        let token = token.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let resp = reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("long-poll answered");
            (
                started.elapsed(),
                resp.status().as_u16(),
                resp.json::<Value>().await.ok(),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = server.post("/logout", &token, &json!({})).await;
    assert_eq!(status, 200);
    assert_socket_ends(&mut socket).await;
    let (took, status, body) = poll.await.expect("poll task");
    assert_eq!(status, 401, "{body:?}");
    assert_eq!(body.expect("JSON")["errcode"], "M_UNKNOWN_TOKEN");
    assert!(
        took < Duration::from_secs(10),
        "the long-poll ran on for {took:?}"
    );

    // A message sent after the logout reaches no one through the dead socket.
    let (_, other, _) = server.login("alice", PW).await;
    server.send_text(&other, &room, "t1", "after logout").await;

    // Deleting a device, logging out everywhere, and a password change end theirs too.
    let (_, second, second_device) = server.login("alice", PW).await;
    let mut socket = open_socket(&server, &second).await;
    let (status, body) = server
        .request(
            Method::POST,
            "/delete_devices",
            Some(&other),
            Some(&json!({
                "devices": [second_device],
                "auth": { "type": "m.login.password", "password": PW,
                          "identifier": { "type": "m.id.user", "user": "alice" } },
            })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_socket_ends(&mut socket).await;

    let (_, third, _) = server.login("alice", PW).await;
    let mut socket = open_socket(&server, &third).await;
    let (status, body) = server
        .post(
            "/account/password",
            &other,
            &json!({
                "new_password": "another-password",
                "auth": { "type": "m.login.password", "password": PW,
                          "identifier": { "type": "m.id.user", "user": "alice" } },
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_socket_ends(&mut socket).await;

    let mut socket = open_socket(&server, &other).await;
    let (status, _) = server.post("/logout/all", &other, &json!({})).await;
    assert_eq!(status, 200);
    assert_socket_ends(&mut socket).await;
}

/// Posts a chunked body (no Content-Length, so the server learns its size only by reading it)
/// of `len` bytes to `path` over raw HTTP; the status line of the answer.
async fn post_chunked(addr: &str, path: &str, len: usize) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("head");
    let chunk = vec![b' '; 1 << 20];
    let mut sent = 0;
    // The server may answer and close before the whole body is sent.
    while sent < len {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        if s.write_all(&framed).await.is_err() {
            break;
        }
        sent += chunk.len();
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let mut answer = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut answer))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    String::from_utf8_lossy(&answer[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_cannot_make_the_server_hold_large_bodies() {
    let mut server = TestServer::start().await;
    let (_, token, _) = server.register("alice", PW).await;
    let addr = server.base_url().replace("http://", "");

    // A declared size over the limit is refused before the body is read.
    let resp = server
        .request_raw(
            Method::POST,
            "/login",
            None,
            "application/json",
            vec![b' '; 1 << 20],
        )
        .await;
    assert_matrix_error(&resp, 413, "M_TOO_LARGE");

    let before = server.rss_kib();
    let mut sends = Vec::new();
    for _ in 0..16 {
        let addr = addr.clone();
        sends.push(tokio::spawn(async move {
            post_chunked(&addr, "/_matrix/client/v3/login", 48 << 20).await
        }));
    }
    for s in sends {
        let status = s.await.expect("task");
        assert!(status.starts_with("HTTP/1.1 413"), "{status}");
    }
    let after = server.rss_kib();
    eprintln!("RSS under 16 x 48 MB unauthenticated bodies: {before} KiB -> {after} KiB");
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    assert_alive(&mut server, &token).await;
}

/// A PNG of `side` × `side` grey pixels: a few hundred kilobytes that decode to `side`² bytes.
fn bomb_png(side: u32) -> Vec<u8> {
    let image = image::GrayImage::new(side, side);
    let mut out = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("encode PNG");
    out.into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_of_too_many_pixels_is_not_decoded() {
    let mut server = TestServer::start().await;
    let (_, token, _) = server.register("alice", PW).await;
    let png = bomb_png(11_500);
    assert!(
        png.len() < 2 << 20,
        "the bomb is small: {} bytes",
        png.len()
    );
    let (status, body) = server
        .request_raw(
            Method::POST,
            "/_matrix/media/v3/upload",
            Some(&token),
            "image/png",
            png,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mxc = body["content_uri"]
        .as_str()
        .expect("content_uri")
        .to_owned();
    let media_id = mxc.rsplit('/').next().expect("media id").to_owned();

    let before = server.rss_kib();
    let mut asks = Vec::new();
    for size in [32, 96, 320, 640, 800] {
        let url = format!(
            "{}/_matrix/client/v1/media/thumbnail/localhost/{media_id}?width={size}&height={size}",
            server.base_url()
        );
        let token = token.clone();
        asks.push(tokio::spawn(async move {
            let resp = reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("answered");
            (resp.status().as_u16(), resp.json::<Value>().await.ok())
        }));
    }
    for ask in asks {
        let (status, body) = ask.await.expect("task");
        assert_eq!(status, 400, "{body:?}");
        let body = body.expect("JSON error");
        assert!(
            body["error"]
                .as_str()
                .unwrap_or_default()
                .contains("pixels"),
            "{body}"
        );
    }
    let after = server.rss_kib();
    eprintln!("RSS under 5 thumbnails of an 11,500 x 11,500 PNG: {before} KiB -> {after} KiB");
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    assert_alive(&mut server, &token).await;
}

/// Reads until the server closes the connection or `limit` passes; true if it closed.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_one_address_holds_few_connections() {
    let mut server = TestServer::builder()
        .env("HEARTH_HTTP_HEADER_TIMEOUT_SECS", "2")
        .env("HEARTH_HTTP_BODY_TIMEOUT_SECS", "2")
        .env("HEARTH_MAX_CONNECTIONS_PER_IP", "30")
        .start()
        .await;
    let (_, token, _) = server.register("alice", PW).await;
    let addr = server.base_url().replace("http://", "");

    // Slowloris: a head that never ends, a byte every half second.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        s.write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        slow.push(s);
    }
    let started = Instant::now();
    let dripping = tokio::spawn(async move {
        let mut closed = 0;
        while closed < slow.len() && started.elapsed() < Duration::from_secs(20) {
            closed = 0;
            for s in &mut slow {
                if s.write_all(b"X").await.is_err() || closed_within(s, Duration::ZERO).await {
                    closed += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        (closed, started.elapsed())
    });
    let (closed, took) = dripping.await.expect("task");
    assert_eq!(closed, 20, "slow heads still open after {took:?}");

    // A body that stops arriving fails with a Matrix error.
    let mut s = TcpStream::connect(&addr).await.expect("connect");
    s.write_all(
        b"POST /_matrix/client/v3/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"type\":",
    )
    .await
    .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"errcode\""), "{answer}");

    // Past the cap, an address's next connection is closed unanswered.
    let mut held = Vec::new();
    for _ in 0..30 {
        held.push(TcpStream::connect(&addr).await.expect("connect"));
    }
    let mut extra = TcpStream::connect(&addr).await.expect("connect");
    let _ = extra
        .write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert!(closed_within(&mut extra, Duration::from_secs(5)).await);
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_alive(&mut server, &token).await;
}

/// Errors that axum or its extractors used to answer in plain text or with no body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_matrix_json() {
    let mut server = TestServer::start().await;
    let (_, token, _) = server.register("alice", PW).await;
    let (status, body) = server
        .request_raw(
            Method::POST,
            "/_matrix/media/v3/upload",
            Some(&token),
            "application/octet-stream",
            b"0123456789".to_vec(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let media_id = body["content_uri"]
        .as_str()
        .and_then(|m| m.rsplit('/').next())
        .expect("media id")
        .to_owned();
    let http = reqwest::Client::new();
    let base = server.base_url();
    let cases = vec![
        http.get(format!("{base}/_matrix/client/v3/rooms/%FF/state")),
        http.get(format!("{base}/_matrix/client/v3/profile/%FF%FE")),
        http.get(format!("{base}{WS_PATH}")),
        http.get(format!(
            "{base}/_matrix/client/v1/media/download/localhost/{media_id}"
        ))
        .header("range", "bytes=500-600"),
    ];
    for request in cases {
        let resp = request.bearer_auth(&token).send().await.expect("answered");
        let status = resp.status().as_u16();
        let url = resp.url().to_string();
        let text = resp.text().await.expect("body");
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{url}: {status} not JSON: {text:?}"));
        assert!(status >= 400, "{url}: {status} {body}");
        assert!(
            body["errcode"].is_string() && body["error"].is_string(),
            "{url}: {body}"
        );
    }
    // What hyper answers before any of Hearth's code runs: 500 headers, a 1 MB query, a 70 KB
    // path, garbage.
    let addr = base.replace("http://", "");
    let many_headers: String = (0..500).map(|i| format!("X-{i}: a\r\n")).collect();
    for (request, status) in [
        (
            format!("GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n"),
            431,
        ),
        (
            format!(
                "GET /_matrix/client/versions?{} HTTP/1.1\r\nHost: x\r\n\r\n",
                "a".repeat(1 << 20)
            ),
            431,
        ),
        (
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000)),
            414,
        ),
        ("GARBAGE\r\n\r\n".to_owned(), 400),
    ] {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        let _ = s.write_all(request.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{answer}"
        );
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default();
        let body: Value =
            serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {answer}"));
        assert!(body["errcode"].is_string(), "{body}");
    }
    assert_alive(&mut server, &token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upload_cannot_store_thousands_of_one_time_keys() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("alice", PW).await;
    let keys: serde_json::Map<String, Value> = (0..20_000)
        .map(|i| {
            (
                format!("signed_curve25519:K{i}"),
                json!({ "key": "a", "signatures": {} }),
            )
        })
        .collect();
    let resp = server
        .post("/keys/upload", &token, &json!({ "one_time_keys": keys }))
        .await;
    assert_matrix_error(&resp, 400, "M_INVALID_PARAM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_actions_synapse_limits_are_limited_by_default() {
    let server = TestServer::builder()
        .env("HEARTH_RATE_LIMIT", "true")
        // The general allowance out of the way: what is tested here are the actions'.
        .env("HEARTH_RATE_LIMIT_PER_SECOND", "1000")
        .env("HEARTH_RATE_LIMIT_BURST", "1000")
        // Two accounts (two requests each, through UIA), then one more attempt.
        .env(
            "HEARTH_RATE_LIMITS",
            "registration=0.001/4, login=0.001/3, joins=0.001/2",
        )
        .start()
        .await;
    let (_, alice, _) = server.register("alice", PW).await;
    let (_, bob, _) = server.register("bob", PW).await;
    assert_matrix_error(
        &server.try_register("carol", PW).await,
        429,
        "M_LIMIT_EXCEEDED",
    );
    let limited = |resp: &(u16, Value)| {
        assert_matrix_error(resp, 429, "M_LIMIT_EXCEEDED");
        assert!(
            resp.1["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0),
            "{resp:?}"
        );
    };

    // Room creation: Synapse's burst of 10.
    let mut rooms = Vec::new();
    for _ in 0..10 {
        rooms.push(server.create_room(&alice, &json!({})).await);
    }
    limited(&server.post("/createRoom", &alice, &json!({})).await);

    // Messages: a burst of 10, through HTTP and the WebSocket alike.
    for i in 0..10 {
        server
            .send_text(&alice, &rooms[0], &format!("m{i}"), "hi")
            .await;
    }
    limited(
        &server
            .send_text_raw(&alice, &rooms[0], "m10", "one too many")
            .await,
    );
    let mut socket = open_socket(&server, &alice).await;
    futures_util::SinkExt::send(
        &mut socket,
        Message::Text(
            json!({ "type": "send", "request_id": "r1", "room_id": rooms[0],
                    "event_type": "m.room.message", "txn_id": "ws1",
                    "content": { "msgtype": "m.text", "body": "over the socket" } })
            .to_string()
            .into(),
        ),
    )
    .await
    .expect("send frame");
    let reply = loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a reply")
            .expect("open")
            .expect("frame");
        let v: Value = serde_json::from_str(msg.to_text().expect("text")).expect("JSON");
        if v["request_id"] == "r1" {
            break v;
        }
    };
    assert_eq!(reply["errcode"], "M_LIMIT_EXCEEDED", "{reply}");

    // Invites of one user: a burst of 5.
    for room in &rooms[..5] {
        let (status, body) = server
            .post(
                &format!("/rooms/{}/invite", enc(room)),
                &alice,
                &json!({ "user_id": "@bob:localhost" }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    limited(
        &server
            .post(
                &format!("/rooms/{}/invite", enc(&rooms[5])),
                &alice,
                &json!({ "user_id": "@bob:localhost" }),
            )
            .await,
    );

    // Joins, per user (as configured: 2).
    for room in &rooms[..2] {
        let (status, body) = server.join_raw(&bob, room).await;
        assert_eq!(status, 200, "{body}");
    }
    limited(&server.join_raw(&bob, &rooms[2]).await);

    // Logins from one address (as configured: 3).
    for _ in 0..3 {
        let (status, body) = server.try_login("alice", PW).await;
        assert_eq!(status, 200, "{body}");
    }
    limited(&server.try_login("alice", PW).await);
}

/// A barrage of malformed requests of every class across the API: no answer is a 5xx, every
/// error is Matrix JSON, and the server is alive and answering afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_barrage_of_malformed_requests_gets_matrix_errors_only() {
    let mut server = TestServer::builder()
        // No forged origin may make it dial anything on this machine.
        .env("HEARTH_IP_RANGE_DENYLIST", "127.0.0.0/8, ::1/128")
        .start()
        .await;
    let (_, token, _) = server.register("alice", PW).await;
    let room = server.create_room(&token, &json!({})).await;
    let base = server.base_url();
    // No pooled connections: a server may close one after refusing a large body unread, and a
    // request sent on it then would fail on the client's side, not the server's.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");

    let ids = [
        enc(&room),
        "!..%2F..%2Fetc%2Fpasswd:localhost".to_owned(),
        "%00".to_owned(),
        "%FF%FE".to_owned(),
        "a".repeat(5000),
        enc("@😀:localhost"),
        enc("#alias:"),
        enc("$event"),
        "..".to_owned(),
    ];
    let templates = [
        ("GET", "/_matrix/client/v3/rooms/{}/messages"),
        ("GET", "/_matrix/client/v3/rooms/{}/state"),
        ("GET", "/_matrix/client/v3/rooms/{}/members"),
        ("GET", "/_matrix/client/v3/rooms/{}/event/{}"),
        ("GET", "/_matrix/client/v3/rooms/{}/context/{}"),
        ("GET", "/_matrix/client/v1/rooms/{}/relations/{}"),
        ("PUT", "/_matrix/client/v3/rooms/{}/send/m.room.message/{}"),
        ("PUT", "/_matrix/client/v3/rooms/{}/state/m.room.topic/{}"),
        ("POST", "/_matrix/client/v3/rooms/{}/invite"),
        ("POST", "/_matrix/client/v3/join/{}"),
        ("POST", "/_matrix/client/v3/rooms/{}/receipt/m.read/{}"),
        ("PUT", "/_matrix/client/v3/rooms/{}/typing/{}"),
        ("GET", "/_matrix/client/v3/profile/{}"),
        ("PUT", "/_matrix/client/v3/user/{}/account_data/{}"),
        ("GET", "/_matrix/client/v3/directory/room/{}"),
        ("GET", "/_matrix/client/v1/media/download/{}/{}"),
        (
            "GET",
            "/_matrix/client/v1/media/thumbnail/{}/{}?width=a&height=-1",
        ),
        ("POST", "/_matrix/client/v3/createRoom"),
        ("POST", "/_matrix/client/v3/login"),
        ("POST", "/_matrix/client/v3/register"),
        ("POST", "/_matrix/client/v3/search"),
        ("POST", "/_matrix/client/v3/keys/upload"),
        ("POST", "/_matrix/client/v3/keys/query"),
        ("POST", "/_matrix/client/v3/user/{}/filter"),
        (
            "GET",
            "/_matrix/client/v3/sync?filter={}&since={}&timeout=0",
        ),
        (
            "POST",
            "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync",
        ),
        ("PUT", "/_matrix/client/v3/sendToDevice/m.x/{}"),
        ("PUT", "/_matrix/client/v3/pushrules/global/room/{}"),
        ("POST", "/_matrix/client/v3/pushers/set"),
        ("PUT", "/_matrix/federation/v1/send/{}"),
        ("GET", "/_matrix/federation/v1/state/{}?event_id={}"),
        ("GET", "/_matrix/key/v2/query/{}"),
    ];
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let bodies: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"not json".to_vec(),
        b"{\"unterminated\": ".to_vec(),
        b"\xff\xfe\x00".to_vec(),
        b"[1,2,3]".to_vec(),
        b"null".to_vec(),
        deep.into_bytes(),
        b"{\"a\":\"\\ud800\"}".to_vec(),
        json!({ "body": 5, "msgtype": [], "user_id": {}, "type": null, "filter": "x" })
            .to_string()
            .into_bytes(),
        json!({ "search_categories": { "room_events": { "search_term": "(".repeat(2000) } },
                "device_keys": { "@x:y": [[]] }, "timeout": -1, "limit": 1e300 })
        .to_string()
        .into_bytes(),
        format!("{{\"x\":\"{}\"}}", "\u{202e}\u{0}".repeat(50_000)).into_bytes(),
    ];
    let forged = [
        None,
        Some("X-Matrix origin=\"127.0.0.1:1\",key=\"ed25519:a\",sig=\"x\"".to_owned()),
        Some("X-Matrix origin=\"a..b\",key=\"ed25519:a\",sig=\"x\"".to_owned()),
        Some(format!(
            "X-Matrix origin=\"{}\",key=\"rsa:a\",sig=\"x\"",
            "a".repeat(60_000)
        )),
        Some("X-Matrix garbage".to_owned()),
    ];

    let mut tried = 0;
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for (method, template) in templates {
        for (i, body) in bodies.iter().enumerate() {
            let id = &ids[i % ids.len()];
            let path = template.replace("{}", id);
            let method = Method::from_bytes(method.as_bytes()).expect("method");
            let auth = if template.contains("/federation/") || template.contains("/key/") {
                forged[i % forged.len()].clone()
            } else if i % 3 == 0 {
                None
            } else {
                Some(format!("Bearer {token}"))
            };
            let is_get = method == Method::GET;
            let mut request = http
                .request(method, format!("{base}{path}"))
                .header("content-type", "application/json");
            // A server may answer a GET without reading a body (and close on a large one).
            if !is_get {
                request = request.body(body.clone());
            }
            if let Some(a) = auth {
                request = request.header("authorization", a);
            }
            let resp = request.send().await.expect("answered");
            tried += 1;
            let status = resp.status().as_u16();
            *statuses.entry(status).or_default() += 1;
            let text = resp.text().await.expect("body");
            assert!(status < 500, "{template} ({i}): {status} {text}");
            if status >= 400 {
                let v: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|_| panic!("{template} ({i}): {status} not JSON: {text:?}"));
                // A user-interactive auth answer (401 with flows) is the one without errcode.
                let uia = status == 401 && v["flows"].is_array();
                assert!(v["errcode"].is_string() || uia, "{template} ({i}): {v}");
            }
        }
    }
    eprintln!("{tried} malformed requests; statuses: {statuses:?}");
    assert_alive(&mut server, &token).await;
    assert_no_panic(&server);
}
