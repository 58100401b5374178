//! The HTTP client for push gateways (spec: Push Gateway API), the core's
//! [`PushGateway`]. It lives in the binary because it is nothing but wiring: the core decides
//! what to send and when to retry; this posts JSON and reads `rejected`.

use std::sync::Arc;
use std::time::Duration;

use hearth_core::push::gateway::{GatewayError, GatewayFuture, PushGateway};
use hearth_federation::outbound::{DenyingResolver, IpRanges};

pub struct HttpPushGateway {
    client: reqwest::Client,
    /// A pusher's URL is the user's to choose: it must not reach what the server can reach.
    deny: Arc<IpRanges>,
}

impl HttpPushGateway {
    pub fn new(deny: IpRanges, extra_ca_pem: Option<Vec<u8>>) -> Result<Self, String> {
        let deny = Arc::new(deny);
        let mut builder = reqwest::Client::builder();
        if let Some(pem) = extra_ca_pem {
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| format!("push CA: {e}"))?;
            builder = builder.tls_certs_merge([cert]);
        }
        let client = builder
            .dns_resolver(Arc::new(DenyingResolver::new(deny.clone())))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("Hearth/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("push gateway client: {e}"))?;
        Ok(Self { client, deny })
    }
}

impl PushGateway for HttpPushGateway {
    fn notify<'a>(&'a self, url: &'a str, body: serde_json::Value) -> GatewayFuture<'a> {
        Box::pin(async move {
            let unavailable =
                |e: reqwest::Error| GatewayError::Unavailable(e.without_url().to_string());
            self.deny
                .check_url(url)
                .map_err(GatewayError::Unavailable)?;
            let resp = self
                .client
                .post(url)
                .json(&body)
                .send()
                .await
                .map_err(unavailable)?;
            let status = resp.status();
            if !status.is_success() {
                return Err(GatewayError::Unavailable(format!("HTTP {status}")));
            }
            // A 2xx without a readable body still delivered the notification.
            let answer: serde_json::Value = resp.json().await.unwrap_or_default();
            Ok(answer["rejected"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect())
        })
    }
}
