//! hearth-bench: a Client-Server-API-only load generator for Matrix homeservers, so that one run
//! measures Hearth and Synapse alike. One JSON object on stdout, progress on stderr (as
//! `../shared/bench/chatbench.py`, whose scenarios it mirrors for loads Python cannot make).

mod api;
mod matrix;
mod procfs;
mod push_gateway;
mod sampler;
mod scenarios;
mod stats;
mod syncloop;
mod users;
mod ws;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::api::Api;
use crate::sampler::Sampler;
use crate::scenarios::Ctx;
use crate::stats::round3;
use crate::users::UserPool;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

static START: OnceLock<Instant> = OnceLock::new();

/// Progress line on stderr, stamped with the time since start.
#[macro_export]
macro_rules! log {
    ($($t:tt)*) => { $crate::log_line(format_args!($($t)*)) };
}

pub fn log_line(args: std::fmt::Arguments<'_>) {
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("[hearth-bench +{t:7.1}s] {args}");
}

#[derive(Parser, Debug, Serialize)]
#[command(
    name = "hearth-bench",
    about = "Client-Server API load generator for Matrix homeservers (Hearth, Synapse, ...)",
    after_help = "Scenarios: dm_latency, ws_latency, typing_latency, group_fanout, throughput, \
                  history, idle_connections, media, push, sliding_sync, search (not run unless named: \
                  its load is large), federation (not run unless named: needs --peer-url). \
                  See docs/benchmark.md."
)]
pub struct Args {
    /// Homeserver base URL.
    #[arg(long, default_value = "http://127.0.0.1:8008")]
    pub url: String,
    /// Comma-separated scenarios to run, always in the canonical order. `search` and
    /// `federation` run only when named.
    #[arg(long, default_value = scenarios::DEFAULT_CSV)]
    pub scenarios: String,
    /// Comma-separated scenarios to leave out.
    #[arg(long, default_value = "")]
    pub skip: String,
    /// Free-form label copied into the JSON.
    #[arg(long)]
    pub label: Option<String>,
    /// Server PID: sample VmRSS of it and its descendants.
    #[arg(long)]
    pub pid: Option<u32>,
    #[arg(long, default_value_t = 100)]
    pub rss_interval_ms: u64,
    /// Count our own open TCP connections (sampled; peak per scenario).
    #[arg(long)]
    pub connections: bool,
    /// Username prefix (default: unique per run, so reruns against one server never collide).
    #[arg(long)]
    pub prefix: Option<String>,
    #[arg(long)]
    #[serde(skip)]
    pub password: Option<String>,
    /// For servers that require m.login.registration_token.
    #[arg(long)]
    #[serde(skip)]
    pub registration_token: Option<String>,
    /// Also write the JSON result (pretty) to this file.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    /// Runtime worker threads (default: one per CPU).
    #[arg(long)]
    pub threads: Option<usize>,

    /// Hard wall-clock limit for the whole run; partial results are still printed.
    #[arg(long, default_value_t = 1800.0)]
    pub max_seconds: f64,
    /// Per-request timeout in seconds (long-polls get their own timeout on top).
    #[arg(long, default_value_t = 60.0)]
    pub request_timeout: f64,
    /// Retries on HTTP 429, honouring retry_after_ms (capped at 5 s).
    #[arg(long, default_value_t = 20)]
    pub max_429_retries: u32,
    /// How long to wait for one message or typing change to arrive, in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub msg_timeout: f64,
    /// Concurrency of unmeasured setup: registrations, joins, initial syncs.
    #[arg(long, default_value_t = 16)]
    pub setup_concurrency: usize,
    /// Long-poll timeout of /sync.
    #[arg(long, default_value_t = 30000)]
    pub sync_timeout_ms: u64,
    /// set_presence on /sync (offline keeps presence churn out of the figures).
    #[arg(long, default_value = "offline")]
    pub set_presence: String,

