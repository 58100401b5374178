//! `/sync`: what changed for a user since a token, waiting for it if nothing has.
//!
//! A token ([`SyncToken`]) holds a position in each stream (see [`crate::streams`]). A room is in
//! a sync response when one of its events or receipts, the user's membership, its typing set or
//! the user's account data for it changed after the token. The wait is a per-user watch channel
//! (see [`crate::notifier`]): an update wakes only the users it concerns. The WebSocket transport
//! computes its frames with the same [`SyncService::wait_for_changes`].

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
        for (room, m) in self.rooms.memberships_of(&req.user_id)?.iter() {
            if !req.filter.wants_room(room) || m.pos > now {
                continue;
            }
            let room_id = RoomId::parse(room).map_err(Error::internal)?;
            let changed_membership = since_pos.is_none_or(|s| m.pos > s);
            match m.membership.as_str() {
                "join" => {
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
                        let newly = changed_membership || req.full_state;
                        let mut update =
                            self.room_update(req, &room_id, since_pos, now, newly, Some(m.pos))?;
                        update.account_data = data.unwrap_or_default();
                        let mut ephemeral: Vec<Box<RawJsonValue>> = Vec::new();
                        ephemeral.extend(self.typing.for_sync(&room_id, since_eph));
                        ephemeral.extend(self.receipts.for_sync(
                            &room_id,
                            &req.user_id,
                            since_pos,
                            now,
                        )?);
                        update.ephemeral =
                            filter_events(ephemeral, &req.filter.ephemeral, kind_and_sender);
                        if !newly && update.is_empty() {
                            continue;
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
                    let full = since.is_none();
                    resp.left
                        .push(self.room_update(req, &room_id, since_pos, m.pos, full, None)?);
                }
                _ => {}
            }
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

    /// A room's timeline and state for one sync. `full` asks for the whole state at the start
    /// of the timeline (first sync, new join, `full_state`); otherwise the state is the change
    /// between `since` and the timeline's start, which is empty unless the timeline is limited.
    fn room_update(
        &self,
        req: &SyncRequest,
        room_id: &RoomId,
        since: Option<StreamPos>,
        upto: StreamPos,
        full: bool,
        joined_at: Option<StreamPos>,
    ) -> Result<RoomUpdate> {
        let user = &*req.user_id;
        let joined = joined_at.is_some();
        let access = Access {
            max_pos: upto,
            current: joined,
            joined_at,
            // A left room's timeline shows what the user was joined for, as Synapse's does.
            shared_history: joined,
        };
        let limit = req.filter.timeline.limit.unwrap_or(10);
        let to = if full { None } else { since };
        let reader = Reader {
            user,
            room_id,
            access: &access,
            filter: &req.filter.timeline,
        };
        let page = self.rooms.page(reader, upto, to, true, limit)?;
        let mut events = page.events;
        events.reverse();
        let limited = page.end.is_some();
        let prev_batch = events.first().map(|e| e.meta.pos - 1).or(Some(upto));

        let state_group_at = |pos: StreamPos| self.rooms.state_group_at(room_id, pos);
        let start_group = if req.state_after {
            match events.last() {
                Some(e) => Some(e.meta.state_after),
                None => state_group_at(upto)?,
            }
        } else {
            match events.first() {
                Some(e) => Some(e.meta.state_before),
                None => state_group_at(upto)?,
            }
        };
        let mut state: Vec<TimelineEvent> = Vec::new();
        if let Some(start) = start_group {
            if full {
                state = self.rooms.state_events(start)?;
            } else if (limited || req.state_after)
                && let Some(s) = since
            {
                let before = match state_group_at(s)? {
                    Some(g) => self.rooms.state_at_group(g)?,
                    None => Default::default(),
                };
                let at_start = self.rooms.state_at_group(start)?;
                for (k, id) in at_start.iter() {
                    if before.get(k) != Some(id)
                        && let Some(ev) = self.rooms.timeline_event(id)?
                    {
                        state.push(ev);
                    }
                }
            }
        }
        if req.filter.state.lazy_load_members {
            // Only the members who speak in this timeline (and the user), but all of those,
            // even when their member event did not change since the last sync.
            let senders: std::collections::HashSet<&str> = events
                .iter()
                .map(|e| e.pdu.sender.as_str())
                .chain([user.as_str()])
                .collect();
            state.retain(|e| {
                e.pdu.kind.to_string() != "m.room.member"
                    || e.pdu
                        .state_key
                        .as_deref()
                        .is_some_and(|k| senders.contains(k))
            });
            if let Some(start) = start_group {
                let have: std::collections::HashSet<String> = state
                    .iter()
                    .filter_map(|e| e.pdu.state_key.clone())
                    .collect();
                let missing = senders
                    .iter()
                    .filter(|s| !have.contains(**s))
                    .map(|s| s.to_string());
                state.extend(self.rooms.member_events_for(start, missing)?);
            }
        }
        state.retain(|e| req.filter.state.matches(&e.pdu));

        let viewer = Some((user, req.device_id.as_str()));
        // The summary only changes with membership; clients keep the last one they got.
        let membership_changed = full
            || events
                .iter()
                .chain(state.iter())
                .any(|e| e.pdu.membership().is_some());
        let summary = if joined && membership_changed {
            Some(self.summary(room_id, user)?)
        } else {
            None
        };
        Ok(RoomUpdate {
            room_id: room_id.to_owned(),
            timeline: events
                .iter()
                .map(|e| self.rooms.format(e, viewer, false))
                .collect(),
            limited,
            prev_batch,
            state: state
                .iter()
                .map(|e| self.rooms.format(e, viewer, false))
                .collect(),
            summary,
            account_data: Vec::new(),
            ephemeral: Vec::new(),
            counts: None,
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
