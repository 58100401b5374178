//! search: server-side search (`POST /search`, `room_events`) over a large history.
//!
//! Load: `--search-users` users, all joined to `--search-rooms` rooms, send `--search-messages`
//! messages through the ordinary send API, `--search-send-concurrency` at a time. Each body is
//! 5-20 words drawn from a Zipf distribution over a synthetic vocabulary, so a few words are in
//! most messages and most words are in few. Then a unique marker word is sent last and searched
//! for until it is found: how far the index lagged behind the sends.
//!
//! Queries: each kind (a common, a mid-frequency and a rare word; two words together; a common
//! word newest first; a common word from one sender) runs alone for `--search-seconds` with
//! `--search-concurrency` searchers, then all kinds mixed. The bodies are deterministic, so the
//! generator knows how many messages each query matches and checks the server's `count`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::Method;
use reqwest::header::HeaderValue;
use serde_json::{Value, json};

use super::media::{enter, peak};
use super::{CpuMark, Ctx, skipped};
use crate::BoxError;
use crate::api::{Api, ApiError, enc};
use crate::stats::{Summary, ms, rate, round3};
use crate::users::User;

/// The bodies of every run are the same: runs compare, and a rerun finds the same counts.
const SEED: u64 = 0x5EA4_C4B0_D1E5_2024;
/// Zipf's exponent: word r (from 1) has weight 1/r^s. 1 is the classic value for English text.
const ZIPF_S: f64 = 1.0;
/// Words are three consonant-vowel syllables and an `x`: 15 × 5 syllables, so 75³ words.
const CONSONANTS: &[u8] = b"bdfghjklmnprtvz";
const VOWELS: &[u8] = b"aeiou";
const WORD_SPACE: u64 = 75 * 75 * 75;
const PATH: &str = "/search";

pub async fn run(ctx: &Ctx) -> Result<Value, BoxError> {
    let a = &ctx.args;
    let n_users = a.search_users.max(1);
    let n_rooms = a.search_rooms.max(1);
    let n = a.search_messages;
    let vocab = Arc::new(Vocab::new(a.search_vocabulary));
    let users = ctx.pool.take(&ctx.api, n_users).await?;

    // Before the costly load: does the server search at all?
    let probe = request(&["hbprobe"], "rank", None, 1);
    match post(&ctx.api, &users[0].auth, &probe).await {
        Err(e) if e.is_unsupported() => {
            let mut v = skipped("no search endpoint");
            v["detail"] = json!(e.to_string());
            return Ok(v);
        }
        r => {
            r?;
        }
    }

    let rooms = setup_rooms(ctx, &users, n_rooms).await?;
    let rss_after_setup = enter(ctx, "search_load");
    ctx.mark_measured();
    let shape = Shape {
        rooms: n_rooms,
        users: n_users,
    };
    let load = load_phase(ctx, &users, &rooms, &vocab, shape).await?;
    let rss_after_load = enter(ctx, "search_catch_up");
    let catch_up = catch_up_phase(ctx, &users[0], &rooms[0]).await?;
    let rss_after_catch_up = enter(ctx, "search_query");

    let mut queries = query_set(&vocab, n_users);
    let failed = load.failed.clone();
    let (v2, q2) = (Arc::clone(&vocab), queries.clone());
    let expected =
        tokio::task::spawn_blocking(move || expected_counts(&v2, &q2, n, shape, &failed)).await?;
    for (q, e) in queries.iter_mut().zip(expected) {
        q.expected = e;
    }
    let queries = Arc::new(queries);
    let query = query_phase(ctx, &users, &vocab, &queries).await;
    enter(ctx, "search");
    let phases = ["search", "search_load", "search_catch_up", "search_query"];
    Ok(json!({
        "messages": n,
        "rooms": n_rooms,
        "users": n_users,
        "vocabulary": vocab.words.len(),
        "zipf_s": ZIPF_S,
        "load": load.report,
        "catch_up": catch_up,
        "queries": query,
        "rss_kb": {
            "after_setup": rss_after_setup,
            "load_peak": peak(ctx, "search_load"),
            "after_load": rss_after_load,
            "after_catch_up": rss_after_catch_up,
            "query_peak": peak(ctx, "search_query"),
            "end": ctx.sampler.as_ref().and_then(|s| s.sample()),
        },
        "rss_peak_kb": phases.iter().filter_map(|p| peak(ctx, p)).max(),
    }))
}

