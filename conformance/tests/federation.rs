//! Federation between two Hearth servers on loopback, over TLS with a test CA: discovery of
//! `localhost:PORT` names, signed (X-Matrix) requests both ways, key fetching, and queries.

mod common;

use std::path::{Path, PathBuf};

use common::{encrypted_room, learns_devices_of, sdk_login, sees_text};
use hearth_conformance::{TestServer, enc, free_port, json};

struct TestCa {
    dir: PathBuf,
}

impl TestCa {
    /// A CA and a certificate for `localhost` and 127.0.0.1 signed by it, as PEM files.
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "hearth-fed-ca-{}-{}",
            std::process::id(),
            hearth_conformance::unique("ca")
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Hearth test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Hearth whose server name is `localhost:<federation port>`.
async fn federating_server(ca: &TestCa) -> (TestServer, String, u16) {
    let port = free_port();
    let name = format!("localhost:{port}");
    let server = TestServer::builder()
        .env("HEARTH_SERVER_NAME", &name)
        .env("HEARTH_FEDERATION_LISTEN", format!("127.0.0.1:{port}"))
        .env("HEARTH_TLS_CERT", ca.path("cert.pem"))
        .env("HEARTH_TLS_KEY", ca.path("key.pem"))
        .env("HEARTH_FEDERATION_CA_FILE", ca.path("ca.pem"))
        .start()
        .await;
    (server, name, port)
}

fn https_client(ca: &Path) -> reqwest::Client {
    let pem = std::fs::read(ca).unwrap();
    reqwest::Client::builder()
        .tls_certs_merge([reqwest::Certificate::from_pem(&pem).unwrap()])
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_on_one_server_reads_a_profile_on_the_other() {
    let ca = TestCa::new();
    let (a, a_name, _) = federating_server(&ca).await;
    let (b, _, _) = federating_server(&ca).await;

    let (alice, alice_tok, _) = a.register("alice", "pw-alice-1").await;
    assert_eq!(alice, format!("@alice:{a_name}"));
    let path = format!("/profile/{}/displayname", enc(&alice));
    let (status, body) = a
        .put(&path, &alice_tok, &json!({ "displayname": "Alice of A" }))
        .await;
    assert_eq!(status, 200, "{body}");

    // Bob asks his own server, which asks A over signed federation.
    let (_, bob_tok, _) = b.register("bob", "pw-bob-1").await;
    let (status, body) = b.get(&format!("/profile/{}", enc(&alice)), &bob_tok).await;
    assert_eq!(status, 200, "{body}\n{}", b.log_tail(20));
    assert_eq!(body["displayname"], "Alice of A");

    let nobody = format!("@nobody:{a_name}");
    let (status, body) = b.get(&format!("/profile/{}", enc(&nobody)), &bob_tok).await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_or_forged_federation_requests_are_refused() {
    let ca = TestCa::new();
    let (a, a_name, a_port) = federating_server(&ca).await;
    let (_b, b_name, _) = federating_server(&ca).await;
    let (alice, _, _) = a.register("alice", "pw-alice-1").await;
    let http = https_client(&ca.dir.join("ca.pem"));
    let url = format!(
        "https://localhost:{a_port}/_matrix/federation/v1/query/profile?user_id={}",
        enc(&alice)
    );

    // The key document is public and signed.
    let keys: serde_json::Value = http
        .get(format!("https://localhost:{a_port}/_matrix/key/v2/server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys["server_name"], a_name.as_str(), "{keys}");
    assert!(keys["signatures"][&a_name].is_object(), "{keys}");

    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errcode"], "M_UNAUTHORIZED", "{body}");

    // A header that is not X-Matrix's grammar (a port that is not a number) is a bad request.
    let malformed = format!(
        "X-Matrix origin=\"localhost:http\",destination=\"{a_name}\",key=\"ed25519:1\",sig=\"{}\"",
        "A".repeat(86)
    );
    let resp = http
        .get(&url)
        .header("Authorization", malformed)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errcode"], "M_UNAUTHORIZED", "{body}");

    // Claims to come from B, with a signature B never made.
    let key_id = "ed25519:forged";
    let forged = format!(
        "X-Matrix origin=\"{b_name}\",destination=\"{a_name}\",key=\"{key_id}\",sig=\"{}\"",
        "A".repeat(86)
    );
    let resp = http
        .get(&url)
        .header("Authorization", forged)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errcode"], "M_UNAUTHORIZED", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_vouches_for_the_keys_of_another() {
    let ca = TestCa::new();
    let (_a, a_name, a_port) = federating_server(&ca).await;
    let (_b, b_name, _) = federating_server(&ca).await;
    let http = https_client(&ca.dir.join("ca.pem"));
    let base = format!("https://localhost:{a_port}/_matrix/key/v2/query");

    let one: serde_json::Value = http
        .get(format!("{base}/{b_name}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let doc = &one["server_keys"][0];
    assert_eq!(doc["server_name"], b_name.as_str(), "{one}");
    assert!(
        doc["signatures"][&b_name].is_object(),
        "B's own signature is kept: {one}"
    );
    assert!(
        doc["signatures"][&a_name].is_object(),
        "A countersigns: {one}"
    );

    // Several at once; a server that cannot be reached is left out.
    let body =
        json!({ "server_keys": { b_name.clone(): {}, a_name.clone(): {}, "localhost:1": {} } });
    let many: serde_json::Value = http
        .post(&base)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut names: Vec<&str> = many["server_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["server_name"].as_str().unwrap())
        .collect();
    names.sort();
    let mut expected = vec![a_name.as_str(), b_name.as_str()];
    expected.sort();
    assert_eq!(names, expected, "{many}");

    // The older form names the key id; one B does not have finds nothing.
    let key_id = doc["verify_keys"]
        .as_object()
        .and_then(|m| m.keys().next().cloned())
        .expect("B has a key");
    for (id, found) in [(key_id.as_str(), 1), ("ed25519:nope", 0)] {
        let by_id: serde_json::Value = http
            .get(format!("{base}/{b_name}/{}", enc(id)))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            by_id["server_keys"].as_array().map(Vec::len),
            Some(found),
            "{id}: {by_id}"
        );
    }
}

/// Syncs `token` on `server` from `since` until `pick` finds something; returns it and moves
/// `since` on.
async fn sync_until<T>(
    server: &TestServer,
    token: &str,
    since: &mut String,
    mut pick: impl FnMut(&serde_json::Value) -> Option<T>,
) -> T {
    for _ in 0..30 {
        let (status, sync) = server
            .get(&format!("/sync?since={since}&timeout=1000"), token)
            .await;
        assert_eq!(status, 200, "{sync}");
        *since = sync["next_batch"].as_str().unwrap().to_owned();
        if let Some(found) = pick(&sync) {
            return found;
        }
    }
    panic!("not seen through /sync: {}", server.log_tail(20));
}

fn bodies(sync: &serde_json::Value, room: &str) -> Vec<String> {
    hearth_conformance::message_bodies(
        sync["rooms"]["join"][room]["timeline"]["events"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default(),
    )
}

/// A room on A that Bob (of B) has joined.
struct Shared {
    room: String,
    ann: String,
    ann_tok: String,
    bob: String,
    bob_tok: String,
}

/// Ann (registered on A) creates a room from `create`; Bob (registered on B) joins it through
/// A's server name.
async fn bob_joins_anns_room(
    (a, a_name): (&TestServer, &str),
    b: &TestServer,
    create: serde_json::Value,
) -> Shared {
    let (ann, ann_tok, _) = a.register("ann", "pw-ann-1").await;
    let (bob, bob_tok, _) = b.register("bob", "pw-bob-1").await;
    let room = a.create_room(&ann_tok, &create).await;
    let (status, body) = b
        .post(
            &format!("/join/{}?server_name={}", enc(&room), enc(a_name)),
            &bob_tok,
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body} {}", b.log_tail(20));
    Shared {
        room,
        ann,
        ann_tok,
        bob,
        bob_tok,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_of_two_servers_share_a_room_and_nothing_is_lost_while_one_is_down() {
    let ca = TestCa::new();
    let (a, a_name, _) = federating_server(&ca).await;
    let (mut b, _, _) = federating_server(&ca).await;
    let Shared {
        room,
        ann_tok,
        bob,
        bob_tok,
        ..
    } = bob_joins_anns_room(
        (&a, &a_name),
        &b,
        json!({ "preset": "public_chat", "name": "two servers" }),
    )
    .await;
    let (_, first) = a.get("/sync?timeout=0", &ann_tok).await;
    let mut ann_since = first["next_batch"].as_str().unwrap().to_owned();
    let (_, first) = b.get("/sync?timeout=0", &bob_tok).await;
    let mut bob_since = first["next_batch"].as_str().unwrap().to_owned();
    assert!(first["rooms"]["join"][&room].is_object(), "{first}");

    // Messages both ways, and typing.
    b.send_text(&bob_tok, &room, "b1", "hi from B").await;
    sync_until(&a, &ann_tok, &mut ann_since, |s| {
        bodies(s, &room)
            .contains(&"hi from B".to_owned())
            .then_some(())
    })
    .await;
    a.send_text(&ann_tok, &room, "a1", "hi from A").await;
    sync_until(&b, &bob_tok, &mut bob_since, |s| {
        bodies(s, &room)
            .contains(&"hi from A".to_owned())
            .then_some(())
    })
    .await;
    let typing = format!("/rooms/{}/typing/{}", enc(&room), enc(&bob));
    let (status, _) = b
        .put(
            &typing,
            &bob_tok,
            &json!({ "typing": true, "timeout": 10000 }),
        )
        .await;
    assert_eq!(status, 200);
    sync_until(&a, &ann_tok, &mut ann_since, |s| {
        s["rooms"]["join"][&room]["ephemeral"]["events"]
            .to_string()
            .contains(&bob)
            .then_some(())
    })
    .await;

    // B goes down; A's messages wait in its outbox and arrive, in order and once, after B
    // comes back.
    b.kill9();
    for i in 0..3 {
        a.send_text(
            &ann_tok,
            &room,
            &format!("d{i}"),
            &format!("while down {i}"),
        )
        .await;
    }
    b.restart().await;
    let mut got: Vec<String> = Vec::new();
    while got.len() < 3 {
        let more = sync_until(&b, &bob_tok, &mut bob_since, |s| {
            let found: Vec<String> = bodies(s, &room)
                .into_iter()
                .filter(|t| t.starts_with("while down"))
                .collect();
            (!found.is_empty()).then_some(found)
        })
        .await;
        got.extend(more);
    }
    assert_eq!(got, vec!["while down 0", "while down 1", "while down 2"]);
    let (status, again) = b
        .get(&format!("/sync?since={bob_since}&timeout=2000"), &bob_tok)
        .await;
    assert_eq!(status, 200);
    assert!(bodies(&again, &room).is_empty(), "nothing twice: {again}");
}

/// A server whose users have all left a room lets no one in through it any more (`make_join`
/// is 404, as Synapse answers), and the joining server passes that refusal on to its client as
/// it came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_everyone_left_cannot_be_joined_through_its_server() {
    let ca = TestCa::new();
    let (a, a_name, _) = federating_server(&ca).await;
    let (b, _, _) = federating_server(&ca).await;
    let (_, ann_tok, _) = a.register("ann", "pw-ann-1").await;
    let (_, bob_tok, _) = b.register("bob", "pw-bob-1").await;
    let room = a
        .create_room(&ann_tok, &json!({ "preset": "public_chat" }))
        .await;
    let (status, body) = a
        .post(
            &format!("/rooms/{}/leave", enc(&room)),
            &ann_tok,
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let join = format!("/join/{}?server_name={}", enc(&room), enc(&a_name));
    let (status, body) = b.post(&join, &bob_tok, &json!({})).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_acl_shuts_a_server_out() {
    let ca = TestCa::new();
    let (a, a_name, _) = federating_server(&ca).await;
    let (b, _, _) = federating_server(&ca).await;
    let (_, ann_tok, _) = a.register("ann", "pw-ann-1").await;
    let (_, bob_tok, _) = b.register("bob", "pw-bob-1").await;
    let (bea, bea_tok, _) = b.register("bea", "pw-bea-1").await;
    let room = a
        .create_room(&ann_tok, &json!({ "preset": "public_chat" }))
        .await;
    let join = format!("/join/{}?server_name={}", enc(&room), enc(&a_name));
    let (status, body) = b.post(&join, &bob_tok, &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let (_, first) = a.get("/sync?timeout=0", &ann_tok).await;
    let mut ann_since = first["next_batch"].as_str().unwrap().to_owned();
    b.send_text(&bob_tok, &room, "b1", "before the acl").await;
    sync_until(&a, &ann_tok, &mut ann_since, |s| {
        bodies(s, &room)
            .contains(&"before the acl".to_owned())
            .then_some(())
    })
    .await;

    // Both test servers are on host "localhost": the ACL denies B (A's own users are local and
    // never checked against it).
    let acl = format!("/rooms/{}/state/m.room.server_acl/", enc(&room));
    let (status, body) = a
        .put(
            &acl,
            &ann_tok,
            &json!({ "allow": ["*"], "deny": ["localhost"], "allow_ip_literals": false }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    b.send_text(&bob_tok, &room, "b2", "after the acl").await;
    for _ in 0..3 {
        let (_, sync) = a
            .get(&format!("/sync?since={ann_since}&timeout=1000"), &ann_tok)
            .await;
        assert!(
            !bodies(&sync, &room).contains(&"after the acl".to_owned()),
            "a denied server's event entered the room: {sync}"
        );
        ann_since = sync["next_batch"].as_str().unwrap().to_owned();
    }
    // B is still in the room in its own view, so another of its users joins there; A refuses
    // that join like any other event of B's.
    let (status, _) = b.post(&join, &bea_tok, &json!({})).await;
    assert_eq!(status, 200);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let (_, members) = a
        .get(&format!("/rooms/{}/joined_members", enc(&room)), &ann_tok)
        .await;
    assert!(members["joined"][&bea].is_null(), "{members}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_room_works_across_two_servers() {
    use matrix_sdk::ruma::api::client::room::create_room::v3::RoomPreset;
    use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;

    let ca = TestCa::new();
    let (a, a_name, _) = federating_server(&ca).await;
    let (b, _, _) = federating_server(&ca).await;
    let (ann_id, _, _) = a.register("ann", "pw-ann-1").await;
    let (bob_id, _, _) = b.register("bob", "pw-bob-1").await;
    let ann = sdk_login(&a.base_url(), "ann", "pw-ann-1").await;
    let bob = sdk_login(&b.base_url(), "bob", "pw-bob-1").await;

    let mut request = encrypted_room();
    request.preset = Some(RoomPreset::PublicChat);
    let room_id = ann
        .create_room(request)
        .await
        .expect("create")
        .room_id()
        .to_owned();
    let server_a = matrix_sdk::ruma::OwnedServerName::try_from(a_name.as_str()).unwrap();
    bob.join_room_by_id_or_alias(
        <&matrix_sdk::ruma::RoomOrAliasId>::from(&*room_id),
        &[server_a],
    )
    .await
    .expect("bob joins over federation");
    common::sync(&bob).await;

    // Each server answers for its own users' keys, through the other.
    let (_, q) = b
        .post(
            "/keys/query",
            &bob.access_token().unwrap(),
            &json!({ "device_keys": { &ann_id: [] } }),
        )
        .await;
    let ann_device = ann.device_id().unwrap().to_string();
    assert!(q["device_keys"][&ann_id][&ann_device].is_object(), "{q}");

    // Bob's device news reaches ann's sync by an EDU; then messages decrypt both ways
    // (one-time keys claimed and room keys sent to-device across servers).
    let bob_user = matrix_sdk::ruma::OwnedUserId::try_from(bob_id.as_str()).unwrap();
    learns_devices_of(&ann, &bob_user, 30).await;
    ann.get_room(&room_id)
        .unwrap()
        .send(RoomMessageEventContent::text_plain(
            "across servers, encrypted",
        ))
        .await
        .expect("ann sends");
    sees_text(
        &bob,
        &room_id,
        "across servers, encrypted",
        std::time::Duration::from_secs(30),
    )
    .await;
    bob.get_room(&room_id)
        .unwrap()
        .send(RoomMessageEventContent::text_plain("and back again"))
        .await
        .expect("bob replies");
    sees_text(
        &ann,
        &room_id,
        "and back again",
        std::time::Duration::from_secs(30),
    )
    .await;

    // A new device of bob's shows up in ann's device list changes through B's EDU.
    let (_, ann_first) = a.get("/sync?timeout=0", &ann.access_token().unwrap()).await;
    let mut since = ann_first["next_batch"].as_str().unwrap().to_owned();
    let bob2 = sdk_login(&b.base_url(), "bob", "pw-bob-1").await;
    common::sync(&bob2).await;
    sync_until(&a, &ann.access_token().unwrap(), &mut since, |s| {
        s["device_lists"]["changed"]
            .as_array()
            .is_some_and(|c| c.iter().any(|u| u == &json!(bob_id)))
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_of_one_server_reaches_users_of_the_other() {
    let ca = TestCa::new();
    let (a, a_name, _) = federating_server(&ca).await;
    let (b, _, _) = federating_server(&ca).await;
    let (_, ann_tok, _) = a.register("ann", "pw-ann-1").await;
    let (_, bob_tok, _) = b.register("bob", "pw-bob-1").await;
    let data: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i ^ (i >> 9)) as u8)
        .collect();
    let (status, up) = a
        .request_raw(
            hearth_conformance::Method::POST,
            "/_matrix/media/v3/upload?filename=notes.bin",
            Some(&ann_tok),
            "application/octet-stream",
            data.clone(),
        )
        .await;
    assert_eq!(status, 200, "{up}");
    let id = up["content_uri"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();

    // Bob asks his own server, which fetches the file from A over federation and keeps it.
    let url = format!(
        "{}/_matrix/client/v1/media/download/{a_name}/{id}",
        b.base_url()
    );
    let http = reqwest::Client::new();
    for round in 0..2 {
        let resp = http.get(&url).bearer_auth(&bob_tok).send().await.unwrap();
        assert_eq!(resp.status(), 200, "round {round}: {}", b.log_tail(10));
        assert_eq!(
            resp.headers()["content-disposition"],
            "attachment; filename*=utf-8''notes.bin"
        );
        let got = resp.bytes().await.unwrap();
        assert!(
            got[..] == data[..],
            "round {round}: the bytes arrive intact"
        );
    }
    let resp = http
        .get(format!(
            "{}/_matrix/client/v1/media/download/{a_name}/nosuchmedia",
            b.base_url()
        ))
        .bearer_auth(&bob_tok)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_and_room_lists_reach_across_servers() {
    let ca = TestCa::new();
    let (a, a_name, _) = federating_server(&ca).await;
    let (b, _, _) = federating_server(&ca).await;
    let (_, ann_tok, _) = a.register("ann", "pw-ann-1").await;
    let (_, bob_tok, _) = b.register("bob", "pw-bob-1").await;
    let room = a
        .create_room(
            &ann_tok,
            &json!({
                "preset": "public_chat", "visibility": "public",
                "name": "The Lounge", "room_alias_name": "lounge",
            }),
        )
        .await;
    let alias = format!("#lounge:{a_name}");

    // Bob's server asks A for A's alias.
    let (status, found) = b
        .get(&format!("/directory/room/{}", enc(&alias)), &bob_tok)
        .await;
    assert_eq!(status, 200, "{found} {}", b.log_tail(20));
    assert_eq!(found["room_id"], room);
    assert_eq!(found["servers"], json!([a_name]));
    let missing = format!("#nowhere:{a_name}");
    let (status, body) = b
        .get(&format!("/directory/room/{}", enc(&missing)), &bob_tok)
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");

    // And joins by it.
    let (status, body) = b
        .post(&format!("/join/{}", enc(&alias)), &bob_tok, &json!({}))
        .await;
    assert_eq!(status, 200, "{body} {}", b.log_tail(20));
    assert_eq!(body["room_id"], room);

    // A's room list, asked through B, plain and filtered.
    let (status, list) = b
        .get(&format!("/publicRooms?server={}", enc(&a_name)), &bob_tok)
        .await;
    assert_eq!(status, 200, "{list} {}", b.log_tail(20));
    let chunk = list["chunk"].as_array().unwrap();
    assert_eq!(chunk.len(), 1, "{list}");
    assert_eq!(chunk[0]["room_id"], room);
    assert_eq!(chunk[0]["name"], "The Lounge");
    assert_eq!(chunk[0]["canonical_alias"], alias.as_str());
    assert_eq!(chunk[0]["num_joined_members"], 2);
    for (term, expected) in [("lounge", 1), ("kitchen", 0)] {
        let (status, list) = b
            .post(
                &format!("/publicRooms?server={}", enc(&a_name)),
                &bob_tok,
                &json!({ "filter": { "generic_search_term": term } }),
            )
            .await;
        assert_eq!(status, 200, "{list}");
        assert_eq!(
            list["chunk"].as_array().unwrap().len(),
            expected,
            "{term}: {list}"
        );
    }
}

/// An invite from a server that is down can still be turned down: the invitee's server keeps
/// a leave of its own making (Synapse's out-of-band leave), and the invitee's `/sync` shows the
/// room left with that leave event, as it shows a leave the inviting server took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_from_a_server_that_is_down_is_turned_down_here() {
    let ca = TestCa::new();
    let (mut a, _, _) = federating_server(&ca).await;
    let (b, _, _) = federating_server(&ca).await;
    let (_, ann_tok, _) = a.register("ann", "pw-ann-1").await;
    let (carol, carol_tok, _) = b.register("carol", "pw-carol-1").await;
    let (_, first) = b.get("/sync?timeout=0", &carol_tok).await;
    let mut carol_since = first["next_batch"].as_str().unwrap().to_owned();
    for (version, down) in [("10", false), ("1", true), ("10", true)] {
        let room = a
            .create_room(&ann_tok, &json!({ "room_version": version }))
            .await;
        let (status, body) = a
            .post(
                &format!("/rooms/{}/invite", enc(&room)),
                &ann_tok,
                &json!({ "user_id": carol }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        sync_until(&b, &carol_tok, &mut carol_since, |s| {
            s["rooms"]["invite"][&room].as_object().cloned()
        })
        .await;
        if down {
            a.kill9();
        }
        let (status, body) = b
            .post(
                &format!("/rooms/{}/leave", enc(&room)),
                &carol_tok,
                &json!({}),
            )
            .await;
        assert_eq!(status, 200, "v{version} down={down}: {body}");
        let left = sync_until(&b, &carol_tok, &mut carol_since, |s| {
            s["rooms"]["leave"][&room].as_object().cloned()
        })
        .await;
        let event = &left["timeline"]["events"][0];
        assert_eq!(event["type"], "m.room.member", "{left:?}");
        assert_eq!(event["sender"], carol.as_str(), "{left:?}");
        assert_eq!(event["state_key"], carol.as_str(), "{left:?}");
        assert_eq!(event["content"]["membership"], "leave", "{left:?}");
        let (_, full) = b.get("/sync?timeout=0", &carol_tok).await;
        assert!(full["rooms"]["invite"][&room].is_null(), "{full}");
        if down {
            a.restart().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_cross_servers_and_can_be_accepted_or_turned_down() {
    let ca = TestCa::new();
    let (a, _, _) = federating_server(&ca).await;
    let (b, b_name, _) = federating_server(&ca).await;
    let (_, ann_tok, _) = a.register("ann", "pw-ann-1").await;
    let (bob, bob_tok, _) = b.register("bob", "pw-bob-1").await;
    let (carol, carol_tok, _) = b.register("carol", "pw-carol-1").await;
    let (_, first) = b.get("/sync?timeout=0", &bob_tok).await;
    let mut bob_since = first["next_batch"].as_str().unwrap().to_owned();
    let (_, first) = b.get("/sync?timeout=0", &carol_tok).await;
    let mut carol_since = first["next_batch"].as_str().unwrap().to_owned();

    // A direct chat with a user of the other server, as Element starts one.
    let dm = a
        .create_room(
            &ann_tok,
            &json!({
                "preset": "trusted_private_chat", "is_direct": true,
                "invite": [bob], "name": "Ann and Bob",
            }),
        )
        .await;
    let invite_state = sync_until(&b, &bob_tok, &mut bob_since, |s| {
        s["rooms"]["invite"][&dm]["invite_state"]["events"]
            .as_array()
            .cloned()
    })
    .await;
    let kinds: Vec<&str> = invite_state
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert!(kinds.contains(&"m.room.name"), "{invite_state:?}");
    let invite = invite_state
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == bob)
        .unwrap_or_else(|| panic!("no invite event in {invite_state:?}"));
    assert_eq!(invite["content"]["membership"], "invite");
    assert_eq!(invite["content"]["is_direct"], true);
    let name = invite_state
        .iter()
        .find(|e| e["type"] == "m.room.name")
        .unwrap();
    assert_eq!(name["content"]["name"], "Ann and Bob");
    // Ann's server has Bob invited.
    let (_, member) = a
        .get(
            &format!("/rooms/{}/state/m.room.member/{}", enc(&dm), enc(&bob)),
            &ann_tok,
        )
        .await;
    assert_eq!(
        member["membership"],
        "invite",
        "{member} {}",
        a.log_tail(30)
    );

    // Bob accepts (no server named: his server joins through the inviting one) and they talk.
    let (status, body) = b
        .post(&format!("/rooms/{}/join", enc(&dm)), &bob_tok, &json!({}))
        .await;
    assert_eq!(status, 200, "{body} {}", b.log_tail(20));
    b.send_text(&bob_tok, &dm, "t1", "hello Ann").await;
    let (_, first) = a.get("/sync?timeout=0", &ann_tok).await;
    let mut ann_since = first["next_batch"].as_str().unwrap().to_owned();
    let seen = bodies(&first, &dm).contains(&"hello Ann".to_owned())
        || sync_until(&a, &ann_tok, &mut ann_since, |s| {
            bodies(s, &dm)
                .contains(&"hello Ann".to_owned())
                .then_some(true)
        })
        .await;
    assert!(seen);

    // Carol turns an invite down; it leaves her invites.
    let room = a
        .create_room(&ann_tok, &json!({ "name": "Book club" }))
        .await;
    let (status, body) = a
        .post(
            &format!("/rooms/{}/invite", enc(&room)),
            &ann_tok,
            &json!({ "user_id": carol }),
        )
        .await;
    assert_eq!(status, 200, "{body} {}", a.log_tail(20));
    sync_until(&b, &carol_tok, &mut carol_since, |s| {
        s["rooms"]["invite"][&room].as_object().cloned()
    })
    .await;
    let (status, body) = b
        .post(
            &format!("/rooms/{}/leave", enc(&room)),
            &carol_tok,
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    sync_until(&b, &carol_tok, &mut carol_since, |s| {
        s["rooms"]["leave"][&room].as_object().cloned()
    })
    .await;
    let (_, full) = b.get("/sync?timeout=0", &carol_tok).await;
    assert!(full["rooms"]["invite"][&room].is_null(), "{full}");
    // The inviting server was told (make_leave, send_leave): Carol is no longer invited there.
    let (_, member) = a
        .get(
            &format!("/rooms/{}/state/m.room.member/{}", enc(&room), enc(&carol)),
            &ann_tok,
        )
        .await;
    assert_eq!(member["membership"], "leave", "{member} {}", a.log_tail(20));

    // Inviting someone the other server does not know fails.
    let nobody = format!("@nobody:{b_name}");
    let (status, body) = a
        .post(
            &format!("/rooms/{}/invite", enc(&room)),
            &ann_tok,
            &json!({ "user_id": nobody }),
        )
        .await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knocks_cross_servers() {
    let ca = TestCa::new();
    let (a, a_name, _) = federating_server(&ca).await;
    let (b, _, _) = federating_server(&ca).await;
    let (_, ann_tok, _) = a.register("ann", "pw-ann-1").await;
    let (bob, bob_tok, _) = b.register("bob", "pw-bob-1").await;
    let (_, first) = b.get("/sync?timeout=0", &bob_tok).await;
    let mut bob_since = first["next_batch"].as_str().unwrap().to_owned();
    let room = a
        .create_room(
            &ann_tok,
            &json!({
                "name": "By the door",
                "initial_state": [{
                    "type": "m.room.join_rules", "state_key": "",
                    "content": { "join_rule": "knock" },
                }],
            }),
        )
        .await;

    // Bob knocks through A (make_knock, send_knock) and his sync shows the knock.
    let (status, body) = b
        .post(
            &format!("/knock/{}?via={}", enc(&room), enc(&a_name)),
            &bob_tok,
            &json!({ "reason": "let me in" }),
        )
        .await;
    assert_eq!(status, 200, "{body} {}", b.log_tail(20));
    let knock_state = sync_until(&b, &bob_tok, &mut bob_since, |s| {
        s["rooms"]["knock"][&room]["knock_state"]["events"]
            .as_array()
            .cloned()
    })
    .await;
    assert!(
        knock_state
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "By the door"),
        "{knock_state:?}"
    );
    assert!(
        knock_state.iter().any(|e| e["type"] == "m.room.member"
            && e["state_key"] == bob
            && e["content"]["membership"] == "knock"),
        "{knock_state:?}"
    );
    let (_, member) = a
        .get(
            &format!("/rooms/{}/state/m.room.member/{}", enc(&room), enc(&bob)),
            &ann_tok,
        )
        .await;
    assert_eq!(member["membership"], "knock", "{member}");
    assert_eq!(member["reason"], "let me in");

    // Ann lets him in: an invite across servers, then Bob joins.
    let (status, body) = a
        .post(
            &format!("/rooms/{}/invite", enc(&room)),
            &ann_tok,
            &json!({ "user_id": bob }),
        )
        .await;
    assert_eq!(status, 200, "{body} {}", a.log_tail(20));
    sync_until(&b, &bob_tok, &mut bob_since, |s| {
        s["rooms"]["invite"][&room].as_object().cloned()
    })
    .await;
    let (status, body) = b
        .post(&format!("/rooms/{}/join", enc(&room)), &bob_tok, &json!({}))
        .await;
    assert_eq!(status, 200, "{body} {}", b.log_tail(20));
    let (_, member) = a
        .get(
            &format!("/rooms/{}/state/m.room.member/{}", enc(&room), enc(&bob)),
            &ann_tok,
        )
        .await;
    assert_eq!(member["membership"], "join", "{member}");
}

/// The current `m.room.name` of a room on a server, as its user sees it.
async fn room_name(server: &TestServer, token: &str, room: &str) -> Option<String> {
    let (_, body) = server
        .get(&format!("/rooms/{}/state/m.room.name/", enc(room)), token)
        .await;
    body["name"].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_conflict_resolves_the_same_on_both_servers() {
    state_conflict_resolves_the_same_on_both_servers("11").await;
}

/// Room version 1 resolves state by its own algorithm (state resolution v1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_conflict_in_a_version_1_room_resolves_the_same_on_both_servers() {
    state_conflict_resolves_the_same_on_both_servers("1").await;
}

async fn state_conflict_resolves_the_same_on_both_servers(version: &str) {
    let ca = TestCa::new();
    let (mut a, a_name, _) = federating_server(&ca).await;
    let (mut b, _, _) = federating_server(&ca).await;
    let Shared {
        room,
        ann_tok,
        bob,
        bob_tok,
        ..
    } = bob_joins_anns_room(
        (&a, &a_name),
        &b,
        json!({ "preset": "public_chat", "name": "first name", "room_version": version }),
    )
    .await;
    // Bob may rename the room too.
    let (_, mut pl) = a
        .get(
            &format!("/rooms/{}/state/m.room.power_levels/", enc(&room)),
            &ann_tok,
        )
        .await;
    pl["users"][&bob] = json!(100);
    let (status, _) = a
        .put(
            &format!("/rooms/{}/state/m.room.power_levels/", enc(&room)),
            &ann_tok,
            &pl,
        )
        .await;
    assert_eq!(status, 200);
    let mut promoted = false;
    for _ in 0..100 {
        // Read from the timeline, which shows only what is durable (the current state may
        // show an event still on its way to the disk, which a kill -9 would lose).
        let (_, page) = b
            .get(
                &format!("/rooms/{}/messages?dir=b&limit=20", enc(&room)),
                &bob_tok,
            )
            .await;
        let durable = page["chunk"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["type"] == "m.room.power_levels" && e["content"]["users"][&bob] == 100);
        if durable {
            promoted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(promoted, "B never saw Bob promoted: {}", b.log_tail(20));

    // Each renames the room while the other server is down: the graph forks.
    b.kill9();
    let rename = |name: &str| json!({ "name": name });
    let path = format!("/rooms/{}/state/m.room.name/", enc(&room));
    let (status, _) = a.put(&path, &ann_tok, &rename("Ann's name")).await;
    assert_eq!(status, 200);
    a.kill9();
    b.restart().await;
    let (_, bob_tok, _) = b.login("bob", "pw-bob-1").await;
    let (status, body) = b.put(&path, &bob_tok, &rename("Bob's name")).await;
    assert_eq!(status, 200, "{body} {}", b.log_tail(30));
    a.restart().await;
    let (_, ann_tok, _) = a.login("ann", "pw-ann-1").await;

    // Both outboxes deliver; each server resolves the fork, and they agree.
    let mut agreed = None;
    let mut last = String::new();
    for _ in 0..100 {
        let on_a = room_name(&a, &ann_tok, &room).await;
        let on_b = room_name(&b, &bob_tok, &room).await;
        let a_has_bobs = a_has_event_named(&a, &ann_tok, &room, "Bob's name").await;
        let b_has_anns = a_has_event_named(&b, &bob_tok, &room, "Ann's name").await;
        last =
            format!("A: {on_a:?} (has Bob's: {a_has_bobs}), B: {on_b:?} (has Ann's: {b_has_anns})");
        if a_has_bobs && b_has_anns && on_a == on_b {
            agreed = on_a;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let agreed = agreed.unwrap_or_else(|| {
        panic!(
            "the servers never agreed on the room's name: {last}\nA: {}\nB: {}",
            a.log_tail(20),
            b.log_tail(20)
        )
    });
    assert!(agreed == "Ann's name" || agreed == "Bob's name", "{agreed}");
}

/// Rooms of every stable version work across two servers: a user of B joins a room of A, both
/// send, both read, and B's user pages back through the history from before the join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_of_every_version_work_across_two_servers() {
    let ca = TestCa::new();
    let (a, a_name, _) = federating_server(&ca).await;
    let (b, _, _) = federating_server(&ca).await;
    let (_, ann_tok, _) = a.register("ann", "pw-ann-1").await;
    let (_, bob_tok, _) = b.register("bob", "pw-bob-1").await;
    for version in [
        "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12",
    ] {
        let room = a
            .create_room(
                &ann_tok,
                &json!({ "preset": "public_chat", "room_version": version }),
            )
            .await;
        a.send_text(&ann_tok, &room, &format!("early{version}"), "before bob")
            .await;
        let (status, body) = b
            .post(
                &format!("/join/{}?server_name={}", enc(&room), enc(&a_name)),
                &bob_tok,
                &json!({}),
            )
            .await;
        assert_eq!(status, 200, "v{version}: {body} {}", b.log_tail(20));
        let (_, first) = a.get("/sync?timeout=0", &ann_tok).await;
        let mut ann_since = first["next_batch"].as_str().unwrap().to_owned();
        let (_, first) = b.get("/sync?timeout=0", &bob_tok).await;
        let mut bob_since = first["next_batch"].as_str().unwrap().to_owned();

        b.send_text(&bob_tok, &room, &format!("b{version}"), "hi from B")
            .await;
        sync_until(&a, &ann_tok, &mut ann_since, |s| {
            bodies(s, &room)
                .contains(&"hi from B".to_owned())
                .then_some(())
        })
        .await;
        a.send_text(&ann_tok, &room, &format!("a{version}"), "hi from A")
            .await;
        sync_until(&b, &bob_tok, &mut bob_since, |s| {
            bodies(s, &room)
                .contains(&"hi from A".to_owned())
                .then_some(())
        })
        .await;
        let (events, _) = b.page_back_all(&bob_tok, &room, 10).await;
        let texts = hearth_conformance::message_bodies(&events);
        assert!(
            texts.contains(&"before bob".to_owned()),
            "v{version}: {texts:?} {}",
            b.log_tail(20)
        );
    }
}

/// Whether a server's timeline of the room has a rename to `name`.
async fn a_has_event_named(server: &TestServer, token: &str, room: &str, name: &str) -> bool {
    let (_, page) = server
        .get(
            &format!("/rooms/{}/messages?dir=b&limit=50", enc(room)),
            token,
        )
        .await;
    page["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_signing_key_is_published_and_peers_follow_it() {
    let ca = TestCa::new();
    let (mut a, a_name, a_port) = federating_server(&ca).await;
    let (b, _, _) = federating_server(&ca).await;
    let (_, ann_tok, _) = a.register("ann", "pw-ann-1").await;
    let (bob, _, _) = b.register("bob", "pw-bob-1").await;
    let http = https_client(&ca.dir.join("ca.pem"));
    let key_doc = || async {
        http.get(format!("https://127.0.0.1:{a_port}/_matrix/key/v2/server"))
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    let before = key_doc().await;
    let old_id = before["verify_keys"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    // B learns A's current key by checking a request A signs.
    let profile = format!("/profile/{}", enc(&bob));
    let (status, body) = a.get(&profile, &ann_tok).await;
    assert_eq!(status, 200, "{body}");

    a.kill9();
    let out = a.run_command(&["rotate-key"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    a.restart().await;
    let after = key_doc().await;
    let new_ids: Vec<&String> = after["verify_keys"].as_object().unwrap().keys().collect();
    assert_eq!(new_ids.len(), 1, "{after}");
    assert_ne!(*new_ids[0], old_id, "{after}");
    let old = &after["old_verify_keys"][&old_id];
    assert_eq!(old["key"], before["verify_keys"][&old_id]["key"], "{after}");
    assert!(old["expired_ts"].as_u64().is_some(), "{after}");
    assert!(
        after["signatures"][&a_name][new_ids[0]].is_string(),
        "{after}"
    );

    // A signs with the new key; B, which cached the old one, fetches A's keys again.
    let (_, ann_tok, _) = a.login("ann", "pw-ann-1").await;
    let (status, body) = a.get(&profile, &ann_tok).await;
    assert_eq!(status, 200, "{body} {}", b.log_tail(20));
}

/// The signing key of a Hearth under test, read from its data directory: the test plays that
/// server to send events it made up.
fn server_key(server: &TestServer) -> ruma::signatures::Ed25519KeyPair {
    use base64::Engine;
    let text = std::fs::read_to_string(server.data_dir().join("signing.key")).unwrap();
    let parts: Vec<&str> = text.split_whitespace().collect();
    let der = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(parts[2].trim_end_matches('='))
        .unwrap();
    ruma::signatures::Ed25519KeyPair::from_der(&der, parts[1].to_owned()).unwrap()
}

/// `PUT /send/{txn}` to `to` as server `origin`, signed with `key`.
async fn send_as(
    http: &reqwest::Client,
    key: &ruma::signatures::Ed25519KeyPair,
    origin: &str,
    to: &str,
    to_port: u16,
    txn: &str,
    pdus: Vec<serde_json::Value>,
) -> serde_json::Value {
    let uri = format!("/_matrix/federation/v1/send/{txn}");
    let content = json!({
        "origin": origin,
        "origin_server_ts": 1_700_000_000_000u64,
        "pdus": pdus,
    });
    let (_, body) = request_as(http, key, origin, (to, to_port), "PUT", &uri, Some(content)).await;
    body
}

/// A federation request to `to` as server `origin`, signed with `key`: status and JSON body.
async fn request_as(
    http: &reqwest::Client,
    key: &ruma::signatures::Ed25519KeyPair,
    origin: &str,
    (to, to_port): (&str, u16),
    method: &str,
    uri: &str,
    content: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut request = json!({
        "method": method, "uri": uri, "origin": origin, "destination": to,
    });
    if let Some(c) = &content {
        request["content"] = c.clone();
    }
    let ruma::CanonicalJsonValue::Object(mut obj) =
        ruma::CanonicalJsonValue::try_from(request).unwrap()
    else {
        unreachable!()
    };
    ruma::signatures::sign_json(origin, key, &mut obj).unwrap();
    let key_id = format!("ed25519:{}", key.version());
    let sig = obj["signatures"].as_object().unwrap()[origin]
        .as_object()
        .unwrap()[&key_id]
        .as_str()
        .unwrap()
        .to_owned();
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = http
        .request(method, format!("https://127.0.0.1:{to_port}{uri}"))
        .header(
            "Authorization",
            format!(
                "X-Matrix origin=\"{origin}\",destination=\"{to}\",key=\"{key_id}\",sig=\"{sig}\""
            ),
        );
    if let Some(c) = &content {
        req = req.json(c);
    }
    let response = req.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_events_do_not_enter_a_room() {
    let ca = TestCa::new();
    let (a, a_name, _) = federating_server(&ca).await;
    let (b, b_name, b_port) = federating_server(&ca).await;
    // Version 11: the events below are made by hand with that version's auth events (the
    // create event among them, which version 12 leaves out).
    let Shared {
        room, ann, bob_tok, ..
    } = bob_joins_anns_room(
        (&a, &a_name),
        &b,
        json!({ "preset": "public_chat", "room_version": "11" }),
    )
    .await;

    // What B knows of the room: the auth events and the newest event to build on.
    let (_, state) = b
        .get(&format!("/rooms/{}/state", enc(&room)), &bob_tok)
        .await;
    let id_of = |kind: &str, key: &str| {
        state
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"] == kind && e["state_key"] == key)
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .unwrap()
    };
    let (_, latest) = b
        .get(
            &format!("/rooms/{}/messages?dir=b&limit=1", enc(&room)),
            &bob_tok,
        )
        .await;
    let prev = latest["chunk"][0]["event_id"].as_str().unwrap().to_owned();
    let key = server_key(&a);
    let rules = ruma::RoomVersionId::V11.rules().unwrap();
    let event = |sender: &str, body: &str, ts: u64, prev: &str| {
        let mut auth = vec![id_of("m.room.create", ""), id_of("m.room.power_levels", "")];
        if sender == ann {
            auth.push(id_of("m.room.member", &ann));
        }
        let pdu = json!({
            "room_id": room, "sender": sender, "type": "m.room.message",
            "content": { "msgtype": "m.text", "body": body },
            "origin_server_ts": ts, "depth": 1000,
            "prev_events": [prev], "auth_events": auth,
        });
        let ruma::CanonicalJsonValue::Object(obj) =
            ruma::CanonicalJsonValue::try_from(pdu).unwrap()
        else {
            unreachable!()
        };
        obj
    };
    let sign = |mut obj: ruma::CanonicalJsonObject, with: &ruma::signatures::Ed25519KeyPair| {
        ruma::signatures::hash_and_sign_event(&a_name, with, &mut obj, &rules.redaction).unwrap();
        obj
    };

    // A genuine event, to show the path works.
    let genuine = sign(event(&ann, "genuine", 1, &prev), &key);
    let genuine_id = format!(
        "${}",
        ruma::signatures::reference_hash(&genuine, &rules).unwrap()
    );
    // Signed with a key A never had, under A's key id.
    let doc = ruma::signatures::Ed25519KeyPair::generate();
    let impostor =
        ruma::signatures::Ed25519KeyPair::from_der(&doc, key.version().to_owned()).unwrap();
    let bad_signature = sign(event(&ann, "forged signature", 2, &prev), &impostor);
    // Signed, then changed: the content hash no longer matches.
    let mut bad_hash = sign(event(&ann, "original", 3, &prev), &key);
    if let Some(ruma::CanonicalJsonValue::Object(c)) = bad_hash.get_mut("content") {
        c.insert(
            "body".into(),
            ruma::CanonicalJsonValue::String("tampered".into()),
        );
    }
    // Properly signed, but by a user of A who is not in the room: the auth rules refuse it.
    let outsider = sign(
        event(&format!("@mallory:{a_name}"), "outsider", 4, &prev),
        &key,
    );
    let outsider_id = format!(
        "${}",
        ruma::signatures::reference_hash(&outsider, &rules).unwrap()
    );

    let pdus = [genuine, bad_signature, bad_hash, outsider]
        .into_iter()
        .map(|o| serde_json::to_value(o).unwrap())
        .collect();
    let http = https_client(&ca.dir.join("ca.pem"));
    let answer = send_as(&http, &key, &a_name, &b_name, b_port, "forged1", pdus).await;
    let results = answer["pdus"]
        .as_object()
        .unwrap_or_else(|| panic!("{answer}"));
    let errors = results
        .values()
        .filter(|r| r.get("error").is_some())
        .count();
    assert!(errors >= 1, "the forged signature is refused: {answer}");
    // The outsider's event is taken and kept as rejected, answered as accepted (as Synapse
    // answers it); there is no state at it.
    assert_eq!(results[&outsider_id], json!({}), "{answer}");
    let http_b = (b_name.as_str(), b_port);
    let state_ids = |at: &str| {
        format!(
            "/_matrix/federation/v1/state_ids/{}?event_id={}",
            enc(&room),
            enc(at)
        )
    };
    for endpoint in ["state_ids", "state"] {
        let uri = state_ids(&outsider_id).replace("/state_ids/", &format!("/{endpoint}/"));
        let (status, body) = request_as(&http, &key, &a_name, http_b, "GET", &uri, None).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (404, Some("M_NOT_FOUND")),
            "/{endpoint} at a rejected event: {body}"
        );
    }
    // An event built on the rejected one sees the room's state as it was before it (as the
    // genuine event beside it does).
    let (_, before) = request_as(
        &http,
        &key,
        &a_name,
        http_b,
        "GET",
        &state_ids(&genuine_id),
        None,
    )
    .await;
    let after_rejected = sign(event(&ann, "after the rejected one", 5, &outsider_id), &key);
    let after_id = format!(
        "${}",
        ruma::signatures::reference_hash(&after_rejected, &rules).unwrap()
    );
    let answer = send_as(
        &http,
        &key,
        &a_name,
        &b_name,
        b_port,
        "forged2",
        vec![serde_json::to_value(after_rejected).unwrap()],
    )
    .await;
    assert_eq!(answer["pdus"][&after_id], json!({}), "{answer}");
    let (status, at_after) = request_as(
        &http,
        &key,
        &a_name,
        http_b,
        "GET",
        &state_ids(&after_id),
        None,
    )
    .await;
    assert_eq!(status, 200, "{at_after}");
    let sorted = |v: &serde_json::Value| {
        let mut ids: Vec<String> = v["pdu_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(sorted(&at_after), sorted(&before), "{at_after}");

    let (_, page) = b
        .get(
            &format!("/rooms/{}/messages?dir=b&limit=20", enc(&room)),
            &bob_tok,
        )
        .await;
    let bodies = hearth_conformance::message_bodies(page["chunk"].as_array().unwrap());
    for shown in ["genuine", "after the rejected one"] {
        assert!(
            bodies.contains(&shown.to_owned()),
            "{shown}: {bodies:?} {}",
            b.log_tail(20)
        );
    }
    for forged in ["forged signature", "tampered", "original", "outsider"] {
        assert!(
            !bodies.contains(&forged.to_owned()),
            "{forged} entered: {bodies:?}"
        );
    }
}

/// Messages said in a room before a user of the other server joins it.
const HISTORY: usize = 250;

/// Joining over federation brings a room's state, not its history. When a user pages back past
/// the join, the history comes from the room's other server (`/backfill`, a batch at a time,
/// with the state at each batch's far edge), every event checked and shown as the room's
/// history visibility allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_before_a_join_is_backfilled_from_the_other_server() {
    let ca = TestCa::new();
    let (a, a_name, _) = federating_server(&ca).await;
    let (b, _, _) = federating_server(&ca).await;
    let (_, ann_tok, _) = a.register("ann", "pw-ann-1").await;
    let (_, bob_tok, _) = b.register("bob", "pw-bob-1").await;

    // Shared history: what was said before Bob came is his to read.
    let room = a
        .create_room(
            &ann_tok,
            &json!({ "preset": "public_chat", "name": "old news" }),
        )
        .await;
    let said: Vec<String> = (0..HISTORY).map(|i| format!("before bob {i}")).collect();
    for (i, body) in said.iter().enumerate() {
        if i == HISTORY / 2 {
            let (status, body) = a
                .put(
                    &format!("/rooms/{}/state/m.room.topic/", enc(&room)),
                    &ann_tok,
                    &json!({ "topic": "halfway" }),
                )
                .await;
            assert_eq!(status, 200, "{body}");
        }
        a.send_text(&ann_tok, &room, &format!("h{i}"), body).await;
    }
    // History for members only: nothing before Bob's join is his.
    let closed = a
        .create_room(
            &ann_tok,
            &json!({
                "preset": "public_chat",
                "name": "members only room",
                "initial_state": [{
                    "type": "m.room.history_visibility",
                    "state_key": "",
                    "content": { "history_visibility": "joined" },
                }],
            }),
        )
        .await;
    for i in 0..5 {
        a.send_text(
            &ann_tok,
            &closed,
            &format!("c{i}"),
            &format!("members only {i}"),
        )
        .await;
    }
    for r in [&room, &closed] {
        let (status, body) = b
            .post(
                &format!("/join/{}?server_name={}", enc(r), enc(&a_name)),
                &bob_tok,
                &json!({}),
            )
            .await;
        assert_eq!(status, 200, "{body} {}", b.log_tail(20));
    }

    let (events, oldest) = b.page_back_all(&bob_tok, &room, 30).await;
    assert_eq!(
        hearth_conformance::message_bodies(&events),
        said,
        "Bob reads every message said before he came, once each, in order\n{}",
        b.log_tail(30)
    );
    assert_eq!(
        events[0]["type"], "m.room.create",
        "the history reaches the room's start"
    );
    let topic = events
        .iter()
        .position(|e| e["type"] == "m.room.topic")
        .expect("the topic change is in the history");
    assert_eq!(events[topic + 1]["content"]["body"], said[HISTORY / 2]);
    assert_eq!(
        events.last().unwrap()["content"]["membership"],
        "join",
        "Bob's join comes after the history"
    );

    // Paging forwards from the oldest point reads the rest of the history, then the live
    // timeline, in the same order.
    let ids: Vec<&str> = events
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    let mut forwards: Vec<String> = Vec::new();
    let mut from = oldest.clone();
    for _ in 0..100 {
        let (status, page) = b
            .get(
                &format!(
                    "/rooms/{}/messages?dir=f&limit=40&from={}",
                    enc(&room),
                    enc(&from)
                ),
                &bob_tok,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        forwards.extend(
            page["chunk"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|e| e["event_id"].as_str().map(str::to_owned)),
        );
        match page["end"].as_str() {
            Some(end) => from = end.to_owned(),
            None => break,
        }
    }
    // All but the last page back, which lay before the oldest point.
    assert!(
        forwards.len() >= ids.len() - 30,
        "{} of {} events forwards",
        forwards.len(),
        ids.len()
    );
    assert!(
        ids.ends_with(&forwards.iter().map(String::as_str).collect::<Vec<_>>()),
        "forwards reads the same events in the same order"
    );
    // Backwards from the present down to that same point (`to`): the same events, newest
    // first, across the live timeline and the history.
    let (status, page) = b
        .get(
            &format!(
                "/rooms/{}/messages?dir=b&limit=1000&to={}",
                enc(&room),
                enc(&oldest)
            ),
            &bob_tok,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let mut down_to: Vec<String> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
        .collect();
    down_to.reverse();
    assert_eq!(down_to, forwards, "`to` bounds a page across both orders");
    assert!(
        page.get("end").is_none(),
        "nothing further before `to`: {}",
        page["end"]
    );

    // A backfilled event has its context like any other.
    let tenth = events
        .iter()
        .find(|e| e["content"]["body"] == said[10])
        .and_then(|e| e["event_id"].as_str())
        .unwrap();
    let (status, context) = b
        .get(
            &format!("/rooms/{}/context/{}?limit=2", enc(&room), enc(tenth)),
            &bob_tok,
        )
        .await;
    assert_eq!(status, 200, "{context}");
    assert_eq!(context["events_before"][0]["content"]["body"], said[9]);
    assert_eq!(context["events_after"][0]["content"]["body"], said[11]);

    let (closed_events, _) = b.page_back_all(&bob_tok, &closed, 30).await;
    let seen = hearth_conformance::message_bodies(&closed_events);
    assert!(
        !seen.iter().any(|b| b.starts_with("members only")),
        "members-only history stays hidden: {seen:?}"
    );
    // What Bob sees: the room's first events, said while history was still shared (each event
    // is judged by the state before it, the visibility change too), and his join.
    let kinds: Vec<&str> = closed_events
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "m.room.create",
            "m.room.member",
            "m.room.power_levels",
            "m.room.join_rules",
            "m.room.history_visibility",
            "m.room.member",
        ],
        "{closed_events:?}"
    );
    // The room's name, said after history closed, came back pruned in the history; the
    // state Bob's server holds keeps it whole.
    let (status, name) = b
        .get(
            &format!("/rooms/{}/state/m.room.name/", enc(&closed)),
            &bob_tok,
        )
        .await;
    assert_eq!((status, &name["name"]), (200, &json!("members only room")));
    let join = closed_events.last().unwrap();
    assert_eq!(join["content"]["membership"], "join");
    assert!(
        join["unsigned"].get("replaces_state").is_none(),
        "a first join replaces nothing: {join}"
    );
}

/// Bob's device keys as his client uploads them, with `key` as the ed25519 key.
fn bobs_device_keys(bob: &str, device: &str, key: &str) -> serde_json::Value {
    json!({ "device_keys": {
        "user_id": bob,
        "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": { format!("ed25519:{device}"): key },
        "signatures": {},
    }})
}

/// The ed25519 key of Bob's device in Ann's `/keys/query` answer, and its `failures`.
async fn bobs_key_as_ann_sees_it(
    a: &TestServer,
    ann_tok: &str,
    bob: &str,
    device: &str,
) -> (Option<String>, serde_json::Value) {
    let (status, q) = a
        .post(
            "/keys/query",
            ann_tok,
            &json!({ "device_keys": { bob: [] } }),
        )
        .await;
    assert_eq!(status, 200, "{q}");
    let key = q["device_keys"][bob][device]["keys"][format!("ed25519:{device}")]
        .as_str()
        .map(str::to_owned);
    (key, q["failures"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_users_device_list_is_kept_current_and_answered_while_their_server_is_down() {
    let ca = TestCa::new();
    let (a, a_name, _) = federating_server(&ca).await;
    let (mut b, _, _) = federating_server(&ca).await;
    let Shared { ann_tok, bob, .. } =
        bob_joins_anns_room((&a, &a_name), &b, json!({ "preset": "public_chat" })).await;
    let (_, bob_tok, device) = b.login("bob", "pw-bob-1").await;
    let (status, body) = b
        .post(
            "/keys/upload",
            &bob_tok,
            &bobs_device_keys(&bob, &device, "first"),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // A has nothing of Bob's devices yet: it fetches his list from B (`/user/devices`).
    let mut key = None;
    for _ in 0..30 {
        key = bobs_key_as_ann_sees_it(&a, &ann_tok, &bob, &device).await.0;
        if key.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    assert_eq!(key.as_deref(), Some("first"), "{}", a.log_tail(20));

    // Bob's new keys reach A as an `m.device_list_update` that follows the list A has (its
    // `prev_id`): Ann hears that Bob's devices changed, and A answers the new keys.
    let (_, first) = a.get("/sync?timeout=0", &ann_tok).await;
    let mut since = first["next_batch"].as_str().unwrap().to_owned();
    let (status, body) = b
        .post(
            "/keys/upload",
            &bob_tok,
            &bobs_device_keys(&bob, &device, "second"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    sync_until(&a, &ann_tok, &mut since, |s| {
        s["device_lists"]["changed"]
            .as_array()
            .is_some_and(|c| c.iter().any(|u| u == &json!(bob)))
            .then_some(())
    })
    .await;
    let (key, _) = bobs_key_as_ann_sees_it(&a, &ann_tok, &bob, &device).await;
    assert_eq!(key.as_deref(), Some("second"), "{}", a.log_tail(20));

    // With B down, A still answers the list it keeps, and lists no failure.
    b.kill9();
    let (key, failures) = bobs_key_as_ann_sees_it(&a, &ann_tok, &bob, &device).await;
    assert_eq!(key.as_deref(), Some("second"));
    assert_eq!(failures, json!({}));
}
