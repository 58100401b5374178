use ruma::{OwnedServerName, RoomVersionId};

use crate::media::MediaConfig;
use crate::presence::PresenceConfig;
use crate::push::PushConfig;

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
}

impl CoreConfig {
    pub fn new(server_name: OwnedServerName) -> Self {
        Self {
            server_name,
            default_room_version: RoomVersionId::V11,
            presence: PresenceConfig::default(),
            delivery_receipts_max_members: 50,
            media: MediaConfig::default(),
            push: PushConfig::default(),
        }
    }
}

/// Room versions this server can create and join.
pub const SUPPORTED_ROOM_VERSIONS: [RoomVersionId; 3] =
    [RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12];
