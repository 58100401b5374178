//! federation: delivery latency between two homeservers, from the start of a send on one to the
//! receiver's /sync long-poll on the other returning it. A user on A (`--url`) creates a public
//! room, a user on B (`--peer-url`) joins it through A's server name; then messages go A→B one at
//! a time, B→A one at a time, and (with `--fed-concurrency`) A→B and B→A with several in flight.
//! Then (with `--fed-room-members`), a fresh user on B joins a room of that many members on A;
//! last (with `--fed-history`), a fresh user on B joins a room with that many messages on A and
//! pages back through them, which B backfills from A.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{Ctx, send_and_time_on, skipped};
use crate::BoxError;
use crate::api::{Api, enc};
use crate::stats::{Summary, ms, rate, round3};
use crate::syncloop::{self, Update};
use crate::users::{User, UserPool};

/// The server name in a user ID: everything after the first colon (it may carry a port).
fn server_of(user_id: &str) -> Option<&str> {
    user_id.split_once(':').map(|(_, s)| s)
}

pub async fn run(ctx: &Ctx) -> Result<Value, BoxError> {
    let Some(peer_url) = ctx.args.peer_url.as_deref() else {
        return Ok(skipped("no --peer-url"));
    };
    let peer = Arc::new(Api::new(
        peer_url,
        Duration::from_secs_f64(ctx.args.request_timeout),
        ctx.args.max_429_retries,
    )?);
    peer.versions().await?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let peer_pool = UserPool::new(
        format!("{}p", ctx.run_id),
        format!("hb-fed-{nanos:x}{:x}", std::process::id()),
        ctx.args.registration_token.clone(),
        1,
    );
    let a = ctx.pool.take(&ctx.api, 1).await?.pop().expect("one user");
    let b = peer_pool.take(&peer, 1).await?.pop().expect("one user");
    let a_name = match &ctx.args.server_name {
        Some(n) => n.clone(),
        None => server_of(&a.user_id)
            .ok_or_else(|| format!("no server name in {}", a.user_id))?
            .to_owned(),
    };
    let room = ctx
        .api
        .create_room(
            &a.auth,
            &json!({ "preset": "public_chat", "name": "hearth-bench federation" }),
        )
        .await?;
    crate::log!(
        "federation: {} on {} joins {room} through {a_name}",
        b.user_id,
        peer_url
    );
    let t_join = Instant::now();
    peer.post_json(
        &format!("/join/{}?server_name={}", enc(&room), enc(&a_name)),
        Some(&b.auth),
        &json!({}),
    )
    .await?;
    let join_ms = ms(t_join.elapsed());

    let opts = ctx.sync_opts();
    let (tx_b, mut rx_b) = mpsc::unbounded_channel();
    let pollers_b = syncloop::start(&peer, std::slice::from_ref(&b), &opts, 1, tx_b).await?;
    let (tx_a, mut rx_a) = mpsc::unbounded_channel();
    let pollers_a = syncloop::start(&ctx.api, std::slice::from_ref(&a), &opts, 1, tx_a).await?;

    let (n, warm, c) = (
        ctx.args.fed_messages,
        ctx.args.fed_warmup,
        ctx.args.fed_concurrency,
    );
    // Untimed: the first events make each side fetch the other's keys and open connections.
    let w_ab = send_and_time_on(ctx, &ctx.api, &a, &room, &mut rx_b, "fwab", warm).await?;
    let w_ba = send_and_time_on(ctx, &peer, &b, &room, &mut rx_a, "fwba", warm).await?;
    if warm > 0 && (w_ab.delivery.is_empty() || w_ba.delivery.is_empty()) {
        return Err(format!(
            "warm-up: no message arrived (A→B {} of {warm}, B→A {} of {warm}); is federation up?",
            w_ab.delivery.len(),
            w_ba.delivery.len()
        )
        .into());
    }
    ctx.mark_measured();
    let mut out = json!({
        "server_name_a": a_name,
        "server_name_b": server_of(&b.user_id),
        "peer_url": peer_url,
        "join_ms": join_ms,
        "messages": n,
        "warmup_messages": warm,
    });
    if n > 0 {
        crate::log!(
            "federation: {n} messages each way, one at a time, gap {} ms",
            ctx.args.gap_ms
        );
        for (key, api, sender, rx, tag) in [
            ("a_to_b", &ctx.api, &a, &mut rx_b, "fab"),
            ("b_to_a", &peer, &b, &mut rx_a, "fba"),
        ] {
            let t0 = Instant::now();
            let mut t = send_and_time_on(ctx, api, sender, &room, rx, tag, n).await?;
            let latency = Summary::of(&mut t.delivery);
            crate::log!(
                "federation {key}: {} (missed {})",
                latency.brief(),
                t.missed
            );
            out[key] = json!({
                "delivered": latency.n,
                "missed": t.missed,
                "latency_ms": latency,
                "send_put_ms": Summary::of(&mut t.puts),
                "elapsed_s": round3(t0.elapsed().as_secs_f64()),
            });
        }
        if c > 0 {
            for (key, from, to, rx, tag) in [
                (
                    "a_to_b_concurrent",
                    (&*ctx.api, &a),
                    (&*peer, &b),
                    &mut rx_b,
                    "fcab",
                ),
                (
                    "b_to_a_concurrent",
                    (&*peer, &b),
                    (&*ctx.api, &a),
                    &mut rx_a,
                    "fcba",
                ),
            ] {
                let v = concurrent(ctx, from, to, &room, rx, tag, n, c).await?;
                out[key] = v;
            }
        }
    }
    if ctx.args.fed_room_members > 0 {
        out["big_room_join"] = big_room_join(
            ctx,
            &peer,
            &peer_pool,
            &a,
            &a_name,
            ctx.args.fed_room_members,
        )
        .await?;
    }
    if ctx.args.fed_history > 0 {
        out["history_backfill"] =
            history_backfill(ctx, &peer, &peer_pool, &a, &a_name, ctx.args.fed_history).await?;
    }
    out["sync_errors"] = json!({ "a": pollers_a.errors(), "b": pollers_b.errors() });
    Ok(out)
}

