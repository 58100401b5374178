//! Device list tracking: who must hear that a user's devices or keys changed, and what a sync or
//! `/keys/changes` reports as changed and left.
//!
//! A change is a position in the store's stream (`E2eeOp::DeviceListChanged`), so sync tokens
//! cover it like any other stream. Users learn of the changes of everyone they share a joined
//! room with; starting to share a room counts as a change (the client must fetch the newcomer's
//! devices), and ceasing to share any room is reported in `left`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use hearth_storage::e2ee::E2eeOp;
use hearth_storage::{ChangeKey, Store, StreamPos, WriteOp};
use ruma::{OwnedRoomId, OwnedServerName, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use crate::notifier::Notifier;
use crate::remote::Remote;
use crate::rooms::Rooms;
use crate::{Error, Result};

/// Past this many events since a sync token, a room's membership changes are not walked one by
/// one: all its members count as changed, which costs the client a key query, not correctness.
const MEMBERSHIP_WALK_LIMIT: usize = 500;

/// How long a resync waits for the user's server.
const RESYNC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// At most this many devices of one remote user are kept; past it, the rest are dropped.
const MAX_REMOTE_DEVICES: usize = 1000;

/// What this server keeps of a remote user's device list, as their server last told it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteDevices {
    /// The stream id of the user's server this list is at, as a string (peers send numbers).
    pub stream_id: String,
    /// The local stream position when it was fetched: a local user who shares a room with
    /// the user only since later may have missed updates, so it is fetched again.
    pub fetched_at: StreamPos,
    pub devices: BTreeMap<String, RemoteDevice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_key: Option<Json>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_signing_key: Option<Json>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteDevice {
    pub keys: Json,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

impl RemoteDevices {
    /// A device's keys as `/keys/query` answers them: with `unsigned.device_display_name`.
    pub fn query_keys(&self, wanted: &[String]) -> BTreeMap<String, Json> {
        self.devices
            .iter()
            .filter(|(id, _)| wanted.is_empty() || wanted.contains(id))
            .map(|(id, d)| {
                let mut keys = d.keys.clone();
                if let Some(obj) = keys.as_object_mut() {
                    obj.insert(
                        "unsigned".into(),
                        match &d.display_name {
                            Some(name) => json!({ "device_display_name": name }),
                            None => json!({}),
                        },
                    );
                }
                (id.clone(), keys)
            })
            .collect()
    }
}

/// A stream id or prev id as peers send it (a number or a string), as a string.
fn stream_id_string(v: &Json) -> Option<String> {
    match v {
        Json::Number(n) => Some(n.to_string()),
        Json::String(s) if s.len() <= 64 => Some(s.clone()),
        _ => None,
    }
}

/// A cross-signing key of `user` from their server: kept only when it says it is theirs.
fn own_key(user: &UserId, key: &Json) -> Option<Json> {
    (key.is_object() && key["user_id"].as_str() == Some(user.as_str())).then(|| key.clone())
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct DeviceListChanges {
    pub changed: Vec<OwnedUserId>,
    pub left: Vec<OwnedUserId>,
}

impl DeviceListChanges {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.left.is_empty()
    }
}

/// One device's part of a change, for the `m.device_list_update` EDU.
pub struct DeviceUpdate {
    pub device_id: String,
    pub display_name: Option<String>,
    pub deleted: bool,
    pub keys: Option<serde_json::Value>,
}

pub struct DeviceLists {
    server_name: OwnedServerName,
    store: Arc<dyn Store>,
    rooms: Arc<Rooms>,
    notifier: Arc<Notifier>,
    remote: Arc<dyn Remote>,
    /// One change of a local user's list at a time, so that each update's `prev_id` is the
    /// one before it.
    local_lock: tokio::sync::Mutex<()>,
    /// One update or resync of a remote user's list at a time, so that they apply in order;
    /// per user, so that a slow server holds up only its own users. An entry lives while
    /// someone holds or waits for it.
    remote_locks: parking_lot::Mutex<BTreeMap<OwnedUserId, Arc<tokio::sync::Mutex<()>>>>,
    /// The remote users whose lists an update found out of date and that are being fetched
    /// again in the background: one fetch per user however many updates ask for it.
    resyncing: parking_lot::Mutex<BTreeSet<OwnedUserId>>,
}

/// Holds a remote user's lock; drops the entry when nobody else wants it.
struct RemoteGuard<'a> {
    locks: &'a parking_lot::Mutex<BTreeMap<OwnedUserId, Arc<tokio::sync::Mutex<()>>>>,
    user: OwnedUserId,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for RemoteGuard<'_> {
    fn drop(&mut self) {
        let mut locks = self.locks.lock();
        self.guard.take();
        if locks
            .get(&self.user)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            locks.remove(&self.user);
        }
    }
}

