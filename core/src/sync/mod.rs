//! `/sync`: what changed for a user since a token, waiting for it if nothing has.
//!
//! A token ([`SyncToken`]) holds a position in each stream (see [`crate::streams`]). A room is in
//! a sync response when one of its events or receipts, the user's membership, its typing set or
//! the user's account data for it changed after the token. The wait is a per-user watch channel
//! (see [`crate::notifier`]): an update wakes only the users it concerns. The WebSocket transport
//! computes its frames with the same [`SyncService::wait_for_changes`].

mod lazy_members;
mod state;

use std::sync::Arc;
use std::time::Duration;

use hearth_storage::{ChangeKey, MembershipRecord, Store, StreamPos};
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::value::RawValue as RawJsonValue;

use crate::account_data::{AccountData, to_event};
use crate::e2ee::{DeviceListChanges, E2ee};
use crate::notifier::Notifier;
use crate::presence::{self, Presence};
use crate::receipts::Receipts;
use crate::rooms::invites::{INVITE_STATE_TYPES, stripped};
use crate::rooms::timeline::{Access, EventFilter, Reader, TimelineEvent};
use crate::rooms::{PduRef, Rooms};
use crate::streams::{EphemeralSerial, SyncToken};
use crate::to_device::{self, ToDevice};
use crate::typing::Typing;
use crate::unread::{RoomCounts, Unread};
use crate::{Error, Result};
use lazy_members::{DeviceRoom, SentMembers};
use state::RoomRange;

/// The room-level parts of a sync filter the server applies.
#[derive(Clone, Debug, Default)]
pub struct SyncFilter {
    pub timeline: EventFilter,
    pub state: EventFilter,
    pub rooms: Option<Vec<String>>,
    pub not_rooms: Vec<String>,
    pub include_leave: bool,
    pub ephemeral: EventFilter,
    pub room_account_data: EventFilter,
    pub account_data: EventFilter,
    pub presence: EventFilter,
    /// The client wants per-thread unread counts (`unread_thread_notifications`).
    pub thread_counts: bool,
    /// `event_format: federation`: room events as servers exchange them.
    pub federation_format: bool,
}

/// Applies a filter's type and sender parts, and its limit, to non-PDU events.
fn filter_events(
    events: Vec<Box<RawJsonValue>>,
    filter: &EventFilter,
    kind_and_sender: impl Fn(&RawJsonValue) -> (String, Option<String>),
) -> Vec<Box<RawJsonValue>> {
    let mut out: Vec<Box<RawJsonValue>> = events
        .into_iter()
        .filter(|e| {
            let (kind, sender) = kind_and_sender(e);
            filter.matches_parts(&kind, sender.as_deref())
        })
        .collect();
    if let Some(limit) = filter.limit {
        out.truncate(limit);
    }
    out
}

fn kind_and_sender(e: &RawJsonValue) -> (String, Option<String>) {
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(rename = "type")]
        kind: String,
        sender: Option<String>,
    }
    serde_json::from_str::<Head>(e.get())
        .map(|h| (h.kind, h.sender))
        .unwrap_or_default()
}

impl SyncFilter {
    fn wants_room(&self, room_id: &str) -> bool {
        !self.not_rooms.iter().any(|r| r == room_id)
            && self
                .rooms
                .as_ref()
                .is_none_or(|rs| rs.iter().any(|r| r == room_id))
    }
}

#[derive(Clone)]
pub struct SyncRequest {
    pub user_id: OwnedUserId,
    pub device_id: String,
    pub since: Option<SyncToken>,
    pub timeout: Duration,
    pub full_state: bool,
    pub filter: SyncFilter,
    /// MSC4222: report the state at the end of the timeline instead of at its start.
    pub state_after: bool,
    /// `set_presence`: how this sync changes the user's presence (online when absent).
    pub set_presence: Option<presence::State>,
    /// Using `since` acknowledges what the responses before it carried (long-poll `/sync`).
    /// The WebSocket transport acknowledges with explicit frames instead.
    pub acknowledges: bool,
}

