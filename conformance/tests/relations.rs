//! Replies, threads, reactions, edits and redactions, driven by matrix-sdk as a client would,
//! with raw HTTP where a test needs the exact status and error code.

mod common;

use common::{create_and_join, sdk_register, sync, token};
use hearth_conformance::{TestServer, Value, assert_matrix_error, enc, json};
use matrix_sdk::room::edit::EditedContent;
use matrix_sdk::room::{IncludeRelations, ListThreadsOptions, RelationsOptions};
use matrix_sdk::ruma::api::client::room::create_room::v3::Request as CreateRoom;
use matrix_sdk::ruma::api::client::threads::get_threads::v1::IncludeThreads;
use matrix_sdk::ruma::events::reaction::ReactionEventContent;
use matrix_sdk::ruma::events::relation::{Annotation, RelationType};
use matrix_sdk::ruma::events::room::message::{
    AddMentions, ForwardThread, ReplyMetadata, ReplyWithinThread, RoomMessageEventContent,
    RoomMessageEventContentWithoutRelation,
};
use matrix_sdk::ruma::{EventId, OwnedEventId, uint};

const PW: &str = "correct horse battery staple";

fn json_of<T>(raw: &matrix_sdk::ruma::serde::Raw<T>) -> Value {
    serde_json::from_str(raw.json().get()).expect("event is JSON")
}