/// How messages are spread: message i goes to room i mod rooms, from a sender that changes every
/// `rooms` messages, so each room hears from every user.
#[derive(Clone, Copy)]
struct Shape {
    rooms: usize,
    users: usize,
}

impl Shape {
    fn room(self, i: usize) -> usize {
        i % self.rooms
    }

    fn sender(self, i: usize) -> usize {
        (i / self.rooms) % self.users
    }
}

/// The first user creates the rooms (public, so the others join without an invite); everyone
/// joins all of them.
async fn setup_rooms(ctx: &Ctx, users: &[User], n_rooms: usize) -> Result<Vec<String>, BoxError> {
    let conc = ctx.args.setup_concurrency.max(1);
    crate::log!("search: {} users, {n_rooms} rooms", users.len());
    let rooms: Vec<String> = futures_util::stream::iter(0..n_rooms)
        .map(|k| {
            let body = json!({"preset": "public_chat", "name": format!("hearth-bench search {k}")});
            async move { ctx.api.create_room(&users[0].auth, &body).await }
        })
        .buffered(conc)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let joins = users[1..]
        .iter()
        .flat_map(|u| rooms.iter().map(move |r| (u, r)));
    futures_util::stream::iter(joins)
        .map(|(u, r)| ctx.api.join(&u.auth, r))
        .buffer_unordered(conc)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<()>, _>>()?;
    Ok(rooms)
}

// ---- the corpus ----

/// The vocabulary, most common word first, and the cumulative Zipf weights to draw from it.
struct Vocab {
    words: Vec<String>,
    cdf: Vec<f64>,
}

impl Vocab {
    fn new(size: usize) -> Vocab {
        let size = size.clamp(1, WORD_SPACE as usize);
        let weights: Vec<f64> = (1..=size).map(|r| 1.0 / (r as f64).powf(ZIPF_S)).collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let cdf = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        Vocab {
            words: (0..size).map(word).collect(),
            cdf,
        }
    }

    /// The rank of the word that a uniform draw `u` in [0, 1) picks.
    fn draw(&self, u: f64) -> usize {
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.words.len() - 1)
    }

    /// The ranks of message i's words: 5 to 20 of them, the same in every run.
    fn ranks(&self, i: usize, out: &mut Vec<usize>) {
        let mut rng = Rng::new(SEED ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        out.clear();
        let len = 5 + rng.below(16);
        out.extend((0..len).map(|_| self.draw(rng.unit())));
    }

    fn body(&self, i: usize) -> String {
        let mut ranks = Vec::with_capacity(20);
        self.ranks(i, &mut ranks);
        let mut s = String::with_capacity(ranks.len() * 8);
        for (k, &r) in ranks.iter().enumerate() {
            if k > 0 {
                s.push(' ');
            }
            s.push_str(&self.words[r]);
        }
        s
    }
}

/// The word of a rank. Ranks are spread over the word space by a bijection, so that common words
/// do not all start alike. Words end in `x`, which no English stemming rule strips or changes:
/// a server that stems (Hearth, Synapse on PostgreSQL) indexes each word as itself, and no word is
/// a prefix of another (Synapse on SQLite matches prefixes).
fn word(rank: usize) -> String {
    let mut k = (rank as u64 * 7919 + 104_729) % WORD_SPACE;
    let mut w = String::with_capacity(7);
    for _ in 0..3 {
        let s = (k % 75) as usize;
        k /= 75;
        w.push(char::from(CONSONANTS[s / 5]));
        w.push(char::from(VOWELS[s % 5]));
    }
    w.push('x');
    w
}