    /// dm_latency: messages sent one at a time.
    #[arg(long, default_value_t = 100)]
    pub dm_messages: usize,
    /// Pause after each delivered message or typing change (lets the long-poll re-park).
    #[arg(long, default_value_t = 20)]
    pub gap_ms: u64,
    /// ws_latency: messages per phase (HTTP send, then WebSocket send).
    #[arg(long, default_value_t = 100)]
    pub ws_messages: usize,
    /// typing_latency: rounds of typing on + off.
    #[arg(long, default_value_t = 30)]
    pub typing_rounds: usize,
    /// group_fanout: room size, sender included.
    #[arg(long, default_value_t = 255)]
    pub fanout_members: usize,
    /// group_fanout: messages (one per round).
    #[arg(long, default_value_t = 20)]
    pub fanout_rounds: usize,
    /// group_fanout: pause after a round is complete.
    #[arg(long, default_value_t = 500)]
    pub fanout_gap_ms: u64,
    /// group_fanout: seconds to wait for the last receiver.
    #[arg(long, default_value_t = 60.0)]
    pub fanout_msg_timeout: f64,
    /// throughput: concurrent senders.
    #[arg(long, default_value_t = 50)]
    pub senders: usize,
    /// throughput: seconds of sending.
    #[arg(long, alias = "duration", default_value_t = 10.0)]
    pub throughput_seconds: f64,
    /// throughput: requests in flight per sender (pipelining over as many connections).
    #[arg(long, default_value_t = 1)]
    pub inflight: usize,
    /// throughput: rooms shared by the senders; 0 = a room per sender.
    #[arg(long, default_value_t = 0)]
    pub throughput_rooms: usize,
    /// history: messages in the room.
    #[arg(long, default_value_t = 2000)]
    pub history_messages: usize,
    #[arg(long, default_value_t = 50)]
    pub history_page_limit: usize,
    /// history: passes over the same history; pass 0 is the cold one.
    #[arg(long, default_value_t = 3)]
    pub history_passes: usize,
    #[arg(long, default_value_t = 8)]
    pub history_send_concurrency: usize,
    /// idle_connections: connections held open at once.
    #[arg(long, default_value_t = 2000)]
    pub idle_conns: usize,
    /// idle_connections: users the connections are spread over.
    #[arg(long, default_value_t = 4)]
    pub idle_users: usize,
    /// idle_connections: sync, ws or both. One mode per run against a freshly started server
    /// gives the clean figure: memory the first mode frees is reused by the second.
    #[arg(long, default_value = "sync", value_parser = ["sync", "ws", "both"])]
    pub idle_mode: String,
    /// idle_connections: seconds to wait after opening, before RSS must hold still for 3 s.
    #[arg(long, default_value_t = 1.0)]
    pub idle_settle_s: f64,
    /// media: uploads, then downloads, of the large file.
    #[arg(long, default_value_t = 3)]
    pub media_rounds: usize,
    /// media: size of the large file in MiB.
    #[arg(long, default_value_t = 100)]
    pub media_mib: u64,
    /// media: distinct 1600x1200 PNGs, each thumbnailed once first-time and once cached.
    #[arg(long, default_value_t = 20)]
    pub thumbnail_images: usize,
    /// push: messages sent one at a time to an offline receiver, each timed until its notify.
    #[arg(long, default_value_t = 200)]
    pub push_messages: usize,
    /// push: seconds to wait for one message's notify before counting it lost.
    #[arg(long, default_value_t = 10.0)]
    pub push_timeout: f64,
    /// push: fan-out room size, sender included; every receiver has a pusher and never syncs.
    #[arg(long, default_value_t = 200)]
    pub push_members: usize,
    /// push: fan-out messages.
    #[arg(long, default_value_t = 20)]
    pub push_rounds: usize,
    /// push: pause between fan-out messages.
    #[arg(long, default_value_t = 100)]
    pub push_gap_ms: u64,
    /// push: seconds after the last fan-out message to wait for every receiver's notify of it.
    #[arg(long, default_value_t = 60.0)]
    pub push_fanout_timeout: f64,
    /// sliding_sync: rooms the user is joined to (it creates them).
    #[arg(long, default_value_t = 1000)]
    pub ss_rooms: usize,
    /// sliding_sync: the sender is invited into, and joins, every Nth of those rooms.
    #[arg(long, default_value_t = 20)]
    pub ss_shared_every: usize,
    /// sliding_sync: rooms per page (the list's range is 0..N-1).
    #[arg(long, default_value_t = 20)]
    pub ss_page_size: usize,
    /// sliding_sync: fresh connections whose first page is timed.
    #[arg(long, default_value_t = 10)]
    pub ss_first_rounds: usize,
    /// sliding_sync: messages that each wake a parked long-poll (`--sync-timeout-ms`).
    #[arg(long, default_value_t = 30)]
    pub ss_wake_rounds: usize,
    /// sliding_sync: pause between starting the long-poll and sending, so that it is parked.
    #[arg(long, default_value_t = 100)]
    pub ss_park_ms: u64,
    /// search: messages loaded before the queries.
    #[arg(long, default_value_t = 1_000_000)]
    pub search_messages: usize,
    /// search: rooms the messages are spread over.
    #[arg(long, default_value_t = 20)]
    pub search_rooms: usize,
    /// search: users, each joined to every room; they take turns sending and searching.
    #[arg(long, default_value_t = 4)]
    pub search_users: usize,
    /// search: sends in flight during the load.
    #[arg(long, default_value_t = 64)]
    pub search_send_concurrency: usize,
    /// search: distinct words; message bodies draw 5-20 of them with Zipf weights (s = 1).
    #[arg(long, default_value_t = 20_000)]
    pub search_vocabulary: usize,
    /// search: seconds to wait, after the last send, for the index to find the marker.
    #[arg(long, default_value_t = 600.0)]
    pub search_catch_up_timeout: f64,
    /// search: concurrent searchers.
    #[arg(long, default_value_t = 8)]
    pub search_concurrency: usize,
    /// search: seconds each query kind runs alone, and then all kinds mixed.
    #[arg(long, default_value_t = 10.0)]
    pub search_seconds: f64,
    /// search: results per search (`filter.limit`).
    #[arg(long, default_value_t = 10)]
    pub search_limit: usize,
    /// federation: base URL of the second homeserver (B); `--url` is A. The scenario is skipped
    /// without it.
    #[arg(long)]
    pub peer_url: Option<String>,
    /// federation: A's server name, which B joins through (default: the part of A's user ID
    /// after the first colon).
    #[arg(long)]
    pub server_name: Option<String>,
    /// federation: messages per direction sent one at a time, each timed until B (or A) sees it.
    #[arg(long, default_value_t = 300)]
    pub fed_messages: usize,
    /// federation: untimed messages per direction first (key fetches, connection set-up).
    #[arg(long, default_value_t = 5)]
    pub fed_warmup: usize,
    /// federation: sends in flight in the concurrent variant; 0 leaves it out.
    #[arg(long, default_value_t = 8)]
    pub fed_concurrency: usize,
    /// federation: members (all on A) of a second room that a fresh user on B then joins, timed;
    /// 0 leaves it out.
    #[arg(long, default_value_t = 500)]
    pub fed_room_members: usize,
    /// federation: messages said on A in a third room before a fresh user on B joins it and
    /// pages back through all of them (B backfills them from A), timed; 0 leaves it out.
    #[arg(long, default_value_t = 500)]
    pub fed_history: usize,
}

