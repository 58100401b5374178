//! A room's history from before this server's first event in it, backfilled from the servers in
//! the room (spec: Server-Server API, "Backfilling and retrieving missing events").
//!
//! A server that joins a room over federation holds the room's state and what came after its
//! join. When a client pages back past that, the room's other servers are asked for the events
//! before (`Remote::backfill`), a batch at a time. Each event's state before it is computed
//! from its prev events (the state at a prev event this server lacks comes from the peer, as at
//! a gap's edge), and it must pass the auth rules against its auth events and that state; the
//! batch is stored in one commit.
//!
//! Stream positions only grow, and these events are older than every event of the room's
//! timeline, so they have an order of their own: `ROOM_HISTORY`, a per-room sequence counting
//! into the past (Synapse gives them negative stream orderings). A pagination token points into
//! either order ([`TimelinePos`]); `/messages` walks from one into the other. `/sync` never sees
//! history: it is not news.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hearth_storage::{EventMeta, StreamPos, WriteOp};
use ruma::{CanonicalJsonObject, EventId, OwnedEventId, OwnedServerName, RoomId};

use super::state::{StateMap, next_group};
use super::timeline::{Reader, TimelineEvent};
use super::{Batch, GapEdge, Pdu, PduRef, RoomHead, Rooms};
use crate::{Error, Result};

/// Events asked for per `/backfill` request (Synapse and Hearth answer at most 100).
pub const BACKFILL_LIMIT: usize = 100;
/// Backfill requests one `/messages` page may wait for.
const ROUNDS_PER_PAGE: usize = 3;
/// The oldest events held whose missing prev events are asked for.
const FRONTIER_EVENTS: usize = 5;
/// After a backfill failed, how long pages stop at the start of what this server holds.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// How long a client's page waits for the room's servers to answer one backfill (a slow or
/// unreachable peer must not hold `/messages` for the federation client's own timeouts).
const FETCH_TIMEOUT: Duration = Duration::from_secs(15);

/// A point between two events of a room, as pagination tokens name it: just after the live
/// event at a stream position (`s<pos>`; 0 is before every live event), or just after the
/// history event at a sequence (`h<seq>`). Ordered oldest first: every history point comes
/// before every live one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimelinePos {
    Live(StreamPos),
    History(u64),
}

impl TimelinePos {
    /// The point just after an event.
    pub fn after(meta: &EventMeta) -> Self {
        match meta.history_seq {
            Some(seq) => Self::History(seq),
            None => Self::Live(meta.pos),
        }
    }

    /// The point just before an event.
    pub fn before(meta: &EventMeta) -> Self {
        match meta.history_seq {
            Some(seq) => Self::History(seq + 1),
            None => Self::Live(meta.pos.saturating_sub(1)),
        }
    }

    fn key(self) -> (u8, i128) {
        match self {
            Self::History(seq) => (0, -i128::from(seq)),
            Self::Live(pos) => (1, i128::from(pos)),
        }
    }
}

impl Ord for TimelinePos {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl PartialOrd for TimelinePos {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for TimelinePos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Live(pos) => write!(f, "s{pos}"),
            Self::History(seq) => write!(f, "h{seq}"),
        }
    }
}

impl FromStr for TimelinePos {
    type Err = ();

    /// Also takes a sync token (`s<pos>_…`), which clients pass as a `/messages` `from`.
    fn from_str(token: &str) -> std::result::Result<Self, ()> {
        let first = token.split('_').next().unwrap_or_default();
        if let Some(seq) = first.strip_prefix('h') {
            return seq.parse().map(Self::History).map_err(drop);
        }
        first
            .strip_prefix('s')
            .unwrap_or(first)
            .parse()
            .map(Self::Live)
            .map_err(drop)
    }
}

/// A page of `/messages` or of `/context`.
pub struct HistoryPage {
    pub events: Vec<TimelineEvent>,
    /// Where to go on from, `None` when the room has nothing further in that direction.
    pub end: Option<TimelinePos>,
}

/// A page read from what this server holds.
struct Scan {
    page: HistoryPage,
    /// Paging back, the scan ran out of what this server holds before `to` or `limit`:
    /// `page.end` is where more history, once backfilled, would continue.
    at_start: bool,
}

