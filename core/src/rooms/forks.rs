//! Where branches of a room's graph meet (spec: room versions, "State resolution" v2; v1 for
//! room version 1 in `state_res_v1.rs`).
//!
//! A remote event usually extends exactly this server's forward extremities, and its state
//! before is the room's current state. When it does not (two servers wrote while they could
//! not reach each other, or it builds on an older event), the state before it is the
//! resolution of the states after each of its prev events; and when the room is left with
//! several extremities, its current state is the resolution of the states after each of them.
//! Every server resolves the same states the same way, so the room converges.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ruma::events::StateEventType;
use ruma::room_version_rules::{RoomVersionRules, StateResolutionVersion};
use ruma::state_res::utils::event_id_set::EventIdSet;
use ruma::{EventId, OwnedEventId};

use super::state::{SharedState, StateMap, next_group};
use super::{Batch, PduRef, RoomHead, Rooms};
use crate::{Error, Result};

impl Rooms {
    /// The room state after an event this server has.
    pub(crate) fn state_after_event(&self, id: &EventId) -> Result<Option<SharedState>> {
        let pending = self.pending_state_after.lock().get(id).copied();
        if let Some(group) = pending {
            return Ok(Some(self.state_at_group(group)?));
        }
        let meta = match self.timeline_event(id)? {
            Some(ev) => ev.meta,
            None => return Ok(None),
        };
        if meta.state_after == 0 {
            // An outlier: no state of its own is known.
            return Ok(None);
        }
        Ok(Some(self.state_at_group(meta.state_after)?))
    }

    /// Resolves diverging states of a room by its version's state resolution.
    pub(crate) fn resolve_states(
        &self,
        rules: &RoomVersionRules,
        states: &[SharedState],
    ) -> Result<StateMap> {
        match states {
            [] => return Ok(StateMap::new()),
            [one] => return Ok((**one).clone()),
            _ => {}
        }
        if states.iter().all(|s| s == &states[0]) {
            return Ok((*states[0]).clone());
        }
        if matches!(rules.state_res, StateResolutionVersion::V1) {
            return self.resolve_v1(rules, states);
        }
        let v2 = rules
            .state_res
            .v2_rules()
            .ok_or_else(|| Error::internal("room version without a known state resolution"))?;
        let maps: Vec<ruma::state_res::StateMap<OwnedEventId>> = states
            .iter()
            .map(|s| {
                s.iter()
                    .map(|((t, k), id)| ((StateEventType::from(t.as_str()), k.clone()), id.clone()))
                    .collect()
            })
            .collect();
        let mut auth_chains = Vec::with_capacity(states.len());
        for s in states {
            let mut set = EventIdSet::new();
            for id in self.full_auth_chain(s.values().cloned())? {
                set.insert(id);
            }
            auth_chains.push(set);
        }
        let fetch = |id: &EventId| self.pdu(id).ok().flatten();
        let subgraph = |conflicted: &ruma::state_res::StateMap<Vec<OwnedEventId>>| {
            self.conflicted_subgraph(conflicted).ok()
        };
        let resolved = ruma::state_res::resolve(
            &rules.authorization,
            v2,
            maps.iter(),
            auth_chains,
            fetch,
            subgraph,
        )
        .map_err(|e| Error::internal(format!("state resolution failed: {e}")))?;
        Ok(resolved
            .into_iter()
            .map(|((t, k), id)| ((t.to_string(), k), id))
            .collect())
    }

