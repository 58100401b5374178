//! Push notifications: push rules, pushers, the notifications the rules produce, and their
//! delivery to push gateways (docs/push.md).
//!
//! `ruleset` is a user's rule set as clients read and change it; `rules` keeps each user's and
//! evaluates it (also for `Unread`); `notifications` runs the rules on every new event and keeps
//! what notifies; `delivery` sends that to each pusher's gateway through the
//! [`gateway::PushGateway`] the binary supplies.

pub mod delivery;
pub mod gateway;
pub mod notifications;
pub mod pushers;
pub mod rules;
pub mod ruleset;

use std::sync::Arc;
use std::time::Duration;

use hearth_storage::Store;

use crate::Result;
use crate::presence::Presence;
use crate::receipts::Receipts;
use crate::rooms::Rooms;
use crate::unread::Unread;

#[derive(Clone, Debug)]
pub struct PushConfig {
    /// How long a push to a user whose client is connected waits for that client to mark the
    /// message read (then nothing is pushed).
    pub online_grace: Duration,
    /// The badge counts rooms with unread notifications rather than notifications (Synapse's
    /// `push.group_unread_count_by_room`, default true).
    pub group_unread_count_by_room: bool,
    /// Pushes carry the event's content (Synapse's `push.include_content`).
    pub include_content: bool,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            online_grace: Duration::from_secs(2),
            group_unread_count_by_room: true,
            include_content: true,
        }
    }
}

pub struct Push {
    pub rules: Arc<rules::PushRules>,
    pub pushers: Arc<pushers::Pushers>,
    pub notifications: Arc<notifications::Notifications>,
    config: PushConfig,
    store: Arc<dyn Store>,
    rooms: Arc<Rooms>,
    receipts: Arc<Receipts>,
    presence: Arc<Presence>,
    unread: Arc<Unread>,
}

/// What [`Push::new`] wires together.
pub struct PushParts {
    pub config: PushConfig,
    pub server_name: ruma::OwnedServerName,
    pub store: Arc<dyn Store>,
    pub rooms: Arc<Rooms>,
    pub receipts: Arc<Receipts>,
    pub presence: Arc<Presence>,
    pub unread: Arc<Unread>,
    pub rules: Arc<rules::PushRules>,
    pub notifier: Arc<crate::notifier::Notifier>,
}

impl Push {
    pub fn new(p: PushParts) -> Self {
        let pushers = Arc::new(pushers::Pushers::new(p.store.clone()));
        let notifications = Arc::new(notifications::Notifications::new(
            p.server_name,
            p.store.clone(),
            p.rooms.clone(),
            p.receipts.clone(),
            p.rules.clone(),
            pushers.clone(),
            p.notifier,
        ));
        Self {
            rules: p.rules,
            pushers,
            notifications,
            config: p.config,
            store: p.store,
            rooms: p.rooms,
            receipts: p.receipts,
            presence: p.presence,
            unread: p.unread,
        }
    }

    /// Starts evaluating new events and delivering to `gateway`. Without a start, notifications
    /// are neither recorded nor pushed (unit tests of other parts).
    pub async fn start(&self, gateway: Arc<dyn gateway::PushGateway>) -> Result<()> {
        let delivery = Arc::new(delivery::Delivery::new(
            self.store.clone(),
            self.rooms.clone(),
            self.receipts.clone(),
            self.presence.clone(),
            self.unread.clone(),
            gateway,
            self.config.clone(),
        ));
        self.pushers.start(delivery)?;
        self.notifications.start().await
    }
}
