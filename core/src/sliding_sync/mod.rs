//! Simplified sliding sync (MSC4186), what Element X and matrix-sdk's room list use instead of
//! `/sync` (docs/sliding_sync.md).
//!
//! A client keeps a connection (`conn_id`) and sends, with every request, its lists (index
//! ranges into the user's rooms sorted by recency, with filters), room subscriptions and
//! extensions. The server answers each list's count and the rooms in the ranges, and remembers
//! per connection what it sent: a room the client already has gets only what changed since the
//! `pos` it names, a room new to the connection (or asked for with other settings) comes whole,
//! with `initial: true`. Each answer gets a new `pos`; the last few stay valid, so a client that
//! lost an answer can repeat its request. A `pos` the server does not know (it restarted, or
//! the connection expired) is `M_UNKNOWN_POS`, and the client starts over.
//!
//! The per-room pieces (timelines, state, counts, receipts, typing, keys) are those of `/sync`.

mod lists;
pub mod types;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hearth_storage::{ChangeKey, StreamPos};
use lru::LruCache;
use parking_lot::Mutex;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::value::RawValue as RawJsonValue;

use self::lists::{Candidate, RoomLists};
pub use self::types::*;
use crate::account_data::to_event;
use crate::rooms::timeline::{Access, EventFilter, Reader, TimelineEvent};
use crate::streams::SyncToken;
use crate::sync::{SyncService, SyncSources};
use crate::{Error, Result};

/// Answers kept valid per connection: the newest and the ones before it, for retries.
const KEPT_POSITIONS: usize = 3;
/// Connections remembered in all; the least recently used is forgotten first.
const MAX_CONNECTIONS: usize = 50_000;
/// Longest timeline a room gets.
const MAX_TIMELINE: usize = 100;

/// A room the client has: the settings it was sent with, and where the client stands in it (a
/// room outside every range for a while is behind the connection's token).
type Sent = (Arc<RoomConfig>, SyncToken);

/// What a connection was told as of one `pos`.
#[derive(Clone, Default)]
struct Snapshot {
    token: SyncToken,
    rooms: HashMap<OwnedRoomId, Sent>,
    lists: BTreeMap<String, usize>,
}

/// What one computation changes of the previous snapshot. A long poll computes again on every
/// wake-up; the room map (as large as the user's room list) is copied only for an answer.
struct Delta {
    token: SyncToken,
    lists: BTreeMap<String, usize>,
    /// `None` forgets the room (the user left it).
    rooms: Vec<(OwnedRoomId, Option<Sent>)>,
}

impl Delta {
    fn apply(self, prev: Option<&Snapshot>) -> Snapshot {
        let mut rooms = prev.map(|p| p.rooms.clone()).unwrap_or_default();
        for (room, sent) in self.rooms {
            match sent {
                Some(s) => rooms.insert(room, s),
                None => rooms.remove(&room),
            };
        }
        Snapshot {
            token: self.token,
            rooms,
            lists: self.lists,
        }
    }
}

type ConnKey = (OwnedUserId, String, String);
/// A connection's newest answers, oldest first: `(position number, what it told)`.
type Kept = VecDeque<(u64, Arc<Snapshot>)>;

pub struct SlidingSync {
    src: SyncSources,
    /// The per-room pieces shared with `/sync` (summaries, invite state).
    sync: Arc<SyncService>,
    lists: RoomLists,
    connections: Mutex<LruCache<ConnKey, Kept>>,
    /// Positions are `<boot>_<n>`: a position from before a restart is unknown, not misread.
    boot: u64,
    next: AtomicU64,
}

impl SlidingSync {
    pub fn new(src: SyncSources, sync: Arc<SyncService>) -> Self {
        let lists = RoomLists::new(
            src.store.clone(),
            src.rooms.clone(),
            src.account_data.clone(),
        );
        Self {
            src,
            sync,
            lists,
            connections: Mutex::new(LruCache::new(
                NonZeroUsize::new(MAX_CONNECTIONS).expect("non-zero"),
            )),
            boot: rand::random::<u32>() as u64,
            next: AtomicU64::new(1),
        }
    }

