//! Hearth's domain: accounts, rooms and their event graph, state and auth, sync fan-out.
//!
//! Nothing here knows about HTTP. The API crates translate requests into calls on the
//! components below and errors from [`Error`] into Matrix error responses. Components get their
//! dependencies explicitly when [`Core::new`] wires them; they never reach for a global, and
//! they depend on each other in one direction only:
//!
//! `Sync → (Rooms, AccountData)`, `Rooms → (Store, ServerKeys, Notifier)`,
//! `AccountData → (Store, Notifier)`, `Profiles → (Accounts, Rooms)`,
//! `Accounts → Store`.

pub mod account_data;
pub mod accounts;
pub mod config;
pub mod error;
pub mod keys;
pub mod notifier;
pub mod profiles;
pub mod remote;
pub mod rooms;
pub mod sync;
pub mod util;

use std::sync::Arc;

pub use config::CoreConfig;
pub use error::{Error, Result};
use hearth_storage::Store;

/// The wired-up homeserver domain, shared by the API layers.
pub struct Core {
    pub config: Arc<CoreConfig>,
    pub store: Arc<dyn Store>,
    pub keys: Arc<keys::ServerKeys>,
    pub notifier: Arc<notifier::Notifier>,
    pub accounts: Arc<accounts::Accounts>,
    pub account_data: Arc<account_data::AccountData>,
    pub rooms: Arc<rooms::Rooms>,
    pub profiles: Arc<profiles::Profiles>,
    pub sync: Arc<sync::SyncService>,
}

impl Core {
    /// A complete core on an in-memory store with a throwaway key, not federating: for tests of
    /// the layers above.
    pub fn in_memory(server_name: ruma::OwnedServerName) -> Result<Self> {
        let store = Arc::new(hearth_storage::RedbStore::in_memory()?);
        let keys = Arc::new(keys::ServerKeys::ephemeral(server_name.clone()));
        Self::new(
            CoreConfig::new(server_name),
            store,
            keys,
            Arc::new(remote::NoFederation),
        )
    }

    pub fn new(
        config: CoreConfig,
        store: Arc<dyn Store>,
        keys: Arc<keys::ServerKeys>,
        remote: Arc<dyn remote::Remote>,
    ) -> Result<Self> {
        let config = Arc::new(config);
        let notifier = Arc::new(notifier::Notifier::default());
        let accounts = Arc::new(accounts::Accounts::new(config.clone(), store.clone()));
        let rooms = Arc::new(rooms::Rooms::new(
            config.clone(),
            store.clone(),
            keys.clone(),
            notifier.clone(),
        )?);
        let account_data = Arc::new(account_data::AccountData::new(
            store.clone(),
            notifier.clone(),
        ));
        let profiles = Arc::new(profiles::Profiles::new(
            accounts.clone(),
            rooms.clone(),
            remote,
        ));
        let sync = Arc::new(sync::SyncService::new(
            store.clone(),
            rooms.clone(),
            account_data.clone(),
            notifier.clone(),
        ));
        Ok(Self {
            config,
            store,
            keys,
            notifier,
            accounts,
            account_data,
            rooms,
            profiles,
            sync,
        })
    }
}