/// splitmix64: small, fast, and the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

// ---- load ----

struct Load {
    report: Value,
    /// Messages whose send failed: left out of the expected counts.
    failed: Vec<usize>,
}

#[derive(Default)]
struct LoadAcc {
    ok: usize,
    failed: Vec<usize>,
    error_samples: Vec<String>,
    /// Microseconds: a u32 per send keeps a million sends' samples at 4 MB.
    lats_us: Vec<u32>,
    per_second: Vec<u32>,
}

async fn load_phase(
    ctx: &Ctx,
    users: &[User],
    rooms: &[String],
    vocab: &Arc<Vocab>,
    shape: Shape,
) -> Result<Load, BoxError> {
    let a = &ctx.args;
    let (n, conc) = (a.search_messages, a.search_send_concurrency.max(1));
    crate::log!(
        "search: sending {n} messages into {} rooms, {conc} in flight",
        rooms.len()
    );
    let rooms_enc: Vec<String> = rooms.iter().map(|r| enc(r)).collect();
    let step = (n / 10).max(1);
    let cpu = CpuMark::start(a.pid);
    let start = Instant::now();
    let acc = futures_util::stream::iter(0..n)
        .map(|i| {
            let (room, user) = (&rooms_enc[shape.room(i)], &users[shape.sender(i)]);
            let txn = format!("{}-s-{i}", ctx.run_id);
            let body = vocab.body(i);
            async move {
                let t0 = Instant::now();
                let r = ctx.api.send_text(&user.auth, room, &txn, &body).await;
                (i, r.map(|r| r.at.saturating_duration_since(t0)))
            }
        })
        .buffer_unordered(conc)
        .fold(LoadAcc::default(), |mut acc, (i, r)| async move {
            match r {
                Ok(d) => {
                    acc.ok += 1;
                    acc.lats_us
                        .push(u32::try_from(d.as_micros()).unwrap_or(u32::MAX));
                    let sec = start.elapsed().as_secs() as usize;
                    if acc.per_second.len() <= sec {
                        acc.per_second.resize(sec + 1, 0);
                    }
                    acc.per_second[sec] += 1;
                }
                Err(e) => {
                    acc.failed.push(i);
                    if acc.error_samples.len() < 5 {
                        acc.error_samples.push(e.to_string());
                    }
                }
            }
            let done = acc.ok + acc.failed.len();
            if done % step == 0 {
                let el = start.elapsed().as_secs_f64();
                crate::log!(
                    "search: {done}/{n} sent in {el:.1}s ({:.0}/s)",
                    done as f64 / el
                );
            }
            acc
        })
        .await;
    let elapsed = start.elapsed().as_secs_f64();
    let mut lats: Vec<f64> = acc
        .lats_us
        .iter()
        .map(|&us| f64::from(us) / 1000.0)
        .collect();
    let latency = Summary::of(&mut lats);
    let per_s = rate(acc.ok, elapsed);
    crate::log!(
        "search: load: {} msgs/s ({} sent, {} failed); send {}",
        per_s.unwrap_or(0.0),
        acc.ok,
        acc.failed.len(),
        latency.brief()
    );
    if acc.ok == 0 && n > 0 {
        return Err(format!("no message was sent: {:?}", acc.error_samples).into());
    }
    Ok(Load {
        report: json!({
            "concurrency": conc,
            "sent": acc.ok,
            "errors": acc.failed.len(),
            "elapsed_s": round3(elapsed),
            "messages_per_s": per_s,
            "send_latency_ms": latency,
            "per_second": acc.per_second,
            "error_samples": acc.error_samples,
            "cpu": cpu.report(a.pid),
        }),
        failed: acc.failed,
    })
}

