//! What other servers read of a room (Server-Server API: "Retrieving events", "Backfilling and
//! retrieving missing events"): single events, the state at an event, auth chains, backfill
//! and missing events.
//!
//! A server reads a room only while it has a member joined there (or the room is world
//! readable). Events are filtered for it as Synapse filters them (`filter_events_for_server`):
//! with `shared` or `world_readable` history all is visible; otherwise an event is visible when
//! one of the server's users was joined (or invited, for `invited`) in the state before it, and
//! the others go out redacted, so that the graph stays whole.

use std::collections::{BTreeMap, HashSet, VecDeque};

use ruma::canonical_json::redact;
use ruma::{CanonicalJsonObject, EventId, OwnedEventId, RoomId, ServerName};
use serde_json::value::RawValue as RawJsonValue;

use super::Rooms;
use crate::{Error, Result};

/// The state at an event as ids, with the auth chain of that state.
pub struct StateIds {
    pub state: Vec<OwnedEventId>,
    pub auth_chain: Vec<OwnedEventId>,
}

impl Rooms {
    /// Refuses a server with nobody joined to a room that is not world readable.
    pub fn check_server_in_room(&self, room_id: &RoomId, server: &ServerName) -> Result<()> {
        let head = self.head(room_id)?;
        let (joined, state) = {
            let h = head.lock();
            (h.joined_servers().contains(server), h.state.clone())
        };
        if joined || self.is_world_readable(&state)? {
            Ok(())
        } else {
            Err(Error::forbidden("The server is not in the room"))
        }
    }

    /// Whether `server` may see an event's content (else it gets the redacted event).
    fn server_may_see(&self, server: &ServerName, state_before: u64) -> Result<bool> {
        let state = self.state_at_group(state_before)?;
        let visibility = match state.get(&("m.room.history_visibility".into(), String::new())) {
            Some(id) => self.pdu(id)?.and_then(|p| {
                p.content_value()["history_visibility"]
                    .as_str()
                    .map(str::to_owned)
            }),
            None => None,
        }
        .unwrap_or_else(|| "shared".into());
        if visibility == "shared" || visibility == "world_readable" {
            return Ok(true);
        }
        for ((kind, key), id) in state.iter() {
            if kind != "m.room.member" || !key.ends_with(&format!(":{server}")) {
                continue;
            }
            let membership = self.pdu(id)?.and_then(|p| p.membership());
            match membership.as_deref() {
                Some("join") => return Ok(true),
                Some("invite") if visibility == "invited" => return Ok(true),
                _ => {}
            }
        }
        Ok(false)
    }

    /// An event's PDU as `server` may see it: as stored, or redacted.
    fn pdu_for_server(
        &self,
        server: &ServerName,
        id: &EventId,
    ) -> Result<Option<Box<RawJsonValue>>> {
        let Some(bytes) = self.store.event_json(id.as_str())? else {
            return Ok(None);
        };
        let meta = self.store.event_meta(id.as_str())?;
        let visible = match &meta {
            // Outliers (state a join brought) carry no state group of their own.
            Some(m) if m.state_before != 0 => self.server_may_see(server, m.state_before)?,
            _ => true,
        };
        let mut obj: CanonicalJsonObject = serde_json::from_slice(&bytes)?;
        // What this server keeps beside a PDU (an invite's stripped state) is not the PDU's.
        obj.remove("unsigned");
        if !visible {
            let room = meta.map(|m| m.room_id).unwrap_or_default();
            let version = self.room_version(&RoomId::parse(room).map_err(Error::internal)?)?;
            let rules = version.rules().ok_or_else(|| Error::internal("no rules"))?;
            obj = redact(obj, &rules.redaction, None).map_err(Error::internal)?;
        }
        Ok(Some(serde_json::value::to_raw_value(&obj)?))
    }

    /// `GET /event/{eventId}`: one event of a room the server is in.
    pub fn event_for_server(&self, server: &ServerName, id: &EventId) -> Result<Box<RawJsonValue>> {
        let not_found = || Error::not_found("Event not found");
        let meta = self.store.event_meta(id.as_str())?.ok_or_else(not_found)?;
        let room = RoomId::parse(&meta.room_id).map_err(Error::internal)?;
        self.check_server_in_room(&room, server)?;
        self.pdu_for_server(server, id)?.ok_or_else(not_found)
    }

    /// The auth chain of some events: their auth events, theirs, and so on.
    fn auth_chain(&self, of: impl IntoIterator<Item = OwnedEventId>) -> Result<Vec<OwnedEventId>> {
        let mut queue: VecDeque<OwnedEventId> = VecDeque::new();
        for id in of {
            if let Some(p) = self.pdu(&id)? {
                queue.extend(p.auth_events.iter().cloned());
            }
        }
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        while let Some(id) = queue.pop_front() {
            if !seen.insert(id.clone()) {
                continue;
            }
            if let Some(p) = self.pdu(&id)? {
                queue.extend(p.auth_events.iter().filter(|a| !seen.contains(*a)).cloned());
                out.push(id);
            }
        }
        Ok(out)
    }