#[derive(Default)]
pub struct SyncResponse {
    pub next_batch: SyncToken,
    /// Global account data events.
    pub account_data: Vec<Box<RawJsonValue>>,
    pub presence: Vec<Box<RawJsonValue>>,
    pub to_device: Vec<Box<RawJsonValue>>,
    pub joined: Vec<RoomUpdate>,
    pub invited: Vec<(OwnedRoomId, Vec<Box<RawJsonValue>>)>,
    /// Rooms the user knocked on, with their stripped state.
    pub knocked: Vec<(OwnedRoomId, Vec<Box<RawJsonValue>>)>,
    pub left: Vec<RoomUpdate>,
    pub device_lists: DeviceListChanges,
    /// The device's one-time key counts by algorithm, in every response.
    pub one_time_keys_count: std::collections::BTreeMap<String, u64>,
    pub unused_fallback_key_types: Vec<String>,
}

impl SyncResponse {
    /// Whether a long-poll has nothing to answer yet (key counts are always there and do not
    /// count).
    pub fn is_empty(&self) -> bool {
        self.device_lists.is_empty()
            && self.joined.is_empty()
            && self.invited.is_empty()
            && self.knocked.is_empty()
            && self.left.is_empty()
            && self.account_data.is_empty()
            && self.presence.is_empty()
            && self.to_device.is_empty()
    }
}

pub struct RoomUpdate {
    pub room_id: OwnedRoomId,
    pub timeline: Vec<Box<RawJsonValue>>,
    pub limited: bool,
    pub prev_batch: Option<StreamPos>,
    pub state: Vec<Box<RawJsonValue>>,
    pub summary: Option<RoomSummary>,
    pub account_data: Vec<Box<RawJsonValue>>,
    pub ephemeral: Vec<Box<RawJsonValue>>,
    /// Unread counts, for joined rooms.
    pub counts: Option<RoomCounts>,
    /// Users whose join, invite or knock this update carries: the sync adds their presence.
    pub arrived: Vec<OwnedUserId>,
}

impl RoomUpdate {
    fn is_empty(&self) -> bool {
        self.timeline.is_empty()
            && self.state.is_empty()
            && self.account_data.is_empty()
            && self.ephemeral.is_empty()
    }
}

pub struct RoomSummary {
    pub heroes: Vec<OwnedUserId>,
    pub joined: u64,
    pub invited: u64,
}

/// What a sync reads from; `Core::new` wires it (sliding sync reads the same).
#[derive(Clone)]
pub struct SyncSources {
    pub store: Arc<dyn Store>,
    pub rooms: Arc<Rooms>,
    pub account_data: Arc<AccountData>,
    pub notifier: Arc<Notifier>,
    pub receipts: Arc<Receipts>,
    pub typing: Arc<Typing>,
    pub presence: Arc<Presence>,
    pub to_device: Arc<ToDevice>,
    pub unread: Arc<Unread>,
    pub e2ee: Arc<E2ee>,
    pub ephemeral: Arc<EphemeralSerial>,
}

pub struct SyncService {
    store: Arc<dyn Store>,
    rooms: Arc<Rooms>,
    account_data: Arc<AccountData>,
    notifier: Arc<Notifier>,
    receipts: Arc<Receipts>,
    typing: Arc<Typing>,
    presence: Arc<Presence>,
    to_device: Arc<ToDevice>,
    unread: Arc<Unread>,
    e2ee: Arc<E2ee>,
    ephemeral: Arc<EphemeralSerial>,
    sent_members: SentMembers,
}

impl SyncService {
    pub fn new(src: SyncSources) -> Self {
        Self {
            store: src.store,
            rooms: src.rooms,
            account_data: src.account_data,
            notifier: src.notifier,
            receipts: src.receipts,
            typing: src.typing,
            presence: src.presence,
            to_device: src.to_device,
            unread: src.unread,
            e2ee: src.e2ee,
            ephemeral: src.ephemeral,
            sent_members: SentMembers::default(),
        }
    }

    /// One sync: returns at once when something changed since the token (or there is no token),
    /// otherwise waits up to the timeout for a change.
    pub async fn sync(&self, req: SyncRequest) -> Result<SyncResponse> {
        let _syncing = self.presence.sync_started(&req.user_id, req.set_presence);
        self.acknowledge(&req);
        self.wait_for_changes(&req).await
    }

    fn acknowledge(&self, req: &SyncRequest) {
        if let Some(since) = req.since
            && req.acknowledges
        {
            self.acknowledged(&req.user_id, &req.device_id, since);
        }
    }