impl DeviceLists {
    pub fn new(
        server_name: OwnedServerName,
        store: Arc<dyn Store>,
        rooms: Arc<Rooms>,
        notifier: Arc<Notifier>,
        remote: Arc<dyn Remote>,
    ) -> Self {
        Self {
            server_name,
            store,
            rooms,
            notifier,
            remote,
            local_lock: Default::default(),
            remote_locks: Default::default(),
            resyncing: Default::default(),
        }
    }

    /// Commits `ops` together with a device list change of `user`, then wakes the local users
    /// who share a room with them and tells the servers of the remote ones.
    pub async fn commit_change(
        &self,
        user: &UserId,
        mut ops: Vec<WriteOp>,
        devices: Vec<DeviceUpdate>,
    ) -> Result<()> {
        let _in_order = self.local_lock.lock().await;
        let prev = self.store.device_list_latest(user.as_str())?;
        ops.push(WriteOp::E2ee(E2eeOp::DeviceListChanged(user.to_string())));
        let positions = self.store.submit(ops).await?;
        let stream_id = positions.last().copied().unwrap_or_default();
        let sharing = self.sharing_users(user)?;
        self.notifier.notify(
            sharing
                .iter()
                .filter(|u| u.server_name() == self.server_name)
                .map(|u| &**u),
        );
        if user.server_name() != self.server_name {
            return Ok(());
        }
        let servers = self.servers_of(&sharing);
        if !servers.is_empty() {
            for d in devices {
                let mut content = json!({
                    "user_id": user,
                    "device_id": d.device_id,
                    "stream_id": stream_id,
                    "prev_id": prev.into_iter().collect::<Vec<_>>(),
                    "deleted": d.deleted,
                });
                if let Some(name) = d.display_name {
                    content["device_display_name"] = json!(name);
                }
                if let Some(keys) = d.keys {
                    content["keys"] = keys;
                }
                self.remote.send_edu(
                    &servers,
                    json!({ "edu_type": "m.device_list_update", "content": content }),
                );
            }
        }
        Ok(())
    }

    /// Commits `ops` together with changes of `targets`' keys that only `viewer` hears of (in
    /// their `device_lists.changed`), as Synapse's user signature stream: `viewer`'s own
    /// user-signing key, or `viewer`'s signatures on the targets' master keys. Nobody else
    /// needs to query again, and other servers are not told.
    pub async fn commit_private_change(
        &self,
        viewer: &UserId,
        targets: impl IntoIterator<Item = OwnedUserId>,
        mut ops: Vec<WriteOp>,
    ) -> Result<()> {
        ops.extend(targets.into_iter().map(|target| {
            WriteOp::E2ee(E2eeOp::UserSignatureChanged {
                viewer: viewer.to_string(),
                target: target.to_string(),
            })
        }));
        self.store.submit(ops).await?;
        self.notifier.notify([viewer]);
        Ok(())
    }

    /// Another server says one of its users' devices or cross-signing keys changed: the local
    /// users who share a room with them must query their keys again.
    pub async fn remote_changed(&self, user: &UserId) -> Result<()> {
        self.commit_change(user, Vec::new(), Vec::new()).await
    }

    /// Whether a local user shares a room with the remote `user` (whose device list this
    /// server then tracks), and since when at the latest: the newest of the two memberships
    /// of the room shared longest.
    fn tracked_since(&self, user: &UserId) -> Result<Option<StreamPos>> {
        let mut best: Option<StreamPos> = None;
        for (room_id, their_pos) in self.rooms_joined_by(user)? {
            let Ok(locals) = self.rooms.local_members(&room_id) else {
                continue;
            };
            for local in locals {
                let mine = self.rooms.memberships_of(&local)?;
                let Some((_, lm)) = mine.iter().find(|(r, _)| r == room_id.as_str()) else {
                    continue;
                };
                let since = lm.pos.max(their_pos);
                best = Some(best.map_or(since, |b| b.min(since)));
            }
        }
        Ok(best)
    }

