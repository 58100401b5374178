//! Helpers shared by the matrix-sdk based tests.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use hearth_conformance::{TestServer, Value};
use matrix_sdk::{
    Client,
    config::SyncSettings,
    deserialized_responses::TimelineEvent,
    ruma::api::client::{account::register::v3::Request as RegistrationRequest, uiaa},
    sync::SyncResponse,
};

/// Build a matrix-sdk client for `server` and register `user` through the
/// UIA `m.login.dummy` flow. The returned client is logged in.
pub async fn sdk_register(server: &TestServer, user: &str, password: &str) -> Client {
    let client = Client::builder()
        .homeserver_url(server.base_url())
        .build()
        .await
        .expect("build matrix-sdk client");
    let mut request = RegistrationRequest::new();
    request.username = Some(user.to_owned());
    request.password = Some(password.to_owned());
    let err = client
        .matrix_auth()
        .register(request.clone())
        .await
        .expect_err("registration without auth must ask for UIA (401)");
    let info = err
        .as_uiaa_response()
        .unwrap_or_else(|| panic!("registration without auth did not return UIA info: {err:?}"));
    let mut dummy = uiaa::Dummy::new();
    dummy.session = info.session.clone();
    request.auth = Some(uiaa::AuthData::Dummy(dummy));
    let response = client
        .matrix_auth()
        .register(request)
        .await
        .unwrap_or_else(|e| panic!("registering {user} with m.login.dummy failed: {e:?}"));
    assert_eq!(
        response.user_id.as_str(),
        format!("@{user}:{}", server.server_name())
    );
    assert!(
        client.user_id().is_some(),
        "client not logged in after registration"
    );
    client
}

/// One incremental sync with a short long-poll timeout.
pub async fn sync(client: &Client) -> SyncResponse {
    client
        .sync_once(SyncSettings::default().timeout(Duration::from_millis(500)))
        .await
        .expect("sync_once")
}

/// Sync repeatedly (continuing from the previous token) until `done`
/// returns true for the accumulated responses, or panic after `limit`.
pub async fn sync_until(
    client: &Client,
    limit: Duration,
    mut done: impl FnMut(&SyncResponse) -> bool,
) {
    let deadline = Instant::now() + limit;
    loop {
        let response = sync(client).await;
        if done(&response) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "condition not reached through sync within {limit:?}"
        );
    }
}

/// A timeline event as JSON.
pub fn event_json(event: &TimelineEvent) -> Value {
    serde_json::from_str(event.raw().json().get()).expect("event is JSON")
}

/// Bodies of the m.room.message events in a list of timeline events.
pub fn bodies(events: &[TimelineEvent]) -> Vec<String> {
    events
        .iter()
        .map(event_json)
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

/// The access token of a logged-in client.
pub fn token(client: &Client) -> String {
    client.access_token().expect("client has an access token")
}

/// Logs `user` in on the homeserver at `url` (Hearth or Synapse) as a new device, and syncs once
/// so that its encryption keys are uploaded.
pub async fn sdk_login(url: &str, user: &str, password: &str) -> Client {
    let client = Client::builder()
        .homeserver_url(url)
        .build()
        .await
        .expect("build matrix-sdk client");
    client
        .matrix_auth()
        .login_username(user, password)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{user} logs in: {e:?}"));
    sync(&client).await;
    client
}

/// Syncs `client` until its timeline of `room` shows a message with body `text` (decrypted, in
/// an encrypted room), or panics after `limit`.
pub async fn sees_text(
    client: &Client,
    room: &matrix_sdk::ruma::RoomId,
    text: &str,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    loop {
        let r = sync(client).await;
        if r.rooms
            .joined
            .get(room)
            .is_some_and(|j| bodies(&j.timeline.events).iter().any(|b| b == text))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{:?} never showed {text:?}",
            client.device_id()
        );
    }
}

/// A `createRoom` request for an encrypted room (Megolm with the recommended rotation).
pub fn encrypted_room() -> matrix_sdk::ruma::api::client::room::create_room::v3::Request {
    use matrix_sdk::ruma::events::InitialStateEvent;
    use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
    let mut request = matrix_sdk::ruma::api::client::room::create_room::v3::Request::new();
    request.initial_state = vec![
        InitialStateEvent::with_empty_state_key(
            RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any(),
    ];
    request
}

/// `owner` creates a room with `request`, inviting `guest`, who sees the invite and joins; both
/// have synced the join. Answers the room id.
pub async fn create_and_join(
    owner: &Client,
    guest: &Client,
    mut request: matrix_sdk::ruma::api::client::room::create_room::v3::Request,
) -> matrix_sdk::ruma::OwnedRoomId {
    request.invite = vec![guest.user_id().expect("logged in").to_owned()];
    let room_id = owner
        .create_room(request)
        .await
        .expect("createRoom")
        .room_id()
        .to_owned();
    sync_until(guest, Duration::from_secs(10), |r| {
        r.rooms.invited.contains_key(&room_id)
    })
    .await;
    guest.join_room_by_id(&room_id).await.expect("join");
    sync(owner).await;
    room_id
}

/// Syncs `client` until its crypto store knows at least one device of `user` (fetched through
/// the key query its sync triggers), or panics after `rounds` syncs.
pub async fn learns_devices_of(client: &Client, user: &matrix_sdk::ruma::UserId, rounds: usize) {
    for _ in 0..rounds {
        sync(client).await;
        let devices = client
            .encryption()
            .get_user_devices(user)
            .await
            .expect("devices");
        if devices.devices().count() > 0 {
            return;
        }
    }
    panic!("{:?} never learned {user}'s devices", client.user_id());
}
