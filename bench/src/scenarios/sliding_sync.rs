//! sliding_sync: simplified sliding sync (MSC4186) for a user in many rooms. A user U creates
//! `--ss-rooms` rooms; a sender S is invited to every `--ss-shared-every`-th of them and joins.
//! Two phases:
//! - first page: `--ss-first-rounds` fresh connections (a new `conn_id`, no `pos`), each timed
//!   from the request's start to the whole answer, which must count every room and carry a page
//!   of `--ss-page-size` rooms;
//! - wake: one connection long-polls with its `pos`; once the poll is parked (`--ss-park-ms`), S
//!   sends a message into a shared room, timed from the start of the `PUT` to the long-poll's
//!   answer that carries the message. Rounds alternate between a room outside the current page
//!   (it enters the page) and a room inside it, not at its top.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::Method;
use reqwest::header::HeaderValue;
use serde_json::{Value, json};

use super::{CpuMark, Ctx, skipped};
use crate::BoxError;
use crate::api::{ApiError, Resp, enc};
use crate::stats::{Summary, ms, rate, round2, round3};
use crate::users::User;

const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";
const LIST: &str = "all";
/// A long-poll that answers before its message is sent is re-issued with its new `pos`; this
/// many times in a row means it never parks.
const MAX_EARLY: usize = 10;

pub async fn run(ctx: &Ctx) -> Result<Value, BoxError> {
    let a = &ctx.args;
    let (n_rooms, page) = (a.ss_rooms.max(1), a.ss_page_size.max(1));
    let mut users = ctx.pool.take(&ctx.api, 2).await?;
    let sender = users.pop().expect("two users");
    let user = users.pop().expect("two users");

    // Before the costly setup: does the server have the endpoint at all?
    let probe = request_body("hb-probe", page, true);
    match call(ctx, &user.auth, &probe, None, None).await {
        Err(e) if e.is_unsupported() => {
            let mut v = skipped("no sliding sync endpoint");
            v["detail"] = json!(e.to_string());
            return Ok(v);
        }
        r => drop(r?),
    }

    let setup = setup(ctx, &user.auth, &sender, n_rooms).await?;
    let shared = setup.shared.clone();
    let rss_after_setup = ctx.sampler.as_ref().and_then(|s| s.sample());

    ctx.mark_measured();
    let first = first_page_phase(ctx, &user.auth, n_rooms, page).await?;
    let rss_after_first = ctx.sampler.as_ref().and_then(|s| s.sample());
    let wake = wake_phase(ctx, &user.auth, &sender, &shared, n_rooms, page).await?;
    Ok(json!({
        "rooms": n_rooms,
        "shared_rooms": shared.len(),
        "page_size": page,
        "first_page": first,
        "wake": wake,
        "rss_kb": {
            "after_setup": rss_after_setup,
            "after_first_page": rss_after_first,
            "end": ctx.sampler.as_ref().and_then(|s| s.sample()),
        },
        "setup": setup.report,
    }))
}

/// Element X's room list request: one list of the most recent rooms, with the state a room list
/// shows, and the extensions it enables.
fn request_body(conn_id: &str, page: usize, extensions: bool) -> Bytes {
    let mut v = json!({
        "conn_id": conn_id,
        "lists": {
            LIST: {
                "ranges": [[0, page - 1]],
                "timeline_limit": 1,
                "required_state": [
                    ["m.room.name", ""],
                    ["m.room.avatar", ""],
                    ["m.room.encryption", ""],
                    ["m.room.member", "$LAZY"],
                ],
            },
        },
    });
    if extensions {
        v["extensions"] = json!({
            "e2ee": {"enabled": true},
            "to_device": {"enabled": true},
            "account_data": {"enabled": true},
            "receipts": {"enabled": true},
            "typing": {"enabled": true},
        });
    }
    Bytes::from(serde_json::to_vec(&v).expect("a Value serializes"))
}

