//! Which member events a device was already sent by lazy-loading syncs, so that incremental
//! syncs leave them out (`include_redundant_members: false`, the default).
//!
//! Held in memory only, as Synapse holds it: after a restart a device is sent some members
//! again, which costs bytes and nothing else. An entry counts only for a sync from a token at or
//! after the response that carried it: a client that retries an older token (its response was
//! lost) is sent the members again rather than never.

use std::num::NonZeroUsize;

use hearth_storage::StreamPos;
use lru::LruCache;
use parking_lot::Mutex;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};

/// At most this many (device, room, member) entries; the least recently sent go first.
const CAPACITY: usize = 100_000;

#[derive(Hash, PartialEq, Eq)]
struct Key {
    user: OwnedUserId,
    device: String,
    room: OwnedRoomId,
    member: String,
}

pub(crate) struct SentMembers {
    sent: Mutex<LruCache<Key, (String, StreamPos)>>,
}

impl Default for SentMembers {
    fn default() -> Self {
        Self {
            sent: Mutex::new(LruCache::new(
                NonZeroUsize::new(CAPACITY).expect("capacity is not zero"),
            )),
        }
    }
}

/// One device's view of the cache for one room in one sync.
pub(crate) struct DeviceRoom<'a> {
    pub user: &'a UserId,
    pub device: &'a str,
    pub room: &'a RoomId,
}

impl SentMembers {
    fn key(at: &DeviceRoom<'_>, member: &str) -> Key {
        Key {
            user: at.user.to_owned(),
            device: at.device.to_owned(),
            room: at.room.to_owned(),
            member: member.to_owned(),
        }
    }

    /// Whether the device has `event_id` as `member`'s member event, given that it syncs from
    /// `since`.
    pub fn has(&self, at: &DeviceRoom<'_>, member: &str, event_id: &str, since: StreamPos) -> bool {
        self.sent
            .lock()
            .get(&Self::key(at, member))
            .is_some_and(|(id, sent_in)| id == event_id && *sent_in <= since)
    }

    /// Notes that the response up to `next_batch` carries `event_id` as `member`'s member event.
    pub fn record(&self, at: &DeviceRoom<'_>, member: &str, event_id: &str, next_batch: StreamPos) {
        self.sent
            .lock()
            .put(Self::key(at, member), (event_id.to_owned(), next_batch));
    }
}
