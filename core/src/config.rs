use ruma::{OwnedServerName, RoomVersionId};

use crate::media::MediaConfig;
use crate::presence::PresenceConfig;
use crate::push::PushConfig;
use crate::search::SearchConfig;

/// The domain settings the core needs; the binary fills them from its configuration.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub server_name: OwnedServerName,
    /// Room version of new rooms when the client does not ask for one.
    pub default_room_version: RoomVersionId,
    pub presence: PresenceConfig,
    /// Rooms with more joined members than this get no delivery receipts.
    pub delivery_receipts_max_members: usize,
    pub media: MediaConfig,
    pub push: PushConfig,
    pub search: SearchConfig,
    /// How long an access token that comes with a refresh token lives.
    pub refreshable_token_lifetime: std::time::Duration,
}

impl CoreConfig {
    pub fn new(server_name: OwnedServerName) -> Self {
        Self {
            server_name,
            default_room_version: RoomVersionId::V12,
            presence: PresenceConfig::default(),
            delivery_receipts_max_members: 50,
            media: MediaConfig::default(),
            push: PushConfig::default(),
            search: SearchConfig::default(),
            // Synapse's default for `refreshable_access_token_lifetime`.
            refreshable_token_lifetime: std::time::Duration::from_secs(5 * 60),
        }
    }
}

/// Room versions this server can create and join (defined with every other difference between
/// versions in `rooms::version`).
pub use crate::rooms::version::SUPPORTED_ROOM_VERSIONS;
