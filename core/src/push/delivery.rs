//! Delivery of notifications to push gateways: one task per pusher.
//!
//! A pusher's queue is its user's notifications after its `sent_upto` position (storage
//! `push.rs`), so delivery survives restarts: what was not confirmed is sent again. A task
//! takes every notification that waits, sends the newest one of each room (its counts cover the
//! older ones: a burst or a backlog after an outage becomes one push per room, not a flood; a
//! highlight wins over newer plain messages),
//! then records the position. When the user reads (a read receipt) and their badge changes, a
//! pusher gets a push with the new count only, so that a phone's badge clears once the messages
//! were read elsewhere (as Synapse's `_update_badge`). A gateway that cannot be reached is retried with exponential
//! backoff, and given up on after a day, as Synapse does. Pushkeys the gateway rejects lose
//! their pusher.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hearth_storage::push::{NotificationRecord, PushOp, PusherRecord};
use hearth_storage::{Store, StreamPos, WriteOp};
use parking_lot::Mutex;
use ruma::{EventId, OwnedUserId, RoomId, UserId};
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::PushConfig;
use super::gateway::{GatewayError, PushGateway};
use super::rules::thread_of;
use crate::Result;
use crate::presence::Presence;
use crate::receipts::Receipts;
use crate::rooms::Rooms;
use crate::unread::Unread;
use crate::util::now_ms;

const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60 * 60);
const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 60 * 60);
/// Notifications one round of a task reads.
const BATCH: usize = 100;

type PusherKey = (String, String);

pub(crate) struct Delivery {
    store: Arc<dyn Store>,
    rooms: Arc<Rooms>,
    receipts: Arc<Receipts>,
    presence: Arc<Presence>,
    unread: Arc<Unread>,
    gateway: Arc<dyn PushGateway>,
    config: PushConfig,
    /// Running tasks, per user and (app id, pushkey).
    tasks: Mutex<HashMap<OwnedUserId, HashMap<PusherKey, Arc<Wake>>>>,
}

/// How a pusher's task is woken: for new notifications, or (with `badge`) because its user
/// read something and the badge may have changed.
#[derive(Default)]
struct Wake {
    notify: Notify,
    badge: AtomicBool,
}

enum Outcome {
    Delivered,
    /// The gateway rejected the pushkey: the pusher is gone.
    Rejected,
}

