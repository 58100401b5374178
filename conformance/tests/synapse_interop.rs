//! Federation with the reference server: Synapse (from PyPI, started by the team's
//! `shared/bench/start-synapse.sh` as a TLS federation peer on loopback) and Hearth query each
//! other's users' profiles over signed requests.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{encrypted_room, learns_devices_of, sdk_login, sees_text};
use hearth_conformance::{TestServer, enc, free_port, json, unique};

/// A Synapse federation peer; killed when dropped.
struct Synapse {
    root: PathBuf,
    data: PathBuf,
    client_url: String,
    server_name: String,
    ca: PathBuf,
}

impl Synapse {
    fn script() -> PathBuf {
        if let Some(p) = std::env::var_os("HEARTH_SYNAPSE_SCRIPT") {
            return PathBuf::from(p);
        }
        // The repository's own copy of the team's starter (shared/bench/start-synapse.sh), so
        // that a clone with nothing beside it runs these tests (Synapse comes from PyPI).
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/start-synapse.sh")
    }

    async fn start() -> Self {
        let script = Self::script();
        assert!(
            script.is_file(),
            "{} not found: the Synapse starter belongs to the repository",
            script.display()
        );
        let root = std::env::temp_dir().join(unique("hearth-synapse"));
        let (data, ca) = (root.join("synapse"), root.join("ca"));
        let (port, fed_port) = (free_port(), free_port());
        let mut cmd = Command::new("bash");
        cmd.arg(&script)
            .env("SYNAPSE_PORT", port.to_string())
            .env("SYNAPSE_FED_PORT", fed_port.to_string())
            .env("SYNAPSE_DATA", &data)
            .env("SYNAPSE_FED_CA_DIR", &ca);
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .expect("run start-synapse.sh");
        assert!(
            out.status.success(),
            "start-synapse.sh failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            root,
            data,
            client_url: format!("http://127.0.0.1:{port}"),
            server_name: format!("localhost:{fed_port}"),
            ca: ca.join("ca.crt"),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: serde_json::Value,
    ) -> serde_json::Value {
        let mut req = reqwest::Client::new()
            .request(
                method,
                format!("{}/_matrix/client/v3{path}", self.client_url),
            )
            .json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("request to Synapse");
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        assert!(
            status.is_success(),
            "Synapse answered {status} to {path}: {body}"
        );
        body
    }
}

impl Synapse {
    /// Restarts Synapse with `extra` (YAML) on top of the script's configuration: later `-c`
    /// files win per top-level key, as the script relies on for its own overrides.
    async fn restart_with(&self, extra: &str) {
        let pid_file = self.data.join("synapse.pid");
        if let Ok(pid) = std::fs::read_to_string(&pid_file) {
            let pid = pid.trim().to_owned();
            let _ = Command::new("kill").arg(&pid).status();
            for _ in 0..100 {
                let alive = Command::new("kill")
                    .args(["-0", &pid])
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if !alive {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        let extra_path = self.data.join("test-extra.yaml");
        std::fs::write(&extra_path, extra).unwrap();
        let venv = std::env::var_os("SYNAPSE_VENV").map_or_else(
            || {
                let home = std::env::var_os("HOME").expect("HOME");
                PathBuf::from(home).join(".cache/hearth-anchors/synapse-venv")
            },
            PathBuf::from,
        );
        // Detached, as the script starts it: Drop stops it through the pid file.
        let script = format!(
            "nohup '{}' -m synapse.app.homeserver -c homeserver.yaml -c bench-overrides.yaml \
             -c test-extra.yaml >stdout-restarted.log 2>&1 </dev/null & echo $!",
            venv.join("bin/python").display()
        );
        let out = Command::new("bash")
            .args(["-c", &script])
            .current_dir(&self.data)
            .output()
            .expect("start Synapse");
        std::fs::write(&pid_file, &out.stdout).unwrap();
        let http = reqwest::Client::new();
        for _ in 0..300 {
            let up = http
                .get(format!("{}/_matrix/client/versions", self.client_url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if up {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("Synapse did not come back after a restart");
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.data.join("synapse.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        if std::env::var_os("HEARTH_KEEP_DATA").is_none() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// A Hearth federating on `localhost:<port>` with its own certificate; it checks Synapse's
/// against the peer CA.
async fn hearth_beside(synapse: &Synapse) -> (TestServer, PathBuf) {
    let port = free_port();
    let tls = std::env::temp_dir().join(unique("hearth-tls"));
    std::fs::create_dir_all(&tls).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(tls.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(tls.join("key.pem"), key.serialize_pem()).unwrap();
    let hearth = TestServer::builder()
        .env("HEARTH_SERVER_NAME", format!("localhost:{port}"))
        .env("HEARTH_FEDERATION_LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "HEARTH_TLS_CERT",
            tls.join("cert.pem").display().to_string(),
        )
        .env("HEARTH_TLS_KEY", tls.join("key.pem").display().to_string())
        .env(
            "HEARTH_FEDERATION_CA_FILE",
            synapse.ca.display().to_string(),
        )
        .start()
        .await;
    (hearth, tls)
}

/// Registers a user on Synapse: (user id, access token).
async fn synapse_user(synapse: &Synapse, name: &str) -> (String, String) {
    let body = json!({
        "username": unique(name).to_lowercase(),
        "password": "pw-syd-12345",
        "auth": { "type": "m.login.dummy" }
    });
    let r = synapse
        .call(reqwest::Method::POST, "/register", None, body)
        .await;
    (
        r["user_id"].as_str().unwrap().to_owned(),
        r["access_token"].as_str().unwrap().to_owned(),
    )
}

/// Polls Synapse's `/sync` for `token`, moving `since` on, until `found` holds; false if it never
/// does within about 40 seconds.
async fn synapse_sees(
    synapse: &Synapse,
    token: &str,
    since: &mut Option<String>,
    mut found: impl FnMut(&serde_json::Value) -> bool,
) -> bool {
    for _ in 0..20 {
        let path = match since.as_deref() {
            Some(s) => format!("/sync?since={s}&timeout=2000"),
            None => "/sync?timeout=0".to_owned(),
        };
        let sync = synapse
            .call(reqwest::Method::GET, &path, Some(token), json!({}))
            .await;
        if found(&sync) {
            return true;
        }
        *since = sync["next_batch"].as_str().map(str::to_owned);
    }
    false
}

/// The same on Hearth.
async fn hearth_sees(
    hearth: &TestServer,
    token: &str,
    since: &mut Option<String>,
    mut found: impl FnMut(&serde_json::Value) -> bool,
) -> bool {
    for _ in 0..20 {
        let path = match since.as_deref() {
            Some(s) => format!("/sync?since={s}&timeout=2000"),
            None => "/sync?timeout=0".to_owned(),
        };
        let (_, sync) = hearth.get(&path, token).await;
        if found(&sync) {
            return true;
        }
        *since = sync["next_batch"].as_str().map(str::to_owned);
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hearth_and_synapse_query_each_others_profiles() {
    let synapse = Synapse::start().await;
    let (hearth, tls) = hearth_beside(&synapse).await;

    let (hal, hal_tok, _) = hearth.register("hal", "pw-hal-1").await;
    let path = format!("/profile/{}/displayname", enc(&hal));
    let (status, body) = hearth
        .put(&path, &hal_tok, &json!({ "displayname": "Hal of Hearth" }))
        .await;
    assert_eq!(status, 200, "{body}");

    let (syd_id, syd_tok) = synapse_user(&synapse, "syd").await;
    assert!(syd_id.ends_with(&synapse.server_name), "{syd_id}");
    let path = format!("/profile/{}/displayname", enc(&syd_id));
    synapse
        .call(
            reqwest::Method::PUT,
            &path,
            Some(&syd_tok),
            json!({ "displayname": "Syd of Synapse" }),
        )
        .await;

    // Hearth asks Synapse: Hearth signs, Synapse fetches Hearth's key and verifies.
    let (status, body) = hearth
        .get(&format!("/profile/{}", enc(&syd_id)), &hal_tok)
        .await;
    assert_eq!(status, 200, "{body}\n{}", hearth.log_tail(20));
    assert_eq!(body["displayname"], "Syd of Synapse");

    // Synapse asks Hearth: Hearth fetches Synapse's key and verifies Synapse's signature.
    let path = format!("/profile/{}", enc(&hal));
    let body = synapse
        .call(reqwest::Method::GET, &path, Some(&syd_tok), json!({}))
        .await;
    assert_eq!(
        body["displayname"],
        "Hal of Hearth",
        "{}",
        hearth.log_tail(20)
    );
    let _ = std::fs::remove_dir_all(&tls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synapse_user_joins_a_room_on_hearth() {
    let synapse = Synapse::start().await;
    let (hearth, tls) = hearth_beside(&synapse).await;
    let (hal, hal_tok, hal_device) = hearth.register("hal", "pw-hal-1").await;
    let room = hearth
        .create_room(
            &hal_tok,
            &json!({ "preset": "public_chat", "name": "town square" }),
        )
        .await;
    let hearth_name = hal.split_once(':').unwrap().1.to_owned();

    // Synapse runs make_join and send_join against Hearth, and checks the state it gets back.
    let (syd_id, syd_tok) = synapse_user(&synapse, "syd").await;
    let path = format!("/join/{}?server_name={}", enc(&room), enc(&hearth_name));
    let joined = synapse
        .call(reqwest::Method::POST, &path, Some(&syd_tok), json!({}))
        .await;
    assert_eq!(joined["room_id"], room.as_str(), "{}", hearth.log_tail(20));

    let (status, members) = hearth
        .get(&format!("/rooms/{}/joined_members", enc(&room)), &hal_tok)
        .await;
    assert_eq!(status, 200, "{members}");
    assert!(members["joined"][&syd_id].is_object(), "{members}");
    let (_, sync) = hearth.get("/sync", &hal_tok).await;
    let timeline = sync["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        timeline
            .iter()
            .any(|e| e["type"] == "m.room.member" && e["state_key"] == syd_id.as_str()),
        "the remote join is in the room's timeline: {sync}"
    );
    // Synapse's user speaks; Synapse sends the event to Hearth in a transaction.
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    let path = format!("/rooms/{}/send/m.room.message/t1", enc(&room));
    let msg = json!({ "msgtype": "m.text", "body": "hello from synapse" });
    let sent = synapse
        .call(reqwest::Method::PUT, &path, Some(&syd_tok), msg)
        .await;
    let event_id = sent["event_id"].as_str().unwrap().to_owned();
    let mut hearth_since = Some(since);
    let seen = hearth_sees(&hearth, &hal_tok, &mut hearth_since, |sync| {
        let events = &sync["rooms"]["join"][&room]["timeline"]["events"];
        events.as_array().into_iter().flatten().any(|e| {
            e["event_id"] == event_id.as_str() && e["content"]["body"] == "hello from synapse"
        })
    })
    .await;
    assert!(
        seen,
        "Synapse's message reached Hearth's user: {}",
        hearth.log_tail(20)
    );

    // Hearth's user answers; Hearth's outbox sends the event to Synapse in a transaction.
    let reply = hearth
        .send_text(&hal_tok, &room, "r1", "hello from hearth")
        .await;
    let mut since: Option<String> = None;
    let arrived =
        synapse_sees(&synapse, &syd_tok, &mut since, |sync| {
            let events = &sync["rooms"]["join"][&room]["timeline"]["events"];
            events.as_array().into_iter().flatten().any(|e| {
                e["event_id"] == reply.as_str() && e["content"]["body"] == "hello from hearth"
            })
        })
        .await;
    assert!(
        arrived,
        "Hearth's message reached Synapse's user: {}",
        hearth.log_tail(20)
    );

    // Typing travels as EDUs both ways.
    let typing = format!("/rooms/{}/typing/{}", enc(&room), enc(&syd_id));
    synapse
        .call(
            reqwest::Method::PUT,
            &typing,
            Some(&syd_tok),
            json!({ "typing": true, "timeout": 20000 }),
        )
        .await;
    let seen_typing = hearth_sees(&hearth, &hal_tok, &mut hearth_since, |sync| {
        sync["rooms"]["join"][&room]["ephemeral"]["events"]
            .to_string()
            .contains(&syd_id)
    })
    .await;
    assert!(
        seen_typing,
        "Synapse's typing reached Hearth: {}",
        hearth.log_tail(20)
    );

    let typing = format!("/rooms/{}/typing/{}", enc(&room), enc(&hal));
    let (status, _) = hearth
        .put(
            &typing,
            &hal_tok,
            &json!({ "typing": true, "timeout": 20000 }),
        )
        .await;
    assert_eq!(status, 200);
    let receipt = format!("/rooms/{}/receipt/m.read/{}", enc(&room), enc(&event_id));
    let (status, _) = hearth.post(&receipt, &hal_tok, &json!({})).await;
    assert_eq!(status, 200);
    let (mut saw_typing, mut saw_receipt) = (false, false);
    synapse_sees(&synapse, &syd_tok, &mut since, |sync| {
        let eph = sync["rooms"]["join"][&room]["ephemeral"]["events"].to_string();
        saw_typing |= eph.contains("m.typing") && eph.contains(&hal);
        saw_receipt |= eph.contains("m.receipt") && eph.contains(&hal);
        saw_typing && saw_receipt
    })
    .await;
    assert!(
        saw_typing && saw_receipt,
        "Hearth's typing ({saw_typing}) and read receipt ({saw_receipt}) reached Synapse: {}",
        hearth.log_tail(20)
    );

    // Presence travels both ways, status messages included.
    let hal_presence = format!("/presence/{}/status", enc(&hal));
    let (status, _) = hearth
        .put(
            &hal_presence,
            &hal_tok,
            &json!({ "presence": "online", "status_msg": "from hearth" }),
        )
        .await;
    assert_eq!(status, 200);
    let syd_presence = format!("/presence/{}/status", enc(&syd_id));
    synapse
        .call(
            reqwest::Method::PUT,
            &syd_presence,
            Some(&syd_tok),
            json!({ "presence": "online", "status_msg": "from synapse" }),
        )
        .await;
    let at_synapse = synapse_sees(&synapse, &syd_tok, &mut since, |sync| {
        sync["presence"].to_string().contains("from hearth")
    })
    .await;
    assert!(
        at_synapse,
        "Hearth's presence reached Synapse: {}",
        hearth.log_tail(20)
    );
    let mut at_hearth = false;
    for _ in 0..20 {
        let (_, body) = hearth.get(&syd_presence, &hal_tok).await;
        if body["status_msg"] == "from synapse" {
            assert_eq!(body["presence"], "online", "{body}");
            at_hearth = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(
        at_hearth,
        "Synapse's presence reached Hearth: {}",
        hearth.log_tail(20)
    );

    // To-device messages travel as EDUs both ways.
    let path = "/sendToDevice/org.example.ping/td1";
    synapse
        .call(
            reqwest::Method::PUT,
            path,
            Some(&syd_tok),
            json!({ "messages": { &hal: { &hal_device: { "from": "synapse" } } } }),
        )
        .await;
    let (status, _) = hearth
        .put(
            path,
            &hal_tok,
            &json!({ "messages": { &syd_id: { "*": { "from": "hearth" } } } }),
        )
        .await;
    assert_eq!(status, 200);
    let at_hearth = hearth_sees(&hearth, &hal_tok, &mut hearth_since, |sync| {
        let td = sync["to_device"]["events"].to_string();
        td.contains("\"synapse\"") && td.contains(&syd_id)
    })
    .await;
    assert!(
        at_hearth,
        "Synapse's to-device message reached Hearth: {}",
        hearth.log_tail(20)
    );
    let at_synapse = synapse_sees(&synapse, &syd_tok, &mut since, |sync| {
        sync["to_device"]["events"]
            .to_string()
            .contains("\"hearth\"")
    })
    .await;
    assert!(
        at_synapse,
        "Hearth's to-device message reached Synapse: {}",
        hearth.log_tail(20)
    );

    // Synapse sees the room's state as Hearth made it.
    let path = format!("/rooms/{}/state/m.room.name/", enc(&room));
    let name = synapse
        .call(reqwest::Method::GET, &path, Some(&syd_tok), json!({}))
        .await;
    assert_eq!(name["name"], "town square");

    let _ = std::fs::remove_dir_all(&tls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hearth_user_joins_a_room_on_synapse() {
    let synapse = Synapse::start().await;
    let (hearth, tls) = hearth_beside(&synapse).await;
    let (syd_id, syd_tok) = synapse_user(&synapse, "syd").await;
    let room = public_room_on_synapse(&synapse, &syd_tok, "synapse hall").await;
    let synapse_name = syd_id.split_once(':').unwrap().1.to_owned();
    let path = format!("/rooms/{}/send/m.room.message/s0", enc(&room));
    synapse
        .call(
            reqwest::Method::PUT,
            &path,
            Some(&syd_tok),
            json!({ "msgtype": "m.text", "body": "before hal came" }),
        )
        .await;

    // Hearth runs make_join and send_join against Synapse and takes the room in.
    let (hal, hal_tok, _) = hearth.register("hal", "pw-hal-1").await;
    let (status, body) = hearth
        .post(
            &format!("/join/{}?server_name={}", enc(&room), enc(&synapse_name)),
            &hal_tok,
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body} {}", hearth.log_tail(30));
    assert_eq!(body["room_id"], room.as_str());

    // The room's state came along: its name, and both members.
    let (status, name) = hearth
        .get(
            &format!("/rooms/{}/state/m.room.name/", enc(&room)),
            &hal_tok,
        )
        .await;
    assert_eq!(status, 200, "{name}");
    assert_eq!(name["name"], "synapse hall");
    let (_, members) = hearth
        .get(&format!("/rooms/{}/joined_members", enc(&room)), &hal_tok)
        .await;
    assert!(members["joined"][&syd_id].is_object(), "{members}");
    assert!(members["joined"][&hal].is_object(), "{members}");

    // Synapse's user sees the join and hal's message; hal gets Synapse's next message.
    hearth
        .send_text(&hal_tok, &room, "h1", "hello from hearth")
        .await;
    let mut since: Option<String> = None;
    let seen = synapse_sees(&synapse, &syd_tok, &mut since, |sync| {
        sync["rooms"]["join"][&room]["timeline"]["events"]
            .to_string()
            .contains("hello from hearth")
    })
    .await;
    assert!(
        seen,
        "Hearth's message reached Synapse: {}",
        hearth.log_tail(20)
    );

    let (_, first) = hearth.get("/sync?timeout=0", &hal_tok).await;
    let mut hal_since = first["next_batch"].as_str().map(str::to_owned);
    let path = format!("/rooms/{}/send/m.room.message/s1", enc(&room));
    synapse
        .call(
            reqwest::Method::PUT,
            &path,
            Some(&syd_tok),
            json!({ "msgtype": "m.text", "body": "welcome hal" }),
        )
        .await;
    let arrived = hearth_sees(&hearth, &hal_tok, &mut hal_since, |sync| {
        sync["rooms"]["join"][&room]["timeline"]["events"]
            .to_string()
            .contains("welcome hal")
    })
    .await;
    assert!(
        arrived,
        "Synapse's message reached Hearth: {}",
        hearth.log_tail(20)
    );
    let _ = std::fs::remove_dir_all(&tls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_room_between_hearth_and_synapse() {
    use matrix_sdk::ruma::api::client::room::create_room::v3::RoomPreset;
    use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;

    let synapse = Synapse::start().await;
    let (hearth, tls) = hearth_beside(&synapse).await;
    let (hal_id, _, _) = hearth.register("hal", "pw-hal-1").await;
    let hearth_name = hal_id.split_once(':').unwrap().1.to_owned();
    let (syd_id, _) = synapse_user(&synapse, "syd").await;
    let syd_local = syd_id
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap()
        .to_owned();
    let hal = sdk_login(&hearth.base_url(), "hal", "pw-hal-1").await;
    let syd = sdk_login(&synapse.client_url, &syd_local, "pw-syd-12345").await;

    let mut request = encrypted_room();
    request.preset = Some(RoomPreset::PublicChat);
    let room_id = hal
        .create_room(request)
        .await
        .expect("create")
        .room_id()
        .to_owned();
    let via = matrix_sdk::ruma::OwnedServerName::try_from(hearth_name.as_str()).unwrap();
    syd.join_room_by_id_or_alias(<&matrix_sdk::ruma::RoomOrAliasId>::from(&*room_id), &[via])
        .await
        .expect("syd joins the room on Hearth");
    common::sync(&syd).await;
    let syd_user = matrix_sdk::ruma::OwnedUserId::try_from(syd_id.as_str()).unwrap();
    learns_devices_of(&hal, &syd_user, 20).await;

    hal.get_room(&room_id)
        .unwrap()
        .send(RoomMessageEventContent::text_plain(
            "hearth to synapse, sealed",
        ))
        .await
        .expect("hal sends");
    sees_text(
        &syd,
        &room_id,
        "hearth to synapse, sealed",
        std::time::Duration::from_secs(40),
    )
    .await;
    syd.get_room(&room_id)
        .unwrap()
        .send(RoomMessageEventContent::text_plain(
            "synapse to hearth, sealed",
        ))
        .await
        .expect("syd replies");
    sees_text(
        &hal,
        &room_id,
        "synapse to hearth, sealed",
        std::time::Duration::from_secs(40),
    )
    .await;
    let _ = std::fs::remove_dir_all(tls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_travels_between_hearth_and_synapse() {
    let synapse = Synapse::start().await;
    let (hearth, tls) = hearth_beside(&synapse).await;
    let (hal_id, hal_tok, _) = hearth.register("hal", "pw-hal-1").await;
    let hearth_name = hal_id.split_once(':').unwrap().1.to_owned();
    let (_, syd_tok) = synapse_user(&synapse, "syd").await;
    let http = reqwest::Client::new();
    let data: Vec<u8> = (0..2 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();

    // Hearth's media, downloaded by a Synapse user through Synapse (federation v1 media).
    let (status, up) = hearth
        .request_raw(
            hearth_conformance::Method::POST,
            "/_matrix/media/v3/upload",
            Some(&hal_tok),
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
    let resp = http
        .get(format!(
            "{}/_matrix/client/v1/media/download/{hearth_name}/{id}",
            synapse.client_url
        ))
        .bearer_auth(&syd_tok)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", hearth.log_tail(20));
    assert!(
        resp.bytes().await.unwrap()[..] == data[..],
        "Synapse relays Hearth's bytes"
    );

    // Synapse's media, downloaded by a Hearth user through Hearth.
    let resp = http
        .post(format!("{}/_matrix/media/v3/upload", synapse.client_url))
        .bearer_auth(&syd_tok)
        .header("content-type", "image/png")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    let up: serde_json::Value = resp.json().await.unwrap();
    let uri = up["content_uri"]
        .as_str()
        .expect("Synapse content_uri")
        .to_owned();
    let (server, id) = uri.trim_start_matches("mxc://").split_once('/').unwrap();
    let resp = http
        .get(format!(
            "{}/_matrix/client/v1/media/download/{server}/{id}",
            hearth.base_url()
        ))
        .bearer_auth(&hal_tok)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", hearth.log_tail(20));
    assert_eq!(resp.headers()["content-type"], "image/png");
    assert!(
        resp.bytes().await.unwrap()[..] == data[..],
        "Hearth fetches Synapse's bytes"
    );
    let _ = std::fs::remove_dir_all(tls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_go_both_ways_between_hearth_and_synapse() {
    let synapse = Synapse::start().await;
    let (hearth, _tls) = hearth_beside(&synapse).await;
    let (hal, hal_tok, _) = hearth.register("hal", "pw-hal-1").await;
    let (syd_id, syd_tok) = synapse_user(&synapse, "syd").await;

    // Hearth → Synapse: a direct chat; Synapse countersigns the invite, its user accepts.
    let dm = hearth
        .create_room(
            &hal_tok,
            &json!({ "preset": "trusted_private_chat", "is_direct": true, "invite": [syd_id] }),
        )
        .await;
    let mut syd_since = None;
    let invited = synapse_sees(&synapse, &syd_tok, &mut syd_since, |s| {
        s["rooms"]["invite"][&dm]["invite_state"]["events"]
            .as_array()
            .is_some_and(|events| {
                events.iter().any(|e| {
                    e["type"] == "m.room.member"
                        && e["state_key"] == syd_id.as_str()
                        && e["content"]["is_direct"] == true
                })
            })
    })
    .await;
    assert!(invited, "Synapse shows the invite: {}", hearth.log_tail(20));
    let joined = synapse
        .call(
            reqwest::Method::POST,
            &format!("/rooms/{}/join", enc(&dm)),
            Some(&syd_tok),
            json!({}),
        )
        .await;
    assert_eq!(joined["room_id"], dm.as_str(), "{}", hearth.log_tail(20));
    let (_, members) = hearth
        .get(&format!("/rooms/{}/joined_members", enc(&dm)), &hal_tok)
        .await;
    assert!(members["joined"][&syd_id].is_object(), "{members}");

    // Synapse's user turns the next invite down: Synapse runs make_leave and send_leave on
    // Hearth, and Hearth's room no longer has them invited.
    let other = hearth
        .create_room(&hal_tok, &json!({ "invite": [syd_id] }))
        .await;
    assert!(
        synapse_sees(&synapse, &syd_tok, &mut syd_since, |s| s["rooms"]["invite"]
            [&other]
            .is_object())
        .await
    );
    synapse
        .call(
            reqwest::Method::POST,
            &format!("/rooms/{}/leave", enc(&other)),
            Some(&syd_tok),
            json!({}),
        )
        .await;
    let (_, member) = hearth
        .get(
            &format!(
                "/rooms/{}/state/m.room.member/{}",
                enc(&other),
                enc(&syd_id)
            ),
            &hal_tok,
        )
        .await;
    assert_eq!(
        member["membership"],
        "leave",
        "{member} {}",
        hearth.log_tail(20)
    );

    // Synapse → Hearth: Synapse's invite reaches Hearth's user, who joins through Synapse.
    let created = synapse
        .call(
            reqwest::Method::POST,
            "/createRoom",
            Some(&syd_tok),
            json!({ "name": "synapse side", "invite": [hal] }),
        )
        .await;
    let room = created["room_id"].as_str().unwrap().to_owned();
    let mut hal_since = None;
    let seen = hearth_sees(&hearth, &hal_tok, &mut hal_since, |s| {
        s["rooms"]["invite"][&room]["invite_state"]["events"]
            .as_array()
            .is_some_and(|events| {
                events
                    .iter()
                    .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "synapse side")
            })
    })
    .await;
    assert!(
        seen,
        "Hearth shows Synapse's invite: {}",
        hearth.log_tail(20)
    );
    let (status, body) = hearth
        .post(&format!("/rooms/{}/join", enc(&room)), &hal_tok, &json!({}))
        .await;
    assert_eq!(status, 200, "{body} {}", hearth.log_tail(20));
    let members = synapse
        .call(
            reqwest::Method::GET,
            &format!("/rooms/{}/joined_members", enc(&room)),
            Some(&syd_tok),
            json!({}),
        )
        .await;
    assert!(members["joined"][&hal].is_object(), "{members}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_backfills_history_from_hearth() {
    let synapse = Synapse::start().await;
    let (hearth, _tls) = hearth_beside(&synapse).await;
    let (hal, hal_tok, _) = hearth.register("hal", "pw-hal-1").await;
    let room = hearth
        .create_room(
            &hal_tok,
            &json!({ "preset": "public_chat", "name": "old news" }),
        )
        .await;
    for i in 0..30 {
        hearth
            .send_text(&hal_tok, &room, &format!("h{i}"), &format!("history {i}"))
            .await;
    }
    let hearth_name = hal.split_once(':').unwrap().1.to_owned();
    let (_, syd_tok) = synapse_user(&synapse, "syd").await;
    let joined = synapse
        .call(
            reqwest::Method::POST,
            &format!("/join/{}?server_name={}", enc(&room), enc(&hearth_name)),
            Some(&syd_tok),
            json!({}),
        )
        .await;
    assert_eq!(joined["room_id"], room.as_str(), "{}", hearth.log_tail(20));

    // Synapse has the room's state but none of its history: paging back makes it backfill
    // from Hearth (`/backfill`, and `/event` or `/state_ids` for whatever it lacks).
    let mut bodies = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..10 {
        let path = match &from {
            Some(f) => format!(
                "/rooms/{}/messages?dir=b&limit=20&from={}",
                enc(&room),
                enc(f)
            ),
            None => format!("/rooms/{}/messages?dir=b&limit=20", enc(&room)),
        };
        let page = synapse
            .call(reqwest::Method::GET, &path, Some(&syd_tok), json!({}))
            .await;
        bodies.extend(hearth_conformance::message_bodies(
            page["chunk"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default(),
        ));
        match page["end"].as_str() {
            Some(end) if page["chunk"].as_array().is_some_and(|c| !c.is_empty()) => {
                from = Some(end.to_owned())
            }
            _ => break,
        }
    }
    for i in [0, 15, 29] {
        assert!(
            bodies.contains(&format!("history {i}")),
            "Synapse backfilled message {i}: {bodies:?}\n{}",
            hearth.log_tail(30)
        );
    }
}

/// A public room with a name, created on Synapse by the user of `token`.
async fn public_room_on_synapse(synapse: &Synapse, token: &str, name: &str) -> String {
    let created = synapse
        .call(
            reqwest::Method::POST,
            "/createRoom",
            Some(token),
            json!({ "preset": "public_chat", "name": name }),
        )
        .await;
    created["room_id"].as_str().unwrap().to_owned()
}

/// Messages said on Synapse before Hearth's user joins.
const SYNAPSE_HISTORY: usize = 120;

/// Hearth's user joins a room with a history on Synapse and pages back past the join: Hearth
/// backfills it from Synapse (`/backfill`, and `/state_ids` and `/event` at each batch's edge),
/// every event checked, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hearth_backfills_history_from_synapse() {
    let synapse = Synapse::start().await;
    let (hearth, _tls) = hearth_beside(&synapse).await;
    let (syd_id, syd_tok) = synapse_user(&synapse, "syd").await;
    let room = public_room_on_synapse(&synapse, &syd_tok, "synapse archive").await;
    let said: Vec<String> = (0..SYNAPSE_HISTORY)
        .map(|i| format!("before hal {i}"))
        .collect();
    for (i, body) in said.iter().enumerate() {
        if i == SYNAPSE_HISTORY / 2 {
            synapse
                .call(
                    reqwest::Method::PUT,
                    &format!("/rooms/{}/state/m.room.topic/", enc(&room)),
                    Some(&syd_tok),
                    json!({ "topic": "halfway" }),
                )
                .await;
        }
        synapse
            .call(
                reqwest::Method::PUT,
                &format!("/rooms/{}/send/m.room.message/b{i}", enc(&room)),
                Some(&syd_tok),
                json!({ "msgtype": "m.text", "body": body }),
            )
            .await;
    }

    let (hal, hal_tok, _) = hearth.register("hal", "pw-hal-1").await;
    let synapse_name = syd_id.split_once(':').unwrap().1;
    let (status, body) = hearth
        .post(
            &format!("/join/{}?server_name={}", enc(&room), enc(synapse_name)),
            &hal_tok,
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body} {}", hearth.log_tail(30));

    // A real client pages back first (matrix-sdk, from its sync's prev_batch), which makes
    // Hearth backfill; then the raw API reads it all again, from Hearth's store.
    let client = sdk_login(&hearth.base_url(), "hal", "pw-hal-1").await;
    let sdk_room = client
        .get_room(&matrix_sdk::ruma::RoomId::parse(&room).unwrap())
        .expect("hal's client knows the room");
    let mut sdk_bodies = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..40 {
        let mut options = matrix_sdk::room::MessagesOptions::backward().from(from.as_deref());
        options.limit = matrix_sdk::ruma::uint!(30);
        let page = sdk_room.messages(options).await.expect("messages");
        sdk_bodies.extend(common::bodies(&page.chunk));
        match page.end {
            Some(end) => from = Some(end),
            None => break,
        }
    }
    sdk_bodies.reverse();
    assert_eq!(
        sdk_bodies,
        said,
        "hal's client reads everything said before the join, once each, in order\n{}",
        hearth.log_tail(30)
    );
    let (events, _) = hearth.page_back_all(&hal_tok, &room, 25).await;
    assert_eq!(hearth_conformance::message_bodies(&events), said);
    assert_eq!(
        events[0]["type"], "m.room.create",
        "back to the room's start"
    );
    let topic = events
        .iter()
        .position(|e| e["type"] == "m.room.topic")
        .expect("the topic change is in the history");
    assert_eq!(
        events[topic + 1]["content"]["body"],
        said[SYNAPSE_HISTORY / 2]
    );
    let join = events.last().unwrap();
    assert_eq!(join["state_key"], hal.as_str());
    assert!(
        join["unsigned"].get("replaces_state").is_none(),
        "a first join replaces nothing: {join}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hearth_receives_what_was_said_while_it_was_down() {
    let synapse = Synapse::start().await;
    let (mut hearth, _tls) = hearth_beside(&synapse).await;
    let (room, syd_tok, _) = room_on_synapse_joined_by_hal(&synapse, &hearth).await;

    // Hearth goes down; Synapse's user talks meanwhile, and Synapse's tries fail and back off
    // (for seconds: with this configuration it keeps the events queued and sends them all).
    hearth.kill9();
    for i in 0..DOWN_MESSAGES {
        say(&synapse, &syd_tok, &room, i).await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    hearth.restart().await;
    // Past Synapse's backoff, one more message: everything reaches Hearth, in order.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    say(&synapse, &syd_tok, &room, DOWN_MESSAGES).await;
    let (_, hal_tok, _) = hearth.login("hal", "pw-hal-1").await;
    let wanted: Vec<String> = (0..=DOWN_MESSAGES)
        .map(|i| format!("while down {i}"))
        .collect();
    let mut bodies = Vec::new();
    for _ in 0..60 {
        bodies = hearth_history(&hearth, &hal_tok, &room)
            .await
            .into_iter()
            .filter(|b| b.starts_with("while down "))
            .collect();
        if bodies.last() == wanted.last() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert_eq!(
        bodies,
        wanted,
        "every message reached Hearth once, in order\n{}",
        hearth.log_tail(30)
    );
}

/// A public room on Synapse, created by its user `syd`, which Hearth's user `hal` (registered
/// here) joins after the invite reaches Hearth. Answers the room and both access tokens.
async fn room_on_synapse_joined_by_hal(
    synapse: &Synapse,
    hearth: &TestServer,
) -> (String, String, String) {
    let (hal, _, _) = hearth.register("hal", "pw-hal-1").await;
    let (_, syd_tok) = synapse_user(synapse, "syd").await;
    let created = synapse
        .call(
            reqwest::Method::POST,
            "/createRoom",
            Some(&syd_tok),
            json!({ "preset": "public_chat", "invite": [hal] }),
        )
        .await;
    let room = created["room_id"].as_str().unwrap().to_owned();
    let (_, hal_tok, _) = hearth.login("hal", "pw-hal-1").await;
    let mut hal_since = None;
    assert!(
        hearth_sees(hearth, &hal_tok, &mut hal_since, |s| {
            s["rooms"]["invite"][&room].is_object()
        })
        .await
    );
    let (status, body) = hearth
        .post(&format!("/rooms/{}/join", enc(&room)), &hal_tok, &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    (room, syd_tok, hal_tok)
}

const DOWN_MESSAGES: usize = 30;

/// Synapse's catch-up after a long outage (its backoff past an hour) sends only the room's
/// latest event. Hearth fetches the gap before it in `/get_missing_events` rounds up to 200
/// events, keeps the far edge with the state Synapse reports there (`/state_ids`), and the
/// room goes on in both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hearth_fills_a_long_gap_after_synapse_catches_up() {
    let synapse = Synapse::start().await;
    // A failed transaction (its retries 100 ms apart) backs off for two hours: past Synapse's
    // one-hour mark, it stops queuing events for Hearth and later catches up with each room's
    // latest event only.
    synapse
        .restart_with(
            "federation:\n  client_timeout: 20s\n  max_short_retry_delay: 100\n  \
             max_long_retry_delay: 100\n  destination_min_retry_interval: 2h\n  \
             destination_retry_multiplier: 2\n  destination_max_retry_interval: 4h\n",
        )
        .await;
    let (mut hearth, _tls) = hearth_beside(&synapse).await;
    let (room, syd_tok, hal_tok) = room_on_synapse_joined_by_hal(&synapse, &hearth).await;

    // One delivered message first: Synapse catches up only from a PDU it knows was received.
    synapse
        .call(
            reqwest::Method::PUT,
            &format!("/rooms/{}/send/m.room.message/first", enc(&room)),
            Some(&syd_tok),
            json!({ "msgtype": "m.text", "body": "before the outage" }),
        )
        .await;
    let mut arrived = false;
    for _ in 0..60 {
        if hearth_history(&hearth, &hal_tok, &room)
            .await
            .iter()
            .any(|b| b == "before the outage")
        {
            arrived = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(arrived, "{}", hearth.log_tail(20));

    hearth.kill9();
    say(&synapse, &syd_tok, &room, 0).await;
    // Until Synapse has given up on that first transaction.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    for i in 1..LONG_GAP {
        say(&synapse, &syd_tok, &room, i).await;
    }
    hearth.restart().await;
    // Hearth speaks first: a request from it tells Synapse it is back, and Synapse catches up.
    let (_, hal_tok, _) = hearth.login("hal", "pw-hal-1").await;
    let (status, body) = hearth
        .put(
            &format!("/rooms/{}/send/m.room.message/back", enc(&room)),
            &hal_tok,
            &json!({ "msgtype": "m.text", "body": "hal is back" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Synapse marks Hearth as up once that transaction arrives.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;

    // Synapse's next message builds on all it said: Hearth must fetch what it missed first.
    // (Synapse's catch-up may already have sent the latest event; this one needs the gap filled
    // either way.)
    say(&synapse, &syd_tok, &room, LONG_GAP).await;
    let next = format!("while down {LONG_GAP}");
    let mut bodies = Vec::new();
    for _ in 0..120 {
        bodies = hearth_history(&hearth, &hal_tok, &room).await;
        if bodies.contains(&next) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let down: Vec<usize> = bodies
        .iter()
        .filter_map(|b| b.strip_prefix("while down ")?.parse().ok())
        .collect();
    // The newest 200 and the one after are there once each, in order; older ones may stay
    // beyond the gap's edge, as history.
    let tail: Vec<usize> = (LONG_GAP - 200..=LONG_GAP).collect();
    assert!(
        down.ends_with(&tail),
        "the last 200 messages reached Hearth once each, in order: {down:?}\n{}",
        hearth.log_tail(30)
    );
    assert!(
        down.windows(2).all(|w| w[0] < w[1]),
        "in order, none twice: {down:?}"
    );

    // And Hearth's own messages still reach Synapse.
    let (status, body) = hearth
        .put(
            &format!("/rooms/{}/send/m.room.message/after", enc(&room)),
            &hal_tok,
            &json!({ "msgtype": "m.text", "body": "hal after the gap" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut seen = false;
    for _ in 0..60 {
        let page = synapse
            .call(
                reqwest::Method::GET,
                &format!("/rooms/{}/messages?dir=b&limit=20", enc(&room)),
                Some(&syd_tok),
                json!({}),
            )
            .await;
        let chunk = page["chunk"].as_array().cloned().unwrap_or_default();
        if hearth_conformance::message_bodies(&chunk).contains(&"hal after the gap".to_owned()) {
            seen = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(
        seen,
        "Synapse got Hearth's message after the gap\n{}",
        hearth.log_tail(30)
    );
}

const LONG_GAP: usize = 240;

/// The room's last 500 message bodies on Hearth, oldest first.
async fn hearth_history(hearth: &TestServer, token: &str, room: &str) -> Vec<String> {
    let (status, page) = hearth
        .get(
            &format!("/rooms/{}/messages?dir=b&limit=500", enc(room)),
            token,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let mut bodies = hearth_conformance::message_bodies(
        page["chunk"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default(),
    );
    bodies.reverse();
    bodies
}

async fn say(synapse: &Synapse, token: &str, room: &str, i: usize) {
    synapse
        .call(
            reqwest::Method::PUT,
            &format!("/rooms/{}/send/m.room.message/d{i}", enc(room)),
            Some(token),
            json!({ "msgtype": "m.text", "body": format!("while down {i}") }),
        )
        .await;
}