/// One sliding sync request: `pos` continues a connection, `timeout_ms` makes it a long-poll.
async fn call(
    ctx: &Ctx,
    auth: &HeaderValue,
    body: &Bytes,
    pos: Option<&str>,
    timeout_ms: Option<u64>,
) -> Result<Resp, ApiError> {
    let mut q = format!("{PATH}?set_presence={}", enc(&ctx.args.set_presence));
    if let Some(p) = pos {
        let _ = write!(q, "&pos={}", enc(p));
    }
    if let Some(t) = timeout_ms {
        let _ = write!(q, "&timeout={t}");
    }
    let limit = Duration::from_millis(timeout_ms.unwrap_or(0))
        + Duration::from_secs_f64(ctx.args.request_timeout);
    ctx.api
        .call(
            Method::POST,
            &q,
            Some(auth),
            Some(body.clone()),
            Some(limit),
            &[200],
        )
        .await
}

fn parse(r: &Resp) -> Result<Value, ApiError> {
    r.json("POST sliding sync")
}

fn pos_of(v: &Value) -> Result<String, BoxError> {
    v.get("pos")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("sliding sync response without a pos: {}", brief(v)).into())
}

/// The list's count, and the rooms of the response from the most recently bumped down (rooms
/// without a `bump_stamp` last).
fn page_of(v: &Value) -> (Option<u64>, Vec<String>) {
    let count = v
        .pointer(&format!("/lists/{LIST}/count"))
        .and_then(Value::as_u64);
    let mut rooms: Vec<(i64, String)> = v
        .get("rooms")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(id, r)| {
            let bump = r.get("bump_stamp").and_then(Value::as_i64).unwrap_or(-1);
            (bump, id.clone())
        })
        .collect();
    rooms.sort_by(|x, y| y.0.cmp(&x.0).then_with(|| x.1.cmp(&y.1)));
    (count, rooms.into_iter().map(|(_, id)| id).collect())
}

/// Whether the response carries `body` in `room`'s timeline.
fn has_message(v: &Value, room: &str, body: &str) -> bool {
    v.get("rooms")
        .and_then(|r| r.get(room))
        .and_then(|r| r.get("timeline"))
        .and_then(Value::as_array)
        .is_some_and(|tl| {
            tl.iter()
                .any(|e| e.pointer("/content/body").and_then(Value::as_str) == Some(body))
        })
}

/// A response, cut short for an error message.
fn brief(v: &Value) -> String {
    v.to_string().chars().take(400).collect()
}

struct Setup {
    shared: Vec<String>,
    report: Value,
}