/// Sends a word no other message has, after every other send has been answered, and searches
/// for it until it is found: the indexer follows the stream in order, so by then it has indexed
/// everything. The lag runs from the marker's 200 to the answer that found it.
async fn catch_up_phase(ctx: &Ctx, user: &User, room: &str) -> Result<Value, BoxError> {
    let marker = format!("hbmark{}", ctx.run_id);
    let txn = format!("{}-s-marker", ctx.run_id);
    let cpu = CpuMark::start(ctx.args.pid);
    let sent = ctx
        .api
        .send_text(&user.auth, &enc(room), &txn, &marker)
        .await?
        .at;
    let body = request(&[marker.as_str()], "recent", None, 1);
    let deadline = sent + Duration::from_secs_f64(ctx.args.search_catch_up_timeout);
    let (mut searches, mut lats) = (0, Vec::new());
    let found_at = loop {
        let t0 = Instant::now();
        let r = post(&ctx.api, &user.auth, &body).await?;
        searches += 1;
        lats.push(ms(r.1 - t0));
        if r.0.count > 0 {
            break Some(r.1);
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let lag = found_at.map(|t| round3(t.saturating_duration_since(sent).as_secs_f64()));
    match lag {
        Some(s) => crate::log!("search: the index caught up {s:.3}s after the last send"),
        None => crate::log!("search: the marker was not found within the catch-up timeout"),
    }
    Ok(json!({
        "index_lag_s": lag,
        "found": found_at.is_some(),
        "searches": searches,
        "search_latency_ms": Summary::of(&mut lats),
        "cpu": cpu.report(ctx.args.pid),
    }))
}

// ---- queries ----

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Common,
    Mid,
    Rare,
    TwoWords,
    CommonRecent,
    CommonSender,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Common,
        Kind::Mid,
        Kind::Rare,
        Kind::TwoWords,
        Kind::CommonRecent,
        Kind::CommonSender,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Common => "common",
            Kind::Mid => "mid",
            Kind::Rare => "rare",
            Kind::TwoWords => "two_words",
            Kind::CommonRecent => "common_recent",
            Kind::CommonSender => "common_sender",
        }
    }
}

#[derive(Clone)]
struct Query {
    kind: Kind,
    ranks: Vec<usize>,
    sender: Option<usize>,
    /// Messages that hold every word (and come from the sender), counted by the generator.
    expected: usize,
}

impl Query {
    fn matches(&self, words: &[usize], sender: usize) -> bool {
        self.sender.is_none_or(|s| s == sender) && self.ranks.iter().all(|r| words.contains(r))
    }

    fn body(&self, vocab: &Vocab, users: &[User], limit: usize) -> Bytes {
        let terms: Vec<&str> = self
            .ranks
            .iter()
            .map(|&r| vocab.words[r].as_str())
            .collect();
        let order = if self.kind == Kind::CommonRecent {
            "recent"
        } else {
            "rank"
        };
        let sender = self.sender.map(|s| users[s].user_id.as_str());
        request(&terms, order, sender, limit)
    }
}

/// The queries of each kind. Several words per kind, taken in turn, so that no single posting
/// list is all that is measured. Common: the 3 most common words (each in well over half the
/// messages); mid: ranks 100-275 (about 1 % of messages); rare: 8 ranks spread over the upper
/// three quarters of the vocabulary (tens of messages per million); two words: pairs from ranks
/// 10-25 (each ~5 % of messages, both together ~0.3 %).
fn query_set(vocab: &Vocab, n_users: usize) -> Vec<Query> {
    let v = vocab.words.len();
    let q = |kind, ranks: Vec<usize>, sender| Query {
        kind,
        ranks: ranks.into_iter().map(|r: usize| r.min(v - 1)).collect(),
        sender,
        expected: 0,
    };
    let mut out = Vec::new();
    for r in 0..3 {
        out.push(q(Kind::Common, vec![r], None));
        out.push(q(Kind::CommonRecent, vec![r], None));
        for s in 0..n_users {
            out.push(q(Kind::CommonSender, vec![r], Some(s)));
        }
    }
    for k in 0..8 {
        out.push(q(Kind::Mid, vec![100 + 25 * k], None));
        out.push(q(Kind::Rare, vec![v / 4 + k * (v * 3 / 4) / 8], None));
        out.push(q(Kind::TwoWords, vec![10 + 2 * k, 11 + 2 * k], None));
    }
    out.sort_by_key(|q| q.kind);
    out
}

