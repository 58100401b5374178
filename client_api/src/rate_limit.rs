//! Request rate limits (GCRA, through `governor`): one general allowance per user (per IP before
//! login) for the endpoints the spec marks rate-limited, and one per [`Action`] for what Synapse
//! limits by default (its `rc_*` settings), each with Synapse's default allowance.

use std::collections::HashMap;
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
    Room(String),
}

/// What is limited on its own, whatever endpoint or transport it comes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Sending and redacting events, per user (`rc_message`).
    Message,
    /// `createRoom`, per user (`rc_room_creation`).
    RoomCreation,
    /// Joins, per user (`rc_joins.local`) and per room (`rc_joins_per_room`).
    Join,
    JoinPerRoom,
    /// Invites per room, per invitee and per inviter (`rc_invites`).
    InvitePerRoom,
    InvitePerUser,
    InvitePerIssuer,
    /// Registration requests, per address (`rc_registration`).
    Registration,
    /// Login requests per address (`rc_login.address`), and password attempts per account
    /// (`rc_login.failed_attempts`'s allowance, taken by every attempt: a right guess must not
    /// pass where a wrong one is refused).
    Login,
    LoginAccount,
    /// Media uploads, per user (`rc_media_create`).
    MediaCreate,
}

impl Action {
    pub const ALL: [Action; 11] = [
        Action::Message,
        Action::RoomCreation,
        Action::Join,
        Action::JoinPerRoom,
        Action::InvitePerRoom,
        Action::InvitePerUser,
        Action::InvitePerIssuer,
        Action::Registration,
        Action::Login,
        Action::LoginAccount,
        Action::MediaCreate,
    ];

    /// The action's name in the `rate_limits` setting (`"message=1/20"`).
    pub fn name(self) -> &'static str {
        match self {
            Action::Message => "message",
            Action::RoomCreation => "room_creation",
            Action::Join => "joins",
            Action::JoinPerRoom => "joins_per_room",
            Action::InvitePerRoom => "invites_per_room",
            Action::InvitePerUser => "invites_per_user",
            Action::InvitePerIssuer => "invites_per_issuer",
            Action::Registration => "registration",
            Action::Login => "login",
            Action::LoginAccount => "login_account",
            Action::MediaCreate => "media_create",
        }
    }

    /// Synapse's default allowance.
    pub fn default_allowance(self) -> RateLimit {
        let (per_second, burst) = match self {
            Action::Message => (0.2, 10),
            Action::RoomCreation => (0.016, 10),
            Action::Join => (0.1, 10),
            Action::JoinPerRoom => (1.0, 10),
            Action::InvitePerRoom => (0.3, 10),
            Action::InvitePerUser => (0.003, 5),
            Action::InvitePerIssuer => (0.3, 10),
            Action::Registration => (0.17, 3),
            Action::Login => (0.003, 5),
            Action::LoginAccount => (0.17, 3),
            Action::MediaCreate => (10.0, 50),
        };
        RateLimit { per_second, burst }
    }
}

type Limiter = DefaultKeyedRateLimiter<Key>;

fn limiter(allowance: RateLimit) -> Option<Limiter> {
    let period = Duration::from_secs_f64(1.0 / allowance.per_second.max(0.000_001));
    let burst = NonZeroU32::new(allowance.burst.max(1))?;
    Some(DefaultKeyedRateLimiter::keyed(
        Quota::with_period(period)?.allow_burst(burst),
    ))
}

pub struct RateLimiter {
    general: Option<Limiter>,
    actions: HashMap<Action, Limiter>,
}

impl RateLimiter {
    /// `None` turns every limit off; an action without an allowance is not limited.
    pub fn new(config: Option<RateLimit>, actions: &HashMap<Action, RateLimit>) -> Self {
        let Some(general) = config else {
            return Self {
                general: None,
                actions: HashMap::new(),
            };
        };
        Self {
            general: limiter(general),
            actions: actions
                .iter()
                .filter_map(|(a, allowance)| Some((*a, limiter(*allowance)?)))
                .collect(),
        }
    }

    /// The general allowance of the spec's rate-limited endpoints.
    pub fn check(&self, key: Key) -> Result<(), ApiError> {
        match &self.general {
            Some(l) => take(l, &key),
            None => Ok(()),
        }
    }

    /// One `action` by `key`.
    pub fn check_action(&self, action: Action, key: Key) -> Result<(), ApiError> {
        match self.actions.get(&action) {
            Some(l) => take(l, &key),
            None => Ok(()),
        }
    }
}

fn take(limiter: &Limiter, key: &Key) -> Result<(), ApiError> {
    if limiter.len() > 100_000 {
        limiter.retain_recent();
    }
    limiter.check_key(key).map_err(|not_until| {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "M_LIMIT_EXCEEDED",
            "Too many requests",
        )
        .with("retry_after_ms", json!(wait.as_millis().max(1) as u64))
    })
}