    /// `GET /state_ids/{roomId}?event_id=`: the room's state before an event, and its auth
    /// chain.
    pub fn state_ids_at(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        at: &EventId,
    ) -> Result<StateIds> {
        self.check_server_in_room(room_id, server)?;
        let meta = self
            .store
            .event_meta(at.as_str())?
            .filter(|m| m.room_id == room_id.as_str())
            .ok_or_else(|| Error::not_found("Event not found in this room"))?;
        // An outlier, a rejected or a soft-failed event has no state of its own here (Synapse:
        // 404 for outliers and rejected events). The create event's state before it is the
        // empty one (group 0, as an outlier's), and a peer backfilling from it asks for it.
        let is_create = self.pdu(at)?.is_some_and(|p| {
            p.kind.to_string() == "m.room.create" && p.state_key.as_deref() == Some("")
        });
        if meta.refused.is_some() || (meta.state_before == 0 && !is_create) {
            return Err(Error::not_found(format!(
                "No state is known at {at}: it is an outlier or was rejected"
            )));
        }
        let state: Vec<OwnedEventId> = self
            .state_at_group(meta.state_before)?
            .values()
            .cloned()
            .collect();
        let auth_chain = self.auth_chain(state.iter().cloned())?;
        Ok(StateIds { state, auth_chain })
    }

    /// The PDUs of some event ids, as `server` may see them.
    pub fn pdus_for_server(
        &self,
        server: &ServerName,
        ids: &[OwnedEventId],
    ) -> Result<Vec<Box<RawJsonValue>>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.extend(self.pdu_for_server(server, id)?);
        }
        Ok(out)
    }

    /// `GET /event_auth/{roomId}/{eventId}`: an event's auth chain.
    pub fn event_auth_for_server(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        id: &EventId,
    ) -> Result<Vec<Box<RawJsonValue>>> {
        self.check_server_in_room(room_id, server)?;
        let chain = self.auth_chain([id.to_owned()])?;
        self.pdus_for_server(server, &chain)
    }

    /// `GET /backfill/{roomId}?v=…&limit=…`: the events before (and including) `from`, walking
    /// `prev_events` breadth first, newest (deepest) first, at most `limit`.
    pub fn backfill(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        from: &[OwnedEventId],
        limit: usize,
    ) -> Result<Vec<Box<RawJsonValue>>> {
        self.check_server_in_room(room_id, server)?;
        let limit = limit.clamp(1, 100);
        // By depth, deepest first: a max-heap keyed on (depth, id).
        let mut frontier: BTreeMap<(u64, OwnedEventId), ()> = BTreeMap::new();
        let mut seen = HashSet::new();
        for id in from {
            if let Some(p) = self.pdu(id)?.filter(|p| p.room_id == room_id) {
                frontier.insert((p.depth, id.clone()), ());
            }
        }
        let mut picked = Vec::new();
        while let Some(((_, id), ())) = frontier.pop_last() {
            if picked.len() == limit {
                break;
            }
            if !seen.insert(id.clone()) {
                continue;
            }
            let Some(p) = self.pdu(&id)? else {
                continue;
            };
            for prev in &p.prev_events {
                if !seen.contains(prev)
                    && let Some(pp) = self.pdu(prev)?
                {
                    frontier.insert((pp.depth, prev.clone()), ());
                }
            }
            picked.push(id);
        }
        self.pdus_for_server(server, &picked)
    }

    /// `POST /get_missing_events/{roomId}`: events between what the server has (`earliest`)
    /// and what it saw (`latest`), walking back from `latest`, oldest first, at most `limit`.
    pub fn missing_events(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        earliest: &[OwnedEventId],
        latest: &[OwnedEventId],
        limit: usize,
        min_depth: u64,
    ) -> Result<Vec<Box<RawJsonValue>>> {
        self.check_server_in_room(room_id, server)?;
        let limit = limit.clamp(1, 100);
        let stop: HashSet<&OwnedEventId> = earliest.iter().collect();
        let mut seen: HashSet<OwnedEventId> = latest.iter().cloned().collect();
        let mut queue: VecDeque<OwnedEventId> = VecDeque::new();
        for id in latest {
            if let Some(p) = self.pdu(id)?.filter(|p| p.room_id == room_id) {
                queue.extend(p.prev_events.iter().cloned());
            }
        }
        let mut found = Vec::new();
        while let Some(id) = queue.pop_front() {
            if found.len() == limit {
                break;
            }
            if stop.contains(&id) || !seen.insert(id.clone()) {
                continue;
            }
            let Some(p) = self.pdu(&id)? else {
                continue;
            };
            if p.room_id != room_id || p.depth < min_depth {
                continue;
            }
            queue.extend(p.prev_events.iter().cloned());
            found.push((p.depth, id));
        }
        found.sort();
        let ids: Vec<OwnedEventId> = found.into_iter().map(|(_, id)| id).collect();
        self.pdus_for_server(server, &ids)
    }
}