/// How many of the sent messages each query matches, from the same generator as the bodies.
fn expected_counts(
    vocab: &Vocab,
    queries: &[Query],
    n: usize,
    shape: Shape,
    failed: &[usize],
) -> Vec<usize> {
    let mut counts = vec![0; queries.len()];
    let mut words = Vec::with_capacity(20);
    for i in 0..n {
        vocab.ranks(i, &mut words);
        for (c, q) in counts.iter_mut().zip(queries) {
            *c += usize::from(q.matches(&words, shape.sender(i)));
        }
    }
    for &i in failed {
        vocab.ranks(i, &mut words);
        for (c, q) in counts.iter_mut().zip(queries) {
            *c -= usize::from(q.matches(&words, shape.sender(i)));
        }
    }
    counts
}

/// A `room_events` search over every room the user is in.
fn request(terms: &[&str], order: &str, sender: Option<&str>, limit: usize) -> Bytes {
    let mut filter = json!({ "limit": limit });
    if let Some(s) = sender {
        filter["senders"] = json!([s]);
    }
    let v = json!({
        "search_categories": {
            "room_events": {
                "search_term": terms.join(" "),
                "order_by": order,
                "filter": filter,
            },
        },
    });
    Bytes::from(serde_json::to_vec(&v).expect("a Value serializes"))
}

/// What the scenario reads of a search answer.
struct Found {
    count: usize,
    results: usize,
}

async fn post(api: &Api, auth: &HeaderValue, body: &Bytes) -> Result<(Found, Instant), ApiError> {
    let r = api
        .call(
            Method::POST,
            PATH,
            Some(auth),
            Some(body.clone()),
            None,
            &[200],
        )
        .await?;
    let v: Value = r.json("POST /search")?;
    let events = &v["search_categories"]["room_events"];
    let found = Found {
        count: events["count"].as_u64().unwrap_or(0) as usize,
        results: events["results"].as_array().map_or(0, Vec::len),
    };
    Ok((found, r.at))
}

/// One answered (or failed) search.
struct Sample {
    query: usize,
    us: u32,
    /// None when the search failed.
    found: Option<Found>,
}

async fn query_phase(ctx: &Ctx, users: &[User], vocab: &Vocab, queries: &Arc<Vec<Query>>) -> Value {
    let a = &ctx.args;
    let (conc, secs, limit) = (
        a.search_concurrency.max(1),
        a.search_seconds,
        a.search_limit.max(1),
    );
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        queries
            .iter()
            .map(|q| q.body(vocab, users, limit))
            .collect(),
    );
    let mut kinds = serde_json::Map::new();
    for kind in Kind::ALL {
        let picks: Vec<usize> = (0..queries.len())
            .filter(|&i| queries[i].kind == kind)
            .collect();
        crate::log!("search: {}: {conc} searchers for {secs:.0}s", kind.name());
        let v = timed_searches(ctx, users, &bodies, queries, &picks).await;
        kinds.insert(kind.name().into(), v);
    }
    crate::log!("search: mixed: {conc} searchers for {secs:.0}s");
    let mixed = timed_searches(ctx, users, &bodies, queries, &mixed_picks(queries)).await;
    let set: Vec<Value> = queries
        .iter()
        .map(|q| {
            json!({
                "kind": q.kind.name(),
                "terms": q.ranks.iter().map(|&r| vocab.words[r].as_str()).collect::<Vec<_>>(),
                "ranks": q.ranks,
                "sender": q.sender,
                "expected_count": q.expected,
            })
        })
        .collect();
    json!({
        "concurrency": conc,
        "seconds_per_phase": secs,
        "limit": limit,
        "kinds": kinds,
        "mixed": mixed,
        "query_set": set,
    })
}

