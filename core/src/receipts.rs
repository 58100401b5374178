//! Read receipts (`m.read`, `m.read.private`, threaded) and delivery receipts.
//!
//! A receipt is stored per (room, user, type, thread) at a position of the global stream, so
//! `/sync` hands out exactly the receipts that changed since a token. Receipts only move forward:
//! one pointing at an older event than the current one is accepted and ignored, as Synapse does.
//!
//! Delivery receipts (`io.hearth.delivered`, see docs/realtime.md) are set by the server when a
//! device acknowledges a sync position that covers a room's newest events, and may also be sent
//! by clients. They are shown to the other members only: the owner knows what it received.

use std::collections::HashMap;
use std::sync::Arc;

use hearth_storage::{ChangeKey, ReceiptRecord, Store, StreamPos, WriteOp};
use parking_lot::Mutex;
use ruma::{EventId, OwnedUserId, RoomId, UserId};
use serde_json::value::RawValue as RawJsonValue;
use serde_json::{Map, Value, json};

use crate::notifier::Notifier;
use crate::rooms::Rooms;
use crate::util::now_ms;
use crate::{Error, Result};

pub const READ: &str = "m.read";
pub const READ_PRIVATE: &str = "m.read.private";
pub const DELIVERED: &str = "io.hearth.delivered";

/// Receipt types a client may send to `/receipt`.
pub const CLIENT_TYPES: [&str; 3] = [READ, READ_PRIVATE, DELIVERED];

pub struct Receipts {
    store: Arc<dyn Store>,
    rooms: Arc<Rooms>,
    notifier: Arc<Notifier>,
    /// Per user, the highest sync position a device of theirs acknowledged: where the next
    /// acknowledgement's search for newly delivered events starts.
    acked: Mutex<HashMap<OwnedUserId, StreamPos>>,
    /// Rooms with more members than this get no delivery receipts: in a big room they would
    /// multiply every message's traffic by the member count.
    delivery_max_members: usize,
}

impl Receipts {
    pub fn new(
        store: Arc<dyn Store>,
        rooms: Arc<Rooms>,
        notifier: Arc<Notifier>,
        delivery_max_members: usize,
    ) -> Self {
        Self {
            store,
            rooms,
            notifier,
            acked: Mutex::new(HashMap::new()),
            delivery_max_members,
        }
    }

    /// Sets a user's receipt. `thread` is `None` (unthreaded), `"main"` or a thread root's id.
    pub async fn set(
        &self,
        user: &UserId,
        room_id: &RoomId,
        receipt_type: &str,
        event_id: &EventId,
        thread: Option<&str>,
    ) -> Result<()> {
        if !CLIENT_TYPES.contains(&receipt_type) {
            return Err(Error::InvalidParam(format!(
                "Unknown receipt type {receipt_type}"
            )));
        }
        if let Some(t) = thread
            && t != "main"
            && EventId::parse(t).is_err()
        {
            return Err(Error::InvalidParam(format!("Invalid thread_id {t}")));
        }
        if self.rooms.membership(room_id, user)?.as_deref() != Some("join") {
            return Err(Error::forbidden(format!(
                "User {user} is not in room {room_id}"
            )));
        }
        let event = self
            .rooms
            .timeline_event(event_id)?
            .filter(|e| e.meta.room_id == room_id.as_str())
            .ok_or_else(|| Error::not_found("Event not found"))?;
        self.put(
            user,
            room_id,
            receipt_type,
            event_id,
            thread,
            event.live_pos(),
        )
        .await
    }

    async fn put(
        &self,
        user: &UserId,
        room_id: &RoomId,
        receipt_type: &str,
        event_id: &EventId,
        thread: Option<&str>,
        event_pos: StreamPos,
    ) -> Result<()> {
        let thread = thread.unwrap_or_default();
        if let Some(cur) =
            self.store
                .receipt(room_id.as_str(), user.as_str(), receipt_type, thread)?
            && self.event_pos(&cur.event_id)? >= event_pos
        {
            return Ok(());
        }
        let ts = now_ms();
        let rec = ReceiptRecord {
            room_id: room_id.to_string(),
            user_id: user.to_string(),
            receipt_type: receipt_type.to_owned(),
            thread_id: thread.to_owned(),
            event_id: event_id.to_string(),
            ts,
            pos: 0,
        };
        self.store.submit(vec![WriteOp::PutReceipt(rec)]).await?;
        // Only public read receipts of our own users travel (spec: private ones never leave).
        if receipt_type == READ && user.server_name() == self.rooms.server_name() {
            let servers = self.rooms.other_servers(room_id)?;
            if !servers.is_empty() {
                let mut data = json!({ "ts": ts });
                if !thread.is_empty() {
                    data["thread_id"] = json!(thread);
                }
                self.rooms.remote.send_edu(
                    &servers,
                    json!({
                        "edu_type": "m.receipt",
                        "content": { room_id.as_str(): { READ: { user.as_str(): {
                            "event_ids": [event_id],
                            "data": data,
                        } } } },
                    }),
                );
            }
        }
        match receipt_type {
            READ_PRIVATE => self.notifier.notify([user]),
            DELIVERED => {
                if let Some(sender) = self.sender_of(event_id.as_str())? {
                    self.notifier.notify([&*sender]);
                }
            }
            _ => {
                let head = self.rooms.head(room_id)?;
                let users: Vec<OwnedUserId> = head.lock().interested_users().cloned().collect();
                self.notifier.notify(users.iter().map(|u| &**u));
            }
        }
        Ok(())
    }

