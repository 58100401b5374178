//! The legacy endpoints of spec r0.6.1 that clients and SyTest still call, as Synapse serves
//! them: the v1 event stream (`GET /events`), one event (`GET /events/{eventId}`) and the
//! snapshots (`GET /initialSync`, `GET /rooms/{roomId}/initialSync`).
//!
//! They read what `/sync` reads ([`SyncSources`]) and speak its tokens ([`SyncToken`]): a
//! snapshot's `end` starts the event stream, each stream answer's `end` goes on from it, and a
//! room snapshot's `messages.start` pages back with `/messages`. Every room event goes through
//! [`Rooms::page`](crate::rooms::Rooms::page), hence [`Rooms::sees`](crate::rooms::Rooms::sees).
//!
//! A stream answer is one list: room events in stream order, then presence, typing, receipts
//! and account data (the room-scoped ones, tags among them, carry their `room_id`). A `limit`
//! cuts the room events: `end` is then the position of the last one given, and the rest of the
//! global stream (receipts, account data) comes up to that position only, so the next answer
//! goes on without a gap or a repeat.

use std::collections::HashSet;
use std::time::Duration;

use hearth_storage::{ChangeKey, StreamPos};
use ruma::{EventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::value::RawValue as RawJsonValue;
use serde_json::{Map, Value};

use crate::account_data::to_event;
use crate::presence::{self, PresenceView};
use crate::rooms::history::TimelinePos;
use crate::rooms::timeline::{Access, EventFilter, Reader, TimelineEvent};
use crate::streams::SyncToken;
use crate::sync::SyncSources;
use crate::{Error, Result};

/// The most room events one stream answer, or one room of a snapshot, carries.
pub const MAX_LIMIT: usize = 100;
/// How often a peeking long-poll looks again: a peeker is no member, so what wakes members
/// (typing, receipts, presence) does not wake it.
const PEEK_RECHECK: Duration = Duration::from_secs(1);

pub struct Legacy {
    src: SyncSources,
}

/// `GET /events`.
pub struct StreamRequest {
    pub user_id: OwnedUserId,
    pub device_id: String,
    /// Where to go on from; now when absent.
    pub from: Option<SyncToken>,
    pub timeout: Duration,
    /// At most this many room events (1 to [`MAX_LIMIT`]).
    pub limit: usize,
    /// Only this room's events: a user who is not joined to it may peek a world-readable room.
    pub room_id: Option<OwnedRoomId>,
}

pub struct StreamAnswer {
    pub chunk: Vec<Box<RawJsonValue>>,
    pub start: SyncToken,
    pub end: SyncToken,
}

/// `GET /initialSync`.
pub struct Snapshot {
    pub end: SyncToken,
    pub rooms: Vec<RoomSnapshot>,
    pub presence: Vec<Box<RawJsonValue>>,
    pub account_data: Vec<Box<RawJsonValue>>,
    /// One `m.receipt` event (with its `room_id`) per joined room that has receipts.
    pub receipts: Vec<Box<RawJsonValue>>,
}

/// One room of a snapshot, or the answer of `GET /rooms/{roomId}/initialSync`.
pub struct RoomSnapshot {
    pub room_id: OwnedRoomId,
    /// The user's membership; none for a peeker of a world-readable room.
    pub membership: Option<String>,
    /// Published in the room directory.
    pub public: bool,
    /// For an invite: the invite event and its sender.
    pub invite: Option<(Box<RawJsonValue>, OwnedUserId)>,
    /// The room's content, for a room the user is in, left, or peeks (not for an invite).
    pub content: Option<RoomContent>,
}

pub struct RoomContent {
    /// The latest events the user may see, oldest first.
    pub messages: Vec<Box<RawJsonValue>>,
    /// A `/messages` token before `messages`, and one after them.
    pub start: String,
    pub end: String,
    /// The room's state: now, or when the user left.
    pub state: Vec<Box<RawJsonValue>>,
    /// The user's tags of the room (first) and their account data for it.
    pub account_data: Vec<Box<RawJsonValue>>,
    /// The members' presence (room snapshot of a room one is in or peeks).
    pub presence: Vec<Box<RawJsonValue>>,
    /// The room's `m.receipt` event (room snapshot of a room one is in or peeks).
    pub receipts: Vec<Box<RawJsonValue>>,
}

/// A room the event stream reads.
struct Target {
    room_id: OwnedRoomId,
    access: Access,
    /// Joined or peeking: the room's typing and receipts come too (not for a room left).
    ephemeral: bool,
}

/// What one `GET /events` reads: the user's rooms, or one room (peeked or joined).
enum Scope {
    All,
    Room { room_id: OwnedRoomId, peeking: bool },
}

impl Legacy {
    pub fn new(src: SyncSources) -> Self {
        Self { src }
    }

    /// A room event as these endpoints give it: with its room, in the v1 client format, and
    /// without bundled aggregations (as Synapse leaves them out of these deprecated endpoints).
    fn format(
        &self,
        ev: &TimelineEvent,
        viewer: Option<(&UserId, &str)>,
    ) -> Result<Box<RawJsonValue>> {
        v1_format(&self.src.rooms.format_plain(ev, viewer, true))
    }

    fn now(&self) -> SyncToken {
        // The ephemeral serial first: a change racing the read is then given again, not lost.
        let ephemeral = self.src.ephemeral.current();
        let pos = self.src.store.persisted_pos();
        SyncToken {
            pos,
            ephemeral,
            to_device: pos,
        }
    }

    /// `GET /events`: what happened since `from`, waiting up to the timeout when nothing has.
    /// Like `/sync`, it keeps the user online while it runs.
    pub async fn stream(&self, req: StreamRequest) -> Result<StreamAnswer> {
        let _syncing = self
            .src
            .presence
            .sync_started(&req.user_id, Some(presence::State::Online));
        let scope = match &req.room_id {
            None => Scope::All,
            Some(room_id) => Scope::Room {
                room_id: room_id.clone(),
                peeking: self.peeks(&req.user_id, room_id)?,
            },
        };
        let peeking = matches!(scope, Scope::Room { peeking: true, .. });
        // Subscribe before the first read, so that no change slips between the two.
        let mut wake = self.src.notifier.subscribe(&req.user_id);
        let mut events = self.src.notifier.subscribe_events();
        let from = req.from.unwrap_or_else(|| self.now());
        let deadline = tokio::time::Instant::now() + req.timeout;
        loop {
            wake.borrow_and_update();
            events.borrow_and_update();
            let out = self.stream_once(&req, &scope, from)?;
            if !out.chunk.is_empty() || req.timeout.is_zero() {
                return Ok(out);
            }
            let woken = tokio::time::timeout_at(deadline, async {
                if peeking {
                    tokio::select! {
                        r = wake.changed() => r.is_ok(),
                        r = events.changed() => r.is_ok(),
                        () = tokio::time::sleep(PEEK_RECHECK) => true,
                    }
                } else {
                    wake.changed().await.is_ok()
                }
            })
            .await;
            if !matches!(woken, Ok(true)) {
                // Timed out: an empty answer moves the token on over what the user may not see.
                return Ok(out);
            }
        }
    }

    /// Whether `user` reads `room_id` as a peeker: joined, they do not; otherwise the room must
    /// be world readable (as Synapse has it, a user who left reads no more of a room by this).
    fn peeks(&self, user: &UserId, room_id: &RoomId) -> Result<bool> {
        let refused = || Error::forbidden("Non-joined access not allowed");
        if !self.src.rooms.exists(room_id)? {
            return Err(refused());
        }
        if self.src.rooms.membership(room_id, user)?.as_deref() == Some("join") {
            return Ok(false);
        }
        let state = self.src.rooms.current_state(room_id)?;
        if self.src.rooms.is_world_readable(&state)? {
            Ok(true)
        } else {
            Err(refused())
        }
    }

    /// The rooms one stream answer reads, each with what the user may read of it.
    fn targets(&self, user: &UserId, scope: &Scope, from: StreamPos) -> Result<Vec<Target>> {
        let now = self.src.store.persisted_pos();
        let joined = |room_id: OwnedRoomId, joined_at: StreamPos| Target {
            room_id,
            access: Access {
                max_pos: now,
                current: true,
                joined_at: Some(joined_at),
                shared_history: true,
                current_state_in_timeline: false,
            },
            ephemeral: true,
        };
        match scope {
            Scope::Room {
                room_id,
                peeking: true,
            } => Ok(vec![Target {
                room_id: room_id.clone(),
                access: Access {
                    max_pos: now,
                    current: true,
                    joined_at: None,
                    shared_history: false,
                    current_state_in_timeline: false,
                },
                ephemeral: true,
            }]),
            Scope::Room { room_id, .. } => {
                let Some(m) = self.src.store.membership(user.as_str(), room_id.as_str())? else {
                    return Ok(Vec::new());
                };
                Ok(match m.membership.as_str() {
                    "join" => vec![joined(room_id.clone(), m.pos)],
                    // Left during the poll: up to the leave.
                    "leave" | "ban" if m.pos > from => vec![Target {
                        room_id: room_id.clone(),
                        access: self.src.rooms.access(room_id, user)?,
                        ephemeral: false,
                    }],
                    _ => Vec::new(),
                })
            }
            Scope::All => {
                let mut out = Vec::new();
                for (room, m) in self.src.rooms.memberships_of(user)?.iter() {
                    if m.pos > now {
                        continue;
                    }
                    let room_id = RoomId::parse(room).map_err(Error::internal)?;
                    match m.membership.as_str() {
                        "join" => out.push(joined(room_id, m.pos)),
                        // A room left since `from`: what came before the leave, and the leave.
                        "leave" | "ban" if m.pos > from => out.push(Target {
                            access: self.src.rooms.access(&room_id, user)?,
                            room_id,
                            ephemeral: false,
                        }),
                        _ => {}
                    }
                }
                Ok(out)
            }
        }
    }

    fn stream_once(
        &self,
        req: &StreamRequest,
        scope: &Scope,
        from: SyncToken,
    ) -> Result<StreamAnswer> {
        let rooms = &self.src.rooms;
        let user = &*req.user_id;
        let current = self.now();
        let now = current.pos;
        let after = from.pos.min(now);
        let limit = req.limit.clamp(1, MAX_LIMIT);
        let filter = EventFilter {
            ignored_senders: self.src.account_data.ignored_users(user)?,
            ..Default::default()
        };
        let targets = self.targets(user, scope, after)?;

        // The first `limit` room events after `from`, over all the rooms: each room gives at
        // most `limit`, and only from before the cut the rooms read so far make.
        let mut picked: Vec<TimelineEvent> = Vec::new();
        let cut = |picked: &[TimelineEvent]| match picked.get(limit - 1) {
            Some(e) => e.meta.pos,
            None => now,
        };
        let keep = |picked: &mut Vec<TimelineEvent>, more: Vec<TimelineEvent>| {
            picked.extend(more);
            picked.sort_by_key(|e| e.meta.pos);
            picked.dedup_by(|a, b| a.pdu.event_id == b.pdu.event_id);
            picked.truncate(limit);
        };
        for t in &targets {
            if !self
                .src
                .store
                .changed_after(&ChangeKey::Room(t.room_id.to_string()), after)
            {
                continue;
            }
            let reader = Reader {
                user,
                room_id: &t.room_id,
                access: &t.access,
                filter: &filter,
            };
            let page = rooms.page(reader, after, Some(cut(&picked)), false, limit)?;
            keep(&mut picked, page.events);
        }
        if matches!(scope, Scope::All) {
            // Invites and knocks: the user's own membership event, which is theirs to see.
            let mut own = Vec::new();
            for (_, m) in self.src.rooms.memberships_of(user)?.iter() {
                if (m.membership == "invite" || m.membership == "knock")
                    && m.pos > after
                    && m.pos <= cut(&picked)
                    && let Ok(id) = EventId::parse(&m.event_id)
                    && let Some(ev) = rooms.timeline_event(&id)?
                {
                    own.push(ev);
                }
            }
            keep(&mut picked, own);
        }
        let upto = if picked.len() == limit {
            cut(&picked)
        } else {
            now
        };

        let viewer = Some((user, req.device_id.as_str()));
        let mut chunk: Vec<Box<RawJsonValue>> = picked
            .iter()
            .map(|e| self.format(e, viewer))
            .collect::<Result<_>>()?;

        let presence = match scope {
            Scope::All => self.src.presence.visible_to(user, Some(from.ephemeral))?,
            Scope::Room { room_id, .. } => {
                let members: HashSet<OwnedUserId> = joined_members(self, room_id)?;
                self.src
                    .presence
                    .changed_since(Some(from.ephemeral))
                    .into_iter()
                    .filter(|v| members.contains(&v.user_id))
                    .collect()
            }
        };
        chunk.extend(presence.iter().map(PresenceView::to_legacy_event));
        for t in targets.iter().filter(|t| t.ephemeral) {
            if let Some(typing) = self.src.typing.for_sync(&t.room_id, Some(from.ephemeral)) {
                chunk.push(with_room_id(&typing, &t.room_id)?);
            }
        }
        let ignored = self.src.account_data.ignored_users(user)?;
        for t in targets.iter().filter(|t| t.ephemeral) {
            if self
                .src
                .store
                .changed_after(&ChangeKey::Room(t.room_id.to_string()), after)
                && let Some(r) =
                    self.src
                        .receipts
                        .for_sync(&t.room_id, user, Some(after), upto, &ignored)?
            {
                chunk.push(with_room_id(&r, &t.room_id)?);
            }
        }
        if !matches!(scope, Scope::Room { peeking: true, .. }) {
            for entry in self.src.account_data.changes(user, Some(after), upto)? {
                if entry.room_id.is_empty() && entry.kind == "m.push_rules" {
                    // Push rules have endpoints of their own; Synapse's stream has none.
                    continue;
                }
                let event = to_event(&entry);
                chunk.push(match RoomId::parse(&entry.room_id) {
                    Ok(room_id) => with_room_id(&event, &room_id)?,
                    Err(_) => event,
                });
            }
        }
        Ok(StreamAnswer {
            chunk,
            start: from,
            end: SyncToken {
                pos: upto,
                ephemeral: current.ephemeral,
                to_device: from.to_device,
            },
        })
    }

    /// `GET /events/{eventId}`: the event if the user may see it; `NotFound` otherwise, so that
    /// a refusal does not tell whether it exists (the spec's answer for both).
    pub fn event(
        &self,
        user: &UserId,
        device: &str,
        event_id: &EventId,
    ) -> Result<Box<RawJsonValue>> {
        let not_found = || Error::not_found("Event not found.");
        let rooms = &self.src.rooms;
        let ev = rooms.timeline_event(event_id)?.ok_or_else(not_found)?;
        let (ev, _) = rooms
            .visible_event(&ev.pdu.room_id, user, event_id)
            .map_err(|e| match e {
                Error::Forbidden(_) => not_found(),
                e => e,
            })?;
        v1_format(&rooms.format(&ev, Some((user, device)), true))
    }

    /// `GET /initialSync`: every room the user is joined or invited to (and, with `archived`,
    /// those they left), with the latest `limit` events of each, their presence, receipts and
    /// account data. Marks the user online, as a sync does.
    pub fn initial_sync(
        &self,
        user: &UserId,
        device: &str,
        limit: usize,
        archived: bool,
    ) -> Result<Snapshot> {
        let _syncing = self
            .src
            .presence
            .sync_started(user, Some(presence::State::Online));
        let now = self.now();
        let rooms = &self.src.rooms;
        let data = self.account_data(user, now.pos)?;
        let mut snapshot = Snapshot {
            end: now,
            rooms: Vec::new(),
            presence: self
                .src
                .presence
                .visible_to(user, None)?
                .iter()
                .map(PresenceView::to_legacy_event)
                .collect(),
            account_data: data.global,
            receipts: Vec::new(),
        };
        let mut room_data = data.rooms;
        for (room, m) in rooms.memberships_of(user)?.iter() {
            let wanted = match m.membership.as_str() {
                "join" | "invite" => true,
                "leave" => archived && !m.forgotten,
                _ => false,
            };
            if !wanted || m.pos > now.pos {
                continue;
            }
            let room_id = RoomId::parse(room).map_err(Error::internal)?;
            let public = rooms.exists(&room_id)? && rooms.head(&room_id)?.lock().is_public;
            let mut snap = RoomSnapshot {
                room_id: room_id.clone(),
                membership: Some(m.membership.clone()),
                public,
                invite: None,
                content: None,
            };
            if m.membership == "invite" {
                let id = EventId::parse(&m.event_id).map_err(Error::internal)?;
                if let Some(ev) = rooms.timeline_event(&id)? {
                    let sender = ev.pdu.sender.clone();
                    snap.invite = Some((self.format(&ev, None)?, sender));
                }
            } else {
                let access = rooms.access(&room_id, user)?;
                let mut content = self.room_content(user, device, &room_id, &access, limit, now)?;
                content.account_data = room_data.remove(room.as_str()).unwrap_or_default();
                snap.content = Some(content);
                if m.membership == "join"
                    && let Some(r) = self.src.receipts.for_sync(
                        &room_id,
                        user,
                        None,
                        now.pos,
                        &self.src.account_data.ignored_users(user)?,
                    )?
                {
                    snapshot.receipts.push(with_room_id(&r, &room_id)?);
                }
            }
            snapshot.rooms.push(snap);
        }
        Ok(snapshot)
    }

    /// `GET /rooms/{roomId}/initialSync`: one room as the user sees it: now if they are in it
    /// (or peek it, world readable), as it was when they left otherwise.
    pub fn room_initial_sync(
        &self,
        user: &UserId,
        device: &str,
        room_id: &RoomId,
        limit: usize,
    ) -> Result<RoomSnapshot> {
        let rooms = &self.src.rooms;
        if !rooms.exists(room_id)? {
            return Err(Error::forbidden(format!(
                "User {user} not in room {room_id}, and room previews are disabled"
            )));
        }
        let access = rooms.access(room_id, user)?;
        let membership = match self.src.store.membership(user.as_str(), room_id.as_str())? {
            Some(m) if m.membership == "join" || !access.current => Some(m.membership),
            // An invitee or a knocker reads a world-readable room as anyone does.
            _ => None,
        };
        let now = self.now();
        let mut content = self.room_content(user, device, room_id, &access, limit, now)?;
        if access.current {
            let members = joined_members(self, room_id)?;
            content.presence = self
                .src
                .presence
                .of_users(members.iter().map(|u| &**u))
                .iter()
                .map(PresenceView::to_legacy_event)
                .collect();
            content.receipts = self
                .src
                .receipts
                .for_sync(
                    room_id,
                    user,
                    None,
                    now.pos,
                    &self.src.account_data.ignored_users(user)?,
                )?
                .map(|r| with_room_id(&r, room_id))
                .transpose()?
                .into_iter()
                .collect();
        }
        content.account_data = self
            .account_data(user, now.pos)?
            .rooms
            .remove(room_id.as_str())
            .unwrap_or_default();
        Ok(RoomSnapshot {
            room_id: room_id.to_owned(),
            membership,
            public: rooms.head(room_id)?.lock().is_public,
            invite: None,
            content: Some(content),
        })
    }

    /// A room's latest `limit` events the user may see and its state, at `access.max_pos`.
    fn room_content(
        &self,
        user: &UserId,
        device: &str,
        room_id: &RoomId,
        access: &Access,
        limit: usize,
        now: SyncToken,
    ) -> Result<RoomContent> {
        let rooms = &self.src.rooms;
        let viewer = Some((user, device));
        let limit = limit.min(MAX_LIMIT);
        let events = if limit == 0 {
            Vec::new()
        } else {
            let filter = EventFilter {
                ignored_senders: self.src.account_data.ignored_users(user)?,
                ..Default::default()
            };
            let reader = Reader {
                user,
                room_id,
                access,
                filter: &filter,
            };
            let mut events = rooms
                .page(reader, access.max_pos, None, true, limit)?
                .events;
            events.reverse();
            events
        };
        let end_pos = TimelinePos::Live(access.max_pos);
        let start = events
            .first()
            .map_or(end_pos, |e| TimelinePos::before(&e.meta));
        let end = if access.current {
            now.to_string()
        } else {
            end_pos.to_string()
        };
        let state = rooms.visible_state(room_id, user)?;
        Ok(RoomContent {
            messages: events
                .iter()
                .map(|e| self.format(e, viewer))
                .collect::<Result<_>>()?,
            start: start.to_string(),
            end,
            state: state
                .iter()
                .map(|e| self.format(e, viewer))
                .collect::<Result<_>>()?,
            account_data: Vec::new(),
            presence: Vec::new(),
            receipts: Vec::new(),
        })
    }

    /// The user's account data as snapshot events: global (but push rules, which Synapse keeps
    /// apart), and per room with the room's tags first (left out when there are none).
    fn account_data(&self, user: &UserId, upto: StreamPos) -> Result<AccountDataEvents> {
        let mut out = AccountDataEvents::default();
        let mut entries = self.src.account_data.changes(user, None, upto)?;
        entries.sort_by_key(|e| e.kind != "m.tag");
        for entry in entries {
            if entry.room_id.is_empty() {
                if entry.kind != "m.push_rules" {
                    out.global.push(to_event(&entry));
                }
                continue;
            }
            if entry.kind == "m.tag"
                && serde_json::from_str::<Value>(&entry.content)
                    .ok()
                    .and_then(|c| c["tags"].as_object().map(Map::is_empty))
                    .unwrap_or(true)
            {
                continue;
            }
            out.rooms
                .entry(entry.room_id.clone())
                .or_default()
                .push(to_event(&entry));
        }
        Ok(out)
    }
}

#[derive(Default)]
struct AccountDataEvents {
    global: Vec<Box<RawJsonValue>>,
    rooms: std::collections::HashMap<String, Vec<Box<RawJsonValue>>>,
}

fn joined_members(legacy: &Legacy, room_id: &RoomId) -> Result<HashSet<OwnedUserId>> {
    Ok(legacy
        .src
        .rooms
        .joined_members(room_id)?
        .into_iter()
        .collect())
}

/// The v1 client format of an event, which legacy clients (and SyTest) read: the sender also
/// as `user_id`, and `age`, `prev_content`, `replaces_state` and `redacted_because` also at
/// the top level, besides `unsigned`.
fn v1_format(event: &RawJsonValue) -> Result<Box<RawJsonValue>> {
    let mut fields: Map<String, Value> = serde_json::from_str(event.get())?;
    if let Some(sender) = fields.get("sender").cloned() {
        fields.insert("user_id".to_owned(), sender);
    }
    if let Some(Value::Object(unsigned)) = fields.get("unsigned").cloned() {
        for key in ["age", "prev_content", "replaces_state", "redacted_because"] {
            if let Some(v) = unsigned.get(key) {
                fields.insert(key.to_owned(), v.clone());
            }
        }
    }
    Ok(serde_json::value::to_raw_value(&fields)?)
}

/// An event with the `room_id` of the room it belongs to (the stream mixes rooms).
fn with_room_id(event: &RawJsonValue, room_id: &RoomId) -> Result<Box<RawJsonValue>> {
    let mut fields: Map<String, Value> = serde_json::from_str(event.get())?;
    fields.insert("room_id".to_owned(), Value::String(room_id.to_string()));
    Ok(serde_json::value::to_raw_value(&fields)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(v: Value) -> Box<RawJsonValue> {
        serde_json::value::to_raw_value(&v).unwrap()
    }

    #[test]
    fn the_v1_format_names_the_sender_and_lifts_unsigned_fields() {
        let ev = raw(serde_json::json!({
            "type": "m.room.topic",
            "sender": "@a:x",
            "content": { "topic": "new" },
            "unsigned": { "age": 5, "prev_content": { "topic": "old" }, "replaces_state": "$p",
                          "transaction_id": "t" },
        }));
        let out: Value = serde_json::from_str(v1_format(&ev).unwrap().get()).unwrap();
        assert_eq!(out["user_id"], "@a:x");
        assert_eq!(out["age"], 5);
        assert_eq!(out["prev_content"]["topic"], "old");
        assert_eq!(out["replaces_state"], "$p");
        assert!(out.get("transaction_id").is_none());
        assert_eq!(out["unsigned"]["age"], 5, "unsigned stays");
    }

    #[test]
    fn stream_events_carry_their_room() {
        let room = RoomId::parse("!r:x").unwrap();
        let ev = raw(serde_json::json!({ "type": "m.typing", "content": { "user_ids": [] } }));
        let out: Value = serde_json::from_str(with_room_id(&ev, &room).unwrap().get()).unwrap();
        assert_eq!(out["room_id"], "!r:x");
        assert_eq!(out["type"], "m.typing");
    }
}