/// What a peer's `/backfill` answered, with what is needed to take it in.
pub struct Backfilled {
    /// The events, signatures and hashes checked, in any order.
    pub events: Vec<(OwnedEventId, CanonicalJsonObject)>,
    /// The state after each prev event of these that this server has no state for (neither
    /// the batch nor the room's events here), as the peer reported it.
    pub edges: Vec<GapEdge>,
}

/// Per room: one backfill at a time (sequences are allocated from what is stored), and when
/// the last one failed.
#[derive(Default)]
pub(crate) struct HistoryGate {
    failed_at: Option<Instant>,
}

impl Rooms {
    /// `/messages` (and the pages of `/context`): events of a room the user may see and the
    /// filter lets through, at most `limit`, backwards `(to, from]` newest first or forwards
    /// `(from, to]` oldest first, across the live timeline and the backfilled history. Paging
    /// back past the start of what this server holds asks the room's other servers for more.
    pub async fn messages(
        &self,
        reader: Reader<'_>,
        from: TimelinePos,
        to: Option<TimelinePos>,
        backwards: bool,
        limit: usize,
    ) -> Result<HistoryPage> {
        let limit = limit.max(1);
        let mut scan = self.scan(reader, from, to, backwards, limit)?;
        let mut rounds = 0;
        while scan.at_start {
            if scan.page.events.len() == limit || rounds == ROUNDS_PER_PAGE {
                // The client asks again from `end`, if the room's servers may have more.
                if self.history_frontier(reader.room_id)?.is_empty() {
                    scan.page.end = None;
                }
                return Ok(scan.page);
            }
            rounds += 1;
            if self.fetch_history(reader.room_id).await? == 0 {
                scan.page.end = None;
                return Ok(scan.page);
            }
            let resume = scan
                .page
                .end
                .expect("a scan at the start says where it stopped");
            let more = self.scan(reader, resume, to, true, limit - scan.page.events.len())?;
            scan.page.events.extend(more.page.events);
            scan.page.end = more.page.end;
            scan.at_start = more.at_start;
        }
        Ok(scan.page)
    }

    /// A page of what this server holds, without asking other servers.
    pub fn history_page(
        &self,
        reader: Reader<'_>,
        from: TimelinePos,
        backwards: bool,
        limit: usize,
    ) -> Result<HistoryPage> {
        let mut scan = self.scan(reader, from, None, backwards, limit)?;
        if scan.at_start {
            scan.page.end = None;
        }
        Ok(scan.page)
    }

    fn scan(
        &self,
        reader: Reader<'_>,
        from: TimelinePos,
        to: Option<TimelinePos>,
        backwards: bool,
        limit: usize,
    ) -> Result<Scan> {
        let room_id = reader.room_id;
        let live_to = match to {
            Some(TimelinePos::Live(t)) => Some(t),
            _ => None,
        };
        let history_to = match to {
            Some(TimelinePos::History(t)) => Some(t),
            _ => None,
        };
        // A `to` on the wrong side of `from`: nothing between them.
        if to.is_some_and(|t| if backwards { t >= from } else { t <= from }) {
            return Ok(Scan {
                page: HistoryPage {
                    events: Vec::new(),
                    end: None,
                },
                at_start: false,
            });
        }
        if backwards {
            let mut events = Vec::new();
            let mut seq_from = match from {
                TimelinePos::History(seq) => seq.max(1),
                TimelinePos::Live(pos) => {
                    let page = self.page(reader, pos, live_to, true, limit)?;
                    if page.end.is_some() || live_to.is_some() {
                        let end = page.end.map(TimelinePos::Live);
                        return Ok(Scan {
                            page: HistoryPage {
                                events: page.events,
                                end,
                            },
                            at_start: false,
                        });
                    }
                    events = page.events;
                    1
                }
            };
            // Into the history: sequences from `seq_from` up, below the bound `to` sets.
            let seq_to = history_to.map_or(u64::MAX, |t| t.saturating_sub(1));
            (seq_from, _) =
                self.read_history(reader, (seq_from, seq_to), true, limit, &mut events)?;
            let more_here = seq_from <= seq_to
                && !self
                    .store
                    .room_history(room_id.as_str(), seq_from, seq_to, true, 1)?
                    .is_empty();
            let at_start = !more_here && history_to.is_none();
            let end = (more_here || at_start).then_some(TimelinePos::History(seq_from));
            return Ok(Scan {
                page: HistoryPage { events, end },
                at_start,
            });
        }

        let mut events = Vec::new();
        let live_from = match from {
            TimelinePos::Live(pos) => pos,
            TimelinePos::History(seq) => {
                // Towards the present: sequences below `seq`, down to the bound `to` sets.
                let lowest = history_to.unwrap_or(1).max(1);
                let (_, seq_to) = self.read_history(
                    reader,
                    (lowest, seq.saturating_sub(1)),
                    false,
                    limit,
                    &mut events,
                )?;
                if events.len() == limit || history_to.is_some() {
                    // Full: the rest of the history, then the live timeline, come next.
                    let end = (events.len() == limit).then_some(TimelinePos::History(seq_to + 1));
                    return Ok(Scan {
                        page: HistoryPage { events, end },
                        at_start: false,
                    });
                }
                0
            }
        };
        let page = self.page(reader, live_from, live_to, false, limit - events.len())?;
        events.extend(page.events);
        Ok(Scan {
            page: HistoryPage {
                events,
                end: page.end.map(TimelinePos::Live),
            },
            at_start: false,
        })
    }
}

