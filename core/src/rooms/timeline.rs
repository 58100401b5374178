//! Reading a room's timeline: `/messages` pages, `/context`, single events, and the client format.

use hearth_storage::{EventMeta, StreamPos};
use ruma::{EventId, RoomId, UserId};
use serde_json::value::RawValue as RawJsonValue;

use super::{ClientFormat, PduRef, Rooms, SharedState};
use crate::{Error, Result};

/// An event of a timeline with where it sits.
#[derive(Clone)]
pub struct TimelineEvent {
    pub pdu: PduRef,
    pub meta: EventMeta,
}

impl TimelineEvent {
    /// The event's position in the live stream; 0, before all of it, for history backfilled
    /// from other servers.
    pub fn live_pos(&self) -> StreamPos {
        match self.meta.history_seq {
            Some(_) => 0,
            None => self.meta.pos,
        }
    }
}

/// Which events a client wants (the parts of the spec's `RoomEventFilter` the server applies).
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub types: Option<Vec<String>>,
    pub not_types: Vec<String>,
    pub senders: Option<Vec<String>>,
    pub not_senders: Vec<String>,
    pub limit: Option<usize>,
    pub lazy_load_members: bool,
    pub include_redundant_members: bool,
    /// Users the reader ignores (`m.ignored_user_list`): their events are left out, but for
    /// state, which the room's state needs (as Synapse leaves them).
    pub ignored_senders: Vec<String>,
}

fn type_matches(pattern: &str, kind: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => pattern == kind,
    }
}

impl EventFilter {
    pub fn matches(&self, pdu: &PduRef) -> bool {
        if !pdu.is_state()
            && self
                .ignored_senders
                .iter()
                .any(|s| s == pdu.sender.as_str())
        {
            return false;
        }
        self.matches_parts(&pdu.kind.to_string(), Some(pdu.sender.as_str()))
    }

    /// For events that are not PDUs (account data, ephemeral, presence): by type, and by sender
    /// where they have one.
    pub fn matches_parts(&self, kind: &str, sender: Option<&str>) -> bool {
        if self.not_types.iter().any(|t| type_matches(t, kind)) {
            return false;
        }
        if let Some(types) = &self.types
            && !types.iter().any(|t| type_matches(t, kind))
        {
            return false;
        }
        let Some(sender) = sender else {
            return true;
        };
        if self.not_senders.iter().any(|s| s == sender) {
            return false;
        }
        if let Some(senders) = &self.senders
            && !senders.iter().any(|s| s == sender)
        {
            return false;
        }
        true
    }
}

/// A page of `/messages`.
pub struct Page {
    pub events: Vec<TimelineEvent>,
    /// Token to continue from, `None` when the room has nothing further in that direction.
    pub end: Option<StreamPos>,
}

/// Who reads a room's timeline: the user, how far they may read, and what they let through.
#[derive(Clone, Copy)]
pub struct Reader<'a> {
    pub user: &'a UserId,
    pub room_id: &'a RoomId,
    pub access: &'a Access,
    pub filter: &'a EventFilter,
}

/// The part of a room's stream a user may read.
pub struct Access {
    pub max_pos: StreamPos,
    /// The user is in the room now (or it is world readable): they see its current state.
    pub current: bool,
    /// Position of the user's current join: everything after it is visible to them without a
    /// look at the state (the fast path of every incremental sync).
    pub joined_at: Option<StreamPos>,
    /// The user may read `shared` history: they are joined, or were until they left (the spec's
    /// "joined the room at any point after the event was sent"). Never for an invitee or a
    /// knocker who did not join.
    pub shared_history: bool,
    /// The reader gets the state events that make the room's current state wherever they sit,
    /// also in history closed to them: a joined member's sync, so that the timeline explains
    /// the room as it is (as Synapse's sync does).
    pub current_state_in_timeline: bool,
}

