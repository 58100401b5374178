//! Outbound federation requests: resolve the destination, sign with X-Matrix, send over TLS.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use ruma::ServerName;
use ruma::api::federation::authentication::{ServerSignaturesInput, XMatrix};
use serde_json::Value;

use crate::FederationConfig;
use crate::discovery::Resolver;
use crate::error::FedError;
use crate::outbound::{DenyingResolver, IpRanges};
use hearth_core::keys::ServerKeys;

pub struct Client {
    http: reqwest::Client,
    resolver: Arc<Resolver>,
    keys: Arc<ServerKeys>,
    deny: Arc<IpRanges>,
}

impl Client {
    pub fn new(keys: Arc<ServerKeys>, config: &FederationConfig) -> Result<Self, String> {
        let resolver = Arc::new(Resolver::default());
        let deny = Arc::new(config.ip_range_denylist.clone());
        let mut builder = reqwest::Client::builder()
            .dns_resolver(Arc::new(DenyingResolver::with_overrides(
                deny.clone(),
                resolver.clone(),
            )))
            // A redirect to a denied IP literal stops (names are checked as they resolve).
            .redirect(reqwest::redirect::Policy::custom({
                let deny = deny.clone();
                move |attempt| {
                    if attempt.previous().len() >= 5
                        || deny.check_url(attempt.url().as_str()).is_err()
                    {
                        attempt.stop()
                    } else {
                        attempt.follow()
                    }
                }
            }))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("Hearth/", env!("CARGO_PKG_VERSION")));
        if !config.verify_tls {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        if let Some(pem) = &config.extra_ca_pem {
            let cert =
                reqwest::Certificate::from_pem(pem).map_err(|e| format!("federation CA: {e}"))?;
            builder = builder.tls_certs_merge([cert]);
        }
        let http = builder
            .build()
            .map_err(|e| format!("federation client: {e}"))?;
        Ok(Self {
            http,
            resolver,
            keys,
            deny,
        })
    }

    /// An unauthenticated GET (key documents).
    pub async fn get_unsigned(
        &self,
        destination: &ServerName,
        path: &str,
    ) -> Result<Value, FedError> {
        let base = self.destination(destination).await?;
        let resp = self
            .http
            .get(format!("{}{path}", base.base_url))
            .send()
            .await
            .map_err(|e| FedError::peer(format!("{destination}: {e}")))?;
        Self::json(destination, resp).await
    }

    /// A request signed with this server's key, as every federation request must be.
    pub async fn request(
        &self,
        destination: &ServerName,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<Value, FedError> {
        let resp = self
            .signed(destination, method, path_and_query, body, None)
            .await?;
        Self::json(destination, resp).await
    }

    /// A signed GET whose answer is read as it arrives (media): the response itself, once its
    /// status says success.
    pub async fn get_streaming(
        &self,
        destination: &ServerName,
        path_and_query: &str,
        timeout: Duration,
    ) -> Result<reqwest::Response, FedError> {
        let resp = self
            .signed(
                destination,
                Method::GET,
                path_and_query,
                None,
                Some(timeout),
            )
            .await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Self::json(destination, resp)
            .await
            .map(|_| unreachable!("an error status"))
    }

    /// An unsigned GET of any URL (a media redirect's `Location`).
    pub async fn get_url(
        &self,
        url: &str,
        timeout: Duration,
    ) -> Result<reqwest::Response, FedError> {
        self.deny.check_url(url).map_err(FedError::peer)?;
        self.http
            .get(url)
            .timeout(timeout)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| FedError::peer(format!("{url}: {e}")))
    }

    async fn signed(
        &self,
        destination: &ServerName,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, FedError> {
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| FedError::bad_json(e.to_string()))?,
            None => Vec::new(),
        };
        let base = self.destination(destination).await?;
        let request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path_and_query}", base.base_url))
            .body(bytes)
            .map_err(|e| FedError::bad_json(e.to_string()))?;
        let input = ServerSignaturesInput::new(
            self.keys.server_name.clone(),
            destination.to_owned(),
            &self.keys.key_pair,
        );
        let auth = XMatrix::try_from_http_request(&request, input)
            .map_err(|e| FedError::bad_json(format!("signing request: {e}")))?;
        let (mut parts, bytes) = request.into_parts();
        parts
            .headers
            .insert(http::header::AUTHORIZATION, (&auth).into());
        if !bytes.is_empty() {
            parts.headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
        }
        let mut request = reqwest::Request::try_from(http::Request::from_parts(parts, bytes))
            .map_err(|e| FedError::peer(e.to_string()))?;
        if let Some(t) = timeout {
            *request.timeout_mut() = Some(t);
        }
        self.http
            .execute(request)
            .await
            .map_err(|e| FedError::peer(format!("{destination}: {e}")))
    }

    /// Where to send a request for `server`, if this server may dial it at all.
    async fn destination(
        &self,
        server: &ServerName,
    ) -> Result<crate::discovery::Destination, FedError> {
        if !crate::discovery::dialable(server.as_str()) {
            return Err(FedError::peer(format!(
                "{server} is not a server name to dial"
            )));
        }
        let base = self.resolver.resolve(&self.http, server.as_str()).await;
        self.deny
            .check_url(&base.base_url)
            .map_err(|e| FedError::peer(format!("{server}: {e}")))?;
        Ok(base)
    }

    async fn json(destination: &ServerName, resp: reqwest::Response) -> Result<Value, FedError> {
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| FedError::peer(format!("{destination}: {e}")))?;
        let parsed = serde_json::from_slice::<Value>(&bytes);
        if status.is_success() {
            return parsed.map_err(|e| FedError::peer(format!("{destination}: {e}")));
        }
        // An error answer need not be JSON (a 404 of a server without the endpoint).
        let body = parsed.unwrap_or(Value::Null);
        let errcode = match body["errcode"].as_str() {
            Some("M_NOT_FOUND") => "M_NOT_FOUND",
            Some("M_FORBIDDEN") => "M_FORBIDDEN",
            Some("M_UNRECOGNIZED") => "M_UNRECOGNIZED",
            None if status == axum::http::StatusCode::NOT_FOUND => "M_UNRECOGNIZED",
            _ => "M_UNKNOWN",
        };
        let message = body["error"]
            .as_str()
            .unwrap_or("remote server error")
            .to_owned();
        let mapped = match errcode {
            "M_NOT_FOUND" | "M_UNRECOGNIZED" => axum::http::StatusCode::NOT_FOUND,
            "M_FORBIDDEN" => axum::http::StatusCode::FORBIDDEN,
            _ => axum::http::StatusCode::BAD_GATEWAY,
        };
        let mut e = FedError::new(mapped, errcode, format!("{destination}: {message}"));
        e.remote = Some((status, body));
        Err(e)
    }

    /// Whether an error answer says the peer does not have the endpoint (a server that serves
    /// only an older version of it): a 404 or 405 with no errcode or `M_UNRECOGNIZED`, as
    /// Synapse tells them.
    pub fn is_unknown_endpoint(e: &FedError) -> bool {
        let Some((status, body)) = &e.remote else {
            return false;
        };
        let errcode = body.get("errcode").and_then(Value::as_str);
        matches!(status.as_u16(), 404 | 405 | 400)
            && (errcode == Some("M_UNRECOGNIZED") || (errcode.is_none() && status.as_u16() != 400))
    }
}
