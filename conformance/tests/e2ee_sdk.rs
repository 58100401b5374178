//! End-to-end encryption as matrix-sdk (with its e2e-encryption feature) drives it: two users
//! with two devices each, cross-signing, an encrypted room both sides decrypt, a late device
//! that reads history through key backup, a deleted device leaving the other side's view, and
//! the server's data directory holding none of the plaintexts.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    bodies, create_and_join, encrypted_room, learns_devices_of, sdk_login, sdk_register, sees_text,
    sync,
};
use hearth_conformance::TestServer;
use matrix_sdk::Client;
use matrix_sdk::room::MessagesOptions;
use matrix_sdk::ruma::UserId;
use matrix_sdk::ruma::api::client::uiaa;
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;

const PW: &str = "correct horse battery staple";
const ALPHA: &str = "hearth-plaintext-alpha-7c1e";
const BRAVO: &str = "hearth-plaintext-bravo-93fd";

async fn device_ids(client: &Client, user: &UserId) -> Vec<String> {
    let mut ids: Vec<String> = client
        .encryption()
        .get_user_devices(user)
        .await
        .expect("devices")
        .keys()
        .map(|d| d.to_string())
        .collect();
    ids.sort();
    ids
}

fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return hits;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            hits.extend(files_containing(&path, needle));
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            hits.push(path.display().to_string());
        }
    }
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_with_two_devices_each_talk_encrypted_and_a_late_device_restores_history() {
    let server = TestServer::start().await;

    // Each user: a first device that sets up cross-signing, and a second device.
    let alice = sdk_register(&server, "alice", PW).await;
    sync(&alice).await;
    alice
        .encryption()
        .bootstrap_cross_signing(None)
        .await
        .expect("the first cross-signing upload needs no password");
    let recovery_key = alice
        .encryption()
        .recovery()
        .enable()
        .wait_for_backups_to_upload()
        .await
        .expect("alice enables secret storage and key backup");
    let bob = sdk_register(&server, "bob", PW).await;
    sync(&bob).await;
    bob.encryption()
        .bootstrap_cross_signing(None)
        .await
        .expect("bob's cross-signing");
    let alice2 = sdk_login(&server.base_url(), "alice", PW).await;
    let bob2 = sdk_login(&server.base_url(), "bob", PW).await;
    let bob_id = bob.user_id().unwrap().to_owned();

    // Replacing the cross-signing keys is protected by the password.
    let err = bob2
        .encryption()
        .bootstrap_cross_signing(None)
        .await
        .expect_err("replacing cross-signing keys needs auth");
    let uiaa_info = err.as_uiaa_response().expect("a UIA answer");
    let mut password = uiaa::Password::new(
        uiaa::UserIdentifier::Matrix(uiaa::MatrixUserIdentifier::new("bob".to_owned())),
        PW.to_owned(),
    );
    password.session = uiaa_info.session.clone();
    bob2.encryption()
        .bootstrap_cross_signing(Some(uiaa::AuthData::Password(password)))
        .await
        .expect("with the password bob2 replaces them");
    let own = bob
        .encryption()
        .get_user_identity(&bob_id)
        .await
        .expect("identity");
    assert!(own.is_some(), "bob's cross-signing identity is published");

    // An encrypted room: every device of the other user decrypts.
    let room_id = create_and_join(&alice, &bob, encrypted_room()).await;
    sync(&bob2).await;
    sync(&alice2).await;
    let room = alice.get_room(&room_id).unwrap();
    assert!(room.latest_encryption_state().await.unwrap().is_encrypted());
    room.send(RoomMessageEventContent::text_plain(ALPHA))
        .await
        .expect("alice sends");
    sees_text(&bob, &room_id, ALPHA, Duration::from_secs(30)).await;
    sees_text(&bob2, &room_id, ALPHA, Duration::from_secs(30)).await;
    bob.get_room(&room_id)
        .unwrap()
        .send(RoomMessageEventContent::text_plain(BRAVO))
        .await
        .expect("bob replies");
    sees_text(&alice, &room_id, BRAVO, Duration::from_secs(30)).await;
    sees_text(&alice2, &room_id, BRAVO, Duration::from_secs(30)).await;

    // A third device of alice's, added later, restores the room keys from the backup with the
    // recovery key and reads the history.
    alice
        .encryption()
        .backups()
        .wait_for_steady_state()
        .await
        .expect("alice's keys are backed up");
    let (status, backup) = server
        .get("/room_keys/version", &common::token(&alice))
        .await;
    assert_eq!(status, 200, "{backup}");
    let version = backup["version"].as_str().expect("version").to_owned();
    let (_, keys) = server
        .get(
            &format!("/room_keys/keys/{room_id}?version={version}"),
            &common::token(&alice),
        )
        .await;
    assert!(
        keys["sessions"].as_object().is_some_and(|s| !s.is_empty()),
        "the room's session is in the backup: {keys}"
    );
    let alice3 = sdk_login(&server.base_url(), "alice", PW).await;
    alice3
        .encryption()
        .recovery()
        .recover(&recovery_key)
        .await
        .expect("recover with the recovery key");
    alice3
        .encryption()
        .backups()
        .download_room_keys_for_room(&room_id)
        .await
        .expect("download the room's keys from the backup");
    let history = alice3
        .get_room(&room_id)
        .expect("alice3 knows the room")
        .messages(MessagesOptions::backward())
        .await
        .expect("messages");
    let read = bodies(&history.chunk);
    assert!(
        read.contains(&ALPHA.to_owned()) && read.contains(&BRAVO.to_owned()),
        "the late device decrypts history through the backup: {read:?}"
    );

    // bob2 goes away: alice's client learns it from her sync's device list changes.
    let bob2_id = bob2.device_id().unwrap().to_string();
    assert!(device_ids(&alice, &bob_id).await.contains(&bob2_id));
    bob2.logout().await.expect("bob2 logs out");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        sync(&alice).await;
        if !device_ids(&alice, &bob_id).await.contains(&bob2_id) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alice still lists bob's deleted device"
        );
    }

    // The server relayed ciphertext only.
    let raw = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=50"),
            &common::token(&bob),
        )
        .await;
    let kinds: Vec<String> = raw.1["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter_map(|e| e["type"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| *k == "m.room.encrypted").count(),
        2,
        "{kinds:?}"
    );
    assert!(!kinds.iter().any(|k| k == "m.room.message"), "{kinds:?}");

    // The server stored ciphertext only.
    drop((alice, alice2, alice3, bob));
    for text in [ALPHA, BRAVO] {
        let hits = files_containing(server.data_dir(), text.as_bytes());
        assert!(hits.is_empty(), "{text} is in plain text in {hits:?}");
    }
}