impl Rooms {
    pub fn timeline_event(&self, event_id: &EventId) -> Result<Option<TimelineEvent>> {
        let cached = self.metas.lock().get(event_id).cloned();
        let meta = match cached {
            Some(m) => m,
            None => {
                let generation = self.redaction_gen.load(std::sync::atomic::Ordering::SeqCst);
                let Some(meta) = self.store.event_meta(event_id.as_str())? else {
                    return Ok(None);
                };
                let mut metas = self.metas.lock();
                if self.redaction_gen.load(std::sync::atomic::Ordering::SeqCst) == generation {
                    metas.put(event_id.to_owned(), meta.clone());
                }
                meta
            }
        };
        let Some(pdu) = self.pdu(event_id)? else {
            return Ok(None);
        };
        Ok(Some(TimelineEvent { pdu, meta }))
    }

    /// Formats an event for a client, with its bundled aggregations (thread summary, latest
    /// edit, references). `viewer` is the requesting (user, device): the device that sent an
    /// event sees its transaction id.
    pub fn format(
        &self,
        ev: &TimelineEvent,
        viewer: Option<(&UserId, &str)>,
        with_room_id: bool,
    ) -> Box<RawJsonValue> {
        let relations = self
            .bundle(ev, viewer, with_room_id)
            .unwrap_or_else(|e| {
                tracing::warn!(event_id = %ev.pdu.event_id, error = %e, "no bundled aggregations");
                None
            })
            .and_then(|v| serde_json::value::to_raw_value(&v).ok());
        self.format_with(ev, viewer, with_room_id, relations.as_deref())
    }