    /// A device has everything up to `token`: its to-device messages up to there go, and the
    /// events it got are marked delivered (off the request path).
    pub fn acknowledged(&self, user: &UserId, device: &str, token: SyncToken) {
        if let Err(e) = self.to_device.acknowledge(user, device, token.to_device) {
            tracing::warn!(error = %e, "acknowledging to-device messages failed");
        }
        let receipts = self.receipts.clone();
        let user = user.to_owned();
        tokio::spawn(async move {
            if let Err(e) = receipts.acknowledge(&user, token.pos).await {
                tracing::warn!(error = %e, "marking delivery failed");
            }
        });
    }

    /// The wait of [`Self::sync`], without its presence and delivery side effects: for the
    /// WebSocket transport, which does those per connection and per acknowledgement.
    pub async fn wait_for_changes(&self, req: &SyncRequest) -> Result<SyncResponse> {
        let deadline = tokio::time::Instant::now() + req.timeout;
        // Subscribe before reading the position, so that no commit slips between the two.
        let mut wake = self.notifier.subscribe(&req.user_id);
        loop {
            wake.borrow_and_update();
            // Boxed: an idle long-poll then holds only this loop's small state, not the space
            // of the whole computation, which is what makes idle connections cheap.
            let resp = Box::pin(self.compute(req)).await?;
            if req.since.is_none() || !resp.is_empty() || req.full_state {
                return Ok(resp);
            }
            match tokio::time::timeout_at(deadline, wake.changed()).await {
                Ok(Ok(())) => continue,
                // Timed out (or the notifier went away): an empty response moves the token on.
                _ => return Ok(resp),
            }
        }
    }

