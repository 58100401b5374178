//! Registration through the spec's user-interactive auth, and a pool that hands every scenario
//! users of its own (so one scenario's rooms never show up in another's syncs).

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use futures_util::StreamExt;
use reqwest::Method;
use reqwest::header::HeaderValue;
use serde_json::{Value, json};

use crate::BoxError;
use crate::api::{Api, bearer};
use crate::stats::{Summary, ms, rate, round3};

#[derive(Debug, Clone)]
pub struct User {
    pub user_id: String,
    pub token: String,
    pub auth: HeaderValue,
}

/// Registers `username`, following the UIA stages the server offers (dummy, and the
/// registration token when we have one), as chatbench does.
pub async fn register(
    api: &Api,
    username: &str,
    password: &str,
    reg_token: Option<&str>,
) -> Result<User, BoxError> {
    let mut body = json!({
        "username": username,
        "password": password,
        "initial_device_display_name": "hearth-bench",
        "inhibit_login": false,
    });
    let mut supported = HashSet::from(["m.login.dummy"]);
    if reg_token.is_some() {
        supported.insert("m.login.registration_token");
    }
    for _ in 0..6 {
        let b = bytes::Bytes::from(serde_json::to_vec(&body)?);
        let r = api
            .call(
                Method::POST,
                "/register?kind=user",
                None,
                Some(b),
                None,
                &[200, 401],
            )
            .await?;
        let v: Value = r.json("POST /register")?;
        if r.status == 200 {
            let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
            let (Some(user_id), Some(token)) = (field("user_id"), field("access_token")) else {
                return Err(format!("registration of {username} returned no token: {v}").into());
            };
            return Ok(User {
                auth: bearer(&token),
                user_id,
                token,
            });
        }
        let completed: HashSet<&str> = v
            .get("completed")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let flows: Vec<Vec<&str>> = v
            .get("flows")
            .and_then(Value::as_array)
            .map(|fs| {
                fs.iter()
                    .map(|f| {
                        f.get("stages")
                            .and_then(Value::as_array)
                            .map(|s| s.iter().filter_map(Value::as_str).collect())
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .unwrap_or_default();
        let Some(flow) = flows
            .iter()
            .find(|f| f.iter().all(|s| supported.contains(s)))
        else {
            return Err(format!("no supported registration flow among {flows:?}").into());
        };
        let stage = flow
            .iter()
            .find(|s| !completed.contains(*s))
            .or(flow.last())
            .copied()
            .unwrap_or("m.login.dummy");
        let mut auth = json!({ "type": stage });
        if let Some(s) = v.get("session") {
            auth["session"] = s.clone();
        }
        if stage == "m.login.registration_token" {
            auth["token"] = json!(reg_token);
        }
        body["auth"] = auth;
    }
    Err(format!("registration of {username} did not finish").into())
}

pub struct UserPool {
    prefix: String,
    password: String,
    reg_token: Option<String>,
    concurrency: usize,
    counter: AtomicUsize,
    latencies: Mutex<Vec<f64>>,
    elapsed_s: Mutex<f64>,
}

impl UserPool {
    pub fn new(
        prefix: String,
        password: String,
        reg_token: Option<String>,
        concurrency: usize,
    ) -> Self {
        UserPool {
            prefix,
            password,
            reg_token,
            concurrency: concurrency.max(1),
            counter: AtomicUsize::new(0),
            latencies: Mutex::new(Vec::new()),
            elapsed_s: Mutex::new(0.0),
        }
    }

    /// Registers `n` fresh users with bounded concurrency (Synapse hashes passwords with bcrypt,
    /// Hearth with argon2 on two threads: an unbounded burst only queues up).
    pub async fn take(&self, api: &Api, n: usize) -> Result<Vec<User>, BoxError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        if n > 8 {
            crate::log!("registering {n} users (concurrency {})", self.concurrency);
        }
        let t0 = Instant::now();
        let results: Vec<Result<(User, f64), BoxError>> = futures_util::stream::iter(0..n)
            .map(|_| async move {
                let k = self.counter.fetch_add(1, Relaxed) + 1;
                let name = format!("{}_{k:05}", self.prefix);
                let t = Instant::now();
                let r = register(api, &name, &self.password, self.reg_token.as_deref()).await;
                r.map(|u| (u, ms(t.elapsed())))
            })
            .buffered(self.concurrency)
            .collect()
            .await;
        *self.elapsed_s.lock().unwrap() += t0.elapsed().as_secs_f64();
        let mut users = Vec::with_capacity(n);
        let mut errors = Vec::new();
        for r in results {
            match r {
                Ok((u, lat)) => {
                    self.latencies.lock().unwrap().push(lat);
                    users.push(u);
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        if let Some(e) = errors.first() {
            return Err(format!("{} of {n} registrations failed, e.g. {e}", errors.len()).into());
        }
        Ok(users)
    }

    pub fn report(&self) -> Value {
        let mut lats = self.latencies.lock().unwrap().clone();
        let el = *self.elapsed_s.lock().unwrap();
        json!({
            "users": lats.len(),
            "concurrency": self.concurrency,
            "elapsed_s": round3(el),
            "users_per_s": rate(lats.len(), el),
            "latency_ms": Summary::of(&mut lats),
        })
    }
}
