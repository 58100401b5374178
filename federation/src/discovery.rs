//! Server name resolution, in the order the spec gives: IP literal, explicit port,
//! `/.well-known/matrix/server` delegation, SRV `_matrix-fed._tcp` then the deprecated
//! `_matrix._tcp`, then port 8448. Results are cached.
//!
//! A request always goes to `https://<name>:<port>` so that TLS checks the certificate against
//! the (delegated) server name, as the spec asks; where SRV points elsewhere, [`Resolver`] maps
//! that name to the SRV target's addresses.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use parking_lot::RwLock;

const CACHE_TTL: Duration = Duration::from_secs(3600);
const DEFAULT_PORT: u16 = 8448;

/// Where to send a request for a server name.
#[derive(Clone, Debug)]
pub struct Destination {
    /// `https://host:port`, with `host` the name TLS must verify.
    pub base_url: String,
}

#[derive(Default)]
pub struct Resolver {
    /// name → addresses, for names whose SRV record points to another host.
    overrides: RwLock<HashMap<String, Vec<SocketAddr>>>,
    cache: RwLock<HashMap<String, (Instant, Destination)>>,
    dns: std::sync::OnceLock<Option<TokioResolver>>,
}

fn split_port(name: &str) -> (&str, Option<u16>) {
    // An IPv6 literal is bracketed: [::1]:8448.
    if let Some(rest) = name.strip_prefix('[') {
        let (host, tail) = rest.split_once(']').unwrap_or((rest, ""));
        return (host, tail.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match name.rsplit_once(':') {
        Some((host, port)) => match port.parse() {
            Ok(p) => (host, Some(p)),
            Err(_) => (name, None),
        },
        None => (name, None),
    }
}

fn url(host: &str, port: u16) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => format!("https://[{host}]:{port}"),
        _ => format!("https://{host}:{port}"),
    }
}

/// Whether `name` can be dialled at all: a host of DNS labels (1 to 63 characters of letters,
/// digits and `-`, 255 in all) or an IP literal, and a port if any. ruma's `ServerName` is laxer
/// (`a..b` passes), and every name is checked here before this server asks DNS or connects.
pub fn dialable(name: &str) -> bool {
    if name.len() > 255 {
        return false;
    }
    let (host, port) = split_port(name);
    if name.contains(':') && port.is_none() && !name.starts_with('[') {
        return false;
    }
    if port == Some(0) {
        return false;
    }
    if let Some(rest) = name.strip_prefix('[') {
        let Some((_, tail)) = rest.split_once(']') else {
            return false;
        };
        return host.parse::<std::net::Ipv6Addr>().is_ok() && (tail.is_empty() || port.is_some());
    }
    host.parse::<std::net::Ipv4Addr>().is_ok()
        || host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

impl Resolver {
    /// The addresses SRV pointed a name to, if it has such.
    pub fn override_for(&self, host: &str) -> Option<Vec<SocketAddr>> {
        self.overrides.read().get(host).cloned()
    }

    fn dns(&self) -> Option<&TokioResolver> {
        self.dns
            .get_or_init(|| match TokioResolver::builder_tokio().and_then(|b| b.build()) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, "no system DNS configuration; SRV lookups are off");
                    None
                }
            })
            .as_ref()
    }

    pub async fn resolve(&self, http: &reqwest::Client, server_name: &str) -> Destination {
        if let Some((at, d)) = self.cache.read().get(server_name)
            && at.elapsed() < CACHE_TTL
        {
            return d.clone();
        }
        let d = self.resolve_uncached(http, server_name).await;
        self.cache
            .write()
            .insert(server_name.to_owned(), (Instant::now(), d.clone()));
        d
    }

    async fn resolve_uncached(&self, http: &reqwest::Client, server_name: &str) -> Destination {
        let (host, port) = split_port(server_name);
        if host.parse::<IpAddr>().is_ok() || port.is_some() {
            return Destination {
                base_url: url(host, port.unwrap_or(DEFAULT_PORT)),
            };
        }
        if let Some(delegated) = self.well_known(http, host).await {
            let (dhost, dport) = split_port(&delegated);
            if dhost.parse::<IpAddr>().is_ok() || dport.is_some() {
                return Destination {
                    base_url: url(dhost, dport.unwrap_or(DEFAULT_PORT)),
                };
            }
            return self.srv_or_default(dhost).await;
        }
        self.srv_or_default(host).await
    }

    async fn well_known(&self, http: &reqwest::Client, host: &str) -> Option<String> {
        let resp = http
            .get(format!("https://{host}/.well-known/matrix/server"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let body: serde_json::Value = resp.json().await.ok()?;
        body["m.server"].as_str().map(str::to_owned)
    }

    async fn srv_or_default(&self, host: &str) -> Destination {
        if let Some(dns) = self.dns() {
            for service in ["_matrix-fed._tcp", "_matrix._tcp"] {
                let Ok(records) = dns.srv_lookup(format!("{service}.{host}.")).await else {
                    continue;
                };
                let Some(srv) = records.answers().iter().find_map(|r| match &r.data {
                    hickory_resolver::proto::rr::RData::SRV(s) => Some(s.clone()),
                    _ => None,
                }) else {
                    continue;
                };
                let target = srv.target.to_utf8().trim_end_matches('.').to_owned();
                if let Ok(addrs) = tokio::net::lookup_host((target.as_str(), srv.port)).await {
                    self.overrides
                        .write()
                        .insert(host.to_owned(), addrs.collect());
                }
                return Destination {
                    base_url: url(host, srv.port),
                };
            }
        }
        Destination {
            base_url: url(host, DEFAULT_PORT),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_literals() {
        assert_eq!(split_port("example.org"), ("example.org", None));
        assert_eq!(split_port("localhost:8448"), ("localhost", Some(8448)));
        assert_eq!(split_port("[::1]:99"), ("::1", Some(99)));
        assert_eq!(split_port("1.2.3.4"), ("1.2.3.4", None));
        assert_eq!(url("::1", 8448), "https://[::1]:8448");
    }

    #[test]
    fn dialable_names() {
        for ok in [
            "example.org",
            "matrix.example.org:8448",
            "1.2.3.4",
            "[::1]:99",
            "localhost",
        ] {
            assert!(dialable(ok), "{ok}");
        }
        let long = "a".repeat(60_000);
        for bad in [
            "a..b",
            ".a",
            "a.",
            "-a.org",
            "a_b.org",
            "a:b",
            "a:0",
            "[::1",
            long.as_str(),
        ] {
            assert!(!dialable(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn explicit_ports_and_ip_literals_skip_lookups() {
        let r = Resolver::default();
        let http = reqwest::Client::new();
        assert_eq!(
            r.resolve(&http, "localhost:9999").await.base_url,
            "https://localhost:9999"
        );
        assert_eq!(
            r.resolve(&http, "127.0.0.1").await.base_url,
            "https://127.0.0.1:8448"
        );
    }
}
