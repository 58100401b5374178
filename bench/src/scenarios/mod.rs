//! The scenarios, one module each, and what they share: two-user rooms and waiting for a
//! receiver to see something.

mod dm;
mod fanout;
mod federation;
mod history;
mod idle;
mod media;
mod push;
mod search;
mod sliding_sync;
mod throughput;
mod typing;
mod ws_latency;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::api::Api;
use crate::procfs;
use crate::sampler::Sampler;
use crate::stats::ms;
use crate::stats::{round2, round3};
use crate::syncloop::{self, Pollers, SyncOpts, Update};
use crate::users::{User, UserPool};
use crate::{Args, BoxError};

pub const ALL: [&str; 12] = [
    "dm_latency",
    "ws_latency",
    "typing_latency",
    "group_fanout",
    "throughput",
    "history",
    "idle_connections",
    "media",
    "push",
    "sliding_sync",
    "search",
    "federation",
];
pub const ALL_CSV: &str = concat!(
    "dm_latency,ws_latency,typing_latency,group_fanout,throughput,history,",
    "idle_connections,media,push,sliding_sync,search,federation"
);
/// What runs when `--scenarios` is not given: all but `search`, whose load (a million messages
/// by default) takes minutes on Hearth and hours on Synapse, and `federation`, which needs a
/// second server (`--peer-url`). Name them to run them.
pub const DEFAULT_CSV: &str = concat!(
    "dm_latency,ws_latency,typing_latency,group_fanout,throughput,history,",
    "idle_connections,media,push,sliding_sync"
);

pub struct Ctx {
    pub api: Arc<Api>,
    pub pool: Arc<UserPool>,
    pub args: Arc<Args>,
    pub run_id: String,
    pub sampler: Option<Arc<Sampler>>,
    pub cpu: Mutex<Option<CpuMark>>,
}

/// CPU used by the generator and the server from one moment on. A scenario restarts it where its
/// measured phase begins, so that setup (registrations hash passwords: seconds of CPU) does not
/// count.
pub struct CpuMark {
    at: Instant,
    client: f64,
    server: Option<f64>,
}

impl CpuMark {
    pub fn start(pid: Option<u32>) -> CpuMark {
        CpuMark {
            at: Instant::now(),
            client: procfs::own_cpu_seconds(),
            server: pid.and_then(procfs::cpu_seconds),
        }
    }

    /// Generator and server share the machine's cores: a generator near a full core means the
    /// figure is the client's limit, not the server's.
    pub fn report(&self, pid: Option<u32>) -> Value {
        let window = self.at.elapsed().as_secs_f64();
        let client = procfs::own_cpu_seconds() - self.client;
        let mut v = json!({
            "window_s": round3(window),
            "client_s": round3(client),
            "client_cores": round2(client / window),
        });
        if let (Some(a), Some(b)) = (self.server, pid.and_then(procfs::cpu_seconds)) {
            v["server_s"] = json!(round3(b - a));
            v["server_cores"] = json!(round2((b - a) / window));
        }
        v
    }
}

impl Ctx {
    /// Called where a scenario's measured phase starts.
    pub fn mark_measured(&self) {
        *self.cpu.lock().unwrap() = Some(CpuMark::start(self.args.pid));
    }

    pub fn sync_opts(&self) -> SyncOpts {
        SyncOpts {
            timeout_ms: self.args.sync_timeout_ms,
            set_presence: self.args.set_presence.clone(),
        }
    }

    pub fn msg_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.args.msg_timeout)
    }

    pub async fn gap(&self) {
        if self.args.gap_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.args.gap_ms)).await;
        }
    }
}

pub async fn run(name: &str, ctx: &Ctx) -> Result<Value, BoxError> {
    match name {
        "dm_latency" => dm::run(ctx).await,
        "ws_latency" => ws_latency::run(ctx).await,
        "typing_latency" => typing::run(ctx).await,
        "group_fanout" => fanout::run(ctx).await,
        "throughput" => throughput::run(ctx).await,
        "history" => history::run(ctx).await,
        "idle_connections" => idle::run(ctx).await,
        "media" => media::run(ctx).await,
        "push" => push::run(ctx).await,
        "sliding_sync" => sliding_sync::run(ctx).await,
        "search" => search::run(ctx).await,
        "federation" => federation::run(ctx).await,
        _ => Err(format!("unknown scenario {name}").into()),
    }
}

