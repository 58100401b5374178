//! What push notifications need stored: pushers, the notifications push rules produced for each
//! user, and how far the push evaluator has read the event stream.
//!
//! A user's notifications are both what `GET /notifications` lists and the delivery queue of
//! their pushers: each pusher remembers the position up to which it delivered (`sent_upto`), so
//! a restart resumes where delivery stopped and nothing acknowledged is lost.

use redb::{ReadableDatabase, ReadableTable, Table, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::tables::*;
use crate::{RedbStore, StorageResult, StreamPos};

/// The counter holding the last stream position the push evaluator has processed.
pub const PUSH_CURSOR: &str = "push_cursor";

/// A pusher (spec: `POST /pushers/set`), keyed by `(user, app id, pushkey)`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PusherRecord {
    pub kind: String,
    pub app_display_name: String,
    pub device_display_name: String,
    #[serde(default)]
    pub profile_tag: Option<String>,
    pub lang: String,
    /// The pusher's `data` object as JSON (`url`, `format` and whatever the client added).
    pub data: String,
    /// The device whose access token created the pusher: logging it out removes the pusher.
    #[serde(default)]
    pub device_id: Option<String>,
    /// When the pushkey was last set, in milliseconds.
    pub pushkey_ts: u64,
    /// Notifications up to this position are delivered (or given up on).
    #[serde(default)]
    pub sent_upto: StreamPos,
}

/// An event that the user's push rules say notifies them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationRecord {
    pub room_id: String,
    pub event_id: String,
    /// The push rule's actions, as JSON.
    pub actions: String,
    pub highlight: bool,
    /// When the evaluator saw the event, in milliseconds.
    pub ts: u64,
}

#[derive(Clone, Debug)]
pub enum PushOp {
    /// Adds or replaces a pusher; a replaced pusher's delivery position never moves back.
    PutPusher {
        user_id: String,
        app_id: String,
        pushkey: String,
        record: PusherRecord,
    },
    DeletePusher {
        user_id: String,
        app_id: String,
        pushkey: String,
    },
    /// A pusher delivered everything up to a position. Does nothing if it was deleted meanwhile.
    PusherSent {
        user_id: String,
        app_id: String,
        pushkey: String,
        upto: StreamPos,
    },
    /// Notifications `(user, event position, record)`. The evaluator writes its cursor
    /// ([`PUSH_CURSOR`]) in the same batch.
    PutNotifications(Vec<(String, StreamPos, NotificationRecord)>),
}

/// An event of the global stream, as the push evaluator reads it.
#[derive(Clone, Debug)]
pub struct StreamEvent {
    pub pos: StreamPos,
    pub room_id: String,
    pub event_id: String,
}

/// Reads of push data; part of [`crate::Store`].
pub trait PushStore {
    /// A user's pushers: `(app id, pushkey, record)`.
    fn pushers(&self, user_id: &str) -> StorageResult<Vec<(String, String, PusherRecord)>>;
    fn pusher(
        &self,
        user_id: &str,
        app_id: &str,
        pushkey: &str,
    ) -> StorageResult<Option<PusherRecord>>;
    /// Users with a pusher of this app id and pushkey.
    fn pusher_users(&self, app_id: &str, pushkey: &str) -> StorageResult<Vec<String>>;
    /// Every pusher of the server: `(user, app id, pushkey)`.
    fn all_pushers(&self) -> StorageResult<Vec<(String, String, String)>>;
    /// A user's notifications at positions in `(after, before)`, newest first when `newest_first`,
    /// at most `limit`.
    fn notifications(
        &self,
        user_id: &str,
        after: StreamPos,
        before: StreamPos,
        newest_first: bool,
        limit: usize,
    ) -> StorageResult<Vec<(StreamPos, NotificationRecord)>>;
    /// Timeline events (not outliers) at positions in `(after, upto]`, at most `limit`.
    fn timeline_events(
        &self,
        after: StreamPos,
        upto: StreamPos,
        limit: usize,
    ) -> StorageResult<Vec<StreamEvent>>;
}

fn successor(s: &str) -> String {
    format!("{s}\0")
}