impl Delivery {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        store: Arc<dyn Store>,
        rooms: Arc<Rooms>,
        receipts: Arc<Receipts>,
        presence: Arc<Presence>,
        unread: Arc<Unread>,
        gateway: Arc<dyn PushGateway>,
        config: PushConfig,
    ) -> Self {
        Self {
            store,
            rooms,
            receipts,
            presence,
            unread,
            gateway,
            config,
            tasks: Mutex::new(HashMap::new()),
        }
    }

    /// Makes sure a task delivers for this pusher, and wakes it.
    pub(crate) fn ensure(self: &Arc<Self>, user: &UserId, app_id: &str, pushkey: &str) {
        let key = (app_id.to_owned(), pushkey.to_owned());
        let mut tasks = self.tasks.lock();
        let of_user = tasks.entry(user.to_owned()).or_default();
        if let Some(wake) = of_user.get(&key) {
            wake.notify.notify_one();
            return;
        }
        let wake = Arc::new(Wake::default());
        of_user.insert(key.clone(), wake.clone());
        let this = self.clone();
        let user = user.to_owned();
        tokio::spawn(async move { this.run(user, key, wake).await });
    }

    pub(crate) fn wake(&self, users: &[OwnedUserId]) {
        let tasks = self.tasks.lock();
        for user in users {
            for wake in tasks.get(user).into_iter().flat_map(HashMap::values) {
                wake.notify.notify_one();
            }
        }
    }

    /// The user read something: their pushers check whether the badge changed.
    pub(crate) fn read(&self, user: &UserId) {
        let tasks = self.tasks.lock();
        for wake in tasks.get(user).into_iter().flat_map(HashMap::values) {
            wake.badge.store(true, Ordering::Release);
            wake.notify.notify_one();
        }
    }

    /// Ends a task whose pusher is gone, unless it was set again meanwhile.
    fn retire(&self, user: &UserId, key: &PusherKey) -> bool {
        let mut tasks = self.tasks.lock();
        if matches!(
            self.store.pusher(user.as_str(), &key.0, &key.1),
            Ok(Some(_))
        ) {
            return false;
        }
        if let Some(of_user) = tasks.get_mut(user) {
            of_user.remove(key);
            if of_user.is_empty() {
                tasks.remove(user);
            }
        }
        true
    }

    async fn run(self: Arc<Self>, user: OwnedUserId, key: PusherKey, wake: Arc<Wake>) {
        let mut backoff = INITIAL_BACKOFF;
        // The badge the gateway has, so that a read sends a count only when it changed (as
        // the task starts, taken to be the current one).
        let mut last_badge = self.badge(&user).await.ok();
        let mut failing_since: Option<Instant> = None;
        // Rooms whose newest notification went out in a round that then failed elsewhere: not
        // sent twice when the round is retried.
        let mut pushed: HashMap<String, StreamPos> = HashMap::new();
        loop {
            let pusher = match self.store.pusher(user.as_str(), &key.0, &key.1) {
                Ok(Some(p)) => p,
                Ok(None) => {
                    if self.retire(&user, &key) {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading a pusher failed");
                    tokio::time::sleep(INITIAL_BACKOFF).await;
                    continue;
                }
            };
            let rows = match self.store.notifications(
                user.as_str(),
                pusher.sent_upto,
                u64::MAX,
                false,
                BATCH,
            ) {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, "reading notifications failed");
                    tokio::time::sleep(INITIAL_BACKOFF).await;
                    continue;
                }
            };
            let Some(&(upto, ref newest)) = rows.last() else {
                if wake.badge.swap(false, Ordering::AcqRel) {
                    match self
                        .update_badge(&user, &key, &pusher, &mut last_badge)
                        .await
                    {
                        Ok(Outcome::Rejected) if self.retire(&user, &key) => return,
                        Ok(_) => {}
                        // A badge is not worth a retry: the next push carries the count.
                        Err(e) => tracing::info!(error = %e, app_id = %key.0, "badge push failed"),
                    }
                    continue;
                }
                wake.notify.notified().await;
                continue;
            };
            // A user whose client is connected may be reading the room right now: give the
            // client a moment to mark the message read before their phone buzzes.
            if self.presence.connected(&user) {
                let due = newest.ts + self.config.online_grace.as_millis() as u64;
                let wait = due.saturating_sub(now_ms());
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            match self
                .round(&user, &key, &pusher, &rows, &mut pushed, &mut last_badge)
                .await
            {
                Ok(Outcome::Rejected) => {
                    if self.retire(&user, &key) {
                        return;
                    }
                }
                Ok(Outcome::Delivered) => {
                    backoff = INITIAL_BACKOFF;
                    failing_since = None;
                    pushed.clear();
                    self.advance(&user, &key, upto).await;
                }
                Err(e) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > GIVE_UP_AFTER {
                        // So that a gateway fixed after a day does not get a day of pushes.
                        tracing::warn!(app_id = %key.0, "giving up on notifications for a pusher");
                        pushed.clear();
                        failing_since = None;
                        self.advance(&user, &key, upto).await;
                        continue;
                    }
                    tracing::info!(error = %e, app_id = %key.0, delay = ?backoff, "push failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn advance(&self, user: &UserId, key: &PusherKey, upto: StreamPos) {
        let op = WriteOp::Push(PushOp::PusherSent {
            user_id: user.to_string(),
            app_id: key.0.clone(),
            pushkey: key.1.clone(),
            upto,
        });
        if let Err(e) = self.store.submit(vec![op]).await {
            tracing::warn!(error = %e, "recording push progress failed");
        }
    }

    async fn remove(&self, user: &UserId, key: &PusherKey) {
        let op = WriteOp::Push(PushOp::DeletePusher {
            user_id: user.to_string(),
            app_id: key.0.clone(),
            pushkey: key.1.clone(),
        });
        if let Err(e) = self.store.submit(vec![op]).await {
            tracing::warn!(error = %e, "removing a pusher failed");
        }
    }

    /// Sends the newest waiting notification of each room.
    async fn round(
        &self,
        user: &UserId,
        key: &PusherKey,
        pusher: &PusherRecord,
        rows: &[(StreamPos, NotificationRecord)],
        pushed: &mut HashMap<String, StreamPos>,
        last_badge: &mut Option<u64>,
    ) -> std::result::Result<Outcome, GatewayError> {
        // Per room the newest notification, or the newest that highlights: a mention must not
        // lose its sound to the chatter after it.
        let mut newest: BTreeMap<&str, (StreamPos, &NotificationRecord)> = BTreeMap::new();
        for (pos, n) in rows {
            let keeps_highlight = newest
                .get(n.room_id.as_str())
                .is_some_and(|(_, kept)| kept.highlight && !n.highlight);
            if !keeps_highlight {
                newest.insert(n.room_id.as_str(), (*pos, n));
            }
        }
        let mut picks: Vec<_> = newest
            .into_values()
            .filter(|(pos, n)| pushed.get(&n.room_id).is_none_or(|p| p < pos))
            .collect();
        picks.sort_by_key(|(pos, _)| *pos);
        let data: Value = serde_json::from_str(&pusher.data).unwrap_or_default();
        let Some(url) = data["url"].as_str() else {
            // Cannot happen through the API, which checks the URL; a pusher without one is dead.
            self.remove(user, key).await;
            return Ok(Outcome::Rejected);
        };
        for (pos, n) in picks {
            let body = match self.payload(user, key, pusher, &data, pos, n).await {
                Ok(Some(body)) => body,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "building a push failed");
                    continue;
                }
            };
            let badge = body["notification"]["counts"]["unread"].as_u64();
            let rejected = self.gateway.notify(url, body).await?;
            *last_badge = badge;
            pushed.insert(n.room_id.clone(), pos);
            if rejected.contains(&key.1) {
                tracing::info!(app_id = %key.0, "the push gateway rejected a pushkey; removing its pusher");
                self.remove(user, key).await;
                return Ok(Outcome::Rejected);
            }
        }
        Ok(Outcome::Delivered)
    }

    /// Sends the user's badge alone when it differs from the one the gateway last got.
    async fn update_badge(
        &self,
        user: &UserId,
        key: &PusherKey,
        pusher: &PusherRecord,
        last_badge: &mut Option<u64>,
    ) -> std::result::Result<Outcome, GatewayError> {
        let badge = match self.badge(user).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "counting a badge failed");
                return Ok(Outcome::Delivered);
            }
        };
        if *last_badge == Some(badge) {
            return Ok(Outcome::Delivered);
        }
        let data: Value = serde_json::from_str(&pusher.data).unwrap_or_default();
        let Some(url) = data["url"].as_str() else {
            return Ok(Outcome::Delivered);
        };
        let body = json!({ "notification": {
            "id": "",
            "type": null,
            "sender": "",
            "counts": { "unread": badge },
            "devices": [device(key, pusher, &data)],
        }});
        let rejected = self.gateway.notify(url, body).await?;
        *last_badge = Some(badge);
        if rejected.contains(&key.1) {
            tracing::info!(app_id = %key.0, "the push gateway rejected a pushkey; removing its pusher");
            self.remove(user, key).await;
            return Ok(Outcome::Rejected);
        }
        Ok(Outcome::Delivered)
    }

    /// The notification for one event, or nothing if it needs none any more (read meanwhile,
    /// or gone).
    async fn payload(
        &self,
        user: &UserId,
        key: &PusherKey,
        pusher: &PusherRecord,
        data: &Value,
        pos: StreamPos,
        n: &NotificationRecord,
    ) -> Result<Option<Value>> {
        let (Ok(event_id), Ok(room_id)) = (EventId::parse(&n.event_id), RoomId::parse(&n.room_id))
        else {
            return Ok(None);
        };
        let Some(ev) = self.rooms.timeline_event(&event_id)? else {
            return Ok(None);
        };
        let (read, threads) = self.receipts.read_positions(&room_id, user)?;
        if read >= pos || threads.get(&thread_of(&ev)).is_some_and(|p| *p >= pos) {
            return Ok(None);
        }
        let actions: Vec<ruma::push::Action> = serde_json::from_str(&n.actions).unwrap_or_default();
        let tweaks = super::rules::tweaks(&actions);
        let encrypted = ev.pdu.kind.to_string() == "m.room.encrypted";
        let prio = if encrypted
            || tweaks.get("highlight") == Some(&json!(true))
            || tweaks.get("sound").is_some()
        {
            "high"
        } else {
            "low"
        };
        let badge = self.badge(user).await?;
        let mut device = device(key, pusher, data);
        // Encrypted events go out as `event_id_only` whatever the pusher asked: the
        // ciphertext is useless to the gateway, and the client fetches the event itself.
        let event_id_only = encrypted || data["format"] == "event_id_only";
        let mut notification = json!({
            "event_id": ev.pdu.event_id,
            "room_id": ev.pdu.room_id,
            "prio": prio,
            "counts": { "unread": badge },
        });
        if !event_id_only {
            device["tweaks"] = tweaks;
            let o = notification.as_object_mut().expect("an object");
            o.insert("id".into(), json!(ev.pdu.event_id));
            o.insert("type".into(), json!(ev.pdu.kind.to_string()));
            o.insert("sender".into(), json!(ev.pdu.sender));
            if ev.pdu.kind.to_string() == "m.room.member" && ev.pdu.state_key.is_some() {
                let content = ev.pdu.content_value();
                o.insert("membership".into(), content["membership"].clone());
                o.insert(
                    "user_is_target".into(),
                    json!(ev.pdu.state_key.as_deref() == Some(user.as_str())),
                );
            }
            if self.config.include_content {
                o.insert("content".into(), ev.pdu.content_value());
            }
            if let Some(name) = self.display_name(&room_id, ev.pdu.sender.as_str())? {
                o.insert("sender_display_name".into(), json!(name));
            }
            if let Some(name) = self.room_name(&room_id, user)? {
                o.insert("room_name".into(), json!(name));
            }
        }
        notification["devices"] = json!([device]);
        Ok(Some(json!({ "notification": notification })))
    }

    /// The badge: how many rooms have unread notifications (Synapse's default,
    /// `group_unread_count_by_room`), or how many notifications are unread in all.
    async fn badge(&self, user: &UserId) -> Result<u64> {
        let upto = self.store.persisted_pos();
        let mut badge = 0;
        for room in self.rooms.joined_rooms(user)? {
            let n = self
                .unread
                .counts(user, &room, upto)
                .await?
                .total()
                .notification;
            badge += if self.config.group_unread_count_by_room {
                u64::from(n > 0)
            } else {
                n
            };
        }
        Ok(badge)
    }

    fn display_name(&self, room_id: &RoomId, user: &str) -> Result<Option<String>> {
        Ok(self
            .rooms
            .state_event(room_id, "m.room.member", user)?
            .and_then(|p| p.content_value()["displayname"].as_str().map(str::to_owned))
            .filter(|n| !n.is_empty()))
    }

    /// The room's name as a client would show it: its name, its alias, or who else is in it.
    fn room_name(&self, room_id: &RoomId, viewer: &UserId) -> Result<Option<String>> {
        let text = |kind: &str, field: &str| -> Result<Option<String>> {
            Ok(self
                .rooms
                .state_event(room_id, kind, "")?
                .and_then(|p| p.content_value()[field].as_str().map(str::to_owned))
                .filter(|s| !s.is_empty()))
        };
        if let Some(name) = text("m.room.name", "name")? {
            return Ok(Some(name));
        }
        if let Some(alias) = text("m.room.canonical_alias", "alias")? {
            return Ok(Some(alias));
        }
        let others: Vec<OwnedUserId> = {
            let head = self.rooms.head(room_id)?;
            let h = head.lock();
            let mut o: Vec<_> = h
                .members
                .iter()
                .filter(|(u, m)| *u != viewer && (*m == "join" || *m == "invite"))
                .map(|(u, _)| u.clone())
                .collect();
            o.sort();
            o
        };
        let names: Vec<String> = others
            .iter()
            .take(2)
            .map(|u| {
                Ok(self
                    .display_name(room_id, u.as_str())?
                    .unwrap_or_else(|| u.to_string()))
            })
            .collect::<Result<_>>()?;
        Ok(match (names.as_slice(), others.len()) {
            ([], _) => None,
            ([a], 1) => Some(a.clone()),
            ([a, b], 2) => Some(format!("{a} and {b}")),
            ([a, ..], n) => Some(format!("{a} and {} others", n - 1)),
        })
    }
}

/// The pusher as a notification's `devices` entry names it. The gateway gets no `url`: it is
/// where the gateway already is.
fn device(key: &PusherKey, pusher: &PusherRecord, data: &Value) -> Value {
    let mut device_data = data.clone();
    if let Some(o) = device_data.as_object_mut() {
        o.remove("url");
    }
    json!({
        "app_id": key.0,
        "pushkey": key.1,
        "pushkey_ts": pusher.pushkey_ts / 1000,
        "data": device_data,
    })
}
