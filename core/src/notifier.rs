//! Wakes the long-polls of exactly the users an update concerns.
//!
//! Each user who is waiting (or has waited) holds a `watch` channel carrying the latest stream
//! position that concerned them. A commit notifies the users it touches; nobody else wakes.

use std::collections::HashMap;

use parking_lot::RwLock;
use ruma::{OwnedUserId, UserId};
use tokio::sync::watch;

use hearth_storage::StreamPos;

#[derive(Default)]
pub struct Notifier {
    users: RwLock<HashMap<OwnedUserId, watch::Sender<StreamPos>>>,
}

impl Notifier {
    pub fn subscribe(&self, user: &UserId) -> watch::Receiver<StreamPos> {
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

    pub fn notify<'a>(&self, users: impl IntoIterator<Item = &'a UserId>, pos: StreamPos) {
        let map = self.users.read();
        for user in users {
            if let Some(tx) = map.get(user) {
                tx.send_if_modified(|cur| {
                    let newer = pos > *cur;
                    if newer {
                        *cur = pos;
                    }
                    newer
                });
            }
        }
    }
}
