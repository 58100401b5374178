//! Relations between events (spec: "Forming relationships between events"): what a new event
//! may relate to, the aggregations bundled into an event's `unsigned["m.relations"]`, and the
//! `/relations` and `/threads` listings.
//!
//! The writer indexes each event's relation in the commit that appends it
//! (`hearth_storage::relations`); what is derived from the index is cached per parent and checked
//! against the room's change index, as `Rooms::memberships_of` does, so that formatting one
//! message for every member of a room reads the index once.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use hearth_storage::relations::{RelatedEvent, Relation};
use hearth_storage::{ChangeKey, StreamPos};
use ruma::{EventId, OwnedEventId, RoomId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::timeline::TimelineEvent;
use super::{NewEvent, Pdu, RoomHead, Rooms};
use crate::{Error, Result};

/// How deep `recurse=true` follows relations of relations (Synapse's limit).
const MAX_RECURSION_DEPTH: usize = 3;
/// Longest annotation key accepted from a local user (Synapse's limit).
const MAX_ANNOTATION_KEY: usize = 500;

#[derive(Deserialize)]
struct RelatesTo {
    rel_type: Option<String>,
    event_id: Option<OwnedEventId>,
    key: Option<String>,
}

#[derive(Deserialize)]
struct WithRelation {
    #[serde(rename = "m.relates_to")]
    relates_to: Option<RelatesTo>,
}

/// The relation an event's content declares, if it declares one with a type (a plain reply,
/// `m.in_reply_to` alone, is no relation to the server).
pub fn relation_of(content: &str) -> Option<Relation> {
    // Every event a client reads passes here (for its bundle); most relate to nothing, and a
    // substring scan is far cheaper than a parse.
    if !content.contains("m.relates_to") {
        return None;
    }
    let rel = serde_json::from_str::<WithRelation>(content)
        .ok()?
        .relates_to?;
    Some(Relation {
        rel_type: rel.rel_type?,
        parent: rel.event_id?.to_string(),
        key: rel.key.unwrap_or_default(),
    })
}

/// What the children of one event add up to.
#[derive(Debug, Default)]
pub struct Aggregations {
    /// `(latest reply, reply count, everyone who replied)` of a thread rooted at the event.
    thread: Option<(OwnedEventId, usize, HashSet<String>)>,
    /// The newest valid replacement.
    edit: Option<OwnedEventId>,
    references: Vec<String>,
}

impl Aggregations {
    fn is_empty(&self) -> bool {
        self.thread.is_none() && self.edit.is_none() && self.references.is_empty()
    }
}

/// Cached aggregations of one event, valid while its room has not changed since `version`.
pub(crate) type CachedAggregations = (StreamPos, Option<Arc<Aggregations>>);

/// Which relations `/relations` lists.
#[derive(Clone, Debug, Default)]
pub struct RelationsQuery {
    pub rel_type: Option<String>,
    pub event_type: Option<String>,
    /// Exclusive bound to continue from; `None` starts at the newest (or oldest, forwards).
    pub from: Option<StreamPos>,
    /// Bound not to go past.
    pub to: Option<StreamPos>,
    pub forwards: bool,
    pub limit: usize,
    pub recurse: bool,
}

pub struct RelationsPage {
    pub events: Vec<TimelineEvent>,
    pub next: Option<StreamPos>,
    pub recursion_depth: Option<usize>,
}

impl Rooms {
    /// Checks what a local user's event relates to, as Synapse does: the parent is known and in
    /// the same room, a user reacts with a key once, threads do not start from relations, and
    /// only an event's sender replaces it. Runs under the room's head lock, so that two
    /// identical reactions racing each other cannot both pass.
    pub(crate) fn check_relation(
        &self,
        head: &RoomHead,
        sender: &UserId,
        ev: &NewEvent,
    ) -> Result<()> {
        let Some(rel) = relation_of(&ev.content.to_string()) else {
            return Ok(());
        };
        let parent_id = EventId::parse(&rel.parent)
            .map_err(|_| Error::BadJson("m.relates_to.event_id is not an event id".into()))?;
        let Some(parent) = self.pdu(&parent_id)? else {
            let has_children = !self
                .store
                .relations(&rel.parent, 0, StreamPos::MAX, false, 1)?
                .is_empty();
            if has_children {
                return Ok(());
            }
            return Err(Error::Unknown(
                "Can't send relation to unknown event".into(),
            ));
        };
        if parent.room_id != head.room_id {
            return Err(Error::Unknown("Relations must be in the same room".into()));
        }
        match rel.rel_type.as_str() {
            "m.annotation" => {
                if rel.key.is_empty() {
                    return Err(Error::Unknown("Missing aggregation key".into()));
                }
                if rel.key.len() > MAX_ANNOTATION_KEY {
                    return Err(Error::Unknown("Aggregation key is too long".into()));
                }
                if self.has_annotated(&rel, &ev.kind, sender)? {
                    return Err(Error::DuplicateAnnotation);
                }
            }
            "m.thread" if relation_of(parent.content.get()).is_some() => {
                return Err(Error::Unknown(
                    "Cannot start threads from an event with a relation".into(),
                ));
            }
            "m.replace" => {
                if parent.sender != sender {
                    return Err(Error::forbidden("Only the sender of an event can edit it"));
                }
                if parent.is_state() || ev.state_key.is_some() {
                    return Err(Error::Unknown("State events cannot be edited".into()));
                }
                if relation_of(parent.content.get()).is_some_and(|r| r.rel_type == "m.replace") {
                    return Err(Error::Unknown("An edit cannot be edited".into()));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether `sender` already annotated the parent with the same key and event type, durably
    /// or in a batch on its way to the disk.
    fn has_annotated(&self, rel: &Relation, kind: &str, sender: &UserId) -> Result<bool> {
        let same = |event_type: &str, who: &str, r: &Relation| {
            r.rel_type == "m.annotation"
                && r.key == rel.key
                && event_type == kind
                && who == sender.as_str()
        };
        let pending = self.pending_events.lock().values().any(|p| {
            p.sender == sender
                && relation_of(p.content.get()).is_some_and(|r| {
                    r.parent == rel.parent && same(&p.kind.to_string(), p.sender.as_str(), &r)
                })
        });
        if pending {
            return Ok(true);
        }
        let mut from = 0;
        loop {
            let rows = self
                .store
                .relations(&rel.parent, from, StreamPos::MAX, false, 500)?;
            if rows.iter().any(|r| {
                same(
                    &r.event_type,
                    &r.sender,
                    &Relation {
                        rel_type: r.rel_type.clone(),
                        parent: rel.parent.clone(),
                        key: r.key.clone(),
                    },
                )
            }) {
                return Ok(true);
            }
            match rows.last() {
                Some(last) if rows.len() == 500 => from = last.pos + 1,
                _ => return Ok(false),
            }
        }
    }

    /// Every event relating to `parent`, oldest first.
    fn children(&self, parent: &str) -> Result<Vec<RelatedEvent>> {
        let mut out = Vec::new();
        let mut from = 0;
        loop {
            let rows = self
                .store
                .relations(parent, from, StreamPos::MAX, false, 1000)?;
            let full = rows.len() == 1000;
            if let Some(last) = rows.last() {
                from = last.pos + 1;
            }
            out.extend(rows);
            if !full {
                return Ok(out);
            }
        }
    }

    /// The aggregations of an event's children, from the cache while the room is unchanged.
    pub(crate) fn aggregations(&self, pdu: &Pdu) -> Result<Option<Arc<Aggregations>>> {
        let key = ChangeKey::Room(pdu.room_id.to_string());
        // Read the index before the store, so that a relation committed in between makes the
        // cached entry look stale next time instead of being missed.
        let version = self.store.last_change(&key).unwrap_or(0);
        if let Some((v, agg)) = self.aggregations.lock().get(&pdu.event_id)
            && *v == version
        {
            return Ok(agg.clone());
        }
        let agg = self.compute_aggregations(pdu)?;
        let agg = (!agg.is_empty()).then(|| Arc::new(agg));
        self.aggregations
            .lock()
            .put(pdu.event_id.clone(), (version, agg.clone()));
        Ok(agg)
    }

    fn compute_aggregations(&self, pdu: &Pdu) -> Result<Aggregations> {
        let mut agg = Aggregations::default();
        let mut latest_edit: Option<(u64, OwnedEventId)> = None;
        for child in self.children(pdu.event_id.as_str())? {
            let Ok(id) = OwnedEventId::try_from(child.event_id.as_str()) else {
                continue;
            };
            match child.rel_type.as_str() {
                "m.thread" => {
                    let (latest, count, senders) = agg
                        .thread
                        .get_or_insert_with(|| (id.clone(), 0, HashSet::new()));
                    *latest = id;
                    *count += 1;
                    senders.insert(child.sender);
                }
                // Replacements from anyone but the sender, or of another type, are not edits
                // (spec: "Validity of replacement events"); the newest by timestamp wins.
                "m.replace"
                    if child.sender == pdu.sender.as_str()
                        && child.event_type == pdu.kind.to_string()
                        && !pdu.is_state() =>
                {
                    if let Some(edit) = self.pdu(&id)? {
                        let ts = u64::from(edit.origin_server_ts.0);
                        let newer = latest_edit
                            .as_ref()
                            .is_none_or(|(t, e)| (ts, &id) > (*t, e));
                        if newer {
                            latest_edit = Some((ts, id));
                        }
                    }
                }
                "m.reference" => agg.references.push(child.event_id),
                _ => {}
            }
        }
        agg.edit = latest_edit.map(|(_, id)| id);
        Ok(agg)
    }

    /// The `unsigned["m.relations"]` of an event as `viewer` sees it, if it has any. Edits and
    /// annotations carry none of their own, nor does a redacted event.
    pub(crate) fn bundle(
        &self,
        ev: &TimelineEvent,
        viewer: Option<(&UserId, &str)>,
        with_room_id: bool,
    ) -> Result<Option<Value>> {
        if ev.meta.redacted_by.is_some()
            || relation_of(ev.pdu.content.get())
                .is_some_and(|r| r.rel_type == "m.replace" || r.rel_type == "m.annotation")
        {
            return Ok(None);
        }
        let Some(agg) = self.aggregations(&ev.pdu)? else {
            return Ok(None);
        };
        let format = |id: &EventId| -> Result<Option<Value>> {
            Ok(self.timeline_event(id)?.map(|e| {
                serde_json::from_str(self.format_plain(&e, viewer, with_room_id).get())
                    .unwrap_or_default()
            }))
        };
        let mut out = serde_json::Map::new();
        if let Some((latest, count, senders)) = &agg.thread
            && let Some(latest) = format(latest)?
        {
            let participated =
                viewer.is_some_and(|(u, _)| senders.contains(u.as_str()) || ev.pdu.sender == u);
            out.insert(
                "m.thread".into(),
                json!({
                    "latest_event": latest,
                    "count": count,
                    "current_user_participated": participated,
                }),
            );
        }
        if let Some(edit) = &agg.edit
            && let Some(edit) = format(edit)?
        {
            out.insert("m.replace".into(), edit);
        }
        if !agg.references.is_empty() {
            let chunk: Vec<_> = agg
                .references
                .iter()
                .map(|id| json!({ "event_id": id }))
                .collect();
            out.insert("m.reference".into(), json!({ "chunk": chunk }));
        }
        Ok((!out.is_empty()).then_some(Value::Object(out)))
    }

    /// `/relations`: the events relating to one the user may see, filtered and paged.
    pub fn relations(
        &self,
        user: &UserId,
        room_id: &RoomId,
        parent: &EventId,
        q: &RelationsQuery,
    ) -> Result<RelationsPage> {
        let (_, access) = self.visible_event(room_id, user, parent)?;
        // Gather candidates (with `recurse`, down to the depth limit), in stream order.
        let mut found: Vec<RelatedEvent> = Vec::new();
        let mut queue = VecDeque::from([(parent.to_string(), 1)]);
        let mut seen = HashSet::new();
        let mut depth_reached = 0;
        while let Some((id, depth)) = queue.pop_front() {
            for child in self.children(&id)? {
                if !seen.insert(child.event_id.clone()) {
                    continue;
                }
                depth_reached = depth_reached.max(depth);
                if q.recurse && depth < MAX_RECURSION_DEPTH {
                    queue.push_back((child.event_id.clone(), depth + 1));
                }
                found.push(child);
            }
        }
        found.sort_by_key(|c| c.pos);
        if !q.forwards {
            found.reverse();
        }
        let in_range = |pos: StreamPos| {
            let after_from = match (q.from, q.forwards) {
                (None, _) => true,
                (Some(f), true) => pos > f,
                (Some(f), false) => pos < f,
            };
            let before_to = match (q.to, q.forwards) {
                (None, _) => true,
                (Some(t), true) => pos <= t,
                (Some(t), false) => pos > t,
            };
            after_from && before_to && pos <= access.max_pos
        };
        let limit = q.limit.clamp(1, 1000);
        let mut events = Vec::new();
        let mut next = None;
        for child in found.into_iter().filter(|c| in_range(c.pos)) {
            if q.rel_type.as_ref().is_some_and(|t| *t != child.rel_type)
                || q.event_type
                    .as_ref()
                    .is_some_and(|t| *t != child.event_type)
            {
                continue;
            }
            if events.len() == limit {
                next = events.last().map(|e: &TimelineEvent| e.meta.pos);
                break;
            }
            let Ok(id) = EventId::parse(&child.event_id) else {
                continue;
            };
            let Some(ev) = self.timeline_event(&id)? else {
                continue;
            };
            if self.sees(user, &ev, &access)? {
                events.push(ev);
            }
        }
        Ok(RelationsPage {
            events,
            next,
            recursion_depth: q.recurse.then_some(depth_reached),
        })
    }

    /// `/threads`: the room's thread roots the user may see, by latest activity, newest first;
    /// with `participated`, only threads the user started or replied to. `from` is an exclusive
    /// bound on the activity position.
    pub fn threads(
        &self,
        user: &UserId,
        room_id: &RoomId,
        participated: bool,
        from: Option<StreamPos>,
        limit: usize,
    ) -> Result<(Vec<TimelineEvent>, Option<StreamPos>)> {
        let access = self.access(room_id, user)?;
        let limit = limit.clamp(1, 100);
        let mut before = from.map_or(access.max_pos, |f| f.saturating_sub(1).min(access.max_pos));
        let mut out = Vec::new();
        loop {
            let rows = self.store.threads(room_id.as_str(), before, limit * 2)?;
            let exhausted = rows.len() < limit * 2;
            for (activity, root) in rows {
                before = activity.saturating_sub(1);
                let Ok(root) = EventId::parse(&root) else {
                    continue;
                };
                let Some(ev) = self.timeline_event(&root)? else {
                    continue;
                };
                if ev.pdu.room_id != room_id || !self.sees(user, &ev, &access)? {
                    continue;
                }
                if participated && !self.participated(user, &ev)? {
                    continue;
                }
                out.push(ev);
                if out.len() == limit {
                    return Ok((out, Some(activity)));
                }
            }
            if exhausted || before == 0 {
                return Ok((out, None));
            }
        }
    }

    fn participated(&self, user: &UserId, root: &TimelineEvent) -> Result<bool> {
        if root.pdu.sender == user {
            return Ok(true);
        }
        Ok(self
            .aggregations(&root.pdu)?
            .and_then(|a| a.thread.as_ref().map(|t| t.2.contains(user.as_str())))
            .unwrap_or(false))
    }
}