impl Args {
    fn scenario_list(&self) -> Result<Vec<&'static str>, String> {
        let split = |s: &str| -> Vec<String> {
            s.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let (wanted, skip) = (split(&self.scenarios), split(&self.skip));
        if let Some(bad) = wanted
            .iter()
            .chain(&skip)
            .find(|s| !scenarios::ALL.contains(&s.as_str()))
        {
            return Err(format!(
                "unknown scenario {bad:?}; known: {}",
                scenarios::ALL_CSV
            ));
        }
        Ok(scenarios::ALL
            .iter()
            .copied()
            .filter(|s| wanted.iter().any(|w| w == s) && !skip.iter().any(|k| k == s))
            .collect())
    }
}

/// Lowercase letters and digits only, so it is a valid localpart on every server.
fn default_run_id() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("hb{secs:x}{:x}", std::process::id() % 4096)
}

/// The run's description, before any result.
fn header(
    args: &Args,
    run_id: &str,
    list: &[&str],
    threads: usize,
    nofile: Option<(u64, u64)>,
) -> Map<String, Value> {
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut r = Map::new();
    r.insert("tool".into(), json!("hearth-bench"));
    r.insert("tool_version".into(), json!(env!("CARGO_PKG_VERSION")));
    r.insert("url".into(), json!(args.url));
    r.insert("label".into(), json!(args.label));
    r.insert("run_id".into(), json!(run_id));
    r.insert("started_at_unix".into(), json!(started));
    r.insert("params".into(), json!(args));
    r.insert("scenario_list".into(), json!(list));
    r.insert(
        "host".into(),
        json!({
            "cpus": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
            "worker_threads": threads,
            "loadavg_start": procfs::loadavg(),
            "nofile_limit": nofile,
        }),
    );
    r.insert("scenarios".into(), json!({}));
    r
}

