//! What the core asks of a push gateway. The binary implements [`PushGateway`] over HTTP, so the
//! core never depends on an HTTP client.

use std::future::Future;
use std::pin::Pin;

/// Why a notification did not reach a gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Unreachable, timed out, or answered with an error status: try again later.
    #[error("push gateway unavailable: {0}")]
    Unavailable(String),
}

pub type GatewayFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<String>, GatewayError>> + Send + 'a>>;

pub trait PushGateway: Send + Sync + 'static {
    /// `POST {url}` with `body` (`{"notification": …}`, spec: Push Gateway API
    /// `/_matrix/push/v1/notify`). Resolves to the pushkeys the gateway rejected.
    fn notify<'a>(&'a self, url: &'a str, body: serde_json::Value) -> GatewayFuture<'a>;
}
