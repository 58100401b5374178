//! The Matrix Client-Server API over HTTP.
//!
//! Modules follow the spec's sections; each endpoint handler translates a ruma request type into
//! calls on `hearth_core` and the result back into the ruma response type. The plumbing that all
//! handlers share lives in [`extract`] (request parsing and authentication), [`error`] (Matrix
//! error responses) and [`routes`] (registering a ruma endpoint's every path with axum).

pub mod account;
mod account_data;
mod admin;
pub mod config;
mod directory;
pub mod error;
pub mod extract;
mod filter;
mod keys;
mod legacy;
mod media;
mod presence;
mod profile;
mod push;
pub mod rate_limit;
mod receipts;
pub mod rooms;
mod routes;
mod search;
mod server;
mod sliding_sync;
mod sync;
mod to_device;
mod typing;
mod uia;
mod voip;
mod websocket;

use std::sync::Arc;

pub use config::{ApiConfig, RegistrationMode};
use hearth_core::Core;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub core: Arc<Core>,
    pub config: Arc<ApiConfig>,
    pub(crate) limiter: Arc<rate_limit::RateLimiter>,
    pub(crate) uia: Arc<uia::UiaSessions>,
    /// Stored filters by (user, id): immutable, so cached.
    pub(crate) filters: Arc<FilterCache>,
}

pub(crate) type FilterCache = parking_lot::Mutex<
    lru::LruCache<(ruma::OwnedUserId, u64), ruma::api::client::filter::FilterDefinition>,
>;

impl AppState {
    pub fn new(core: Arc<Core>, config: ApiConfig) -> Self {
        let limiter = Arc::new(rate_limit::RateLimiter::new(
            config.rate_limit,
            &config.action_limits,
        ));
        Self {
            core,
            config: Arc::new(config),
            limiter,
            uia: Arc::new(uia::UiaSessions::default()),
            filters: Arc::new(parking_lot::Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(10_000).expect("non-zero"),
            ))),
        }
    }

    /// Takes one `action` from the allowance of each key (all must allow it).
    pub(crate) fn limit(
        &self,
        action: rate_limit::Action,
        keys: impl IntoIterator<Item = rate_limit::Key>,
    ) -> Result<(), error::ApiError> {
        keys.into_iter()
            .try_for_each(|key| self.limiter.check_action(action, key))
    }
}

pub use routes::router;
