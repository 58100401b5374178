//! The far edge of a gap in a room's graph that `/get_missing_events` could not close (spec:
//! "Retrieving missing events"; Synapse does the same in `_get_state_ids_after_missing_prev_event`).
//!
//! An event this server lacks is kept as an outlier that carries the state after it, taken from
//! the server that sent what follows: the state before it (`/state_ids`), plus the event itself
//! when it is a state event. The events after the gap then have a state before them like any
//! other: `state_after_event` finds this one, and where the branches meet, state resolution
//! merges it with what this server already had. The events inside the gap stay unknown; they
//! are history that `/backfill` can still fetch.

use std::collections::HashMap;
use std::sync::Arc;

use ruma::{CanonicalJsonObject, OwnedEventId, RoomId};

use super::state::{StateMap, next_group};
use super::{Batch, Pdu, PduRef, RoomHead, Rooms};
use crate::{Error, Result};

/// The state after an event this server lacks, as its peer described it.
pub struct GapEdge {
    /// The event at the edge, its signatures checked.
    pub event: (OwnedEventId, CanonicalJsonObject),
    /// The ids of the state before it.
    pub state_before: Vec<OwnedEventId>,
    /// The events of that state (and their auth events) this server did not have, signatures
    /// checked.
    pub missing: Vec<(OwnedEventId, CanonicalJsonObject)>,
}

/// The event at an edge with the state around it.
pub(crate) struct EdgeState {
    pub pdu: PduRef,
    pub obj: CanonicalJsonObject,
    /// The state before it, as its peer reported it (the ids this server could find).
    pub before: StateMap,
    /// The group of the state after it, queued in the batch.
    pub after: u64,
}

impl Rooms {
    /// Keeps the edge of a gap as an outlier with a state of its own. State events this server
    /// did not have are kept as outliers too, each only if the auth rules allow it against its
    /// own auth events (the spec's first auth check; the event at the edge is checked the same
    /// way). An id of the state that cannot be found or fails its check is left out of it.
    pub async fn ingest_gap_edge(&self, room_id: &RoomId, edge: GapEdge) -> Result<()> {
        let head = self.head(room_id)?;
        let queued = {
            let h = head.lock();
            if self.pdu(&edge.event.0)?.is_some() {
                return Ok(());
            }
            let mut batch = Batch::default();
            let EdgeState {
                pdu: edge_pdu,
                obj: edge_obj,
                before,
                after: mut group,
            } = match self.edge_state(&h, edge, &mut batch) {
                Ok(e) => e,
                Err(e) => {
                    self.clear_pending(&batch);
                    return Err(e);
                }
            };
            self.pending_events
                .lock()
                .insert(edge_pdu.event_id.clone(), edge_pdu.clone());
            // An edge the auth rules refuse is kept as rejected, with the state before it as
            // its state after (Synapse leaves a rejected event out of the state at the gap), and
            // what comes after it is still taken.
            let refused = match self.authorize_by_auth_events(&h, &edge_pdu) {
                Ok(()) => None,
                Err(Error::Forbidden(reason)) => {
                    tracing::info!(%room_id, event_id = %edge_pdu.event_id, error = %reason, "the event at the edge of a gap is rejected");
                    if edge_pdu.state_key.is_some() {
                        group = self.allocate_group();
                        let rec = super::state::next_group(room_id.as_str(), None, &before, &[]);
                        self.pending_groups.lock().insert(group, rec.clone());
                        batch
                            .ops
                            .push(hearth_storage::WriteOp::PutStateGroup(group, rec.clone()));
                        batch.groups.push((group, rec));
                    }
                    Some(hearth_storage::Refused::Rejected)
                }
                Err(e) => {
                    self.clear_pending(&batch);
                    self.pending_events.lock().remove(&edge_pdu.event_id);
                    return Err(e);
                }
            };
            self.pending_state_after
                .lock()
                .insert(edge_pdu.event_id.clone(), group);
            self.put_outside_timeline(room_id, &edge_pdu, edge_obj, group, refused, &mut batch)?;
            self.enqueue(&h, batch)
        };
        self.finish(queued).await.map(drop)
    }

