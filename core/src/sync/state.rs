//! The `state` section of a room in a sync, and how the user's membership moved since the last
//! sync (which decides between a full and an incremental room). Synapse's rules
//! (`compute_state_delta`, `_calculate_state`), which clients and SyTest hold servers to.

use std::collections::HashSet;
use std::sync::Arc;

use hearth_storage::{MembershipRecord, StreamPos};
use ruma::{EventId, OwnedEventId, RoomId};

use super::lazy_members::DeviceRoom;
use super::{SyncRequest, SyncService};
use crate::Result;
use crate::rooms::timeline::TimelineEvent;
use crate::rooms::{SharedState, StateMap};

/// The part of a room's stream one sync covers.
pub(super) struct RoomRange {
    /// The last sync's position (`None` on a first sync).
    pub since: Option<StreamPos>,
    /// The timeline's end: now, or the user's leave.
    pub upto: StreamPos,
    /// The position the response hands out as `next_batch`.
    pub next_batch: StreamPos,
    /// The whole state rather than the change since the last sync.
    pub full_state: bool,
    /// The room is new to the client since the last sync (joined, or joined and left): its
    /// timeline is its latest events, not those after `since`.
    pub newly_joined: bool,
    /// The user's join, for a room they are in.
    pub joined_at: Option<StreamPos>,
}

/// How a user's membership of a room moved after a past position.
#[derive(Default)]
pub(super) struct MembershipSince {
    /// The membership at that position (`None`: none, or not known).
    pub at_since: Option<String>,
    /// A join came after it.
    pub joined_since: bool,
    /// A membership other than join came after it.
    pub left_since: bool,
}

/// Member events read back at most this far; a longer run of changes counts as a new join.
const MEMBERSHIP_WALK: usize = 64;

impl SyncService {
    /// Reads a user's member events back from the current one (`m`) to the one in force at
    /// `since`.
    pub(super) fn membership_since(
        &self,
        m: &MembershipRecord,
        since: StreamPos,
    ) -> Result<MembershipSince> {
        let mut out = MembershipSince::default();
        let mut next = Some(m.event_id.clone());
        for _ in 0..MEMBERSHIP_WALK {
            let Some(id) = next.take() else {
                return Ok(out);
            };
            let Ok(id) = EventId::parse(&id) else {
                return Ok(out);
            };
            let Some(ev) = self.rooms.timeline_event(&id)? else {
                return Ok(out);
            };
            let membership = ev.pdu.membership().unwrap_or_default();
            if ev.meta.pos <= since {
                out.at_since = Some(membership);
                return Ok(out);
            }
            if membership == "join" {
                out.joined_since = true;
            } else {
                out.left_since = true;
            }
            next = ev.meta.replaces_state.clone();
        }
        out.joined_since = true;
        out.left_since = true;
        Ok(out)
    }

