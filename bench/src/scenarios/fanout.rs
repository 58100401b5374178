//! group_fanout: one room of M members, M-1 of them waiting in /sync long-polls; each round one
//! message, timed until the last receiver has it.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::Ctx;
use crate::BoxError;
use crate::api::enc;
use crate::stats::{Summary, ms, percentile, rate, round2, round3};
use crate::syncloop::{self, Update};

pub async fn run(ctx: &Ctx) -> Result<Value, BoxError> {
    let a = &ctx.args;
    let users = ctx.pool.take(&ctx.api, a.fanout_members).await?;
    let (sender, receivers) = users.split_first().expect("at least two members");
    crate::log!("group_fanout: setting up a room of {} members", users.len());
    let t_setup = Instant::now();
    let room = ctx
        .api
        .create_room(
            &sender.auth,
            &json!({"preset": "public_chat", "name": "hearth-bench group"}),
        )
        .await?;
    let t_joins = Instant::now();
    let joins: Vec<Result<f64, crate::api::ApiError>> = futures_util::stream::iter(receivers)
        .map(|u| {
            let room = &room;
            async move {
                let t = Instant::now();
                ctx.api.join(&u.auth, room).await.map(|()| ms(t.elapsed()))
            }
        })
        .buffer_unordered(a.setup_concurrency.max(1))
        .collect()
        .await;
    let joins_s = t_joins.elapsed().as_secs_f64();
    let mut join_lats = joins.into_iter().collect::<Result<Vec<f64>, _>>()?;

    // All joins are done before anyone long-polls, so no member event wakes a receiver mid-round.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let t_syncs = Instant::now();
    let pollers = syncloop::start(
        &ctx.api,
        receivers,
        &ctx.sync_opts(),
        a.setup_concurrency,
        tx,
    )
    .await?;
    let syncs_s = t_syncs.elapsed().as_secs_f64();
    crate::log!(
        "group_fanout: setup {:.1}s (joins {joins_s:.1}s); {} rounds, gap {} ms",
        t_setup.elapsed().as_secs_f64(),
        a.fanout_rounds,
        a.fanout_gap_ms
    );

    ctx.mark_measured();
    let room_enc = enc(&room);
    let n = receivers.len();
    let timeout = Duration::from_secs_f64(a.fanout_msg_timeout);
    let (mut all, mut lasts, mut firsts, mut p50s, mut puts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut incomplete, mut missing) = (0, 0);
    let mut per_round = Vec::new();
    for k in 0..a.fanout_rounds {
        let body = format!("hb {} fanout {k}", ctx.run_id);
        let txn = format!("{}-fo-{k}", ctx.run_id);
        let t0 = Instant::now();
        let r = ctx
            .api
            .send_text(&sender.auth, &room_enc, &txn, &body)
            .await?;
        puts.push(ms(r.at - t0));
        let mut seen = collect_round(&mut rx, n, &room, &body, t0, t0 + timeout).await;
        let received = seen.len();
        missing += n - received;
        seen.sort_by(f64::total_cmp);
        let (first, p50, last) = (
            seen.first().copied(),
            percentile(&seen, 50.0),
            seen.last().copied(),
        );
        if let Some(f) = first {
            firsts.push(f);
        }
        if let Some(p) = p50 {
            p50s.push(p);
        }
        if received == n {
            lasts.push(last.unwrap_or_default());
        } else {
            incomplete += 1;
        }
        all.extend_from_slice(&seen);
        crate::log!(
            "group_fanout: round {k}: {received}/{n} receivers, first {:.0} p50 {:.0} last {:.0} ms",
            first.unwrap_or(f64::NAN),
            p50.unwrap_or(f64::NAN),
            last.unwrap_or(f64::NAN)
        );
        per_round.push(json!({
            "received": received,
            "first_ms": first.map(round2),
            "p50_ms": p50.map(round2),
            "last_ms": last.map(round2),
        }));
        if a.fanout_gap_ms > 0 {
            tokio::time::sleep(Duration::from_millis(a.fanout_gap_ms)).await;
        }
    }
    let last = Summary::of(&mut lasts);
    let per_receiver = Summary::of(&mut all);
    crate::log!(
        "group_fanout: last receiver {}; per receiver {}",
        last.brief(),
        per_receiver.brief()
    );
    Ok(json!({
        "members": users.len(),
        "receivers": n,
        "rounds": a.fanout_rounds,
        "time_to_last_receiver_ms": last,
        "round_p50_ms": Summary::of(&mut p50s),
        "time_to_first_receiver_ms": Summary::of(&mut firsts),
        "per_receiver_latency_ms": per_receiver,
        "send_put_ms": Summary::of(&mut puts),
        "incomplete_rounds": incomplete,
        "missing_deliveries": missing,
        "per_round": per_round,
        "setup": {
            "elapsed_s": round3(t_setup.elapsed().as_secs_f64()),
            "joins_s": round3(joins_s),
            "joins_per_s": rate(n, joins_s),
            "join_latency_ms": Summary::of(&mut join_lats),
            "initial_syncs_s": round3(syncs_s),
        },
        "sync_errors": pollers.errors(),
    }))
}

/// Each receiver's delivery latency (ms) of `body`, until all `n` have it or the deadline.
async fn collect_round(
    rx: &mut mpsc::UnboundedReceiver<Update>,
    n: usize,
    room: &str,
    body: &str,
    t0: Instant,
    deadline: Instant,
) -> Vec<f64> {
    let mut seen: Vec<Option<f64>> = vec![None; n];
    let mut count = 0;
    while count < n {
        let u = match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(Some(u)) => u,
            Ok(None) | Err(_) => break,
        };
        if seen[u.idx].is_none() && u.sync.message_bodies(room).any(|b| b == body) {
            seen[u.idx] = Some(ms(u.at.saturating_duration_since(t0)));
            count += 1;
        }
    }
    seen.into_iter().flatten().collect()
}