    pub async fn sync(&self, req: SlidingRequest) -> Result<SlidingResponse> {
        let _syncing = self
            .src
            .presence
            .sync_started(&req.user_id, req.set_presence);
        let key: ConnKey = (
            req.user_id.clone(),
            req.device_id.clone(),
            req.conn_id.clone().unwrap_or_default(),
        );
        let prev = match &req.pos {
            None => None,
            Some(pos) => Some(self.snapshot(&key, pos).ok_or(Error::UnknownPos)?),
        };
        if let Some(since) = &req.to_device.since
            && let Ok(upto) = since.parse::<StreamPos>()
            && req.to_device.enabled
        {
            // The client has the messages up to its to-device token.
            self.src
                .to_device
                .acknowledge(&req.user_id, &req.device_id, upto)?;
        }
        let deadline = tokio::time::Instant::now() + req.timeout;
        let mut wake = self.src.notifier.subscribe(&req.user_id);
        let (mut resp, delta) = loop {
            wake.borrow_and_update();
            let (resp, delta) = Box::pin(self.compute(&req, prev.as_deref())).await?;
            let lists_moved = prev.as_ref().is_some_and(|p| p.lists != delta.lists);
            if prev.is_none() || !resp.is_empty() || lists_moved {
                break (resp, delta);
            }
            match tokio::time::timeout_at(deadline, wake.changed()).await {
                Ok(Ok(())) => continue,
                _ => break (resp, delta),
            }
        };
        resp.pos = self.remember(key, delta.apply(prev.as_deref()));
        Ok(resp)
    }

    fn snapshot(&self, key: &ConnKey, pos: &str) -> Option<Arc<Snapshot>> {
        let (boot, n) = pos.split_once('_')?;
        if boot.parse::<u64>().ok()? != self.boot {
            return None;
        }
        let n: u64 = n.parse().ok()?;
        let mut conns = self.connections.lock();
        let kept = conns.get(key)?;
        kept.iter().find(|(p, _)| *p == n).map(|(_, s)| s.clone())
    }