impl Rooms {
    /// Reads the history between two sequences (both inclusive), into the past (ascending) or
    /// towards the present, adding the events the reader may see to `events` until it holds
    /// `limit`. Answers the bounds of what is left unread.
    fn read_history(
        &self,
        reader: Reader<'_>,
        (mut lo, mut hi): (u64, u64),
        into_past: bool,
        limit: usize,
        events: &mut Vec<TimelineEvent>,
    ) -> Result<(u64, u64)> {
        while events.len() < limit && lo <= hi {
            let chunk = (limit - events.len()).clamp(1, 200) * 2;
            let rows =
                self.store
                    .room_history(reader.room_id.as_str(), lo, hi, into_past, chunk)?;
            let exhausted = rows.len() < chunk;
            for (seq, id) in rows {
                if into_past {
                    lo = seq + 1;
                } else {
                    hi = seq - 1;
                }
                if let Some(ev) = self.visible_history_event(reader, &id)? {
                    events.push(ev);
                    if events.len() == limit {
                        break;
                    }
                }
            }
            if exhausted {
                break;
            }
        }
        Ok((lo, hi))
    }

    fn visible_history_event(&self, r: Reader<'_>, id: &str) -> Result<Option<TimelineEvent>> {
        let id = EventId::parse(id).map_err(Error::internal)?;
        let Some(ev) = self.timeline_event(&id)? else {
            return Ok(None);
        };
        if r.filter.matches(&ev.pdu) && self.sees(r.user, &ev, r.access)? {
            Ok(Some(ev))
        } else {
            Ok(None)
        }
    }

    /// Whether an event has its place in its room's timeline or history (rather than being an
    /// outlier, or unknown).
    fn placed(&self, id: &EventId) -> Result<bool> {
        let Some(meta) = self.store.event_meta(id.as_str())? else {
            return Ok(false);
        };
        if meta.history_seq.is_some() {
            return Ok(true);
        }
        Ok(!self
            .store
            .room_events(&meta.room_id, meta.pos, meta.pos, false, 1)?
            .is_empty())
    }

    /// The state group after an event, if this server knows the state there.
    fn state_after_group(&self, id: &EventId) -> Result<Option<u64>> {
        if let Some(g) = self.pending_state_after.lock().get(id) {
            return Ok(Some(*g));
        }
        Ok(self
            .timeline_event(id)?
            .map(|e| e.meta.state_after)
            .filter(|g| *g != 0))
    }

    /// Whether this server knows the room state after an event (events of its timeline and
    /// history, and the edges of gaps).
    pub fn has_state_after(&self, id: &EventId) -> Result<bool> {
        Ok(self.state_after_group(id)?.is_some())
    }

