//! Asking a room's other servers for its history (`GET /backfill`), for the core's
//! `rooms::history`: the events before those this server holds, each checked like any PDU,
//! and the state at the prev events this server has no state for (as at a gap's edge: see
//! `gaps.rs`), so that the core can check and place every event.

use std::collections::{BTreeSet, HashSet};

use hearth_core::rooms::Rooms;
use hearth_core::rooms::history::Backfilled;
use ruma::{OwnedEventId, OwnedServerName, RoomId, RoomVersionId, ServerName};

use crate::gaps::{fetch_edge, objects, prevs_of};
use crate::joining::{seg, through_servers};
use crate::pdu::check_signed_pdu;
use crate::{FedError, Federation};

/// Edges (prev events whose state is fetched) per batch; past that the graph is unusually
/// wide there, and the events on the other edges wait for a later batch.
const MAX_EDGES: usize = 4;

impl Federation {
    pub(crate) async fn backfill_from(
        &self,
        room_id: &RoomId,
        servers: &[OwnedServerName],
        from: &[OwnedEventId],
        limit: usize,
    ) -> Result<Backfilled, hearth_core::Error> {
        let core = self
            .core
            .get()
            .cloned()
            .ok_or_else(|| hearth_core::Error::not_found("Federation is not started"))?;
        let rooms = &core.rooms;
        let version = rooms.room_version(room_id)?;
        through_servers(servers, "backfilling", room_id, |server| {
            let version = &version;
            async move {
                self.backfill_via(rooms, &server, room_id, version, from, limit)
                    .await
            }
        })
        .await
    }

    async fn backfill_via(
        &self,
        rooms: &Rooms,
        server: &ServerName,
        room_id: &RoomId,
        version: &RoomVersionId,
        from: &[OwnedEventId],
        limit: usize,
    ) -> Result<Backfilled, FedError> {
        let mut path = format!(
            "/_matrix/federation/v1/backfill/{}?limit={limit}",
            seg(room_id.as_str())
        );
        for id in from {
            path.push_str("&v=");
            path.push_str(&seg(id.as_str()));
        }
        let answer = self
            .client
            .request(server, http::Method::GET, &path, None)
            .await?;
        let mut events = Vec::new();
        let mut have: HashSet<OwnedEventId> = HashSet::new();
        for obj in objects(&answer["pdus"]) {
            if obj.get("room_id").and_then(|r| r.as_str()) != Some(room_id.as_str()) {
                continue;
            }
            // A forged or broken event is left out; what builds on it then has no known
            // state and waits.
            match check_signed_pdu(self, version, obj).await {
                Ok(c) => {
                    if have.insert(c.event_id.clone()) {
                        events.push((c.event_id, c.json));
                    }
                }
                Err(e) => {
                    tracing::info!(%room_id, %server, error = %e.message, "a backfilled event failed its checks")
                }
            }
        }
        let mut edges = BTreeSet::new();
        for (_, obj) in &events {
            for prev in prevs_of(obj) {
                if !have.contains(&prev) && !rooms.has_state_after(&prev)? {
                    edges.insert(prev);
                }
            }
        }
        let mut edge_states = Vec::new();
        for edge in edges.iter().take(MAX_EDGES) {
            match fetch_edge(self, rooms, server, room_id, version, edge).await {
                Ok(e) => edge_states.push(e),
                Err(e) => {
                    tracing::info!(%room_id, %server, event_id = %edge, error = %e, "no state at a backfill edge")
                }
            }
        }
        tracing::debug!(%room_id, %server, events = events.len(), edges = edges.len(), "backfilled");
        Ok(Backfilled {
            events,
            edges: edge_states,
        })
    }
}
