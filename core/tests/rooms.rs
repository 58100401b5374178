//! The event graph, auth rules and state groups, on an in-memory store.

use std::sync::Arc;

use hearth_core::keys::ServerKeys;
use hearth_core::rooms::NewEvent;
use hearth_core::rooms::create::{CreateRoom, MemberProfile, Preset};
use hearth_core::rooms::timeline::{EventFilter, Reader};
use hearth_core::{Core, CoreConfig, Error};
use hearth_storage::{RedbStore, Store};
use ruma::signatures::{Verified, verify_event};
use ruma::{CanonicalJsonObject, OwnedServerName, OwnedUserId, RoomVersionId, UserId};
use serde_json::json;

fn core_on(store: Arc<dyn Store>, keys: ServerKeys) -> Core {
    let remote = Arc::new(hearth_core::remote::NoFederation);
    Core::new(CoreConfig::new(server()), store, Arc::new(keys), remote).unwrap()
}

fn server() -> OwnedServerName {
    "hearth.test".try_into().unwrap()
}

fn user(name: &str) -> OwnedUserId {
    UserId::parse(format!("@{name}:hearth.test")).unwrap()
}

fn new_core() -> Core {
    core_on(
        Arc::new(RedbStore::in_memory().unwrap()),
        ServerKeys::ephemeral(server()),
    )
}

async fn private_room(core: &Core, creator: &UserId, version: RoomVersionId) -> ruma::OwnedRoomId {
    let req = CreateRoom {
        preset: Some(Preset::PrivateChat),
        room_version: Some(version),
        ..Default::default()
    };
    core.rooms
        .create_room(creator, MemberProfile::default(), req)
        .await
        .unwrap()
}

fn text(body: &str) -> NewEvent {
    NewEvent::message(
        "m.room.message",
        json!({ "msgtype": "m.text", "body": body }),
    )
}

#[tokio::test]
async fn events_are_signed_and_named_by_their_reference_hash() {
    let core = new_core();
    let alice = user("alice");
    for version in hearth_core::rooms::version::SUPPORTED_ROOM_VERSIONS {
        let room = private_room(&core, &alice, version.clone()).await;
        let pdu = core.rooms.send(&room, &alice, text("hi")).await.unwrap();
        let json = core
            .store
            .event_json(pdu.event_id.as_str())
            .unwrap()
            .unwrap();
        let obj: CanonicalJsonObject = serde_json::from_slice(&json).unwrap();
        let rules = version.rules().unwrap();

        if matches!(version, RoomVersionId::V1 | RoomVersionId::V2) {
            // Named by this server, the id inside the signed event; references with hashes.
            assert!(pdu.event_id.as_str().ends_with(":hearth.test"), "{version}");
            assert_eq!(
                obj["event_id"].as_str(),
                Some(pdu.event_id.as_str()),
                "{version}"
            );
            let prev = &json!(obj["prev_events"])[0];
            assert!(
                prev[0].is_string() && prev[1]["sha256"].is_string(),
                "{prev}"
            );
        } else {
            let hash = ruma::signatures::reference_hash(&obj, &rules).unwrap();
            assert_eq!(
                pdu.event_id.as_str(),
                format!("${hash}"),
                "room version {version}"
            );
        }

        let mut keys = std::collections::BTreeMap::new();
        let mut ours = std::collections::BTreeMap::new();
        ours.insert(
            core.keys.key_id(),
            ruma::serde::Base64::parse(core.keys.public_key_base64()).unwrap(),
        );
        keys.insert(server().to_string(), ours);
        assert_eq!(
            verify_event(&keys, &obj, &rules).unwrap(),
            Verified::All,
            "room version {version}"
        );

        if version == RoomVersionId::V12 {
            // v12 rooms are named after their create event.
            let create = core
                .rooms
                .state_event(&room, "m.room.create", "")
                .unwrap()
                .unwrap();
            assert_eq!(
                room.as_str().trim_start_matches('!'),
                create.event_id.as_str().trim_start_matches('$')
            );
        }
    }
}