    async fn lock_remote(&self, user: &UserId) -> RemoteGuard<'_> {
        let lock = self
            .remote_locks
            .lock()
            .entry(user.to_owned())
            .or_default()
            .clone();
        RemoteGuard {
            locks: &self.remote_locks,
            user: user.to_owned(),
            guard: Some(lock.lock_owned().await),
        }
    }

    fn cache_of(&self, user: &UserId) -> Result<Option<RemoteDevices>> {
        Ok(self
            .store
            .remote_devices(user.as_str())?
            .and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// The remote `user`'s device list as kept, if it can be trusted to be current: a local
    /// user has shared a room with them since before it was fetched, so every update since
    /// reached this server.
    pub fn cached(&self, user: &UserId) -> Result<Option<RemoteDevices>> {
        let Some(since) = self.tracked_since(user)? else {
            return Ok(None);
        };
        Ok(self.cache_of(user)?.filter(|c| c.fetched_at >= since))
    }

    /// Whether a local user shares a room with the remote `user`.
    pub fn tracked(&self, user: &UserId) -> Result<bool> {
        Ok(self.tracked_since(user)?.is_some())
    }

    /// Fetches the remote `user`'s device list from their server (`GET /user/devices`) and,
    /// when a local user shares a room with them, keeps it and tells the local users it
    /// changed. `None` when their server does not answer (what is kept stays as it was).
    pub async fn resync(&self, user: &UserId) -> Result<Option<RemoteDevices>> {
        let _in_order = self.lock_remote(user).await;
        self.resync_locked(user).await
    }

    async fn resync_locked(&self, user: &UserId) -> Result<Option<RemoteDevices>> {
        let fetched_at = self.store.persisted_pos();
        let answer = tokio::time::timeout(RESYNC_TIMEOUT, self.remote.user_devices(user)).await;
        let answer = match answer {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                tracing::info!(%user, error = %e, "device list resync failed");
                return Ok(None);
            }
            Err(_) => {
                tracing::info!(%user, "device list resync timed out");
                return Ok(None);
            }
        };
        if answer["user_id"]
            .as_str()
            .is_some_and(|u| u != user.as_str())
        {
            tracing::info!(%user, "device list resync answered for another user");
            return Ok(None);
        }
        let mut devices = BTreeMap::new();
        for d in answer["devices"].as_array().into_iter().flatten() {
            if devices.len() >= MAX_REMOTE_DEVICES {
                break;
            }
            let Some(id) = d["device_id"].as_str().filter(|id| id.len() <= 255) else {
                continue;
            };
            devices.insert(
                id.to_owned(),
                RemoteDevice {
                    keys: if d["keys"].is_object() {
                        d["keys"].clone()
                    } else {
                        json!({})
                    },
                    display_name: d["device_display_name"].as_str().map(str::to_owned),
                },
            );
        }
        let cache = RemoteDevices {
            stream_id: stream_id_string(&answer["stream_id"]).unwrap_or_default(),
            fetched_at,
            devices,
            master_key: own_key(user, &answer["master_key"]),
            self_signing_key: own_key(user, &answer["self_signing_key"]),
        };
        if self.tracked(user)? {
            self.keep(user, &cache).await?;
        }
        Ok(Some(cache))
    }

    /// Keeps `cache` as the remote `user`'s device list and tells the local users who share a
    /// room with them.
    async fn keep(&self, user: &UserId, cache: &RemoteDevices) -> Result<()> {
        let ops = vec![WriteOp::E2ee(E2eeOp::PutRemoteDevices {
            user_id: user.to_string(),
            json: Some(serde_json::to_string(cache)?),
        })];
        self.commit_change(user, ops, Vec::new()).await
    }

    /// An `m.device_list_update` from the remote `user`'s server (checked to be theirs), as
    /// Synapse's DeviceListUpdater takes it: ignored unless a local user shares a room with
    /// them or when already seen; applied when it follows what is kept (its `prev_id`s are the
    /// kept stream id); otherwise (nothing kept, an update missed, no `prev_id`) the whole list
    /// is fetched again.
    pub async fn incoming_update(self: &Arc<Self>, user: &UserId, content: &Json) -> Result<()> {
        let _in_order = self.lock_remote(user).await;
        if !self.tracked(user)? {
            return Ok(());
        }
        let (Some(device_id), Some(stream_id)) = (
            content["device_id"].as_str().filter(|d| d.len() <= 255),
            stream_id_string(&content["stream_id"]),
        ) else {
            return Ok(());
        };
        let prev_ids: Vec<String> = content["prev_id"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(stream_id_string)
            .collect();
        let cache = self.cached(user)?;
        if let Some(c) = &cache
            && c.stream_id == stream_id
        {
            return Ok(());
        }
        match cache {
            Some(mut c) if !prev_ids.is_empty() && prev_ids.iter().all(|p| *p == c.stream_id) => {
                if content["deleted"].as_bool() == Some(true) {
                    c.devices.remove(device_id);
                } else if c.devices.len() < MAX_REMOTE_DEVICES || c.devices.contains_key(device_id)
                {
                    let old = c.devices.remove(device_id);
                    let keys = if content["keys"].is_object() {
                        content["keys"].clone()
                    } else {
                        old.as_ref().map(|o| o.keys.clone()).unwrap_or(json!({}))
                    };
                    let display_name = match content.get("device_display_name") {
                        Some(Json::String(n)) => Some(n.clone()),
                        Some(_) => None,
                        None => old.and_then(|o| o.display_name),
                    };
                    c.devices
                        .insert(device_id.to_owned(), RemoteDevice { keys, display_name });
                }
                c.stream_id = stream_id;
                self.keep(user, &c).await
            }
            _ => {
                self.resync_in_background(user);
                Ok(())
            }
        }
    }

    /// Fetches the user's list again after the update that found it out of date has been
    /// answered, as Synapse does: the sending server's transaction does not wait for it.
    fn resync_in_background(self: &Arc<Self>, user: &UserId) {
        if !self.resyncing.lock().insert(user.to_owned()) {
            return;
        }
        let (this, user) = (self.clone(), user.to_owned());
        tokio::spawn(async move {
            if let Err(e) = this.resync(&user).await {
                tracing::warn!(%user, error = %e, "device list resync failed");
            }
            this.resyncing.lock().remove(&user);
        });
    }

    /// An `m.signing_key_update` from the remote `user`'s server: their cross-signing keys as
    /// kept change; the local users who share a room with them query again.
    pub async fn incoming_signing_keys(&self, user: &UserId, content: &Json) -> Result<()> {
        let _in_order = self.lock_remote(user).await;
        if !self.tracked(user)? {
            return Ok(());
        }
        match self.cached(user)? {
            Some(mut c) => {
                if let Some(k) = own_key(user, &content["master_key"]) {
                    c.master_key = Some(k);
                }
                if let Some(k) = own_key(user, &content["self_signing_key"]) {
                    c.self_signing_key = Some(k);
                }
                self.keep(user, &c).await
            }
            None => self.remote_changed(user).await,
        }
    }

    /// Tells the servers that share a room with a local user that their cross-signing keys
    /// changed (`m.signing_key_update`).
    pub fn announce_signing_keys(
        &self,
        user: &UserId,
        master: Option<serde_json::Value>,
        self_signing: Option<serde_json::Value>,
    ) -> Result<()> {
        let servers = self.servers_of(&self.sharing_users(user)?);
        if servers.is_empty() {
            return Ok(());
        }
        let mut content = json!({ "user_id": user });
        if let Some(m) = master {
            content["master_key"] = m;
        }
        if let Some(s) = self_signing {
            content["self_signing_key"] = s;
        }
        self.remote.send_edu(
            &servers,
            json!({ "edu_type": "m.signing_key_update", "content": content }),
        );
        Ok(())
    }

    /// The other servers among `users`'.
    fn servers_of(&self, users: &BTreeSet<OwnedUserId>) -> Vec<OwnedServerName> {
        users
            .iter()
            .map(|u| u.server_name().to_owned())
            .filter(|s| *s != self.server_name)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    fn joined_rooms(&self, user: &UserId) -> Result<Vec<OwnedRoomId>> {
        Ok(self
            .rooms_joined_by(user)?
            .into_iter()
            .map(|(r, _)| r)
            .collect())
    }

    /// The rooms `user` is joined to, with the position of their membership. A room joined
    /// through another server has its members then from the state it came with, which has
    /// no membership records: for another server's user who has none, those rooms are found by
    /// their members (position 0).
    fn rooms_joined_by(&self, user: &UserId) -> Result<Vec<(OwnedRoomId, StreamPos)>> {
        let mut rooms: Vec<(OwnedRoomId, StreamPos)> = Vec::new();
        for (room, m) in self.rooms.memberships_of(user)?.iter() {
            if m.membership == "join" {
                rooms.push((RoomId::parse(room).map_err(Error::internal)?, m.pos));
            }
        }
        if rooms.is_empty() && user.server_name() != self.server_name {
            for (room, _) in self.store.rooms()? {
                let Ok(id) = RoomId::parse(&room) else {
                    continue;
                };
                let Ok(head) = self.rooms.head(&id) else {
                    continue;
                };
                if head.lock().membership_of(user) == Some("join") {
                    rooms.push((id, 0));
                }
            }
        }
        Ok(rooms)
    }

    /// Everyone who shares a joined room with `user`, `user` included.
    pub fn sharing_users(&self, user: &UserId) -> Result<BTreeSet<OwnedUserId>> {
        let mut out = BTreeSet::from([user.to_owned()]);
        for room in self.joined_rooms(user)? {
            let head = self.rooms.head(&room)?;
            let h = head.lock();
            out.extend(
                h.members
                    .iter()
                    .filter(|(_, m)| *m == "join")
                    .map(|(u, _)| u.clone()),
            );
        }
        Ok(out)
    }

    /// Whether `a` and `b` share a joined room now.
    pub fn share_a_room(&self, a: &UserId, b: &UserId) -> Result<bool> {
        for room in self.joined_rooms(a)? {
            if self.rooms.head(&room)?.lock().membership_of(b) == Some("join") {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// What `user` must hear about device lists for `(since, upto]`.
    pub fn changes(
        &self,
        user: &UserId,
        since: StreamPos,
        upto: StreamPos,
    ) -> Result<DeviceListChanges> {
        let mut changed = BTreeSet::new();
        let mut maybe_left = BTreeSet::new();
        for (room, m) in self.rooms.memberships_of(user)?.iter() {
            if m.pos > upto {
                continue;
            }
            let room_id = RoomId::parse(room).map_err(Error::internal)?;
            if m.membership != "join" && !self.rooms.exists(&room_id)? {
                // An invite to (or a turned-down invite of) a room this server is not in.
                continue;
            }
            if m.pos > since {
                // The user's own membership changed: everyone in the room is new to them, or
                // possibly gone.
                let joined = self.joined_members(&room_id)?;
                match m.membership.as_str() {
                    "join" => changed.extend(joined),
                    "leave" | "ban" => maybe_left.extend(joined),
                    _ => {}
                }
                continue;
            }
            // Only rooms whose member list moved are walked: a message alone changes nothing.
            if m.membership == "join"
                && self
                    .store
                    .changed_after(&ChangeKey::RoomMembers(room.clone()), since)
            {
                self.membership_changes(&room_id, since, upto, &mut changed, &mut maybe_left)?;
            }
        }
        // Joining a room does not make the user's own devices news to them.
        changed.remove(user);
        let mut left = Vec::new();
        for other in maybe_left {
            if *other != *user && !self.share_a_room(user, &other)? {
                changed.remove(&other);
                left.push(other);
            }
        }
        if self.store.changed_after(&ChangeKey::DeviceLists, since) {
            for (_, other) in self.store.device_list_changes(since, upto)? {
                let Ok(other) = UserId::parse(other) else {
                    continue;
                };
                // The user's own devices changing is news to their other devices.
                if other == user || self.share_a_room(user, &other)? {
                    changed.insert(other);
                }
            }
            for target in self
                .store
                .user_signature_changes(user.as_str(), since, upto)?
            {
                if let Ok(target) = UserId::parse(target) {
                    changed.insert(target);
                }
            }
        }
        Ok(DeviceListChanges {
            changed: changed.into_iter().collect(),
            left,
        })
    }

    fn joined_members(&self, room: &RoomId) -> Result<Vec<OwnedUserId>> {
        self.rooms.joined_members(room)
    }

    /// Other users who joined or left a room in `(since, upto]`.
    fn membership_changes(
        &self,
        room: &RoomId,
        since: StreamPos,
        upto: StreamPos,
        joined: &mut BTreeSet<OwnedUserId>,
        left: &mut BTreeSet<OwnedUserId>,
    ) -> Result<()> {
        let events =
            self.store
                .room_events(room.as_str(), since + 1, upto, false, MEMBERSHIP_WALK_LIMIT)?;
        if events.len() == MEMBERSHIP_WALK_LIMIT {
            joined.extend(self.joined_members(room)?);
            return Ok(());
        }
        for (_, id) in events {
            let id = ruma::EventId::parse(&id).map_err(Error::internal)?;
            let Some(pdu) = self.rooms.pdu(&id)? else {
                continue;
            };
            let (Some(membership), Some(key)) = (pdu.membership(), pdu.state_key.as_deref()) else {
                continue;
            };
            let Ok(member) = UserId::parse(key) else {
                continue;
            };
            match membership.as_str() {
                "join" => {
                    left.remove(&member);
                    joined.insert(member);
                }
                "leave" | "ban" => {
                    joined.remove(&member);
                    left.insert(member);
                }
                _ => {}
            }
        }
        Ok(())
    }
}
