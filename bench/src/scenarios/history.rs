//! history: a room with K messages, paged backwards from its end with `/messages?dir=b`, several
//! passes (the first one cold).

use std::time::Instant;

use futures_util::StreamExt;
use serde_json::{Value, json};

use super::Ctx;
use crate::BoxError;
use crate::api::enc;
use crate::stats::{Summary, ms, rate, round3};
use crate::syncloop::initial_sync;

pub async fn run(ctx: &Ctx) -> Result<Value, BoxError> {
    let a = &ctx.args;
    let (k, limit) = (a.history_messages, a.history_page_limit.max(1));
    let user = ctx.pool.take(&ctx.api, 1).await?.pop().expect("one user");
    let room = ctx
        .api
        .create_room(
            &user.auth,
            &json!({"preset": "private_chat", "name": "hearth-bench history"}),
        )
        .await?;
    let room_enc = enc(&room);
    let marker = format!("hb {} h ", ctx.run_id);
    crate::log!(
        "history: sending {k} messages (concurrency {})",
        a.history_send_concurrency
    );
    ctx.mark_measured();
    let t_send = Instant::now();
    futures_util::stream::iter(0..k)
        .map(|i| {
            let (room_enc, marker, user) = (&room_enc, &marker, &user);
            async move {
                let txn = format!("{}-h-{i}", ctx.run_id);
                ctx.api
                    .send_text(&user.auth, room_enc, &txn, &format!("{marker}{i}"))
                    .await
            }
        })
        .buffer_unordered(a.history_send_concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let send_s = t_send.elapsed().as_secs_f64();

    // A /sync token as the starting point works on every server (`from` is optional only
    // since spec v1.3).
    let start = initial_sync(&ctx.api, &user, &a.set_presence).await?;
    let max_pages = k / limit + 100;
    let mut passes = Vec::new();
    let mut page_lats = Vec::new();
    let (mut all_found, mut total_pages, mut total_s) = (true, 0, 0.0);
    let (mut warm_pages, mut warm_s) = (0, 0.0);
    for p in 0..a.history_passes {
        let (mut tok, mut pages, mut events, mut found) = (start.clone(), 0, 0, 0);
        let t_pass = Instant::now();
        while pages < max_pages {
            let t1 = Instant::now();
            let page = ctx.api.messages(&user.auth, &room_enc, &tok, limit).await?;
            page_lats.push(ms(t1.elapsed()));
            pages += 1;
            events += page.chunk.len();
            found += page
                .chunk
                .iter()
                .filter(|e| e.kind == "m.room.message")
                .filter(|e| e.body().is_some_and(|b| b.starts_with(&marker)))
                .count();
            match page.end {
                Some(end) if !page.chunk.is_empty() && end != tok => tok = end,
                _ => break,
            }
        }
        let el = t_pass.elapsed().as_secs_f64();
        crate::log!(
            "history: pass {p}: {pages} pages, {events} events ({found}/{k} ours) in {el:.2}s = {:.1} pages/s",
            pages as f64 / el
        );
        all_found &= found == k;
        total_pages += pages;
        total_s += el;
        if p > 0 {
            warm_pages += pages;
            warm_s += el;
        }
        passes.push(json!({
            "pages": pages,
            "events": events,
            "messages_found": found,
            "elapsed_s": round3(el),
            "pages_per_s": rate(pages, el),
        }));
    }
    let latency = Summary::of(&mut page_lats);
    crate::log!("history: page {}", latency.brief());
    Ok(json!({
        "messages": k,
        "page_limit": limit,
        "send_elapsed_s": round3(send_s),
        "send_messages_per_s": rate(k, send_s),
        "passes": passes,
        "pages_per_s": rate(total_pages, total_s),
        "pages_per_s_warm": rate(warm_pages, warm_s),
        "page_latency_ms": latency,
        "all_messages_found": all_found,
    }))
}
