//! idle_connections: what an idle client costs the server. N long-polls (or N WebSockets) for a
//! few users are held open with nothing to deliver, opened in two halves; the growth of the
//! server's RSS over the second half gives bytes per connection. The first half absorbs what an
//! allocator gives back late (memory freed by earlier work, returned at its next burst of
//! activity), which would otherwise be subtracted from the figure.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

use super::Ctx;
use crate::BoxError;
use crate::procfs;
use crate::stats::round3;
use crate::syncloop::initial_sync;
use crate::users::User;
use crate::ws::{self, ConnectError};

pub async fn run(ctx: &Ctx) -> Result<Value, BoxError> {
    let a = &ctx.args;
    let users = ctx.pool.take(&ctx.api, a.idle_users.max(1)).await?;
    let mut sinces = Vec::with_capacity(users.len());
    for u in &users {
        sinces.push(initial_sync(&ctx.api, u, &a.set_presence).await?);
    }
    ctx.mark_measured();
    let mut out = json!({ "connections": a.idle_conns, "users": users.len() });
    if !ctx.sampler.as_ref().is_some_and(|s| s.has_rss()) {
        out["note"] = json!("no --pid: server RSS not sampled");
    }
    if a.idle_mode != "ws" {
        out["sync_longpoll"] = hold_long_polls(ctx, &users, &sinces).await?;
    }
    if a.idle_mode != "sync" {
        let mut v = hold_websockets(ctx, &users).await?;
        if a.idle_mode == "both" && v.get("skipped").is_none() {
            // The long-polls' memory was freed just before; the allocator hands it to the
            // sockets without the RSS growing.
            v["note"] = json!(
                "measured right after the long-polls on the same server: an underestimate; \
                 for a clean figure run --idle-mode ws against a fresh server"
            );
        }
        out["websocket"] = v;
    }
    Ok(out)
}

