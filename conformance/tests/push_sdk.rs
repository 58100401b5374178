//! Notification settings as Element X and matrix-sdk clients change them (matrix-sdk's
//! `NotificationSettings`, which reads the push rules from account data and edits them through
//! the push rules API), and what then reaches a push gateway.

mod common;

use std::time::Duration;

use common::{create_and_join, sdk_register, sync};
use hearth_conformance::push_gateway::TestPushGateway;
use hearth_conformance::{TestServer, Value, json};
use matrix_sdk::notification_settings::RoomNotificationMode;
use matrix_sdk::ruma::api::client::push::{Pusher, PusherIds, PusherInit, PusherKind};
use matrix_sdk::ruma::api::client::room::create_room::v3::Request as CreateRoom;
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use matrix_sdk::ruma::push::HttpPusherData;

const PW: &str = "correct horse battery staple";

#[tokio::test]
async fn room_modes_and_keywords_set_by_the_sdk_decide_what_is_pushed() {
    let server = TestServer::start().await;
    let gateway = TestPushGateway::start().await;
    let alice = sdk_register(&server, "alice", PW).await;
    let bob = sdk_register(&server, "bob", PW).await;
    let carol = sdk_register(&server, "carol", PW).await;
    sync(&alice).await;
    sync(&bob).await;
    sync(&carol).await;

    // Group rooms (three members), so the one-to-one rule plays no part.
    let mut rooms = Vec::new();
    for _ in 0..3 {
        let room = create_and_join(&alice, &bob, CreateRoom::new()).await;
        alice
            .get_room(&room)
            .unwrap()
            .invite_user_by_id(carol.user_id().unwrap())
            .await
            .unwrap();
        sync(&carol).await;
        carol.join_room_by_id(&room).await.unwrap();
        rooms.push(room);
    }
    let [muted, quiet, loud] = [&rooms[0], &rooms[1], &rooms[2]];

    let settings = bob.notification_settings().await;
    settings
        .set_room_notification_mode(muted, RoomNotificationMode::Mute)
        .await
        .expect("mute");
    settings
        .set_room_notification_mode(quiet, RoomNotificationMode::MentionsAndKeywordsOnly)
        .await
        .expect("mentions only");
    settings
        .add_keyword("kumquat".to_owned())
        .await
        .expect("keyword");

    // A fresh client of Bob's reads the same settings back from the server.
    let again = common::sdk_login(&server.base_url(), "bob", PW).await;
    let read_back = again.notification_settings().await;
    assert_eq!(
        read_back
            .get_user_defined_room_notification_mode(muted)
            .await,
        Some(RoomNotificationMode::Mute)
    );
    assert_eq!(
        read_back
            .get_user_defined_room_notification_mode(quiet)
            .await,
        Some(RoomNotificationMode::MentionsAndKeywordsOnly)
    );
    assert!(read_back.enabled_keywords().await.contains("kumquat"));

    let pusher: Pusher = PusherInit {
        ids: PusherIds::new("bob-phone".into(), "org.hearth.test".into()),
        kind: PusherKind::Http(HttpPusherData::new(gateway.url())),
        app_display_name: "Hearth tests".into(),
        device_display_name: "Phone".into(),
        profile_tag: None,
        lang: "en".into(),
    }
    .into();
    bob.pusher().set(pusher, false).await.expect("set pusher");

    let send = |room: &matrix_sdk::ruma::OwnedRoomId, text: &str| {
        let room = alice.get_room(room).unwrap();
        let content = RoomMessageEventContent::text_plain(text);
        async move { room.send(content).await.expect("send").response.event_id }
    };
    send(muted, "nobody hears this").await;
    send(quiet, "small talk").await;
    let keyword = send(quiet, "who has a kumquat?").await;
    let got = gateway.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0]["event_id"], keyword.as_str());
    assert_eq!(got[0]["content"]["body"], "who has a kumquat?");
    let plain = send(loud, "dinner is ready").await;
    let got = gateway.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got[1]["event_id"], plain.as_str());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pushed: Vec<Value> = gateway
        .received()
        .into_iter()
        .map(|n| n["room_id"].clone())
        .collect();
    assert_eq!(
        pushed,
        [json!(quiet.as_str()), json!(loud.as_str())],
        "nothing from the muted room"
    );
}
