//! The real-time layer as matrix-sdk drives it: typing, read receipts and unread counts, tags.

mod common;

use std::time::Duration;

use common::{create_and_join, sdk_register, sync, sync_until};
use hearth_conformance::TestServer;
use matrix_sdk::ruma::{
    api::client::{
        receipt::create_receipt::v3::ReceiptType as SendReceiptType,
        room::create_room::v3::Request as CreateRoomRequest,
    },
    events::{
        AnySyncEphemeralRoomEvent,
        receipt::{ReceiptThread, ReceiptType},
        room::message::RoomMessageEventContent,
        tag::{TagInfo, TagName},
    },
};

const PW: &str = "correct horse battery staple";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_receipts_unread_counts_and_tags_through_matrix_sdk() {
    let server = TestServer::start().await;
    let alice = sdk_register(&server, "alice", PW).await;
    let bob = sdk_register(&server, "bob", PW).await;
    let room_id = create_and_join(&alice, &bob, CreateRoomRequest::new()).await;
    let bob_room = bob.get_room(&room_id).expect("bob is in the room");
    let alice_room = alice.get_room(&room_id).unwrap();

    // Typing appears for bob, then goes when alice stops.
    alice_room.typing_notice(true).await.expect("typing on");
    let alice_id = alice.user_id().unwrap().to_owned();
    let typing_users = |r: &matrix_sdk::sync::SyncResponse| {
        r.rooms.joined.get(&room_id).and_then(|j| {
            j.ephemeral.iter().find_map(|e| match e.deserialize() {
                Ok(AnySyncEphemeralRoomEvent::Typing(t)) => Some(t.content.user_ids),
                _ => None,
            })
        })
    };
    sync_until(&bob, Duration::from_secs(10), |r| {
        typing_users(r).is_some_and(|u| u == vec![alice_id.clone()])
    })
    .await;
    alice_room.typing_notice(false).await.expect("typing off");
    sync_until(&bob, Duration::from_secs(10), |r| {
        typing_users(r).is_some_and(|u| u.is_empty())
    })
    .await;

    // Two messages make two unread notifications for bob.
    let mut last = None;
    for text in ["one", "two"] {
        let sent = alice_room
            .send(RoomMessageEventContent::text_plain(text))
            .await
            .expect("send");
        last = Some(sent.response.event_id);
    }
    let last = last.unwrap();
    sync_until(&bob, Duration::from_secs(10), |_| {
        bob_room.unread_notification_counts().notification_count == 2
    })
    .await;

    // Bob reads: his count drops to zero, and alice's client stores his receipt.
    bob_room
        .send_single_receipt(
            SendReceiptType::Read,
            ReceiptThread::Unthreaded,
            last.clone(),
        )
        .await
        .expect("receipt");
    sync_until(&bob, Duration::from_secs(10), |_| {
        bob_room.unread_notification_counts().notification_count == 0
    })
    .await;
    let bob_id = bob.user_id().unwrap().to_owned();
    let mut seen = None;
    for _ in 0..20 {
        sync(&alice).await;
        seen = alice_room
            .load_user_receipt(ReceiptType::Read, ReceiptThread::Unthreaded, &bob_id)
            .await
            .expect("receipt store");
        if seen.is_some() {
            break;
        }
    }
    assert_eq!(seen.map(|(id, _)| id), Some(last));

    // A tag round-trips into the room's account data.
    let mut info = TagInfo::new();
    info.order = Some(0.25);
    bob_room
        .set_tag(TagName::Favorite, info)
        .await
        .expect("set tag");
    sync_until(&bob, Duration::from_secs(10), |_| true).await;
    let mut tags = None;
    for _ in 0..20 {
        tags = bob_room.tags().await.expect("tags");
        if tags.is_some() {
            break;
        }
        sync(&bob).await;
    }
    let tags = tags.expect("bob's client has the tag");
    assert_eq!(
        tags.get(&TagName::Favorite).and_then(|t| t.order),
        Some(0.25)
    );
}
