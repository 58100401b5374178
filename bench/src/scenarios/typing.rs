//! typing_latency: time from `PUT /typing` to the receiver's /sync showing the change in the
//! room's ephemeral `m.typing`, alternating on and off.

use std::time::Instant;

use serde_json::{Value, json};

use super::{Ctx, pair_with_poller, skipped, wait_for};
use crate::BoxError;
use crate::stats::{Summary, ms};

pub async fn run(ctx: &Ctx) -> Result<Value, BoxError> {
    let rounds = ctx.args.typing_rounds;
    let (sender, room, mut rx, pollers) = pair_with_poller(ctx, "typing").await?;
    ctx.mark_measured();
    crate::log!("typing_latency: {rounds} rounds (typing on + off)");
    let (mut on, mut off, mut missed) = (Vec::new(), Vec::new(), 0);
    for round in 0..rounds {
        for target in [true, false] {
            let t0 = Instant::now();
            if let Err(e) = ctx
                .api
                .typing(&sender.auth, &room, &sender.user_id, target)
                .await
            {
                if round == 0 && e.is_unsupported() {
                    return Ok(skipped("no typing endpoint"));
                }
                return Err(e.into());
            }
            let deadline = Instant::now() + ctx.msg_timeout();
            let seen = wait_for(&mut rx, deadline, |u| {
                u.sync
                    .typing(&room)
                    .is_some_and(|ev| ev.typing_has(&sender.user_id) == target)
            })
            .await;
            match seen {
                Some(at) => {
                    let lat = ms(at.saturating_duration_since(t0));
                    if target { &mut on } else { &mut off }.push(lat);
                }
                None => missed += 1,
            }
            ctx.gap().await;
        }
    }
    let mut all: Vec<f64> = on.iter().chain(&off).copied().collect();
    let latency = Summary::of(&mut all);
    crate::log!("typing_latency: {} (missed {missed})", latency.brief());
    Ok(json!({
        "rounds": rounds,
        "missed": missed,
        "latency_ms": latency,
        "typing_start_ms": Summary::of(&mut on),
        "typing_stop_ms": Summary::of(&mut off),
        "sync_errors": pollers.errors(),
    }))
}
