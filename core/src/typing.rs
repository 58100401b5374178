//! Typing notifications: in memory only, each room's set of typing users with their deadlines.
//!
//! A change (someone starts or stops, or a timeout passes) takes the next serial of the
//! ephemeral stream and wakes the room's members; `/sync` sends a room's whole typing set when its
//! serial is newer than the token's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::json;
use serde_json::value::RawValue as RawJsonValue;
use tokio::time::Instant;

use crate::notifier::Notifier;
use crate::rooms::Rooms;
use crate::streams::EphemeralSerial;
use crate::{Error, Result};

/// Clients ask for long timeouts; a client that vanishes should not type for ever.
const MAX_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Default)]
struct RoomTyping {
    users: HashMap<OwnedUserId, Instant>,
    serial: u64,
}

pub struct Typing {
    rooms: Arc<Rooms>,
    notifier: Arc<Notifier>,
    serial: Arc<EphemeralSerial>,
    typing: Mutex<HashMap<OwnedRoomId, RoomTyping>>,
}

impl Typing {
    pub fn new(rooms: Arc<Rooms>, notifier: Arc<Notifier>, serial: Arc<EphemeralSerial>) -> Self {
        Self {
            rooms,
            notifier,
            serial,
            typing: Mutex::new(HashMap::new()),
        }
    }

    /// Starts (with a timeout) or stops `user` typing in a room they are joined to.
    pub fn set(
        self: &Arc<Self>,
        room_id: &RoomId,
        user: &UserId,
        timeout: Option<Duration>,
    ) -> Result<()> {
        if self.rooms.membership(room_id, user)?.as_deref() != Some("join") {
            return Err(Error::forbidden(format!(
                "User {user} is not in room {room_id}"
            )));
        }
        let changed = {
            let mut all = self.typing.lock();
            let room = all.entry(room_id.to_owned()).or_default();
            let changed = match timeout {
                Some(t) => {
                    let deadline = Instant::now() + t.min(MAX_TIMEOUT);
                    room.users.insert(user.to_owned(), deadline).is_none()
                }
                None => room.users.remove(user).is_some(),
            };
            if changed {
                room.serial = self.serial.next();
            }
            changed
        };
        if let Some(t) = timeout {
            let this = self.clone();
            let (room_id, user) = (room_id.to_owned(), user.to_owned());
            tokio::spawn(async move {
                tokio::time::sleep(t.min(MAX_TIMEOUT)).await;
                this.expire(&room_id, &user);
            });
        }
        if changed {
            self.wake(room_id);
        }
        if user.server_name() == self.rooms.server_name() {
            // Refreshes go out too: a remote server times typing out by itself.
            let servers = self.rooms.other_servers(room_id)?;
            if !servers.is_empty() {
                self.rooms.remote.send_edu(
                    &servers,
                    json!({
                        "edu_type": "m.typing",
                        "content": { "room_id": room_id, "user_id": user, "typing": timeout.is_some() },
                    }),
                );
            }
        }
        Ok(())
    }

    fn expire(&self, room_id: &RoomId, user: &UserId) {
        let expired = {
            let mut all = self.typing.lock();
            let Some(room) = all.get_mut(room_id) else {
                return;
            };
            // A later PUT may have extended the deadline; only a passed one ends the typing.
            let passed = room.users.get(user).is_some_and(|d| *d <= Instant::now());
            if passed {
                room.users.remove(user);
                room.serial = self.serial.next();
            }
            passed
        };
        if expired {
            self.wake(room_id);
        }
    }

    fn wake(&self, room_id: &RoomId) {
        if let Ok(head) = self.rooms.head(room_id) {
            let users: Vec<OwnedUserId> = head.lock().interested_users().cloned().collect();
            self.notifier.notify(users.iter().map(|u| &**u));
        }
    }

    /// The room's `m.typing` event when its typing set changed after serial `since`.
    pub fn for_sync(&self, room_id: &RoomId, since: Option<u64>) -> Option<Box<RawJsonValue>> {
        let all = self.typing.lock();
        let room = all.get(room_id)?;
        if since.is_some_and(|s| room.serial <= s) || (since.is_none() && room.users.is_empty()) {
            return None;
        }
        let mut users: Vec<&str> = room.users.keys().map(|u| u.as_str()).collect();
        users.sort_unstable();
        serde_json::value::to_raw_value(
            &json!({ "type": "m.typing", "content": { "user_ids": users } }),
        )
        .ok()
    }

    /// Whether the room's typing set changed after serial `since`.
    pub fn changed_after(&self, room_id: &RoomId, since: u64) -> bool {
        self.typing
            .lock()
            .get(room_id)
            .is_some_and(|r| r.serial > since)
    }
}
