//! Configuration: an optional TOML file, then `HEARTH_<KEY>` environment variables on top, then
//! built-in defaults. The defaults run a complete server on loopback with no file at all.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hearth_client_api::RegistrationMode;
use hearth_client_api::config::RateLimit;
use hearth_client_api::rate_limit::Action;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server_name: String,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Size of the database's page cache, in MiB.
    pub db_cache_mb: usize,
    /// `open`, `token` or `closed`. Unset: open on loopback, token elsewhere.
    pub registration: Option<RegistrationMode>,
    pub registration_token: Option<String>,
    pub max_request_bytes: usize,
    pub rate_limit: bool,
    pub rate_limit_per_second: f64,
    pub rate_limit_burst: u32,
    /// Each limited action's allowance where it differs from Synapse's default:
    /// `"message=1/20, joins=off"` (per second / burst).
    pub rate_limits: String,
    pub default_room_version: String,
    /// Base URL clients use to reach this server, for `/.well-known/matrix/client`.
    pub public_base_url: Option<String>,
    /// `text` or `json`.
    pub log_format: String,
    /// Address of the TLS federation listener; none serves federation on `listen` only (for a
    /// TLS-terminating proxy in front).
    pub federation_listen: Option<SocketAddr>,
    /// PEM certificate chain and private key of the federation listener.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Verify peers' TLS certificates (turn off only for test peers).
    pub federation_verify_tls: bool,
    /// An extra CA (PEM) to trust for peers, e.g. a test CA.
    pub federation_ca_file: Option<PathBuf>,
    /// Track and share presence at all.
    pub presence: bool,
    /// Seconds after a user's last client stopped syncing until they show as unavailable, and
    /// until they show as offline.
    pub presence_unavailable_secs: f64,
    pub presence_offline_secs: f64,
    /// Rooms with more joined members than this get no delivery receipts.
    pub delivery_receipts_max_members: usize,
    /// Seconds between WebSocket pings; a connection that answers none in two intervals is closed.
    pub websocket_ping_secs: f64,
    /// Largest accepted media upload, in bytes.
    pub max_upload_size: usize,
    /// Bytes of media each user may store in all; 0 for no quota.
    pub media_quota_bytes: usize,
    /// Serve the unauthenticated `/_matrix/media/v3/download` and `/thumbnail` (frozen by the spec
    /// since v1.11).
    pub legacy_unauthenticated_media: bool,
    /// Comma-separated user IDs allowed to use the admin API.
    pub admin_users: String,
    /// Seconds a push to a user with a connected client waits for it to mark the message read.
    pub push_online_grace_secs: f64,
    /// Pushes carry message content (unless a pusher asks for `event_id_only`).
    pub push_include_content: bool,
    /// The badge counts rooms with unread notifications, not notifications.
    pub push_group_unread_count_by_room: bool,
    /// Lifetime of access tokens issued with a refresh token (clients that ask for one).
    pub refreshable_access_token_lifetime_secs: f64,
    /// Seconds a connection may take to send a request's head (the first, or the next on a
    /// kept-alive connection) before it is closed.
    pub http_header_timeout_secs: f64,
    /// Seconds a request body may pause between two pieces before the request fails.
    pub http_body_timeout_secs: f64,
    /// Open connections one IP address may hold on each listener.
    pub max_connections_per_ip: usize,
    /// An extra CA (PEM) to trust for push gateways, e.g. a test gateway's.
    pub push_ca_file: Option<PathBuf>,
    /// Comma-separated CIDR ranges this server never connects to (federation, push gateways,
    /// remote media); unset: loopback, private and other special ranges; empty: none.
    pub ip_range_denylist: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server_name: "localhost".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8008)),
            data_dir: PathBuf::from("./hearth-data"),
            db_cache_mb: 128,
            registration: None,
            registration_token: None,
            max_request_bytes: 50 * 1024 * 1024,
            rate_limit: true,
            rate_limit_per_second: 10.0,
            rate_limit_burst: 50,
            rate_limits: String::new(),
            default_room_version: "12".into(),
            public_base_url: None,
            log_format: "text".into(),
            federation_listen: None,
            tls_cert: None,
            tls_key: None,
            federation_verify_tls: true,
            federation_ca_file: None,
            presence: true,
            presence_unavailable_secs: 30.0,
            presence_offline_secs: 300.0,
            delivery_receipts_max_members: 50,
            websocket_ping_secs: 30.0,
            max_upload_size: hearth_core::media::DEFAULT_MAX_UPLOAD_BYTES as usize,
            media_quota_bytes: 0,
            legacy_unauthenticated_media: false,
            admin_users: String::new(),
            push_online_grace_secs: 2.0,
            push_include_content: true,
            push_group_unread_count_by_room: true,
            refreshable_access_token_lifetime_secs: 300.0,
            http_header_timeout_secs: 30.0,
            http_body_timeout_secs: 60.0,
            max_connections_per_ip: 1000,
            ip_range_denylist: None,
            push_ca_file: None,
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Bool,
    Int,
    Float,
}