    /// The state events a room's update carries (see [`SyncService::room_update`]).
    pub(super) fn state_for(
        &self,
        req: &SyncRequest,
        room_id: &RoomId,
        range: &RoomRange,
        events: &[TimelineEvent],
        limited: bool,
    ) -> Result<Vec<TimelineEvent>> {
        let rooms = &self.rooms;
        let lazy = req.filter.state.lazy_load_members;
        let user = req.user_id.as_str();
        // The members a lazy-loading client needs for the timeline: each sender whose member
        // event does not come earlier in it.
        let mut needed: HashSet<&str> = HashSet::new();
        let mut timeline_members: HashSet<&str> = HashSet::new();
        let mut in_timeline: HashSet<&EventId> = HashSet::new();
        for e in events {
            if !timeline_members.contains(e.pdu.sender.as_str()) {
                needed.insert(e.pdu.sender.as_str());
            }
            if let Some(key) = e.pdu.state_key.as_deref() {
                in_timeline.insert(&e.pdu.event_id);
                if e.pdu.membership().is_some() {
                    timeline_members.insert(key);
                }
            }
        }
        // Lazy loading: the state without the members the timeline does not need.
        let only_needed = |map: SharedState, with_user: bool| -> SharedState {
            Arc::new(
                map.iter()
                    .filter(|((kind, key), _)| {
                        kind != "m.room.member"
                            || needed.contains(key.as_str())
                            || (with_user && key == user)
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            )
        };
        // Shared, not copied: a big room's state is read on every gappy sync.
        let state_of = |group: Option<u64>| -> Result<SharedState> {
            match group {
                Some(g) => rooms.state_at_group(g),
                None => Ok(SharedState::default()),
            }
        };
        let end_group = rooms.state_group_at(room_id, range.upto)?;
        let start_group = events.first().map(|e| e.meta.state_before).or(end_group);

        let ids: Vec<OwnedEventId> = if req.state_after {
            // MSC4222: the state at the timeline's end, timeline included.
            let end = state_of(end_group)?;
            match range.since {
                _ if range.full_state => {
                    let end = if lazy { only_needed(end, true) } else { end };
                    end.values().cloned().collect()
                }
                Some(since) => {
                    let previous = state_of(rooms.state_group_at(room_id, since)?)?;
                    end.iter()
                        .filter(|(k, id)| {
                            previous.get(*k) != Some(*id)
                                || (lazy && k.0 == "m.room.member" && needed.contains(k.1.as_str()))
                        })
                        .map(|(_, id)| id.clone())
                        .collect()
                }
                None => end.values().cloned().collect(),
            }
        } else if range.full_state || range.since.is_none() {
            let (start, end) = (state_of(start_group)?, state_of(end_group)?);
            let (start, end) = if lazy {
                (only_needed(start, true), only_needed(end, true))
            } else {
                (start, end)
            };
            delta(&start, &end, &StateMap::new(), &in_timeline)
        } else {
            let since = range.since.unwrap_or_default();
            if !limited && self.is_linear(room_id, since, events)? {
                // Nothing happened to the state that the timeline does not show.
                match events.first() {
                    Some(first) if lazy => {
                        let start = state_of(Some(first.meta.state_before))?;
                        needed
                            .iter()
                            .filter_map(|m| {
                                start.get(&("m.room.member".to_owned(), (*m).to_owned()))
                            })
                            .cloned()
                            .collect()
                    }
                    _ => Vec::new(),
                }
            } else {
                let start = state_of(start_group)?;
                let start = if lazy {
                    only_needed(start, false)
                } else {
                    start
                };
                let mut previous = state_of(rooms.state_group_at(room_id, since)?)?;
                if lazy {
                    let previous = Arc::make_mut(&mut previous);
                    // The timeline's members go again (unless the device has them, below):
                    // the client may never have been sent them.
                    let members: HashSet<&OwnedEventId> = start
                        .iter()
                        .filter(|((kind, _), _)| kind == "m.room.member")
                        .map(|(_, id)| id)
                        .collect();
                    previous.retain(|_, id| !members.contains(id));
                }
                let end = state_of(end_group)?;
                delta(&start, &end, &previous, &in_timeline)
            }
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(ev) = rooms.timeline_event(&id)? {
                out.push(ev);
            }
        }
        let mut out = self.unsent_members(req, room_id, range, out);
        out.retain(|e| req.filter.state.matches(&e.pdu));
        out.sort_by_key(|e| e.meta.pos);
        Ok(out)
    }

    /// For a lazy-loading client that does not want redundant members, `events` without the
    /// member events its device already has from an earlier sync of this sequence.
    pub(super) fn unsent_members(
        &self,
        req: &SyncRequest,
        room_id: &RoomId,
        range: &RoomRange,
        mut events: Vec<TimelineEvent>,
    ) -> Vec<TimelineEvent> {
        let filter = &req.filter.state;
        let Some(since) = range.since else {
            return events;
        };
        if !filter.lazy_load_members || filter.include_redundant_members || range.newly_joined {
            return events;
        }
        let at = DeviceRoom {
            user: &req.user_id,
            device: &req.device_id,
            room: room_id,
        };
        events.retain(|e| {
            let member = match (e.pdu.membership(), e.pdu.state_key.as_deref()) {
                (Some(_), Some(member)) => member,
                _ => return true,
            };
            !self
                .sent_members
                .has(&at, member, e.pdu.event_id.as_str(), since)
        });
        events
    }

    /// Whether the timeline continues the room's events at `since` one after another, without a
    /// fork (whose other side could change the state without showing in the timeline).
    fn is_linear(
        &self,
        room_id: &RoomId,
        since: StreamPos,
        events: &[TimelineEvent],
    ) -> Result<bool> {
        let Some(first) = events.first() else {
            return Ok(true);
        };
        let before = self
            .store
            .room_events(room_id.as_str(), 0, since, true, 1)?;
        let mut prev = match before.first() {
            Some((_, id)) => id.clone(),
            None => return Ok(first.pdu.prev_events.is_empty()),
        };
        for e in events {
            if e.pdu.prev_events.len() != 1 || e.pdu.prev_events[0].as_str() != prev {
                return Ok(false);
            }
            prev = e.pdu.event_id.to_string();
        }
        Ok(true)
    }
}

/// The state a sync sends: what is in force at the timeline's start or end, less what the
/// client had after the last sync and what the timeline itself carries. Both ends count: the
/// start for state the timeline then replaces, the end for state that came in through a fork
/// the timeline does not show.
fn delta(
    start: &StateMap,
    end: &StateMap,
    previous: &StateMap,
    in_timeline: &HashSet<&EventId>,
) -> Vec<OwnedEventId> {
    let had: HashSet<&OwnedEventId> = previous.values().collect();
    let mut seen: HashSet<&OwnedEventId> = HashSet::new();
    start
        .values()
        .chain(end.values())
        .filter(|id| !had.contains(id) && !in_timeline.contains(&***id) && seen.insert(id))
        .cloned()
        .collect()
}