/// RSS once it has stopped moving. Registrations (argon2 takes ~19 MiB per hash) and earlier
/// scenarios leave freed memory that an allocator returns to the system only when it next does
/// some work, which would otherwise land in the middle of the measurement and swamp a few KiB per
/// connection: so the server gets a trickle of cheap requests while we wait.
pub(super) async fn settled_rss(ctx: &Ctx) -> Option<u64> {
    let s = ctx.sampler.as_ref().filter(|s| s.has_rss())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut window: Vec<u64> = Vec::new();
    loop {
        futures_util::future::join_all((0..20).map(|_| ctx.api.versions())).await;
        window.extend(s.sample());
        if window.len() > 12 {
            window.remove(0);
        }
        let (lo, hi) = (window.iter().min()?, window.iter().max()?);
        // Twelve samples over three seconds within 0.5% (or 256 KiB) of each other.
        if window.len() == 12 && hi - lo <= (hi / 200).max(256) || Instant::now() > deadline {
            let mut w = window.clone();
            w.sort_unstable();
            return w.get(w.len() / 2).copied();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

struct Rss {
    before: Option<u64>,
    half: Option<u64>,
    held: Option<u64>,
    after: Option<u64>,
}

fn memory_figures(r: &Rss, half: usize, n: usize) -> Value {
    let per = |a: Option<u64>, b: Option<u64>, k: usize| match (a, b) {
        (Some(a), Some(b)) if k > 0 => Some(((b as f64 - a as f64) * 1024.0 / k as f64).round()),
        _ => None,
    };
    json!({
        "rss_before_kb": r.before,
        "rss_half_kb": r.half,
        "rss_held_kb": r.held,
        "rss_after_close_kb": r.after,
        "rss_bytes_per_connection": per(r.half, r.held, n - half),
        "rss_bytes_per_connection_from_idle": per(r.before, r.held, n),
    })
}

async fn held_rss(ctx: &Ctx) -> Option<u64> {
    tokio::time::sleep(Duration::from_secs_f64(ctx.args.idle_settle_s)).await;
    settled_rss(ctx).await
}

async fn hold_long_polls(ctx: &Ctx, users: &[User], sinces: &[String]) -> Result<Value, BoxError> {
    let a = &ctx.args;
    let (n, half) = (a.idle_conns, a.idle_conns / 2);
    let in_flight = Arc::new(AtomicI64::new(0));
    let returned = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let spawn = |i: usize| {
        let (api, user) = (Arc::clone(&ctx.api), users[i % users.len()].clone());
        let since = sinces[i % users.len()].clone();
        let (in_flight, returned, errors) = (
            Arc::clone(&in_flight),
            Arc::clone(&returned),
            Arc::clone(&errors),
        );
        let (timeout_ms, presence) = (a.sync_timeout_ms, a.set_presence.clone());
        tokio::spawn(async move {
            loop {
                in_flight.fetch_add(1, Relaxed);
                let r = api
                    .sync(&user.auth, Some(&since), timeout_ms, None, &presence)
                    .await;
                in_flight.fetch_sub(1, Relaxed);
                match r {
                    Ok(_) => returned.fetch_add(1, Relaxed),
                    Err(_) => errors.fetch_add(1, Relaxed),
                };
                // A server that answers at once must not turn this into a request flood.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let mut rss = Rss {
        before: settled_rss(ctx).await,
        half: None,
        held: None,
        after: None,
    };
    crate::log!("idle_connections: opening {n} long-polls in two halves");
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        if i == half {
            rss.half = held_rss(ctx).await;
        }
        tasks.push(spawn(i));
        // The listen backlog is finite: a burst of thousands of connects only gets SYNs dropped
        // and retried a second later.
        if i % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    rss.held = held_rss(ctx).await;
    let held = in_flight.load(Relaxed);
    let sockets = procfs::own_socket_count();
    let held_s = t0.elapsed().as_secs_f64();
    for t in &tasks {
        t.abort();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    rss.after = ctx.sampler.as_ref().and_then(|s| s.sample());
    let mut v = memory_figures(&rss, half, n);
    v["held_s"] = json!(round3(held_s));
    v["in_flight_at_sample"] = json!(held);
    v["returned_early"] = json!(returned.load(Relaxed));
    v["errors"] = json!(errors.load(Relaxed));
    v["client_sockets"] = json!(sockets);
    if held_s * 1000.0 > a.sync_timeout_ms as f64 {
        v["note"] = json!("held longer than the long-poll timeout: some polls were renewed");
    }
    crate::log!("idle_connections (long-poll): {v}");
    Ok(v)
}

async fn hold_websockets(ctx: &Ctx, users: &[User]) -> Result<Value, BoxError> {
    let a = &ctx.args;
    let (n, half) = (a.idle_conns, a.idle_conns / 2);
    let base = ctx.api.base();
    let presence = a.set_presence.as_str();
    // One probe first: against a server without the transport, 2000 failed upgrades say nothing.
    match ws::connect(base, &users[0].token, None, presence, 0, None).await {
        Ok(probe) => drop(probe),
        Err(ConnectError::Unsupported(why)) => {
            crate::log!("idle_connections (websocket): skipped: {why}");
            return Ok(json!({ "skipped": "no websocket transport", "detail": why }));
        }
        Err(e) => return Err(e.into()),
    }
    // Without `since` the first frame is an initial sync, sent at once; these users have no
    // rooms, so it is a few bytes.
    let open = |range: std::ops::Range<usize>| {
        futures_util::stream::iter(range)
            .map(|i| ws::connect(base, &users[i % users.len()].token, None, presence, i, None))
            .buffer_unordered(64)
            .collect::<Vec<_>>()
    };
    let mut rss = Rss {
        before: settled_rss(ctx).await,
        half: None,
        held: None,
        after: None,
    };
    crate::log!("idle_connections: opening {n} WebSockets in two halves");
    let t0 = Instant::now();
    let mut results = open(0..half).await;
    rss.half = held_rss(ctx).await;
    results.extend(open(half..n).await);
    let mut clients = Vec::with_capacity(n);
    let mut failures = Vec::new();
    for r in results {
        match r {
            Ok(c) => clients.push(c),
            Err(e) => failures.push(e.to_string()),
        }
    }
    // Held means the server has sent its first frame: its per-connection state exists.
    let wait_until = Instant::now() + Duration::from_secs(15);
    let with_frame = loop {
        let k = clients
            .iter()
            .filter(|c| c.frames.load(Relaxed) > 0)
            .count();
        if k == clients.len() || Instant::now() > wait_until {
            break k;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    rss.held = held_rss(ctx).await;
    let sockets = procfs::own_socket_count();
    let (held, held_s) = (clients.len(), t0.elapsed().as_secs_f64());
    // Idle sockets must survive the server's keep-alive pings (tungstenite answers them).
    let still_open = clients.iter().filter(|c| c.is_open()).count();
    drop(clients);
    tokio::time::sleep(Duration::from_secs(1)).await;
    rss.after = ctx.sampler.as_ref().and_then(|s| s.sample());
    let mut v = memory_figures(&rss, half, n);
    v["held"] = json!(held);
    v["held_s"] = json!(round3(held_s));
    v["with_first_frame"] = json!(with_frame);
    v["still_open"] = json!(still_open);
    v["connect_failures"] = json!(failures.len());
    failures.truncate(3);
    v["failure_samples"] = json!(failures);
    v["client_sockets"] = json!(sockets);
    crate::log!("idle_connections (websocket): {v}");
    Ok(v)
}
