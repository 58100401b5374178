//! Fuzzing the auth rules: random sequences of what members of a room may try (joins, leaves,
//! invites, kicks, bans, power changes, join rule changes, messages), in every supported room
//! version, on an in-memory core. Whatever the sequence, each attempt is allowed or refused with a
//! client error (never an internal one or a panic), and what the rules promise holds after each
//! step: only a joined member sends, and a ban sticks until an unban.

use std::sync::Arc;

use hearth_core::keys::ServerKeys;
use hearth_core::rooms::NewEvent;
use hearth_core::rooms::create::{CreateRoom, MemberProfile, Preset};
use hearth_core::{Core, CoreConfig, Error};
use hearth_storage::RedbStore;
use proptest::prelude::*;
use ruma::{OwnedServerName, OwnedUserId, RoomId, RoomVersionId, UserId};
use serde_json::json;

const USERS: usize = 4;

#[derive(Clone, Debug)]
enum Op {
    Join(usize),
    Leave(usize),
    Invite(usize, usize),
    Kick(usize, usize),
    Ban(usize, usize),
    Unban(usize, usize),
    Send(usize),
    Power(usize, usize, i64),
    JoinRule(usize, bool),
}

fn op() -> impl Strategy<Value = Op> {
    let u = 0..USERS;
    prop_oneof![
        u.clone().prop_map(Op::Join),
        u.clone().prop_map(Op::Leave),
        (u.clone(), u.clone()).prop_map(|(a, b)| Op::Invite(a, b)),
        (u.clone(), u.clone()).prop_map(|(a, b)| Op::Kick(a, b)),
        (u.clone(), u.clone()).prop_map(|(a, b)| Op::Ban(a, b)),
        (u.clone(), u.clone()).prop_map(|(a, b)| Op::Unban(a, b)),
        u.clone().prop_map(Op::Send),
        (
            u.clone(),
            u.clone(),
            prop::sample::select(vec![-1, 0, 49, 50, 100, 101])
        )
            .prop_map(|(a, b, l)| Op::Power(a, b, l)),
        (u, any::<bool>()).prop_map(|(a, public)| Op::JoinRule(a, public)),
    ]
}

fn server() -> OwnedServerName {
    "hearth.test".try_into().unwrap()
}

fn user(i: usize) -> OwnedUserId {
    UserId::parse(format!("@u{i}:hearth.test")).unwrap()
}

/// A refusal a client may get; anything else is a bug.
fn is_client_error(e: &Error) -> bool {
    !matches!(e, Error::Internal(_))
}

async fn apply(core: &Core, room: &RoomId, op: &Op) -> Result<(), Error> {
    let rooms = &core.rooms;
    let profile = MemberProfile::default();
    match *op {
        Op::Join(u) => rooms
            .join(room, &user(u), &profile, &Default::default(), &[])
            .await
            .map(drop),
        Op::Leave(u) => rooms.leave(room, &user(u), None).await,
        Op::Invite(a, b) => rooms.invite(room, &user(a), &user(b), None, None).await,
        Op::Kick(a, b) => rooms.kick(room, &user(a), &user(b), None).await,
        Op::Ban(a, b) => rooms.ban(room, &user(a), &user(b), None).await,
        Op::Unban(a, b) => rooms.unban(room, &user(a), &user(b), None).await,
        Op::Send(u) => rooms
            .send(
                room,
                &user(u),
                NewEvent::message(
                    "m.room.message",
                    json!({ "msgtype": "m.text", "body": "x" }),
                ),
            )
            .await
            .map(drop),
        Op::Power(a, b, level) => {
            let users: serde_json::Map<String, serde_json::Value> = [
                (user(0).to_string(), json!(100)),
                (user(b).to_string(), json!(level)),
            ]
            .into_iter()
            .collect();
            rooms
                .send(
                    room,
                    &user(a),
                    NewEvent::state("m.room.power_levels", "", json!({ "users": users })),
                )
                .await
                .map(drop)
        }
        Op::JoinRule(a, public) => rooms
            .send(
                room,
                &user(a),
                NewEvent::state(
                    "m.room.join_rules",
                    "",
                    json!({ "join_rule": if public { "public" } else { "invite" } }),
                ),
            )
            .await
            .map(drop),
    }
}

async fn run(version: RoomVersionId, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let core = Core::new(
        CoreConfig::new(server()),
        Arc::new(RedbStore::in_memory().unwrap()),
        Arc::new(ServerKeys::ephemeral(server())),
        Arc::new(hearth_core::remote::NoFederation),
    )
    .unwrap();
    let room = core
        .rooms
        .create_room(
            &user(0),
            MemberProfile::default(),
            CreateRoom {
                preset: Some(Preset::PrivateChat),
                room_version: Some(version),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for op in &ops {
        let before = |u: usize| core.rooms.membership(&room, &user(u)).unwrap();
        let sender_was = match op {
            Op::Send(u) => before(*u),
            _ => None,
        };
        let target_was = match op {
            Op::Join(u) => before(*u),
            _ => None,
        };
        let result = apply(&core, &room, op).await;
        if let Err(e) = &result {
            prop_assert!(is_client_error(e), "{op:?}: {e:?}");
        }
        if let (Op::Send(_), Ok(())) = (op, &result) {
            prop_assert_eq!(
                sender_was.as_deref(),
                Some("join"),
                "{:?} sent unjoined",
                op
            );
        }
        if let Op::Join(u) = op
            && target_was.as_deref() == Some("ban")
        {
            prop_assert!(result.is_err(), "banned {u} joined");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(128),
        ..ProptestConfig::default()
    })]

    #[test]
    fn fuzz_any_sequence_of_attempts_keeps_the_rules(
        version in prop::sample::select(hearth_core::rooms::version::SUPPORTED_ROOM_VERSIONS.to_vec()),
        ops in prop::collection::vec(op(), 1..24),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(run(version, ops))?;
    }
}
