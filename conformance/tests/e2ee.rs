//! The key plumbing endpoint by endpoint, over raw HTTP: one-time and fallback keys, device list
//! changes, signature checks on cross-signing uploads, and the key backup rules.

use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use hearth_conformance::{Method, TestServer, Value, assert_matrix_error, enc, json};

const PW: &str = "correct horse battery staple";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
}

/// Canonical JSON (sorted keys, no spaces) of the object without `signatures` and `unsigned`.
fn canonical(v: &Value) -> String {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical(&map[k])))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => {
            format!(
                "[{}]",
                items.iter().map(canonical).collect::<Vec<_>>().join(",")
            )
        }
        other => other.to_string(),
    }
}

/// Signs `object` as `user` with `key` (key id `ed25519:<key name>`).
fn sign(object: &mut Value, user: &str, key_name: &str, key: &SigningKey) {
    let mut unsigned = object.clone();
    let map = unsigned.as_object_mut().unwrap();
    map.remove("signatures");
    map.remove("unsigned");
    let sig = b64(&key.sign(canonical(&unsigned).as_bytes()).to_bytes());
    let sigs = object
        .as_object_mut()
        .unwrap()
        .entry("signatures")
        .or_insert_with(|| json!({}));
    sigs.as_object_mut()
        .unwrap()
        .entry(user)
        .or_insert_with(|| json!({}))[format!("ed25519:{key_name}")] = json!(sig);
}

fn signing_key(seed: u8) -> (SigningKey, String) {
    let key = SigningKey::from_bytes(&[seed; 32]);
    let public = b64(key.verifying_key().as_bytes());
    (key, public)
}

fn device_keys(user: &str, device: &str, key: &SigningKey, public: &str) -> Value {
    let mut keys = json!({
        "user_id": user,
        "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{device}"): "Y3VydmUyNTUxOWtleWZvcnRlc3RpbmdvbmVfX19fX18",
            format!("ed25519:{device}"): public,
        },
    });
    sign(&mut keys, user, device, key);
    keys
}