    /// The prev events, missing here, of the oldest events this server holds of a room: where
    /// backfilling goes on from. Empty when the room's history is complete (it reaches the
    /// create event).
    pub fn history_frontier(&self, room_id: &RoomId) -> Result<Vec<OwnedEventId>> {
        let room = room_id.as_str();
        let mut oldest = self
            .store
            .room_history(room, 1, u64::MAX, false, FRONTIER_EVENTS)?;
        if oldest.is_empty() {
            oldest = self
                .store
                .room_events(room, 1, StreamPos::MAX, false, FRONTIER_EVENTS)?;
        }
        let mut out = BTreeSet::new();
        for (_, id) in oldest {
            let id = EventId::parse(&id).map_err(Error::internal)?;
            let Some(pdu) = self.pdu(&id)? else {
                continue;
            };
            for prev in &pdu.prev_events {
                if !self.placed(prev)? {
                    out.insert(prev.clone());
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    /// The servers to ask for a room's history: those with a member joined, the room
    /// creator's first (it was there from the start).
    fn history_servers(&self, room_id: &RoomId) -> Result<Vec<OwnedServerName>> {
        let head = self.head(room_id)?;
        let h = head.lock();
        let creator = h
            .state
            .get(&("m.room.create".to_owned(), String::new()))
            .and_then(|id| self.pdu(id).ok().flatten())
            .map(|p| p.sender.server_name().to_owned());
        let joined = h.joined_servers();
        let mut servers: Vec<OwnedServerName> = creator
            .into_iter()
            .filter(|c| joined.contains(&&**c))
            .collect();
        for s in joined {
            if !servers.iter().any(|x| x == s) {
                servers.push(s.to_owned());
            }
        }
        servers.retain(|s| s != self.server_name());
        Ok(servers)
    }

    fn history_gate(&self, room_id: &RoomId) -> Arc<tokio::sync::Mutex<HistoryGate>> {
        self.history_gates
            .lock()
            .entry(room_id.to_owned())
            .or_default()
            .clone()
    }

    /// Asks the room's other servers for the events before the oldest this server holds, and
    /// takes in those that pass their checks. Answers how many found their place in the
    /// room's history; 0 when there is nothing more, or no server could give it.
    pub async fn fetch_history(&self, room_id: &RoomId) -> Result<usize> {
        let gate = self.history_gate(room_id);
        let mut gate = gate.lock().await;
        if gate.failed_at.is_some_and(|t| t.elapsed() < RETRY_AFTER) {
            return Ok(0);
        }
        let frontier = self.history_frontier(room_id)?;
        if frontier.is_empty() {
            return Ok(0);
        }
        let servers = self.history_servers(room_id)?;
        if servers.is_empty() {
            return Ok(0);
        }
        // Only the requests are bounded in time: once checked events are queued for the
        // writer, taking them in runs to the end.
        let fetch = self
            .remote
            .backfill(room_id, &servers, &frontier, BACKFILL_LIMIT);
        let fetched = match tokio::time::timeout(FETCH_TIMEOUT, fetch).await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                tracing::info!(%room_id, error = %e, "could not backfill the room");
                gate.failed_at = Some(Instant::now());
                return Ok(0);
            }
            Err(_) => {
                tracing::info!(%room_id, "the room's servers took too long to backfill it");
                gate.failed_at = Some(Instant::now());
                return Ok(0);
            }
        };
        let placed = self.ingest_history(room_id, fetched).await?;
        gate.failed_at = (placed == 0).then(Instant::now);
        Ok(placed)
    }

    /// Takes in a backfilled batch, oldest first: the state at its edges, then each event
    /// whose state before is known and which passes the auth rules (against its auth events
    /// and that state), at the next sequences of the room's history. A rejected event does
    /// not change the state after it, as the spec has it. The caller holds the room's history
    /// gate, so that sequences read from the store are the latest.
    async fn ingest_history(&self, room_id: &RoomId, fetched: Backfilled) -> Result<usize> {
        let head = self.head(room_id)?;
        let (queued, count) = {
            let h = head.lock();
            let mut batch = Batch::default();
            let placed = match self.prepare_history(&h, fetched, &mut batch) {
                Ok(p) => p,
                Err(e) => {
                    self.clear_pending(&batch);
                    return Err(e);
                }
            };
            if batch.ops.is_empty() {
                return Ok(0);
            }
            // Events kept as outliers before have a place and a state now.
            batch.rewritten_metas = placed;
            let count = batch.rewritten_metas.len();
            (self.enqueue(&h, batch), count)
        };
        self.finish(queued).await?;
        tracing::info!(%room_id, events = count, "backfilled the room's history");
        Ok(count)
    }

    /// Queues a backfilled batch's writes in `batch`; answers the events that found their
    /// place.
    fn prepare_history(
        &self,
        h: &RoomHead,
        fetched: Backfilled,
        batch: &mut Batch,
    ) -> Result<Vec<OwnedEventId>> {
        let room_id = &h.room_id;
        // The state group after each edge and each event of the batch taken so far.
        let mut after: HashMap<OwnedEventId, u64> = HashMap::new();
        let mut placed: Vec<Placed> = Vec::new();
        // An edge is older than the events of the batch after it; with the state its peer
        // reported before it, it takes its place in the history too (for the create event,
        // which Synapse leaves out of `/backfill`, that is the only way in).
        for edge in fetched.edges {
            let edge_id = edge.event.0.clone();
            let edge = match self.edge_state(h, edge, batch) {
                Ok(e) => e,
                Err(e) => {
                    tracing::info!(%room_id, event_id = %edge_id, error = %e, "no state at a backfill edge");
                    continue;
                }
            };
            let before = match edge.pdu.state_key {
                Some(_) => self.queue_group(room_id, None, &edge.before, &[], batch)?,
                None => edge.after,
            };
            if !self.authorized_history_event(h, &edge.pdu, &edge.before) {
                // Rejected: the state after it is the state before.
                after.insert(edge_id, before);
                continue;
            }
            after.insert(edge_id, edge.after);
            let replaces = replaced_in(&edge.before, &edge.pdu);
            batch.events.push(edge.pdu.clone());
            placed.push(Placed {
                pdu: edge.pdu,
                obj: edge.obj,
                before,
                after: edge.after,
                replaces,
            });
        }
        let mut events: Vec<(PduRef, CanonicalJsonObject)> = Vec::new();
        for (id, obj) in fetched.events {
            // An event kept before (state a join brought) stays as it was kept: a peer sends
            // this server's view of the past, which may be pruned.
            let pdu = match self.pdu(&id)? {
                Some(known) => known,
                None => match Pdu::from_canonical(id.clone(), &obj) {
                    Ok(p) => Arc::new(p),
                    Err(e) => {
                        tracing::info!(%room_id, event_id = %id, error = %e, "a backfilled event is malformed");
                        continue;
                    }
                },
            };
            if pdu.room_id == *room_id {
                events.push((pdu, obj));
            }
        }
        events.sort_by(|a, b| (a.0.depth, &a.0.event_id).cmp(&(b.0.depth, &b.0.event_id)));
        events.dedup_by(|a, b| a.0.event_id == b.0.event_id);

        for (pdu, obj) in events {
            let id = pdu.event_id.clone();
            if after.contains_key(&id) || self.placed(&id)? {
                continue;
            }
            let Some((before, state)) = self.history_state_before(h, &pdu, &after, batch)? else {
                tracing::debug!(%room_id, event_id = %id, "a backfilled event's state is unknown");
                continue;
            };
            if !self.authorized_history_event(h, &pdu, &state) {
                after.insert(id, before);
                continue;
            }
            batch.events.push(pdu.clone());
            let replaces = replaced_in(&state, &pdu);
            let state_after = match &pdu.state_key {
                Some(key) => {
                    let slot = (pdu.kind.to_string(), key.clone());
                    let mut map = state.clone();
                    map.insert(slot.clone(), id.clone());
                    self.queue_group(room_id, Some(before), &map, &[(slot, id.clone())], batch)?
                }
                None => before,
            };
            after.insert(id, state_after);
            placed.push(Placed {
                pdu,
                obj,
                before,
                after: state_after,
                replaces,
            });
        }

        let newest = self
            .store
            .room_history(room_id.as_str(), 1, u64::MAX, false, 1)?
            .first()
            .map_or(0, |(seq, _)| *seq);
        let count = placed.len() as u64;
        let mut ids = Vec::with_capacity(placed.len());
        for (i, p) in placed.into_iter().enumerate() {
            // Oldest first here; sequences count into the past.
            let seq = newest + count - i as u64;
            batch.ops.push(WriteOp::PutHistory {
                seq,
                event_id: p.pdu.event_id.to_string(),
                json: serde_json::to_vec(&p.obj)?,
                meta: EventMeta {
                    room_id: room_id.to_string(),
                    pos: 0,
                    state_before: p.before,
                    state_after: p.after,
                    txn: None,
                    replaces_state: p.replaces,
                    redacted_by: None,
                    history_seq: Some(seq),
                    refused: None,
                },
            });
            ids.push(p.pdu.event_id.clone());
        }
        Ok(ids)
    }

    /// Whether a backfilled event passes the auth rules, against its auth events and the
    /// state before it. If it does, it is visible to the checks of the events after it while
    /// its batch is queued.
    fn authorized_history_event(&self, h: &RoomHead, pdu: &PduRef, state: &StateMap) -> bool {
        self.pending_events
            .lock()
            .insert(pdu.event_id.clone(), pdu.clone());
        let checked = self
            .authorize_by_auth_events(h, pdu)
            .and_then(|()| self.authorize(&h.rules, pdu, state));
        if let Err(e) = checked {
            self.pending_events.lock().remove(&pdu.event_id);
            tracing::info!(room_id = %h.room_id, event_id = %pdu.event_id, error = %e, "a backfilled event was rejected");
            return false;
        }
        true
    }

    /// The state before a backfilled event: the state after its prev event, or the resolution
    /// of the states after each; `None` when one of them is not known.
    fn history_state_before(
        &self,
        h: &RoomHead,
        pdu: &PduRef,
        after: &HashMap<OwnedEventId, u64>,
        batch: &mut Batch,
    ) -> Result<Option<(u64, StateMap)>> {
        let mut groups = Vec::with_capacity(pdu.prev_events.len());
        for prev in &pdu.prev_events {
            let group = match after.get(prev) {
                Some(g) => Some(*g),
                None => self.state_after_group(prev)?,
            };
            match group {
                Some(g) => groups.push(g),
                None => return Ok(None),
            }
        }
        groups.sort_unstable();
        groups.dedup();
        match groups.as_slice() {
            // The create event: nothing before it.
            [] => Ok(Some((0, StateMap::new()))),
            [one] => Ok(Some((*one, (*self.state_at_group(*one)?).clone()))),
            many => {
                let mut states = Vec::with_capacity(many.len());
                for g in many {
                    states.push(self.state_at_group(*g)?);
                }
                let map = self.resolve_states(&h.rules, &states)?;
                let group = self.queue_group(&h.room_id, None, &map, &[], batch)?;
                Ok(Some((group, map)))
            }
        }
    }

    /// A new state group queued in `batch`: a delta over `prev` when there is one, else a
    /// snapshot.
    fn queue_group(
        &self,
        room_id: &RoomId,
        prev: Option<u64>,
        map: &StateMap,
        changes: &[((String, String), OwnedEventId)],
        batch: &mut Batch,
    ) -> Result<u64> {
        let prev_rec = match prev {
            Some(0) | None => None,
            Some(g) => {
                let pending = self.pending_groups.lock().get(&g).cloned();
                match pending {
                    Some(r) => Some((g, r)),
                    None => self.store.state_group(g)?.map(|r| (g, r)),
                }
            }
        };
        let rec = next_group(
            room_id.as_str(),
            prev_rec.as_ref().map(|(g, r)| (*g, r)),
            map,
            changes,
        );
        let group = self.allocate_group();
        self.pending_groups.lock().insert(group, rec.clone());
        batch.ops.push(WriteOp::PutStateGroup(group, rec.clone()));
        batch.groups.push((group, rec));
        Ok(group)
    }
}

/// A backfilled event that passed its checks, with its state groups.
struct Placed {
    pdu: PduRef,
    obj: CanonicalJsonObject,
    before: u64,
    after: u64,
    /// For a state event, the event it replaced in the state.
    replaces: Option<String>,
}

/// For a state event, the event it replaces in `state`.
fn replaced_in(state: &StateMap, pdu: &PduRef) -> Option<String> {
    let key = pdu.state_key.as_ref()?;
    state
        .get(&(pdu.kind.to_string(), key.clone()))
        .map(|id| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::TimelinePos::{self, History, Live};

    #[test]
    fn tokens_read_back_as_written() {
        for pos in [Live(0), Live(42), History(1), History(7)] {
            assert_eq!(pos.to_string().parse::<TimelinePos>(), Ok(pos));
        }
        // A sync token names its position in the live stream.
        assert_eq!("s12_3_4".parse::<TimelinePos>(), Ok(Live(12)));
        assert_eq!("h".parse::<TimelinePos>(), Err(()));
        assert_eq!("x1".parse::<TimelinePos>(), Err(()));
    }

    #[test]
    fn history_comes_before_the_live_timeline_and_counts_into_the_past() {
        let mut points = vec![Live(3), History(1), Live(0), History(9), History(2)];
        points.sort();
        assert_eq!(
            points,
            [History(9), History(2), History(1), Live(0), Live(3)]
        );
    }
}
