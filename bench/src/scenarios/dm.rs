//! dm_latency: time from the start of a send to the receiver's /sync long-poll returning it.

use std::time::Instant;

use serde_json::{Value, json};

use super::{Ctx, pair_with_poller, send_and_time};
use crate::BoxError;
use crate::stats::{Summary, round3};

pub async fn run(ctx: &Ctx) -> Result<Value, BoxError> {
    let n = ctx.args.dm_messages;
    let (sender, room, mut rx, pollers) = pair_with_poller(ctx, "dm").await?;
    ctx.mark_measured();
    crate::log!("dm_latency: {n} messages, gap {} ms", ctx.args.gap_ms);
    let t_start = Instant::now();
    let mut t = send_and_time(ctx, &sender, &room, &mut rx, "dm", n).await?;
    let latency = Summary::of(&mut t.delivery);
    crate::log!("dm_latency: {} (missed {})", latency.brief(), t.missed);
    Ok(json!({
        "messages": n,
        "delivered": latency.n,
        "missed": t.missed,
        "latency_ms": latency,
        "send_put_ms": Summary::of(&mut t.puts),
        "elapsed_s": round3(t_start.elapsed().as_secs_f64()),
        "sync_errors": pollers.errors(),
    }))
}
