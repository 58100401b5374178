//! throughput: S senders, each with `--inflight` requests in flight, send for T seconds; a send
//! counts when its 200 arrives (Hearth answers only after the commit is durable).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

use super::Ctx;
use crate::BoxError;
use crate::api::{Api, enc};
use crate::stats::{Summary, rate, round3};
use crate::users::User;

struct Worker {
    ok: u64,
    errors: u64,
    /// Microseconds: a u32 per send keeps a 100k-send run's samples under half a megabyte.
    lats_us: Vec<u32>,
    error_sample: Option<String>,
}

pub async fn run(ctx: &Ctx) -> Result<Value, BoxError> {
    let a = &ctx.args;
    let (s, inflight) = (a.senders.max(1), a.inflight.max(1));
    let senders = ctx.pool.take(&ctx.api, s).await?;
    let n_rooms = if a.throughput_rooms == 0 {
        s
    } else {
        a.throughput_rooms.min(s)
    };
    let preset = if n_rooms == s {
        "private_chat"
    } else {
        "public_chat"
    };
    let create = json!({"preset": preset, "name": "hearth-bench throughput"});
    let rooms: Vec<String> = futures_util::stream::iter(&senders[..n_rooms])
        .map(|u| ctx.api.create_room(&u.auth, &create))
        .buffered(a.setup_concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    futures_util::stream::iter(senders.iter().enumerate().skip(n_rooms))
        .map(|(i, u)| ctx.api.join(&u.auth, &rooms[i % n_rooms]))
        .buffer_unordered(a.setup_concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<()>, _>>()?;

    let dur = Duration::from_secs_f64(a.throughput_seconds);
    crate::log!(
        "throughput: {s} senders x {inflight} in flight, {n_rooms} rooms, {:.0} s",
        dur.as_secs_f64()
    );
    // Completions per second of the run: shows warm-up, stalls and a slowing writer.
    let buckets: Arc<Vec<AtomicU64>> = Arc::new(
        (0..dur.as_secs() as usize + 2)
            .map(|_| AtomicU64::new(0))
            .collect(),
    );
    ctx.mark_measured();
    let start = Instant::now();
    let end = start + dur;
    let mut handles = Vec::with_capacity(s * inflight);
    for (i, user) in senders.iter().enumerate() {
        let room_enc = Arc::new(enc(&rooms[i % n_rooms]));
        for k in 0..inflight {
            handles.push(tokio::spawn(worker(
                Arc::clone(&ctx.api),
                user.clone(),
                Arc::clone(&room_enc),
                format!("{}-tp{i}-{k}", ctx.run_id),
                (start, end),
                Arc::clone(&buckets),
            )));
        }
    }
    let mut workers = Vec::with_capacity(handles.len());
    for h in handles {
        workers.push(h.await?);
    }
    let elapsed = start.elapsed().as_secs_f64();

    let sent: u64 = workers.iter().map(|w| w.ok).sum();
    let errors: u64 = workers.iter().map(|w| w.errors).sum();
    let per_sender: Vec<u64> = workers
        .chunks(inflight)
        .map(|c| c.iter().map(|w| w.ok).sum())
        .collect();
    let mut lats: Vec<f64> = workers
        .iter()
        .flat_map(|w| w.lats_us.iter().map(|&us| f64::from(us) / 1000.0))
        .collect();
    let latency = Summary::of(&mut lats);
    let samples: Vec<&String> = workers
        .iter()
        .filter_map(|w| w.error_sample.as_ref())
        .take(5)
        .collect();
    let per_second: Vec<u64> = buckets.iter().map(|b| b.load(Relaxed)).collect();
    let sends_per_s = rate(sent as usize, elapsed);
    crate::log!(
        "throughput: {} sends/s ({sent} sent, {errors} errors); send {}",
        sends_per_s.unwrap_or(0.0),
        latency.brief()
    );
    Ok(json!({
        "senders": s,
        "inflight": inflight,
        "rooms": n_rooms,
        "connections": s * inflight,
        "duration_s": round3(elapsed),
        "sent": sent,
        "errors": errors,
        "sends_per_s": sends_per_s,
        "per_second": per_second,
        "per_sender_min": per_sender.iter().min(),
        "per_sender_max": per_sender.iter().max(),
        "send_latency_ms": latency,
        "error_samples": samples,
    }))
}

async fn worker(
    api: Arc<Api>,
    user: User,
    room_enc: Arc<String>,
    txn_prefix: String,
    (start, end): (Instant, Instant),
    buckets: Arc<Vec<AtomicU64>>,
) -> Worker {
    let mut w = Worker {
        ok: 0,
        errors: 0,
        lats_us: Vec::with_capacity(4096),
        error_sample: None,
    };
    let mut n = 0u64;
    while Instant::now() < end {
        n += 1;
        let txn = format!("{txn_prefix}-{n}");
        let body = format!("tp {n}");
        let t0 = Instant::now();
        match api.send_text(&user.auth, &room_enc, &txn, &body).await {
            Ok(r) => {
                w.ok += 1;
                let us = r.at.saturating_duration_since(t0).as_micros();
                w.lats_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                let sec = r.at.saturating_duration_since(start).as_secs() as usize;
                if let Some(b) = buckets.get(sec) {
                    b.fetch_add(1, Relaxed);
                }
            }
            Err(e) => {
                w.errors += 1;
                if w.error_sample.is_none() {
                    w.error_sample = Some(e.to_string());
                }
                // A failing server must not turn the loop into a busy spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    w
}
