//! Behaviours matrix-rust-sdk relies on, as its own tests check them against Synapse: context
//! without surroundings, joining an abandoned room, the directory after an alias goes, unread
//! counts in sliding sync after a receipt, previews of world-readable rooms, history after a
//! declined invite, and transaction ids scoped to the request path.

mod common;

use std::time::Duration;

use common::{bodies, sdk_register, sync, sync_until};
use hearth_conformance::TestServer;
use matrix_sdk::room::MessagesOptions;
use matrix_sdk::ruma::api::client::{
    alias::delete_alias,
    context::get_context,
    directory::get_public_rooms_filtered,
    membership::{get_member_events, joined_members},
    message::{get_message_events, send_message_event},
    receipt::create_receipt::v3::ReceiptType as SendReceiptType,
    room::create_room::v3::{Request as CreateRoom, RoomPreset},
    state::get_state_events,
};
use matrix_sdk::ruma::directory::Filter;
use matrix_sdk::ruma::events::{
    AnyMessageLikeEventContent, InitialStateEvent, StateEventType,
    receipt::ReceiptThread,
    room::{
        history_visibility::{HistoryVisibility, RoomHistoryVisibilityEventContent},
        message::RoomMessageEventContent,
    },
};
use matrix_sdk::ruma::{OwnedRoomAliasId, OwnedRoomId, TransactionId, UInt, api::Direction};
use matrix_sdk::{Client, SlidingSyncList, SlidingSyncMode};

const PW: &str = "correct horse battery staple";

async fn public_room(client: &Client) -> OwnedRoomId {
    let mut request = CreateRoom::new();
    request.preset = Some(RoomPreset::PublicChat);
    client
        .create_room(request)
        .await
        .expect("createRoom")
        .room_id()
        .to_owned()
}