/// The auth rules that differ between versions: knocks from 7, restricted joins from 8,
/// integer-only power levels from 10, redactions naming their target in the content from 11.
#[tokio::test]
async fn each_version_applies_its_own_auth_rules() {
    let core = new_core();
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let profile = MemberProfile::default();
    for version in hearth_core::rooms::version::SUPPORTED_ROOM_VERSIONS {
        let n: u32 = version.as_str().parse().unwrap();
        let room = private_room(&core, &alice, version.clone()).await;

        // A power level written as a string.
        let pl = core
            .rooms
            .state_event(&room, "m.room.power_levels", "")
            .unwrap()
            .unwrap();
        let mut content = pl.content_value();
        content["redact"] = json!("40");
        let sent = core
            .rooms
            .send(
                &room,
                &alice,
                NewEvent::state("m.room.power_levels", "", content),
            )
            .await;
        assert_eq!(sent.is_ok(), n < 10, "v{version}: {sent:?}");

        // A knock.
        let rule = |r: &str| NewEvent::state("m.room.join_rules", "", json!({ "join_rule": r }));
        core.rooms.send(&room, &alice, rule("knock")).await.unwrap();
        let knocked = core.rooms.knock(&room, &bob, &profile, None, &[]).await;
        assert_eq!(knocked.is_ok(), n >= 7, "v{version}: {knocked:?}");

        // A join allowed by membership of another room.
        let lobby = private_room(&core, &alice, version.clone()).await;
        core.rooms
            .send(&lobby, &alice, rule("public"))
            .await
            .unwrap();
        core.rooms
            .join(&lobby, &carol, &profile, &Default::default(), &[])
            .await
            .unwrap();
        let restricted = NewEvent::state(
            "m.room.join_rules",
            "",
            json!({
                "join_rule": "restricted",
                "allow": [{ "type": "m.room_membership", "room_id": lobby }],
            }),
        );
        core.rooms.send(&room, &alice, restricted).await.unwrap();
        let joined = core
            .rooms
            .join(&room, &carol, &profile, &Default::default(), &[])
            .await;
        assert_eq!(joined.is_ok(), n >= 8, "v{version}: {joined:?}");

        // A redaction, wherever the version puts its target.
        let hi = core.rooms.send(&room, &alice, text("hi")).await.unwrap();
        let mut redaction = NewEvent::message("m.room.redaction", json!({}));
        redaction.redacts = Some(hi.event_id.clone());
        let redaction = core.rooms.send(&room, &alice, redaction).await.unwrap();
        let json = core
            .store
            .event_json(redaction.event_id.as_str())
            .unwrap()
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let (top, inner) = (&json["redacts"], &json["content"]["redacts"]);
        let target = json!(hi.event_id);
        if n >= 11 {
            assert_eq!(inner, &target, "v{version}: {json}");
        } else {
            assert_eq!(top, &target, "v{version}: {json}");
        }
    }
}

#[tokio::test]
async fn auth_rules_refuse_outsiders_and_enforce_power_levels() {
    let core = new_core();
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let room = private_room(&core, &alice, RoomVersionId::V11).await;

    let refused = core.rooms.send(&room, &bob, text("let me in")).await;
    assert!(matches!(refused, Err(Error::Forbidden(_))), "{refused:?}");
    let refused = core
        .rooms
        .join(
            &room,
            &carol,
            &MemberProfile::default(),
            &Default::default(),
            &[],
        )
        .await;
    assert!(
        matches!(refused, Err(Error::Forbidden(_))),
        "invite-only room: {refused:?}"
    );

    core.rooms
        .invite(&room, &alice, &bob, None, None)
        .await
        .unwrap();
    core.rooms
        .join(
            &room,
            &bob,
            &MemberProfile::default(),
            &Default::default(),
            &[],
        )
        .await
        .unwrap();
    core.rooms.send(&room, &bob, text("hello")).await.unwrap();

    let name = |n: &str| NewEvent::state("m.room.name", "", json!({ "name": n }));
    assert!(matches!(
        core.rooms.send(&room, &bob, name("bob's")).await,
        Err(Error::Forbidden(_))
    ));
    let pl = core
        .rooms
        .state_event(&room, "m.room.power_levels", "")
        .unwrap()
        .unwrap();
    let mut content = pl.content_value();
    content["users"][bob.as_str()] = json!(50);
    core.rooms
        .send(
            &room,
            &alice,
            NewEvent::state("m.room.power_levels", "", content),
        )
        .await
        .unwrap();
    core.rooms.send(&room, &bob, name("bob's")).await.unwrap();

    core.rooms
        .kick(&room, &alice, &bob, Some("bye"))
        .await
        .unwrap();
    assert!(matches!(
        core.rooms.send(&room, &bob, text("still here?")).await,
        Err(Error::Forbidden(_))
    ));
}

