//! Where this server may connect. A server name, a pusher's URL or a media redirect comes from
//! outside; without a check, anyone could make the server dial its own loopback, the private
//! network it sits in, or a cloud metadata address. Every outbound client (federation, push
//! gateways) resolves names through [`DenyingResolver`], which drops denied addresses, and checks
//! IP literals with [`IpRanges::check_url`] before sending.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Synapse's recommended `ip_range_blacklist`: loopback, private, link-local, shared, multicast
/// and documentation ranges.
pub const DEFAULT_DENYLIST: &str = "127.0.0.0/8, 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, \
     100.64.0.0/10, 192.0.0.0/24, 169.254.0.0/16, 192.88.99.0/24, 198.18.0.0/15, 192.0.2.0/24, \
     198.51.100.0/24, 203.0.113.0/24, 224.0.0.0/4, 0.0.0.0/8, 255.255.255.255/32, ::1/128, \
     ::/128, fe80::/10, fc00::/7, 2001:db8::/32, ff00::/8, fec0::/10";

/// A set of CIDR ranges.
#[derive(Clone, Debug, Default)]
pub struct IpRanges(Vec<(IpAddr, u8)>);

impl IpRanges {
    /// Comma-separated CIDRs (`10.0.0.0/8, ::1/128`); a bare address is a range of one.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut ranges = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (addr, bits) = match item.split_once('/') {
                Some((a, b)) => (a, Some(b)),
                None => (item, None),
            };
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| format!("{item:?} is not an IP range"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                Some(b) => b
                    .parse::<u8>()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| format!("{item:?} has a bad prefix length"))?,
                None => max,
            };
            ranges.push((addr, bits));
        }
        Ok(Self(ranges))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 address written as IPv6 (::ffff:127.0.0.1) is that IPv4 address.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|(net, bits)| match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_matches(
                u128::from(u32::from(*n)) << 96,
                u128::from(u32::from(a)) << 96,
                *bits,
            ),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_matches(u128::from(*n), u128::from(a), *bits),
            _ => false,
        })
    }

    /// Refuses a URL whose host is a denied IP literal (names are checked as they resolve).
    pub fn check_url(&self, url: &str) -> Result<(), String> {
        let url = reqwest::Url::parse(url).map_err(|e| format!("bad URL: {e}"))?;
        let host = url.host_str().unwrap_or_default();
        let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        else {
            return Ok(());
        };
        if self.contains(ip) {
            return Err(format!("{ip} is in a denied IP range"));
        }
        Ok(())
    }
}

fn prefix_matches(net: u128, addr: u128, bits: u8) -> bool {
    if bits == 0 {
        return true;
    }
    let mask = u128::MAX << (128 - u32::from(bits));
    net & mask == addr & mask
}

/// reqwest's DNS hook for outbound clients: the system resolver (or `overrides`, for names that
/// SRV records point elsewhere), minus denied addresses. A name that resolves only to denied
/// addresses fails to connect.
pub struct DenyingResolver {
    deny: Arc<IpRanges>,
    overrides: Option<Arc<crate::discovery::Resolver>>,
}

impl DenyingResolver {
    pub fn new(deny: Arc<IpRanges>) -> Self {
        Self {
            deny,
            overrides: None,
        }
    }

    pub(crate) fn with_overrides(
        deny: Arc<IpRanges>,
        overrides: Arc<crate::discovery::Resolver>,
    ) -> Self {
        Self {
            deny,
            overrides: Some(overrides),
        }
    }
}

impl Resolve for DenyingResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let deny = self.deny.clone();
        let overrides = self.overrides.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = match overrides.and_then(|r| r.override_for(&host)) {
                Some(addrs) => addrs,
                None => tokio::net::lookup_host((host.as_str(), 0)).await?.collect(),
            };
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| !deny.contains(a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(format!("{host} resolves to no address this server may dial").into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn the_default_list_denies_local_and_private_addresses() {
        let deny = IpRanges::parse(DEFAULT_DENYLIST).expect("parses");
        for ip in [
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.31.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(deny.contains(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "172.32.0.1", "2606:4700::1111", "::ffff:1.1.1.1"] {
            assert!(!deny.contains(ip.parse().unwrap()), "{ip}");
        }
        assert!(deny.check_url("https://127.0.0.1:8448/x").is_err());
        assert!(deny.check_url("https://[::1]:8448/x").is_err());
        assert!(deny.check_url("https://example.org/x").is_ok());
    }

    #[test]
    fn ranges_parse_strictly() {
        assert!(IpRanges::parse("").expect("empty").0.is_empty());
        assert!(
            IpRanges::parse("1.2.3.4")
                .expect("one")
                .contains(Ipv4Addr::new(1, 2, 3, 4).into())
        );
        assert!(
            IpRanges::parse("::/0")
                .expect("all")
                .contains(Ipv6Addr::LOCALHOST.into())
        );
        assert!(IpRanges::parse("10.0.0.0/33").is_err());
        assert!(IpRanges::parse("nonsense").is_err());
    }
}