pub fn skipped(reason: &str) -> Value {
    json!({ "skipped": reason })
}

/// A sender and a receiver in a private room of their own, as a DM would be.
pub async fn pair(ctx: &Ctx, name: &str) -> Result<(User, User, String), BoxError> {
    let mut users = ctx.pool.take(&ctx.api, 2).await?;
    let receiver = users.pop().expect("two users");
    let sender = users.pop().expect("two users");
    let room = ctx
        .api
        .create_room(
            &sender.auth,
            &json!({
                "preset": "private_chat",
                "is_direct": true,
                "invite": [receiver.user_id],
                "name": format!("hearth-bench {name}"),
            }),
        )
        .await?;
    ctx.api.join(&receiver.auth, &room).await?;
    Ok((sender, receiver, room))
}

/// A DM pair whose receiver long-polls `/sync`: `(sender, room, its updates, the poller)`.
pub async fn pair_with_poller(
    ctx: &Ctx,
    name: &str,
) -> Result<(User, String, mpsc::UnboundedReceiver<Update>, Pollers), BoxError> {
    let (sender, receiver, room) = pair(ctx, name).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    let pollers = syncloop::start(
        &ctx.api,
        std::slice::from_ref(&receiver),
        &ctx.sync_opts(),
        1,
        tx,
    )
    .await?;
    Ok((sender, room, rx, pollers))
}

/// Latencies of messages sent over HTTP one at a time, each until its arrival on `rx`.
pub struct SendTimings {
    /// Send start → the receiver has it.
    pub delivery: Vec<f64>,
    /// Send start → the send's 200.
    pub puts: Vec<f64>,
    pub missed: usize,
}

pub async fn send_and_time(
    ctx: &Ctx,
    sender: &User,
    room: &str,
    rx: &mut mpsc::UnboundedReceiver<Update>,
    tag: &str,
    n: usize,
) -> Result<SendTimings, BoxError> {
    send_and_time_on(ctx, &ctx.api, sender, room, rx, tag, n).await
}

/// [`send_and_time`] with the sender on the server `api` talks to (the receiver's updates may
/// come from another: `federation`).
pub async fn send_and_time_on(
    ctx: &Ctx,
    api: &Api,
    sender: &User,
    room: &str,
    rx: &mut mpsc::UnboundedReceiver<Update>,
    tag: &str,
    n: usize,
) -> Result<SendTimings, BoxError> {
    let room_enc = crate::api::enc(room);
    let mut t = SendTimings {
        delivery: Vec::new(),
        puts: Vec::new(),
        missed: 0,
    };
    for i in 0..n {
        let body = format!("hb {} {tag} {i}", ctx.run_id);
        let txn = format!("{}-{tag}-{i}", ctx.run_id);
        let t0 = Instant::now();
        let r = api.send_text(&sender.auth, &room_enc, &txn, &body).await?;
        t.puts.push(ms(r.at - t0));
        let deadline = Instant::now() + ctx.msg_timeout();
        match wait_for(rx, deadline, |u| {
            u.sync.message_bodies(room).any(|b| b == body)
        })
        .await
        {
            Some(at) => t.delivery.push(ms(at.saturating_duration_since(t0))),
            None => t.missed += 1,
        }
        ctx.gap().await;
    }
    Ok(t)
}

/// The next update, or None at the deadline.
pub async fn next_update(
    rx: &mut mpsc::UnboundedReceiver<Update>,
    deadline: Instant,
) -> Option<Update> {
    tokio::time::timeout_at(deadline.into(), rx.recv())
        .await
        .ok()
        .flatten()
}

/// Waits until an update satisfies `seen`; returns when that update arrived, or None at the
/// deadline. Updates before it (earlier messages, other rooms) are consumed.
pub async fn wait_for(
    rx: &mut mpsc::UnboundedReceiver<Update>,
    deadline: Instant,
    mut seen: impl FnMut(&Update) -> bool,
) -> Option<Instant> {
    loop {
        match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(Some(u)) if seen(&u) => return Some(u.at),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return None,
        }
    }
}
