//! Unread notification and highlight counts per room (and per thread), as `/sync` reports them.
//!
//! The counts are what the user's push rules (ruma's evaluator; the server defaults until the
//! user sets their own in `m.push_rules`) say notifies, among the events after the user's read
//! receipts. An event of the user's own also marks its thread read: whoever wrote in a room has
//! seen it. Results are cached per (user, room) together with the read positions they were
//! counted from, so each sync only evaluates the events that arrived since the last one.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use std::sync::Arc;

use hearth_storage::{Store, StreamPos};
use lru::LruCache;
use parking_lot::Mutex;
use ruma::push::{Action, FlattenedJson, PushConditionRoomCtx, Ruleset};
use ruma::serde::Raw;
use ruma::{EventId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId};

use crate::Result;
use crate::account_data::AccountData;
use crate::receipts::Receipts;
use crate::rooms::Rooms;
use crate::rooms::timeline::TimelineEvent;

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
    account_data: Arc<AccountData>,
    cache: Mutex<LruCache<(OwnedUserId, OwnedRoomId), Cached>>,
    /// Parsed rule sets, with the push rules version they were read at.
    rulesets: Mutex<LruCache<OwnedUserId, (u64, Arc<Ruleset>)>>,
    /// Events flattened for the push rule conditions: the same for every member who counts them.
    flattened: Mutex<LruCache<OwnedEventId, Arc<FlattenedJson>>>,
    /// Push rule contexts with the state group they were made at.
    contexts: Mutex<LruCache<(OwnedRoomId, OwnedUserId), VersionedContext>>,
}

type VersionedContext = (u64, Arc<PushConditionRoomCtx>);

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
        account_data: Arc<AccountData>,
    ) -> Self {
        Self {
            store,
            rooms,
            receipts,
            account_data,
            cache: Mutex::new(LruCache::new(NonZeroUsize::new(100_000).expect("non-zero"))),
            rulesets: Mutex::new(LruCache::new(NonZeroUsize::new(10_000).expect("non-zero"))),
            flattened: Mutex::new(LruCache::new(NonZeroUsize::new(10_000).expect("non-zero"))),
            contexts: Mutex::new(LruCache::new(NonZeroUsize::new(100_000).expect("non-zero"))),
        }
    }

    fn ruleset(&self, user: &UserId) -> Arc<Ruleset> {
        let version = self.account_data.push_rules_version();
        if let Some((v, r)) = self.rulesets.lock().get(user)
            && *v == version
        {
            return r.clone();
        }
        let ruleset = Arc::new(
            self.account_data
                .get(user, None, "m.push_rules")
                .ok()
                .flatten()
                .and_then(|c| serde_json::from_value(c["global"].clone()).ok())
                .unwrap_or_else(|| Ruleset::server_default(user)),
        );
        self.rulesets
            .lock()
            .put(user.to_owned(), (version, ruleset.clone()));
        ruleset
    }

    fn flattened(&self, ev: &TimelineEvent) -> Arc<FlattenedJson> {
        if let Some(f) = self.flattened.lock().get(&ev.pdu.event_id) {
            return f.clone();
        }
        let raw: Raw<ruma::events::AnySyncTimelineEvent> =
            Raw::from_json(self.rooms.format(ev, None, false));
        let flat = Arc::new(FlattenedJson::from_raw(&raw));
        self.flattened
            .lock()
            .put(ev.pdu.event_id.clone(), flat.clone());
        flat
    }

    /// The actions of the first rule that applies (what `Ruleset::get_actions` does, on an event
    /// flattened once for all members).
    async fn actions<'r>(
        ruleset: &'r Ruleset,
        event: &FlattenedJson,
        ctx: &PushConditionRoomCtx,
    ) -> &'r [Action] {
        for rule in ruleset {
            if rule.applies(event, ctx).await {
                return rule.actions();
            }
        }
        &[]
    }

    /// The user's counts in a joined room, for events up to `upto`.
    pub async fn counts(
        &self,
        user: &UserId,
        room_id: &RoomId,
        upto: StreamPos,
    ) -> Result<RoomCounts> {
        let read = self.receipts.read_positions(room_id, user)?;
        let key = (user.to_owned(), room_id.to_owned());
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
        let ruleset = self.ruleset(user);
        let ctx = self.push_context(room_id, user)?;
        for (pos, id) in events {
            let Ok(event_id) = EventId::parse(&id) else {
                continue;
            };
            let Some(ev) = self.rooms.timeline_event(&event_id)? else {
                continue;
            };
            let thread = ev
                .pdu
                .content_value()
                .pointer("/m.relates_to")
                .filter(|r| r["rel_type"] == "m.thread")
                .and_then(|r| r["event_id"].as_str().map(str::to_owned))
                .unwrap_or_else(|| MAIN.to_owned());
            if ev.pdu.sender == user {
                *bucket(counts, &thread) = Counts::default();
                continue;
            }
            if read.1.get(&thread).is_some_and(|p| *p >= pos) {
                continue;
            }
            let flat = self.flattened(&ev);
            let actions = Self::actions(&ruleset, &flat, &ctx).await;
            let notify = actions.iter().any(|a| a.should_notify());
            let highlight = actions.iter().any(|a| a.is_highlight());
            let b = bucket(counts, &thread);
            b.notification += u64::from(notify);
            b.highlight += u64::from(highlight);
        }
        Ok(())
    }

    /// The room context the push rules see, cached per (room, user) until the room's state
    /// changes (member count and display names are state).
    fn push_context(&self, room_id: &RoomId, user: &UserId) -> Result<Arc<PushConditionRoomCtx>> {
        let head = self.rooms.head(room_id)?;
        let (group, joined) = {
            let h = head.lock();
            (h.state_group, h.joined_count())
        };
        let key = (room_id.to_owned(), user.to_owned());
        if let Some((g, ctx)) = self.contexts.lock().get(&key)
            && *g == group
        {
            return Ok(ctx.clone());
        }
        let display_name = self
            .rooms
            .state_event(room_id, "m.room.member", user.as_str())?
            .and_then(|p| p.content_value()["displayname"].as_str().map(str::to_owned))
            .unwrap_or_else(|| user.localpart().to_owned());
        let ctx = Arc::new(PushConditionRoomCtx::new(
            room_id.to_owned(),
            UInt::new(joined as u64).unwrap_or_default(),
            user.to_owned(),
            display_name,
        ));
        self.contexts.lock().put(key, (group, ctx.clone()));
        Ok(ctx)
    }
}
