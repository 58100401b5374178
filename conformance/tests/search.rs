//! Server-side search (`POST /search`): by word, sender and date, ranked or by recency, paged,
//! and never beyond what the searcher may read.

mod common;

use common::{create_and_join, sdk_register, sync, token};
use hearth_conformance::{TestServer, Value, assert_matrix_error, enc, json};
use matrix_sdk::ruma::api::client::room::create_room::v3::Request as CreateRoom;
use matrix_sdk::ruma::api::client::search::search_events::v3 as search_events;
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use matrix_sdk::ruma::{OwnedEventId, uint};

const PW: &str = "correct horse battery staple";

async fn say(
    client: &matrix_sdk::Client,
    room: &matrix_sdk::ruma::RoomId,
    text: &str,
) -> OwnedEventId {
    client
        .get_room(room)
        .unwrap()
        .send(RoomMessageEventContent::text_plain(text))
        .await
        .unwrap()
        .response
        .event_id
}

/// The event ids of a search answer's results, in order.
fn ids(answer: &Value) -> Vec<String> {
    answer["search_categories"]["room_events"]["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results in {answer}"))
        .iter()
        .map(|r| r["result"]["event_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn search(server: &TestServer, token: &str, room_events: Value) -> Value {
    search_page(server, token, room_events, None).await
}

async fn search_page(
    server: &TestServer,
    token: &str,
    room_events: Value,
    next: Option<&str>,
) -> Value {
    let path = match next {
        Some(n) => format!("/search?next_batch={}", enc(n)),
        None => "/search".to_owned(),
    };
    let (status, answer) = server
        .post(
            &path,
            token,
            &json!({ "search_categories": { "room_events": room_events } }),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    answer
}

#[tokio::test]
async fn search_by_word_sender_and_date_ranks_pages_and_respects_visibility() {
    let mut server = TestServer::start().await;
    let alice = sdk_register(&server, "alice", PW).await;
    let bob = sdk_register(&server, "bob", PW).await;
    let carol = sdk_register(&server, "carol", PW).await;
    for c in [&alice, &bob, &carol] {
        sync(c).await;
    }
    let room = create_and_join(&alice, &bob, CreateRoom::new()).await;
    let carols = carol
        .create_room(CreateRoom::new())
        .await
        .unwrap()
        .room_id()
        .to_owned();
    say(&carol, &carols, "carol's private pizza recipe").await;

    let e1 = say(&alice, &room, "I love pizza with pineapple").await;
    let e2 = say(&bob, &room, "pizza pizza pizza is the best").await;
    say(&alice, &room, "the weather is nice today").await;
    let e4 = say(&bob, &room, "Pizzas tonight?").await;
    let (a, b) = (token(&alice), token(&bob));

    // By word, stemmed ("Pizzas" matches), only in rooms Alice is in.
    let answer = search(&server, &a, json!({ "search_term": "pizza" })).await;
    let found = ids(&answer);
    assert_eq!(found.len(), 3, "{answer}");
    for e in [&e1, &e2, &e4] {
        assert!(found.contains(&e.to_string()), "{answer}");
    }
    let cat = &answer["search_categories"]["room_events"];
    assert_eq!(cat["count"], 3);
    assert_eq!(cat["highlights"], json!(["pizza"]));
    // Ranked: scores never rise, and three mentions beat one in a sentence of similar length.
    let ranks: Vec<f64> = cat["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rank"].as_f64().unwrap())
        .collect();
    assert!(ranks.windows(2).all(|w| w[0] >= w[1]), "{ranks:?}");
    let at = |id: &OwnedEventId| found.iter().position(|f| f == id.as_str()).unwrap();
    assert!(at(&e2) < at(&e1), "{answer}");
    // Every word must match.
    let answer = search(&server, &a, json!({ "search_term": "pizza pineapple" })).await;
    assert_eq!(ids(&answer), vec![e1.to_string()]);

    // Recent first, paged one at a time with next_batch, in both orders.
    let recent = search(
        &server,
        &a,
        json!({ "search_term": "pizza", "order_by": "recent" }),
    )
    .await;
    assert_eq!(
        ids(&recent),
        vec![e4.to_string(), e2.to_string(), e1.to_string()]
    );
    for order in ["recent", "rank"] {
        let q = json!({ "search_term": "pizza", "order_by": order, "filter": { "limit": 1 } });
        let mut walked = Vec::new();
        let mut next: Option<String> = None;
        let mut pages = 0;
        loop {
            pages += 1;
            let page = search_page(&server, &a, q.clone(), next.as_deref()).await;
            walked.extend(ids(&page));
            match page["search_categories"]["room_events"]["next_batch"].as_str() {
                Some(n) => next = Some(n.to_owned()),
                None => break,
            }
            assert!(walked.len() <= 3, "paging does not end: {walked:?}");
        }
        let mut sorted = walked.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 3, "{order}: {walked:?}");
        assert_eq!(pages, 3, "{order}: the last page says there is no next one");
    }

    // By sender.
    let answer = search(
        &server,
        &a,
        json!({ "search_term": "pizza", "filter": { "senders": [bob.user_id().unwrap()] } }),
    )
    .await;
    assert_eq!(ids(&answer).len(), 2, "{answer}");
    // By date: from the second message's timestamp on.
    let (_, ev2) = server
        .get(
            &format!("/rooms/{}/event/{}", enc(room.as_str()), enc(e2.as_str())),
            &a,
        )
        .await;
    let since = ev2["origin_server_ts"].as_u64().unwrap();
    let answer = search(
        &server,
        &a,
        json!({ "search_term": "pizza", "order_by": "recent", "filter": { "hearth.since_ts": since } }),
    )
    .await;
    assert_eq!(ids(&answer), vec![e4.to_string(), e2.to_string()]);
    let answer = search(
        &server,
        &a,
        json!({ "search_term": "pizza", "filter": { "hearth.until_ts": since } }),
    )
    .await;
    assert_eq!(ids(&answer), vec![e1.to_string()]);

    // Never Carol's room, even when asked for it by name.
    let answer = search(
        &server,
        &a,
        json!({ "search_term": "recipe", "filter": { "rooms": [carols] } }),
    )
    .await;
    assert!(ids(&answer).is_empty(), "{answer}");

    // History visibility: a newcomer to a "joined" room finds only what came after their join.
    let strict = create_and_join(&alice, &bob, {
        let mut r = CreateRoom::new();
        r.initial_state = vec![
            matrix_sdk::ruma::serde::Raw::new(&json!({
                "type": "m.room.history_visibility", "state_key": "",
                "content": { "history_visibility": "joined" },
            }))
            .unwrap()
            .cast_unchecked(),
        ];
        r
    })
    .await;
    let before = say(&alice, &strict, "anchovy before carol").await;
    alice
        .get_room(&strict)
        .unwrap()
        .invite_user_by_id(carol.user_id().unwrap())
        .await
        .unwrap();
    sync(&carol).await;
    carol.join_room_by_id(&strict).await.unwrap();
    let after = say(&alice, &strict, "anchovy after carol").await;
    let answer = search(&server, &token(&carol), json!({ "search_term": "anchovy" })).await;
    assert_eq!(ids(&answer), vec![after.to_string()], "{answer}");
    let answer = search(
        &server,
        &b,
        json!({ "search_term": "anchovy", "order_by": "recent" }),
    )
    .await;
    assert_eq!(ids(&answer), vec![after.to_string(), before.to_string()]);

    // Context, room state and grouping by room.
    let answer = search(
        &server,
        &a,
        json!({
            "search_term": "weather",
            "event_context": { "before_limit": 1, "after_limit": 1, "include_profile": true },
            "include_state": true,
            "groupings": { "group_by": [ { "key": "room_id" } ] },
        }),
    )
    .await;
    let cat = &answer["search_categories"]["room_events"];
    let ctx = &cat["results"][0]["context"];
    assert_eq!(ctx["events_before"][0]["event_id"], e2.as_str(), "{answer}");
    assert_eq!(ctx["events_after"][0]["event_id"], e4.as_str(), "{answer}");
    assert!(ctx["profile_info"][alice.user_id().unwrap().as_str()].is_object());
    assert!(cat["state"][room.as_str()].as_array().unwrap().len() >= 3);
    assert_eq!(
        cat["groups"]["room_id"][room.as_str()]["results"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // matrix-sdk (ruma's types) reads the answer.
    let mut criteria = search_events::Criteria::new("pineapple".to_owned());
    criteria.order_by = Some(search_events::OrderBy::Recent);
    let mut categories = search_events::Categories::new();
    categories.room_events = Some(criteria);
    let resp = alice
        .send(search_events::Request::new(categories))
        .await
        .unwrap();
    assert_eq!(resp.search_categories.room_events.count, Some(uint!(1)));

    // A redacted message is no longer found.
    alice
        .get_room(&room)
        .unwrap()
        .redact(&e1, None, None)
        .await
        .unwrap();
    let answer = search(&server, &a, json!({ "search_term": "pineapple" })).await;
    assert!(ids(&answer).is_empty(), "{answer}");

    // Bad requests get Matrix errors.
    let resp = server
        .post(
            "/search",
            &a,
            &json!({ "search_categories": { "room_events": {} } }),
        )
        .await;
    assert_matrix_error(&resp, 400, "M_BAD_JSON");
    let resp = server
        .post(
            "/search",
            &a,
            &json!({ "search_categories": { "room_events": { "search_term": "x", "order_by": "size" } } }),
        )
        .await;
    assert_matrix_error(&resp, 400, "M_INVALID_PARAM");
    let resp = server
        .post(
            "/search?next_batch=zz",
            &a,
            &json!({ "search_categories": { "room_events": { "search_term": "x" } } }),
        )
        .await;
    assert_matrix_error(&resp, 400, "M_INVALID_PARAM");

    // The index survives a crash: found again after kill -9 and a restart, redaction included.
    server.kill9();
    server.restart().await;
    let (_, login) = server
        .post_anon(
            "/login",
            &json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": PW }),
        )
        .await;
    let a = login["access_token"].as_str().unwrap().to_owned();
    let answer = search(&server, &a, json!({ "search_term": "pizza" })).await;
    assert_eq!(ids(&answer).len(), 2, "{answer}");
    let answer = search(&server, &a, json!({ "search_term": "pineapple" })).await;
    assert!(ids(&answer).is_empty(), "{answer}");
}