fn main() -> ExitCode {
    START.get_or_init(Instant::now);
    let args = Args::parse();
    let list = match args.scenario_list() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hearth-bench: {e}");
            return ExitCode::from(2);
        }
    };
    if args.fanout_members < 2 || args.push_members < 2 {
        eprintln!("hearth-bench: --fanout-members and --push-members must be at least 2");
        return ExitCode::from(2);
    }
    let nofile = procfs::raise_nofile_limit();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, std::num::NonZero::get));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hearth-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let args = Arc::new(args);
    let run_id = args
        .prefix
        .clone()
        .unwrap_or_else(default_run_id)
        .to_lowercase();
    let result = Mutex::new(header(&args, &run_id, &list, threads, nofile));
    let api = match Api::new(
        &args.url,
        Duration::from_secs_f64(args.request_timeout),
        args.max_429_retries,
    ) {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("hearth-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let password = args.password.clone().unwrap_or_else(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        format!("hb-{nanos:x}{:x}", std::process::id())
    });
    let pool = Arc::new(UserPool::new(
        run_id.clone(),
        password,
        args.registration_token.clone(),
        args.setup_concurrency,
    ));
    let sampler = Sampler::start(
        args.pid,
        args.connections,
        Duration::from_millis(args.rss_interval_ms.max(10)),
    );
    let ctx = Ctx {
        api: Arc::clone(&api),
        pool: Arc::clone(&pool),
        args: Arc::clone(&args),
        run_id,
        sampler: sampler.clone(),
        cpu: Mutex::new(None),
    };

    let t_start = Instant::now();
    let limit = Duration::from_secs_f64(args.max_seconds);
    let outcome =
        rt.block_on(async { tokio::time::timeout(limit, run(&ctx, &list, &result)).await });
    let mut rc = ExitCode::SUCCESS;
    let mut r = result.lock().unwrap();
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            log!("fatal: {e}");
            r.insert("aborted".into(), json!(e.to_string()));
            rc = ExitCode::FAILURE;
        }
        Err(_) => {
            log!(
                "hard time limit of {}s reached; printing partial results",
                args.max_seconds
            );
            r.insert("aborted".into(), json!("max_seconds"));
            rc = ExitCode::from(3);
        }
    }
    // Abandoned long-polls and sockets die with the runtime, not while we print.
    rt.shutdown_background();
    if let Some(s) = &sampler {
        for (k, v) in s.finish().as_object().into_iter().flatten() {
            r.insert(k.clone(), v.clone());
        }
    }
    if let Some(c) = r.get("client_sockets") {
        log!(
            "connections: at most {} TCP connections open at once",
            c["peak"]
        );
    }
    let (requests, samples) = api.counters.report();
    r.insert("requests".into(), requests);
    if !samples.is_empty() {
        r.insert("error_samples".into(), json!(samples));
    }
    r.insert("registration".into(), pool.report());
    if let Some(h) = r.get_mut("host") {
        h["loadavg_end"] = json!(procfs::loadavg());
    }
    r.insert(
        "elapsed_s".into(),
        json!(round3(t_start.elapsed().as_secs_f64())),
    );
    let out = Value::Object(std::mem::take(&mut *r));
    println!("{out}");
    if let Some(path) = &args.json_out {
        let pretty = serde_json::to_string_pretty(&out).expect("a Value serializes") + "\n";
        if let Err(e) = std::fs::write(path, pretty) {
            log!("cannot write {}: {e}", path.display());
            rc = ExitCode::FAILURE;
        }
    }
    rc
}

