//! Wakes the long-polls (and WebSockets) of exactly the users an update concerns.
//!
//! Each user who is waiting (or has waited) holds a `watch` channel whose value is a change
//! counter. An update bumps the counters of the users it touches; nobody else wakes. A waiter
//! subscribes *before* it reads what changed, so an update can never fall between the read and
//! the wait.

use std::collections::HashMap;

use parking_lot::RwLock;
use ruma::{OwnedUserId, UserId};
use tokio::sync::watch;

pub struct Notifier {
    users: RwLock<HashMap<OwnedUserId, watch::Sender<u64>>>,
    /// Bumped after every durable commit of room events, for the push evaluator.
    events: watch::Sender<u64>,
}

impl Default for Notifier {
    fn default() -> Self {
        Self {
            users: RwLock::default(),
            events: watch::channel(0).0,
        }
    }
}

impl Notifier {
    /// Room events were committed (and are readable from the store).
    pub fn events_committed(&self) {
        self.events.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn subscribe_events(&self) -> watch::Receiver<u64> {
        self.events.subscribe()
    }

    pub fn subscribe(&self, user: &UserId) -> watch::Receiver<u64> {
        if let Some(tx) = self.users.read().get(user) {
            return tx.subscribe();
        }
        let mut users = self.users.write();
        // Drop channels nobody listens to any more, so the map tracks live waiters only.
        if users.len() > 1024 {
            users.retain(|_, tx| tx.receiver_count() > 0);
        }
        users
            .entry(user.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    pub fn notify<'a>(&self, users: impl IntoIterator<Item = &'a UserId>) {
        let map = self.users.read();
        for user in users {
            if let Some(tx) = map.get(user) {
                tx.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }
}