/// `POST /keys/query` for all of `user`'s devices; the answer must be 200.
async fn query_keys(server: &TestServer, token: &str, user: &str) -> Value {
    let body = json!({ "device_keys": { user: [] } });
    let (status, answer) = server.post("/keys/query", token, &body).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

async fn sync(server: &TestServer, token: &str, since: Option<&str>, timeout_ms: u64) -> Value {
    let path = match since {
        Some(s) => format!("/sync?since={}&timeout={timeout_ms}", enc(s)),
        None => "/sync".to_owned(),
    };
    let (status, body) = server.get(&path, token).await;
    assert_eq!(status, 200, "sync: {body}");
    body
}

fn changed(sync: &Value) -> Vec<String> {
    sync["device_lists"]["changed"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|u| u.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn left(sync: &Value) -> Vec<String> {
    sync["device_lists"]["left"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|u| u.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_keys_without_their_required_fields_are_refused() {
    let server = TestServer::start().await;
    let (alice, token, device) = server.register("alice", PW).await;
    let (key, public) = signing_key(9);
    let good = device_keys(&alice, &device, &key, &public);
    // What SyTest sends: user and device right, algorithms, keys and signatures missing. None
    // of the upload is kept, not even its one-time key.
    let bare = json!({
        "device_keys": { "user_id": alice, "device_id": device },
        "one_time_keys": { "my_algorithm:my_id_1": "KIhHVkAQi8r41aPNql2zTqQsInpFa8XdslQLC8F8BHc" },
    });
    let resp = server.post("/keys/upload", &token, &bare).await;
    assert_matrix_error(&resp, 400, "M_BAD_JSON");
    for field in ["user_id", "device_id", "algorithms", "keys", "signatures"] {
        let mut keys = good.clone();
        keys.as_object_mut().unwrap().remove(field);
        let resp = server
            .post("/keys/upload", &token, &json!({ "device_keys": keys }))
            .await;
        assert_matrix_error(&resp, 400, "M_BAD_JSON");
    }
    for (field, bad) in [
        ("algorithms", json!("m.megolm.v1.aes-sha2")),
        ("algorithms", json!([1])),
        ("keys", json!({ "ed25519:X": 5 })),
        ("signatures", json!({ &alice: "sig" })),
        ("signatures", json!({ &alice: { "ed25519:X": true } })),
    ] {
        let mut keys = good.clone();
        keys[field] = bad;
        let resp = server
            .post("/keys/upload", &token, &json!({ "device_keys": keys }))
            .await;
        assert_matrix_error(&resp, 400, "M_BAD_JSON");
    }
    for not_an_object in [json!("keys"), json!([good.clone()])] {
        let resp = server
            .post(
                "/keys/upload",
                &token,
                &json!({ "device_keys": not_an_object }),
            )
            .await;
        assert_matrix_error(&resp, 400, "M_BAD_JSON");
    }
    // A one-time or fallback key id must be algorithm:id.
    for field in ["one_time_keys", "fallback_keys"] {
        let resp = server
            .post(
                "/keys/upload",
                &token,
                &json!({ field: { "no_colon": "a2V5" } }),
            )
            .await;
        assert_matrix_error(&resp, 400, "M_BAD_JSON");
    }
    let (status, body) = server
        .post("/keys/upload", &token, &json!({ "device_keys": good }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["one_time_key_counts"],
        json!({ "signed_curve25519": 0 }),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_time_keys_go_once_each_then_the_fallback_key() {
    let server = TestServer::start().await;
    let (alice, alice_token, alice_device) = server.register("alice", PW).await;
    let (bob, bob_token, bob_device) = server.register("bob", PW).await;
    let (key, public) = signing_key(1);

    // Device keys must be the uploader's own (M_BAD_JSON, as Synapse answers).
    let forged = device_keys("@bob:localhost", &alice_device, &key, &public);
    let resp = server
        .post(
            "/keys/upload",
            &alice_token,
            &json!({ "device_keys": forged }),
        )
        .await;
    assert_matrix_error(&resp, 400, "M_BAD_JSON");
    let other_device = device_keys(&alice, "NOTMINE", &key, &public);
    let resp = server
        .post(
            "/keys/upload",
            &alice_token,
            &json!({ "device_keys": other_device }),
        )
        .await;
    assert_matrix_error(&resp, 400, "M_BAD_JSON");

    let upload = json!({
        "device_keys": device_keys(&alice, &alice_device, &key, &public),
        "one_time_keys": {
            "signed_curve25519:AAAAAQ": { "key": "b3RrMQ" },
            "signed_curve25519:AAAAAg": { "key": "b3RrMg" },
        },
        "fallback_keys": {
            "signed_curve25519:AAAAFB": { "key": "ZmFsbGJhY2s", "fallback": true },
        },
    });
    let (status, body) = server.post("/keys/upload", &alice_token, &upload).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["one_time_key_counts"]["signed_curve25519"], 2);
    // The same upload again changes nothing; a different key under a used id is refused.
    let (status, body) = server.post("/keys/upload", &alice_token, &upload).await;
    assert_eq!(
        (status, &body["one_time_key_counts"]["signed_curve25519"]),
        (200, &json!(2))
    );
    let clash = json!({ "one_time_keys": { "signed_curve25519:AAAAAQ": { "key": "b3RoZXI" } } });
    let resp = server.post("/keys/upload", &alice_token, &clash).await;
    assert_matrix_error(&resp, 400, "M_INVALID_PARAM");

    let first = sync(&server, &alice_token, None, 0).await;
    assert_eq!(first["device_one_time_keys_count"]["signed_curve25519"], 2);
    assert_eq!(
        first["device_unused_fallback_key_types"],
        json!(["signed_curve25519"])
    );

    // Anyone can query them; the display name rides in `unsigned`.
    let q = query_keys(&server, &bob_token, &alice).await;
    let dk = &q["device_keys"][&alice][&alice_device];
    assert_eq!(dk["keys"][format!("ed25519:{alice_device}")], json!(public));
    assert!(dk["signatures"][&alice][format!("ed25519:{alice_device}")].is_string());

    // Concurrent claims never get the same one-time key.
    let claim = json!({ "one_time_keys": { &alice: { &alice_device: "signed_curve25519" } } });
    let claim_one = || async {
        let (status, body) = server.post("/keys/claim", &bob_token, &claim).await;
        assert_eq!(status, 200, "{body}");
        let keys = body["one_time_keys"][&alice][&alice_device]
            .as_object()
            .cloned()
            .unwrap_or_default();
        assert_eq!(keys.len(), 1, "one key per device: {body}");
        keys.keys().next().unwrap().clone()
    };
    let (a, b) = tokio::join!(claim_one(), claim_one());
    let mut both = vec![a, b];
    both.sort();
    assert_eq!(
        both,
        ["signed_curve25519:AAAAAQ", "signed_curve25519:AAAAAg"]
    );
    // None left: the fallback key, again and again.
    assert_eq!(claim_one().await, "signed_curve25519:AAAAFB");
    assert_eq!(claim_one().await, "signed_curve25519:AAAAFB");
    // A device with nothing to claim is not in the answer, nor its user (as Synapse answers).
    let nothing = json!({ "one_time_keys": { &bob: { &bob_device: "signed_curve25519" } } });
    let (status, body) = server.post("/keys/claim", &alice_token, &nothing).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["one_time_keys"], json!({}), "{body}");

    let since = first["next_batch"].as_str().unwrap();
    let after = sync(&server, &alice_token, Some(since), 0).await;
    assert_eq!(after["device_one_time_keys_count"]["signed_curve25519"], 0);
    assert_eq!(after["device_unused_fallback_key_types"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_list_changes_reach_room_members_and_departures_show_as_left() {
    let server = TestServer::start().await;
    let (alice, alice_token, _) = server.register("alice", PW).await;
    let (bob, bob_token, _) = server.register("bob", PW).await;
    let (carol, _, _) = server.register("carol", PW).await;
    let room = server
        .create_room(&alice_token, &json!({ "preset": "public_chat" }))
        .await;
    let since = sync(&server, &bob_token, None, 0).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    // Bob joining makes alice's devices news to him.
    let (status, _) = server.join_raw(&bob_token, &room).await;
    assert_eq!(status, 200);
    let s1 = sync(&server, &bob_token, Some(&since), 0).await;
    assert!(changed(&s1).contains(&alice), "{s1}");
    let t1 = s1["next_batch"].as_str().unwrap().to_owned();

    // A new device of alice's: its login is news to bob, and so are its keys, which wake his
    // long-poll.
    let (_, alice2_token, alice2_device) = server.login("alice", PW).await;
    let s_login = sync(&server, &bob_token, Some(&t1), 0).await;
    assert_eq!(changed(&s_login), vec![alice.clone()], "{s_login}");
    let t1 = s_login["next_batch"].as_str().unwrap().to_owned();
    let (key, public) = signing_key(2);
    let poll = sync(&server, &bob_token, Some(&t1), 20_000);
    let upload = async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let body = json!({ "device_keys": device_keys(&alice, &alice2_device, &key, &public) });
        let (status, _) = server.post("/keys/upload", &alice2_token, &body).await;
        assert_eq!(status, 200);
    };
    let (s2, ()) = tokio::join!(poll, upload);
    assert_eq!(changed(&s2), vec![alice.clone()], "{s2}");
    let t2 = s2["next_batch"].as_str().unwrap().to_owned();
    // carol shares no room with alice: nothing for her in /keys/changes either.
    let (status, kc) = server
        .get(
            &format!("/keys/changes?from={}&to={}", enc(&t1), enc(&t2)),
            &bob_token,
        )
        .await;
    assert_eq!(status, 200, "{kc}");
    assert_eq!(kc["changed"], json!([alice]), "{kc}");
    assert!(!changed(&s2).contains(&carol));

    // Deleting the device (after the password) is a change too, and its keys are gone.
    let path = format!("/devices/{}", enc(&alice2_device));
    let (status, uia) = server
        .request(Method::DELETE, &path, Some(&alice_token), Some(&json!({})))
        .await;
    assert_eq!(status, 401);
    let auth = json!({ "auth": {
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": "alice" },
        "password": PW,
        "session": uia["session"],
    }});
    let (status, body) = server
        .request(Method::DELETE, &path, Some(&alice_token), Some(&auth))
        .await;
    assert_eq!(status, 200, "{body}");
    let s3 = sync(&server, &bob_token, Some(&t2), 5_000).await;
    assert!(changed(&s3).contains(&alice), "{s3}");
    let q = query_keys(&server, &bob_token, &alice).await;
    assert!(
        q["device_keys"][&alice].get(&alice2_device).is_none(),
        "{q}"
    );

    // Alice leaving the only shared room puts her in bob's `left`.
    let t3 = s3["next_batch"].as_str().unwrap().to_owned();
    let (status, _) = server
        .post(
            &format!("/rooms/{}/leave", enc(&room)),
            &alice_token,
            &json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let s4 = sync(&server, &bob_token, Some(&t3), 5_000).await;
    assert_eq!(left(&s4), vec![alice.clone()], "{s4}");
    assert!(!changed(&s4).contains(&alice));
    let _ = bob;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_signing_uploads_and_signatures_are_verified() {
    let server = TestServer::start().await;
    let (alice, token, device) = server.register("alice", PW).await;
    let (bob, bob_token, _) = server.register("bob", PW).await;
    let (dev_key, dev_public) = signing_key(3);
    let (status, _) = server
        .post(
            "/keys/upload",
            &token,
            &json!({ "device_keys": device_keys(&alice, &device, &dev_key, &dev_public) }),
        )
        .await;
    assert_eq!(status, 200);

    let cross_key = |usage: &str, public: &str| json!({ "user_id": alice, "usage": [usage], "keys": { format!("ed25519:{public}"): public } });
    let (master, master_pub) = signing_key(4);
    let (ssk, ssk_pub) = signing_key(5);
    let (usk, usk_pub) = signing_key(6);
    let master_key = cross_key("master", &master_pub);
    let mut self_signing = cross_key("self_signing", &ssk_pub);
    let mut user_signing = cross_key("user_signing", &usk_pub);

    // A self-signing key not signed by the master key is refused.
    let resp = server
        .post(
            "/keys/device_signing/upload",
            &token,
            &json!({ "master_key": master_key, "self_signing_key": self_signing }),
        )
        .await;
    assert_matrix_error(&resp, 400, "M_INVALID_SIGNATURE");
    sign(&mut self_signing, &alice, &master_pub, &master);
    sign(&mut user_signing, &alice, &master_pub, &master);
    // The first upload needs no password.
    let upload = json!({
        "master_key": master_key,
        "self_signing_key": self_signing,
        "user_signing_key": user_signing,
    });
    let (status, body) = server
        .post("/keys/device_signing/upload", &token, &upload)
        .await;
    assert_eq!(status, 200, "{body}");
    // The same keys again are fine; new ones need the password.
    let (status, _) = server
        .post("/keys/device_signing/upload", &token, &upload)
        .await;
    assert_eq!(status, 200);
    let (other_master, other_pub) = signing_key(7);
    let _ = other_master;
    let (status, body) = server
        .post(
            "/keys/device_signing/upload",
            &token,
            &json!({ "master_key": cross_key("master", &other_pub) }),
        )
        .await;
    assert_eq!(status, 401, "replacing the master key needs auth: {body}");

    // The device signed by the self-signing key: accepted and shown. A forged one: refused.
    let mut signed_device = device_keys(&alice, &device, &dev_key, &dev_public);
    sign(&mut signed_device, &alice, &ssk_pub, &ssk);
    let mut forged_device = device_keys(&alice, &device, &dev_key, &dev_public);
    sign(&mut forged_device, &alice, &ssk_pub, &usk);
    let (status, body) = server
        .post(
            "/keys/signatures/upload",
            &token,
            &json!({ &alice: { &device: forged_device } }),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["failures"][&alice][&device]["errcode"], "M_INVALID_SIGNATURE",
        "{body}"
    );
    let (status, body) = server
        .post(
            "/keys/signatures/upload",
            &token,
            &json!({ &alice: { &device: signed_device } }),
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        body["failures"].as_object().is_none_or(|f| f.is_empty()),
        "{body}"
    );

    let q = query_keys(&server, &bob_token, &alice).await;
    assert!(
        q["device_keys"][&alice][&device]["signatures"][&alice][format!("ed25519:{ssk_pub}")]
            .is_string(),
        "{q}"
    );
    assert_eq!(q["master_keys"][&alice]["keys"], master_key["keys"]);
    assert!(q["self_signing_keys"][&alice].is_object());
    // The user-signing key is for its owner's eyes only.
    assert!(q["user_signing_keys"].get(&alice).is_none(), "{q}");
    let own = query_keys(&server, &token, &alice).await;
    assert!(own["user_signing_keys"][&alice].is_object(), "{own}");

    // Alice signs bob's master key with her user-signing key: only alice sees that signature.
    let (bob_master, bob_master_pub) = signing_key(8);
    let bob_master_key = json!({ "user_id": bob, "usage": ["master"], "keys": { format!("ed25519:{bob_master_pub}"): bob_master_pub } });
    let (status, _) = server
        .post(
            "/keys/device_signing/upload",
            &bob_token,
            &json!({ "master_key": bob_master_key }),
        )
        .await;
    assert_eq!(status, 200);
    let _ = bob_master;
    let mut signed_bob = bob_master_key.clone();
    sign(&mut signed_bob, &alice, &usk_pub, &usk);
    let (status, body) = server
        .post(
            "/keys/signatures/upload",
            &token,
            &json!({ &bob: { &bob_master_pub: signed_bob } }),
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        body["failures"].as_object().is_none_or(|f| f.is_empty()),
        "{body}"
    );
    let usk_sig = format!("ed25519:{usk_pub}");
    let by_alice = query_keys(&server, &token, &bob).await;
    assert!(
        by_alice["master_keys"][&bob]["signatures"][&alice][&usk_sig].is_string(),
        "{by_alice}"
    );
    let by_bob = query_keys(&server, &bob_token, &bob).await;
    assert!(
        by_bob["master_keys"][&bob]["signatures"]
            .get(&alice)
            .is_none(),
        "{by_bob}"
    );
}

fn backup_key(verified: bool, first_index: u64, forwarded: u64, marker: &str) -> Value {
    json!({
        "first_message_index": first_index,
        "forwarded_count": forwarded,
        "is_verified": verified,
        "session_data": { "ephemeral": "ZXBo", "ciphertext": marker, "mac": "bWFj" },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_backup_keeps_the_best_copy_of_each_session() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("alice", PW).await;
    let resp = server.get("/room_keys/version", &token).await;
    assert_matrix_error(&resp, 404, "M_NOT_FOUND");
    let algorithm = json!({
        "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
        "auth_data": { "public_key": "cHVibGlj", "signatures": {} },
    });
    // Another algorithm's auth_data may be anything (Synapse takes any value); none is an error.
    let (status, body) = server
        .post(
            "/room_keys/version",
            &token,
            &json!({ "algorithm": "m.megolm_backup.v1", "auth_data": "anopaquestring" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let resp = server
        .post(
            "/room_keys/version",
            &token,
            &json!({ "algorithm": "m.megolm_backup.v1" }),
        )
        .await;
    assert_matrix_error(&resp, 400, "M_BAD_JSON");
    let (status, body) = server.post("/room_keys/version", &token, &algorithm).await;
    assert_eq!(status, 200, "{body}");
    let v1 = body["version"].as_str().unwrap().to_owned();

    let room = "!room:localhost";
    let session_path = |v: &str| format!("/room_keys/keys/{}/sess1?version={v}", enc(room));
    let put = |key: Value, v: String| {
        let path = session_path(&v);
        let server = &server;
        let token = &token;
        async move { server.put(&path, token, &key).await }
    };
    let (status, first) = put(backup_key(false, 5, 0, "first"), v1.clone()).await;
    assert_eq!((status, first["count"].as_u64()), (200, Some(1)), "{first}");
    // A later index loses; an earlier one wins; verified beats unverified.
    put(backup_key(false, 9, 0, "worse"), v1.clone()).await;
    let (_, got) = server.get(&session_path(&v1), &token).await;
    assert_eq!(got["session_data"]["ciphertext"], "first");
    put(backup_key(false, 1, 0, "better"), v1.clone()).await;
    let (_, got) = server.get(&session_path(&v1), &token).await;
    assert_eq!(got["session_data"]["ciphertext"], "better");
    let (_, after) = put(backup_key(true, 7, 3, "verified"), v1.clone()).await;
    let (_, got) = server.get(&session_path(&v1), &token).await;
    assert_eq!(got["session_data"]["ciphertext"], "verified");
    assert_eq!(after["count"], 1);
    assert_ne!(after["etag"], first["etag"], "the etag moves with the keys");

    let (status, info) = server
        .get(&format!("/room_keys/version/{v1}"), &token)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (info["count"].as_u64(), &info["etag"]),
        (Some(1), &after["etag"])
    );
    assert_eq!(info["auth_data"]["public_key"], "cHVibGlj");

    // A new version: writes to the old one are refused with the current one named.
    let (_, body) = server.post("/room_keys/version", &token, &algorithm).await;
    let v2 = body["version"].as_str().unwrap().to_owned();
    assert_ne!(v1, v2);
    let resp = put(backup_key(true, 0, 0, "late"), v1.clone()).await;
    assert_matrix_error(&resp, 403, "M_WRONG_ROOM_KEYS_VERSION");
    assert_eq!(resp.1["current_version"], json!(v2));
    let (_, latest) = server.get("/room_keys/version", &token).await;
    assert_eq!(latest["version"], json!(v2));
    assert_eq!(latest["count"], 0);

    // Deleting: a session, then a version.
    let resp = server
        .get(
            &format!("/room_keys/keys/{}/nope?version={v1}", enc(room)),
            &token,
        )
        .await;
    assert_matrix_error(&resp, 404, "M_NOT_FOUND");
    let (status, del) = server
        .request(Method::DELETE, &session_path(&v1), Some(&token), None)
        .await;
    assert_eq!((status, del["count"].as_u64()), (200, Some(0)), "{del}");
    let (status, _) = server
        .request(
            Method::DELETE,
            &format!("/room_keys/version/{v2}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let resp = server
        .get(&format!("/room_keys/version/{v2}"), &token)
        .await;
    assert_matrix_error(&resp, 404, "M_NOT_FOUND");
    let (_, latest) = server.get("/room_keys/version", &token).await;
    assert_eq!(latest["version"], json!(v1));
}

/// `since` → the next_batch of a sync from it.
fn next_batch(sync: &Value) -> String {
    sync["next_batch"].as_str().expect("next_batch").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_and_cross_signing_changes_reach_whom_synapse_tells() {
    let server = TestServer::start().await;
    let (alice, alice_token, _) = server.register("alice", PW).await;
    let (bob, bob_token, _) = server.register("bob", PW).await;
    let room = server
        .create_room(&alice_token, &json!({ "preset": "public_chat" }))
        .await;
    let (status, _) = server.join_raw(&bob_token, &room).await;
    assert_eq!(status, 200);
    let mut a = next_batch(&sync(&server, &alice_token, None, 0).await);
    let mut b = next_batch(&sync(&server, &bob_token, None, 0).await);

    // A new device logging in, before it uploads any key, is news to the user's other devices
    // and to those who share a room with them.
    let (_, bob2_token, bob2_device) = server.login("bob", PW).await;
    let s = sync(&server, &bob_token, Some(&b), 0).await;
    assert!(changed(&s).contains(&bob), "bob's own new device: {s}");
    b = next_batch(&s);
    let s = sync(&server, &alice_token, Some(&a), 0).await;
    assert!(changed(&s).contains(&bob), "bob's new device: {s}");
    let before_login = std::mem::replace(&mut a, next_batch(&s));
    // Its keys are news again; and `/keys/changes` up to a token from before them still has
    // the login's change (it reads to now, as Synapse does: the stream keeps a user's latest
    // change only).
    let (key, public) = signing_key(24);
    let body = json!({ "device_keys": device_keys(&bob, &bob2_device, &key, &public) });
    let (status, _) = server.post("/keys/upload", &bob2_token, &body).await;
    assert_eq!(status, 200);
    let (status, kc) = server
        .get(
            &format!("/keys/changes?from={}&to={}", enc(&before_login), enc(&a)),
            &alice_token,
        )
        .await;
    assert_eq!(status, 200, "{kc}");
    assert_eq!(kc["changed"], json!([bob]), "{kc}");
    let s = sync(&server, &alice_token, Some(&a), 0).await;
    assert!(changed(&s).contains(&bob), "bob's new device's keys: {s}");
    a = next_batch(&s);
    b = next_batch(&sync(&server, &bob_token, Some(&b), 0).await);

    // Cross-signing keys: master and self-signing are news to all, as before.
    let cross_key = |user: &str, usage: &str, public: &str| json!({ "user_id": user, "usage": [usage], "keys": { format!("ed25519:{public}"): public } });
    let (master, master_pub) = signing_key(20);
    let (ssk, ssk_pub) = signing_key(21);
    let (usk, usk_pub) = signing_key(22);
    let mut self_signing = cross_key(&alice, "self_signing", &ssk_pub);
    sign(&mut self_signing, &alice, &master_pub, &master);
    let _ = ssk;
    let upload = json!({
        "master_key": cross_key(&alice, "master", &master_pub),
        "self_signing_key": self_signing,
    });
    let (status, body) = server
        .post("/keys/device_signing/upload", &alice_token, &upload)
        .await;
    assert_eq!(status, 200, "{body}");
    let s = sync(&server, &bob_token, Some(&b), 0).await;
    assert!(changed(&s).contains(&alice), "{s}");
    b = next_batch(&s);
    let s = sync(&server, &alice_token, Some(&a), 0).await;
    assert!(changed(&s).contains(&alice), "{s}");
    a = next_batch(&s);

    // A user-signing key is news to its owner alone (SyTest: "Changing user-signing key
    // notifies local users"); its upload is authenticated the r0 way SyTest does it.
    let mut user_signing = cross_key(&alice, "user_signing", &usk_pub);
    sign(&mut user_signing, &alice, &master_pub, &master);
    let upload = json!({
        "user_signing_key": user_signing,
        "auth": { "type": "m.login.password", "user": alice, "password": PW },
    });
    let (status, body) = server
        .post("/keys/device_signing/upload", &alice_token, &upload)
        .await;
    assert_eq!(status, 200, "{body}");
    let s = sync(&server, &alice_token, Some(&a), 0).await;
    assert_eq!(changed(&s), vec![alice.clone()], "{s}");
    a = next_batch(&s);
    let s = sync(&server, &bob_token, Some(&b), 0).await;
    assert!(
        !changed(&s).contains(&alice),
        "alice's user-signing key: {s}"
    );
    b = next_batch(&s);

    // Alice signs bob's master key: news to alice (about bob), to nobody else.
    let (_, bob_master_pub) = signing_key(23);
    let bob_master = cross_key(&bob, "master", &bob_master_pub);
    let (status, _) = server
        .post(
            "/keys/device_signing/upload",
            &bob_token,
            &json!({ "master_key": bob_master }),
        )
        .await;
    assert_eq!(status, 200);
    a = next_batch(&sync(&server, &alice_token, Some(&a), 0).await);
    b = next_batch(&sync(&server, &bob_token, Some(&b), 0).await);
    let mut signed = bob_master.clone();
    sign(&mut signed, &alice, &usk_pub, &usk);
    let (status, body) = server
        .post(
            "/keys/signatures/upload",
            &alice_token,
            &json!({ &bob: { &bob_master_pub: signed } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["failures"].as_object().is_none_or(|f| f.is_empty()),
        "{body}"
    );
    let s = sync(&server, &alice_token, Some(&a), 0).await;
    assert_eq!(changed(&s), vec![bob.clone()], "{s}");
    let (status, kc) = server
        .get(
            &format!("/keys/changes?from={}&to={}", enc(&a), enc(&next_batch(&s))),
            &alice_token,
        )
        .await;
    assert_eq!(status, 200, "{kc}");
    assert_eq!(kc["changed"], json!([bob]), "{kc}");
    let s = sync(&server, &bob_token, Some(&b), 0).await;
    assert!(
        changed(&s).is_empty(),
        "alice's signature on bob's key: {s}"
    );
}