    fn remember(&self, key: ConnKey, snapshot: Snapshot) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut conns = self.connections.lock();
        let kept = conns.get_or_insert_mut(key, VecDeque::new);
        kept.push_back((n, Arc::new(snapshot)));
        while kept.len() > KEPT_POSITIONS {
            kept.pop_front();
        }
        format!("{}_{n}", self.boot)
    }

    async fn compute(
        &self,
        req: &SlidingRequest,
        prev: Option<&Snapshot>,
    ) -> Result<(SlidingResponse, Delta)> {
        let user = &*req.user_id;
        let ephemeral = self.src.ephemeral.current();
        let now = self.src.store.persisted_pos();
        let since = prev.map(|p| SyncToken {
            pos: p.token.pos.min(now),
            to_device: p.token.to_device.min(now),
            ..p.token
        });
        let mut resp = SlidingResponse::default();
        let no_rooms = HashMap::new();
        let had = prev.map_or(&no_rooms, |p| &p.rooms);
        let mut snap = Delta {
            token: SyncToken {
                pos: now,
                ephemeral,
                to_device: now,
            },
            lists: BTreeMap::new(),
            rooms: Vec::new(),
        };

        // Lists: their counts, and the rooms in their ranges with what each asks.
        let candidates = self.lists.candidates(user, now)?;
        let direct = self.lists.direct_rooms(user)?;
        let mut facts = HashMap::new();
        let mut wanted: BTreeMap<OwnedRoomId, RoomConfig> = BTreeMap::new();
        let mut in_list: HashMap<String, Vec<OwnedRoomId>> = HashMap::new();
        for (name, list) in &req.lists {
            let mut matching: Vec<&Candidate> = Vec::new();
            for c in &candidates {
                if self.lists.matches(c, &list.filters, &direct, &mut facts)? {
                    matching.push(c);
                }
            }
            snap.lists.insert(name.clone(), matching.len());
            let mut picked = Vec::new();
            for &(lo, hi) in &list.ranges {
                for c in matching.iter().skip(lo).take(hi.saturating_sub(lo) + 1) {
                    wanted
                        .entry(c.room_id.clone())
                        .or_default()
                        .merge(&list.config);
                    picked.push(c.room_id.clone());
                }
            }
            in_list.insert(name.clone(), picked);
        }
        let by_id: HashMap<&RoomId, &Candidate> =
            candidates.iter().map(|c| (&*c.room_id, c)).collect();
        for (room, config) in &req.subscriptions {
            if by_id.contains_key(&**room) {
                wanted.entry(room.clone()).or_default().merge(config);
            }
        }
        resp.lists = snap.lists.clone();

        for (room_id, config) in &wanted {
            let c = by_id[&**room_id];
            let (room_since, sent_config) = match had.get(room_id) {
                Some((sent, token)) if **sent == *config => (Some(*token), sent.clone()),
                _ => (None, Arc::new(config.clone())),
            };
            let now_token = snap.token;
            if let Some(rs) = room_since {
                // An invite or knock changes only with the user's membership: the room's own
                // events are not theirs to see.
                let changed = c.membership.pos > rs.pos
                    || (c.membership.membership == "join"
                        && self
                            .src
                            .store
                            .changed_after(&ChangeKey::Room(room_id.to_string()), rs.pos));
                if !changed {
                    snap.rooms
                        .push((room_id.clone(), Some((sent_config, now_token))));
                    continue;
                }
            }
            let room = self.room(req, c, config, room_since, now, &direct).await?;
            snap.rooms
                .push((room_id.clone(), Some((sent_config, now_token))));
            if let Some(room) = room {
                resp.rooms.insert(room_id.clone(), room);
            }
        }
        // Rooms the user left or was removed from since: the client learns of the leave.
        if let Some(since) = since {
            for (room, m) in self.src.rooms.memberships_of(user)?.iter() {
                if !matches!(m.membership.as_str(), "leave" | "ban") || m.pos <= since.pos {
                    continue;
                }
                let room_id = RoomId::parse(room).map_err(Error::internal)?;
                let Some((config, token)) = had.get(&room_id) else {
                    continue;
                };
                snap.rooms.push((room_id.clone(), None));
                if m.pos > token.pos {
                    let c = Candidate {
                        room_id: room_id.clone(),
                        membership: m.clone(),
                        bump: m.pos,
                    };
                    if let Some(r) = self
                        .room(req, &c, config, Some(*token), m.pos, &direct)
                        .await?
                    {
                        resp.rooms.insert(room_id, r);
                    }
                }
            }
        }

        self.extensions(req, since, now, &wanted, &in_list, &mut resp)?;
        Ok((resp, snap))
    }

    /// One room of the answer: whole (`since` is `None`) or what changed after `since`.
    async fn room(
        &self,
        req: &SlidingRequest,
        c: &Candidate,
        config: &RoomConfig,
        since: Option<SyncToken>,
        upto: StreamPos,
        direct: &HashSet<String>,
    ) -> Result<Option<SlidingRoom>> {
        let user = &*req.user_id;
        let room_id = &*c.room_id;
        let mut out = SlidingRoom {
            initial: since.is_none(),
            is_dm: direct.contains(room_id.as_str()),
            bump_stamp: Some(c.bump),
            ..Default::default()
        };
        if matches!(c.membership.membership.as_str(), "invite" | "knock") {
            out.invite_state = Some(self.sync.invite_state(room_id, &c.membership)?);
            return Ok(Some(out));
        }
        let joined = c.membership.membership == "join";
        let access = Access {
            max_pos: upto,
            current: joined,
            joined_at: joined.then_some(c.membership.pos),
            shared_history: joined,
            current_state_in_timeline: joined,
        };
        let limit = config.timeline_limit.min(MAX_TIMELINE);
        let mut events = Vec::new();
        let mut limited = false;
        if limit > 0 {
            let reader = Reader {
                user,
                room_id,
                access: &access,
                filter: &EventFilter::default(),
            };
            let page = self
                .src
                .rooms
                .page(reader, upto, since.map(|s| s.pos), true, limit)?;
            events = page.events;
            events.reverse();
            limited = page.end.is_some();
        }
        let state = self.required_state(room_id, user, config, since, upto, &events)?;
        // Nothing new in the room: it comes only when the user read it since (elsewhere, or by
        // the receipt this client just sent), for its counts to drop.
        if let Some(since) = since
            && events.is_empty()
            && state.is_empty()
            && !(joined
                && self
                    .src
                    .receipts
                    .read_between(room_id, user, since.pos, upto)?)
        {
            return Ok(None);
        }
        let viewer = Some((user, req.device_id.as_str()));
        out.limited = limited;
        out.num_live = Some(if since.is_some() {
            events.len() as u64
        } else {
            0
        });
        out.prev_batch = Some(format!(
            "s{}",
            events.first().map_or(upto, |e| e.meta.pos - 1)
        ));
        out.timeline = events
            .iter()
            .map(|e| self.src.rooms.format(e, viewer, false))
            .collect();
        out.required_state = state
            .iter()
            .map(|e| self.src.rooms.format(e, viewer, false))
            .collect();
        let membership_moved = since.is_none()
            || events
                .iter()
                .chain(state.iter())
                .any(|e| e.pdu.membership().is_some());
        if joined {
            out.counts = Some(self.src.unread.counts(user, room_id, upto).await?.total());
        }
        let text = |kind: &str, field: &str| -> Result<Option<String>> {
            Ok(self
                .src
                .rooms
                .state_event(room_id, kind, "")?
                .and_then(|p| p.content_value()[field].as_str().map(str::to_owned)))
        };
        let name_or_avatar_moved = since.is_none()
            || events.iter().chain(state.iter()).any(|e| {
                let k = e.pdu.kind.to_string();
                k == "m.room.name" || k == "m.room.avatar"
            });
        if name_or_avatar_moved {
            out.name = text("m.room.name", "name")?.filter(|n| !n.is_empty());
            out.avatar = Some(text("m.room.avatar", "url")?.filter(|u| !u.is_empty()));
        }
        if membership_moved {
            let summary = self.sync.summary(room_id, user)?;
            out.joined_count = Some(summary.joined);
            out.invited_count = Some(summary.invited);
            if out.name.is_none() {
                let mut heroes = Vec::new();
                for hero in summary.heroes {
                    let member = self
                        .src
                        .rooms
                        .state_event(room_id, "m.room.member", hero.as_str())?
                        .map(|p| p.content_value());
                    heroes.push(Hero {
                        displayname: member
                            .as_ref()
                            .and_then(|m| m["displayname"].as_str().map(str::to_owned)),
                        avatar_url: member
                            .as_ref()
                            .and_then(|m| m["avatar_url"].as_str().map(str::to_owned)),
                        user_id: hero,
                    });
                }
                out.heroes = (!heroes.is_empty()).then_some(heroes);
            }
        }
        Ok(Some(out))
    }

    /// The room's state entries the client asked for: all of them at the end of the timeline
    /// for a whole room, or those that changed after `since`; members as `$LAZY` and `$ME` say.
    fn required_state(
        &self,
        room_id: &RoomId,
        user: &UserId,
        config: &RoomConfig,
        since: Option<SyncToken>,
        upto: StreamPos,
        timeline: &[TimelineEvent],
    ) -> Result<Vec<TimelineEvent>> {
        if config.required_state.is_empty() {
            return Ok(Vec::new());
        }
        let rooms = &self.src.rooms;
        let Some(group) = rooms.state_group_at(room_id, upto)? else {
            return Ok(Vec::new());
        };
        let now = rooms.state_at_group(group)?;
        let before = match since {
            Some(s) => match rooms.state_group_at(room_id, s.pos)? {
                Some(g) => Some(rooms.state_at_group(g)?),
                None => None,
            },
            None => None,
        };
        let lazy_members: HashSet<&str> = timeline.iter().map(|e| e.pdu.sender.as_str()).collect();
        let lazy = config
            .required_state
            .iter()
            .any(|(t, k)| k == "$LAZY" && (t == "m.room.member" || t == "*"));
        let wants = |kind: &str, key: &str| {
            config.required_state.iter().any(|(t, k)| {
                (t == "*" || t == kind)
                    && (k == "*"
                        || k == key
                        || (k == "$ME" && key == user.as_str())
                        || (k == "$LAZY" && kind == "m.room.member" && lazy_members.contains(key)))
            })
        };
        let mut out = Vec::new();
        for ((kind, key), id) in now.iter() {
            if !wants(kind, key) {
                continue;
            }
            let is_new = before
                .as_ref()
                .is_none_or(|b| b.get(&(kind.clone(), key.clone())) != Some(id));
            // A lazily loaded member goes out again when they speak: the client may not have
            // them (the connection does not track which members it sent).
            let lazy_again = lazy && kind == "m.room.member" && lazy_members.contains(key.as_str());
            if (is_new || lazy_again)
                && let Some(ev) = rooms.timeline_event(id)?
            {
                out.push(ev);
            }
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn extensions(
        &self,
        req: &SlidingRequest,
        since: Option<SyncToken>,
        now: StreamPos,
        wanted: &BTreeMap<OwnedRoomId, RoomConfig>,
        in_list: &HashMap<String, Vec<OwnedRoomId>>,
        resp: &mut SlidingResponse,
    ) -> Result<()> {
        let user = &*req.user_id;
        let device = req.device_id.as_str();
        if req.to_device.enabled {
            let after = req
                .to_device
                .since
                .as_deref()
                .and_then(|s| s.parse::<StreamPos>().ok())
                .unwrap_or(0);
            let mut messages = self.src.to_device.pending(user, device, after, now)?;
            let limit = req.to_device.limit.unwrap_or(crate::to_device::PAGE);
            messages.truncate(limit.max(1));
            let next = if messages.len() >= limit.max(1) {
                messages.last().map_or(now, |m| m.pos)
            } else {
                now
            };
            resp.to_device = Some((
                next.to_string(),
                messages
                    .into_iter()
                    .filter_map(|m| RawJsonValue::from_string(m.json).ok())
                    .collect(),
            ));
        }
        if req.e2ee {
            if let Some(s) = since {
                resp.device_lists = self.src.e2ee.device_lists().changes(user, s.pos, now)?;
            }
            resp.one_time_keys_count = Some(self.src.e2ee.one_time_key_counts(user, device)?);
            resp.unused_fallback_key_types =
                Some(self.src.e2ee.unused_fallback_key_types(user, device)?);
        }
        let scope = |s: &ExtensionScope| -> Vec<OwnedRoomId> {
            let mut rooms: Vec<OwnedRoomId> = Vec::new();
            match &s.lists {
                None => rooms.extend(in_list.values().flatten().cloned()),
                Some(names) => {
                    for n in names {
                        rooms.extend(in_list.get(n).into_iter().flatten().cloned());
                    }
                }
            }
            match &s.rooms {
                None => rooms.extend(req.subscriptions.keys().cloned()),
                Some(list) => {
                    for r in list {
                        match r {
                            ScopeRoom::AllSubscribed => {
                                rooms.extend(req.subscriptions.keys().cloned())
                            }
                            ScopeRoom::Room(id) => rooms.push(id.clone()),
                        }
                    }
                }
            }
            rooms.retain(|r| wanted.contains_key(r));
            rooms.sort();
            rooms.dedup();
            rooms
        };
        if req.account_data.enabled {
            let rooms: HashSet<OwnedRoomId> = scope(&req.account_data).into_iter().collect();
            for entry in self
                .src
                .account_data
                .changes(user, since.map(|s| s.pos), now)?
            {
                if entry.room_id.is_empty() {
                    resp.account_data_global.push(to_event(&entry));
                } else if let Ok(r) = RoomId::parse(&entry.room_id)
                    && rooms.contains(&r)
                {
                    resp.account_data_rooms
                        .entry(r)
                        .or_default()
                        .push(to_event(&entry));
                }
            }
        }
        if req.receipts.enabled {
            let ignored = self.src.account_data.ignored_users(user)?;
            for room in scope(&req.receipts) {
                // A room sent whole gets all its receipts.
                let after = if resp.rooms.get(&room).is_some_and(|r| r.initial) {
                    None
                } else {
                    since.map(|s| s.pos)
                };
                if let Some(r) = self
                    .src
                    .receipts
                    .for_sync(&room, user, after, now, &ignored)?
                {
                    resp.receipts.insert(room, r);
                }
            }
        }
        if req.typing.enabled {
            for room in scope(&req.typing) {
                if let Some(t) = self.src.typing.for_sync(&room, since.map(|s| s.ephemeral)) {
                    resp.typing.insert(room, t);
                }
            }
        }
        Ok(())
    }
}