    fn sender_of(&self, event_id: &str) -> Result<Option<OwnedUserId>> {
        let Ok(id) = EventId::parse(event_id) else {
            return Ok(None);
        };
        Ok(self.rooms.pdu(&id)?.map(|p| p.sender.clone()))
    }

    fn event_pos(&self, event_id: &str) -> Result<StreamPos> {
        let Ok(id) = EventId::parse(event_id) else {
            return Ok(0);
        };
        Ok(self.rooms.timeline_event(&id)?.map_or(0, |e| e.live_pos()))
    }

    /// The `m.receipt` event of a room for a sync: the receipts changed in `(since, upto]` (all
    /// of them on a first sync) that `viewer` may see.
    pub fn for_sync(
        &self,
        room_id: &RoomId,
        viewer: &UserId,
        since: Option<StreamPos>,
        upto: StreamPos,
        ignored: &[String],
    ) -> Result<Option<Box<RawJsonValue>>> {
        let mut content: Map<String, Value> = Map::new();
        for r in self.store.receipts(room_id.as_str(), since, upto)? {
            let own = r.user_id == viewer.as_str();
            if (r.receipt_type == READ_PRIVATE && !own) || ignored.contains(&r.user_id) {
                continue;
            }
            // A delivery is news to the event's sender only: shown to the whole room it made
            // every member's sync busy with everyone else's deliveries.
            if r.receipt_type == DELIVERED
                && self.sender_of(&r.event_id)?.as_deref() != Some(viewer)
            {
                continue;
            }
            let mut info = json!({ "ts": r.ts });
            if !r.thread_id.is_empty() {
                info["thread_id"] = json!(r.thread_id);
            }
            let by_type = content
                .entry(r.event_id)
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("inserted as an object");
            by_type.entry(r.receipt_type).or_insert_with(|| json!({}))[&r.user_id] = info;
        }
        if content.is_empty() {
            return Ok(None);
        }
        Ok(Some(serde_json::value::to_raw_value(
            &json!({ "type": "m.receipt", "content": content }),
        )?))
    }

    /// Whether `user` sent a read receipt (public or private) in the room in `(since, upto]`.
    pub fn read_between(
        &self,
        room_id: &RoomId,
        user: &UserId,
        since: StreamPos,
        upto: StreamPos,
    ) -> Result<bool> {
        Ok(self
            .store
            .receipts(room_id.as_str(), Some(since), upto)?
            .iter()
            .any(|r| {
                r.user_id == user.as_str()
                    && (r.receipt_type == READ || r.receipt_type == READ_PRIVATE)
            }))
    }

    /// Positions up to which the user has read the room: `(unthreaded, per thread)`, where the
    /// thread key is `"main"` or a thread root's id. Public and private receipts count alike.
    pub fn read_positions(
        &self,
        room_id: &RoomId,
        user: &UserId,
    ) -> Result<(StreamPos, HashMap<String, StreamPos>)> {
        let mut unthreaded = 0;
        let mut threads: HashMap<String, StreamPos> = HashMap::new();
        for r in self.store.user_receipts(room_id.as_str(), user.as_str())? {
            if r.receipt_type != READ && r.receipt_type != READ_PRIVATE {
                continue;
            }
            let pos = self.event_pos(&r.event_id)?;
            let e = if r.thread_id.is_empty() {
                &mut unthreaded
            } else {
                threads.entry(r.thread_id).or_default()
            };
            *e = (*e).max(pos);
        }
        Ok((unthreaded, threads))
    }

    /// A device of `user` acknowledged everything up to `pos` (its sync token, or a WebSocket
    /// ack): mark the newest events of others it received as delivered. Runs off the request
    /// path; a failure only loses a delivery mark.
    pub async fn acknowledge(&self, user: &UserId, pos: StreamPos) -> Result<()> {
        let prev = {
            let mut acked = self.acked.lock();
            // Unknown (first acknowledgement since boot): look at every room once; `put` ignores
            // what is already marked.
            let e = acked.entry(user.to_owned()).or_insert(0);
            let prev = *e;
            if pos <= prev {
                return Ok(());
            }
            *e = pos;
            prev
        };
        for (room, m) in self.rooms.memberships_of(user)?.iter() {
            if m.membership != "join"
                || !self
                    .store
                    .changed_after(&ChangeKey::Room(room.clone()), prev)
            {
                continue;
            }
            let room_id = RoomId::parse(room).map_err(Error::internal)?;
            let joined = self.rooms.head(&room_id)?.lock().joined_count();
            if joined > self.delivery_max_members {
                continue;
            }
            // The newest event of someone else in (prev, pos].
            let newest = self
                .store
                .room_events(room, prev + 1, pos, true, 20)?
                .into_iter()
                .find_map(|(p, id)| {
                    let eid = EventId::parse(&id).ok()?;
                    let pdu = self.rooms.pdu(&eid).ok()??;
                    (pdu.sender != user).then_some((p, eid))
                });
            if let Some((p, eid)) = newest {
                self.put(user, &room_id, DELIVERED, &eid, None, p).await?;
            }
        }
        Ok(())
    }
}