/// A message encrypted before bob joined, which he has no key for: matrix-sdk explains it as
/// "sent before you joined" from the event's `unsigned.membership` (MSC4115), and decrypts what
/// comes after his join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecryptable_message_from_before_the_join_is_explained_by_the_membership() {
    use matrix_sdk::deserialized_responses::TimelineEventKind;
    use matrix_sdk::ruma::MilliSecondsSinceUnixEpoch;
    use matrix_sdk::ruma::api::client::room::Visibility;
    use matrix_sdk::ruma::api::client::room::create_room::v3::RoomPreset;
    use matrix_sdk_crypto::types::events::{CryptoContextInfo, UtdCause};

    let server = TestServer::start().await;
    let alice = sdk_register(&server, "alice", PW).await;
    let bob = sdk_register(&server, "bob", PW).await;
    sync(&alice).await;
    sync(&bob).await;
    // A public, encrypted room with shared history: bob may read what came before his join,
    // but nobody gave him its key.
    let mut request = encrypted_room();
    request.preset = Some(RoomPreset::PublicChat);
    request.visibility = Visibility::Public;
    let room_id = alice
        .create_room(request)
        .await
        .expect("createRoom")
        .room_id()
        .to_owned();
    sync(&alice).await;
    alice
        .get_room(&room_id)
        .unwrap()
        .send(RoomMessageEventContent::text_plain(ALPHA))
        .await
        .expect("alice sends before bob joins");

    bob.join_room_by_id(&room_id).await.expect("bob joins");
    let deadline = Instant::now() + Duration::from_secs(10);
    let (raw, utd_info) = loop {
        let r = sync(&bob).await;
        let utd = r.rooms.joined.get(&room_id).and_then(|j| {
            j.timeline.events.iter().find_map(|e| match &e.kind {
                TimelineEventKind::UnableToDecrypt { event, utd_info } => {
                    Some((event.clone(), utd_info.clone()))
                }
                _ => None,
            })
        });
        if let Some(found) = utd {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "bob never saw the message from before his join"
        );
    };
    let json: serde_json::Value = serde_json::from_str(raw.json().get()).unwrap();
    assert_eq!(json["unsigned"]["membership"], "leave", "{json}");
    let context = CryptoContextInfo {
        device_creation_ts: MilliSecondsSinceUnixEpoch(0u32.into()),
        this_device_is_verified: false,
        backup_exists_on_server: false,
        is_backup_configured: false,
    };
    assert_eq!(
        UtdCause::determine(&raw, context, &utd_info),
        UtdCause::SentBeforeWeJoined,
        "{json}"
    );

    // After the join, alice's client shares the key with bob's device, and he reads her.
    sync(&alice).await;
    alice
        .get_room(&room_id)
        .unwrap()
        .send(RoomMessageEventContent::text_plain(BRAVO))
        .await
        .expect("alice sends after bob joined");
    sees_text(&bob, &room_id, BRAVO, Duration::from_secs(20)).await;
}

