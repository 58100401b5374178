/// Who may create accounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationMode {
    Open,
    Token,
    Closed,
}

#[derive(Clone, Copy, Debug)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub registration: RegistrationMode,
    pub registration_token: Option<String>,
    pub max_request_bytes: usize,
    /// `None` turns rate limiting off, the actions' limits too.
    pub rate_limit: Option<RateLimit>,
    /// The allowance of each limited action (an action missing here is not limited).
    pub action_limits: std::collections::HashMap<crate::rate_limit::Action, RateLimit>,
    /// Base URL clients should use, for `/.well-known/matrix/client`.
    pub public_base_url: String,
    /// Interval of WebSocket pings; two silent intervals close the connection.
    pub websocket_ping: std::time::Duration,
    /// Serve the pre-v1.11 unauthenticated media endpoints (the spec froze them: off by default).
    pub legacy_unauthenticated_media: bool,
    /// Users who may call the admin API, besides those whose account is marked admin.
    pub admin_users: Vec<String>,
}