/// A room of `members` on A (its creator `a` and `members - 1` fresh users), which a fresh user
/// on B then joins through A's server name: the join is timed from the request to its answer,
/// and B's `/joined_members` must then list everyone.
async fn big_room_join(
    ctx: &Ctx,
    peer: &Api,
    peer_pool: &UserPool,
    a: &User,
    a_name: &str,
    members: usize,
) -> Result<Value, BoxError> {
    let others = ctx.pool.take(&ctx.api, members.saturating_sub(1)).await?;
    let room = ctx
        .api
        .create_room(
            &a.auth,
            &json!({ "preset": "public_chat", "name": "hearth-bench big room" }),
        )
        .await?;
    crate::log!("federation: {} members join {room} on A", others.len());
    let t_fill = Instant::now();
    let joins: Vec<Result<(), crate::api::ApiError>> = futures_util::stream::iter(&others)
        .map(|u| ctx.api.join(&u.auth, &room))
        .buffer_unordered(ctx.args.setup_concurrency.max(1))
        .collect()
        .await;
    joins.into_iter().collect::<Result<Vec<()>, _>>()?;
    let fill_s = t_fill.elapsed().as_secs_f64();

    let b = peer_pool.take(peer, 1).await?.pop().expect("one user");
    crate::log!("federation: {} joins the room of {members}", b.user_id);
    let t_join = Instant::now();
    peer.post_json(
        &format!("/join/{}?server_name={}", enc(&room), enc(a_name)),
        Some(&b.auth),
        &json!({}),
    )
    .await?;
    let join_ms = ms(t_join.elapsed());
    let t_members = Instant::now();
    let listed: Value = peer
        .get(
            &format!("/rooms/{}/joined_members", enc(&room)),
            Some(&b.auth),
        )
        .await?
        .json("joined_members")?;
    let members_ms = ms(t_members.elapsed());
    let seen = listed["joined"].as_object().map_or(0, |m| m.len());
    crate::log!(
        "federation: join of a {members}-member room took {join_ms:.0} ms; B lists {seen} members"
    );
    if seen != members + 1 {
        return Err(format!("B lists {seen} joined members, expected {}", members + 1).into());
    }
    Ok(json!({
        "members": members,
        "join_ms": join_ms,
        "joined_members_ms": members_ms,
        "members_listed_by_b": seen,
        "fill_s": round3(fill_s),
    }))
}