/// U creates the rooms, with S invited into every `--ss-shared-every`-th one; then S joins those.
async fn setup(ctx: &Ctx, auth: &HeaderValue, sender: &User, n: usize) -> Result<Setup, BoxError> {
    let a = &ctx.args;
    let every = a.ss_shared_every.max(1);
    crate::log!(
        "sliding_sync: creating {n} rooms (concurrency {}), the sender in every {every}th",
        a.setup_concurrency
    );
    let t_setup = Instant::now();
    let done = AtomicUsize::new(0);
    let created: Vec<Result<(usize, String, f64), ApiError>> = futures_util::stream::iter(0..n)
        .map(|i| {
            let done = &done;
            async move {
                let mut body = json!({
                    "preset": "private_chat",
                    "name": format!("hearth-bench ss {i}"),
                });
                if i % every == 0 {
                    body["invite"] = json!([sender.user_id]);
                }
                let t = Instant::now();
                let room = ctx.api.create_room(auth, &body).await?;
                let k = done.fetch_add(1, Relaxed) + 1;
                if k.is_multiple_of(250) && k < n {
                    crate::log!("sliding_sync: {k} of {n} rooms created");
                }
                Ok((i, room, ms(t.elapsed())))
            }
        })
        .buffer_unordered(a.setup_concurrency.max(1))
        .collect()
        .await;
    let create_s = t_setup.elapsed().as_secs_f64();
    let mut created = created.into_iter().collect::<Result<Vec<_>, _>>()?;
    created.sort_by_key(|c| c.0);
    let mut create_lats: Vec<f64> = created.iter().map(|c| c.2).collect();
    let shared: Vec<String> = created
        .iter()
        .filter(|c| c.0 % every == 0)
        .map(|c| c.1.clone())
        .collect();
    let t_joins = Instant::now();
    let joins: Vec<Result<(), ApiError>> = futures_util::stream::iter(&shared)
        .map(|room| ctx.api.join(&sender.auth, room))
        .buffer_unordered(a.setup_concurrency.max(1))
        .collect()
        .await;
    joins.into_iter().collect::<Result<Vec<()>, _>>()?;
    let joins_s = t_joins.elapsed().as_secs_f64();
    crate::log!(
        "sliding_sync: setup {:.1}s ({n} rooms in {create_s:.1}s, {} joins in {joins_s:.1}s)",
        t_setup.elapsed().as_secs_f64(),
        shared.len()
    );
    Ok(Setup {
        report: json!({
            "elapsed_s": round3(t_setup.elapsed().as_secs_f64()),
            "create_rooms_s": round3(create_s),
            "rooms_per_s": rate(n, create_s),
            "create_latency_ms": Summary::of(&mut create_lats),
            "joins_s": round3(joins_s),
        }),
        shared,
    })
}

/// Fresh connections, one after the other: the room list a client shows first.
async fn first_page_phase(
    ctx: &Ctx,
    auth: &HeaderValue,
    n_rooms: usize,
    page: usize,
) -> Result<Value, BoxError> {
    let rounds = ctx.args.ss_first_rounds.max(1);
    let want = page.min(n_rooms);
    crate::log!("sliding_sync: first page: {rounds} fresh connections, {n_rooms} rooms");
    let cpu = CpuMark::start(ctx.args.pid);
    let (mut lats, mut sizes) = (Vec::new(), Vec::new());
    let mut wrong = Vec::new();
    for i in 0..rounds {
        let body = request_body(&format!("{}-first-{i}", ctx.run_id), page, true);
        let t0 = Instant::now();
        let r = call(ctx, auth, &body, None, None).await?;
        lats.push(ms(r.at - t0));
        sizes.push(r.body.len() as f64);
        let v = parse(&r)?;
        let (count, rooms) = page_of(&v);
        if count != Some(n_rooms as u64) || rooms.len() != want {
            crate::log!(
                "sliding_sync: first page {i}: count {count:?} (want {n_rooms}), {} rooms \
                 (want {want}): {}",
                rooms.len(),
                brief(&v)
            );
            wrong.push(json!({
                "round": i,
                "count": count,
                "rooms_returned": rooms.len(),
                "response": brief(&v),
            }));
        }
    }
    let cold = lats.first().copied().map(round2);
    let latency = Summary::of(&mut lats);
    crate::log!(
        "sliding_sync: first page {} (first connection {} ms), {} wrong",
        latency.brief(),
        cold.unwrap_or(f64::NAN),
        wrong.len()
    );
    Ok(json!({
        "rounds": rounds,
        "latency_ms": latency,
        "first_connection_ms": cold,
        "response_bytes": Summary::of(&mut sizes),
        "expected_count": n_rooms,
        "expected_rooms": want,
        "wrong_pages": wrong,
        "cpu": cpu.report(ctx.args.pid),
    }))
}

/// The rooms of the current page, most recent first, as the server orders them: a message moves
/// its room to the top.
struct PageModel {
    rooms: Vec<String>,
    size: usize,
}

impl PageModel {
    fn bump(&mut self, room: &str) {
        self.rooms.retain(|r| r != room);
        self.rooms.insert(0, room.to_owned());
        self.rooms.truncate(self.size);
    }

