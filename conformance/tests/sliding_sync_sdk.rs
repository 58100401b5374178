//! Simplified sliding sync driven by matrix-sdk, as Element X drives it: the client discovers it,
//! keeps a room list in recency order, sees invites and required state, gets its encryption
//! keys through the e2ee and to-device extensions, and recovers after the server forgot its
//! connection.

mod common;

use std::time::{Duration, Instant};

use common::{bodies, encrypted_room, learns_devices_of, sdk_register, sync};
use futures_util::StreamExt;
use hearth_conformance::TestServer;
use matrix_sdk::ruma::api::client::room::create_room::v3::Request as CreateRoom;
use matrix_sdk::ruma::events::StateEventType;
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use matrix_sdk::ruma::{OwnedEventId, OwnedRoomId, RoomId};
use matrix_sdk::sliding_sync::Version;
use matrix_sdk::{Client, RoomState, SlidingSync, SlidingSyncList, SlidingSyncMode};

const PW: &str = "correct horse battery staple";

async fn room_list(client: &Client) -> SlidingSync {
    let list = SlidingSyncList::builder("all")
        .sync_mode(SlidingSyncMode::new_selective().add_range(0..=19))
        .timeline_limit(5)
        .required_state(vec![
            (StateEventType::RoomName, String::new()),
            (StateEventType::RoomEncryption, String::new()),
            (StateEventType::RoomMember, "$LAZY".to_owned()),
            (StateEventType::RoomMember, "$ME".to_owned()),
        ]);
    client
        .sliding_sync("room-list")
        .expect("builder")
        .with_all_extensions()
        .add_list(list)
        .build()
        .await
        .expect("sliding sync")
}

/// `owner` creates a room with `request`, inviting `guest`, who joins and takes it in through
/// sliding sync.
async fn create_and_join_sliding(
    owner: &Client,
    guest: &Client,
    ss: &SlidingSync,
    mut request: CreateRoom,
) -> OwnedRoomId {
    request.invite = vec![guest.user_id().unwrap().to_owned()];
    let room = owner
        .create_room(request)
        .await
        .expect("createRoom")
        .room_id()
        .to_owned();
    guest.join_room_by_id(&room).await.expect("join");
    ss.sync_once().await.expect("sliding sync");
    room
}

async fn named_room(alice: &Client, bob: &Client, name: &str) -> OwnedRoomId {
    let mut req = CreateRoom::new();
    req.name = Some(name.to_owned());
    req.invite = vec![bob.user_id().unwrap().to_owned()];
    alice
        .create_room(req)
        .await
        .expect("createRoom")
        .room_id()
        .to_owned()
}

async fn say(alice: &Client, room: &RoomId, text: &str) -> OwnedEventId {
    sync(alice).await;
    alice
        .get_room(room)
        .expect("alice's room")
        .send(RoomMessageEventContent::text_plain(text))
        .await
        .expect("send")
        .response
        .event_id
}

fn stamp(client: &Client, room: &RoomId) -> u64 {
    client
        .get_room(room)
        .and_then(|r| r.recency_stamp())
        .map(u64::from)
        .unwrap_or_else(|| panic!("{room} has no recency stamp"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn element_x_style_room_list_with_encryption_and_reconnect() {
    let mut server = TestServer::start().await;
    let alice = sdk_register(&server, "alice", PW).await;
    let bob = sdk_register(&server, "bob", PW).await;
    sync(&alice).await;
    assert!(
        bob.available_sliding_sync_versions()
            .await
            .iter()
            .any(|v| matches!(v, Version::Native)),
        "the client finds simplified sliding sync in /versions"
    );
    bob.set_sliding_sync_version(Version::Native);

    let older = named_room(&alice, &bob, "Older").await;
    let newer = named_room(&alice, &bob, "Newer").await;
    let invite = named_room(&alice, &bob, "Still an invite").await;
    bob.join_room_by_id(&older).await.expect("join");
    bob.join_room_by_id(&newer).await.expect("join");
    say(&alice, &older, "first").await;
    say(&alice, &newer, "second").await;

    let ss = room_list(&bob).await;
    let summary = ss.sync_once().await.expect("sliding sync");
    assert!(summary.lists.contains(&"all".to_owned()), "{summary:?}");
    for room in [&older, &newer, &invite] {
        assert!(summary.rooms.contains(room), "{room} in {summary:?}");
    }
    let r = bob.get_room(&newer).unwrap();
    assert_eq!(r.state(), RoomState::Joined);
    assert_eq!(r.name().as_deref(), Some("Newer"), "required state arrived");
    assert_eq!(bob.get_room(&invite).unwrap().state(), RoomState::Invited);
    assert!(stamp(&bob, &newer) > stamp(&bob, &older), "newest first");

    // A message bumps its room to the top.
    say(&alice, &older, "third").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while stamp(&bob, &older) <= stamp(&bob, &newer) {
        assert!(Instant::now() < deadline, "the room never moved up");
        ss.sync_once().await.expect("sliding sync");
    }

    // Encryption through the e2ee and to-device extensions only: Bob never calls /sync.
    let secret_room = create_and_join_sliding(&alice, &bob, &ss, encrypted_room()).await;
    learns_devices_of(&alice, bob.user_id().unwrap(), 20).await;
    let secret = say(&alice, &secret_room, "for bob's eyes").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        ss.sync_once().await.expect("sliding sync");
        let ev = bob
            .get_room(&secret_room)
            .unwrap()
            .event(&secret, None)
            .await
            .expect("event");
        if bodies(&[ev]) == ["for bob's eyes"] {
            break;
        }
        assert!(Instant::now() < deadline, "bob never decrypted the message");
    }

    // The server forgets every connection when it restarts: the client is told its position
    // is unknown, starts over and carries on.
    server.restart().await;
    say(&alice, &newer, "after the restart").await;
    let mut recovered = false;
    for _ in 0..3 {
        let stream = ss.sync();
        futures_util::pin_mut!(stream);
        match stream.next().await {
            Some(Ok(summary)) if summary.rooms.contains(&newer) => {
                recovered = true;
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                let kind = e.client_api_error_kind().cloned();
                assert_eq!(
                    kind,
                    Some(matrix_sdk::ruma::api::error::ErrorKind::UnknownPos),
                    "{e:?}"
                );
            }
            None => {}
        }
    }
    assert!(recovered, "the room list came back after the restart");
    let latest = bob.get_room(&newer).unwrap();
    assert_eq!(latest.name().as_deref(), Some("Newer"));
}