    /// An event as servers exchange it, with its id: what a filter's `event_format:
    /// federation` asks for.
    pub fn format_federation(&self, ev: &TimelineEvent) -> Result<Box<RawJsonValue>> {
        let json = self
            .store
            .event_json(ev.pdu.event_id.as_str())?
            .ok_or_else(|| Error::internal("a timeline event without its JSON"))?;
        let mut obj: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&json).map_err(Error::internal)?;
        obj.insert("event_id".into(), ev.pdu.event_id.as_str().into());
        serde_json::value::to_raw_value(&obj).map_err(Error::internal)
    }

    /// Formats an event without aggregations: the events bundled into another.
    pub(crate) fn format_plain(
        &self,
        ev: &TimelineEvent,
        viewer: Option<(&UserId, &str)>,
        with_room_id: bool,
    ) -> Box<RawJsonValue> {
        self.format_with(ev, viewer, with_room_id, None)
    }

    fn format_with(
        &self,
        ev: &TimelineEvent,
        viewer: Option<(&UserId, &str)>,
        with_room_id: bool,
        relations: Option<&RawJsonValue>,
    ) -> Box<RawJsonValue> {
        let transaction_id = match (&ev.meta.txn, viewer) {
            (Some(t), Some((u, d))) if t.user_id == u.as_str() && t.device_id == d => {
                Some(t.txn_id.as_str())
            }
            _ => None,
        };
        let prev = ev
            .meta
            .replaces_state
            .as_deref()
            .and_then(|id| EventId::parse(id).ok())
            .and_then(|id| self.pdu(&id).ok().flatten());
        // A pruned event says what pruned it: clients show "message deleted" from this.
        let redacted_because = ev
            .meta
            .redacted_by
            .as_deref()
            .and_then(|id| EventId::parse(id).ok())
            .and_then(|id| self.timeline_event(&id).ok().flatten())
            .map(|r| self.format_plain(&r, viewer, with_room_id));
        // The reader's membership at the event, on every event a client reads (spec v1.11,
        // MSC4115): clients tell "sent before you joined" from a missing key by it.
        let membership = viewer.and_then(|(user, _)| {
            self.membership_in_group(user, ev.meta.state_after)
                .inspect_err(|e| {
                    tracing::warn!(event_id = %ev.pdu.event_id, error = %e, "no membership at event");
                })
                .ok()
        });
        ev.pdu.to_client(&ClientFormat {
            with_room_id,
            transaction_id,
            prev_content: prev.as_ref().map(|p| &*p.content),
            replaces_state: ev.meta.replaces_state.as_deref(),
            relations,
            redacted_because: redacted_because.as_deref(),
            membership: membership.as_deref(),
        })
    }

    /// How far into a room's stream `user` may read, or `Forbidden` if not at all.
    pub fn access(&self, room_id: &RoomId, user: &UserId) -> Result<Access> {
        let now = self.store.persisted_pos();
        let membership = self.store.membership(user.as_str(), room_id.as_str())?;
        match membership {
            Some(m) if m.membership == "join" => Ok(Access {
                max_pos: now,
                current: true,
                joined_at: Some(m.pos),
                shared_history: true,
                current_state_in_timeline: false,
            }),
            // A user who left reads up to the moment they left.
            Some(m) if m.membership != "invite" && m.membership != "knock" => Ok(Access {
                max_pos: m.pos,
                current: false,
                joined_at: None,
                shared_history: self.joined_before(user, &m.event_id)?,
                current_state_in_timeline: false,
            }),
            // An invitee or a knocker has the room's stripped state, and reads no more of it
            // than a stranger (as in Synapse: the room must be world readable).
            _ => {
                let state = self.current_state(room_id)?;
                if self.is_world_readable(&state)? {
                    Ok(Access {
                        max_pos: now,
                        current: true,
                        joined_at: None,
                        shared_history: false,
                        current_state_in_timeline: false,
                    })
                } else {
                    Err(Error::forbidden(format!(
                        "User {user} not in room {room_id}, and room previews are disabled"
                    )))
                }
            }
        }
    }

    /// Whether `user` was joined just before their membership event `event_id` (a leave or a
    /// ban): one who declined an invite never was.
    fn joined_before(&self, user: &UserId, event_id: &str) -> Result<bool> {
        let Ok(event_id) = EventId::parse(event_id) else {
            return Ok(false);
        };
        let Some(ev) = self.timeline_event(&event_id)? else {
            return Ok(false);
        };
        let state = self.state_at_group(ev.meta.state_before)?;
        let Some(member) = state.get(&("m.room.member".to_owned(), user.to_string())) else {
            return Ok(false);
        };
        Ok(self.pdu(member)?.and_then(|p| p.membership()).as_deref() == Some("join"))
    }

    /// Events of a room's live timeline between two positions that the reader may see and lets
    /// through, at most `limit`. Backwards pages cover `(to, from]` newest first, forwards pages
    /// `(from, to]` oldest first. `end` is there when the range holds another such event: after
    /// a full page the scan looks a little further for one (a client told "limited" for nothing
    /// throws its cached timeline away, and a filter for a rare type would otherwise always say
    /// so); when that look finds only events the reader does not get, `end` is there too.
    pub fn page(
        &self,
        reader: Reader<'_>,
        from: StreamPos,
        to: Option<StreamPos>,
        backwards: bool,
        limit: usize,
    ) -> Result<Page> {
        let Reader {
            user,
            room_id,
            access,
            filter,
        } = reader;
        let mut events = Vec::new();
        let (mut lo, mut hi) = if backwards {
            (to.map_or(1, |t| t + 1), from.min(access.max_pos))
        } else {
            (from + 1, to.unwrap_or(StreamPos::MAX).min(access.max_pos))
        };
        let chunk = limit.clamp(1, 200) * 2;
        // Where the page ends once it is full, and how many more events the look ahead reads.
        let mut full_at: Option<StreamPos> = None;
        let mut probe_left = chunk.max(10) * 5;
        if limit == 0 {
            full_at = Some(if backwards { hi } else { lo.saturating_sub(1) });
        }
        let mut more = false;
        'scan: while lo <= hi {
            let batch = if full_at.is_some() {
                chunk.min(probe_left)
            } else {
                chunk
            };
            let ids = self
                .store
                .room_events(room_id.as_str(), lo, hi, backwards, batch)?;
            let exhausted = ids.len() < batch;
            for (pos, id) in ids {
                if backwards {
                    hi = pos.saturating_sub(1);
                } else {
                    lo = pos + 1;
                }
                let id = EventId::parse(&id).map_err(Error::internal)?;
                let Some(ev) = self.timeline_event(&id)? else {
                    continue;
                };
                let wanted = filter.matches(&ev.pdu) && self.sees(user, &ev, access)?;
                if full_at.is_some() {
                    probe_left -= 1;
                    if wanted {
                        more = true;
                        break 'scan;
                    }
                } else if wanted {
                    events.push(ev);
                    if events.len() == limit {
                        full_at = Some(if backwards { hi } else { lo - 1 });
                    }
                }
            }
            if exhausted || hi == 0 {
                break;
            }
            if full_at.is_some() && probe_left == 0 {
                // Only unwanted events so far: whether more lie beyond is left open.
                more = lo <= hi;
                break;
            }
        }
        let end = if more { full_at } else { None };
        Ok(Page { events, end })
    }

    /// The member events of the given senders in a state group, for lazy-loading clients.
    pub fn member_events_for(
        &self,
        state_group: u64,
        senders: impl IntoIterator<Item = String>,
    ) -> Result<Vec<TimelineEvent>> {
        let state = self.state_at_group(state_group)?;
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for s in senders {
            if !seen.insert(s.clone()) {
                continue;
            }
            if let Some(id) = state.get(&("m.room.member".to_owned(), s))
                && let Some(ev) = self.timeline_event(id)?
            {
                out.push(ev);
            }
        }
        Ok(out)
    }

    /// Every event of a state map, in a stable order.
    pub fn state_events(&self, state_group: u64) -> Result<Vec<TimelineEvent>> {
        let state = self.state_at_group(state_group)?;
        let mut out = Vec::with_capacity(state.len());
        for id in state.values() {
            if let Some(ev) = self.timeline_event(id)? {
                out.push(ev);
            }
        }
        Ok(out)
    }

    /// The room state a user may see: the current state, or for a user who left, the state
    /// when they left.
    pub fn visible_state_map(&self, room_id: &RoomId, user: &UserId) -> Result<SharedState> {
        let access = self.access(room_id, user)?;
        if access.current {
            return self.current_state(room_id);
        }
        match self.state_group_at(room_id, access.max_pos)? {
            Some(group) => self.state_at_group(group),
            None => Ok(Default::default()),
        }
    }

    /// Every event of the state a user may see.
    pub fn visible_state(&self, room_id: &RoomId, user: &UserId) -> Result<Vec<TimelineEvent>> {
        let state = self.visible_state_map(room_id, user)?;
        let mut out = Vec::with_capacity(state.len());
        for id in state.values() {
            out.extend(self.timeline_event(id)?);
        }
        Ok(out)
    }

    /// One event of the state a user may see, looked up by type and state key.
    pub fn visible_state_event(
        &self,
        room_id: &RoomId,
        user: &UserId,
        kind: &str,
        state_key: &str,
    ) -> Result<Option<PduRef>> {
        let state = self.visible_state_map(room_id, user)?;
        match state.get(&(kind.to_owned(), state_key.to_owned())) {
            Some(id) => self.pdu(id),
            None => Ok(None),
        }
    }

    /// The state group after the room's last event at or before `pos`.
    pub fn state_group_at(&self, room_id: &RoomId, pos: StreamPos) -> Result<Option<u64>> {
        let last = self.store.room_events(room_id.as_str(), 0, pos, true, 1)?;
        match last.first() {
            Some((_, id)) => Ok(self.store.event_meta(id)?.map(|m| m.state_after)),
            None => Ok(None),
        }
    }

    /// One event of a room, if `user` may see it; otherwise `NotFound`, so that a refusal
    /// does not tell whether the event exists.
    pub fn visible_event(
        &self,
        room_id: &RoomId,
        user: &UserId,
        event_id: &EventId,
    ) -> Result<(TimelineEvent, Access)> {
        let access = self.access(room_id, user)?;
        let not_found = || Error::not_found("Event not found.");
        let ev = self
            .timeline_event(event_id)?
            .filter(|e| e.pdu.room_id == room_id && e.live_pos() <= access.max_pos)
            .ok_or_else(not_found)?;
        if !self.sees(user, &ev, &access)? {
            return Err(not_found());
        }
        Ok((ev, access))
    }
}
