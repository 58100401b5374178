//! Unread notification and highlight counts per room (and per thread), as `/sync` reports them.
//!
//! The counts are what the user's push rules (`push::rules`) say notifies, among the events
//! after the user's read receipts. An event of the user's own also marks its thread read:
//! whoever wrote in a room has seen it. Results are cached per (user, room) together with the read positions they were
//! counted from, so each sync only evaluates the events that arrived since the last one.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use std::sync::Arc;

use hearth_storage::{ChangeKey, Store, StreamPos};
use lru::LruCache;
use parking_lot::Mutex;
use ruma::{EventId, OwnedRoomId, OwnedUserId, RoomId, UserId};

use crate::Result;
use crate::push::rules::{PushRules, notify_and_highlight, thread_of};
use crate::receipts::Receipts;
use crate::rooms::Rooms;

/// Notification and highlight counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub notification: u64,
    pub highlight: u64,
}

/// A room's counts: the main timeline (events in no thread) and each thread.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomCounts {
    pub main: Counts,
    pub threads: BTreeMap<String, Counts>,
}

impl RoomCounts {
    /// All of it, for clients that do not ask for per-thread counts.
    pub fn total(&self) -> Counts {
        self.threads.values().fold(self.main, |a, c| Counts {
            notification: a.notification + c.notification,
            highlight: a.highlight + c.highlight,
        })
    }
}

type ReadPositions = (StreamPos, HashMap<String, StreamPos>);

struct Cached {
    read: ReadPositions,
    upto: StreamPos,
    counts: RoomCounts,
}

pub struct Unread {
    store: Arc<dyn Store>,
    rooms: Arc<Rooms>,
    receipts: Arc<Receipts>,
    push_rules: Arc<PushRules>,
    cache: Mutex<LruCache<(OwnedUserId, OwnedRoomId), Cached>>,
}

const MAIN: &str = "main";

fn bucket<'a>(c: &'a mut RoomCounts, thread: &str) -> &'a mut Counts {
    if thread == MAIN {
        &mut c.main
    } else {
        c.threads.entry(thread.to_owned()).or_default()
    }
}

impl Unread {
    pub fn new(
        store: Arc<dyn Store>,
        rooms: Arc<Rooms>,
        receipts: Arc<Receipts>,
        push_rules: Arc<PushRules>,
    ) -> Self {
        Self {
            store,
            rooms,
            receipts,
            push_rules,
            cache: Mutex::new(LruCache::new(NonZeroUsize::new(100_000).expect("non-zero"))),
        }
    }

    /// The user's counts in a joined room, for events up to `upto`.
    pub async fn counts(
        &self,
        user: &UserId,
        room_id: &RoomId,
        upto: StreamPos,
    ) -> Result<RoomCounts> {
        let key = (user.to_owned(), room_id.to_owned());
        // No event and no receipt in the room since the cached count: it stands, without a read
        // of the receipts. The push badge asks this of every room of the user.
        if let Some(c) = self.cache.lock().get(&key)
            && c.upto <= upto
            && !self
                .store
                .changed_after(&ChangeKey::Room(room_id.to_string()), c.upto)
        {
            return Ok(c.counts.clone());
        }
        let read = self.receipts.read_positions(room_id, user)?;
        let (mut counts, from) = {
            let mut cache = self.cache.lock();
            match cache.get(&key) {
                Some(c) if c.read == read && c.upto <= upto => (c.counts.clone(), c.upto),
                _ => {
                    // Counting starts at the user's read receipt, or their join.
                    let joined = self
                        .store
                        .membership(user.as_str(), room_id.as_str())?
                        .map_or(0, |m| m.pos);
                    (RoomCounts::default(), read.0.max(joined))
                }
            }
        };
        if from < upto {
            self.count_range(user, room_id, &read, from, upto, &mut counts)
                .await?;
        }
        self.cache.lock().put(
            key,
            Cached {
                read,
                upto: upto.max(from),
                counts: counts.clone(),
            },
        );
        Ok(counts)
    }

    async fn count_range(
        &self,
        user: &UserId,
        room_id: &RoomId,
        read: &ReadPositions,
        after: StreamPos,
        upto: StreamPos,
        counts: &mut RoomCounts,
    ) -> Result<()> {
        let events =
            self.store
                .room_events(room_id.as_str(), after + 1, upto, false, usize::MAX)?;
        if events.is_empty() {
            return Ok(());
        }
        for (pos, id) in events {
            let Ok(event_id) = EventId::parse(&id) else {
                continue;
            };
            let Some(ev) = self.rooms.timeline_event(&event_id)? else {
                continue;
            };
            let thread = thread_of(&ev);
            if ev.pdu.sender == user {
                *bucket(counts, &thread) = Counts::default();
                continue;
            }
            if read.1.get(&thread).is_some_and(|p| *p >= pos) {
                continue;
            }
            let actions = self.push_rules.actions(user, &ev).await?;
            let (notify, highlight) = notify_and_highlight(&actions);
            let b = bucket(counts, &thread);
            b.notification += u64::from(notify);
            b.highlight += u64::from(highlight);
        }
        Ok(())
    }
}
