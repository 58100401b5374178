//! `/sync`: what changed for a user since a stream position, waiting for it if nothing has.
//!
//! A sync token is a global stream position. A room is in a sync response when one of its
//! events, or the user's membership, lies after the token. The wait is a per-user watch channel
//! (see [`crate::notifier`]): a commit wakes only the users it concerns.

use std::sync::Arc;
use std::time::Duration;

use hearth_storage::{MembershipRecord, Store, StreamPos};
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::Serialize;
use serde_json::value::RawValue as RawJsonValue;

use crate::account_data::{AccountData, to_event};
use crate::notifier::Notifier;
use crate::rooms::timeline::{Access, EventFilter, TimelineEvent};
use crate::rooms::{PduRef, Rooms};
use crate::{Error, Result};

/// The room-level parts of a sync filter the server applies.
#[derive(Clone, Debug, Default)]
pub struct SyncFilter {
    pub timeline: EventFilter,
    pub state: EventFilter,
    pub rooms: Option<Vec<String>>,
    pub not_rooms: Vec<String>,
    pub include_leave: bool,
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

pub struct SyncRequest {
    pub user_id: OwnedUserId,
    pub device_id: String,
    pub since: Option<StreamPos>,
    pub timeout: Duration,
    pub full_state: bool,
    pub filter: SyncFilter,
    /// MSC4222: report the state at the end of the timeline instead of at its start.
    pub state_after: bool,
}

#[derive(Default)]
pub struct SyncResponse {
    pub next_batch: StreamPos,
    /// Global account data events.
    pub account_data: Vec<Box<RawJsonValue>>,
    pub joined: Vec<RoomUpdate>,
    pub invited: Vec<(OwnedRoomId, Vec<Box<RawJsonValue>>)>,
    pub left: Vec<RoomUpdate>,
}

impl SyncResponse {
    pub fn is_empty(&self) -> bool {
        self.joined.is_empty()
            && self.invited.is_empty()
            && self.left.is_empty()
            && self.account_data.is_empty()
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
}

pub struct RoomSummary {
    pub heroes: Vec<OwnedUserId>,
    pub joined: u64,
    pub invited: u64,
}

pub struct SyncService {
    store: Arc<dyn Store>,
    rooms: Arc<Rooms>,
    account_data: Arc<AccountData>,
    notifier: Arc<Notifier>,
}

/// Events a client sees in the state of an invite it has not accepted ("stripped state").
const INVITE_STATE_TYPES: [&str; 7] = [
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

impl SyncService {
    pub fn new(
        store: Arc<dyn Store>,
        rooms: Arc<Rooms>,
        account_data: Arc<AccountData>,
        notifier: Arc<Notifier>,
    ) -> Self {
        Self {
            store,
            rooms,
            account_data,
            notifier,
        }
    }

    pub async fn sync(&self, req: SyncRequest) -> Result<SyncResponse> {
        let deadline = tokio::time::Instant::now() + req.timeout;
        // Subscribe before reading the position, so that no commit slips between the two.
        let mut wake = self.notifier.subscribe(&req.user_id);
        loop {
            wake.borrow_and_update();
            let resp = self.compute(&req)?;
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

    fn compute(&self, req: &SyncRequest) -> Result<SyncResponse> {
        let now = self.store.persisted_pos();
        let since = req.since.map(|s| s.min(now));
        let mut resp = SyncResponse {
            next_batch: now,
            ..Default::default()
        };
        let mut room_data: std::collections::HashMap<String, Vec<Box<RawJsonValue>>> =
            Default::default();
        for entry in self.account_data.changes(&req.user_id, since, now)? {
            if entry.room_id.is_empty() {
                resp.account_data.push(to_event(&entry));
            } else {
                room_data
                    .entry(entry.room_id.clone())
                    .or_default()
                    .push(to_event(&entry));
            }
        }
        for (room, m) in self.store.memberships_of_user(req.user_id.as_str())? {
            if !req.filter.wants_room(&room) || m.pos > now {
                continue;
            }
            let room_id = RoomId::parse(&room).map_err(Error::internal)?;
            let changed_membership = since.is_none_or(|s| m.pos > s);
            match m.membership.as_str() {
                "join" => {
                    let room_changed = match since {
                        Some(s) => self.rooms.has_events_between(&room_id, s, now)?,
                        None => true,
                    };
                    let data = room_data.remove(&room);
                    if changed_membership || room_changed || req.full_state || data.is_some() {
                        let newly = changed_membership || req.full_state;
                        let mut update =
                            self.room_update(req, &room_id, since, now, newly, true)?;
                        update.account_data = data.unwrap_or_default();
                        resp.joined.push(update);
                    }
                }
                "invite" if changed_membership => {
                    resp.invited
                        .push((room_id.clone(), self.invite_state(&room_id, &m)?));
                }
                // As Synapse: a first sync leaves out rooms the user left by themselves
                // (unless asked), but shows those they were kicked or banned from.
                "leave" | "ban"
                    if !m.forgotten
                        && changed_membership
                        && (since.is_some()
                            || req.filter.include_leave
                            || !self.left_by_self(&m, &req.user_id)?) =>
                {
                    let full = since.is_none();
                    resp.left
                        .push(self.room_update(req, &room_id, since, m.pos, full, false)?);
                }
                _ => {}
            }
        }
        Ok(resp)
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
        joined: bool,
    ) -> Result<RoomUpdate> {
        let user = &*req.user_id;
        let access = Access {
            max_pos: upto,
            ever_member: true,
            current: joined,
        };
        let limit = req.filter.timeline.limit.unwrap_or(10);
        let to = if full { None } else { since };
        let page = self.rooms.page(
            user,
            room_id,
            &access,
            upto,
            to,
            true,
            limit,
            &req.filter.timeline,
        )?;
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
        })
    }

    fn left_by_self(&self, m: &MembershipRecord, user: &UserId) -> Result<bool> {
        let id = ruma::EventId::parse(&m.event_id).map_err(Error::internal)?;
        Ok(m.membership == "leave" && self.rooms.pdu(&id)?.is_some_and(|p| p.sender == user))
    }

    fn summary(&self, room_id: &RoomId, user: &UserId) -> Result<RoomSummary> {
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
        heroes.truncate(5);
        Ok(RoomSummary {
            heroes,
            joined: count("join"),
            invited: count("invite"),
        })
    }

    fn invite_state(
        &self,
        room_id: &RoomId,
        m: &MembershipRecord,
    ) -> Result<Vec<Box<RawJsonValue>>> {
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
            if let Some(id) = state.get(&("m.room.member".to_owned(), invite.sender.to_string()))
                && let Some(p) = self.rooms.pdu(id)?
            {
                out.push(p);
            }
            out.push(invite);
        }
        Ok(out.iter().map(stripped).collect())
    }
}

fn stripped(p: &PduRef) -> Box<RawJsonValue> {
    #[derive(Serialize)]
    struct Stripped<'a> {
        content: &'a RawJsonValue,
        sender: &'a UserId,
        state_key: &'a str,
        #[serde(rename = "type")]
        kind: String,
    }
    serde_json::value::to_raw_value(&Stripped {
        content: &p.content,
        sender: &p.sender,
        state_key: p.state_key.as_deref().unwrap_or_default(),
        kind: p.kind.to_string(),
    })
    .expect("stripped events serialise")
}