    /// The state before the event at an edge, and the state after it as a new state group
    /// queued in `batch`. The state events this server lacked are queued as outliers, each only
    /// if the auth rules allow it against its own auth events; an id of the state that cannot be
    /// found or fails its check is left out of the state. The edge event itself is not queued.
    pub(crate) fn edge_state(
        &self,
        h: &RoomHead,
        edge: GapEdge,
        batch: &mut Batch,
    ) -> Result<EdgeState> {
        let room_id = &h.room_id;
        let (edge_id, edge_obj) = edge.event;
        // Oldest first, so that auth events are in before the events they authorise.
        let mut fresh: Vec<(PduRef, CanonicalJsonObject)> = Vec::new();
        for (id, obj) in edge.missing {
            let pdu = Arc::new(Pdu::from_canonical(id, &obj)?);
            if pdu.room_id == *room_id {
                fresh.push((pdu, obj));
            }
        }
        fresh.sort_by_key(|(p, _)| p.depth);
        // An event kept before stays as it was kept: the peer may have sent it pruned.
        let edge_pdu = match self.pdu(&edge_id)? {
            Some(known) => known,
            None => Arc::new(Pdu::from_canonical(edge_id.clone(), &edge_obj)?),
        };
        if edge_pdu.room_id != *room_id {
            return Err(Error::BadJson("event is for another room".into()));
        }
        let mut kept: HashMap<OwnedEventId, PduRef> = HashMap::new();
        for (pdu, obj) in fresh {
            if kept.contains_key(&pdu.event_id) || self.pdu(&pdu.event_id)?.is_some() {
                continue;
            }
            // Visible to the auth checks of the events after it while this batch is queued.
            self.pending_events
                .lock()
                .insert(pdu.event_id.clone(), pdu.clone());
            if let Err(e) = self.authorize_by_auth_events(h, &pdu) {
                self.pending_events.lock().remove(&pdu.event_id);
                tracing::info!(%room_id, event_id = %pdu.event_id, error = %e, "a state event at a gap failed its auth check");
                continue;
            }
            self.put_outlier(room_id, &pdu, obj, 0, batch)?;
            kept.insert(pdu.event_id.clone(), pdu);
        }

        let mut before = StateMap::new();
        for id in &edge.state_before {
            let pdu = match kept.get(id) {
                Some(p) => Some(p.clone()),
                None => self.pdu(id)?,
            };
            if let Some(p) = pdu.filter(|p| p.room_id == *room_id)
                && let Some(key) = &p.state_key
            {
                before.insert((p.kind.to_string(), key.clone()), id.clone());
            }
        }
        let mut after = before.clone();
        if let Some(key) = &edge_pdu.state_key {
            after.insert((edge_pdu.kind.to_string(), key.clone()), edge_id.clone());
        }
        let group = self.allocate_group();
        let rec = next_group(room_id.as_str(), None, &after, &[]);
        self.pending_groups.lock().insert(group, rec.clone());
        batch
            .ops
            .push(hearth_storage::WriteOp::PutStateGroup(group, rec.clone()));
        batch.groups.push((group, rec));
        tracing::info!(%room_id, event_id = %edge_id, state = after.len(), fetched = kept.len(), "took the state at the edge of a gap");
        Ok(EdgeState {
            pdu: edge_pdu,
            obj: edge_obj,
            before,
            after: group,
        })
    }

    /// The auth rules against the event's own auth events (which must all be known). From
    /// room version 12 the create event is implied, not listed: it is the room's own.
    pub(crate) fn authorize_by_auth_events(&self, head: &RoomHead, pdu: &PduRef) -> Result<()> {
        let create = ("m.room.create".to_owned(), String::new());
        let mut by_auth = StateMap::new();
        if let Some(id) = head.state.get(&create) {
            by_auth.insert(create, id.clone());
        }
        for id in &pdu.auth_events {
            let a = self
                .pdu(id)?
                .ok_or_else(|| Error::Forbidden(format!("unknown auth event {id}")))?;
            if let Some(key) = &a.state_key {
                by_auth.insert((a.kind.to_string(), key.clone()), id.clone());
            }
        }
        self.authorize(&head.rules, pdu, &by_auth)
    }
}