#[tokio::test]
async fn state_survives_long_delta_chains_and_a_reload() {
    let store: Arc<dyn Store> = Arc::new(RedbStore::in_memory().unwrap());
    let keys = || ServerKeys::ephemeral(server());
    let alice = user("alice");
    let core = core_on(store.clone(), keys());
    let room = private_room(&core, &alice, RoomVersionId::V11).await;
    // Well past one snapshot interval, with keys that repeat.
    for i in 0..150 {
        let ev = NewEvent::state(
            "org.example.counter",
            &format!("k{}", i % 7),
            json!({ "i": i }),
        );
        core.rooms.send(&room, &alice, ev).await.unwrap();
    }
    let live = core.rooms.current_state(&room).unwrap();

    // A second core on the same store rebuilds the room head from disk.
    let reloaded = core_on(store, keys());
    let from_disk = reloaded.rooms.current_state(&room).unwrap();
    assert_eq!(*live, *from_disk);
    let last = reloaded
        .rooms
        .state_event(&room, "org.example.counter", "k2")
        .unwrap()
        .unwrap();
    // The last i below 150 with i % 7 == 2.
    assert_eq!(last.content_value()["i"], json!(149));
    let first = reloaded
        .rooms
        .state_event(&room, "org.example.counter", "k0")
        .unwrap()
        .unwrap();
    assert_eq!(first.content_value()["i"], json!(147));
}

#[tokio::test]
async fn pages_cover_the_timeline_without_gaps() {
    let core = new_core();
    let alice = user("alice");
    let room = private_room(&core, &alice, RoomVersionId::V11).await;
    for i in 0..95 {
        core.rooms
            .send(&room, &alice, text(&format!("m{i}")))
            .await
            .unwrap();
    }
    let access = core.rooms.access(&room, &alice).unwrap();
    let filter = EventFilter {
        types: Some(vec!["m.room.message".into()]),
        ..Default::default()
    };
    let mut from = access.max_pos;
    let mut bodies = Vec::new();
    loop {
        let reader = Reader {
            user: &alice,
            room_id: &room,
            access: &access,
            filter: &filter,
        };
        let page = core.rooms.page(reader, from, None, true, 10).unwrap();
        bodies.extend(
            page.events
                .iter()
                .map(|e| e.pdu.content_value()["body"].as_str().unwrap().to_owned()),
        );
        match page.end {
            Some(end) => from = end,
            None => break,
        }
    }
    let expected: Vec<String> = (0..95).rev().map(|i| format!("m{i}")).collect();
    assert_eq!(bodies, expected);
}

#[tokio::test]
async fn a_page_that_takes_the_last_events_says_there_is_no_more() {
    let core = new_core();
    let alice = user("alice");
    let a = private_room(&core, &alice, RoomVersionId::V11).await;
    let b = private_room(&core, &alice, RoomVersionId::V11).await;
    let since = core.store.persisted_pos();
    // Interleave the rooms, so that room a's positions have gaps.
    for i in 0..3 {
        core.rooms
            .send(&a, &alice, text(&format!("a{i}")))
            .await
            .unwrap();
        core.rooms
            .send(&b, &alice, text(&format!("b{i}")))
            .await
            .unwrap();
    }
    let access = core.rooms.access(&a, &alice).unwrap();
    let all = EventFilter::default();
    let reader = Reader {
        user: &alice,
        room_id: &a,
        access: &access,
        filter: &all,
    };
    let page = core
        .rooms
        .page(reader, access.max_pos, Some(since), true, 3)
        .unwrap();
    assert_eq!(page.events.len(), 3);
    assert_eq!(
        page.end, None,
        "exactly the events in range: nothing more to fetch"
    );
    let page = core
        .rooms
        .page(reader, access.max_pos, Some(since), true, 2)
        .unwrap();
    assert_eq!(page.events.len(), 2);
    assert!(page.end.is_some(), "one event is left in range");
}

#[tokio::test]
async fn a_room_whose_creation_fails_leaves_nothing_behind() {
    let core = new_core();
    let alice = user("alice");
    // Alice cannot join Bob into the room: the auth rules refuse the fourth event.
    let bad = CreateRoom {
        initial_state: vec![(
            "m.room.member".into(),
            user("bob").to_string(),
            json!({ "membership": "join" }),
        )],
        ..Default::default()
    };
    let refused = core
        .rooms
        .create_room(&alice, MemberProfile::default(), bad)
        .await;
    assert!(matches!(refused, Err(Error::Forbidden(_))), "{refused:?}");
    assert!(core.store.rooms().unwrap().is_empty());
    assert_eq!(core.store.persisted_pos(), 0);
    // The server goes on as before.
    let room = private_room(&core, &alice, RoomVersionId::V11).await;
    core.rooms.send(&room, &alice, text("fine")).await.unwrap();
}