#[tokio::test]
async fn replies_threads_reactions_and_edits() {
    let server = TestServer::start().await;
    let alice = sdk_register(&server, "alice", PW).await;
    let bob = sdk_register(&server, "bob", PW).await;
    let carol = sdk_register(&server, "carol", PW).await;
    sync(&alice).await;
    sync(&bob).await;
    sync(&carol).await;
    let room_id = create_and_join(&alice, &bob, CreateRoom::new()).await;
    let a_room = alice.get_room(&room_id).unwrap();
    a_room
        .invite_user_by_id(carol.user_id().unwrap())
        .await
        .unwrap();
    sync(&carol).await;
    carol.join_room_by_id(&room_id).await.unwrap();
    sync(&bob).await;
    let b_room = bob.get_room(&room_id).unwrap();
    let alice_id = alice.user_id().unwrap().to_owned();

    // A reply: the server keeps `m.in_reply_to` as sent.
    let question = a_room
        .send(RoomMessageEventContent::text_plain("Where shall we eat?"))
        .await
        .unwrap()
        .response
        .event_id;
    let reply = RoomMessageEventContent::text_plain("The usual place").make_reply_to(
        ReplyMetadata::new(&question, &alice_id, None),
        ForwardThread::Yes,
        AddMentions::Yes,
    );
    let reply_id = b_room.send(reply).await.unwrap().response.event_id;
    let fetched = json_of(a_room.event(&reply_id, None).await.unwrap().raw());
    assert_eq!(
        fetched["content"]["m.relates_to"]["m.in_reply_to"]["event_id"],
        question.as_str()
    );

    // A thread with three replies from two people.
    let root = a_room
        .send(RoomMessageEventContent::text_plain("Planning the trip"))
        .await
        .unwrap()
        .response
        .event_id;
    let in_thread = |text: &str| {
        RoomMessageEventContent::text_plain(text).make_for_thread(
            ReplyMetadata::new(&root, &alice_id, None),
            ReplyWithinThread::No,
            AddMentions::No,
        )
    };
    b_room.send(in_thread("Train?")).await.unwrap();
    b_room.send(in_thread("Or the bus")).await.unwrap();
    let last = a_room
        .send(in_thread("Train it is"))
        .await
        .unwrap()
        .response
        .event_id;
    let threads = a_room
        .list_threads(ListThreadsOptions::default())
        .await
        .unwrap();
    assert_eq!(threads.chunk.len(), 1, "one thread in the room");
    let listed = json_of(threads.chunk[0].raw());
    assert_eq!(listed["event_id"], root.as_str());
    let summary = &listed["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(summary["count"], 3, "{listed}");
    assert_eq!(summary["latest_event"]["event_id"], last.as_str());
    assert_eq!(summary["latest_event"]["content"]["body"], "Train it is");
    assert_eq!(summary["current_user_participated"], true);
    // Carol never wrote in it: the root shows her so, and her "participated" list is empty.
    let (status, seen) = server
        .get(
            &format!(
                "/rooms/{}/event/{}",
                enc(room_id.as_str()),
                enc(root.as_str())
            ),
            &token(&carol),
        )
        .await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(
        seen["unsigned"]["m.relations"]["m.thread"]["current_user_participated"],
        false
    );
    let c_room = carol.get_room(&room_id).unwrap();
    let participated = || ListThreadsOptions {
        include_threads: IncludeThreads::Participated,
        ..Default::default()
    };
    assert!(
        c_room
            .list_threads(participated())
            .await
            .unwrap()
            .chunk
            .is_empty()
    );
    assert_eq!(
        b_room
            .list_threads(participated())
            .await
            .unwrap()
            .chunk
            .len(),
        1
    );
    // A thread cannot hang off an event that is itself in a thread.
    let resp = server
        .put(
            &format!("/rooms/{}/send/m.room.message/t1", enc(room_id.as_str())),
            &token(&bob),
            &json!({
                "msgtype": "m.text", "body": "nested",
                "m.relates_to": { "rel_type": "m.thread", "event_id": last },
            }),
        )
        .await;
    assert_matrix_error(&resp, 400, "M_UNKNOWN");

    // Reactions: one per user and key; a second identical one is refused as Synapse does.
    b_room
        .send(ReactionEventContent::new(Annotation::new(
            question.clone(),
            "👍".into(),
        )))
        .await
        .unwrap();
    let reaction = json!({
        "m.relates_to": { "rel_type": "m.annotation", "event_id": question, "key": "👍" },
    });
    let resp = server
        .put(
            &format!("/rooms/{}/send/m.reaction/dup1", enc(room_id.as_str())),
            &token(&bob),
            &reaction,
        )
        .await;
    assert_matrix_error(&resp, 400, "M_DUPLICATE_ANNOTATION");
    a_room
        .send(ReactionEventContent::new(Annotation::new(
            question.clone(),
            "👍".into(),
        )))
        .await
        .unwrap();
    b_room
        .send(ReactionEventContent::new(Annotation::new(
            question.clone(),
            "🍕".into(),
        )))
        .await
        .unwrap();
    let mut opts = RelationsOptions {
        include_relations: IncludeRelations::RelationsOfType(RelationType::Annotation),
        ..Default::default()
    };
    let reactions = a_room
        .relations(question.clone(), opts.clone())
        .await
        .unwrap();
    let keys: Vec<Value> = reactions
        .chunk
        .iter()
        .map(|e| json_of(e.raw())["content"]["m.relates_to"]["key"].clone())
        .collect();
    // Newest first by default.
    assert_eq!(keys, vec![json!("🍕"), json!("👍"), json!("👍")]);
    // Paging one at a time walks the same list.
    opts.limit = Some(uint!(1));
    let mut walked = Vec::new();
    loop {
        let page = a_room
            .relations(question.clone(), opts.clone())
            .await
            .unwrap();
        walked.extend(page.chunk.iter().map(|e| e.event_id().unwrap()));
        match page.next_batch_token {
            Some(t) => opts.from = Some(t),
            None => break,
        }
    }
    let all: Vec<OwnedEventId> = reactions
        .chunk
        .iter()
        .map(|e| e.event_id().unwrap())
        .collect();
    assert_eq!(walked, all);

    // An edit: the original sender's latest replacement is bundled with the original.
    let edit = a_room
        .make_edit_event(
            &question,
            EditedContent::RoomMessage(RoomMessageEventContentWithoutRelation::text_plain(
                "Where shall we eat tonight?",
            )),
        )
        .await
        .unwrap();
    let edit_id = a_room.send(edit).await.unwrap().response.event_id;
    let shown = json_of(b_room.event(&question, None).await.unwrap().raw());
    let replace = &shown["unsigned"]["m.relations"]["m.replace"];
    assert_eq!(replace["event_id"], edit_id.as_str(), "{shown}");
    assert_eq!(
        replace["content"]["m.new_content"]["body"],
        "Where shall we eat tonight?"
    );
    // Nobody else may edit it.
    let resp = server
        .put(
            &format!("/rooms/{}/send/m.room.message/e1", enc(room_id.as_str())),
            &token(&bob),
            &json!({
                "msgtype": "m.text", "body": "* hijacked",
                "m.new_content": { "msgtype": "m.text", "body": "hijacked" },
                "m.relates_to": { "rel_type": "m.replace", "event_id": question },
            }),
        )
        .await;
    assert_matrix_error(&resp, 403, "M_FORBIDDEN");

    // `recurse` also finds a reaction to a thread reply under the thread's root.
    b_room
        .send(ReactionEventContent::new(Annotation::new(
            last.clone(),
            "🚆".into(),
        )))
        .await
        .unwrap();
    let rel_path = |recurse: bool| {
        format!(
            "/_matrix/client/v1/rooms/{}/relations/{}?limit=50&recurse={recurse}",
            enc(room_id.as_str()),
            enc(root.as_str())
        )
    };
    let (_, flat) = server.get(&rel_path(false), &token(&alice)).await;
    let (_, deep) = server.get(&rel_path(true), &token(&alice)).await;
    assert_eq!(flat["chunk"].as_array().unwrap().len(), 3, "{flat}");
    assert_eq!(deep["chunk"].as_array().unwrap().len(), 4, "{deep}");
    assert_eq!(deep["recursion_depth"], 2, "{deep}");

    // Relations to unknown events, or to another room's events, are refused.
    let other = alice.create_room(CreateRoom::new()).await.unwrap();
    let resp = server
        .put(
            &format!(
                "/rooms/{}/send/m.reaction/x1",
                enc(other.room_id().as_str())
            ),
            &token(&alice),
            &reaction_to(&question),
        )
        .await;
    assert_matrix_error(&resp, 400, "M_UNKNOWN");
    let resp = server
        .put(
            &format!("/rooms/{}/send/m.reaction/x2", enc(room_id.as_str())),
            &token(&alice),
            &reaction_to(&EventId::parse("$nope").unwrap()),
        )
        .await;
    assert_matrix_error(&resp, 400, "M_UNKNOWN");
}

fn reaction_to(event: &EventId) -> Value {
    json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": event, "key": "x" } })
}

#[tokio::test]
async fn redactions_prune_content_for_good() {
    let mut server = TestServer::start().await;
    let alice = sdk_register(&server, "alice", PW).await;
    let bob = sdk_register(&server, "bob", PW).await;
    sync(&alice).await;
    sync(&bob).await;
    let room_id = create_and_join(&alice, &bob, CreateRoom::new()).await;
    let a_room = alice.get_room(&room_id).unwrap();
    sync(&bob).await;
    let b_room = bob.get_room(&room_id).unwrap();
    let room = enc(room_id.as_str());

    let secret = a_room
        .send(RoomMessageEventContent::text_plain(
            "the vault code is 1234",
        ))
        .await
        .unwrap()
        .response
        .event_id;
    let bobs = b_room
        .send(RoomMessageEventContent::text_plain("bob's message"))
        .await
        .unwrap()
        .response
        .event_id;
    let thumbs = b_room
        .send(ReactionEventContent::new(Annotation::new(
            secret.clone(),
            "👍".into(),
        )))
        .await
        .unwrap()
        .response
        .event_id;

    // Bob (power 0) may not redact Alice's message; he may redact his own reaction.
    let resp = server
        .put(
            &format!("/rooms/{room}/redact/{}/r1", enc(secret.as_str())),
            &token(&bob),
            &json!({}),
        )
        .await;
    assert_matrix_error(&resp, 403, "M_FORBIDDEN");
    b_room.redact(&thumbs, None, None).await.unwrap();
    // The creator (power 100) may redact Bob's message, and her own.
    a_room.redact(&bobs, Some("off topic"), None).await.unwrap();
    let redaction = a_room
        .redact(&secret, Some("oops"), None)
        .await
        .unwrap()
        .event_id;

    let check = |event: Value| {
        assert_eq!(event["content"], json!({}), "{event}");
        assert_eq!(
            event["unsigned"]["redacted_because"]["event_id"],
            redaction.as_str(),
            "{event}"
        );
        assert_eq!(
            event["unsigned"]["redacted_because"]["content"]["reason"],
            "oops"
        );
    };
    let event_path = format!("/rooms/{room}/event/{}", enc(secret.as_str()));
    let (_, event) = server.get(&event_path, &token(&bob)).await;
    check(event);
    // matrix-sdk sees a redacted message.
    let fetched = b_room.event(&secret, None).await.unwrap();
    let deserialized = fetched.raw().deserialize().unwrap();
    assert!(
        deserialized.is_redacted(),
        "matrix-sdk reads it as redacted"
    );
    // The reaction left the relations.
    let (_, rel) = server
        .get(
            &format!(
                "/_matrix/client/v1/rooms/{room}/relations/{}",
                enc(secret.as_str())
            ),
            &token(&alice),
        )
        .await;
    assert_eq!(rel["chunk"], json!([]), "{rel}");
    // A redaction of an unknown event is refused.
    let resp = server
        .put(
            &format!("/rooms/{room}/redact/{}/r9", enc("$unknown")),
            &token(&alice),
            &json!({}),
        )
        .await;
    assert_matrix_error(&resp, 404, "M_NOT_FOUND");

    // The content is gone from the store itself, not only from caches: after a crash and a
    // restart (cold caches) only the pruned form is there.
    server.kill9();
    server.restart().await;
    let (_, login) = server
        .post_anon(
            "/login",
            &json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "bob" }, "password": PW }),
        )
        .await;
    let bob_token = login["access_token"].as_str().unwrap().to_owned();
    let (status, event) = server.get(&event_path, &bob_token).await;
    assert_eq!(status, 200, "{event}");
    check(event);
    let (_, messages) = server
        .get(
            &format!("/rooms/{room}/messages?dir=b&limit=20"),
            &bob_token,
        )
        .await;
    let text = messages.to_string();
    assert!(!text.contains("vault code"), "{text}");
    assert!(!text.contains("bob's message"), "{text}");
}