    fn position(&self, room: &str) -> Option<usize> {
        self.rooms.iter().position(|r| r == room)
    }
}

/// Round `k`'s room: even rounds take the next shared room round-robin (oldest first, so mostly
/// outside the page); odd rounds the shared room lowest in the page below its top, if any.
fn pick<'a>(k: usize, model: &PageModel, shared: &'a [String], next: &mut usize) -> &'a str {
    if k % 2 == 1
        && let Some(r) = model
            .rooms
            .iter()
            .skip(1)
            .rev()
            .find_map(|r| shared.iter().find(|s| *s == r))
    {
        return r;
    }
    let r = &shared[*next % shared.len()];
    *next += 1;
    r
}

async fn wake_phase(
    ctx: &Ctx,
    auth: &HeaderValue,
    sender: &User,
    shared: &[String],
    n_rooms: usize,
    page: usize,
) -> Result<Value, BoxError> {
    let a = &ctx.args;
    let (rounds, timeout_ms) = (a.ss_wake_rounds, a.sync_timeout_ms);
    let park = Duration::from_millis(a.ss_park_ms);
    let body = request_body(&format!("{}-wake", ctx.run_id), page, true);
    let r = call(ctx, auth, &body, None, None).await?;
    let v = parse(&r)?;
    let mut pos = pos_of(&v)?;
    let (count, rooms) = page_of(&v);
    if count != Some(n_rooms as u64) {
        crate::log!("sliding_sync: wake connection's count is {count:?}, not {n_rooms}");
    }
    let mut model = PageModel { rooms, size: page };
    crate::log!(
        "sliding_sync: wake: {rounds} messages into {} shared rooms, each after a {} ms park",
        shared.len(),
        a.ss_park_ms
    );
    let cpu = CpuMark::start(a.pid);
    let (mut lats, mut in_page, mut off_page, mut puts, mut after_put) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut early, mut other, mut missed) = (0, 0, 0);
    let mut next = 0;
    let mut per_round = Vec::new();
    for k in 0..rounds {
        let room = pick(k, &model, shared, &mut next);
        let was = model.position(room);
        let msg = format!("hb {} ss {k}", ctx.run_id);
        let txn = format!("{}-ss-{k}", ctx.run_id);
        let room_enc = enc(room);
        // Park a long-poll; one that answers at once (something else was pending) is re-issued.
        let mut tries = 0;
        let (t0, put, first) = loop {
            let from = pos.clone();
            let mut poll = std::pin::pin!(call(ctx, auth, &body, Some(&from), Some(timeout_ms)));
            tokio::select! {
                r = &mut poll => {
                    pos = pos_of(&parse(&r?)?)?;
                    early += 1;
                    tries += 1;
                    if tries >= MAX_EARLY {
                        return Err(format!(
                            "the long-poll answered before the {park:?} park {MAX_EARLY} times \
                             in a row"
                        )
                        .into());
                    }
                    continue;
                }
                () = tokio::time::sleep(park) => {}
            }
            let t0 = Instant::now();
            let send = ctx.api.send_text(&sender.auth, &room_enc, &txn, &msg);
            let (polled, sent) = tokio::join!(poll, send);
            break (t0, ms(sent?.at - t0), polled?);
        };
        puts.push(put);
        // The first answer after the send may be about something else; poll on until the message.
        let deadline = t0 + ctx.msg_timeout();
        let mut resp = first;
        let arrived = loop {
            let v = parse(&resp)?;
            pos = pos_of(&v)?;
            if has_message(&v, room, &msg) {
                break Some(resp.at);
            }
            other += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break None;
            }
            let t = timeout_ms.min(left.as_millis() as u64);
            resp = call(ctx, auth, &body, Some(&pos), Some(t)).await?;
        };
        model.bump(room);
        let lat = arrived.map(|at| ms(at.saturating_duration_since(t0)));
        match lat {
            Some(l) => {
                lats.push(l);
                // Negative when the long-poll answers before the send does.
                after_put.push(l - put);
                // A room of the page (at its top, or moving up to it), or one entering it.
                if was.is_some() {
                    in_page.push(l);
                } else {
                    off_page.push(l);
                }
            }
            None => {
                missed += 1;
                crate::log!("sliding_sync: wake {k}: no answer with the message in {room}");
            }
        }
        per_round.push(json!({
            "page_position": was,
            "latency_ms": lat.map(round2),
            "send_put_ms": round2(put),
        }));
    }
    let latency = Summary::of(&mut lats);
    let put = Summary::of(&mut puts);
    crate::log!(
        "sliding_sync: wake {}; send PUT p50 {} ms; early answers {early}, other wakes {other}, \
         missed {missed}",
        latency.brief(),
        put.p50.unwrap_or(f64::NAN)
    );
    Ok(json!({
        "rounds": rounds,
        "timeout_ms": timeout_ms,
        "park_ms": a.ss_park_ms,
        "latency_ms": latency,
        "in_page_latency_ms": Summary::of(&mut in_page),
        "entering_page_latency_ms": Summary::of(&mut off_page),
        "send_put_ms": put,
        "wake_after_put_answer_ms": Summary::of(&mut after_put),
        "early_answers": early,
        "other_wakes": other,
        "missed": missed,
        "per_round": per_round,
        "cpu": cpu.report(a.pid),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_page() {
        let v: Value = serde_json::from_str(
            r#"{"pos":"7","lists":{"all":{"count":1000}},"rooms":{
                "!a:x":{"bump_stamp":5,"timeline":[{"type":"m.room.message","content":{"body":"hi"}}]},
                "!b:x":{"bump_stamp":9,"timeline":[]},
                "!c:x":{"timeline":[]}}}"#,
        )
        .unwrap();
        assert_eq!(pos_of(&v).unwrap(), "7");
        let (count, rooms) = page_of(&v);
        assert_eq!(count, Some(1000));
        assert_eq!(rooms, ["!b:x", "!a:x", "!c:x"]);
        assert!(has_message(&v, "!a:x", "hi"));
        assert!(!has_message(&v, "!b:x", "hi"));
        assert!(!has_message(&v, "!z:x", "hi"));
        assert!(pos_of(&json!({})).is_err());
        assert_eq!(page_of(&json!({"pos": "1"})), (None, vec![]));
    }

    #[test]
    fn rounds_alternate_between_entering_and_moving_up() {
        let shared: Vec<String> = ["s0", "s1", "s2"].map(String::from).to_vec();
        let mut m = PageModel {
            rooms: ["p0", "p1", "p2"].map(String::from).to_vec(),
            size: 3,
        };
        let mut next = 0;
        // Round 1 has no shared room below the top: it takes the next one round-robin.
        for (k, want) in [(0, "s0"), (1, "s1"), (2, "s2"), (3, "s0"), (4, "s0")] {
            let r = pick(k, &m, &shared, &mut next).to_owned();
            assert_eq!(r, want, "round {k}");
            m.bump(&r);
        }
        assert_eq!(m.rooms, ["s0", "s2", "s1"]);
        assert_eq!(m.position("s1"), Some(2));
        assert_eq!(m.position("p0"), None);
    }

    #[test]
    fn the_request_is_a_room_list() {
        let v: Value = serde_json::from_slice(&request_body("c", 20, true)).unwrap();
        assert_eq!(v["conn_id"], "c");
        assert_eq!(v["lists"]["all"]["ranges"], json!([[0, 19]]));
        assert_eq!(v["extensions"]["e2ee"]["enabled"], true);
        let v: Value = serde_json::from_slice(&request_body("c", 1, false)).unwrap();
        assert_eq!(v["lists"]["all"]["ranges"], json!([[0, 0]]));
        assert!(v.get("extensions").is_none());
    }
}