    async fn compute(&self, req: &SyncRequest) -> Result<SyncResponse> {
        // What the user ignores, read at every sync: the list changes through account data.
        let ignored = self.account_data.ignored_users(&req.user_id)?;
        let with_ignored;
        let req = if ignored.is_empty() {
            req
        } else {
            let mut r = req.clone();
            r.filter.timeline.ignored_senders = ignored;
            with_ignored = r;
            &with_ignored
        };
        // Read the ephemeral serial first: a change racing this sync is then sent again next
        // time rather than lost.
        let ephemeral = self.ephemeral.current();
        let now = self.store.persisted_pos();
        let since = req.since.map(|s| SyncToken {
            pos: s.pos.min(now),
            to_device: s.to_device.min(now),
            ..s
        });
        let since_pos = since.map(|s| s.pos);
        let since_eph = since.map(|s| s.ephemeral);
        let mut resp = SyncResponse {
            next_batch: SyncToken {
                pos: now,
                ephemeral,
                to_device: now,
            },
            ..Default::default()
        };

        let to_device_after = since.map_or(0, |s| s.to_device);
        let messages =
            self.to_device
                .pending(&req.user_id, &req.device_id, to_device_after, now)?;
        if messages.len() == to_device::PAGE {
            resp.next_batch.to_device = messages.last().map_or(now, |m| m.pos);
        }
        resp.to_device = messages
            .into_iter()
            .filter_map(|m| RawJsonValue::from_string(m.json).ok())
            .collect();
        resp.presence = filter_events(
            self.presence.for_sync(&req.user_id, since_eph)?,
            &req.filter.presence,
            kind_and_sender,
        );

        let mut room_data: std::collections::HashMap<String, Vec<Box<RawJsonValue>>> =
            Default::default();
        for entry in self.account_data.changes(&req.user_id, since_pos, now)? {
            if entry.room_id.is_empty() {
                if req.filter.account_data.matches_parts(&entry.kind, None) {
                    resp.account_data.push(to_event(&entry));
                }
            } else if req
                .filter
                .room_account_data
                .matches_parts(&entry.kind, None)
            {
                room_data
                    .entry(entry.room_id.clone())
                    .or_default()
                    .push(to_event(&entry));
            }
        }
        // Users the user has come to share a room with: their presence comes whatever its age.
        let mut arrived: Vec<OwnedUserId> = Vec::new();
        for (room, m) in self.rooms.memberships_of(&req.user_id)?.iter() {
            if !req.filter.wants_room(room) || m.pos > now {
                continue;
            }
            let room_id = RoomId::parse(room).map_err(Error::internal)?;
            let changed_membership = since_pos.is_none_or(|s| m.pos > s);
            // How the membership got here since the last sync, when it moved at all.
            let moved = match since_pos {
                Some(s) if changed_membership => Some(self.membership_since(m, s)?),
                _ => None,
            };
            match m.membership.as_str() {
                "join" => {
                    // Joined since the last sync (or left and came back): the room is new to
                    // the client, with its whole state, as on a first sync.
                    let newly_joined = moved
                        .as_ref()
                        .is_some_and(|h| h.left_since || h.at_since.as_deref() != Some("join"));
                    let room_changed = match since {
                        Some(s) => {
                            self.store
                                .changed_after(&ChangeKey::Room(room.clone()), s.pos)
                                || self.typing.changed_after(&room_id, s.ephemeral)
                        }
                        None => true,
                    };
                    let data = room_data.remove(room.as_str());
                    if changed_membership || room_changed || req.full_state || data.is_some() {
                        let full = since.is_none() || newly_joined || req.full_state;
                        let range = RoomRange {
                            since: since_pos,
                            upto: now,
                            next_batch: now,
                            full_state: full,
                            newly_joined,
                            joined_at: Some(m.pos),
                        };
                        let mut update = self.room_update(req, &room_id, range)?;
                        update.account_data = data.unwrap_or_default();
                        let mut ephemeral: Vec<Box<RawJsonValue>> = Vec::new();
                        ephemeral.extend(self.typing.for_sync(&room_id, since_eph));
                        ephemeral.extend(self.receipts.for_sync(
                            &room_id,
                            &req.user_id,
                            since_pos,
                            now,
                            &req.filter.timeline.ignored_senders,
                        )?);
                        update.ephemeral =
                            filter_events(ephemeral, &req.filter.ephemeral, kind_and_sender);
                        if !full && update.is_empty() {
                            continue;
                        }
                        if since.is_some() {
                            if newly_joined {
                                arrived.extend(self.rooms.joined_members(&room_id)?);
                            }
                            arrived.append(&mut update.arrived);
                        }
                        update.counts =
                            Some(self.unread.counts(&req.user_id, &room_id, now).await?);
                        resp.joined.push(update);
                    }
                }
                "invite" if changed_membership && !self.invited_by_ignored(req, m)? => {
                    resp.invited
                        .push((room_id.clone(), self.invite_state(&room_id, m)?));
                }
                "knock" if changed_membership => {
                    resp.knocked
                        .push((room_id.clone(), self.invite_state(&room_id, m)?));
                }
                // As Synapse: a first sync leaves out rooms the user left by themselves
                // (unless asked), but shows those they were kicked or banned from.
                "leave" | "ban"
                    if !m.forgotten
                        && changed_membership
                        && (since.is_some()
                            || req.filter.include_leave
                            || !self.left_by_self(m, &req.user_id)?) =>
                {
                    if !self.rooms.exists(&room_id)? {
                        // An invite (or knock) of a room this server is not in, turned down:
                        // the kept leave event is all there is to show.
                        resp.left
                            .push(self.kept_leave_update(req, &room_id, m, now)?);
                        continue;
                    }
                    // Joined and left again since the last sync: the client never had the
                    // room, so it gets the whole state up to the leave.
                    let joined_between = moved
                        .as_ref()
                        .is_some_and(|h| h.joined_since && h.at_since.as_deref() != Some("join"));
                    let range = RoomRange {
                        since: since_pos,
                        upto: m.pos,
                        next_batch: now,
                        full_state: since.is_none() || joined_between,
                        newly_joined: joined_between,
                        joined_at: None,
                    };
                    resp.left.push(self.room_update(req, &room_id, range)?);
                }
                _ => {}
            }
        }
        if !arrived.is_empty() {
            arrived.sort_unstable();
            arrived.dedup();
            arrived.retain(|u| *u != req.user_id);
            let fresh: Vec<Box<RawJsonValue>> = self
                .presence
                .of_users(arrived.iter().map(|u| &**u))
                .into_iter()
                .filter(|p| {
                    !resp
                        .presence
                        .iter()
                        .any(|e| kind_and_sender(e).1.as_deref() == Some(p.user_id.as_str()))
                })
                .map(|p| p.to_event())
                .collect();
            resp.presence
                .extend(filter_events(fresh, &req.filter.presence, kind_and_sender));
        }
        if let Some(since) = since_pos {
            resp.device_lists = self.e2ee.device_lists().changes(&req.user_id, since, now)?;
        }
        resp.one_time_keys_count = self
            .e2ee
            .one_time_key_counts(&req.user_id, &req.device_id)?;
        resp.unused_fallback_key_types = self
            .e2ee
            .unused_fallback_key_types(&req.user_id, &req.device_id)?;
        Ok(resp)
    }

