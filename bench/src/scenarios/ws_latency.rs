//! ws_latency: as dm_latency, but the receiver holds Hearth's WebSocket instead of long-polling.
//! Phase 1 sends over HTTP (the figure to compare with dm_latency); phase 2 sends over the
//! sender's own WebSocket, so the whole path avoids HTTP.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{Ctx, next_update, pair, send_and_time, skipped, wait_for};
use crate::BoxError;
use crate::stats::{Summary, ms, round2};
use crate::syncloop::{Update, initial_sync};
use crate::users::User;
use crate::ws::{self, ConnectError, Reply};

pub async fn run(ctx: &Ctx) -> Result<Value, BoxError> {
    let n = ctx.args.ws_messages;
    let presence = ctx.args.set_presence.as_str();
    let (sender, receiver, room) = pair(ctx, "ws").await?;
    // No `since`: the first frame is then an initial sync, which the server sends at once (the
    // DM room is tiny, so no filter is needed to keep it small).
    let (tx, mut rx) = mpsc::unbounded_channel::<Update>();
    let t_conn = Instant::now();
    let client =
        match ws::connect(ctx.api.base(), &receiver.token, None, presence, 0, Some(tx)).await {
            Ok(c) => c,
            Err(ConnectError::Unsupported(why)) => {
                let mut v = skipped("no websocket transport");
                v["detail"] = json!(why);
                return Ok(v);
            }
            Err(e) => return Err(e.into()),
        };
    let Some(first) = next_update(&mut rx, Instant::now() + Duration::from_secs(10)).await else {
        return Err("the WebSocket sent no first sync frame within 10 s".into());
    };
    let first_frame_ms = round2(ms(first.at - t_conn));
    let resume = resume_probe(ctx, &receiver, &first.sync.next_batch).await?;
    crate::log!(
        "ws_latency: first frame after {first_frame_ms} ms, resumed connection's first frame: \
         {resume}; {n} messages over HTTP"
    );

    ctx.mark_measured();
    let mut t = send_and_time(ctx, &sender, &room, &mut rx, "ws", n).await?;
    let latency = Summary::of(&mut t.delivery);
    crate::log!(
        "ws_latency (HTTP send): {} (missed {})",
        latency.brief(),
        t.missed
    );

    let ws_send = ws_send_phase(ctx, &sender, &room, &mut rx).await?;
    drop(client);
    Ok(json!({
        "messages": n,
        "delivered": latency.n,
        "missed": t.missed,
        "first_frame_ms": first_frame_ms,
        "resume_first_frame_ms": resume,
        "latency_ms": latency,
        "send_put_ms": Summary::of(&mut t.puts),
        "ws_send": ws_send,
    }))
}

/// How long a socket opened with `since` (a client resuming) takes to send its first frame when
/// nothing changed. The protocol promises it at once; null means none came within the probe's
/// 3 s.
async fn resume_probe(ctx: &Ctx, user: &User, since: &str) -> Result<Value, BoxError> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Update>();
    let t0 = Instant::now();
    let probe = ws::connect(
        ctx.api.base(),
        &user.token,
        Some(since),
        &ctx.args.set_presence,
        0,
        Some(tx),
    )
    .await?;
    let first = next_update(&mut rx, t0 + Duration::from_secs(3)).await;
    drop(probe);
    Ok(json!(first.map(|u| round2(ms(u.at - t0)))))
}

/// The sender's messages go out as `send` frames on its own socket.
async fn ws_send_phase(
    ctx: &Ctx,
    sender: &User,
    room: &str,
    rx: &mut mpsc::UnboundedReceiver<Update>,
) -> Result<Value, BoxError> {
    let n = ctx.args.ws_messages;
    let presence = ctx.args.set_presence.as_str();
    let since = initial_sync(&ctx.api, sender, presence).await?;
    let client = ws::connect(
        ctx.api.base(),
        &sender.token,
        Some(&since),
        presence,
        1,
        None,
    )
    .await
    .map_err(|e| format!("sender's WebSocket: {e}"))?;
    let (mut lats, mut resps, mut missed, mut errors) = (Vec::new(), Vec::new(), 0, Vec::new());
    for i in 0..n {
        let body = format!("hb {} wss {i}", ctx.run_id);
        let txn = format!("{}-wss-{i}", ctx.run_id);
        let t0 = Instant::now();
        match client.send_text(room, &txn, &body).await {
            Reply::Ok(b) if b.get("event_id").is_some_and(Value::is_string) => {
                resps.push(ms(t0.elapsed()));
            }
            Reply::Ok(b) => {
                errors.push(format!("response without an event_id: {b}"));
                break;
            }
            Reply::Error { errcode, error } => {
                errors.push(format!("{errcode}: {error}"));
                // A server without the send frame answers every one alike; once is enough.
                if resps.is_empty() {
                    break;
                }
                continue;
            }
            Reply::Closed => {
                errors.push("connection closed".into());
                break;
            }
        }
        let deadline = Instant::now() + ctx.msg_timeout();
        match wait_for(rx, deadline, |u| {
            u.idx == 0 && u.sync.message_bodies(room).any(|b| b == body)
        })
        .await
        {
            Some(at) => lats.push(ms(at.saturating_duration_since(t0))),
            None => missed += 1,
        }
        ctx.gap().await;
    }
    let latency = Summary::of(&mut lats);
    crate::log!(
        "ws_latency (WebSocket send): {} (missed {missed}, errors {})",
        latency.brief(),
        errors.len()
    );
    errors.truncate(5);
    Ok(json!({
        "delivered": latency.n,
        "missed": missed,
        "errors": errors,
        "latency_ms": latency,
        "response_ms": Summary::of(&mut resps),
    }))
}