/// Every kind in turn, each time its next query: kinds weigh the same in the mix, however many
/// queries each has (one per sender for `common_sender`).
fn mixed_picks(queries: &[Query]) -> Vec<usize> {
    let of_kind: Vec<Vec<usize>> = Kind::ALL
        .iter()
        .map(|&k| {
            (0..queries.len())
                .filter(|&i| queries[i].kind == k)
                .collect()
        })
        .collect();
    let rounds = of_kind.iter().map(Vec::len).max().unwrap_or(0);
    (0..rounds)
        .flat_map(|r| of_kind.iter().map(move |qs| qs[r % qs.len()]))
        .collect()
}

/// `--search-concurrency` searchers for `--search-seconds`, each taking the queries of `picks`
/// in turn (each from its own place in the list), as user `k mod users`.
async fn timed_searches(
    ctx: &Ctx,
    users: &[User],
    bodies: &Arc<Vec<Bytes>>,
    queries: &[Query],
    picks: &[usize],
) -> Value {
    let a = &ctx.args;
    let conc = a.search_concurrency.max(1);
    let cpu = CpuMark::start(a.pid);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.search_seconds);
    let mut handles = Vec::with_capacity(conc);
    for k in 0..conc {
        handles.push(tokio::spawn(searcher(
            Arc::clone(&ctx.api),
            users[k % users.len()].auth.clone(),
            Arc::clone(bodies),
            picks.to_vec(),
            k * picks.len() / conc,
            end,
        )));
    }
    let mut samples = Vec::new();
    for h in handles {
        match h.await {
            Ok(s) => samples.extend(s),
            Err(e) => crate::log!("search: a searcher failed: {e}"),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    summarize(&samples, queries, elapsed, cpu.report(a.pid))
}

async fn searcher(
    api: Arc<Api>,
    auth: HeaderValue,
    bodies: Arc<Vec<Bytes>>,
    picks: Vec<usize>,
    first: usize,
    end: Instant,
) -> Vec<Sample> {
    let mut out = Vec::with_capacity(4096);
    let mut k = first;
    while Instant::now() < end {
        let query = picks[k % picks.len()];
        k += 1;
        let t0 = Instant::now();
        let r = post(&api, &auth, &bodies[query]).await;
        let at = r.as_ref().map_or_else(|_| Instant::now(), |r| r.1);
        let us = u32::try_from(at.saturating_duration_since(t0).as_micros()).unwrap_or(u32::MAX);
        let failed = r.is_err();
        out.push(Sample {
            query,
            us,
            found: r.ok().map(|r| r.0),
        });
        if failed {
            // A failing server must not turn the loop into a busy spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    out
}

/// Rate, latency and hits of one phase, with the per-kind latency for a mixed phase, and the
/// answers whose `count` differed from the generator's.
fn summarize(samples: &[Sample], queries: &[Query], elapsed: f64, cpu: Value) -> Value {
    let ok: Vec<(&Sample, &Found)> = samples
        .iter()
        .filter_map(|s| s.found.as_ref().map(|f| (s, f)))
        .collect();
    let errors = samples.len() - ok.len();
    let latency_of = |kind: Option<Kind>| {
        let mut v: Vec<f64> = ok
            .iter()
            .filter(|(s, _)| kind.is_none_or(|k| queries[s.query].kind == k))
            .map(|(s, _)| f64::from(s.us) / 1000.0)
            .collect();
        Summary::of(&mut v)
    };
    let latency = latency_of(None);
    let mut counts: Vec<f64> = ok.iter().map(|(_, f)| f.count as f64).collect();
    let mut results: Vec<f64> = ok.iter().map(|(_, f)| f.results as f64).collect();
    let mut mismatches: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
    for (s, f) in &ok {
        let want = queries[s.query].expected;
        if f.count != want {
            mismatches.entry(s.query).or_insert((f.count, want));
        }
    }
    let mut by_kind = serde_json::Map::new();
    for kind in Kind::ALL {
        let l = latency_of(Some(kind));
        if l.n > 0 {
            by_kind.insert(
                kind.name().into(),
                json!({"n": l.n, "p50": l.p50, "p99": l.p99}),
            );
        }
    }
    let count = Summary::of(&mut counts);
    let qps = rate(ok.len(), elapsed);
    crate::log!(
        "search:   {} queries/s, {}; count p50 {}",
        qps.unwrap_or(0.0),
        latency.brief(),
        count.p50.unwrap_or(0.0)
    );
    json!({
        "queries": ok.len(),
        "errors": errors,
        "elapsed_s": round3(elapsed),
        "queries_per_s": qps,
        "latency_ms": latency,
        "count": count,
        "results": Summary::of(&mut results),
        "count_mismatches": mismatches
            .iter()
            .map(|(q, (got, want))| json!({"query": q, "count": got, "expected": want}))
            .collect::<Vec<_>>(),
        "by_kind": by_kind,
        "cpu": cpu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_distinct_and_end_in_x() {
        let v = Vocab::new(20_000);
        let set: std::collections::HashSet<&String> = v.words.iter().collect();
        assert_eq!(set.len(), 20_000);
        assert!(v.words.iter().all(|w| w.len() == 7 && w.ends_with('x')));
        assert!(
            v.words
                .iter()
                .all(|w| w.bytes().all(|b| b.is_ascii_lowercase()))
        );
    }

    #[test]
    fn bodies_are_deterministic_and_zipf_shaped() {
        let v = Vocab::new(20_000);
        assert_eq!(v.body(7), v.body(7));
        assert_ne!(v.body(7), v.body(8));
        let mut words = Vec::new();
        let (mut top, mut total) = (0, 0);
        for i in 0..10_000 {
            v.ranks(i, &mut words);
            assert!((5..=20).contains(&words.len()));
            top += words.iter().filter(|&&r| r == 0).count();
            total += words.len();
        }
        // Rank 1 of 20,000 with s = 1 has weight 1 / H(20000) ≈ 9.4 %.
        let share = top as f64 / total as f64;
        assert!((0.085..0.105).contains(&share), "{share}");
        assert_eq!(v.draw(0.0), 0);
        assert_eq!(v.draw(0.999_999_999), 19_999);
    }

    #[test]
    fn queries_count_what_they_match() {
        let v = Vocab::new(1000);
        let shape = Shape { rooms: 3, users: 2 };
        let qs = query_set(&v, 2);
        assert!(Kind::ALL.iter().all(|k| qs.iter().any(|q| q.kind == *k)));
        let all = expected_counts(&v, &qs, 500, shape, &[]);
        let less = expected_counts(&v, &qs, 500, shape, &[0, 1, 2]);
        assert!(all.iter().zip(&less).all(|(a, b)| a >= b));
        let common = qs.iter().position(|q| q.kind == Kind::Common).unwrap();
        assert!(all[common] > 250, "{}", all[common]);
        // The two senders' counts of a word add up to its count.
        let of = |kind: Kind, s: Option<usize>| {
            qs.iter()
                .position(|q| q.kind == kind && q.ranks == [0] && q.sender == s)
                .unwrap()
        };
        let split = all[of(Kind::CommonSender, Some(0))] + all[of(Kind::CommonSender, Some(1))];
        assert_eq!(split, all[of(Kind::Common, None)]);
        // The mix takes every kind equally often.
        let mix = mixed_picks(&qs);
        for k in Kind::ALL {
            let n = mix.iter().filter(|&&i| qs[i].kind == k).count();
            assert_eq!(n * Kind::ALL.len(), mix.len());
        }
    }
}