    /// Whether an invite came from a user the invitee ignores: it is not shown.
    fn invited_by_ignored(&self, req: &SyncRequest, m: &MembershipRecord) -> Result<bool> {
        let ignored = &req.filter.timeline.ignored_senders;
        if ignored.is_empty() {
            return Ok(false);
        }
        let Ok(id) = ruma::EventId::parse(&m.event_id) else {
            return Ok(false);
        };
        Ok(self
            .rooms
            .pdu(&id)?
            .is_some_and(|p| ignored.iter().any(|u| u == p.sender.as_str())))
    }

    /// A room's timeline and state for one sync, as Synapse computes them.
    ///
    /// The timeline is what happened in `(since, upto]` (the last `limit` events of it), or the
    /// room's latest events when the room is new to the client. The state is what the client
    /// needs on top of what it had to know the state at the timeline's start: all of it when
    /// `full_state`; otherwise nothing for an unbroken timeline, and for a gap the state that
    /// differs from the last sync's.
    fn room_update(
        &self,
        req: &SyncRequest,
        room_id: &RoomId,
        range: RoomRange,
    ) -> Result<RoomUpdate> {
        let user = &*req.user_id;
        let joined = range.joined_at.is_some();
        let access = Access {
            max_pos: range.upto,
            current: joined,
            joined_at: range.joined_at,
            // A left room's timeline shows what the user was joined for, as Synapse's does.
            shared_history: joined,
            current_state_in_timeline: joined,
        };
        let limit = req.filter.timeline.limit.unwrap_or(10);
        let to = if range.newly_joined {
            None
        } else {
            range.since
        };
        let reader = Reader {
            user,
            room_id,
            access: &access,
            filter: &req.filter.timeline,
        };
        let page = self.rooms.page(reader, range.upto, to, true, limit)?;
        let mut events = page.events;
        events.reverse();
        // A room new to the client is always "limited": it has history before the timeline.
        let limited = page.end.is_some() || range.newly_joined;
        // A timeline that holds the room's whole history on a first sync (or a new join) hands
        // out its end as `prev_batch`, as Synapse does: paging back from it reads the room
        // (SyTest and clients written against Synapse expect events there).
        let whole_room = page.end.is_none() && (range.since.is_none() || range.newly_joined);
        let prev_batch = match events.first() {
            Some(first) if !whole_room => Some(first.meta.pos - 1),
            _ => Some(range.upto),
        };

        let mut state = self.state_for(req, room_id, &range, &events, limited)?;
        let lazy = req.filter.state.lazy_load_members;
        let viewer = Some((user, req.device_id.as_str()));
        // The summary only changes with membership; clients keep the last one they got.
        let membership_changed = range.full_state
            || events
                .iter()
                .chain(state.iter())
                .any(|e| e.pdu.membership().is_some());
        let summary = if joined && membership_changed {
            let summary = self.summary(room_id, user)?;
            if lazy && !summary.heroes.is_empty() {
                // A lazy-loading client names the room from its heroes' member events.
                let known: std::collections::HashSet<&str> = events
                    .iter()
                    .chain(state.iter())
                    .filter(|e| e.pdu.membership().is_some())
                    .filter_map(|e| e.pdu.state_key.as_deref())
                    .collect();
                let missing: Vec<String> = summary
                    .heroes
                    .iter()
                    .filter(|h| !known.contains(h.as_str()))
                    .map(|h| h.to_string())
                    .collect();
                if !missing.is_empty()
                    && let Some(group) = self.rooms.state_group_at(room_id, range.upto)?
                {
                    let heroes = self.rooms.member_events_for(group, missing)?;
                    state.extend(self.unsent_members(req, room_id, &range, heroes));
                }
            }
            Some(summary)
        } else {
            None
        };
        if lazy {
            let at = DeviceRoom {
                user,
                device: &req.device_id,
                room: room_id,
            };
            for e in events.iter().chain(state.iter()) {
                if e.pdu.membership().is_some()
                    && let Some(member) = e.pdu.state_key.as_deref()
                {
                    self.sent_members.record(
                        &at,
                        member,
                        e.pdu.event_id.as_str(),
                        range.next_batch,
                    );
                }
            }
        }
        let arrived = events
            .iter()
            .chain(state.iter())
            .filter(|e| {
                matches!(
                    e.pdu.membership().as_deref(),
                    Some("join" | "invite" | "knock")
                )
            })
            .filter_map(|e| UserId::parse(e.pdu.state_key.as_deref()?).ok())
            .collect();
        let format = |e: &TimelineEvent| {
            if req.filter.federation_format {
                self.rooms.format_federation(e)
            } else {
                Ok(self.rooms.format(e, viewer, false))
            }
        };
        Ok(RoomUpdate {
            room_id: room_id.to_owned(),
            timeline: events.iter().map(format).collect::<Result<_>>()?,
            limited,
            prev_batch,
            state: state.iter().map(format).collect::<Result<_>>()?,
            summary,
            account_data: Vec::new(),
            ephemeral: Vec::new(),
            counts: None,
            arrived,
        })
    }