async fn run(
    ctx: &Ctx,
    list: &[&'static str],
    result: &Mutex<Map<String, Value>>,
) -> Result<(), BoxError> {
    let versions = ctx.api.versions().await?;
    let v = versions.get("versions").cloned().unwrap_or(Value::Null);
    log!("server at {} answers; run id {}", ctx.args.url, ctx.run_id);
    result.lock().unwrap().insert("server_versions".into(), v);
    for &name in list {
        if let Some(s) = &ctx.sampler {
            s.set_phase(name);
        }
        let t0 = Instant::now();
        ctx.mark_measured();
        let mut res = match scenarios::run(name, ctx).await {
            Ok(v) => {
                if let Some(why) = v.get("skipped") {
                    log!(
                        "{name}: skipped: {why} {}",
                        v.get("detail").unwrap_or(&Value::Null)
                    );
                }
                v
            }
            Err(e) => {
                log!("{name}: FAILED: {e}");
                json!({ "error": e.to_string() })
            }
        };
        let el = t0.elapsed().as_secs_f64();
        res["scenario_elapsed_s"] = json!(round3(el));
        if let Some(mark) = ctx.cpu.lock().unwrap().take() {
            res["cpu"] = mark.report(ctx.args.pid);
        }
        if let Some(s) = &ctx.sampler {
            // A scenario that splits its run into phases of its own reports its peak over all.
            for (k, v) in s.phase_report(name).as_object().into_iter().flatten() {
                if res.get(k).is_none_or(Value::is_null) {
                    res[k] = v.clone();
                }
            }
        }
        if let Some(s) = result.lock().unwrap().get_mut("scenarios") {
            s[name] = res;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        Args::parse_from(std::iter::once("hearth-bench").chain(extra.iter().copied()))
    }

    #[test]
    fn picks_scenarios_in_canonical_order() {
        let named_only = ["search", "federation"];
        let default: Vec<&str> = scenarios::ALL
            .into_iter()
            .filter(|s| !named_only.contains(s))
            .collect();
        assert_eq!(args(&[]).scenario_list().unwrap(), default);
        let a = args(&["--scenarios", scenarios::ALL_CSV]);
        assert_eq!(a.scenario_list().unwrap(), scenarios::ALL);
        let a = args(&["--scenarios", "history,dm_latency", "--skip", "history"]);
        assert_eq!(a.scenario_list().unwrap(), ["dm_latency"]);
        let a = args(&["--scenarios", "throughput,dm_latency"]);
        assert_eq!(a.scenario_list().unwrap(), ["dm_latency", "throughput"]);
        assert!(args(&["--scenarios", "nope"]).scenario_list().is_err());
    }

    #[test]
    fn scenario_names_agree() {
        assert_eq!(scenarios::ALL.join(","), scenarios::ALL_CSV);
        assert_eq!(
            scenarios::DEFAULT_CSV,
            scenarios::ALL_CSV
                .strip_suffix(",search,federation")
                .unwrap()
        );
    }

    #[test]
    fn run_ids_are_valid_localparts() {
        let id = default_run_id();
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
    }

    #[test]
    fn secrets_stay_out_of_the_json() {
        let a = args(&["--password", "pw", "--registration-token", "tok"]);
        let v = json!(a);
        assert!(v.get("password").is_none());
        assert!(v.get("registration_token").is_none());
        assert_eq!(v["senders"], 50);
    }
}
