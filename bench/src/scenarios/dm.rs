//! dm_latency: time from the start of a send to the receiver's /sync long-poll returning it.

use std::time::Instant;

use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{Ctx, pair, wait_for};
use crate::BoxError;
use crate::api::enc;
use crate::stats::{Summary, ms, round3};
use crate::syncloop;

pub async fn run(ctx: &Ctx) -> Result<Value, BoxError> {
    let n = ctx.args.dm_messages;
    let (sender, receiver, room) = pair(ctx, "dm").await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let pollers = syncloop::start(
        &ctx.api,
        std::slice::from_ref(&receiver),
        &ctx.sync_opts(),
        1,
        tx,
    )
    .await?;
    ctx.mark_measured();
    crate::log!("dm_latency: {n} messages, gap {} ms", ctx.args.gap_ms);
    let room_enc = enc(&room);
    let (mut lats, mut puts, mut missed) = (Vec::new(), Vec::new(), 0);
    let t_start = Instant::now();
    for i in 0..n {
        let body = format!("hb {} dm {i}", ctx.run_id);
        let txn = format!("{}-dm-{i}", ctx.run_id);
        let t0 = Instant::now();
        let r = ctx
            .api
            .send_text(&sender.auth, &room_enc, &txn, &body)
            .await?;
        puts.push(ms(r.at - t0));
        let deadline = Instant::now() + ctx.msg_timeout();
        match wait_for(&mut rx, deadline, |u| {
            u.sync.message_bodies(&room).any(|b| b == body)
        })
        .await
        {
            Some(at) => lats.push(ms(at.saturating_duration_since(t0))),
            None => missed += 1,
        }
        ctx.gap().await;
    }
    let latency = Summary::of(&mut lats);
    crate::log!("dm_latency: {} (missed {missed})", latency.brief());
    Ok(json!({
        "messages": n,
        "delivered": latency.n,
        "missed": missed,
        "latency_ms": latency,
        "send_put_ms": Summary::of(&mut puts),
        "elapsed_s": round3(t_start.elapsed().as_secs_f64()),
        "sync_errors": pollers.errors(),
    }))
}