    /// The update of a room this server is not in that the user left: its timeline is the
    /// kept leave event alone (none for a leave kept before leave events were).
    fn kept_leave_update(
        &self,
        req: &SyncRequest,
        room_id: &RoomId,
        m: &MembershipRecord,
        now: StreamPos,
    ) -> Result<RoomUpdate> {
        let id = ruma::EventId::parse(&m.event_id).map_err(Error::internal)?;
        let viewer = Some((&*req.user_id, req.device_id.as_str()));
        let timeline = match self.rooms.timeline_event(&id)? {
            Some(e) if e.pdu.membership().as_deref() == Some("leave") => {
                vec![self.rooms.format(&e, viewer, false)]
            }
            _ => Vec::new(),
        };
        Ok(RoomUpdate {
            room_id: room_id.to_owned(),
            timeline,
            limited: false,
            prev_batch: Some(now),
            state: Vec::new(),
            summary: None,
            account_data: Vec::new(),
            ephemeral: Vec::new(),
            counts: None,
            arrived: Vec::new(),
        })
    }

    fn left_by_self(&self, m: &MembershipRecord, user: &UserId) -> Result<bool> {
        let id = ruma::EventId::parse(&m.event_id).map_err(Error::internal)?;
        Ok(m.membership == "leave" && self.rooms.pdu(&id)?.is_some_and(|p| p.sender == user))
    }

    pub(crate) fn summary(&self, room_id: &RoomId, user: &UserId) -> Result<RoomSummary> {
        // Heroes name a room that has no name of its own; Synapse leaves them out otherwise.
        let named = self
            .rooms
            .state_event(room_id, "m.room.name", "")?
            .is_some_and(|p| {
                p.content_value()["name"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty())
            })
            || self
                .rooms
                .state_event(room_id, "m.room.canonical_alias", "")?
                .is_some_and(|p| p.content_value()["alias"].is_string());
        let head = self.rooms.head(room_id)?;
        let h = head.lock();
        let count = |m: &str| h.members.values().filter(|v| *v == m).count() as u64;
        let mut heroes: Vec<OwnedUserId> = h
            .members
            .iter()
            .filter(|(u, m)| *u != user && (*m == "join" || *m == "invite"))
            .map(|(u, _)| u.clone())
            .collect();
        heroes.sort();
        heroes.truncate(if named { 0 } else { 5 });
        Ok(RoomSummary {
            heroes,
            joined: count("join"),
            invited: count("invite"),
        })
    }

    pub(crate) fn invite_state(
        &self,
        room_id: &RoomId,
        m: &MembershipRecord,
    ) -> Result<Vec<Box<RawJsonValue>>> {
        if !self.rooms.exists(room_id)? {
            // An invite from (or a knock on) another server's room this server is not in.
            return self.rooms.kept_stripped_state(&m.event_id);
        }
        let state = self.rooms.current_state(room_id)?;
        let mut out: Vec<PduRef> = Vec::new();
        for t in INVITE_STATE_TYPES {
            if let Some(id) = state.get(&(t.to_owned(), String::new()))
                && let Some(p) = self.rooms.pdu(id)?
            {
                out.push(p);
            }
        }
        let invite_id = ruma::EventId::parse(&m.event_id).map_err(Error::internal)?;
        if let Some(invite) = self.rooms.pdu(&invite_id)? {
            // The sender's member event (for a knock, the knock itself: once).
            if let Some(id) = state.get(&("m.room.member".to_owned(), invite.sender.to_string()))
                && *id != invite.event_id
                && let Some(p) = self.rooms.pdu(id)?
            {
                out.push(p);
            }
            out.push(invite);
        }
        Ok(out.iter().map(stripped).collect())
    }
}