/// Syncs both clients once each, until `done` holds, or panics after `limit`.
async fn sync_both_until<F, Fut>(a: &Client, b: &Client, limit: Duration, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if done().await {
            return;
        }
        assert!(Instant::now() < deadline, "never reached: {what}");
        let (_, _) = tokio::join!(sync(a), sync(b));
    }
}

/// Two users verify each other by emoji (SAS) in their direct chat, as Element does: then each
/// trusts the other's identity, through the signature each made on the other's master key with
/// its user-signing key, which the server shows to the signer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_verify_each_other_by_emoji_and_then_trust_each_other() {
    use matrix_sdk::encryption::verification::Verification;
    use matrix_sdk::ruma::events::key::verification::VerificationMethod;

    let server = TestServer::start().await;
    let alice = sdk_register(&server, "alice", PW).await;
    let bob = sdk_register(&server, "bob", PW).await;
    for c in [&alice, &bob] {
        sync(c).await;
        c.encryption()
            .bootstrap_cross_signing(None)
            .await
            .expect("cross-signing set up");
    }
    let alice_id = alice.user_id().unwrap().to_owned();
    let bob_id = bob.user_id().unwrap().to_owned();
    let mut request = encrypted_room();
    request.is_direct = true;
    let room_id = create_and_join(&alice, &bob, request).await;
    learns_devices_of(&alice, &bob_id, 20).await;
    learns_devices_of(&bob, &alice_id, 20).await;
    let _ = room_id;

    let bob_identity = alice
        .encryption()
        .request_user_identity(&bob_id)
        .await
        .expect("key query")
        .expect("bob has an identity");
    assert!(!bob_identity.is_verified());
    let request = bob_identity
        .request_verification_with_methods(vec![VerificationMethod::SasV1])
        .await
        .expect("alice asks bob to verify");
    let flow_id = request.flow_id().to_owned();

    let deadline = Instant::now() + Duration::from_secs(20);
    let bob_request = loop {
        if let Some(r) = bob
            .encryption()
            .get_verification_request(&alice_id, &flow_id)
            .await
        {
            break r;
        }
        assert!(Instant::now() < deadline, "bob never saw the request");
        let (_, _) = tokio::join!(sync(&alice), sync(&bob));
    };
    bob_request.accept().await.expect("bob accepts");
    sync_both_until(
        &alice,
        &bob,
        Duration::from_secs(20),
        "the request is ready",
        || {
            let ready = request.is_ready();
            async move { ready }
        },
    )
    .await;
    let alice_sas = request
        .start_sas()
        .await
        .expect("alice starts SAS")
        .expect("a SAS flow");

    let deadline = Instant::now() + Duration::from_secs(20);
    let bob_sas = loop {
        if let Some(Verification::SasV1(sas)) =
            bob.encryption().get_verification(&alice_id, &flow_id).await
        {
            break sas;
        }
        assert!(Instant::now() < deadline, "bob never saw SAS start");
        let (_, _) = tokio::join!(sync(&alice), sync(&bob));
    };
    bob_sas.accept().await.expect("bob accepts SAS");
    sync_both_until(
        &alice,
        &bob,
        Duration::from_secs(20),
        "the emoji are shown",
        || {
            let shown = alice_sas.can_be_presented() && bob_sas.can_be_presented();
            async move { shown }
        },
    )
    .await;
    // The same seven emoji on both screens: both users confirm.
    let symbols = |s: &matrix_sdk::encryption::verification::SasVerification| {
        s.emoji()
            .expect("emoji")
            .iter()
            .map(|e| e.symbol)
            .collect::<Vec<_>>()
    };
    assert_eq!(symbols(&alice_sas), symbols(&bob_sas));
    alice_sas.confirm().await.expect("alice confirms");
    bob_sas.confirm().await.expect("bob confirms");
    sync_both_until(
        &alice,
        &bob,
        Duration::from_secs(30),
        "both are done",
        || {
            let done = alice_sas.is_done() && bob_sas.is_done();
            async move { done }
        },
    )
    .await;

    // Each trusts the other now, from what the server answers to a fresh key query.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a_trusts = alice
            .encryption()
            .request_user_identity(&bob_id)
            .await
            .expect("key query")
            .is_some_and(|i| i.is_verified());
        let b_trusts = bob
            .encryption()
            .request_user_identity(&alice_id)
            .await
            .expect("key query")
            .is_some_and(|i| i.is_verified());
        if a_trusts && b_trusts {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alice trusts bob: {a_trusts}, bob trusts alice: {b_trusts}"
        );
        let (_, _) = tokio::join!(sync(&alice), sync(&bob));
    }
}