/// Every key, with the type its environment variable is read as.
const KEYS: &[(&str, Kind)] = &[
    ("server_name", Kind::Str),
    ("listen", Kind::Str),
    ("data_dir", Kind::Str),
    ("db_cache_mb", Kind::Int),
    ("registration", Kind::Str),
    ("registration_token", Kind::Str),
    ("max_request_bytes", Kind::Int),
    ("rate_limit", Kind::Bool),
    ("rate_limit_per_second", Kind::Float),
    ("rate_limit_burst", Kind::Int),
    ("rate_limits", Kind::Str),
    ("default_room_version", Kind::Str),
    ("public_base_url", Kind::Str),
    ("log_format", Kind::Str),
    ("federation_listen", Kind::Str),
    ("tls_cert", Kind::Str),
    ("tls_key", Kind::Str),
    ("federation_verify_tls", Kind::Bool),
    ("federation_ca_file", Kind::Str),
    ("presence", Kind::Bool),
    ("presence_unavailable_secs", Kind::Float),
    ("presence_offline_secs", Kind::Float),
    ("delivery_receipts_max_members", Kind::Int),
    ("websocket_ping_secs", Kind::Float),
    ("max_upload_size", Kind::Int),
    ("media_quota_bytes", Kind::Int),
    ("legacy_unauthenticated_media", Kind::Bool),
    ("admin_users", Kind::Str),
    ("push_online_grace_secs", Kind::Float),
    ("push_include_content", Kind::Bool),
    ("push_group_unread_count_by_room", Kind::Bool),
    ("refreshable_access_token_lifetime_secs", Kind::Float),
    ("http_header_timeout_secs", Kind::Float),
    ("http_body_timeout_secs", Kind::Float),
    ("max_connections_per_ip", Kind::Int),
    ("ip_range_denylist", Kind::Str),
    ("push_ca_file", Kind::Str),
];