    /// Every event reachable through `auth_events` from the given ones.
    fn full_auth_chain(
        &self,
        from: impl IntoIterator<Item = OwnedEventId>,
    ) -> Result<HashSet<OwnedEventId>> {
        let mut seen = HashSet::new();
        let mut stack: Vec<OwnedEventId> = Vec::new();
        for id in from {
            if let Some(p) = self.pdu(&id)? {
                stack.extend(p.auth_events.iter().cloned());
            }
        }
        while let Some(id) = stack.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            if let Some(p) = self.pdu(&id)? {
                stack.extend(p.auth_events.iter().filter(|a| !seen.contains(*a)).cloned());
            }
        }
        Ok(seen)
    }

    /// The conflicted state subgraph (room version 12): the conflicted events and every event
    /// on an `auth_events` path from one conflicted event to another.
    fn conflicted_subgraph(
        &self,
        conflicted: &ruma::state_res::StateMap<Vec<OwnedEventId>>,
    ) -> Result<EventIdSet<OwnedEventId>> {
        let targets: HashSet<OwnedEventId> = conflicted.values().flatten().cloned().collect();
        // Whether an event reaches a conflicted event through its auth events, memoised.
        let mut reaches: HashMap<OwnedEventId, bool> = HashMap::new();
        fn walk(
            rooms: &Rooms,
            id: &OwnedEventId,
            targets: &HashSet<OwnedEventId>,
            reaches: &mut HashMap<OwnedEventId, bool>,
            depth: usize,
        ) -> Result<bool> {
            if let Some(r) = reaches.get(id) {
                return Ok(*r);
            }
            // Auth chains are shallow; the bound guards the stack against a malicious graph.
            if depth > 512 {
                return Ok(false);
            }
            reaches.insert(id.clone(), false);
            let mut found = false;
            if let Some(p) = rooms.pdu(id)? {
                for a in &p.auth_events {
                    let hit = targets.contains(a) || walk(rooms, a, targets, reaches, depth + 1)?;
                    found |= hit;
                }
            }
            reaches.insert(id.clone(), found);
            Ok(found)
        }
        let mut out = EventIdSet::new();
        for t in &targets {
            out.insert(t.clone());
            walk(self, t, &targets, &mut reaches, 0)?;
        }
        // Ancestors of a conflicted event that themselves reach a conflicted event.
        let mut stack: Vec<OwnedEventId> = targets.iter().cloned().collect();
        let mut seen = HashSet::new();
        while let Some(id) = stack.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            if let Some(p) = self.pdu(&id)? {
                for a in &p.auth_events {
                    if reaches.get(a).copied().unwrap_or(false) || targets.contains(a) {
                        out.insert(a.clone());
                        stack.push(a.clone());
                    }
                }
            }
        }
        Ok(out)
    }

    /// The state before a remote event: the current state when it extends exactly this
    /// server's extremities, else the resolution of the states after its prev events.
    pub(crate) fn state_before_remote(&self, head: &RoomHead, pdu: &PduRef) -> Result<SharedState> {
        let mut prevs: Vec<&OwnedEventId> = pdu.prev_events.iter().collect();
        prevs.sort();
        let mut extremities: Vec<&OwnedEventId> = head.extremities.iter().collect();
        extremities.sort();
        if prevs == extremities {
            return Ok(head.state.clone());
        }
        let mut states = Vec::new();
        for p in &pdu.prev_events {
            match self.state_after_event(p)? {
                Some(s) => states.push(s),
                None => return Ok(head.state.clone()),
            }
        }
        Ok(Arc::new(self.resolve_states(&head.rules, &states)?))
    }

    /// Makes `map` the head's state, in a new state group written with the batch. Memberships
    /// the new state changes are written too: the `memberships` table (each user's rooms, which
    /// `/sync` reads) follows the state, not only the events appended.
    pub(crate) fn set_head_state(
        &self,
        head: &mut RoomHead,
        map: StateMap,
        batch: &mut Batch,
    ) -> Result<()> {
        if *head.state == map {
            return Ok(());
        }
        let changes: Vec<((String, String), OwnedEventId)> = map
            .iter()
            .filter(|(k, v)| head.state.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for ((kind, key), id) in &changes {
            if kind != "m.room.member" {
                continue;
            }
            let (Some(membership), Ok(user)) = (
                self.pdu(id)?.and_then(|p| p.membership()),
                ruma::UserId::parse(key.as_str()),
            ) else {
                continue;
            };
            batch.ops.push(hearth_storage::WriteOp::PutMembershipAtNext(
                key.clone(),
                head.room_id.to_string(),
                hearth_storage::MembershipRecord {
                    membership,
                    event_id: id.to_string(),
                    pos: 0,
                    forgotten: false,
                },
            ));
            batch.notify.insert(user);
        }
        // A state that lost an entry cannot be a delta over the current one: a snapshot then.
        let lost = head.state.keys().any(|k| !map.contains_key(k));
        let prev =
            (!lost && head.state_group != 0).then_some((head.state_group, &head.state_group_rec));
        let rec = next_group(head.room_id.as_str(), prev, &map, &changes);
        let id = self.allocate_group();
        self.pending_groups.lock().insert(id, rec.clone());
        batch
            .ops
            .push(hearth_storage::WriteOp::PutStateGroup(id, rec.clone()));
        batch.groups.push((id, rec.clone()));
        head.state_group = id;
        head.state_group_rec = rec;
        head.state = Arc::new(map);
        Ok(())
    }

    /// Right after a remote event was appended (the head's state is the state after it): when
    /// forks remain, the room's current state is the resolution of the states after each
    /// forward extremity.
    /// Answers whether the state changed.
    pub(crate) fn resolve_current(&self, head: &mut RoomHead, batch: &mut Batch) -> Result<bool> {
        if head.extremities.len() < 2 {
            return Ok(false);
        }
        // The event just appended is the last extremity; not durable yet, its state is the
        // head's.
        let mut states = vec![head.state.clone()];
        let (_, others) = head
            .extremities
            .split_last()
            .expect("at least two extremities");
        for e in others {
            if let Some(s) = self.state_after_event(e)? {
                states.push(s);
            }
        }
        let resolved = self.resolve_states(&head.rules, &states)?;
        if *head.state == resolved {
            return Ok(false);
        }
        self.set_head_state(head, resolved, batch)?;
        Ok(true)
    }

    /// Recomputes the head's member map from its state (after a resolution changed it).
    pub(crate) fn refresh_members(&self, head: &mut RoomHead) -> Result<()> {
        let mut members = Vec::new();
        for ((t, k), id) in head.state.iter() {
            if t == "m.room.member"
                && let Ok(user) = ruma::UserId::parse(k.as_str())
                && let Some(m) = self.pdu(id)?.and_then(|p| p.membership())
            {
                members.push((user, m));
            }
        }
        head.members.clear();
        head.reset_joined();
        for (user, m) in members {
            head.set_membership(user, m);
        }
        Ok(())
    }

    /// Keeps a remote event the auth rules refused (`Rejected`) or that passed them only at
    /// its place in the graph (`SoftFailed`): in the graph, since other servers may reference
    /// it, but not in the timeline, the state or the forward extremities. Its state after is the
    /// state before it (and, for a soft-failed state event, the event itself), so that what
    /// builds on it finds a state there. It has no state before of its own, so `/state` at it
    /// is not found, as at an outlier.
    pub(crate) fn keep_refused(
        &self,
        head: &RoomHead,
        pdu: &PduRef,
        obj: ruma::CanonicalJsonObject,
        state_before: &SharedState,
        refused: hearth_storage::Refused,
        batch: &mut Batch,
    ) -> Result<()> {
        let changes = match (&pdu.state_key, refused) {
            (Some(key), hearth_storage::Refused::SoftFailed) => {
                vec![((pdu.kind.to_string(), key.clone()), pdu.event_id.clone())]
            }
            _ => Vec::new(),
        };
        let group = if changes.is_empty() && Arc::ptr_eq(state_before, &head.state) {
            head.state_group
        } else {
            let mut map = (**state_before).clone();
            map.extend(changes.iter().cloned());
            let group = self.allocate_group();
            let rec = next_group(head.room_id.as_str(), None, &map, &[]);
            self.pending_groups.lock().insert(group, rec.clone());
            batch
                .ops
                .push(hearth_storage::WriteOp::PutStateGroup(group, rec.clone()));
            batch.groups.push((group, rec));
            group
        };
        self.pending_events
            .lock()
            .insert(pdu.event_id.clone(), pdu.clone());
        self.pending_state_after
            .lock()
            .insert(pdu.event_id.clone(), group);
        self.put_outside_timeline(&head.room_id, pdu, obj, group, Some(refused), batch)
    }

    /// The forward extremities a new event replaces through refused events: walking back from
    /// its prev events through rejected and soft-failed ones, the events before those (as
    /// Synapse's `_get_prevs_before_rejected`). Without this an extremity followed only by
    /// soft-failed events would stay one for good. Outliers stop the walk.
    pub(crate) fn prevs_before_refused(&self, pdu: &PduRef) -> Result<HashSet<OwnedEventId>> {
        let mut out = HashSet::new();
        let mut stack: Vec<OwnedEventId> = pdu.prev_events.clone();
        let mut steps = 0;
        while let Some(id) = stack.pop() {
            steps += 1;
            if steps > 1_000 {
                break;
            }
            let refused = self
                .store
                .event_meta(id.as_str())?
                .is_some_and(|m| m.refused.is_some());
            if !refused {
                continue;
            }
            if let Some(p) = self.pdu(&id)? {
                for prev in &p.prev_events {
                    if out.insert(prev.clone()) {
                        stack.push(prev.clone());
                    }
                }
            }
        }
        Ok(out)
    }
}
