//! Per-user and per-IP request rate limits (GCRA, through `governor`).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use serde_json::json;

use crate::config::RateLimit;
use crate::error::ApiError;

#[derive(Clone, Hash, PartialEq, Eq)]
pub enum Key {
    User(String),
    Ip(IpAddr),
}

pub struct RateLimiter {
    inner: Option<DefaultKeyedRateLimiter<Key>>,
}

impl RateLimiter {
    pub fn new(config: Option<RateLimit>) -> Self {
        let inner = config.and_then(|c| {
            let period = Duration::from_secs_f64(1.0 / c.per_second.max(0.001));
            let burst = NonZeroU32::new(c.burst.max(1))?;
            Some(DefaultKeyedRateLimiter::keyed(
                Quota::with_period(period)?.allow_burst(burst),
            ))
        });
        Self { inner }
    }

    pub fn check(&self, key: Key) -> Result<(), ApiError> {
        let Some(limiter) = &self.inner else {
            return Ok(());
        };
        if limiter.len() > 100_000 {
            limiter.retain_recent();
        }
        limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "M_LIMIT_EXCEEDED",
                "Too many requests",
            )
            .with("retry_after_ms", json!(wait.as_millis().max(1) as u64))
        })
    }
}