fn status_of(err: &matrix_sdk::Error) -> Option<u16> {
    err.as_client_api_error().map(|e| e.status_code.as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_with_limit_zero_has_no_surrounding_events() {
    let server = TestServer::start().await;
    let alice = sdk_register(&server, "alice", PW).await;
    let room_id = public_room(&alice).await;
    sync(&alice).await;
    let room = alice.get_room(&room_id).expect("room");
    let mut middle = None;
    for text in ["one", "two", "three"] {
        let sent = room
            .send(RoomMessageEventContent::text_plain(text))
            .await
            .expect("send");
        if text == "two" {
            middle = Some(sent.response.event_id);
        }
    }
    let middle = middle.unwrap();
    let mut request = get_context::v3::Request::new(room_id.clone(), middle.clone());
    request.limit = UInt::new(0).unwrap();
    let context = alice.send(request).await.expect("context");
    assert!(
        context.events_before.is_empty(),
        "{:?}",
        context.events_before
    );
    assert!(
        context.events_after.is_empty(),
        "{:?}",
        context.events_after
    );
    let event = context.event.expect("the event itself");
    assert_eq!(
        event.get_field::<String>("event_id").unwrap().as_deref(),
        Some(middle.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_a_room_everyone_left_is_not_found() {
    let server = TestServer::start().await;
    let alice = sdk_register(&server, "alice", PW).await;
    let bob = sdk_register(&server, "bob", PW).await;
    let room_id = public_room(&alice).await;
    sync(&alice).await;
    alice
        .get_room(&room_id)
        .expect("room")
        .leave()
        .await
        .expect("leave");
    let err = bob
        .join_room_by_id(&room_id)
        .await
        .expect_err("nobody is left to let bob in");
    assert_eq!(status_of(&err), Some(404), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_alias_no_longer_finds_the_room_in_the_directory() {
    let server = TestServer::start().await;
    let alice = sdk_register(&server, "alice", PW).await;
    let mut request = CreateRoom::new();
    request.preset = Some(RoomPreset::PublicChat);
    request.visibility = matrix_sdk::ruma::api::client::room::Visibility::Public;
    request.room_alias_name = Some("lantern".to_owned());
    let room_id = alice
        .create_room(request)
        .await
        .expect("createRoom")
        .room_id()
        .to_owned();
    let alias: OwnedRoomAliasId = format!("#lantern:{}", server.server_name())
        .try_into()
        .unwrap();
    let search = || async {
        let mut filter = Filter::new();
        filter.generic_search_term = Some("lantern".to_owned());
        let mut request = get_public_rooms_filtered::v3::Request::new();
        request.filter = filter;
        alice
            .public_rooms_filtered(request)
            .await
            .expect("publicRooms")
            .chunk
            .into_iter()
            .map(|r| r.room_id)
            .collect::<Vec<_>>()
    };
    assert_eq!(search().await, vec![room_id.clone()], "found by its alias");
    alice
        .send(delete_alias::v3::Request::new(alias))
        .await
        .expect("delete alias");
    assert!(search().await.is_empty(), "the alias is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_receipt_clears_the_count_in_the_next_sliding_sync() {
    let server = TestServer::start().await;
    let alice = sdk_register(&server, "alice", PW).await;
    let bob = sdk_register(&server, "bob", PW).await;
    let room_id = public_room(&alice).await;
    bob.join_room_by_id(&room_id).await.expect("join");
    let list = SlidingSyncList::builder("all")
        .sync_mode(SlidingSyncMode::new_selective().add_range(0..=9))
        .timeline_limit(5)
        .required_state(vec![(StateEventType::RoomMember, "$ME".to_owned())]);
    let ss = bob
        .sliding_sync("counts")
        .expect("builder")
        .with_receipt_extension(Default::default())
        .add_list(list)
        .build()
        .await
        .expect("sliding sync");
    ss.sync_once().await.expect("first sliding sync");

    let alice_room = {
        sync(&alice).await;
        alice.get_room(&room_id).expect("room")
    };
    let mut last = None;
    for text in ["one", "two"] {
        let sent = alice_room
            .send(RoomMessageEventContent::text_plain(text))
            .await
            .expect("send");
        last = Some(sent.response.event_id);
    }
    let count = || {
        bob.get_room(&room_id)
            .map_or(0, |r| r.unread_notification_counts().notification_count)
    };
    for _ in 0..20 {
        ss.sync_once().await.expect("sliding sync");
        if count() == 2 {
            break;
        }
    }
    assert_eq!(count(), 2, "two unread messages");

    bob.get_room(&room_id)
        .unwrap()
        .send_single_receipt(
            SendReceiptType::Read,
            ReceiptThread::Unthreaded,
            last.unwrap(),
        )
        .await
        .expect("receipt");
    ss.sync_once()
        .await
        .expect("sliding sync after the receipt");
    assert_eq!(count(), 0, "the next response after the receipt clears it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_member_previews_a_world_readable_room() {
    let server = TestServer::start().await;
    let alice = sdk_register(&server, "alice", PW).await;
    let bob = sdk_register(&server, "bob", PW).await;
    let mut request = CreateRoom::new();
    request.preset = Some(RoomPreset::PublicChat);
    request.initial_state = vec![
        InitialStateEvent::with_empty_state_key(RoomHistoryVisibilityEventContent::new(
            HistoryVisibility::WorldReadable,
        ))
        .to_raw_any(),
    ];
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
        .send(RoomMessageEventContent::text_plain("hello, readers"))
        .await
        .expect("send");

    let joined = bob
        .send(joined_members::v3::Request::new(room_id.clone()))
        .await
        .expect("joined_members of a world-readable room");
    assert!(joined.joined.contains_key(alice.user_id().unwrap()));
    let members = bob
        .send(get_member_events::v3::Request::new(room_id.clone()))
        .await
        .expect("members of a world-readable room");
    assert!(!members.chunk.is_empty());
    bob.send(get_state_events::v3::Request::new(room_id.clone()))
        .await
        .expect("state of a world-readable room");
    let messages = bob
        .send(get_message_events::v3::Request::backward(room_id.clone()))
        .await
        .expect("messages of a world-readable room");
    assert!(
        messages
            .chunk
            .iter()
            .any(|e| e.json().get().contains("hello, readers"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_before_a_declined_invite_shows_after_a_later_join() {
    let server = TestServer::start().await;
    let alice = sdk_register(&server, "alice", PW).await;
    let bob = sdk_register(&server, "bob", PW).await;
    let mut request = CreateRoom::new();
    request.preset = Some(RoomPreset::PrivateChat);
    let room_id = alice
        .create_room(request)
        .await
        .expect("createRoom")
        .room_id()
        .to_owned();
    sync(&alice).await;
    let room = alice.get_room(&room_id).unwrap();
    room.send(RoomMessageEventContent::text_plain("before any invite"))
        .await
        .expect("send");
    let bob_id = bob.user_id().unwrap().to_owned();
    room.invite_user_by_id(&bob_id).await.expect("invite");
    sync_until(&bob, Duration::from_secs(10), |r| {
        r.rooms.invited.contains_key(&room_id)
    })
    .await;
    bob.get_room(&room_id)
        .unwrap()
        .leave()
        .await
        .expect("decline");
    room.send(RoomMessageEventContent::text_plain("between the invites"))
        .await
        .expect("send");
    room.invite_user_by_id(&bob_id).await.expect("invite again");
    sync_until(&bob, Duration::from_secs(10), |r| {
        r.rooms.invited.contains_key(&room_id)
    })
    .await;
    let joined = bob.join_room_by_id(&room_id).await.expect("accept");
    let messages = joined
        .messages(MessagesOptions::backward())
        .await
        .expect("messages");
    let seen = bodies(&messages.chunk);
    for text in ["before any invite", "between the invites"] {
        assert!(
            seen.iter().any(|b| b == text),
            "shared history shows {text:?}: {seen:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_id_belongs_to_its_request_path() {
    let server = TestServer::start().await;
    let alice = sdk_register(&server, "alice", PW).await;
    let first = public_room(&alice).await;
    let second = public_room(&alice).await;
    let txn = TransactionId::new();
    let send = |room: OwnedRoomId, text: &'static str| {
        let content =
            AnyMessageLikeEventContent::RoomMessage(RoomMessageEventContent::text_plain(text));
        let request =
            send_message_event::v3::Request::new(room, txn.clone(), &content).expect("request");
        let alice = alice.clone();
        async move { alice.send(request).await.expect("send").event_id }
    };
    let in_first = send(first.clone(), "in the first room").await;
    let in_second = send(second.clone(), "in the second room").await;
    assert_ne!(
        in_first, in_second,
        "one id in two rooms is two transactions"
    );
    let retried = send(first.clone(), "in the first room").await;
    assert_eq!(
        retried, in_first,
        "a retry in the same room is the same event"
    );

    let messages = alice
        .send(get_message_events::v3::Request::new(
            second.clone(),
            Direction::Backward,
        ))
        .await
        .expect("messages");
    assert!(
        messages
            .chunk
            .iter()
            .any(|e| e.json().get().contains("in the second room"))
    );
}