impl Config {
    /// The allowance of each limited action: Synapse's defaults, with `rate_limits` on top.
    pub fn action_limits(&self) -> Result<HashMap<Action, RateLimit>, String> {
        let mut limits: HashMap<Action, RateLimit> = Action::ALL
            .into_iter()
            .map(|a| (a, a.default_allowance()))
            .collect();
        for item in self
            .rate_limits
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let bad = || format!("rate_limits: {item:?} is not name=per_second/burst or name=off");
            let (name, value) = item.split_once('=').ok_or_else(bad)?;
            let action = Action::ALL
                .into_iter()
                .find(|a| a.name() == name.trim())
                .ok_or_else(|| format!("rate_limits: no action named {:?}", name.trim()))?;
            if value.trim() == "off" {
                limits.remove(&action);
                continue;
            }
            let (rate, burst) = value.split_once('/').ok_or_else(bad)?;
            let per_second: f64 = rate.trim().parse().map_err(|_| bad())?;
            let burst: u32 = burst.trim().parse().map_err(|_| bad())?;
            if !(per_second.is_finite() && per_second > 0.0) || burst == 0 {
                return Err(bad());
            }
            limits.insert(action, RateLimit { per_second, burst });
        }
        Ok(limits)
    }

    /// Reads the file (if any) and the environment. Errors are one line, fit for a terminal.
    pub fn load(file: Option<&Path>) -> Result<Self, String> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                text.parse::<toml::Table>().map_err(|e| {
                    let line = e.span().map(|s| text[..s.start].lines().count().max(1));
                    let at = line.map(|l| format!(" line {l}")).unwrap_or_default();
                    format!("{}{at}: {}", path.display(), e.message())
                })?
            }
            None => toml::Table::new(),
        };
        for (key, kind) in KEYS {
            let var = format!("HEARTH_{}", key.to_uppercase());
            let Ok(raw) = std::env::var(&var) else {
                continue;
            };
            let value = match kind {
                Kind::Str => toml::Value::String(raw),
                Kind::Bool => toml::Value::Boolean(match raw.to_lowercase().as_str() {
                    "1" | "true" | "yes" | "on" => true,
                    "0" | "false" | "no" | "off" => false,
                    _ => return Err(format!("{var}: expected true or false, got {raw:?}")),
                }),
                Kind::Int => toml::Value::Integer(
                    raw.parse()
                        .map_err(|_| format!("{var}: expected a whole number, got {raw:?}"))?,
                ),
                Kind::Float => toml::Value::Float(
                    raw.parse()
                        .map_err(|_| format!("{var}: expected a number, got {raw:?}"))?,
                ),
            };
            table.insert((*key).to_owned(), value);
        }
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    format!("configuration: {}", e.to_string().trim().replace('\n', " "))
                })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        self.action_limits()?;
        if let Some(list) = &self.ip_range_denylist {
            hearth_federation::outbound::IpRanges::parse(list)
                .map_err(|e| format!("ip_range_denylist: {e}"))?;
        }
        ruma::ServerName::parse(&self.server_name).map_err(|e| {
            format!(
                "server_name {:?} is not a valid server name: {e}",
                self.server_name
            )
        })?;
        if self.registration == Some(RegistrationMode::Token) && self.registration_token.is_none() {
            return Err("registration = \"token\" needs registration_token to be set".into());
        }
        if self.federation_listen.is_some() && (self.tls_cert.is_none() || self.tls_key.is_none()) {
            return Err("federation_listen needs tls_cert and tls_key".into());
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(format!(
                "log_format must be \"text\" or \"json\", not {:?}",
                self.log_format
            ));
        }
        if self.rate_limit_per_second.is_nan() || self.rate_limit_per_second <= 0.0 {
            return Err("rate_limit_per_second must be above 0".into());
        }
        Ok(())
    }

    /// Registration as configured, or the safe default for where the server listens.
    pub fn registration_mode(&self) -> RegistrationMode {
        match self.registration {
            Some(m) => m,
            None if self.listen.ip().is_loopback() => RegistrationMode::Open,
            None if self.registration_token.is_some() => RegistrationMode::Token,
            None => RegistrationMode::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_open_only_on_loopback() {
        let mut c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.registration_mode(), RegistrationMode::Open);
        c.listen = "0.0.0.0:8008".parse().unwrap();
        assert_eq!(c.registration_mode(), RegistrationMode::Closed);
        c.registration_token = Some("t".into());
        assert_eq!(c.registration_mode(), RegistrationMode::Token);
    }

    #[test]
    fn a_bad_file_is_a_one_line_error() {
        let dir = std::env::temp_dir().join(format!("hearth-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "listen = 12\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err();
        assert!(!err.contains('\n'), "{err}");
        std::fs::write(&path, "no_such_key = 1\n").unwrap();
        assert!(
            Config::load(Some(&path))
                .unwrap_err()
                .contains("no_such_key")
        );
        std::fs::write(&path, "server_name = \"a\"\nlisten = [\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err();
        assert!(!err.contains('\n') && err.contains("line"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_example_file_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/hearth.example.toml");
        let config = Config::load(Some(&path)).unwrap();
        assert_eq!(config.server_name, "example.org");
        assert_eq!(config.registration_mode(), RegistrationMode::Token);
    }
}
