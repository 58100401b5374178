//! Hearth's domain: accounts, rooms and their event graph, state and auth, sync fan-out.
//!
//! Nothing here knows about HTTP. The API crates translate requests into calls on the
//! components below and errors from [`Error`] into Matrix error responses. Components get their
//! dependencies explicitly when [`Core::new`] wires them; they never reach for a global, and
//! they depend on each other in one direction only:
//!
//! `Sync → (Rooms, AccountData, Receipts, Typing, Presence, ToDevice, Unread, E2ee)`,
//! `SlidingSync → (Sync and its sources)`, `Legacy → (Sync's sources)`,
//! `Unread → (Receipts, PushRules, Rooms)`, `PushRules → (AccountData, Rooms)`,
//! `Push → (PushRules, Unread, Receipts, Presence, Rooms, Store)`, `Receipts, Typing, Presence → (Rooms, Notifier)`,
//! `Rooms → (Store, ServerKeys, Notifier)`, `AccountData, ToDevice → (Store, Notifier)`,
//! `Profiles → (Accounts, Rooms)`, `Accounts → (Store, DeviceLists)`, `E2ee → (Store,
//! DeviceLists, Remote)`, `DeviceLists → (Store, Rooms, Notifier)`, `Outbox → Store`,
//! `Media → (Store, Remote)`, `Directory → (Store, Rooms, Remote)`, `Search → (Store, Rooms, Notifier)`,
//! `Reports → (Store, Rooms)`; `Rooms` tells the
//! `Remote` (the federation crate, through a trait) when it queued events for other servers.

pub mod account_data;
pub mod accounts;
pub mod config;
pub mod directory;
pub mod e2ee;
pub mod error;
pub mod keys;
pub mod legacy;
pub mod media;
pub mod notifier;
pub mod openid;
pub mod outbox;
pub mod presence;
pub mod profiles;
pub mod push;
pub mod receipts;
pub mod remote;
pub mod reports;
pub mod rooms;
pub mod search;
pub mod sliding_sync;
pub mod streams;
pub mod sync;
pub mod to_device;
pub mod typing;
pub mod unread;
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
    pub e2ee: Arc<e2ee::E2ee>,
    pub account_data: Arc<account_data::AccountData>,
    pub rooms: Arc<rooms::Rooms>,
    pub profiles: Arc<profiles::Profiles>,
    pub receipts: Arc<receipts::Receipts>,
    pub typing: Arc<typing::Typing>,
    pub presence: Arc<presence::Presence>,
    pub to_device: Arc<to_device::ToDevice>,
    pub unread: Arc<unread::Unread>,
    pub push: Arc<push::Push>,
    pub outbox: Arc<outbox::Outbox>,
    pub media: Arc<media::Media>,
    pub directory: Arc<directory::Directory>,
    pub openid: Arc<openid::OpenId>,
    pub search: Arc<search::Search>,
    pub reports: Arc<reports::Reports>,
    pub sync: Arc<sync::SyncService>,
    pub sliding_sync: Arc<sliding_sync::SlidingSync>,
    /// The legacy event stream and snapshots (`/events`, `/initialSync`).
    pub legacy: Arc<legacy::Legacy>,
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
        let rooms = rooms::Rooms::new(
            config.clone(),
            store.clone(),
            keys.clone(),
            notifier.clone(),
            remote.clone(),
        )?;
        let device_lists = Arc::new(e2ee::DeviceLists::new(
            config.server_name.clone(),
            store.clone(),
            rooms.clone(),
            notifier.clone(),
            remote.clone(),
        ));
        let accounts = Arc::new(accounts::Accounts::new(
            config.clone(),
            store.clone(),
            device_lists.clone(),
        ));
        let e2ee = Arc::new(e2ee::E2ee::new(
            config.server_name.clone(),
            store.clone(),
            device_lists.clone(),
            remote.clone(),
        ));
        let account_data = Arc::new(account_data::AccountData::new(
            store.clone(),
            notifier.clone(),
        ));
        let profiles = Arc::new(profiles::Profiles::new(
            accounts.clone(),
            rooms.clone(),
            remote.clone(),
        ));
        let ephemeral = Arc::new(streams::EphemeralSerial::default());
        let receipts = Arc::new(receipts::Receipts::new(
            store.clone(),
            rooms.clone(),
            notifier.clone(),
            config.delivery_receipts_max_members,
        ));
        let typing = Arc::new(typing::Typing::new(
            rooms.clone(),
            notifier.clone(),
            ephemeral.clone(),
        ));
        let presence = Arc::new(presence::Presence::new(
            config.presence.clone(),
            store.clone(),
            rooms.clone(),
            notifier.clone(),
            ephemeral.clone(),
        ));
        let to_device = Arc::new(to_device::ToDevice::new(
            config.server_name.clone(),
            store.clone(),
            notifier.clone(),
            remote.clone(),
        ));
        let push_rules = Arc::new(push::rules::PushRules::new(
            account_data.clone(),
            rooms.clone(),
        ));
        let unread = Arc::new(unread::Unread::new(
            store.clone(),
            rooms.clone(),
            receipts.clone(),
            push_rules.clone(),
        ));
        let push = Arc::new(push::Push::new(push::PushParts {
            config: config.push.clone(),
            server_name: config.server_name.clone(),
            store: store.clone(),
            rooms: rooms.clone(),
            receipts: receipts.clone(),
            presence: presence.clone(),
            unread: unread.clone(),
            rules: push_rules.clone(),
            notifier: notifier.clone(),
        }));
        let outbox = Arc::new(outbox::Outbox::new(store.clone()));
        let media = Arc::new(media::Media::new(
            config.server_name.clone(),
            store.clone(),
            remote.clone(),
            &config.media,
        )?);
        let directory = Arc::new(directory::Directory::new(
            config.server_name.clone(),
            store.clone(),
            rooms.clone(),
            remote.clone(),
        ));
        let search = Arc::new(search::Search::new(
            &config.search,
            store.clone(),
            rooms.clone(),
            notifier.clone(),
        )?);
        let reports = Arc::new(reports::Reports::new(store.clone(), rooms.clone()));
        let sources = sync::SyncSources {
            store: store.clone(),
            rooms: rooms.clone(),
            account_data: account_data.clone(),
            notifier: notifier.clone(),
            receipts: receipts.clone(),
            typing: typing.clone(),
            presence: presence.clone(),
            to_device: to_device.clone(),
            unread: unread.clone(),
            e2ee: e2ee.clone(),
            ephemeral,
        };
        let sync = Arc::new(sync::SyncService::new(sources.clone()));
        let legacy = Arc::new(legacy::Legacy::new(sources.clone()));
        let sliding_sync = Arc::new(sliding_sync::SlidingSync::new(sources, sync.clone()));
        Ok(Self {
            config,
            store,
            keys,
            notifier,
            accounts,
            e2ee,
            account_data,
            rooms,
            profiles,
            receipts,
            typing,
            presence,
            to_device,
            unread,
            push,
            outbox,
            media,
            directory,
            openid: Arc::default(),
            search,
            reports,
            sync,
            sliding_sync,
            legacy,
        })
    }
}