impl PushStore for RedbStore {
    fn pushers(&self, user_id: &str) -> StorageResult<Vec<(String, String, PusherRecord)>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(PUSHERS)?;
        let end = successor(user_id);
        t.range((user_id, "", "")..(end.as_str(), "", ""))?
            .map(|row| {
                let (k, v) = row?;
                let (_, app, key) = k.value();
                Ok((
                    app.to_owned(),
                    key.to_owned(),
                    serde_json::from_slice(v.value())?,
                ))
            })
            .collect()
    }

    fn pusher(
        &self,
        user_id: &str,
        app_id: &str,
        pushkey: &str,
    ) -> StorageResult<Option<PusherRecord>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(PUSHERS)?;
        match t.get((user_id, app_id, pushkey))? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
            None => Ok(None),
        }
    }

    fn pusher_users(&self, app_id: &str, pushkey: &str) -> StorageResult<Vec<String>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(PUSHERS_BY_KEY)?;
        let end = successor(pushkey);
        t.range((app_id, pushkey, "")..(app_id, end.as_str(), ""))?
            .map(|row| Ok(row?.0.value().2.to_owned()))
            .collect()
    }

    fn all_pushers(&self) -> StorageResult<Vec<(String, String, String)>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(PUSHERS)?;
        t.iter()?
            .map(|row| {
                let (k, _) = row?;
                let (u, a, p) = k.value();
                Ok((u.to_owned(), a.to_owned(), p.to_owned()))
            })
            .collect()
    }

    fn notifications(
        &self,
        user_id: &str,
        after: StreamPos,
        before: StreamPos,
        newest_first: bool,
        limit: usize,
    ) -> StorageResult<Vec<(StreamPos, NotificationRecord)>> {
        if after.saturating_add(1) >= before {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read()?;
        let t = txn.open_table(NOTIFICATIONS)?;
        let range = t.range((user_id, after + 1)..(user_id, before))?;
        let rows: Box<dyn Iterator<Item = _>> = if newest_first {
            Box::new(range.rev())
        } else {
            Box::new(range)
        };
        rows.take(limit)
            .map(|row| {
                let (k, v) = row?;
                Ok((k.value().1, serde_json::from_slice(v.value())?))
            })
            .collect()
    }

    fn timeline_events(
        &self,
        after: StreamPos,
        upto: StreamPos,
        limit: usize,
    ) -> StorageResult<Vec<StreamEvent>> {
        if after >= upto {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(EVENT_META)?;
        let timeline = txn.open_table(ROOM_TIMELINE)?;
        let mut out = Vec::new();
        for row in meta.range(after + 1..=upto)? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = row?;
            let pos = k.value();
            let m: crate::EventMeta = serde_json::from_slice(v.value())?;
            // Outliers (state a join brought along) are stored but not in any timeline.
            let event_id = match timeline.get((m.room_id.as_str(), pos))? {
                Some(id) => id.value().to_owned(),
                None => continue,
            };
            out.push(StreamEvent {
                pos,
                room_id: m.room_id,
                event_id,
            });
        }
        Ok(out)
    }
}

/// The push tables of one write transaction.
pub(crate) struct PushTables<'t> {
    pushers: Table<'t, (&'static str, &'static str, &'static str), &'static [u8]>,
    by_key: Table<'t, (&'static str, &'static str, &'static str), ()>,
    notifications: Table<'t, (&'static str, u64), &'static [u8]>,
}

impl<'t> PushTables<'t> {
    pub(crate) fn open(txn: &'t WriteTransaction) -> StorageResult<Self> {
        Ok(Self {
            pushers: txn.open_table(PUSHERS)?,
            by_key: txn.open_table(PUSHERS_BY_KEY)?,
            notifications: txn.open_table(NOTIFICATIONS)?,
        })
    }

    /// A deleted device takes the pushers its access token created with it.
    pub(crate) fn delete_device(&mut self, user: &str, device: &str) -> StorageResult<()> {
        let end = successor(user);
        let mut doomed = Vec::new();
        for row in self.pushers.range((user, "", "")..(end.as_str(), "", ""))? {
            let (k, v) = row?;
            let rec: PusherRecord = serde_json::from_slice(v.value())?;
            if rec.device_id.as_deref() == Some(device) {
                let (_, app, key) = k.value();
                doomed.push((app.to_owned(), key.to_owned()));
            }
        }
        for (app, key) in doomed {
            self.delete_pusher(user, &app, &key)?;
        }
        Ok(())
    }

    fn delete_pusher(&mut self, user: &str, app: &str, key: &str) -> StorageResult<()> {
        self.pushers.remove((user, app, key))?;
        self.by_key.remove((app, key, user))?;
        Ok(())
    }

    pub(crate) fn apply(&mut self, op: PushOp) -> StorageResult<()> {
        match op {
            PushOp::PutPusher {
                user_id,
                app_id,
                pushkey,
                record,
            } => {
                let (u, a, k) = (user_id.as_str(), app_id.as_str(), pushkey.as_str());
                let mut record = record;
                // Delivery may have moved on since the caller read the pusher: an update never
                // moves it back, or what was sent would be sent again.
                let current = self.pushers.get((u, a, k))?.map(|v| v.value().to_vec());
                if let Some(bytes) = current {
                    let old: PusherRecord = serde_json::from_slice(&bytes)?;
                    record.sent_upto = record.sent_upto.max(old.sent_upto);
                }
                self.pushers
                    .insert((u, a, k), serde_json::to_vec(&record)?.as_slice())?;
                self.by_key.insert((a, k, u), ())?;
            }
            PushOp::DeletePusher {
                user_id,
                app_id,
                pushkey,
            } => self.delete_pusher(&user_id, &app_id, &pushkey)?,
            PushOp::PusherSent {
                user_id,
                app_id,
                pushkey,
                upto,
            } => {
                let key = (user_id.as_str(), app_id.as_str(), pushkey.as_str());
                let current = self.pushers.get(key)?.map(|v| v.value().to_vec());
                if let Some(bytes) = current {
                    let mut rec: PusherRecord = serde_json::from_slice(&bytes)?;
                    rec.sent_upto = rec.sent_upto.max(upto);
                    self.pushers
                        .insert(key, serde_json::to_vec(&rec)?.as_slice())?;
                }
            }
            PushOp::PutNotifications(rows) => {
                for (user, pos, rec) in rows {
                    self.notifications
                        .insert((user.as_str(), pos), serde_json::to_vec(&rec)?.as_slice())?;
                }
            }
        }
        Ok(())
    }
}