/// `n` messages with `c` sends in flight; each timed from its send's start until the receiver's
/// /sync returns it.
#[allow(clippy::too_many_arguments)]
async fn concurrent(
    ctx: &Ctx,
    (api, sender): (&Api, &User),
    (receiver_api, receiver): (&Api, &User),
    room: &str,
    rx: &mut mpsc::UnboundedReceiver<Update>,
    tag: &str,
    n: usize,
    c: usize,
) -> Result<Value, BoxError> {
    let room_enc = enc(room);
    let bodies: Vec<String> = (0..n)
        .map(|i| format!("hb {} {tag} {i}", ctx.run_id))
        .collect();
    let index: HashMap<&str, usize> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| (b.as_str(), i))
        .collect();
    let sends_done: Cell<Option<Instant>> = Cell::new(None);
    let t_start = Instant::now();
    let send = async {
        let r: Vec<Result<(usize, Instant, f64), BoxError>> = futures_util::stream::iter(0..n)
            .map(|i| {
                let (room_enc, body) = (&room_enc, &bodies[i]);
                async move {
                    let txn = format!("{}-{tag}-{i}", ctx.run_id);
                    let t0 = Instant::now();
                    let r = api.send_text(&sender.auth, room_enc, &txn, body).await?;
                    Ok((i, t0, ms(r.at - t0)))
                }
            })
            .buffer_unordered(c)
            .collect()
            .await;
        sends_done.set(Some(Instant::now()));
        r
    };
    let receive = async {
        let mut seen: Vec<Option<Instant>> = vec![None; n];
        let mut count = 0;
        while count < n {
            if sends_done
                .get()
                .is_some_and(|d| d.elapsed() > ctx.msg_timeout())
            {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
                Ok(Some(u)) => {
                    for b in u.sync.message_bodies(room) {
                        if let Some(&i) = index.get(b)
                            && seen[i].is_none()
                        {
                            seen[i] = Some(u.at);
                            count += 1;
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => {}
            }
        }
        seen
    };
    let (sent, seen) = tokio::join!(send, receive);
    let elapsed = t_start.elapsed().as_secs_f64();
    let (mut delivery, mut puts) = (Vec::new(), Vec::new());
    let mut missed = 0;
    for r in sent {
        let (i, t0, put) = r?;
        puts.push(put);
        match seen[i] {
            Some(at) => delivery.push(ms(at.saturating_duration_since(t0))),
            None => missed += 1,
        }
    }
    let latency = Summary::of(&mut delivery);
    crate::log!(
        "federation {tag} ({c} in flight): {} (missed {missed})",
        latency.brief()
    );
    // A receiver may leave messages out of /sync and have them only in history: Synapse prunes
    // a room's inbound queue above 100 staged events, keeping the newest, and gets the rest
    // by backfill when a client pages back. Count what paging back finds.
    let mut found_by_paging = Value::Null;
    if missed > 0 {
        let unseen: std::collections::HashSet<&str> = seen
            .iter()
            .zip(&bodies)
            .filter(|(s, _)| s.is_none())
            .map(|(_, b)| b.as_str())
            .collect();
        let n = paged_back(ctx, receiver_api, receiver, room, &unseen).await?;
        crate::log!("federation {tag}: paging back found {n} of the {missed} missed");
        found_by_paging = json!(n);
    }
    Ok(json!({
        "in_flight": c,
        "delivered": latency.n,
        "missed": missed,
        "missed_found_by_paging_back": found_by_paging,
        "latency_ms": latency,
        "send_put_ms": Summary::of(&mut puts),
        "elapsed_s": round3(elapsed),
        "delivered_per_s": rate(latency.n, elapsed),
    }))
}

/// How many of `wanted` the receiver finds paging back through the room's history (at most
/// 50 pages of 100).
async fn paged_back(
    ctx: &Ctx,
    api: &Api,
    user: &User,
    room: &str,
    wanted: &std::collections::HashSet<&str>,
) -> Result<usize, BoxError> {
    let room_enc = enc(room);
    let mut token = syncloop::initial_sync(api, user, &ctx.args.set_presence).await?;
    let mut found = std::collections::HashSet::new();
    for _ in 0..50 {
        let page = api.messages(&user.auth, &room_enc, &token, 100).await?;
        found.extend(
            page.chunk
                .iter()
                .filter(|e| e.kind == "m.room.message")
                .filter_map(|e| e.body())
                .filter(|b| wanted.contains(b))
                .map(str::to_owned),
        );
        match page.end {
            Some(end) if found.len() < wanted.len() && !page.chunk.is_empty() => token = end,
            _ => break,
        }
    }
    Ok(found.len())
}

/// Messages per `/messages` page when B reads the history.
const HISTORY_PAGE: usize = 50;

/// A room on A where `a` says `messages` messages (untimed), which a fresh user on B joins and
/// then reads back to its start, `/messages` 50 at a time: every page that reaches past what B
/// holds makes B backfill from A. Timed from the first page to the last; every message must
/// come back once.
async fn history_backfill(
    ctx: &Ctx,
    peer: &Api,
    peer_pool: &UserPool,
    a: &User,
    a_name: &str,
    messages: usize,
) -> Result<Value, BoxError> {
    let room = ctx
        .api
        .create_room(
            &a.auth,
            &json!({ "preset": "public_chat", "name": "hearth-bench history" }),
        )
        .await?;
    let room_enc = enc(&room);
    crate::log!("federation: {messages} messages of history in {room} on A");
    for i in 0..messages {
        ctx.api
            .send_text(
                &a.auth,
                &room_enc,
                &format!("fh{i}"),
                &format!("history {i}"),
            )
            .await?;
    }
    let b = peer_pool.take(peer, 1).await?.pop().expect("one user");
    peer.post_json(
        &format!("/join/{room_enc}?server_name={}", enc(a_name)),
        Some(&b.auth),
        &json!({}),
    )
    .await?;
    crate::log!("federation: {} reads the history back", b.user_id);
    let mut found = std::collections::HashSet::new();
    let mut pages = Vec::new();
    let mut from: Option<String> = None;
    let t0 = Instant::now();
    loop {
        let mut path = format!("/rooms/{room_enc}/messages?dir=b&limit={HISTORY_PAGE}");
        if let Some(f) = &from {
            path.push_str(&format!("&from={}", enc(f)));
        }
        let t_page = Instant::now();
        let page: Value = peer
            .get(&path, Some(&b.auth))
            .await?
            .json("GET /messages")?;
        pages.push(ms(t_page.elapsed()));
        for e in page["chunk"].as_array().into_iter().flatten() {
            if let Some(body) = e["content"]["body"].as_str()
                && body.starts_with("history ")
                && !found.insert(body.to_owned())
            {
                return Err(format!("{body:?} came back twice").into());
            }
        }
        match page["end"].as_str() {
            Some(end) if pages.len() < 10 * messages / HISTORY_PAGE + 20 => {
                from = Some(end.to_owned())
            }
            _ => break,
        }
    }
    let total_s = t0.elapsed().as_secs_f64();
    crate::log!(
        "federation: read {} of {messages} messages of history in {} pages, {total_s:.2} s",
        found.len(),
        pages.len()
    );
    if found.len() != messages {
        return Err(format!("B read {} of {messages} messages of history", found.len()).into());
    }
    Ok(json!({
        "messages": messages,
        "pages": pages.len(),
        "page_ms": Summary::of(&mut pages),
        "total_s": round3(total_s),
        "messages_per_s": rate(messages, total_s),
    }))
}

#[cfg(test)]
mod tests {
    use super::server_of;

    #[test]
    fn server_names_keep_their_port() {
        assert_eq!(server_of("@a:localhost:8448"), Some("localhost:8448"));
        assert_eq!(server_of("@a:example.org"), Some("example.org"));
        assert_eq!(server_of("nope"), None);
    }
}
