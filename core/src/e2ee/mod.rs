//! End-to-end encryption support: the key plumbing the spec gives the server.
//!
//! The server stores and hands out what clients upload (device keys, one-time and fallback
//! keys, cross-signing keys and signatures, key backups) and checks only what the spec makes it
//! check: that keys belong to their uploader and that signatures verify. It never sees a
//! message key or plaintext; all of this is public-key material or ciphertext.

mod backup;
mod cross_signing;
pub mod device_lists;
mod keys;
mod signing;

use std::sync::Arc;

use hearth_storage::Store;
use ruma::OwnedServerName;

use crate::remote::Remote;

pub use backup::{BackupVersion, RoomKeyUpdate};
pub use cross_signing::{SignatureFailures, SigningKeys};
pub use device_lists::{DeviceListChanges, DeviceLists, DeviceUpdate};
pub use keys::{ClaimedKeys, KeyQuery, KeyUpload, QueriedKeys};

/// Key material as the clients sent it.
pub type Json = serde_json::Value;

pub struct E2ee {
    server_name: OwnedServerName,
    store: Arc<dyn Store>,
    device_lists: Arc<DeviceLists>,
    /// Other servers answer for their users' keys.
    remote: Arc<dyn Remote>,
    /// Claims and backup updates read, decide and write; one at a time, so that a one-time key
    /// is handed out once even to concurrent claims.
    claim_lock: tokio::sync::Mutex<()>,
    backup_lock: tokio::sync::Mutex<()>,
}

impl E2ee {
    pub fn new(
        server_name: OwnedServerName,
        store: Arc<dyn Store>,
        device_lists: Arc<DeviceLists>,
        remote: Arc<dyn Remote>,
    ) -> Self {
        Self {
            server_name,
            store,
            device_lists,
            remote,
            claim_lock: Default::default(),
            backup_lock: Default::default(),
        }
    }

    pub fn device_lists(&self) -> &Arc<DeviceLists> {
        &self.device_lists
    }
}
