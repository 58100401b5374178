//! Server-side search (spec: "Server Side Search"): a tantivy full-text index kept in step with
//! the event stream, and the `room_events` queries run on it.
//!
//! The indexer follows the stream from the position the committed index covers: it adds
//! messages, room names and topics, and takes out what redactions pruned. A search first waits
//! (briefly) for the indexer to reach what was durable when the request came, so a client finds
//! the message it has just sent. Hits are then checked against what the user may see: the rooms
//! they are joined to, and each event's history visibility.

mod index;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hearth_storage::{Store, StreamPos};
use ruma::events::TimelineEventType;
use ruma::{EventId, UserId};
use serde::Deserialize;

pub use index::SearchOrder;
use index::{Doc, IndexQuery, SearchIndex};

use crate::notifier::Notifier;
use crate::rooms::Rooms;
use crate::rooms::timeline::{EventFilter, TimelineEvent};
use crate::{Error, Result};

/// Events read from the stream per indexing round.
const BATCH: usize = 5_000;
/// A round that indexed nothing still commits its position once this far behind, so that a
/// restart does not walk a long stretch of reactions and receipts again.
const IDLE_COMMIT_LAG: u64 = 10_000;
/// How long a search waits for the indexer to reach the request's moment.
const CATCH_UP_WAIT: Duration = Duration::from_secs(2);
/// The content keys searched when a request names none.
pub const ALL_KEYS: [&str; 3] = ["content.body", "content.name", "content.topic"];

#[derive(Clone, Debug, Default)]
pub struct SearchConfig {
    /// Where the index lives; `None` keeps it in memory (tests of the layers above).
    pub dir: Option<PathBuf>,
}

/// A `room_events` search as the core runs it.
#[derive(Clone, Debug)]
pub struct SearchQuery {
    pub term: String,
    pub keys: Vec<String>,
    pub filter: EventFilter,
    /// Rooms to search in (`filter.rooms`); `None` for every room the user is in.
    pub rooms: Option<Vec<String>>,
    pub not_rooms: Vec<String>,
    pub since_ts: Option<u64>,
    pub until_ts: Option<u64>,
    pub order: SearchOrder,
    /// A `next_batch` from an earlier page.
    pub next_batch: Option<String>,
    pub limit: usize,
}

pub struct SearchHit {
    pub rank: f32,
    pub event: TimelineEvent,
}

pub struct SearchResults {
    pub hits: Vec<SearchHit>,
    /// How many events match, before history visibility is applied (as Synapse counts).
    pub count: usize,
    pub next_batch: Option<String>,
    /// The words searched for, for clients to highlight.
    pub highlights: Vec<String>,
}

pub struct Search {
    store: Arc<dyn Store>,
    rooms: Arc<Rooms>,
    notifier: Arc<Notifier>,
    index: Arc<SearchIndex>,
    /// The stream position the searchable index covers.
    indexed: tokio::sync::watch::Sender<StreamPos>,
}

impl Search {
    pub fn new(
        config: &SearchConfig,
        store: Arc<dyn Store>,
        rooms: Arc<Rooms>,
        notifier: Arc<Notifier>,
    ) -> Result<Self> {
        let index = Arc::new(SearchIndex::open(config.dir.as_deref())?);
        let (indexed, _) = tokio::sync::watch::channel(index.cursor()?);
        Ok(Self {
            store,
            rooms,
            notifier,
            index,
            indexed,
        })
    }

