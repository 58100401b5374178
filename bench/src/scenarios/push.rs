//! push: push notifications for users who are offline (they never /sync), received by a push
//! gateway inside the generator (`crate::push_gateway`). Two phases:
//! - latency: a DM pair whose receiver has a pusher; N messages sent one at a time, each timed
//!   from the start of its `PUT` to the gateway receiving the notify that carries its event ID;
//! - fan-out: a room of M members whose M-1 receivers each have a pusher; R messages with a
//!   pause between them, and notifies/s from the first send to the last notify.
//!
//! All rooms and joins come before the pushers, so no invite or join is pushed.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

use super::{CpuMark, Ctx, pair};
use crate::BoxError;
use crate::api::{ApiError, Resp, enc};
use crate::push_gateway::PushGateway;
use crate::stats::{Summary, ms, rate, round3};
use crate::users::User;

const APP_ID: &str = "org.hearth.bench";
/// After the last receiver has the last message: time for stragglers to land in the figures.
const SETTLE: Duration = Duration::from_millis(250);

pub async fn run(ctx: &Ctx) -> Result<Value, BoxError> {
    let a = &ctx.args;
    let gw = PushGateway::start().await?;
    let t_setup = Instant::now();
    let (dm_sender, dm_receiver, dm_room) = pair(ctx, "push").await?;
    let users = ctx.pool.take(&ctx.api, a.push_members).await?;
    let (sender, receivers) = users.split_first().expect("at least two members");
    crate::log!("push: setting up a room of {} members", users.len());
    let room = ctx
        .api
        .create_room(
            &sender.auth,
            &json!({"preset": "public_chat", "name": "hearth-bench push"}),
        )
        .await?;
    let joins: Vec<Result<(), ApiError>> = futures_util::stream::iter(receivers)
        .map(|u| ctx.api.join(&u.auth, &room))
        .buffer_unordered(a.setup_concurrency.max(1))
        .collect()
        .await;
    joins.into_iter().collect::<Result<Vec<()>, _>>()?;

    // The pushers last: after every join, so that none of them is pushed.
    let dm_key = format!("{}-dm", ctx.run_id);
    match set_pusher(ctx, &dm_receiver, &dm_key, &gw.url()).await {
        Err(e) if e.is_unsupported() => return Ok(super::skipped("no pushers endpoint")),
        r => r?,
    }
    let keys: Vec<String> = (0..receivers.len())
        .map(|i| format!("{}-fo-{i:03}", ctx.run_id))
        .collect();
    let url = gw.url();
    let t_pushers = Instant::now();
    let set: Vec<Result<(), ApiError>> = futures_util::stream::iter(receivers.iter().zip(&keys))
        .map(|(u, k)| set_pusher(ctx, u, k, &url))
        .buffer_unordered(a.setup_concurrency.max(1))
        .collect()
        .await;
    set.into_iter().collect::<Result<Vec<()>, _>>()?;
    let pushers_s = t_pushers.elapsed().as_secs_f64();
    let setup_s = t_setup.elapsed().as_secs_f64();
    crate::log!("push: setup {setup_s:.1}s; gateway at {}", gw.url());

    ctx.mark_measured();
    let latency = latency_phase(ctx, &gw, &dm_sender, &dm_room, &dm_key).await?;
    let fanout = fanout_phase(ctx, &gw, sender, &room, &keys).await?;
    Ok(json!({
        "latency": latency,
        "fanout": fanout,
        "gateway": {
            "url": gw.url(),
            "notifies": gw.len(),
            "connections": gw.connections(),
            "bad_requests": gw.bad_requests(),
        },
        "setup": {
            "elapsed_s": round3(setup_s),
            "pushers": keys.len() + 1,
            "pushers_per_s": rate(keys.len(), pushers_s),
        },
    }))
}

/// `POST /pushers/set`: an HTTP pusher that notifies our gateway.
async fn set_pusher(ctx: &Ctx, user: &User, pushkey: &str, url: &str) -> Result<(), ApiError> {
    let body = json!({
        "kind": "http",
        "app_id": APP_ID,
        "pushkey": pushkey,
        "app_display_name": "bench",
        "device_display_name": "bench",
        "lang": "en",
        "data": { "url": url },
    });
    ctx.api
        .post_json("/pushers/set", Some(&user.auth), &body)
        .await
        .map(drop)
}

fn event_id_of(r: &Resp) -> Result<String, ApiError> {
    let v: Value = r.json("PUT /send")?;
    v.get("event_id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| ApiError::Decode {
            what: "PUT /send".into(),
            msg: format!("no event_id in {v}"),
        })
}