    /// Starts the indexer.
    pub fn start(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move { this.run().await });
    }

    async fn run(self: Arc<Self>) {
        let mut events = self.notifier.subscribe_events();
        let mut committed = *self.indexed.borrow();
        let mut cursor = committed;
        loop {
            // Subscribed before reading the position, so a commit cannot slip between.
            events.borrow_and_update();
            let this = self.clone();
            let round = tokio::task::spawn_blocking(move || this.round(cursor, committed)).await;
            match round {
                Ok(Ok((next, committed_now, more))) => {
                    cursor = next;
                    committed = committed_now;
                    if !more && events.changed().await.is_err() {
                        return;
                    }
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "search indexing failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "search indexer panicked; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Indexes the events after `cursor`. Answers the new cursor, the committed position and
    /// whether more may be waiting.
    fn round(
        &self,
        cursor: StreamPos,
        committed: StreamPos,
    ) -> Result<(StreamPos, StreamPos, bool)> {
        let upto = self.store.persisted_pos();
        if upto <= cursor {
            return Ok((cursor, committed, false));
        }
        let events = self.store.timeline_events(cursor, upto, BATCH)?;
        let full = events.len() == BATCH;
        let next = match events.last() {
            Some(e) if full => e.pos,
            _ => upto,
        };
        let mut changed = false;
        for e in &events {
            let Ok(id) = EventId::parse(&e.event_id) else {
                continue;
            };
            let Some(ev) = self.rooms.timeline_event(&id)? else {
                continue;
            };
            changed |= self.index_event(&ev)?;
        }
        let mut committed = committed;
        if changed || next - committed >= IDLE_COMMIT_LAG {
            self.index.commit(next)?;
            committed = next;
        }
        // Searches wait on this: everything up to `next` is in the reader now (or had nothing
        // to index).
        self.indexed.send_replace(next);
        Ok((next, committed, full))
    }

    /// Adds or removes what one event changes; answers whether it changed the index.
    fn index_event(&self, ev: &TimelineEvent) -> Result<bool> {
        use ruma::state_res::Event as _;
        let pdu = &ev.pdu;
        if pdu.kind == TimelineEventType::RoomRedaction {
            if let Some(target) = pdu.redacts() {
                // Only a redaction that took effect pruned its target.
                let pruned = self
                    .rooms
                    .timeline_event(target)?
                    .is_some_and(|t| t.meta.redacted_by.is_some());
                if pruned {
                    self.index.delete(target.as_str());
                    return Ok(true);
                }
            }
            return Ok(false);
        }
        if ev.meta.redacted_by.is_some() {
            return Ok(false);
        }
        let (key, field) = match pdu.kind {
            TimelineEventType::RoomMessage => ("content.body", "body"),
            TimelineEventType::RoomName if pdu.state_key.as_deref() == Some("") => {
                ("content.name", "name")
            }
            TimelineEventType::RoomTopic if pdu.state_key.as_deref() == Some("") => {
                ("content.topic", "topic")
            }
            _ => return Ok(false),
        };
        #[derive(Deserialize)]
        struct Content {
            body: Option<String>,
            name: Option<String>,
            topic: Option<String>,
        }
        let Ok(c) = serde_json::from_str::<Content>(pdu.content.get()) else {
            return Ok(false);
        };
        let text = match field {
            "body" => c.body,
            "name" => c.name,
            _ => c.topic,
        };
        let Some(text) = text.filter(|t| !t.is_empty()) else {
            return Ok(false);
        };
        self.index.add(&Doc {
            event_id: pdu.event_id.as_str(),
            room_id: pdu.room_id.as_str(),
            sender: pdu.sender.as_str(),
            key,
            text: &text,
            ts: u64::from(pdu.origin_server_ts.0),
            pos: ev.meta.pos,
        })?;
        Ok(true)
    }

    /// Waits until the index covers `pos`, or gives up after a while (a search then sees the
    /// index as it is).
    async fn caught_up(&self, pos: StreamPos) {
        let mut rx = self.indexed.subscribe();
        let _ = tokio::time::timeout(CATCH_UP_WAIT, rx.wait_for(|i| *i >= pos)).await;
    }

    /// A `room_events` search for `user`.
    pub async fn search(&self, user: &UserId, q: SearchQuery) -> Result<SearchResults> {
        self.caught_up(self.store.persisted_pos()).await;
        let mut rooms: Vec<String> = self
            .rooms
            .memberships_of(user)?
            .iter()
            .filter(|(_, m)| m.membership == "join")
            .map(|(r, _)| r.clone())
            .collect();
        if let Some(only) = &q.rooms {
            rooms.retain(|r| only.contains(r));
        }
        rooms.retain(|r| !q.not_rooms.contains(r));
        let keys: Vec<String> = if q.keys.is_empty() {
            ALL_KEYS.iter().map(|k| k.to_string()).collect()
        } else {
            q.keys.clone()
        };
        // Pages: `r<offset>` for rank order, `p<position>` (exclusive) for recent.
        let (mut offset, mut before_pos) = (0, None);
        match q.next_batch.as_deref() {
            None => {}
            Some(t) => match (t.split_at_checked(1), q.order) {
                (Some(("r", n)), SearchOrder::Rank) => {
                    offset = n.parse().map_err(|_| bad_token(t))?;
                }
                (Some(("p", n)), SearchOrder::Recent) => {
                    before_pos = Some(n.parse().map_err(|_| bad_token(t))?);
                }
                _ => return Err(bad_token(t)),
            },
        }
        let limit = q.limit.clamp(1, 100);
        let mut hits = Vec::new();
        let mut count = 0;
        let mut next_batch = None;
        let mut query = IndexQuery {
            term: q.term.clone(),
            rooms,
            keys,
            senders: q.filter.senders.clone(),
            not_senders: q.filter.not_senders.clone(),
            since_ts: q.since_ts,
            until_ts: q.until_ts,
            before_pos,
            order: q.order,
            offset,
            limit: limit * 2,
        };
        // Hits the user may not see are dropped; ask again until the page is full.
        for _ in 0..10 {
            query.before_pos = before_pos;
            query.offset = offset;
            let index = self.index.clone();
            let run = query.clone();
            // Counting the matches of a common word reads long posting lists: off the runtime.
            let (found, total) = tokio::task::spawn_blocking(move || index.search(&run))
                .await
                .map_err(Error::internal)??;
            count = count.max(total);
            let exhausted = found.len() < limit * 2;
            let found_len = found.len();
            let mut taken = 0;
            for hit in found {
                taken += 1;
                // Rank order pages by offset, recency by position: never both.
                match q.order {
                    SearchOrder::Rank => offset += 1,
                    SearchOrder::Recent => before_pos = Some(hit.pos),
                }
                if let Some(ev) = self.visible(user, &hit.event_id, &q.filter)? {
                    hits.push(SearchHit {
                        rank: hit.score,
                        event: ev,
                    });
                    if hits.len() == limit {
                        break;
                    }
                }
            }
            if hits.len() == limit {
                // More remain if the index had more, or this batch was not used up.
                if !exhausted || taken < found_len {
                    next_batch = Some(match q.order {
                        SearchOrder::Rank => format!("r{offset}"),
                        SearchOrder::Recent => format!("p{}", before_pos.unwrap_or(0)),
                    });
                }
                break;
            }
            if exhausted {
                break;
            }
        }
        Ok(SearchResults {
            hits,
            count,
            next_batch,
            highlights: highlights(&q.term),
        })
    }

    /// The event of a hit, if the user may see it and the filter lets it through.
    fn visible(
        &self,
        user: &UserId,
        event_id: &str,
        filter: &EventFilter,
    ) -> Result<Option<TimelineEvent>> {
        let Ok(id) = EventId::parse(event_id) else {
            return Ok(None);
        };
        let Some(ev) = self.rooms.timeline_event(&id)? else {
            return Ok(None);
        };
        if ev.meta.redacted_by.is_some() || !filter.matches(&ev.pdu) {
            return Ok(None);
        }
        let Ok(access) = self.rooms.access(&ev.pdu.room_id, user) else {
            return Ok(None);
        };
        if ev.meta.pos > access.max_pos {
            return Ok(None);
        }
        let seen = self.rooms.sees(user, &ev, &access)?;
        Ok(seen.then_some(ev))
    }
}

fn bad_token(t: &str) -> Error {
    Error::InvalidParam(format!("Invalid next_batch: {t}"))
}

/// The words of a search term, lowercased: what clients highlight in the results.
fn highlights(term: &str) -> Vec<String> {
    let mut words: Vec<String> = term
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty() && !matches!(*w, "AND" | "OR" | "NOT"))
        .map(str::to_lowercase)
        .collect();
    words.sort();
    words.dedup();
    words
}