/// One message at a time, each until the gateway has its notify (or the timeout: lost).
async fn latency_phase(
    ctx: &Ctx,
    gw: &PushGateway,
    sender: &User,
    room: &str,
    key: &str,
) -> Result<Value, BoxError> {
    let n = ctx.args.push_messages;
    let timeout = Duration::from_secs_f64(ctx.args.push_timeout);
    crate::log!(
        "push: latency: {n} messages to an offline receiver, gap {} ms",
        ctx.args.gap_ms
    );
    let cpu = CpuMark::start(ctx.args.pid);
    let room_enc = enc(room);
    let (mut lats, mut puts) = (Vec::new(), Vec::new());
    let (mut lost, mut others) = (0, 0);
    let mut cursor = gw.len();
    let t_start = Instant::now();
    for i in 0..n {
        let body = format!("hb {} push {i}", ctx.run_id);
        let txn = format!("{}-push-{i}", ctx.run_id);
        let t0 = Instant::now();
        let r = ctx
            .api
            .send_text(&sender.auth, &room_enc, &txn, &body)
            .await?;
        puts.push(ms(r.at - t0));
        let event_id = event_id_of(&r)?;
        let mut at = None;
        // From where the last wait stopped: a notify may arrive before the send's answer.
        gw.watch(&mut cursor, t0 + timeout, |x| {
            if x.pushkey.as_deref() == Some(key) && x.event_id.as_deref() == Some(&event_id) {
                at = Some(x.at);
                return true;
            }
            others += 1;
            false
        })
        .await;
        match at {
            Some(at) => lats.push(ms(at.saturating_duration_since(t0))),
            None => {
                lost += 1;
                crate::log!("push: latency: no notify for message {i} within {timeout:?}");
            }
        }
        ctx.gap().await;
    }
    let latency = Summary::of(&mut lats);
    crate::log!("push: latency: {} (lost {lost})", latency.brief());
    Ok(json!({
        "messages": n,
        "notified": latency.n,
        "lost": lost,
        "timeout_s": timeout.as_secs_f64(),
        "latency_ms": latency,
        "send_put_ms": Summary::of(&mut puts),
        "other_notifies": others,
        "elapsed_s": round3(t_start.elapsed().as_secs_f64()),
        "cpu": cpu.report(ctx.args.pid),
    }))
}

/// R messages into the big room, `--push-gap-ms` apart; then waits until every receiver's
/// gateway has the last one (a server that coalesces pushes sends the newest of a room).
async fn fanout_phase(
    ctx: &Ctx,
    gw: &PushGateway,
    sender: &User,
    room: &str,
    keys: &[String],
) -> Result<Value, BoxError> {
    let a = &ctx.args;
    let (m, n) = (a.push_rounds.max(1), keys.len());
    crate::log!(
        "push: fan-out: {m} messages to {n} offline receivers, gap {} ms",
        a.push_gap_ms
    );
    let cpu = CpuMark::start(a.pid);
    let room_enc = enc(room);
    let start = gw.len();
    let mut sent: HashMap<String, Instant> = HashMap::new();
    let mut puts = Vec::new();
    let mut last_event = String::new();
    let t_first = Instant::now();
    for k in 0..m {
        let body = format!("hb {} pushfo {k}", ctx.run_id);
        let txn = format!("{}-pushfo-{k}", ctx.run_id);
        let t0 = Instant::now();
        let r = ctx
            .api
            .send_text(&sender.auth, &room_enc, &txn, &body)
            .await?;
        puts.push(ms(r.at - t0));
        last_event = event_id_of(&r)?;
        sent.insert(last_event.clone(), t0);
        if k + 1 < m && a.push_gap_ms > 0 {
            tokio::time::sleep(Duration::from_millis(a.push_gap_ms)).await;
        }
    }
    let sending_s = t_first.elapsed().as_secs_f64();
    let t_last = sent[&last_event];

    let index: HashMap<&str, usize> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i))
        .collect();
    let mut have_last = vec![false; n];
    let mut complete = 0;
    let mut cursor = start;
    let deadline = Instant::now() + Duration::from_secs_f64(a.push_fanout_timeout);
    gw.watch(&mut cursor, deadline, |x| {
        if x.event_id.as_deref() == Some(last_event.as_str())
            && let Some(&i) = x.pushkey.as_deref().and_then(|k| index.get(k))
            && !have_last[i]
        {
            have_last[i] = true;
            complete += 1;
        }
        complete == n
    })
    .await;
    tokio::time::sleep(SETTLE).await;

    let (mut lats, mut per_receiver) = (Vec::new(), vec![0usize; n]);
    let (mut unmatched, mut last_at) = (0, None::<Instant>);
    let mut pairs = HashSet::new();
    for x in gw.since(start) {
        let Some(&i) = x.pushkey.as_deref().and_then(|k| index.get(k)) else {
            continue;
        };
        let Some(t0) = x.event_id.as_deref().and_then(|e| sent.get(e)) else {
            unmatched += 1;
            continue;
        };
        per_receiver[i] += 1;
        pairs.insert((i, x.event_id.clone()));
        lats.push(ms(x.at.saturating_duration_since(*t0)));
        last_at = last_at.max(Some(x.at));
    }
    let notifies = lats.len();
    let wall_s = last_at.map(|t| t.saturating_duration_since(t_first).as_secs_f64());
    let per_s = wall_s.and_then(|w| rate(notifies, w));
    let latency = Summary::of(&mut lats);
    let lost = n - complete;
    crate::log!(
        "push: fan-out: {notifies} notifies of {} messages x receivers in {:.2} s = {} /s; \
         {} (receivers without the last message: {lost})",
        m * n,
        wall_s.unwrap_or(f64::NAN),
        per_s.unwrap_or(0.0),
        latency.brief()
    );
    Ok(json!({
        "members": n + 1,
        "receivers": n,
        "messages": m,
        "gap_ms": a.push_gap_ms,
        "messages_x_receivers": m * n,
        "notifies": notifies,
        "duplicate_notifies": notifies - pairs.len(),
        "unmatched_notifies": unmatched,
        "notifies_per_s": per_s,
        "first_send_to_last_notify_s": wall_s.map(round3),
        "last_send_to_last_notify_ms": last_at.map(|t| round3(ms(t.saturating_duration_since(t_last)))),
        "sending_s": round3(sending_s),
        "latency_ms": latency,
        "notifies_per_receiver": {
            "min": per_receiver.iter().min(),
            "max": per_receiver.iter().max(),
        },
        "receivers_without_last_message": lost,
        "receivers_without_any_notify": per_receiver.iter().filter(|&&c| c == 0).count(),
        "timeout_s": a.push_fanout_timeout,
        "send_put_ms": Summary::of(&mut puts),
        "cpu": cpu.report(a.pid),
    }))
}
